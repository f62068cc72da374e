// The page: load the bundle, the guard and the model; screen an uploaded film or the camera's frames.
// Nothing leaves the device: files and frames are read in memory and screened here.

import {getGlobalLiteRt} from "@litertjs/core";
import {OnePassModel, loadRuntime} from "./engine.js";
import {ImageRejected, checkUpload, decodeFailure} from "./header.js";
import {
  CHEST_XRAY, Guard, IMAGE_SIZE, OperatingPoint, UNLIKE_POPULATION, decide, inputData, overlayRgba,
  pixelsFromRgba, summary,
} from "./pipeline.js";

const CAMERA_WINDOW = 5;  // the shown camera verdict is smoothed over this many recent frames
const CONTROLLER_WAIT_MS = 4000;

const element = id => document.getElementById(id);
const app = {state: "loading", bundle: null, variant: null, model: null, guard: null, last: null, lastInput: null,
  timings: [], camera: {frames: 0, fps: 0, shown: null, running: false, kinds: []}};
window.cxrPhone = app;

function setStatus(text) { element("status").textContent = text; }

// ------------------------------------------------------------------ offline
// The service worker caches the page, the scripts, the wasm the browser runs and the default model.
// On the first visit the page waits (briefly) until the worker controls it, so the wasm and the
// model are fetched through it and cached as they are downloaded, once.
async function registerServiceWorker() {
  if (!("serviceWorker" in navigator)) return "no service worker in this browser: works online only";
  await navigator.serviceWorker.register("sw.js");
  if (navigator.serviceWorker.controller) return "offline ready";
  await Promise.race([
    new Promise(resolve => navigator.serviceWorker.addEventListener("controllerchange", resolve, {once: true})),
    new Promise(resolve => setTimeout(resolve, CONTROLLER_WAIT_MS)),
  ]);
  return navigator.serviceWorker.controller ? "offline ready" : "offline cache not ready yet";
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}. Build the page again (make phone).`);
  return new Uint8Array(await response.arrayBuffer());
}

async function load() {
  const started = performance.now();
  const offline = await registerServiceWorker().catch(error => `no offline cache (${error.message})`);
  app.bundle = await (await fetch("bundle.json")).json();
  const requested = new URLSearchParams(location.search).get("variant");
  const name = requested && app.bundle.variants[requested] ? requested : app.bundle.default_variant;
  app.variant = app.bundle.variants[name];
  element("notice").textContent = app.bundle.not_a_medical_device;
  const [bytes, guardBytes] = await Promise.all([
    fetchBytes(app.variant.file),
    app.bundle.guard ? fetchBytes(app.bundle.guard.file) : Promise.resolve(null),
    loadRuntime(new URL("wasm/", location.href).href),
  ]);
  app.guard = guardBytes ? new Guard(app.bundle.guard, guardBytes.buffer) : null;
  app.model = await OnePassModel.create(app.variant, bytes);
  app.loadMs = performance.now() - started;
  app.readyAt = performance.now();  // ms since navigation start
  element("model-version").textContent = `${app.variant.model_version} · ${app.variant.engine} · `
    + `file ${app.variant.sha256.slice(0, 12)}`;
  setStatus(`Ready (${offline}). Choose a film or use the camera.`);
  app.state = "ready";
  for (const control of document.querySelectorAll("[data-needs-model]")) control.disabled = false;
}

// ------------------------------------------------------------------ one picture
// rgba of a region -> the result of helpers/screening.py Screener.screen_pixels, with the time of each step.
async function screenRgba(rgba, width, height, name) {
  const started = performance.now();
  const pixels = pixelsFromRgba(rgba, width, height, IMAGE_SIZE);
  const data = inputData(pixels, app.model.inputDtype);
  const resized = performance.now();
  const outputs = await app.model.run(data);
  const ran = performance.now();
  const result = decide(name, pixels, outputs, app.variant, app.guard);
  result.timingsMs = {resize: resized - started, model: ran - resized, guard_decision_heatmap: performance.now() - ran};
  return {result, pixels, data};
}

async function decodeToRgba(bytes, header, name) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]), {imageOrientation: "from-image", premultiplyAlpha: "none",
      colorSpaceConversion: "none"});
  } catch (error) {
    throw decodeFailure(name, header);
  }
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", {willReadFrequently: true});
  context.drawImage(bitmap, 0, 0);
  const image = context.getImageData(0, 0, bitmap.width, bitmap.height, {colorSpace: "srgb"});
  bitmap.close();
  return image;
}

// Bytes of one file -> the shown result; every refusal is a message, never an exception.
async function screenBytes(bytes, name) {
  const started = performance.now();
  let shown;
  try {
    const header = checkUpload(bytes, name, app.bundle.upload_rules);
    const image = await decodeToRgba(bytes, header, name);
    const decoded = performance.now();
    const {result, pixels, data} = await screenRgba(image.data, image.width, image.height, name);
    const drawing = performance.now();
    app.lastInput = data;
    shown = result;
    showResult(result, pixels);
    result.timingsMs = {decode: decoded - started, ...result.timingsMs, draw: performance.now() - drawing};
  } catch (error) {
    if (!(error instanceof ImageRejected)) throw error;
    shown = {name, accepted: false, guard: "", message: error.message};
    showResult(shown, null);
  }
  const elapsed = performance.now() - started;
  app.timings.push(elapsed);
  app.lastShownAt = performance.now();  // ms since navigation start
  app.last = {...shown, heatmap: undefined, verdict: undefined, summary: summary(shown), totalMs: elapsed};
  app.lastHeatmap = shown.heatmap || null;
  return app.last;
}
app.screenBytes = screenBytes;

function describeDecision(result) {
  if (!result.accepted) return "Not analysed";
  if (result.guard === UNLIKE_POPULATION) return "Refer to a radiologist: unlike the validated population";
  return {PNEUMONIA: "PNEUMONIA: signs of pneumonia", NORMAL: "NORMAL: no sign of pneumonia",
    REFER: `Refer to a radiologist (model leans ${result.modelDecision})`}[result.decision];
}

function showResult(result, pixels) {
  element("result").hidden = false;
  const verdict = element("verdict");
  verdict.textContent = describeDecision(result);
  verdict.dataset.decision = result.accepted ? result.decision : "refused";
  element("message").textContent = result.message;
  element("summary").textContent = summary(result);
  verdict.scrollIntoView({block: "nearest"});  // on a phone the answer is below the buttons
  const canvas = element("overlay");
  canvas.hidden = !result.accepted;
  if (result.accepted && pixels) {
    const context = canvas.getContext("2d");
    context.putImageData(new ImageData(overlayRgba(pixels, result.heatmap), IMAGE_SIZE, IMAGE_SIZE), 0, 0);
  }
}

async function onFileChosen(event) {
  const file = event.target.files[0];
  if (!file || app.state !== "ready") return;
  setStatus(`Screening ${file.name}…`);
  const bytes = new Uint8Array(await file.arrayBuffer());
  await screenBytes(bytes, file.name);
  setStatus(`Screened ${file.name} on this device.`);
  event.target.value = "";  // the same file can be chosen again
}

// ------------------------------------------------------------------ camera
// Counts the frames the video presents; next(seen) resolves once a frame newer than `seen` is there.
// The camera loop grabs the newest frame when it is free: frames that came meanwhile are skipped, never queued.
function frameWatcher(video) {
  const watcher = {presented: 0, waiters: [], active: true};
  const schedule = () => {
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
    else requestAnimationFrame(onFrame);
  };
  function onFrame() {
    watcher.presented += 1;
    const waiting = watcher.waiters;
    watcher.waiters = [];
    for (const resolve of waiting) resolve();
    if (watcher.active) schedule();
  }
  watcher.next = seen => (watcher.presented > seen || !watcher.active ? Promise.resolve()
    : new Promise(resolve => watcher.waiters.push(resolve)));
  watcher.stop = () => {
    watcher.active = false;
    for (const resolve of watcher.waiters) resolve();
    watcher.waiters = [];
  };
  schedule();
  return watcher;
}

// The centred square of the newest frame, as RGBA at its own resolution.
function grabSquare(video, canvas) {
  const side = Math.min(video.videoWidth, video.videoHeight);
  if (canvas.width !== side) { canvas.width = side; canvas.height = side; }
  const context = canvas.getContext("2d", {willReadFrequently: true});
  context.drawImage(video, (video.videoWidth - side) / 2, (video.videoHeight - side) / 2, side, side, 0, 0, side, side);
  return context.getImageData(0, 0, side, side);
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : 0.5 * (sorted[middle - 1] + sorted[middle]);
}

// The verdict shown for the recent frames: the operating point on their median probability when most
// were answered, else the newest refusal.
function smoothed(recent) {
  const answered = recent.filter(result => result.accepted);
  if (answered.length * 2 <= recent.length) {
    const refusal = [...recent].reverse().find(result => !result.accepted);
    return {text: "Not analysed", kind: refusal.guard, message: refusal.message.replace(/^camera: /, "")};
  }
  const point = new OperatingPoint(app.variant.decision);
  const probability = median(answered.map(result => result.probability));
  const unlike = answered.filter(result => result.guard === UNLIKE_POPULATION).length * 2 > answered.length;
  const model = point.predicted(probability) ? "PNEUMONIA" : "NORMAL";
  const decision = unlike || point.referred(probability) ? "REFER" : model;
  const text = unlike ? "Refer to a radiologist: unlike the validated population"
    : describeDecision({accepted: true, guard: CHEST_XRAY, decision, modelDecision: model});
  return {text, kind: unlike ? UNLIKE_POPULATION : CHEST_XRAY, decision,
    message: `Calibrated P(pneumonia) ${point.calibrated(probability).toFixed(3)}, median of ${answered.length} recent frames.`};
}

function drawCameraHeatmap(result) {
  const canvas = element("camera-overlay");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!result.accepted) return;
  const rgba = new Uint8ClampedArray(IMAGE_SIZE * IMAGE_SIZE * 4);
  const grey = new Float32Array(IMAGE_SIZE * IMAGE_SIZE * 3);
  const coloured = overlayRgba(grey, result.heatmap, 1.0);  // the jet colours alone
  for (let i = 0; i < IMAGE_SIZE * IMAGE_SIZE; i++) {
    rgba[i * 4] = coloured[i * 4]; rgba[i * 4 + 1] = coloured[i * 4 + 1]; rgba[i * 4 + 2] = coloured[i * 4 + 2];
    rgba[i * 4 + 3] = Math.round(255 * 0.45 * result.heatmap[i]);
  }
  context.putImageData(new ImageData(rgba, IMAGE_SIZE, IMAGE_SIZE), 0, 0);
}

async function cameraLoop(video) {
  const grab = document.createElement("canvas");
  const recent = [];
  const camera = app.camera;
  let windowStart = performance.now(), windowFrames = 0, seen = 0;
  const watcher = frameWatcher(video);
  camera.watcher = watcher;
  while (camera.running) {
    await watcher.next(seen);
    seen = watcher.presented;
    if (!camera.running || video.videoWidth === 0) continue;
    const image = grabSquare(video, grab);
    const {result} = await screenRgba(image.data, image.width, image.height, "camera");
    recent.push(result);
    if (recent.length > CAMERA_WINDOW) recent.shift();
    camera.frames += 1;
    windowFrames += 1;
    const now = performance.now();
    if (now - windowStart >= 1000) {
      camera.fps = windowFrames * 1000 / (now - windowStart);
      windowStart = now;
      windowFrames = 0;
    }
    const shown = smoothed(recent);
    camera.shown = shown;
    if (camera.kinds[camera.kinds.length - 1] !== shown.text) camera.kinds.push(shown.text);
    element("camera-verdict").textContent = shown.text;
    element("camera-message").textContent = shown.message;
    element("camera-rate").textContent = `${camera.fps.toFixed(1)} frames screened per second`;
    drawCameraHeatmap(result);
    camera.lastTimingsMs = result.timingsMs;
  }
  watcher.stop();
}

async function startCamera() {
  if (app.state !== "ready" || app.camera.running) return;
  const video = element("video");
  try {
    app.camera.stream = await navigator.mediaDevices.getUserMedia({audio: false,
      video: {facingMode: {ideal: "environment"}, width: {ideal: 640}, height: {ideal: 480}}});
  } catch (error) {
    setStatus(`The camera cannot be opened (${error.name}): allow camera access, or choose a file.`);
    return;
  }
  video.srcObject = app.camera.stream;
  await video.play();
  element("camera").hidden = false;
  element("camera-button").hidden = true;
  app.camera.running = true;
  setStatus("Camera on: hold the film flat on a light box, filling the square.");
  app.camera.loop = cameraLoop(video);
}

async function stopCamera() {
  app.camera.running = false;
  if (app.camera.watcher) app.camera.watcher.stop();
  await app.camera.loop;
  for (const track of app.camera.stream ? app.camera.stream.getTracks() : []) track.stop();
  element("video").srcObject = null;
  element("camera").hidden = true;
  element("camera-button").hidden = false;
  setStatus("Camera off.");
}

// Memory the benchmark reads: JS heap (Chromium) and the wasm heap of LiteRT.js.
app.memory = () => ({
  jsHeapBytes: performance.memory ? performance.memory.usedJSHeapSize : null,
  wasmBytes: (() => {
    try {
      const wasm = getGlobalLiteRt().liteRtWasm;
      return wasm.HEAPU8 ? wasm.HEAPU8.length : (wasm.wasmMemory ? wasm.wasmMemory.buffer.byteLength : null);
    } catch (error) {
      return null;
    }
  })(),
});

element("film").addEventListener("change", onFileChosen);
element("camera-button").addEventListener("click", startCamera);
element("camera-stop").addEventListener("click", stopCamera);
// A new version's service worker may take over while this page loads the old files: reload once.
const RELOADED = "cxr-phone-reloaded";
app.ready = load().then(() => sessionStorage.removeItem(RELOADED)).catch(error => {
  if (!sessionStorage.getItem(RELOADED) && navigator.onLine) {
    sessionStorage.setItem(RELOADED, "1");
    location.reload();
    return;
  }
  app.state = "error";
  app.error = String(error && error.message ? error.message : error);
  setStatus(`The model could not be loaded: ${app.error}`);
});
