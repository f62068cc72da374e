"""The explorer widgets, driven like a browser would: set values, click, upload; read what is shown."""

from __future__ import annotations

import re

import numpy as np
import pytest

from helpers import explorer, predict, widgets
from helpers.operating_point import load_operating_point
from helpers.widgets import upload_entry
from tests.test_explorer import (
    ConstantEngine,
    checkerboard,
    colour_photo,
    encode,
    fake_examples,
    fake_xray,
    fit_fake_detector,
    tiny_model,
)

PNG_SIGNATURE = b"\x89PNG"


@pytest.fixture(autouse=True)
def private_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path / "artifacts"))


@pytest.fixture(scope="module")
def parts():
    model = tiny_model()
    detector = fit_fake_detector(model)
    examples = fake_examples(10)
    frame = predict.predict(model, examples, progress=False)
    return model, detector, examples, frame, ["Test predictions made here (fake data)."]


def make_app(parts, point=None, engines=None):
    model, detector, examples, frame, notes = parts
    point = point or explorer.OperatingPoint(threshold=float(np.median(frame["probability"])),
                                             band_low=0.0, band_high=0.0001, source="test")
    explainer = explorer.Explainer(model, point, detector, engines)
    return widgets.ExplorerApp(explainer, frame, examples, notes)


def shown(value) -> bytes:
    """An Image widget's value (a memoryview once set) as bytes."""
    return bytes(value)


def shown_count(app) -> int:
    match = re.match(r"case (\d+) of (\d+)", app.position_label.value)
    return int(match.group(2)) if match else 0


def test_the_app_opens_on_the_first_case_with_the_metrics(parts):
    app = make_app(parts)
    assert app.position_label.value == "case 1 of 10"
    assert "TN" in app.metrics_html.value and "validation-chosen threshold" in app.metrics_html.value
    assert shown(app.curve_image.value).startswith(PNG_SIGNATURE)
    assert shown(app.case_image.value).startswith(PNG_SIGNATURE)
    assert shown(app.case_overlay.value).startswith(PNG_SIGNATURE)
    assert "calibrated P(pneumonia)" in app.case_html.value and "truth:" in app.case_html.value
    assert "Operating point" in app.header.value
    assert app.previous.disabled and not app.next.disabled
    # the case shown is the most confident one of all
    assert app.last_case.name == app.selection["path"].iloc[0].rsplit("/", 1)[-1]


def test_filter_change_shows_only_that_outcome(parts):
    app = make_app(parts)
    counts = explorer.outcome_counts(app.table)
    for outcome in ("TP", "TN", "FP", "FN"):
        app.outcome.value = outcome
        assert shown_count(app) == counts[outcome]
        if counts[outcome]:
            assert f"outcome <b>{outcome}</b>" in app.case_html.value
            assert app.last_case.outcome == outcome
        else:
            assert app.position_label.value == "no case" and "No test image" in app.case_html.value
            assert shown(app.case_image.value) == b""
    app.outcome.value = "referred"
    assert app.position_label.value == "no case"  # the band [0, 1e-4) holds no image


def test_stepping_and_sorting(parts):
    app = make_app(parts)
    first = app.last_case.name
    app.next.click()
    assert app.position_label.value == "case 2 of 10" and app.last_case.name != first
    app.previous.click()
    app.previous.click()  # stops at the first case
    assert app.position_label.value == "case 1 of 10" and app.last_case.name == first
    app.order.value = "least confident first"
    confidence = app.selection["confidence"].to_numpy()
    assert np.all(np.diff(confidence) >= 0)
    for _ in range(12):
        app.next.click()
    assert app.position_label.value == "case 10 of 10" and app.next.disabled


def test_threshold_slider_updates_the_confusion_matrix_live(parts):
    app = make_app(parts)
    chosen = app.point.threshold
    app.threshold.value = 0.0  # everything PNEUMONIA
    assert "TN 0" in app.metrics_html.value and "FN 0" in app.metrics_html.value
    assert f"validation-chosen: {chosen:.3f}" in app.metrics_html.value
    assert "specificity <b>0.000</b>" in app.metrics_html.value
    assert [label for label, _ in app.outcome.options][3] == "FP (5)"
    app.outcome.value = "FN"
    assert app.position_label.value == "no case"
    app.threshold.value = 1.0  # everything NORMAL
    assert "TP 0" in app.metrics_html.value and shown_count(app) == 5
    assert app.outcome.value == "FN"  # the filter survives the new counts
    app.reset.click()
    assert app.threshold.value == pytest.approx(chosen)
    assert "= the validation-chosen threshold" in app.metrics_html.value


def test_upload_of_a_valid_xray_shows_a_prediction(parts):
    app = make_app(parts)
    app.upload.value = (upload_entry("my_xray.png", encode(fake_xray(300, 900, 700))),)
    assert app.last_upload_explanation.accepted
    assert "my_xray.png" in app.upload_html.value and "calibrated P(pneumonia)" in app.upload_html.value
    assert re.search(r"<b>(PNEUMONIA|NORMAL)</b>", app.upload_html.value)
    assert "Looks like a chest X-ray" in app.upload_html.value
    assert shown(app.upload_image.value).startswith(PNG_SIGNATURE)
    assert shown(app.upload_overlay.value).startswith(PNG_SIGNATURE)
    # the threshold slider re-decides the uploaded image too
    app.threshold.value = 0.0
    assert app.last_upload_explanation.decision == "PNEUMONIA" and "<b>PNEUMONIA</b>" in app.upload_html.value


def test_upload_of_a_corrupt_file_shows_a_message_not_a_traceback(parts):
    app = make_app(parts)
    app.upload.value = (upload_entry("scan.jpg", encode(fake_xray(301), "JPEG")[:1200]),)
    assert "Not analysed" in app.upload_html.value and "truncated or damaged" in app.upload_html.value
    assert shown(app.upload_image.value) == b"" and shown(app.upload_overlay.value) == b""
    app.upload.value = (upload_entry("notes.txt", b"hello"),)
    assert "not an image file" in app.upload_html.value
    app.upload.value = (upload_entry("thumb.png", encode(fake_xray(302, 40, 40))),)
    assert "at least 64 pixels" in app.upload_html.value


def test_upload_of_a_non_xray_image_is_refused(parts):
    app = make_app(parts)
    app.upload.value = (upload_entry("holiday.jpg", encode(colour_photo(), "JPEG")),)
    assert "Not analysed" in app.upload_html.value and "in colour" in app.upload_html.value
    assert shown(app.upload_image.value).startswith(PNG_SIGNATURE)  # the reader sees what was sent
    assert shown(app.upload_overlay.value) == b""
    app.upload.value = (upload_entry("board.png", encode(checkerboard())),)
    assert "does not look like the chest X-rays" in app.upload_html.value


def test_empty_upload_value_changes_nothing(parts):
    app = make_app(parts)
    before = app.upload_html.value
    app.upload.value = ()
    assert app.upload_html.value == before and app.last_upload is None


def test_engine_choice_reruns_the_case_and_the_upload(parts):
    model = parts[0]
    keras = explorer.KerasOnePassEngine(model, explorer.OperatingPoint())
    engines = {"Keras": keras, "TFLite fake": ConstantEngine(0.97, "TFLite fake", lambda pixels: keras.run(pixels)[2])}
    app = make_app(parts, engines=engines)
    assert list(app.engine.options) == ["Keras", "TFLite fake"]
    app.upload.value = (upload_entry("x.png", encode(fake_xray(303))),)
    app.engine.value = "TFLite fake"
    assert "engine: TFLite fake" in app.case_html.value and "engine: TFLite fake" in app.upload_html.value
    assert app.last_case.probability == pytest.approx(0.97)
    assert "raw model output 0.970" in app.upload_html.value
    assert "the heat map" in app.case_html.value and shown(app.case_overlay.value).startswith(PNG_SIGNATURE)


def test_the_upload_filter_takes_what_the_web_app_takes():
    assert ".dcm" in widgets.UPLOAD_ACCEPT and ".png" in widgets.UPLOAD_ACCEPT


def test_missing_metrics_warning_is_shown(parts):
    app = make_app(parts, point=load_operating_point("/nonexistent/metrics.json"))
    assert "04_evaluation" in app.header.value and "04_evaluation" in app.metrics_html.value


def test_predictions_must_match_the_examples(parts):
    model, _detector, examples, frame, _notes = parts
    explainer = explorer.Explainer(model, explorer.OperatingPoint())
    with pytest.raises(ValueError, match="in their order"):
        widgets.ExplorerApp(explainer, frame.iloc[:3], examples)


def test_metrics_html_marks_a_moved_threshold():
    metrics = {"tp": 1, "fp": 2, "tn": 3, "fn": 4, "precision": float("nan"), "recall": 0.2,
               "specificity": 0.6, "accuracy": 0.4}
    text = widgets.metrics_html(metrics, 0.3, 0.5)
    assert "current threshold <b>0.300</b> (validation-chosen: 0.500)" in text
    assert "precision <b>n/a</b>" in text and "FN 4" in text
