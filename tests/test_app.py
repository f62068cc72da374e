"""The Streamlit web app, headless (``streamlit.testing.v1.AppTest``), on tiny one-pass models.

The app is a thin layer over :mod:`helpers.serving.pipeline` (tested in test_screening); these
tests pin what the page shows: a verdict, refusals as one-line messages (never an
exception), the results table with its CSV download, the engine switch, the sample
films and the page without a model. They need only the web app's dependencies
(``app/requirements.txt``): ``.ci/run`` also runs them in such an environment, on tiny models
written beforehand (``tests/films.py``).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest

from helpers.serving import pipeline as screening
from tests.films import encode_image, film_bytes, one_pass_models

APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
DECISION_WORDS = ("PNEUMONIA:", "NORMAL:", "Refer to a radiologist")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """``<tmp>/tflite/`` with the three one-pass variants of the tiny classifier (or $CXR_TEST_MODELS' copies)."""
    return one_pass_models(tmp_path_factory.mktemp("app"))


@pytest.fixture
def app(model_folder, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(screening.MODEL_ENVIRONMENT_VARIABLE, str(model_folder))
    monkeypatch.delenv("CXR_DATA_DIR", raising=False)
    st.cache_resource.clear()
    test = AppTest.from_file(str(APP), default_timeout=60)
    test.run()
    assert not test.exception
    return test


def shown(element) -> str:
    """An element's Markdown as the reader sees it: the app backslash-escapes every user-chosen character."""
    return re.sub(r"\\(.)", r"\1", element.value)


def verdicts(test) -> list[str]:
    """The decision boxes on the page (success / error / warning with decision words)."""
    boxes = [*test.success, *test.error, *test.warning]
    return [shown(box) for box in boxes if any(word in shown(box) for word in DECISION_WORDS)]


def upload(test, *files):
    test.file_uploader[0].set_value(list(files) if len(files) > 1 else files[0])
    test.run()
    assert not test.exception, test.exception
    return test


def test_page_without_a_model_names_the_command_that_makes_it(tmp_path, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(screening.MODEL_ENVIRONMENT_VARIABLE, str(tmp_path))
    st.cache_resource.clear()
    test = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not test.exception
    assert any("make run" in shown(error) for error in test.error)
    assert not test.file_uploader  # nothing to upload to


def test_sidebar_shows_engine_version_threshold_and_notice(app):
    text = " ".join(shown(markdown) for markdown in app.sidebar.markdown)
    assert "int8" in text and "version" in text and "Threshold** 0.500" in text and "test fixture" in text
    assert any("not a medical device" in shown(info) for info in app.sidebar.info)


def test_a_film_gets_a_verdict_probability_and_timing(app):
    upload(app, ("film.png", film_bytes(), "image/png"))
    assert len(verdicts(app)) == 1 and "calibrated P(pneumonia)" in verdicts(app)[0]
    caption = " ".join(shown(caption) for caption in app.caption)
    assert "vs threshold 0.500" in caption and " ms on TFLite int8" in caption


@pytest.mark.integration
def test_a_real_test_xray_gets_a_verdict(real_data_dir, app):
    films = screening.sample_films(per_class=1, data_dir=real_data_dir)
    if not films:
        pytest.fail(f"{real_data_dir} has no chest_xray/test/{{NORMAL,PNEUMONIA}}/ films (the Kaggle layout).")
    upload(app, (films[0].name, films[0].read_bytes(), "image/jpeg"))
    assert len(verdicts(app)) == 1
    assert shown(app.subheader[0]) == films[0].name


@pytest.mark.parametrize("name, content, message", [
    ("photo.jpg", encode_image(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)), "colour"),
    ("broken.png", film_bytes()[:2000], "truncated or damaged"),
    ("empty.png", b"", "empty"),
    ("notes.png", b"plain text renamed to .png", "not an image file"),
])
def test_bad_files_give_a_message_and_clear_the_previous_verdict(app, name, content, message):
    upload(app, ("film.png", film_bytes(), "image/png"))
    assert verdicts(app)
    upload(app, (name, content, "image/png"))
    assert not verdicts(app), "the previous verdict is still on the page"
    errors = [shown(error) for error in app.error]
    assert any(name in error and message in error for error in errors), errors


def test_several_files_give_a_table_and_a_csv_download(app):
    upload(app, ("a.png", film_bytes(1), "image/png"), ("b.png", film_bytes(2), "image/png"),
           ("empty.png", b"", "image/png"))
    table = app.dataframe[0].value
    assert list(table["file"]) == ["a.png", "b.png", "empty.png"]
    assert list(table["status"]) == ["decided", "decided", "refused"]
    assert len(app.get("download_button")) == 1
    assert len(verdicts(app)) == 2


def test_engine_switch_loads_the_other_variant(app):
    app.sidebar.selectbox[0].set_value("float32").run()
    assert not app.exception
    assert "float32" in " ".join(shown(markdown) for markdown in app.sidebar.markdown)
    upload(app, ("film.png", film_bytes(), "image/png"))
    assert "TFLite float32" in " ".join(shown(caption) for caption in app.caption)


@pytest.mark.integration
def test_sample_films_need_no_upload(model_folder, monkeypatch, real_data_dir):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    if not screening.sample_films(data_dir=real_data_dir):
        pytest.skip("CXR_DATA_DIR has no Kaggle folder layout (chest_xray/test/...)")
    monkeypatch.setenv(screening.MODEL_ENVIRONMENT_VARIABLE, str(model_folder))
    monkeypatch.setenv("CXR_DATA_DIR", str(real_data_dir))
    st.cache_resource.clear()
    test = AppTest.from_file(str(APP), default_timeout=60).run()
    options = test.multiselect[0].options
    assert len(options) == 6  # 3 NORMAL + 3 PNEUMONIA official test films
    test.multiselect[0].select(options[0]).run()
    assert not test.exception and len(verdicts(test)) == 1


def test_a_site_calibration_can_be_made_the_active_operating_point(model_folder, monkeypatch, tmp_path):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from helpers.jsonio import write_json
    from helpers.operating_point import OperatingPoint
    from helpers.provenance import FittedOn
    from helpers.serving import site

    point = OperatingPoint(threshold=0.3, chosen_on="site: 20 NORMAL + 20 PNEUMONIA labelled local films")
    fitted_on = FittedOn(screening.OnePassEngine(screening.one_pass_path("int8", model_folder)).keras_sha256, 8)
    calibration = site.SiteCalibration(point, site.LinearHead(np.full(8, 0.05), -1.0),
                                       site.RecallGuarantee.from_counts(20, 20), fitted_on)
    path = write_json(calibration.to_dict(), tmp_path / "site_calibration.json")  # as helpers.site saves it
    monkeypatch.setenv(screening.MODEL_ENVIRONMENT_VARIABLE, str(model_folder))
    monkeypatch.setenv(screening.SITE_ENVIRONMENT_VARIABLE, str(path))
    st.cache_resource.clear()
    test = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not test.exception
    text = " ".join(shown(markdown) for markdown in test.sidebar.markdown)
    assert "Active: site calibration" in text and "Threshold** 0.300" in text
    test.sidebar.radio[0].set_value("validation (in the model)").run()
    text = " ".join(shown(markdown) for markdown in test.sidebar.markdown)
    assert "Active: validation operating point" in text and "Threshold** 0.500" in text


HOSTILE_NAME = "**bold** [link](http://evil.example) ![x](http://evil.example/x.png) <b>html</b> # 1. film.png"
FORMULA_NAME = "=HYPERLINK(\"http://evil.example\",\"open\").png"


def test_a_hostile_file_name_is_shown_as_plain_text_and_neutralised_in_the_csv(app):
    from markdown_it import MarkdownIt

    upload(app, (HOSTILE_NAME, film_bytes(), "image/png"), (FORMULA_NAME, b"", "image/png"))
    heading = app.subheader[-2].value  # the hostile film's heading (the empty file's comes after it)
    rendered = MarkdownIt("commonmark").render(heading)
    assert not any(tag in rendered for tag in ("<a ", "<img", "<strong>", "<b>", "<h1", "<ol"))
    assert shown(app.subheader[-2]) == HOSTILE_NAME
    assert any(FORMULA_NAME in shown(error) for error in app.error)  # the refusal quotes the name as it is
    table = app.dataframe[0].value
    assert list(table["file"]) == [HOSTILE_NAME, FORMULA_NAME]  # the table on the page shows them as they are
    refused = screening.Screener.load("int8").screen_bytes(b"", FORMULA_NAME)  # what the CSV download holds
    rows = list(csv.DictReader(io.StringIO(screening.results_csv([refused]))))
    assert rows[0]["file"] == "'" + FORMULA_NAME and rows[0]["reason"].startswith("'" + FORMULA_NAME)


def test_moving_the_slider_does_not_screen_again(app):
    upload(app, ("a.png", film_bytes(1), "image/png"), ("b.png", film_bytes(2), "image/png"))
    cache = app.session_state["results"]
    assert cache.screened == 2
    app.sidebar.slider[0].set_value(0.8).run()
    assert not app.exception and cache.screened == 2 and len(verdicts(app)) == 2
    app.sidebar.selectbox[0].set_value("float32").run()  # another engine: screened again
    assert cache.screened == 4
    app.sidebar.selectbox[0].set_value("int8").run()  # and back: from the cache
    assert cache.screened == 4


def test_more_files_than_the_batch_cap_are_named_and_not_screened(app):
    films = [(f"film_{index:02d}.png", film_bytes(index % 3), "image/png") for index in range(22)]
    upload(app, *films)
    warnings = " ".join(shown(warning) for warning in app.warning)
    assert "22 files chosen" in warnings and "at most 20" in warnings
    assert "film_20.png, film_21.png" in warnings and "python -m helpers.screen" in warnings
    assert len(app.dataframe[0].value) == 20 and app.session_state["results"].screened == 20
