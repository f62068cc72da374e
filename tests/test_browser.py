"""The web app in a real headless Chromium (Playwright with Debian's browser).

Skipped with the reason where no browser can run (``-rs`` prints it); in CI (``CI``
set) a missing browser is a failure, not a skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import config, screening
from tests import browser
from tests.test_app import model_folder  # noqa: F401  (the tiny one-pass models, a fixture)


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
