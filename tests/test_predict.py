"""Batched predictions and the predictions tables written for notebooks 05-07."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import data, evaluation, predict
from helpers.model import build_model
from helpers.operating_point import sigmoid
from tests.conftest import SYNTHETIC_FILES, encode_image, synthetic_image


@pytest.fixture(scope="module")
def tiny_model():
    """Random-weight classifier at 32x32 (the smallest MobileNetV2 input): fast, no download."""
    from helpers.config import set_seeds

    set_seeds(0)
    return build_model(weights=None, image_size=32, output_bias=0.3)


@pytest.fixture(scope="module")
def examples():
    """14 tiny grayscale JPEGs, 6 NORMAL and 8 PNEUMONIA, sorted by path."""
    paths, images = [], []
    for class_name, names in SYNTHETIC_FILES.items():
        for name in names:
            paths.append(f"chest_xray/train/{class_name}/{name}")
            images.append(encode_image(synthetic_image(len(paths))))
    return data._make_examples(paths, images)


@pytest.fixture(scope="module")
def predictions(tiny_model, examples):
    return predict.predict(tiny_model, examples, batch_size=4, progress=False)  # 14 = 3*4 + 2


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"


def test_predict_returns_one_row_per_image_in_order(predictions, examples):
    frame = predictions
    assert list(frame.columns) == list(predict.PREDICTION_COLUMNS)
    assert list(frame["path"]) == list(examples.paths)
    assert list(frame["label"]) == list(examples.labels)
    assert frame["probability"].between(0, 1).all()
    assert np.allclose(frame["probability"], sigmoid(frame["logit"]))


def test_predict_matches_the_model_output(tiny_model, predictions, examples):
    frame = predictions
    images = np.stack([data.load_image(bytes(b), image_size=32) for b in examples.image_bytes])
    expected = tiny_model.predict(images, verbose=0)[:, 0]  # (N,) the probability output
    assert frame["probability"].to_numpy() == pytest.approx(expected, abs=1e-5)


def test_predict_does_not_depend_on_batch_size(tiny_model, predictions, examples):
    many = predict.predict(tiny_model, examples, batch_size=64, progress=False)
    assert many["logit"].to_numpy() == pytest.approx(predictions["logit"].to_numpy(), abs=1e-4)


def test_predict_rejects_bad_arguments(tiny_model, examples):
    with pytest.raises(ValueError, match="batch_size"):
        predict.predict(tiny_model, examples, batch_size=0)
    with pytest.raises(ValueError, match="no examples"):
        predict.predict(tiny_model, examples.subset([]))


def test_predictions_round_trip_exactly(predictions, artifacts):
    frame = predictions
    path = predict.write_predictions(frame, "validation")
    assert path == artifacts / "predictions" / "validation.csv"
    assert path.read_text().splitlines()[0] == "path,label,probability,logit"
    again = predict.read_predictions("validation")
    assert list(again["path"]) == list(frame["path"])
    assert np.array_equal(again["label"], frame["label"])
    # 17 significant digits: the same floats, so thresholds classify rows as in notebook 04
    assert np.array_equal(again["probability"].to_numpy(), frame["probability"].to_numpy())
    assert np.array_equal(again["logit"].to_numpy(), frame["logit"].to_numpy())


def test_read_scored_split_names_the_split_from_the_file(predictions, examples, artifacts):
    predict.write_predictions(predictions, "test")
    test = predict.read_scored_split("test")
    assert test.name == "test" and len(test) == len(examples)
    with pytest.raises(evaluation.TestSplitError):
        evaluation.choose_operating_point(test)  # the test table cannot choose a threshold


def test_read_predictions_for_paths_in_their_order_or_none(predictions, artifacts):
    paths = list(predictions["path"])
    assert predict.read_predictions_for(paths, "test") is None  # no file yet
    assert not (artifacts / "predictions").exists()  # reading creates no folder
    predict.write_predictions(predictions, "test")
    wanted = [paths[3], paths[0]]
    rows = predict.read_predictions_for(wanted, "test")
    assert rows["path"].tolist() == wanted and rows.index.tolist() == [0, 1]
    assert rows["logit"].tolist() == predictions["logit"].iloc[[3, 0]].tolist()
    assert predict.read_predictions_for(wanted, "validation") is None  # another split
    assert predict.read_predictions_for(wanted + ["chest_xray/elsewhere.jpeg"], "test") is None


def test_missing_predictions_say_to_run_notebook_04(artifacts):
    with pytest.raises(FileNotFoundError, match="04_evaluation"):
        predict.read_predictions("test")


def test_prediction_tables_are_validated(artifacts):
    import pandas as pd

    with pytest.raises(ValueError, match="split must be one of"):
        predict.predictions_path("train")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['logit'\]"):
        predict.write_predictions(pd.DataFrame({"path": ["a"], "label": [1], "probability": [0.5]}), "test")
