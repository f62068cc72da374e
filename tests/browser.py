"""Drive the web app and JupyterLab in a real headless Chromium.

The web app: start ``streamlit run``, upload a film, read the verdict. JupyterLab: open
notebook 07, run all cells, check the explorer's widgets render.

Used by ``tests/test_browser.py`` and, on the trained model, for the README's screenshot::

    python -m tests.browser FILM.jpeg docs/app_screenshot.png   # model from artifacts/tflite/

Playwright (PyPI) drives Debian's ``chromium`` (``executable_path``, ``--no-sandbox``);
``playwright install`` is never needed. Every server is stopped by its own process group.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
APP = PROJECT_ROOT / "app" / "streamlit_app.py"
CHROMIUM = "/usr/bin/chromium"
# JavaScript: true once no code cell is queued or running ("[*]") and at least one has run.
ALL_CELLS_RAN = """() => {
    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);
    return prompts.some(t => /\\[\\d+\\]/.test(t)) && !prompts.some(t => t.includes('*'));
}"""
VERDICT_PATTERN = r"/PNEUMONIA: signs|NORMAL: no sign|Refer to a radiologist|not analysed|does not look like/"


def unavailable_reason() -> str | None:
    """Why a browser test cannot run here (None when it can)."""
    if not Path(CHROMIUM).is_file():
        return (f"no Chromium at {CHROMIUM}: install Debian's chromium and chromium-driver "
                "(make test does it when run as root)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (it is in requirements.txt: run make venv)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, timeout: float = 90.0, expect: bytes | None = b"ok") -> None:
    """Poll ``url`` until it answers 200 (with body ``expect`` if given); raise with the server's output if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"The server exited with code {process.returncode}:\n{process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200 and (expect is None or response.read().strip() == expect):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"No answer from {url} within {timeout:.0f} s.")


@contextlib.contextmanager
def _server(command: list[str], health_url: str, environment: dict | None, expect: bytes | None = b"ok"):
    """Run ``command`` in its own process group until ``health_url`` answers; stop the whole group after."""
    process = subprocess.Popen(command, cwd=str(PROJECT_ROOT), env={**os.environ, **(environment or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_health(health_url, process, expect=expect)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # the server and anything it started (kernels)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()


@contextlib.contextmanager
def streamlit_server(environment: dict | None = None):
    """``streamlit run app/streamlit_app.py`` on 127.0.0.1 and a free port; yields its URL, then stops it."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless=true",
               f"--server.port={port}", "--server.address=127.0.0.1", "--browser.gatherUsageStats=false",
               "--server.fileWatcherType=none"]
    with _server(command, f"http://127.0.0.1:{port}/_stcore/health", environment):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def jupyterlab_server(root: Path, environment: dict | None = None):
    """JupyterLab on 127.0.0.1 and a free port, serving ``root``; yields ``(url, token)``, then stops it."""
    import secrets

    port, token = free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}",
               "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               "--ServerApp.port_retries=0", "--LabApp.news_url="]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI run as root
        command.append("--allow-root")
    with tempfile.TemporaryDirectory(prefix="cxr-lab-settings-") as settings:  # this server's own user settings
        tracker = Path(settings) / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
        tracker.parent.mkdir(parents=True)
        tracker.write_text('{"windowingMode": "none"}')  # every cell in the page, so all can be checked
        environment = {**(environment or {}), "JUPYTERLAB_SETTINGS_DIR": settings}
        with _server(command, f"http://127.0.0.1:{port}/api/status?token={token}", environment, expect=None):
            yield f"http://127.0.0.1:{port}", token


def notebook_widgets_render(url: str, token: str, notebook: str, screenshot: Path | None = None,
                            timeout_ms: int = 300_000) -> dict:
    """Open ``notebook`` in JupyterLab, run all cells, wait for the widgets; return what the page shows.

    Returns ``{"widgets": rendered widget views, "errors": "Error displaying widget"
    messages, "tracebacks": error outputs, "unrun": code cells without an execution
    count (a collapsed input: without output), "text": the notebook's text}``.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/{notebook}?token={token}", wait_until="domcontentloaded")
            page.locator(".jp-NotebookPanel").first.wait_for(timeout=timeout_ms)
            page.locator(r"text=/\| Idle/").first.wait_for(timeout=timeout_ms)  # the kernel has started
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            page.wait_for_function(ALL_CELLS_RAN, timeout=timeout_ms)  # or stopped at an error: no "[*]" left
            page.wait_for_timeout(2000)  # let the last widget views render
            widget = page.locator(".jp-OutputArea-output .jupyter-widgets").first
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                widget.scroll_into_view_if_needed()
                page.screenshot(path=str(screenshot))
            text = page.locator(".jp-NotebookPanel").first.inner_text()
            # A cell ran when its input prompt shows an execution count. A collapsed input (the
            # exercise solutions) shows no prompt: it ran when its output is there (every solution prints).
            prompts = page.locator(".jp-CodeCell").evaluate_all(
                "cells => cells.map(cell => cell.querySelector('.jp-InputPlaceholder')"
                " ? (cell.querySelector('.jp-OutputArea-output') ? '[ran]' : '')"
                " : cell.querySelector('.jp-InputPrompt').textContent)")
            return {"widgets": page.locator(".jp-OutputArea-output .jupyter-widgets").count(),
                    "errors": text.count("Error displaying widget"),
                    "tracebacks": page.locator("[data-mime-type='application/vnd.jupyter.error']").count(),
                    "unrun": sum(not re.search(r"\[(\d+|ran)\]", prompt) for prompt in prompts), "text": text}
        finally:
            browser.close()


def screen_in_browser(url: str, film: Path, screenshot: Path | None = None, timeout_ms: int = 90_000) -> str:
    """Open the app, upload ``film`` through its ``input[type=file]``, wait for the verdict; return the page text."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            upload = page.locator("input[type=file]")
            upload.wait_for(state="attached", timeout=timeout_ms)
            upload.set_input_files(str(film))
            page.locator(f"text={VERDICT_PATTERN}").first.wait_for(timeout=timeout_ms)
            page.locator("img").last.wait_for(timeout=timeout_ms)
            page.wait_for_timeout(1000)  # let the images paint before the screenshot
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            return page.inner_text("body")
        finally:
            browser.close()


def screen_in_sessions(url: str, films: list[Path], timeout_ms: int = 120_000) -> list[str]:
    """One browser session per film, all uploading at the same moment; each session's page text.

    Each film gets its own browser context (its own cookies and Streamlit session, as
    separate users have); the pages are opened first, then every upload is started
    before any verdict is awaited, so the server screens them concurrently.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            pages = [browser.new_context(viewport={"width": 1280, "height": 1000}).new_page() for _ in films]
            for page in pages:
                page.goto(url, wait_until="domcontentloaded")
                page.locator("input[type=file]").wait_for(state="attached", timeout=timeout_ms)
            for page, film in zip(pages, films):  # every upload starts before any verdict is awaited
                page.locator("input[type=file]").set_input_files(str(film))
            texts = []
            for page in pages:
                page.locator(f"text={VERDICT_PATTERN}").first.wait_for(timeout=timeout_ms)
                page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')",
                                       timeout=timeout_ms)  # the script run has finished
                texts.append(page.inner_text("body"))
            return texts
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    arguments = argv if argv is not None else sys.argv[1:]
    if len(arguments) != 2:
        print("usage: python -m tests.browser FILM SCREENSHOT.png", file=sys.stderr)
        return 2
    reason = unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    film, screenshot = Path(arguments[0]), Path(arguments[1])
    with streamlit_server() as url:
        text = screen_in_browser(url, film, screenshot)
    print(next((line for line in text.splitlines() if any(word in line for word in ("PNEUMONIA:", "NORMAL:", "Refer"))),
               text[:300]))
    print(f"screenshot: {screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
