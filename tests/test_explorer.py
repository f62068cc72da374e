"""Explorer logic: operating point, cases by outcome, metrics at a threshold, uploads, engines.

Everything runs on a tiny Keras model with the project's layer names (``out_relu``,
``global_pool``, ``logit``, ``probability``) and on synthetic images, so no weights
or dataset are needed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import data, evaluation, explorer, imaging, ood, uploads
from helpers.operating_point import load_operating_point, sigmoid
from helpers.uploads import ImageRejected


# --------------------------------------------------------------------------- #
# Shared builders (also imported by tests/test_widgets.py)
# --------------------------------------------------------------------------- #
def tiny_model(seed: int = 0):
    """A 224x224 classifier with the project's layer names; ~1k weights."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(224, 224, 3), name="image")
    scaled = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    conv = keras.layers.Conv2D(6, 32, strides=32, activation="relu", name="out_relu")(scaled)  # (B, 7, 7, 6)
    pooled = keras.layers.GlobalAveragePooling2D(name="global_pool")(conv)  # (B, 6)
    logit = keras.layers.Dense(1, name="logit")(pooled)
    probability = keras.layers.Activation("sigmoid", name="probability")(logit)
    return keras.Model(inputs, probability, name="tiny")


def fake_xray(seed: int, height: int = 256, width: int = 256) -> np.ndarray:
    """A grey, chest-X-ray-like picture: dark background, bright body, two darker lungs. uint8 (H, W)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    picture = np.full((height, width), 30.0)
    body = ((rows - 0.55) / 0.5) ** 2 + ((cols - 0.5) / 0.42) ** 2 < 1
    picture[body] = 170
    for centre in (0.32, 0.68):
        lung = ((rows - 0.5) / 0.3) ** 2 + ((cols - centre) / 0.13) ** 2 < 1
        picture[lung] = 70 + rng.uniform(0, 50)
    picture += rng.normal(0, 8, picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def colour_photo() -> np.ndarray:
    from sklearn.datasets import load_sample_images

    return np.asarray(load_sample_images().images[0])  # (427, 640, 3) uint8, china.jpg


def checkerboard(size: int = 256, square: int = 16) -> np.ndarray:
    board = ((np.arange(size)[:, None] // square + np.arange(size)[None, :] // square) % 2) * 255
    return board.astype(np.uint8)


def fit_fake_detector(model, count: int = 48):
    """An OOD detector fitted on fake X-rays (features of the tiny model)."""
    images = np.stack([data.load_image(encode(fake_xray(seed))) for seed in range(count)])
    features = ood.compute_features(ood.feature_model(model), images)
    half = count // 2
    return ood.fit_detector(features[:half], features[half:], quantile=0.99)


def fake_examples(count: int = 10, seed: int = 100) -> data.Examples:
    """Test-like Examples of fake X-rays, both classes, ChestXRay2017 file names."""
    paths, images = [], []
    for i in range(count):
        class_name = data.CLASS_NAMES[i % 2]
        name = f"IM-{i:04d}-0001.jpeg" if class_name == "NORMAL" else f"person{i}_bacteria_{i}.jpeg"
        paths.append(f"chest_xray/test/{class_name}/{name}")
        images.append(encode(fake_xray(seed + i), "JPEG"))
    return data._make_examples(paths, images)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def detector(model):
    return fit_fake_detector(model)


@pytest.fixture(autouse=True)
def private_artifacts(tmp_path, monkeypatch):
    """Every test writes into its own artifacts folder (never the shared test one)."""
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path / "artifacts"))


def predictions_frame() -> pd.DataFrame:
    logits = np.array([-3.0, -1.0, -0.2, 0.1, 0.4, 2.0, 3.0, -2.0])
    return pd.DataFrame({
        "path": [f"chest_xray/test/X/{i}.jpeg" for i in range(8)],
        "label": [0, 0, 1, 0, 1, 1, 1, 1],
        "probability": sigmoid(logits),
        "logit": logits,
    })


def metrics_report(threshold=0.4, temperature=2.0, low=0.3, high=0.6) -> dict:
    entry = {"value": 0.9, "ci_low": 0.8, "ci_high": 0.95}
    metrics = {name: dict(entry) for name in evaluation.METRIC_NAMES}
    return {
        "threshold": threshold, "temperature": temperature,
        "band": {"low": low, "high": high, "coverage": 0.9, "accuracy_outside": 0.95, "recall_outside": 0.99},
        "ece_before": 0.1, "ece_after": 0.05, "test": metrics, "validation": metrics,
    }


# --------------------------------------------------------------------------- #
# Operating point
# --------------------------------------------------------------------------- #
def test_missing_metrics_gives_defaults_and_names_notebook_04(tmp_path):
    point = load_operating_point(tmp_path / "metrics.json")
    assert (point.threshold, point.temperature, point.has_band) == (0.5, 1.0, False)
    assert "04_evaluation" in point.warning
    assert not point.referred([0.5]).any()


def test_operating_point_from_metrics_json(tmp_path):
    path = evaluation.write_metrics(metrics_report(), tmp_path / "metrics.json")
    point = load_operating_point(path)
    assert (point.threshold, point.temperature, point.band_low, point.band_high) == (0.4, 2.0, 0.3, 0.6)
    assert point.warning == "" and str(path) in point.describe()
    np.testing.assert_allclose(point.calibrated([2.0]), sigmoid(1.0))
    # band is [low, high) on the raw probability
    assert point.referred([0.29, 0.3, 0.59, 0.6]).tolist() == [False, True, True, False]


def test_a_moved_threshold_changes_outcomes_but_not_the_band(tmp_path):
    point = explorer.OperatingPoint(threshold=0.5, band_low=0.4, band_high=0.6)
    table = explorer.outcome_table(predictions_frame(), point, threshold=0.04)
    assert (table["decision"] == "PNEUMONIA").all()  # every probability >= 0.04 (the lowest is 0.047)
    assert table["referred"].tolist() == explorer.outcome_table(predictions_frame(), point)["referred"].tolist()


# --------------------------------------------------------------------------- #
# Cases by outcome
# --------------------------------------------------------------------------- #
def test_outcome_table_columns_and_outcomes():
    point = explorer.OperatingPoint(threshold=0.5, temperature=2.0, band_low=0.4, band_high=0.6)
    table = explorer.outcome_table(predictions_frame(), point)
    # probabilities: .047 .269 .450 .525 .599 .881 .953 .119 ; labels 0 0 1 0 1 1 1 1
    assert table["outcome"].tolist() == ["TN", "TN", "FN", "FP", "TP", "TP", "TP", "FN"]
    assert table["referred"].tolist() == [False, False, True, True, True, False, False, False]
    np.testing.assert_allclose(table["calibrated_probability"], sigmoid(table["logit"] / 2.0))
    assert (table["confidence"] >= 0.5).all()
    assert table["decision"].tolist()[:4] == ["NORMAL", "NORMAL", "NORMAL", "PNEUMONIA"]
    assert explorer.outcome_counts(table) == {"all": 8, "TP": 3, "TN": 2, "FP": 1, "FN": 2, "referred": 3}


def test_outcome_table_at_another_threshold():
    table = explorer.outcome_table(predictions_frame(), explorer.OperatingPoint(), threshold=0.0)
    assert set(table["outcome"]) == {"TP", "FP"}


def test_outcome_table_needs_the_predict_columns():
    with pytest.raises(ValueError, match="logit"):
        explorer.outcome_table(predictions_frame().drop(columns="logit"), explorer.OperatingPoint())


def test_select_cases_filters_and_sorts_by_confidence():
    table = explorer.outcome_table(predictions_frame(), explorer.OperatingPoint())
    most = explorer.select_cases(table, "TP", "most confident first")
    assert most.index.tolist() == [6, 5, 4]
    least = explorer.select_cases(table, "TP", "least confident first")
    assert least.index.tolist() == [4, 5, 6]
    assert explorer.select_cases(table, "FN").index.tolist() == [7, 2]  # p .119 more confident NORMAL than .450
    assert len(explorer.select_cases(table, "all")) == 8
    assert len(explorer.select_cases(table, "referred")) == 0  # no band
    with pytest.raises(ValueError, match="outcome"):
        explorer.select_cases(table, "false negatives")
    with pytest.raises(ValueError, match="order"):
        explorer.select_cases(table, "TP", "random")


def test_metrics_at_threshold_agree_with_scikit_learn():
    from sklearn.metrics import confusion_matrix, precision_score, recall_score

    frame = predictions_frame()
    for threshold in (0.1, 0.5, 0.9):
        metrics = explorer.metrics_at_threshold(frame["label"], frame["probability"], threshold)
        predicted = (frame["probability"] >= threshold).astype(int)
        tn, fp, fn, tp = confusion_matrix(frame["label"], predicted, labels=[0, 1]).ravel()
        assert (metrics["tn"], metrics["fp"], metrics["fn"], metrics["tp"]) == (tn, fp, fn, tp)
        assert metrics["recall"] == pytest.approx(recall_score(frame["label"], predicted))
        assert metrics["specificity"] == pytest.approx(tn / (tn + fp))
        if tp + fp:
            assert metrics["precision"] == pytest.approx(precision_score(frame["label"], predicted))


def test_threshold_curves_and_plot():
    frame = predictions_frame()
    curves = explorer.threshold_curves(frame["label"], frame["probability"])
    assert len(curves) == 101 and curves["recall"].iloc[0] == 1.0 and curves["specificity"].iloc[0] == 0.0
    assert curves["recall"].is_monotonic_decreasing
    figure = explorer.plot_threshold_curves(curves, 0.3, 0.5)
    assert explorer.figure_png(figure).startswith(b"\x89PNG")


# --------------------------------------------------------------------------- #
# Uploads: the FileUpload value and the checks on the bytes
# --------------------------------------------------------------------------- #
def test_read_upload_understands_ipywidgets_8_and_7():
    from helpers.widgets import upload_entry

    assert explorer.read_upload(()) == []
    assert explorer.read_upload((upload_entry("a.png", b"abc"),)) == [("a.png", b"abc")]
    assert explorer.read_upload({"b.jpg": {"metadata": {}, "content": b"xyz"}}) == [("b.jpg", b"xyz")]


@pytest.mark.parametrize("array, fmt", [
    (fake_xray(1, 1024, 800), "JPEG"),  # large grey JPEG
    (np.stack([fake_xray(2)] * 3, axis=-1), "PNG"),  # colour-mode PNG of a grey picture
    (np.dstack([fake_xray(3)] * 3 + [np.full((256, 256), 255, np.uint8)]), "PNG"),  # RGBA
    (fake_xray(4, 64, 300), "PNG"),  # exactly the minimum side
])
def test_valid_images_decode_to_model_pixels(array, fmt):
    pixels, info = uploads.decode_upload(encode(array, fmt), "x")
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 255.0
    assert info.format == fmt and (info.width, info.height) == (array.shape[1], array.shape[0])


def test_sixteen_bit_png_decodes():
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(fake_xray(5).astype(np.uint16) * 256).save(buffer, format="PNG")
    pixels, _info = uploads.decode_upload(buffer.getvalue(), "x16.png")
    assert pixels.shape == (224, 224, 3) and pixels.max() > 100


@pytest.mark.parametrize("content, expected", [
    (b"", "empty"),
    (b"just some text, not a picture", "not an image file"),
    (encode(fake_xray(6), "JPEG")[:1500], "truncated or damaged"),
    (encode(fake_xray(7), "PNG")[:3000], "truncated or damaged"),
    (encode(fake_xray(8, 32, 32), "PNG"), "at least 64 pixels"),
    (encode(fake_xray(9, 500, 40), "JPEG"), "40x500"),
    (b"\0" * 128 + b"DICM" + b"\0" * 64, "DICOM"),
    (encode(fake_xray(10), "TIFF"), "TIFF"),
])
def test_bad_uploads_are_rejected_with_a_reason(content, expected):
    with pytest.raises(ImageRejected, match=expected):
        uploads.decode_upload(content, "upload")


def test_too_many_pixels_is_rejected(monkeypatch):
    monkeypatch.setattr(uploads, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(ImageRejected, match="MP"):
        uploads.inspect_image_bytes(encode(fake_xray(11, 200, 200)), "big")


# --------------------------------------------------------------------------- #
# Engines
# --------------------------------------------------------------------------- #
class ConstantEngine:
    """An engine with the one-pass interface that always answers ``probability`` (features: ``features_of(pixels)``)."""

    def __init__(self, probability: float, engine_name: str = "constant", features_of=None):
        self.probability, self.engine_name, self.features_of = probability, engine_name, features_of
        self.path, self.bias, self.point, self.provenance_note = Path(engine_name), 0.0, explorer.OperatingPoint(), ""

    name = property(lambda self: self.engine_name)
    version = property(lambda self: "test")
    keras_sha256 = property(lambda self: None)
    feature_width = property(lambda self: 6)

    def run(self, pixels):
        logit_map = np.zeros((7, 7), np.float32)
        logit_map[0, 0] = 1.0
        features = self.features_of(pixels) if self.features_of else np.zeros(6, np.float32)
        return self.probability, logit_map, features


def test_the_keras_engine_gives_the_models_probability_and_the_one_pass_outputs(model):
    image = data.load_image(encode(fake_xray(3)))
    engine = explorer.KerasOnePassEngine(model, explorer.OperatingPoint())
    probability, logit_map, features = engine.run(image)
    assert probability == pytest.approx(float(model.predict(image[np.newaxis], verbose=0)[0, 0]), abs=1e-5)
    assert logit_map.shape == (7, 7) and features.shape == (6,) and engine.feature_width == 6
    assert sigmoid(float(logit_map.mean())) == pytest.approx(probability, abs=1e-5)  # the map's mean is the logit
    with pytest.raises(ValueError, match="shape"):
        engine.run(np.zeros((100, 100, 3)))


def test_discover_engines_reports_missing_and_broken_tflite(model, tmp_path):
    engines, notes = explorer.discover_engines(model, tmp_path / "nothing")
    assert list(engines) == [explorer.KERAS_ENGINE_NAME] and "06_tflite_conversion" in notes[0]
    (tmp_path / "pneumonia_mobilenetv2_onepass_int8.tflite").write_bytes(b"not a flatbuffer")
    (tmp_path / "pneumonia_mobilenetv2_float32.tflite").write_bytes(b"single-output: not a screening engine")
    engines, notes = explorer.discover_engines(model, tmp_path)
    assert list(engines) == [explorer.KERAS_ENGINE_NAME] and len(notes) == 1
    assert "Skipped pneumonia_mobilenetv2_onepass_int8.tflite" in notes[0]


def test_a_converted_one_pass_model_is_an_engine_that_agrees_with_keras(model, tmp_path):
    from helpers import one_pass

    point = explorer.OperatingPoint()
    path = one_pass.convert_one_pass(model, "float32", point, directory=tmp_path)
    engines, _notes = explorer.discover_engines(model, tmp_path, point)
    assert list(engines) == [explorer.KERAS_ENGINE_NAME, "TFLite float32 (one pass)"] and path.is_file()
    assert "provenance not checked" in engines["TFLite float32 (one pass)"].provenance_note
    explainer = explorer.Explainer(model, point, engines=engines)
    content = encode(fake_xray(12))
    keras, tflite = (explainer.explain_bytes(content, "film.png", engine) for engine in engines)
    assert keras.probability == pytest.approx(tflite.probability, abs=1e-4)
    np.testing.assert_allclose(keras.heatmap, tflite.heatmap, atol=1e-3)


def test_an_out_of_date_tflite_model_is_skipped_with_the_remedy(model, tmp_path):
    from helpers import one_pass

    artifacts = tmp_path / "artifacts"
    keras_file = artifacts / "model" / "pneumonia_mobilenetv2.keras"
    keras_file.parent.mkdir(parents=True)
    keras_file.write_bytes(b"the model this phone model was converted from")
    one_pass.convert_one_pass(model, "float32", explorer.OperatingPoint(), directory=artifacts / "tflite",
                              keras_model_path=keras_file)
    engines, notes = explorer.discover_engines(model, artifacts / "tflite")
    assert list(engines) == [explorer.KERAS_ENGINE_NAME, "TFLite float32 (one pass)"]
    keras_file.write_bytes(b"trained again since")
    engines, notes = explorer.discover_engines(model, artifacts / "tflite")
    assert list(engines) == [explorer.KERAS_ENGINE_NAME] and "another Keras model" in notes[0]
    assert "notebook 06" in notes[0]


# --------------------------------------------------------------------------- #
# Screening one image through the pipeline
# --------------------------------------------------------------------------- #
def test_explain_a_valid_upload(model, detector):
    point = explorer.OperatingPoint(threshold=0.5, temperature=2.0, band_low=0.0, band_high=1.0)
    explainer = explorer.Explainer(model, point, detector)
    result = explainer.explain_bytes(encode(fake_xray(200, 600, 500), "JPEG"), "mine.jpg")
    assert isinstance(result.result, explorer.ScreeningResult)
    assert result.accepted, result.message
    assert result.decision == ("PNEUMONIA" if result.probability >= 0.5 else "NORMAL")
    assert result.calibrated_probability == pytest.approx(float(point.calibrated_from_probability(result.probability)))
    assert result.heatmap.shape == (224, 224) and 0 <= result.heatmap.min() <= result.heatmap.max() <= 1
    assert result.referred and result.result.decision == "REFER"  # the band covers everything
    assert result.result.guard == "chest_xray" and result.result.info.width == 500
    assert "mine.jpg" in result.summary() and "refer" in result.summary()
    assert explorer.overlay_image(result).shape == (224, 224, 3)


def test_explain_with_a_threshold_override_and_a_label(model):
    explainer = explorer.Explainer(model, explorer.OperatingPoint())
    image = data.load_image(encode(fake_xray(13)))
    low = explainer.explain_image(image, "case", threshold=0.0, label=0)
    assert low.decision == "PNEUMONIA" and low.outcome == "FP" and low.threshold == 0.0
    assert any("No OOD detector found" in note for note in low.notes)  # the app's note, word for word
    high = explainer.explain_image(image, "case", threshold=1.0, label=1)
    assert high.decision == "NORMAL" and high.outcome == "FN" and "truth PNEUMONIA (FN)" in high.summary()


def test_explain_rejects_corrupt_colour_and_non_xray_images(model, detector):
    explainer = explorer.Explainer(model, explorer.OperatingPoint(), detector)
    corrupt = explainer.explain_bytes(b"GIF89a" + b"\0" * 20, "broken.gif")
    assert not corrupt.accepted and corrupt.probability is None and "broken.gif" in corrupt.message
    photo = explainer.explain_bytes(encode(colour_photo(), "JPEG"), "china.jpg")
    assert not photo.accepted and photo.result.guard == "not_xray" and "colour" in photo.message
    board = explainer.explain_bytes(encode(checkerboard()), "board.png")
    assert not board.accepted and "does not look like the chest X-rays" in board.message
    assert board.heatmap is None
    assert "not analysed" in board.summary()


def test_explainer_engine_choice(model):
    explainer = explorer.Explainer(model, explorer.OperatingPoint(),
                                   engines={"Keras": explorer.KerasOnePassEngine(model, explorer.OperatingPoint()),
                                            "fake": ConstantEngine(0.9, "fake")})
    image = data.load_image(encode(fake_xray(14)))
    result = explainer.explain_image(image, engine="fake")
    assert result.probability == pytest.approx(0.9) and result.engine == "fake" and result.decision == "PNEUMONIA"
    with pytest.raises(ValueError, match="Unknown engine"):
        explainer.explain_image(image, engine="Keras int3")
    with pytest.raises(ValueError, match="224"):
        explainer.explain_image(np.zeros((100, 100, 3)))


def test_compare_engines_gives_a_row_per_image_and_engine(model):
    explainer = explorer.Explainer(model, explorer.OperatingPoint(),
                                   engines={"Keras": explorer.KerasOnePassEngine(model, explorer.OperatingPoint()),
                                            "fake": ConstantEngine(0.9, "fake")})
    images = np.stack([data.load_image(encode(fake_xray(seed))) for seed in (20, 21)])
    table = explorer.compare_engines(explainer, images, ["a", "b"])
    assert len(table) == 4 and set(table["engine"]) == {"Keras", "fake"}
    assert table.loc[table["engine"] == "fake", "probability"].tolist() == pytest.approx([0.9, 0.9])


def test_plot_explanation_for_accepted_and_rejected(model):
    explainer = explorer.Explainer(model, explorer.OperatingPoint())
    accepted = explainer.explain_bytes(encode(fake_xray(15)), "ok.png")
    rejected = explainer.explain_bytes(b"", "empty.png")
    for result in (accepted, rejected):
        assert explorer.figure_png(explorer.plot_explanation(result)).startswith(b"\x89PNG")
    assert imaging.png_bytes(accepted.image).startswith(b"\x89PNG")
    table = explorer.upload_results_table([accepted, rejected])
    assert table["analysed"].tolist() == [True, False] and "empty.png" in table["message"][1]


# --------------------------------------------------------------------------- #
# Test predictions: saved by 04, or predicted here
# --------------------------------------------------------------------------- #
def test_load_test_predictions_falls_back_to_predicting_and_says_why(model):
    from helpers import predict

    examples = fake_examples(6)
    frame, notes = explorer.load_test_predictions(model, examples)
    assert frame["path"].tolist() == examples.paths.tolist() and "04_evaluation" in notes[0]
    predict.write_predictions(frame.iloc[::-1], "test")  # saved in another order: re-ordered on read
    again, notes = explorer.load_test_predictions(model, examples)
    assert "read from" in notes[0]
    np.testing.assert_allclose(again["logit"], frame["logit"])
    predict.write_predictions(frame.assign(logit=frame["logit"] + 1.0), "test")
    _, notes = explorer.load_test_predictions(model, examples)
    assert "different model" in notes[0]
    predict.write_predictions(frame.iloc[:3], "test")
    _, notes = explorer.load_test_predictions(model, examples)
    assert "does not cover" in notes[0]


def test_a_known_xray_flagged_by_the_ood_check_is_still_explained_with_a_note(model, detector):
    explainer = explorer.Explainer(model, explorer.OperatingPoint(), detector)
    board = data.load_image(encode(checkerboard()))
    result = explainer.explain_image(board, "test case", label=1, known_film=True)
    assert result.accepted and result.heatmap is not None
    assert any("would not give a decision if this film were uploaded" in note for note in result.notes)


def test_exif_rotated_phone_photo_is_turned_upright():
    from PIL import Image

    upright = np.zeros((200, 120), np.uint8)
    upright[:100] = 255  # bright top half, as a viewer shows it
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # stored sideways: (120, 200)
    exif = Image.Exif()
    exif[uploads.EXIF_ORIENTATION_TAG] = 6  # "rotate 90 clockwise to display"
    content = encode(stored, "JPEG", exif=exif, quality=95)
    pixels, info = uploads.decode_upload(content, "phone.jpg")
    assert info.orientation == 6
    top, bottom = pixels[:100].mean(), pixels[124:].mean()
    assert top > 200 and bottom < 50, (top, bottom)
    cmyk = io.BytesIO()  # a CMYK phone JPEG stored sideways works too
    Image.fromarray(stored).convert("CMYK").save(cmyk, format="JPEG", exif=exif)
    pixels, info = uploads.decode_upload(cmyk.getvalue(), "cmyk.jpg")
    assert info.mode == "CMYK" and pixels[:100].mean() > 200


def test_a_truncated_exif_rotated_photo_is_rejected_not_raised():
    from PIL import Image

    exif = Image.Exif()
    exif[uploads.EXIF_ORIENTATION_TAG] = 8
    content = encode(fake_xray(16, 300, 300), "JPEG", exif=exif)
    with pytest.raises(ImageRejected, match="truncated or damaged"):
        uploads.decode_upload(content[: len(content) // 2], "half.jpg")


def test_an_engine_whose_model_file_breaks_gives_a_message_not_a_traceback(model):
    from helpers.tflite import TFLiteModelError

    class BrokenEngine(ConstantEngine):
        def run(self, pixels):
            raise TFLiteModelError("pneumonia_mobilenetv2_onepass_int8.tflite is not a TFLite model: convert again "
                                   "(re-run notebook 06).")

    explainer = explorer.Explainer(model, explorer.OperatingPoint(), engines={"int8": BrokenEngine(0.5, "int8")})
    result = explainer.explain_bytes(encode(fake_xray(1)), "film.png", engine="int8")
    assert not result.accepted and result.probability is None and result.heatmap is None
    assert "pneumonia_mobilenetv2_onepass_int8.tflite" in result.message and "re-run notebook 06" in result.message
