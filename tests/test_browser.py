"""The web app in a real headless Chromium (Playwright with Debian's browser).

Skipped with the reason where no browser can run (``-rs`` prints it); in CI (``CI``
set) a missing browser is a failure, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import config, screening
from tests import browser
from tests.test_app import model_folder  # noqa: F401  (the tiny one-pass models, a fixture)


@pytest.fixture
def chromium():
    reason = browser.unavailable_reason()
    if reason and os.environ.get("CI"):
        pytest.fail(f"Browser tests must run in CI: {reason}")
    if reason:
        pytest.skip(reason)


@pytest.mark.integration
def test_upload_a_real_film_in_chromium_and_read_the_verdict(chromium, model_folder, real_data_dir,  # noqa: F811
                                                             tmp_path):
    from helpers import data

    test = data.load_examples("test", real_data_dir).head(2, seed=0)
    film = tmp_path / Path(test.paths[0]).name
    film.write_bytes(bytes(test.image_bytes[0]))
    screenshot = config.artifacts_dir("figures/app") / "app_in_chromium.png"
    with browser.streamlit_server({screening.MODEL_ENVIRONMENT_VARIABLE: str(model_folder)}) as url:
        text = browser.screen_in_browser(url, film, screenshot)
    assert film.name in text
    assert any(words in text for words in ("PNEUMONIA: signs", "NORMAL: no sign", "Refer to a radiologist")), text[:500]
    assert "not a medical device" in text
    assert screenshot.stat().st_size > 10_000


def test_server_is_stopped_after_the_block(chromium, model_folder):  # noqa: F811
    import urllib.request

    with browser.streamlit_server({screening.MODEL_ENVIRONMENT_VARIABLE: str(model_folder)}) as url:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
            assert response.read() == b"ok"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)


@pytest.mark.notebooks
def test_explorer_widgets_render_in_jupyterlab(chromium, smoke_chain, tmp_path):
    """Notebook 07 run in a live JupyterLab (a copy, so autosave cannot touch the committed file)."""
    import shutil

    name = "07_prediction_explorer.ipynb"
    if smoke_chain.get(name) is not None:
        pytest.fail(f"{name} failed in the smoke chain, so its artifacts are missing: {smoke_chain[name]}")
    shutil.copy(config.PROJECT_ROOT / "notebooks" / name, tmp_path / name)
    screenshot = config.artifacts_dir("figures/app") / "explorer_in_jupyterlab.png"
    with browser.jupyterlab_server(tmp_path, {"CXR_PROFILE": "smoke"}) as (url, token):
        result = browser.notebook_widgets_render(url, token, name, screenshot)
    assert result["errors"] == 0, "Error displaying widget"
    assert result["tracebacks"] == 0 and result["unrun"] == 0, result["text"][-2000:]
    assert result["widgets"] >= 1 and "Threshold" in result["text"]
