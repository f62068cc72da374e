// Bilinear resize of one float plane, written out to give what Python gives.
//
// helpers/imaging.py::resize_plane calls Pillow's Image.resize(..., BILINEAR) on a
// float ("F") image. Pillow (src/libImaging/Resample.c) resizes in two passes,
// horizontal then vertical, each a weighted sum with a triangle filter whose support
// grows with the downscale factor (so shrinking is antialiased). Coefficients and sums
// are doubles; each pass stores float32. This file repeats those steps in the same
// order, so the page's 224x224 input equals Python's (canvas scaling has its own
// filter and is not used).

const BILINEAR_SUPPORT = 1.0;

function triangle(x) {
  const distance = Math.abs(x);
  return distance < 1.0 ? 1.0 - distance : 0.0;
}

const coefficientCache = new Map();  // (input size, output size) -> coefficients: camera frames reuse them

function cachedCoefficients(inputSize, outputSize) {
  const key = `${inputSize}:${outputSize}`;
  if (!coefficientCache.has(key)) {
    if (coefficientCache.size > 16) coefficientCache.clear();
    coefficientCache.set(key, resampleCoefficients(inputSize, outputSize));
  }
  return coefficientCache.get(key);
}

// For each output pixel: the first input pixel, how many it uses, and their weights.
export function resampleCoefficients(inputSize, outputSize) {
  const scale = inputSize / outputSize;
  const filterScale = Math.max(scale, 1.0);
  const support = BILINEAR_SUPPORT * filterScale;
  const kernelSize = Math.ceil(support) * 2 + 1;
  const inverseFilterScale = 1.0 / filterScale;
  const first = new Int32Array(outputSize);
  const count = new Int32Array(outputSize);
  const weights = new Float64Array(outputSize * kernelSize);
  for (let out = 0; out < outputSize; out++) {
    const centre = (out + 0.5) * scale;
    let low = Math.trunc(centre - support + 0.5);  // C's (int) cast truncates
    if (low < 0) low = 0;
    let high = Math.trunc(centre + support + 0.5);
    if (high > inputSize) high = inputSize;
    const used = high - low;
    let total = 0.0;
    for (let k = 0; k < used; k++) {
      const weight = triangle((k + low - centre + 0.5) * inverseFilterScale);
      weights[out * kernelSize + k] = weight;
      total += weight;
    }
    if (total !== 0.0) {
      for (let k = 0; k < used; k++) weights[out * kernelSize + k] /= total;
    }
    first[out] = low;
    count[out] = used;
  }
  return {first, count, weights, kernelSize};
}

// plane: Float32Array (height * width), row-major -> Float32Array (size * size).
export function resizePlane(plane, width, height, size) {
  if (plane.length !== width * height) {
    throw new Error(`resizePlane: ${plane.length} values for a ${width}x${height} plane.`);
  }
  const horizontal = width !== size;
  const vertical = height !== size;
  const rows = resampleCoefficients(height, size);
  const firstRow = rows.first[0];
  const lastRow = rows.first[size - 1] + rows.count[size - 1];
  let source = plane;
  let sourceWidth = width;
  let rowOffset = 0;  // the row of `source` that output row bounds count from
  if (horizontal) {
    const columns = resampleCoefficients(width, size);
    const band = vertical ? lastRow - firstRow : height;
    const start = vertical ? firstRow : 0;
    const temporary = new Float32Array(size * band);
    for (let y = 0; y < band; y++) {
      const line = (y + start) * width;
      for (let x = 0; x < size; x++) {
        const low = columns.first[x];
        const used = columns.count[x];
        const base = x * columns.kernelSize;
        let sum = 0.0;
        for (let k = 0; k < used; k++) sum += plane[line + low + k] * columns.weights[base + k];
        temporary[y * size + x] = sum;  // stored as float32, as Pillow's temporary "F" image
      }
    }
    source = temporary;
    sourceWidth = size;
    rowOffset = vertical ? firstRow : 0;
  }
  if (!vertical) return horizontal ? source : Float32Array.from(plane);
  const output = new Float32Array(size * size);
  for (let y = 0; y < size; y++) {
    const low = rows.first[y] - rowOffset;
    const used = rows.count[y];
    const base = y * rows.kernelSize;
    for (let x = 0; x < sourceWidth; x++) {
      let sum = 0.0;
      for (let k = 0; k < used; k++) sum += source[(low + k) * sourceWidth + x] * rows.weights[base + k];
      output[y * size + x] = sum;
    }
  }
  return output;
}

// The same resize on the first `channels` (1 or 3) channels of RGBA bytes at once: each channel's sums
// are taken in resizePlane's order, so each output channel equals resizePlane of that channel.
// rgba: Uint8ClampedArray (height * width * 4) -> Float32Array (size * size * channels), interleaved.
export function resizeRgba(rgba, width, height, size, channels) {
  if (rgba.length !== width * height * 4) {
    throw new Error(`resizeRgba: ${rgba.length} bytes for a ${width}x${height} RGBA picture.`);
  }
  const horizontal = width !== size;
  const vertical = height !== size;
  const rows = cachedCoefficients(height, size);
  const firstRow = rows.first[0];
  const lastRow = rows.first[size - 1] + rows.count[size - 1];
  let source = rgba, sourceWidth = width, stride = 4, rowOffset = 0;
  if (horizontal) {
    const columns = cachedCoefficients(width, size);
    const band = vertical ? lastRow - firstRow : height;
    const start = vertical ? firstRow : 0;
    const temporary = new Float32Array(size * band * channels);
    for (let y = 0; y < band; y++) {
      const line = (y + start) * width;
      for (let x = 0; x < size; x++) {
        const low = columns.first[x], used = columns.count[x], base = x * columns.kernelSize;
        for (let c = 0; c < channels; c++) {
          let sum = 0.0;
          for (let k = 0; k < used; k++) sum += rgba[(line + low + k) * 4 + c] * columns.weights[base + k];
          temporary[(y * size + x) * channels + c] = sum;
        }
      }
    }
    source = temporary;
    sourceWidth = size;
    stride = channels;
    rowOffset = vertical ? firstRow : 0;
  }
  const output = new Float32Array(size * size * channels);
  if (!vertical) {
    for (let i = 0; i < size * size; i++) {
      for (let c = 0; c < channels; c++) output[i * channels + c] = source[i * stride + c];
    }
    return output;
  }
  for (let y = 0; y < size; y++) {
    const low = rows.first[y] - rowOffset, used = rows.count[y], base = y * rows.kernelSize;
    for (let x = 0; x < sourceWidth; x++) {
      for (let c = 0; c < channels; c++) {
        let sum = 0.0;
        for (let k = 0; k < used; k++) sum += source[((low + k) * sourceWidth + x) * stride + c] * rows.weights[base + k];
        output[(y * size + x) * channels + c] = sum;
      }
    }
  }
  return output;
}
