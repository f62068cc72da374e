"""Build the phone web app's static folder and serve it on localhost.

    python -m helpers.phone_site build    # export (helpers.phone_export), npm ci, bundle -> phone/dist/
    python -m helpers.phone_site serve    # serve phone/dist/ on http://127.0.0.1:8765/

Node and npm are needed to build only: the built folder is plain static files
(HTML, JavaScript, the LiteRT.js wasm, the models) that any HTTPS host serves. Camera
access needs HTTPS or localhost.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import typing
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import sync_playwright

from helpers import config, phone_export, screening

PHONE_DIR = config.PROJECT_ROOT / "phone"
DIST_DIR = PHONE_DIR / "dist"
DEFAULT_PORT = 8765
BUILD_LOCK_NAME = ".build.lock"  # git-ignored
CHROMIUM = "/usr/bin/chromium"  # Debian's Chromium, driven by Playwright from PyPI (no playwright install)
PHONE_SCREEN = {"viewport": {"width": 360, "height": 640}, "device_scale_factor": 2, "is_mobile": True,
                "has_touch": True}
CONTENT_TYPES = {".wasm": "application/wasm", ".webmanifest": "application/manifest+json",
                 ".tflite": "application/octet-stream", ".bin": "application/octet-stream", ".js": "text/javascript",
                 ".svg": "image/svg+xml"}


class PhoneBuildError(RuntimeError):
    """Node, npm or the bundler failed; the message says which command and what it printed."""


def _run(command: list[str], what: str) -> str:
    if shutil.which(command[0]) is None:
        raise PhoneBuildError(f"{command[0]} is not installed: install Node.js 18 or newer (with npm) to {what}.")
    finished = subprocess.run(command, cwd=PHONE_DIR, capture_output=True, text=True, timeout=900)
    if finished.returncode != 0:
        raise PhoneBuildError(f"{' '.join(command)} failed ({what}):\n"
                              f"{finished.stdout[-2000:]}{finished.stderr[-3000:]}")
    return finished.stdout


def install_packages(force: bool = False) -> None:
    """``npm ci`` in ``phone/`` (the exact versions of ``package-lock.json``) unless already installed."""
    installed = PHONE_DIR / "node_modules" / ".package-lock.json"
    lock = PHONE_DIR / "package-lock.json"
    if force or not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        _run(["npm", "ci", "--no-audit", "--no-fund"], "install the page's pinned packages")


@contextlib.contextmanager
def _build_lock():
    """One build at a time in ``phone/``
    (the tests and a notebook may build at once; ``npm ci`` empties node_modules)."""
    with (PHONE_DIR / BUILD_LOCK_NAME).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def bundle_page(public: str | os.PathLike, output: str | os.PathLike = DIST_DIR) -> Path:
    """``node build.mjs``: the page, its script, the wasm builds and ``public``'s files into ``output``."""
    with _build_lock():
        install_packages()
        _run(["node", "build.mjs", "--public", str(Path(public).resolve()), "--out", str(Path(output).resolve())],
             "bundle the page")
    return Path(output)


def build(artifacts: str | os.PathLike | None = None, public: str | os.PathLike = phone_export.DEFAULT_OUTPUT,
          output: str | os.PathLike = DIST_DIR) -> Path:
    """Export from ``artifacts`` into ``public``, then bundle into ``output``; returns ``output``."""
    phone_export.export_bundle(artifacts, public)
    return bundle_page(public, output)


class StaticHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with the types a browser needs for wasm and the manifest; quiet logs."""

    extensions_map: typing.ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                                                        **CONTENT_TYPES}

    def log_message(self, format, *args):
        return

    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")  # the service worker decides what is kept offline
        super().end_headers()

    def copyfile(self, source, outputfile):
        """Send the file, and note ``(path, bytes)`` in the server's ``served`` list (what a visit downloaded)."""
        content = source.read()
        outputfile.write(content)
        self.server.served.append((self.path.split("?")[0], len(content)))


def make_server(folder: str | os.PathLike, port: int = 0, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """A threaded static server for ``folder`` (port 0: a free one); call ``serve_forever``."""
    if not (Path(folder) / "index.html").is_file():
        raise PhoneBuildError(f"No index.html in {folder}: build the page first (make phone).")
    handler = functools.partial(StaticHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.served = []  # (path, bytes) of every file sent
    return server


@contextlib.contextmanager
def serving(folder: str | os.PathLike, with_server: bool = False):
    """Serve ``folder`` on a free localhost port in a thread; yields the URL (and the server, ``with_server``)."""
    server = make_server(folder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"http://127.0.0.1:{server.server_address[1]}/"
        yield (address, server) if with_server else address
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def screenshot(url: str, film: str | os.PathLike, path: str | os.PathLike, chromium: str = CHROMIUM) -> str:
    """Open the page on a 360 x 640 touch screen, screen ``film``, save the whole page as PNG; returns the summary.

    Raises:
        PhoneBuildError: no Chromium at ``chromium`` (install Debian's chromium).
    """
    if not Path(chromium).is_file():
        raise PhoneBuildError(f"No Chromium at {chromium}: install it (apt-get install chromium) to see the page.")
    # Playwright's sync API refuses a thread with a running event loop (a Jupyter kernel's): use a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_screenshot, url, film, path, chromium).result()


def _screenshot(url: str, film: str | os.PathLike, path: str | os.PathLike, chromium: str) -> str:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_context(**PHONE_SCREEN).new_page()
            page.goto(url)
            page.wait_for_function("window.cxrPhone && window.cxrPhone.state !== 'loading'", timeout=120_000)
            page.set_input_files("#film", str(film))
            page.wait_for_function("window.cxrPhone.timings.length > 0", timeout=120_000)
            page.wait_for_timeout(300)  # let the heat map paint
            page.screenshot(path=str(path), full_page=True)
            return page.evaluate("window.cxrPhone.last.summary")
        finally:
            browser.close()


def _studio_range(values: np.ndarray, span: float, offset: float) -> np.ndarray:
    """Full-range 0-255 YCbCr values -> the studio range Chromium reads a y4m file in (Y 16-235, Cb/Cr 16-240)."""
    return np.clip(np.round(offset + values * span / 255.0), 0, 255).astype(np.uint8)


def write_y4m(frames: list[np.ndarray], path: str | os.PathLike, fps: int) -> Path:
    """A YUV4MPEG2 video (4:2:0, BT.601 studio range) of RGB frames (H, W, 3) uint8, even sizes.

    Chromium's fake camera (``--use-file-for-fake-video-capture=<path>``) loops it at
    ``fps`` frames per second, and shows the frames with the levels they had.
    """
    height, width = frames[0].shape[:2]
    if height % 2 or width % 2 or any(frame.shape != frames[0].shape for frame in frames):
        raise ValueError(f"Frames must share one even size; the first is {width}x{height}.")
    path = Path(path)
    with path.open("wb") as video:
        video.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            luma, blue, red = (np.asarray(plane, np.float32)
                               for plane in Image.fromarray(frame).convert("YCbCr").split())
            chroma = [np.asarray(Image.fromarray(plane, mode="F").resize((width // 2, height // 2), Image.BILINEAR))
                      for plane in (blue, red)]
            video.write(b"FRAME\n" + _studio_range(luma, 219.0, 16.0).tobytes()
                        + b"".join(_studio_range(plane - 128.0, 224.0, 128.0).tobytes() for plane in chroma))
    return path


def letterboxed(image, width: int, height: int) -> np.ndarray:
    """A PIL image scaled to fit a black (height, width, 3) uint8 frame, centred (a film held up to a camera)."""
    frame = Image.new("RGB", (width, height))
    scale = min(width / image.width, height / image.height)
    fitted = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    frame.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
    return np.asarray(frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.phone_site", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "serve"))
    parser.add_argument("--artifacts", help="artifacts folder (default $CXR_ARTIFACTS_DIR or artifacts/)")
    parser.add_argument("--output", default=str(DIST_DIR), help="the built folder (default phone/dist)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "build":
            folder = build(arguments.artifacts, output=arguments.output)
            print(f"Built {folder}: serve it with python -m helpers.phone_site serve, or copy it to any HTTPS host.")
            return 0
        server = make_server(arguments.output, arguments.port)
    except (PhoneBuildError, screening.ScreeningModelError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Serving {arguments.output} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl+C stops).", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
