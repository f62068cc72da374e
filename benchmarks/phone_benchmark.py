"""Benchmark the phone web app (``phone/``) in headless Chromium on the trained models.

    python benchmarks/phone_benchmark.py                    # every test film, 2,000 camera frames
    python benchmarks/phone_benchmark.py --films 40 --camera-frames 300    # quick

Builds the page from ``<artifacts>`` (``helpers.phone_site.build`` into a temporary
folder), serves it on localhost and writes ``<artifacts>/phone_benchmark.json``:

* ``environment`` -- CPU, Chromium version, and how the slowdown was applied;
* per variant (float32, float16, int8): model compile ms; inference p50/p95 (the
  LiteRT.js call alone, same input); end to end p50/p95 (file bytes -> header check,
  decode, resize, model, guard, decision, heat map drawn over the film); the same at
  4x CPU slowdown; parity with the Python LiteRT path (:class:`helpers.screening.Screener`
  with the detector of ``ood/detector.npz``) on the test films: decision agreement,
  probability max abs difference, heat-map Spearman per film;
* ``camera`` -- frames screened per second at 1x and 4x (Chromium's fake camera
  playing test films at 30 frames per second), JS heap and wasm memory before and
  after ``--camera-frames`` frames;
* ``visits`` -- first visit (empty cache): bytes the server sent and time to the first
  verdict; repeat visit (service worker cache): bytes from the network, model and wasm
  bytes among them, and time to the first verdict.

The slowdown is Chrome DevTools Protocol ``Emulation.setCPUThrottlingRate`` on the
page's target: the page runs LiteRT.js on its main thread (no worker), so that one
target runs the whole pipeline.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install needed

from benchmarks import timing
from helpers import config, phone_site, screening
from helpers.gradcam import rank_correlation
from helpers.jsonio import write_json
from helpers.ood import OODDetector
from tests.browser import CHROMIUM

BENCHMARK_FILE_NAME = "phone_benchmark.json"
VARIANTS = ("float32", "float16", "int8")
PHONE = {"viewport": {"width": 360, "height": 640}, "device_scale_factor": 3, "is_mobile": True, "has_touch": True}
ARGUMENTS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-dev-shm-usage", "--enable-precise-memory-info", "--js-flags=--expose-gc"]
SLOWDOWN = 4
TIMEOUT_MS = 120_000
CAMERA_SIZE = (640, 480)
CAMERA_FPS = 30
WARM_UP_FILMS = 3  # screened before timing; the time to a first verdict (cold) is in "visits"
# In the page: screen bytes given as base64, return the result and the heat map (float32, base64).
SCREEN_JS = """async ([encoded, name]) => {
    const bytes = Uint8Array.from(atob(encoded), character => character.charCodeAt(0));
    const result = await window.cxrPhone.screenBytes(bytes, name);
    const heatmap = window.cxrPhone.lastHeatmap;
    let heat = null;
    if (heatmap) {
        const raw = new Uint8Array(heatmap.buffer, heatmap.byteOffset, heatmap.byteLength);
        let text = "";
        for (let i = 0; i < raw.length; i += 8192) text += String.fromCharCode.apply(null, raw.subarray(i, i + 8192));
        heat = btoa(text);
    }
    return {result, heat};
}"""
INFERENCE_JS = """async (runs) => {
    const app = window.cxrPhone, data = app.lastInput, times = [];
    for (let i = 0; i < runs; i++) {
        const started = performance.now();
        await app.model.run(data);
        times.push(performance.now() - started);
    }
    return times;
}"""


def percentiles(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.median(values)), 2), "p95": round(float(np.percentile(values, 95)), 2),
            "n": len(values)}


def open_ready(browser, url: str, query: str = "", context=None):
    context = context or browser.new_context(**PHONE)
    page = context.new_page()
    page.goto(url + query)
    page.wait_for_function("window.cxrPhone && window.cxrPhone.state !== 'loading'", timeout=TIMEOUT_MS)
    if page.evaluate("window.cxrPhone.state") != "ready":
        raise RuntimeError(f"The page did not load: {page.evaluate('window.cxrPhone.error')}")
    return context, page


def screen(page, film: Path) -> tuple[dict, np.ndarray | None]:
    shown = page.evaluate(SCREEN_JS, [base64.b64encode(film.read_bytes()).decode(), film.name])
    heatmap = (None if shown["heat"] is None
               else np.frombuffer(base64.b64decode(shown["heat"]), np.float32).reshape(224, 224))
    return shown["result"], heatmap


def throttle(context, page, rate: float):
    session = context.new_cdp_session(page)
    session.send("Emulation.setCPUThrottlingRate", {"rate": rate})
    return session


def variant_benchmark(browser, url: str, variant: str, films: list[Path], artifacts: Path, runs: int,
                      slow_films: int) -> dict:
    """Timings at 1x and 4x, and parity with the Python LiteRT path, of one variant."""
    model_path = screening.one_pass_path(variant, artifacts / "tflite")
    reference = screening.Screener(screening.OnePassEngine(model_path, num_threads=2),
                                   OODDetector.load(artifacts / "ood" / "detector.npz"))
    context, page = open_ready(browser, url, f"?variant={variant}")
    try:
        compile_ms = page.evaluate("window.cxrPhone.model.compileMs")
        for film in films[:WARM_UP_FILMS]:  # the first screens compile the page's JavaScript: not steady state
            screen(page, film)
        agree, differences, correlations, end_to_end, disagreements, stages = 0, [], [], [], [], []
        for film in films:
            shown, heatmap = screen(page, film)
            expected = reference.screen_bytes(film.read_bytes(), film.name)
            end_to_end.append(shown["totalMs"])
            if shown.get("timingsMs"):
                stages.append(shown["timingsMs"])
            same = (shown["accepted"], shown["guard"], shown.get("decision")) == (
                expected.accepted, expected.guard, expected.decision)
            agree += same
            if not same:
                disagreements.append({"film": film.name, "page": [shown["guard"], shown.get("decision")],
                                      "python": [expected.guard, expected.decision]})
            if shown["accepted"] and expected.accepted:
                differences.append(abs(shown["probability"] - expected.probability))
                if heatmap is not None and expected.heatmap is not None:
                    correlations.append(rank_correlation(heatmap, expected.heatmap))
        inference = page.evaluate(INFERENCE_JS, runs)
        throttle(context, page, SLOWDOWN)
        slow_end_to_end = [screen(page, film)[0]["totalMs"] for film in films[:slow_films]]
        slow_inference = page.evaluate(INFERENCE_JS, max(10, runs // 4))
    finally:
        context.close()
    valid = [value for value in correlations if np.isfinite(value)]
    return {
        "model_file": model_path.name, "model_bytes": model_path.stat().st_size, "compile_ms": round(compile_ms, 1),
        "inference_ms": percentiles(inference), "end_to_end_ms": percentiles(end_to_end),
        "end_to_end_stages_median_ms": {key: round(float(np.median([stage[key] for stage in stages])), 2)
                                        for key in (stages[0] if stages else {})},
        f"slowdown_{SLOWDOWN}x": {"inference_ms": percentiles(slow_inference),
                                  "end_to_end_ms": percentiles(slow_end_to_end)},
        "parity": {"films": len(films), "decision_agreement": round(agree / len(films), 5),
                   "disagreements": disagreements[:20],
                   "probability_max_abs_difference": float(max(differences)) if differences else None,
                   "heatmap_spearman_median": float(np.median(valid)) if valid else None,
                   "heatmap_spearman_min": float(np.min(valid)) if valid else None, "heatmaps_compared": len(valid)},
    }


def visits(browser, url: str, server, film: Path) -> dict:
    """First visit (empty cache) and repeat visit (service worker): bytes sent and time to the first verdict."""
    def visit(context) -> dict:
        server.served.clear()
        page = context.new_page()
        page.goto(url)
        page.wait_for_function("window.cxrPhone && window.cxrPhone.state === 'ready'", timeout=TIMEOUT_MS)
        page.set_input_files("#film", str(film))
        page.wait_for_function("window.cxrPhone.timings.length > 0", timeout=TIMEOUT_MS)
        first_verdict_ms = page.evaluate("window.cxrPhone.lastShownAt")
        ready_ms = page.evaluate("window.cxrPhone.readyAt")
        page.evaluate("navigator.serviceWorker.ready.then(() => true)")  # the precache is complete
        page.wait_for_timeout(500)
        sent = list(server.served)
        page.close()
        heavy = sum(size for path, size in sent if path.endswith((".wasm", ".tflite")))
        return {"bytes": sum(size for _, size in sent), "model_and_wasm_bytes": heavy, "requests": len(sent),
                "ready_ms": round(ready_ms, 1), "first_verdict_ms": round(first_verdict_ms, 1),
                "files": sorted({path for path, _ in sent})}

    context = browser.new_context(**PHONE)
    try:
        first = visit(context)
        repeat = visit(context)
    finally:
        context.close()
    return {"first": first, "repeat": repeat}


def camera_video(films: list[Path], path: Path) -> Path:
    """Test films, one second each, at :data:`CAMERA_FPS` frames per second."""
    frames = []
    for film in films:
        with Image.open(film) as image:
            frames += [phone_site.letterboxed(image, *CAMERA_SIZE)] * CAMERA_FPS
    return phone_site.write_y4m(frames, path, CAMERA_FPS)


def frames_per_second(page, seconds: float) -> float:
    """Camera frames the page screened per second over ``seconds`` (its own clock)."""
    start = page.evaluate("[window.cxrPhone.camera.frames, performance.now()]")
    page.wait_for_timeout(seconds * 1000)
    end = page.evaluate("[window.cxrPhone.camera.frames, performance.now()]")
    return (end[0] - start[0]) * 1000.0 / (end[1] - start[1])


def camera_benchmark(playwright, url: str, video: Path, frames: int, seconds: float) -> dict:
    """Frames screened per second at 1x and 4x; memory before and after ``frames`` frames."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGUMENTS + [
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={video}"])
    try:
        context = browser.new_context(**PHONE, permissions=["camera"])
        _, page = open_ready(browser, url, context=context)
        page.click("#camera-button")
        page.wait_for_function("window.cxrPhone.camera.frames >= 60", timeout=TIMEOUT_MS)
        fps_1x = frames_per_second(page, seconds)
        stages_1x = page.evaluate("window.cxrPhone.camera.lastTimingsMs")
        page.evaluate("window.gc && window.gc()")
        before = page.evaluate("({...window.cxrPhone.memory(), frames: window.cxrPhone.camera.frames})")
        target = before["frames"] + frames
        page.wait_for_function(f"window.cxrPhone.camera.frames >= {target}", timeout=max(TIMEOUT_MS, frames * 400),
                               polling=1000)
        page.evaluate("window.gc && window.gc()")
        after = page.evaluate("({...window.cxrPhone.memory(), frames: window.cxrPhone.camera.frames})")
        throttle(context, page, SLOWDOWN)
        page.wait_for_timeout(2000)  # frames in flight when the slowdown began
        fps_slow = frames_per_second(page, seconds)
        page.click("#camera-stop")
    finally:
        browser.close()
    growth = {key: (after[key] - before[key]) if after[key] is not None and before[key] is not None else None
              for key in ("jsHeapBytes", "wasmBytes")}
    return {"source": f"Chromium fake camera, {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]} at {CAMERA_FPS} frames/s (the most it "
                      "can deliver), centred square cropped and resized as an upload",
            "frames_per_second_1x": round(fps_1x, 2), f"frames_per_second_{SLOWDOWN}x": round(fps_slow, 2),
            "last_frame_stages_ms_1x": stages_1x,
            "memory_before": before, "memory_after": after, "frames_between": after["frames"] - before["frames"],
            "growth_bytes": growth}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", help="artifacts folder (default $CXR_ARTIFACTS_DIR or artifacts/)")
    parser.add_argument("--output", help=f"JSON path (default <artifacts>/{BENCHMARK_FILE_NAME})")
    parser.add_argument("--films", type=int, default=0, help="test films for parity (default 0: all)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--runs", type=int, default=100, help="inference runs per variant")
    parser.add_argument("--slow-films", type=int, default=40, help="films screened at the 4x slowdown")
    parser.add_argument("--camera-frames", type=int, default=2000)
    parser.add_argument("--camera-seconds", type=float, default=15.0, help="seconds to measure frames per second")
    arguments = parser.parse_args(argv)
    artifacts = Path(arguments.artifacts) if arguments.artifacts else config.artifacts_dir(create=False)
    films = screening.sample_films(10**6)
    if not films:
        print("error: no test films: set CXR_DATA_DIR to the folder holding chest_xray/test/.", file=sys.stderr)
        return 1
    parity_films = films if arguments.films <= 0 else films[::max(1, len(films) // arguments.films)][:arguments.films]
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="cxr-phone-benchmark-") as work:
        work = Path(work)
        phone_site.build(artifacts, work / "public", work / "dist")
        with phone_site.serving(work / "dist", with_server=True) as (url, server), sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGUMENTS)
            try:
                report = {"environment": {**timing.cpu_description(), "processor": platform.processor(),
                                          "chromium": browser.version, "platform": platform.platform(),
                                          "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(),
                                          "slowdown": f"CDP Emulation.setCPUThrottlingRate {SLOWDOWN} on the page "
                                                      "target (LiteRT.js runs on the page's main thread, no worker)",
                                          "wasm": "LiteRT.js single-threaded wasm (XNNPACK), "
                                                  "no cross-origin isolation"},
                          "visits": visits(browser, url, server, films[0]), "variants": {}}
                for variant in arguments.variants:
                    print(f"[phone] {variant}: {len(parity_films)} films", flush=True)
                    report["variants"][variant] = variant_benchmark(browser, url, variant, parity_films, artifacts,
                                                                    arguments.runs, arguments.slow_films)
            finally:
                browser.close()
            print("[phone] camera", flush=True)
            report["camera"] = camera_benchmark(playwright, url,
                                                camera_video(films[:2] + films[-2:], work / "camera.y4m"),
                                                arguments.camera_frames, arguments.camera_seconds)
    report["seconds"] = round(time.time() - started, 1)
    report["environment"]["load_average_at_end"] = os.getloadavg()  # other work on the machine slows every figure
    path = Path(arguments.output) if arguments.output else artifacts / BENCHMARK_FILE_NAME
    write_json(report, path)
    print(json.dumps({variant: {key: entry[key] for key in ("compile_ms", "inference_ms", "end_to_end_ms")}
                      for variant, entry in report["variants"].items()}, indent=1))
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
