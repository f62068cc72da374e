"""The web app in a real headless Chromium (Playwright with Debian's browser).

Skipped with the reason where no browser can run (``-rs`` prints it); in CI (``CI``
set) a missing browser is a failure, not a skip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import config, one_pass, screening
from tests import browser
from tests.conftest import encode_image
from tests.test_app import model_folder  # noqa: F401  (the tiny one-pass models, a fixture)
from tests.test_screening import POINT, tiny_classifier


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


def brightness_classifier():
    """The tiny classifier with weights set so that P(PNEUMONIA) grows with the film's brightness."""
    model = tiny_classifier()
    conv = model.get_layer("out_relu")
    kernel, bias = conv.get_weights()
    conv.set_weights([np.full_like(kernel, 1.0 / kernel[..., 0].size), np.zeros_like(bias)])  # mean of [-1, 1] pixels
    dense = model.get_layer("logit")
    weights, _ = dense.get_weights()
    dense.set_weights([np.full_like(weights, 2.0), np.array([-4.0], np.float32)])  # logit = 16 * mean - 4
    return model


@pytest.fixture(scope="module")
def brightness_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("brightness") / "tflite"
    levels = np.linspace(100, 255, 16).astype(np.uint8)  # int8 ranges calibrated over the brightness the test uses
    calibration = np.broadcast_to(levels[:, None, None, None], (16, 224, 224, 3)).copy()
    one_pass.convert_one_pass(brightness_classifier(), "int8", POINT, calibration, folder)
    return folder


def test_four_sessions_uploading_at_once_each_see_their_own_verdict(chromium, brightness_models, tmp_path):
    films, expected = [], []
    screener = screening.Screener.load("int8", brightness_models)  # the app's default engine, screened alone
    for index, level in enumerate((150, 165, 180, 195)):
        picture = np.full((224, 224), level, np.uint8)
        picture[60:160, 60:160] = level - 40  # some structure
        film = tmp_path / f"session_{index}.png"
        film.write_bytes(encode_image(picture, "PNG"))
        films.append(film)
        result = screener.screen_bytes(film.read_bytes(), film.name)
        expected.append(f"Raw P(pneumonia) {result.probability:.3f}")
    assert len(set(expected)) == len(films), f"the films must get different answers to tell sessions apart: {expected}"
    with browser.streamlit_server({screening.MODEL_ENVIRONMENT_VARIABLE: str(brightness_models)}) as url:
        texts = browser.screen_in_sessions(url, films)
    for film, text, answer in zip(films, texts, expected):
        others = [other.name for other in films if other != film]
        assert film.name in text and not any(name in text for name in others), text[:400]
        assert answer in text, (film.name, answer, text[:600])
