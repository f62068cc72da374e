// The screening pipeline of helpers/screening.py, in the browser: pixels -> input tensor,
// guard (helpers/ood.py, helpers/guard.py), decision (helpers/operating_point.py) and heat map.
// Pure functions on typed arrays; the model call is in engine.js. Every message is
// worded as Python words it; tests/test_phone.py compares them for the same files.

import {distinctPair, formatG} from "./format.js";
import {resizeRgba} from "./resize.js";

export const IMAGE_SIZE = 224;
export const CHEST_XRAY = "chest_xray";
export const NOT_XRAY = "not_xray";
export const WRONG_WAY_ROUND = "wrong_way_round";
export const UNLIKE_POPULATION = "unlike_population";

// ------------------------------------------------------------------ pixels
// rgba: Uint8ClampedArray (height * width * 4) of a region -> Float32Array (224 * 224 * 3), HWC, 0-255.
// Grey pictures (R = G = B everywhere) are resized once; helpers/imaging.py resizes each plane
// of an RGB picture, which gives the same numbers for equal planes.
export function pixelsFromRgba(rgba, width, height, size = IMAGE_SIZE) {
  let grey = true;
  for (let i = 0; i < rgba.length; i += 4) {
    if (rgba[i] !== rgba[i + 1] || rgba[i] !== rgba[i + 2]) { grey = false; break; }
  }
  const channels = grey ? 1 : 3;
  const resized = resizeRgba(rgba, width, height, size, channels);
  const pixels = new Float32Array(size * size * 3);
  for (let i = 0; i < size * size; i++) {
    for (let channel = 0; channel < 3; channel++) {
      const value = resized[i * channels + (grey ? 0 : channel)];
      pixels[i * 3 + channel] = value < 0 ? 0 : (value > 255 ? 255 : value);  // np.clip(pixels, 0, 255)
    }
  }
  return pixels;
}

// np.round: halves to even (Math.round takes halves up).
function roundHalfEven(value) {
  const rounded = Math.round(value);
  return rounded - value === 0.5 && rounded % 2 !== 0 ? rounded - 1 : rounded;
}

// helpers/tflite/runtime.py to_input_dtype: uint8 input -> rounded and clipped pixels; float32 -> as they are.
export function inputData(pixels, dtype) {
  if (dtype === "float32") return Float32Array.from(pixels);
  if (dtype !== "uint8") throw new Error(`This page feeds uint8 or float32 inputs, not ${dtype}.`);
  const data = new Uint8Array(pixels.length);
  for (let i = 0; i < pixels.length; i++) {
    const value = roundHalfEven(pixels[i]);
    data[i] = value < 0 ? 0 : (value > 255 ? 255 : value);
  }
  return data;
}

// ------------------------------------------------------------------ guard
// helpers/ood.py colourfulness (Hasler & Suesstrunk) of one (224 * 224 * 3) picture.
export function colourfulness(pixels) {
  const count = pixels.length / 3;
  let sumRg = 0, sumYb = 0;
  for (let i = 0; i < count; i++) {
    const red = pixels[i * 3], green = pixels[i * 3 + 1], blue = pixels[i * 3 + 2];
    sumRg += red - green;
    sumYb += 0.5 * (red + green) - blue;
  }
  const meanRg = sumRg / count, meanYb = sumYb / count;
  let squaresRg = 0, squaresYb = 0;
  for (let i = 0; i < count; i++) {
    const red = pixels[i * 3], green = pixels[i * 3 + 1], blue = pixels[i * 3 + 2];
    const rg = red - green - meanRg, yb = 0.5 * (red + green) - blue - meanYb;
    squaresRg += rg * rg;
    squaresYb += yb * yb;
  }
  const spread = Math.sqrt(squaresRg / count + squaresYb / count);
  const offset = Math.sqrt(meanRg * meanRg + meanYb * meanYb);
  return spread + 0.3 * offset;
}

// IEEE half -> float, for the precision matrix stored in float16.
function halfToFloatTable() {
  const table = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exponent = (bits >> 10) & 0x1f;
    const mantissa = bits & 0x3ff;
    let value;
    if (exponent === 0) value = mantissa * 2 ** -24;
    else if (exponent === 31) value = mantissa ? NaN : Infinity;
    else value = (1 + mantissa / 1024) * 2 ** (exponent - 15);
    table[bits] = sign * value;
  }
  return table;
}

function typedView(buffer, entry) {
  const count = entry.shape.reduce((product, dimension) => product * dimension, 1);
  if (entry.dtype === "float32") return new Float32Array(buffer, entry.offset, count);
  if (entry.dtype === "float16") return new Uint16Array(buffer, entry.offset, count);
  throw new Error(`Unexpected dtype ${entry.dtype} in the guard file.`);
}

// The guard of bundle.json + guard.<hash>.bin: what helpers/phone_export.py read_guard rebuilds in Python.
export class Guard {
  constructor(description, buffer) {
    this.description = description;
    const arrays = {};
    for (const entry of description.layout) arrays[entry.name] = typedView(buffer, entry);
    this.dimensions = description.dimensions;
    this.mean = arrays.mean;
    const table = halfToFloatTable();
    const stored = arrays.precision_upper;
    // float16 values and their power-of-two scale are exact in float32: half the memory of float64 to stream.
    this.precisionUpper = new Float32Array(stored.length);
    for (let i = 0; i < stored.length; i++) this.precisionUpper[i] = table[stored[i]] / description.precision_scale;
    this.gates = {};
    for (const prefix of ["xray", "orientation"]) {
      this.gates[prefix] = {...description[prefix], mean: arrays[`${prefix}_mean`], scale: arrays[`${prefix}_scale`],
        weights: arrays[`${prefix}_weights`], bias: arrays[`${prefix}_bias`]};
    }
  }

  // Mahalanobis distance of one feature vector (Float32Array D) to the training features.
  distance(features) {
    const size = this.dimensions;
    const centred = new Float64Array(size);
    for (let i = 0; i < size; i++) centred[i] = features[i] - this.mean[i];
    let squared = 0.0, at = 0;
    for (let i = 0; i < size; i++) {
      const ci = centred[i];
      squared += this.precisionUpper[at++] * ci * ci;  // the diagonal entry
      let row = 0.0;
      for (let j = i + 1; j < size; j++) row += this.precisionUpper[at++] * centred[j];
      squared += 2.0 * ci * row;
    }
    return Math.sqrt(Math.max(squared, 0.0));
  }

  // helpers/guard.py LinearGate.probabilities for one feature vector -> Float64Array (K).
  probabilities(prefix, features) {
    const gate = this.gates[prefix];
    const classes = gate.classes.length;
    const scores = new Float64Array(classes);
    for (let k = 0; k < classes; k++) scores[k] = 0;
    for (let d = 0; d < this.dimensions; d++) {
      const standardized = Math.fround(Math.fround(features[d] - gate.mean[d]) / gate.scale[d]);
      for (let k = 0; k < classes; k++) scores[k] += standardized * gate.weights[d * classes + k];
    }
    let largest = -Infinity;
    for (let k = 0; k < classes; k++) { scores[k] += gate.bias[k]; largest = Math.max(largest, scores[k]); }
    let total = 0;
    for (let k = 0; k < classes; k++) { scores[k] = Math.exp(scores[k] - largest); total += scores[k]; }
    for (let k = 0; k < classes; k++) scores[k] /= total;
    return scores;
  }

  // helpers/ood.py OODDetector.measure + kinds + _verdict for one picture.
  check(pixels, features) {
    const colour = colourfulness(pixels);
    const distance = this.distance(features);
    const xrayProbability = this.probabilities("xray", features)[this.gates.xray.watched];
    const turned = this.probabilities("orientation", features);
    const orientationGate = this.gates.orientation;
    const upright = orientationGate.classes.indexOf(this.description.upright);
    let orientation = null, best = -Infinity;
    for (let k = 0; k < turned.length; k++) {
      const value = k === upright ? -1.0 : turned[k];
      if (value > best) { best = value; orientation = orientationGate.classes[k]; }
    }
    const uprightProbability = turned[upright];
    let kind = CHEST_XRAY;
    if (distance > this.description.distance_threshold) kind = UNLIKE_POPULATION;
    if (uprightProbability < orientationGate.threshold) kind = WRONG_WAY_ROUND;
    if (xrayProbability < this.gates.xray.threshold) kind = NOT_XRAY;
    if (colour > this.description.max_colourfulness) kind = NOT_XRAY;
    return {kind, colour, distance, xrayProbability, uprightProbability, orientation,
      message: this.message(kind, colour, distance, xrayProbability, uprightProbability, orientation)};
  }

  message(kind, colour, distance, xrayProbability, uprightProbability, orientation) {
    const description = this.description;
    const [distanceText, thresholdText] = distinctPair(distance, description.distance_threshold, 1);
    const percentile = formatG(100 * description.quantile);
    if (kind === NOT_XRAY && colour > description.max_colourfulness) {
      const [colourText, mostText] = distinctPair(colour, description.max_colourfulness, 0);
      return `This image is in colour (colourfulness ${colourText}, chest X-rays are grey: at most `
        + `${mostText}). It is not a chest X-ray, so no prediction is made. Upload a frontal chest X-ray.`;
    }
    if (kind === NOT_XRAY) {
      const [scoreText, belowText] = distinctPair(xrayProbability, this.gates.xray.threshold, 2);
      return `This image does not look like a chest X-ray (X-ray score ${scoreText}, `
        + `below ${belowText}), so no prediction is made. Upload a frontal chest X-ray.`;
    }
    if (kind === WRONG_WAY_ROUND) {
      const words = description.orientation_words[orientation] || "the wrong way round";
      const [scoreText, belowText] = distinctPair(uprightProbability, this.gates.orientation.threshold, 2);
      return `This chest X-ray looks ${words} (upright score ${scoreText}, below ${belowText}). No prediction `
        + "is made on a film the wrong way round: turn it upright (bones light, air dark, head at the top) and "
        + "upload it again.";
    }
    if (kind === UNLIKE_POPULATION) {
      return "This looks like a chest X-ray, but it lies outside the population this model was "
        + `validated on (feature distance ${distanceText} > ${thresholdText}, the ${percentile}th percentile `
        + "of held-out training films): another hospital, machine or patient group. Refer to a radiologist; "
        + "the model's probability is shown for reference only, not as a decision.";
    }
    return `Looks like a chest X-ray, upright, like the training films (feature distance ${distanceText} `
      + `<= ${thresholdText}).`;
  }
}

// ------------------------------------------------------------------ decision
// helpers/operating_point.py: sigmoid, logit and the rule of OperatingPoint.
function sigmoid(value) {
  const logAddExp = Math.max(0, -value) + Math.log1p(Math.exp(-Math.abs(value)));  // log(1 + exp(-value))
  return Math.exp(-logAddExp);
}

function logit(probability, epsilon = 1e-12) {
  const p = Math.min(Math.max(probability, epsilon), 1 - epsilon);
  return Math.log(p) - Math.log1p(-p);
}

export class OperatingPoint {
  constructor(saved) {
    this.threshold = saved.threshold;
    this.temperature = saved.temperature ?? 1.0;
    this.intercept = saved.intercept ?? 0.0;
    this.bandLow = saved.band ? saved.band.low : null;
    this.bandHigh = saved.band ? saved.band.high : null;
  }

  predicted(probability) { return probability >= this.threshold; }

  referred(probability) {
    return this.bandLow !== null && probability >= this.bandLow && probability < this.bandHigh;
  }

  calibrated(probability) { return sigmoid(logit(probability) / this.temperature + this.intercept); }
}

// ------------------------------------------------------------------ heat map
// Bilinear interpolation with half-pixel centres (helpers/imaging.py _interpolation_matrix): each target
// pixel mixes two source pixels, low and high, with weights 1 - fraction and fraction.
function interpolationTaps(source, target) {
  const low = new Int32Array(target), high = new Int32Array(target);
  const lowWeight = new Float64Array(target), highWeight = new Float64Array(target);
  for (let t = 0; t < target; t++) {
    let centre = (t + 0.5) * (source / target) - 0.5;
    centre = Math.min(Math.max(centre, 0.0), source - 1);
    low[t] = Math.floor(centre);
    high[t] = Math.min(low[t] + 1, source - 1);
    const fraction = centre - low[t];
    lowWeight[t] = 1.0 - fraction;
    highWeight[t] = fraction;
  }
  return {low, high, lowWeight, highWeight};
}

// helpers/screening.py heatmap_from_logit_map: (h * w) logit map -> Float32Array (size * size) in [0, 1].
export function heatmapFromLogitMap(logitMap, mapSize, bias, positive, size = IMAGE_SIZE) {
  const sign = positive ? 1.0 : -1.0;
  const evidence = new Float64Array(mapSize * mapSize);
  let largest = 0.0;
  for (let i = 0; i < evidence.length; i++) {
    evidence[i] = Math.max(sign * (logitMap[i] - bias), 0.0);
    largest = Math.max(largest, evidence[i]);
  }
  const divisor = largest > 0 ? largest : 1.0;
  for (let i = 0; i < evidence.length; i++) evidence[i] = Math.fround(evidence[i] / divisor);  // normalize_maps: float32
  const taps = interpolationTaps(mapSize, size);
  const partial = new Float64Array(size * mapSize);  // rows of the map interpolated: (size, mapSize)
  for (let y = 0; y < size; y++) {
    const low = taps.low[y] * mapSize, high = taps.high[y] * mapSize;
    for (let c = 0; c < mapSize; c++) {
      partial[y * mapSize + c] = taps.lowWeight[y] * evidence[low + c] + taps.highWeight[y] * evidence[high + c];
    }
  }
  const heatmap = new Float32Array(size * size);
  for (let y = 0; y < size; y++) {
    const row = y * mapSize;
    for (let x = 0; x < size; x++) {
      const value = taps.lowWeight[x] * partial[row + taps.low[x]] + taps.highWeight[x] * partial[row + taps.high[x]];
      heatmap[y * size + x] = Math.min(Math.max(value, 0.0), 1.0);
    }
  }
  return heatmap;
}

// matplotlib's "jet", as helpers/imaging.py _jet_table: (256 * 3) in [0, 1].
function interpolate(position, knots) {
  for (let i = 1; i < knots.length; i++) {
    if (position <= knots[i][0]) {
      const [x0, y0] = knots[i - 1], [x1, y1] = knots[i];
      return y0 + (y1 - y0) * (position - x0) / (x1 - x0);
    }
  }
  return knots[knots.length - 1][1];
}

export const JET = (() => {
  const segments = [
    [[0.0, 0.0], [0.35, 0.0], [0.66, 1.0], [0.89, 1.0], [1.0, 0.5]],
    [[0.0, 0.0], [0.125, 0.0], [0.375, 1.0], [0.64, 1.0], [0.91, 0.0], [1.0, 0.0]],
    [[0.0, 0.5], [0.11, 1.0], [0.34, 1.0], [0.65, 0.0], [1.0, 0.0]],
  ];
  const table = new Float32Array(256 * 3);
  for (let i = 0; i < 256; i++) {
    for (let channel = 0; channel < 3; channel++) table[i * 3 + channel] = interpolate(i / 255, segments[channel]);
  }
  return table;
})();

// helpers/imaging.py overlay_png's blend, into RGBA bytes for a canvas.
export function overlayRgba(pixels, heatmap, alpha = 0.4) {
  const count = heatmap.length;
  const rgba = new Uint8ClampedArray(count * 4);
  for (let i = 0; i < count; i++) {
    const index = Math.trunc(Math.min(Math.max(heatmap[i], 0), 1) * 255 + 0.5);
    for (let channel = 0; channel < 3; channel++) {
      const blended = (1 - alpha) * pixels[i * 3 + channel] + alpha * 255 * JET[index * 3 + channel];
      rgba[i * 4 + channel] = Math.trunc(blended + 0.5);
    }
    rgba[i * 4 + 3] = 255;
  }
  return rgba;
}

// ------------------------------------------------------------------ one result
// helpers/screening.py Screener.screen_pixels after the model call: guard, decision, heat map.
export function decide(name, pixels, outputs, variant, guard) {
  const base = {name, engine: variant.engine, modelVersion: variant.model_version, threshold: variant.decision.threshold};
  let verdict;
  if (guard) {
    verdict = guard.check(pixels, outputs.features);
  } else {
    const colour = colourfulness(pixels);
    const accepted = colour <= 25.0;
    verdict = {kind: accepted ? CHEST_XRAY : NOT_XRAY, colour, distance: null,
      message: accepted ? "Looks grey like an X-ray (colour check only)."
        : `This image is in colour (colourfulness ${colour.toFixed(0)}); chest X-rays are grey. Upload a frontal chest X-ray.`};
  }
  if (verdict.kind !== CHEST_XRAY && verdict.kind !== UNLIKE_POPULATION) {
    return {...base, accepted: false, guard: verdict.kind, message: `${name}: ${verdict.message}`, distance: verdict.distance,
      verdict};
  }
  const point = new OperatingPoint(variant.decision);
  const probability = outputs.probability;
  const positive = point.predicted(probability);
  const modelDecision = positive ? "PNEUMONIA" : "NORMAL";
  const referred = point.referred(probability);
  const outside = verdict.kind === UNLIKE_POPULATION;
  const mapSize = Math.round(Math.sqrt(outputs.logitMap.length));
  const heatmap = heatmapFromLogitMap(outputs.logitMap, mapSize, variant.bias, positive);
  const band = point.bandLow !== null ? [point.bandLow, point.bandHigh] : null;
  return {...base, accepted: true, guard: verdict.kind, message: verdict.message,
    decision: referred || outside ? "REFER" : modelDecision, modelDecision, probability,
    calibratedProbability: point.calibrated(probability), band, insideBand: referred, distance: verdict.distance,
    heatmap, verdict};
}

// helpers/screening.py ScreeningResult.summary.
export function summary(result) {
  if (!result.accepted) return `${result.name}: not analysed. ${result.message}`;
  const calibrated = result.calibratedProbability.toFixed(3);
  if (result.guard === UNLIKE_POPULATION) {
    return `${result.name}: refer to a radiologist: outside the population the model was validated on `
      + `(for reference only: model leans ${result.modelDecision}, calibrated P(pneumonia) = ${calibrated}; ${result.engine})`;
  }
  const words = {PNEUMONIA: "PNEUMONIA", NORMAL: "NORMAL",
    REFER: `refer to a radiologist (model leans ${result.modelDecision})`}[result.decision];
  return `${result.name}: ${words}; calibrated P(pneumonia) = ${calibrated} `
    + `(raw ${result.probability.toFixed(3)}, threshold ${result.threshold.toFixed(3)}; ${result.engine})`;
}
