"""The phone web app (``phone/``) in a real browser: same answers as Python, offline, camera, refusals.

A tiny one-pass model (32 features) and a guard fitted on its features stand in for
the trained ones, so the page is built and checked in seconds; parity on the trained
models and the 624 test films is measured by ``benchmarks/phone_benchmark.py``.
Playwright drives Debian's Chromium with a phone's viewport, touch and pixel ratio.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from helpers import guard, imaging, one_pass, phone_export, phone_site, screening, uploads
from helpers.errors import distinct_pair
from helpers.model import MODEL_FILE_NAME
from helpers.ood import FeatureDistribution, OODDetector, non_xray_images
from helpers.operating_point import OperatingPoint
from helpers.provenance import FittedOn
from tests import browser, films
from tests.conftest import require_tool

PHONE = {"viewport": {"width": 360, "height": 640}, "device_scale_factor": 3, "is_mobile": True, "has_touch": True}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
POINT = OperatingPoint(threshold=0.5, band_low=0.47, band_high=0.53, temperature=1.3, chosen_on="test fixture",
                       rule="fixed")
FILMS_PER_CLASS = 4
TIMEOUT_MS = 60_000


# --------------------------------------------------------------------------- #
# A tiny model, a guard fitted on its features, the page built and served
# --------------------------------------------------------------------------- #
def tiny_classifier(seed: int = 0):
    """The tests' tiny one-pass classifier, 32 features wide: enough for the guard fitted on them."""
    return films.tiny_classifier(seed, features=32, bias=0.1, name="tiny_phone")


def fit_tiny_guard(engine: screening.OnePassEngine, films: np.ndarray, fitted_on: FittedOn) -> OODDetector:
    """Colour, X-ray and orientation gates and the distance, fitted on the tiny model's features of ``films``."""
    def features(images):
        return np.stack([engine.run(np.asarray(image, np.float32))[2] for image in images])  # (N, 32)

    upright = features(films)
    turned = {name: features(images) for name, images in guard.orientation_variants(films).items()}
    others, _ = non_xray_images(per_kind=3, size=224)
    other_features = features(others)
    film_features = np.concatenate([upright, *turned.values()])
    xray_gate = guard.fit_linear_gate(np.concatenate([film_features, other_features]),
                                      ["xray"] * len(film_features) + ["not_xray"] * len(other_features),
                                      guard.XRAY_CLASSES, watched="xray", regularization=10.0, balanced=True)
    xray_gate = xray_gate.with_threshold(guard.threshold_between(xray_gate.watched_probability(film_features),
                                                                 xray_gate.watched_probability(other_features)))
    labels = [guard.UPRIGHT] * len(upright) + [guard.orientation_of(name) for name, values in turned.items()
                                               for _ in range(len(values))]
    orientation_gate = guard.fit_linear_gate(film_features, labels, guard.ORIENTATIONS, watched=guard.UPRIGHT,
                                             regularization=10.0)
    orientation_gate = orientation_gate.with_threshold(guard.threshold_between(
        orientation_gate.watched_probability(upright),
        orientation_gate.watched_probability(np.concatenate(list(turned.values())))))
    distribution = FeatureDistribution.fit(film_features)
    threshold = float(np.max(distribution.distances(upright))) * 1.5
    return OODDetector(distribution, threshold, xray_gate=xray_gate, orientation_gate=orientation_gate,
                       fitted_on=fitted_on)


def resized_films(films: list[Path], folder: Path) -> list[Path]:
    """Films at other sizes than the model's (the shared test films are 224 x 224), so the page's resize runs:
    a large grey PNG (shrunk, antialiased), a small JPEG (enlarged) and a wide RGB PNG."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for source, (size, mode, suffix) in zip([films[0], films[-1], films[1]], [((1024, 896), "L", ".png"),
                                                                          ((180, 160), "L", ".jpeg"),
                                                                          ((700, 500), "RGB", ".png")]):
        with Image.open(source) as image:
            path = folder / f"{source.stem}_{size[0]}x{size[1]}{suffix}"
            image.convert(mode).resize(size, Image.BICUBIC).save(path)
            made.append(path)
    return made


def sample_films(data_dir: Path) -> list[Path]:
    films = screening.sample_films(FILMS_PER_CLASS, data_dir)
    if len(films) != 2 * FILMS_PER_CLASS:
        pytest.fail(f"Expected {2 * FILMS_PER_CLASS} test films under {data_dir}/chest_xray/test.")
    return films


@pytest.fixture(scope="module")
def data_dir() -> Path:
    value = os.environ.get("CXR_DATA_DIR")
    if value and Path(value).is_dir():
        return Path(value)
    require_tool("The phone tests screen real test films: set CXR_DATA_DIR (CI uses ../shared/data).",
                 "The phone tests")


@pytest.fixture(scope="module")
def site(tmp_path_factory, data_dir):
    """Artifacts (tiny models, guard), the exported public folder and the built page: ``{name: Path}``."""
    require_tool(browser.unavailable_reason(), "Browser tests")
    root = tmp_path_factory.mktemp("phone")
    artifacts, public, dist = root / "artifacts", root / "public", root / "dist"
    films = sample_films(data_dir)
    pixels = np.stack([uploads.decode_upload(path.read_bytes(), path.name)[0] for path in films])  # (N, 224, 224, 3)
    classifier = tiny_classifier()
    keras_file = artifacts / "model" / MODEL_FILE_NAME
    keras_file.parent.mkdir(parents=True)
    classifier.save(keras_file)
    for variant in screening.ONE_PASS_VARIANTS:
        one_pass.convert_one_pass(classifier, variant, POINT, pixels.astype(np.uint8), artifacts / "tflite",
                                  keras_model_path=keras_file)
    engine = screening.OnePassEngine(screening.one_pass_path("float32", artifacts / "tflite"), num_threads=1)
    fitted_on = FittedOn.of_model_file(keras_file, engine.feature_width)
    fit_tiny_guard(engine, pixels, fitted_on).save(artifacts / "ood" / "detector.npz")
    phone_export.export_bundle(artifacts, public)
    phone_site.bundle_page(public, dist)
    films += resized_films(films, root / "resized")
    return {"artifacts": artifacts, "public": public, "dist": dist, "films": films, "root": root}


@pytest.fixture(scope="module")
def url(site):
    with phone_site.serving(site["dist"]) as address:
        yield address


def python_screener(site, variant: str = "int8") -> screening.Screener:
    """Python's pipeline on the same model and the guard as shipped to the page."""
    engine = screening.OnePassEngine(screening.one_pass_path(variant, site["artifacts"] / "tflite"), num_threads=1)
    return screening.Screener(engine, phone_export.read_guard(site["public"]))


@pytest.fixture(scope="module")
def playwright(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def playwright_browser(playwright):
    launched = playwright.chromium.launch(executable_path=browser.CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        yield launched
    finally:
        launched.close()


def open_page(playwright_browser, url: str, query: str = "", **context_options):
    """A fresh phone-sized context and the page, loaded and ready; returns (context, page)."""
    context = playwright_browser.new_context(**{**PHONE, **context_options})
    page = context.new_page()
    page.goto(url + query)
    page.wait_for_function("window.cxrPhone && window.cxrPhone.state !== 'loading'", timeout=TIMEOUT_MS)
    assert page.evaluate("window.cxrPhone.state") == "ready", page.evaluate("window.cxrPhone.error")
    return context, page


def screen_in_page(page, content: bytes, name: str) -> dict:
    """Choose the file in the page's file input; return what the page decided (``window.cxrPhone.last``)."""
    before = page.evaluate("window.cxrPhone.timings.length")
    page.set_input_files("#film", files=[{"name": name, "mimeType": "application/octet-stream", "buffer": content}])
    page.wait_for_function(f"window.cxrPhone.timings.length > {before}", timeout=TIMEOUT_MS)
    return page.evaluate("window.cxrPhone.last")


# --------------------------------------------------------------------------- #
# Files the page must refuse
# --------------------------------------------------------------------------- #
def huge_png(side: int = 20_000) -> bytes:
    """A valid grey PNG of side x side pixels, all black (compresses to a few hundred kB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def colour_photo() -> bytes:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    buffer = io.BytesIO()
    Image.fromarray(load_sample_images().images[1]).save(buffer, format="JPEG", quality=90)  # the flower
    return buffer.getvalue()


def upside_down(path: Path) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- #
# The page's own functions under Node, against Python's
# --------------------------------------------------------------------------- #
def run_node(script: str) -> str:
    """Run an ES module ``script`` with Node; returns what it printed."""
    if shutil.which("node") is None:
        require_tool("Node.js is not installed (it builds the phone app).", "The phone app's checks")
    finished = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True,
                              timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return finished.stdout


def source(name: str) -> str:
    return (phone_site.PHONE_DIR / "src" / name).as_uri()


@pytest.mark.parametrize("width, height", [(1000, 800), (300, 250), (224, 500), (500, 224), (180, 160), (65, 70)])
def test_resize_is_pillows_step_for_step(tmp_path, width, height):
    plane = np.random.default_rng(width).uniform(0, 255, (height, width)).astype(np.float32)
    (tmp_path / "plane.bin").write_bytes(plane.tobytes())
    run_node(f"""import {{resizePlane}} from "{source('resize.js')}";
import {{readFileSync, writeFileSync}} from "node:fs";
const bytes = readFileSync("{tmp_path / 'plane.bin'}");
const plane = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
writeFileSync("{tmp_path / 'resized.bin'}", Buffer.from(resizePlane(plane, {width}, {height}, 224).buffer));""")
    resized = np.frombuffer((tmp_path / "resized.bin").read_bytes(), np.float32).reshape(224, 224)
    np.testing.assert_array_equal(resized, imaging.resize_plane(plane, 224))


def test_three_channels_at_once_resize_as_three_planes(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (333, 517, 4), dtype=np.uint8)
    (tmp_path / "rgba.bin").write_bytes(rgba.tobytes())
    run_node(f"""import {{resizeRgba}} from "{source('resize.js')}";
import {{readFileSync, writeFileSync}} from "node:fs";
const rgba = new Uint8ClampedArray(readFileSync("{tmp_path / 'rgba.bin'}"));
writeFileSync("{tmp_path / 'resized.bin'}", Buffer.from(resizeRgba(rgba, 517, 333, 224, 3).buffer));""")
    resized = np.frombuffer((tmp_path / "resized.bin").read_bytes(), np.float32).reshape(224, 224, 3)
    for channel in range(3):
        np.testing.assert_array_equal(resized[..., channel],
                                      imaging.resize_plane(rgba[..., channel].astype(np.float32)))


def test_numbers_in_messages_are_printed_as_python_prints_them():
    pairs = [(60.6049, 60.6011, 1), (45.93, 60.62, 1), (0.031, 0.5, 2), (0.4999, 0.5, 2), (31.7, 25.0, 0),
             (25.4, 25.0, 0), (400.0, 50.0, 0), (50.0000001, 50.0, 0), (3.0, 3.0, 1)]
    printed = json.loads(run_node(f"""import {{distinctPair}} from "{source('format.js')}";
console.log(JSON.stringify({json.dumps(pairs)}"""
                                  ".map(([value, limit, decimals]) => distinctPair(value, limit, decimals))));"))
    assert [tuple(pair) for pair in printed] == [distinct_pair(*pair) for pair in pairs]


def test_header_checks_refuse_what_the_page_cannot_answer_as_python_does(tmp_path):
    from PIL import Image

    films = {"grey16.png": Image.fromarray(np.full((100, 120), 40_000, np.uint16)),
             "grey8.png": Image.fromarray(np.full((100, 120), 40, np.uint8))}
    for name, image in films.items():
        image.save(tmp_path / name)
    rules = json.dumps(phone_export.upload_rules())
    printed = json.loads(run_node(f"""import {{checkUpload}} from "{source('header.js')}";
import {{readFileSync}} from "node:fs";
const answers = {{}};
for (const name of {json.dumps(list(films))}) {{
  try {{ answers[name] = checkUpload(new Uint8Array(readFileSync("{tmp_path}/" + name)), name, {rules}); }}
  catch (error) {{ answers[name] = error.message; }}
}}
console.log(JSON.stringify(answers));"""))
    assert printed["grey8.png"]["width"] == 120 and printed["grey8.png"]["height"] == 100
    assert printed["grey16.png"].startswith("grey16.png is a 16-bit PNG")


# --------------------------------------------------------------------------- #
# The page in Chromium
# --------------------------------------------------------------------------- #
def test_export_ships_the_guard_python_reads_back(site):
    shipped = phone_export.read_guard(site["public"])
    original = OODDetector.load(site["artifacts"] / "ood" / "detector.npz")
    features = np.random.default_rng(0).normal(1.0, 0.5, (20, shipped.distribution.mean.shape[0])).astype(np.float32)
    np.testing.assert_allclose(shipped.distribution.distances(features), original.distribution.distances(features),
                               rtol=2e-3)
    np.testing.assert_allclose(shipped.xray_gate.probabilities(features), original.xray_gate.probabilities(features),
                               atol=1e-6)
    bundle = phone_export.read_bundle(site["public"])
    assert bundle["variants"]["int8"]["input"]["dtype"] == "uint8"
    assert bundle["variants"]["float32"]["input"]["dtype"] == "float32"
    assert bundle["not_a_medical_device"] == screening.NOT_A_MEDICAL_DEVICE
    sha = bundle["variants"]["int8"]["sha256"]
    assert sha[:12] in bundle["variants"]["int8"]["file"] and bundle["version"].startswith(sha[:12])


@pytest.mark.parametrize("variant", ["int8", "float32"])
def test_page_decides_as_the_python_screener(site, url, playwright_browser, variant):
    screener = python_screener(site, variant)
    context, page = open_page(playwright_browser, url, f"?variant={variant}")
    try:
        for film in site["films"]:
            shown = screen_in_page(page, film.read_bytes(), film.name)
            expected = screener.screen_bytes(film.read_bytes(), film.name)
            assert (shown["accepted"], shown["guard"]) == (expected.accepted, expected.guard), film.name
            assert shown.get("decision") == expected.decision, film.name
            assert shown["message"] == expected.message
            if expected.accepted:
                assert abs(shown["probability"] - expected.probability) < 2e-3, film.name
                assert shown["summary"] == expected.summary()
                heatmap = np.asarray(page.evaluate("Array.from(window.cxrPhone.lastHeatmap)")).reshape(224, 224)
                assert np.abs(heatmap - expected.heatmap).max() < 0.05, film.name
        assert page.locator("#model-version").inner_text().startswith(screener.engine.version)
        assert page.evaluate("document.documentElement.scrollWidth") <= 360  # no horizontal scroll
    finally:
        context.close()


def test_input_tensor_matches_python_within_one_grey_level(site, url, playwright_browser):
    context, page = open_page(playwright_browser, url)
    try:
        for film in site["films"][:2] + site["films"][-3:]:  # the last three are resized by the page
            screen_in_page(page, film.read_bytes(), film.name)
            shown = np.asarray(page.evaluate("Array.from(window.cxrPhone.lastInput)"), dtype=np.float64)
            pixels, _ = uploads.decode_upload(film.read_bytes(), film.name)
            expected = np.clip(np.round(pixels.astype(np.float64)), 0, 255).reshape(-1)  # the uint8 input
            assert shown.shape == expected.shape
            assert np.abs(shown - expected).max() <= 1.0, film.name
            assert np.mean(shown == expected) >= 0.99, film.name  # the resize is Pillow's, step for step
    finally:
        context.close()


def test_refusals_get_pythons_messages_and_the_page_keeps_working(site, url, playwright_browser):
    screener = python_screener(site)
    flipped_film = site["films"][0]
    cases = {"notes.txt": b"This is a text file, not a chest X-ray.\n" * 20, "flower.jpeg": colour_photo(),
             "upside_down.png": upside_down(flipped_film), "huge.png": huge_png()}
    expected_kinds = {"notes.txt": "", "flower.jpeg": guard.NOT_XRAY, "upside_down.png": guard.WRONG_WAY_ROUND,
                      "huge.png": ""}
    context, page = open_page(playwright_browser, url)
    try:
        for name, content in cases.items():
            expected = screener.screen_bytes(content, name)
            assert not expected.accepted and expected.guard == expected_kinds[name], (name, expected.message)
            shown = screen_in_page(page, content, name)
            assert not shown["accepted"], name
            assert shown["message"] == expected.message
            assert page.locator("#verdict").inner_text() == "Not analysed"
            assert page.locator("#message").inner_text() == expected.message
        film = site["films"][2]
        shown = screen_in_page(page, film.read_bytes(), film.name)
        assert shown["accepted"] and shown["decision"] == screener.screen_bytes(film.read_bytes(), film.name).decision
    finally:
        context.close()


def test_no_request_after_load_carries_image_data(site, url, playwright_browser):
    context, page = open_page(playwright_browser, url)
    requests = []
    page.on("request", lambda request: requests.append(request))
    try:
        for film in site["films"][:3]:
            screen_in_page(page, film.read_bytes(), film.name)
        page.wait_for_timeout(500)
        assert [(request.method, request.url) for request in requests if request.post_data_buffer] == []
        assert [request.url for request in requests if not request.url.startswith(url)] == []
        assert [request.url for request in requests] == []  # screening needs no network at all
    finally:
        context.close()


def test_second_visit_screens_offline(site, url, playwright_browser):
    context, page = open_page(playwright_browser, url)
    try:
        page.wait_for_function("navigator.serviceWorker.controller !== null", timeout=TIMEOUT_MS)
        context.set_offline(True)
        page.reload()
        page.wait_for_function("window.cxrPhone && window.cxrPhone.state !== 'loading'", timeout=TIMEOUT_MS)
        assert page.evaluate("window.cxrPhone.state") == "ready", page.evaluate("window.cxrPhone.error")
        film = site["films"][1]
        shown = screen_in_page(page, film.read_bytes(), film.name)
        assert shown["accepted"] or shown["guard"], shown
        assert shown["message"] == python_screener(site).screen_bytes(film.read_bytes(), film.name).message
    finally:
        context.close()


CACHED_FILES_JS = """async () => {
    const names = await caches.keys();
    const files = [];
    for (const name of names) {
        for (const request of await (await caches.open(name)).keys()) files.push(new URL(request.url).pathname);
    }
    return {names, files};
}"""


def test_a_new_model_replaces_the_old_one_in_the_offline_cache(site, playwright_browser, tmp_path):
    public = tmp_path / "public"
    phone_export.export_bundle(site["artifacts"], public, variants=("float32", "int8"))  # another default model
    newer = phone_site.bundle_page(public, tmp_path / "newer")
    served = tmp_path / "served"
    shutil.copytree(site["dist"], served)
    old_model = phone_export.read_bundle(site["public"])["variants"]["int8"]["file"]
    new_model = phone_export.read_bundle(public)["variants"]["float32"]["file"]
    with phone_site.serving(served) as url:
        context, page = open_page(playwright_browser, url)
        try:
            page.wait_for_function("navigator.serviceWorker.controller !== null", timeout=TIMEOUT_MS)
            before = page.evaluate(CACHED_FILES_JS)
            assert len(before["names"]) == 1 and f"/{old_model}" in before["files"]
            shutil.rmtree(served)
            shutil.copytree(newer, served)  # the host now serves the new version
            page.reload()  # the browser checks sw.js, installs the new worker, which drops the old cache
            deadline = time.monotonic() + TIMEOUT_MS / 1000
            while time.monotonic() < deadline:  # installed, then activated: only the new version's cache is left
                names = page.evaluate("caches.keys()")
                if len(names) == 1 and names != before["names"]:
                    break
                page.wait_for_timeout(250)
            page.reload()
            page.wait_for_function("window.cxrPhone && window.cxrPhone.state === 'ready'", timeout=TIMEOUT_MS)
            after = page.evaluate(CACHED_FILES_JS)
            assert f"/{new_model}" in after["files"] and f"/{old_model}" not in after["files"], (after, new_model)
            assert "float32" in page.locator("#model-version").inner_text()
        finally:
            context.close()


def fake_camera_video(site, path: Path, seconds_each: float = 2.0, fps: int = 10) -> Path:
    """A y4m video for Chromium's fake camera: a test film filling the frame, then a colour photo, then the film."""
    from PIL import Image

    with Image.open(site["films"][2]) as film:  # an original 224 x 224 test film (the last ones are resized)
        film_frame = phone_site.letterboxed(film, 224, 224)
    photo_frame = phone_site.letterboxed(Image.open(io.BytesIO(colour_photo())), 224, 224)
    frames = int(seconds_each * fps)
    return phone_site.write_y4m([film_frame] * frames + [photo_frame] * frames + [film_frame] * frames, path, fps)


def test_camera_mode_screens_frames_and_follows_the_film(site, url, playwright):
    video = fake_camera_video(site, site["root"] / "camera.y4m")
    arguments = CHROMIUM_ARGS + ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                                 f"--use-file-for-fake-video-capture={video}"]
    launched = playwright.chromium.launch(executable_path=browser.CHROMIUM, headless=True, args=arguments)
    try:
        context = launched.new_context(**PHONE, permissions=["camera"])
        page = context.new_page()
        page.goto(url)
        page.wait_for_function("window.cxrPhone && window.cxrPhone.state === 'ready'", timeout=TIMEOUT_MS)
        page.click("#camera-button")
        # film -> photo -> film: the shown verdict changes twice (smoothed over a few frames)
        page.wait_for_function("window.cxrPhone.camera.kinds.length >= 3", timeout=TIMEOUT_MS)
        kinds = page.evaluate("window.cxrPhone.camera.kinds")
        assert "Not analysed" in kinds and any(kind != "Not analysed" for kind in kinds), kinds
        assert page.evaluate("window.cxrPhone.camera.frames") >= 10
        assert "A photo of a screen is not the original film" in page.locator("#camera").inner_text()
        page.click("#camera-stop")
        page.wait_for_function("document.getElementById('camera').hidden")
    finally:
        launched.close()


def test_page_has_no_serious_accessibility_violations(site, url, playwright_browser):
    context, page = open_page(playwright_browser, url)
    try:
        film = site["films"][0]
        screen_in_page(page, film.read_bytes(), film.name)
        page.add_script_tag(path=str(phone_site.PHONE_DIR / "node_modules" / "axe-core" / "axe.min.js"))
        results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
        serious = [(violation["id"], violation["impact"], violation["help"]) for violation in results["violations"]
                   if violation["impact"] in ("serious", "critical")]
        assert serious == []
        assert json.dumps(results["violations"]) is not None
    finally:
        context.close()
