// The upload rules of helpers/uploads.py, checked from the file header before anything is decoded.
//
// Each refusal's words are Python's (helpers/uploads.py inspect_image_bytes and friends),
// with the limits read from bundle.json; tests/test_phone.py compares them on real files.

import {distinctPair, formatG} from "./format.js";

export class ImageRejected extends Error {}

function bigEndian16(bytes, at) { return (bytes[at] << 8) | bytes[at + 1]; }
function bigEndian32(bytes, at) { return ((bytes[at] << 24) >>> 0) + (bytes[at + 1] << 16) + (bytes[at + 2] << 8) + bytes[at + 3]; }
function littleEndian16(bytes, at) { return bytes[at] | (bytes[at + 1] << 8); }
function littleEndian24(bytes, at) { return bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16); }
function littleEndian32signed(bytes, at) { return bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16) | (bytes[at + 3] << 24); }
function startsWith(bytes, text, at = 0) {
  for (let i = 0; i < text.length; i++) if (bytes[at + i] !== text.charCodeAt(i)) return false;
  return bytes.length >= at + text.length;
}

function pngSize(bytes) {
  if (bytes.length < 26 || !startsWith(bytes, "IHDR", 12)) return null;
  return {format: "PNG", width: bigEndian32(bytes, 16), height: bigEndian32(bytes, 20), bitDepth: bytes[24]};
}

// Start-of-frame markers carry the size: C0-CF except C4 (Huffman), C8 (reserved), CC (arithmetic).
function jpegSize(bytes) {
  let at = 2;
  while (at + 9 < bytes.length) {
    if (bytes[at] !== 0xff) { at += 1; continue; }
    const marker = bytes[at + 1];
    if (marker === 0xff) { at += 1; continue; }
    if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) { at += 2; continue; }
    const length = bigEndian16(bytes, at + 2);
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      return {format: "JPEG", width: bigEndian16(bytes, at + 7), height: bigEndian16(bytes, at + 5)};
    }
    at += 2 + length;
  }
  return null;
}

function webpSize(bytes) {
  if (bytes.length < 30) return null;
  if (startsWith(bytes, "VP8X", 12)) return {format: "WEBP", width: littleEndian24(bytes, 24) + 1, height: littleEndian24(bytes, 27) + 1};
  if (startsWith(bytes, "VP8L", 12)) {
    const bits = bytes[21] | (bytes[22] << 8) | (bytes[23] << 16) | (bytes[24] << 24);
    return {format: "WEBP", width: (bits & 0x3fff) + 1, height: ((bits >> 14) & 0x3fff) + 1};
  }
  if (startsWith(bytes, "VP8 ", 12)) return {format: "WEBP", width: littleEndian16(bytes, 26) & 0x3fff, height: littleEndian16(bytes, 28) & 0x3fff};
  return null;
}

// {format, width, height} from the first bytes, or {format} for a known format without a size here, or null.
export function readHeader(bytes) {
  if (bytes.length >= 8 && bytes[0] === 0x89 && startsWith(bytes, "PNG\r\n\x1a\n", 1)) return pngSize(bytes);
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return jpegSize(bytes);
  if (startsWith(bytes, "GIF87a") || startsWith(bytes, "GIF89a")) {
    return bytes.length >= 10 ? {format: "GIF", width: littleEndian16(bytes, 6), height: littleEndian16(bytes, 8)} : null;
  }
  if (startsWith(bytes, "BM") && bytes.length >= 26) {
    return {format: "BMP", width: Math.abs(littleEndian32signed(bytes, 18)), height: Math.abs(littleEndian32signed(bytes, 22))};
  }
  if (startsWith(bytes, "RIFF") && startsWith(bytes, "WEBP", 8)) return webpSize(bytes);
  if (startsWith(bytes, "II*\0") || startsWith(bytes, "MM\0*")) return {format: "TIFF"};
  if (startsWith(bytes, "DICM", 128)) return {format: "DICOM"};
  return null;
}

// Checks of helpers/uploads.py inspect_image_bytes, in its order; returns the header or throws ImageRejected.
export function checkUpload(bytes, name, rules) {
  if (bytes.length === 0) throw new ImageRejected(`${name} is empty (0 bytes). Choose a JPEG or PNG chest X-ray.`);
  if (bytes.length > rules.max_bytes) {
    const [size, limit] = distinctPair(bytes.length / 2 ** 20, rules.max_bytes / 2 ** 20);
    throw new ImageRejected(`${name} is ${size} MB; the limit is ${limit} MB. Save a smaller JPEG or PNG.`);
  }
  const header = readHeader(bytes);
  if (header === null) {
    throw new ImageRejected(`${name} is not an image file this app can read (UnidentifiedImageError). `
      + "Upload a JPEG or PNG chest X-ray.");
  }
  if (header.format === "DICOM") {
    throw new ImageRejected(`${name} is a DICOM file; this page reads JPEG and PNG (BMP, GIF and WebP too). `
      + "Export the film as PNG, or screen it with the Streamlit app.");
  }
  if (header.width !== undefined && header.width * header.height > rules.decompression_bomb_pixels) {
    const pixels = header.width * header.height;
    throw new ImageRejected(`${name} is far too large to decode safely (Image size (${pixels} pixels) exceeds limit `
      + `of ${rules.decompression_bomb_pixels} pixels, could be decompression bomb DOS attack.). `
      + `Resize it below ${formatG(rules.max_pixels / 1e6)} megapixels.`);
  }
  if (!rules.accepted_formats.includes(header.format)) {
    throw new ImageRejected(`${name} is a ${header.format} image; upload JPEG or PNG (BMP, GIF and WebP work too).`);
  }
  if (Math.min(header.width, header.height) < rules.min_side) {
    throw new ImageRejected(`${name} is only ${header.width}x${header.height} pixels. The model needs at least `
      + `${rules.min_side} pixels on each side (its input is ${rules.image_size}x${rules.image_size}); `
      + "upload the full-resolution X-ray, not a thumbnail.");
  }
  if (header.width * header.height > rules.max_pixels) {
    const [pixels, limit] = distinctPair(header.width * header.height / 1e6, rules.max_pixels / 1e6);
    throw new ImageRejected(`${name} is ${header.width}x${header.height} pixels (${pixels} MP); the limit is `
      + `${limit} MP. Resize it first.`);
  }
  if (header.bitDepth === 16) {
    // Python windows a 16-bit film (helpers/imaging.py window_to_8bit); a browser decodes it to 8 bits its own way.
    throw new ImageRejected(`${name} is a 16-bit PNG; this page reads 8-bit images only, so it could not give `
      + "the answer the project's other tools give. Screen it with the Streamlit app, or save it as an 8-bit PNG.");
  }
  return {...header, sizeBytes: bytes.length};
}

export function decodeFailure(name, header) {
  return new ImageRejected(`${name} could not be decoded: it looks truncated or damaged `
    + `(${header.format}, ${header.sizeBytes} bytes). Upload a complete JPEG or PNG file.`);
}
