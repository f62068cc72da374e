"""The operating point: the one decision rule, its file format and its loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import evaluation, operating_point
from helpers.operating_point import OperatingPoint, load_operating_point, sigmoid
from tests.test_evaluation import minimal_report


# --------------------------------------------------------------------------- #
# The rule
# --------------------------------------------------------------------------- #
def test_decide_calls_pneumonia_at_the_threshold_and_refers_inside_the_band():
    point = OperatingPoint(threshold=0.5, band_low=0.3, band_high=0.7)
    probabilities = [0.1, 0.3, 0.49, 0.5, 0.69, 0.7, 0.95]
    assert point.predicted(probabilities).tolist() == [0, 0, 0, 1, 1, 1, 1]  # p >= threshold
    assert point.referred(probabilities).tolist() == [False, True, True, True, True, False, False]  # [low, high)
    assert point.decide(probabilities).tolist() == [0, -1, -1, -1, -1, 1, 1]
    assert point.decision_names(probabilities) == ["NORMAL", "REFER", "REFER", "REFER", "REFER",
                                                   "PNEUMONIA", "PNEUMONIA"]


def test_without_a_band_nobody_is_referred():
    point = OperatingPoint(threshold=0.25)
    assert point.decide([0.2, 0.25]).tolist() == [0, 1]
    assert not point.referred([0.25]).any()


def test_outcomes_and_the_evaluation_band_follow_the_same_rule():
    labels, probabilities = [0, 0, 1, 1], [0.2, 0.6, 0.4, 0.9]
    assert operating_point.outcomes(labels, probabilities, 0.5).tolist() == ["TN", "FP", "FN", "TP"]
    assert OperatingPoint(threshold=0.5).outcomes(labels, probabilities).tolist() == ["TN", "FP", "FN", "TP"]
    band = evaluation.Band(low=0.3, high=0.7, target_coverage=0.5, chosen_on="validation")
    point = OperatingPoint(threshold=0.7, band_low=0.3, band_high=0.7)
    grid = np.linspace(0, 1, 101)
    assert band.decide(grid).tolist() == point.decide(grid).tolist()


def test_outcomes_refuse_mismatched_lengths_and_nan():
    with pytest.raises(ValueError, match="labels but"):
        operating_point.outcomes([0, 1], [0.5], 0.5)
    with pytest.raises(ValueError, match="finite"):
        OperatingPoint().decide([float("nan")])


def test_calibration_is_temperature_plus_platt_intercept_and_never_changes_a_decision():
    point = OperatingPoint(threshold=0.5, temperature=2.0, intercept=-0.5, temperature_fitted=True)
    np.testing.assert_allclose(point.calibrated([3.0]), sigmoid(3.0 / 2.0 - 0.5))
    np.testing.assert_allclose(point.calibrated_from_probability(sigmoid(3.0)), sigmoid(1.0), rtol=1e-9)
    assert point.decide([0.6]).tolist() == OperatingPoint(threshold=0.5).decide([0.6]).tolist()


def test_with_threshold_moves_only_the_threshold_and_says_so():
    point = OperatingPoint(threshold=0.6, temperature=1.5, band_low=0.2, band_high=0.8, rule="recall >= 0.98")
    moved = point.with_threshold(0.3)
    assert (moved.threshold, moved.temperature, moved.band_low) == (0.3, 1.5, 0.2)
    assert "set by hand" in moved.rule and "0.6000" in moved.rule
    assert point.with_threshold(0.6) is point


# --------------------------------------------------------------------------- #
# The file format
# --------------------------------------------------------------------------- #
def test_to_dict_from_dict_round_trip_keeps_every_field(tmp_path):
    point = OperatingPoint(threshold=0.61, temperature=0.8, intercept=0.3, band_low=0.4, band_high=0.7,
                           band_statistics={"coverage": 0.9}, temperature_fitted=True,
                           chosen_on="site: 20 films per class", rule="one-sided recall bound",
                           provenance={"k": 20, "method": "platt"})
    saved = point.to_dict()
    assert saved["schema"] == operating_point.SCHEMA and saved["band"] == {"low": 0.4, "high": 0.7, "coverage": 0.9}
    path = point.save(tmp_path / "site.json")
    assert json.loads(path.read_text()) == saved  # strict JSON on disk
    loaded = load_operating_point(path)
    assert loaded.to_dict() == saved and loaded.provenance == {"k": 20, "method": "platt"}
    assert loaded.source == str(path) and loaded.chosen_on == "site: 20 films per class"


def test_a_missing_site_file_is_an_error_not_defaults(tmp_path):
    with pytest.raises(FileNotFoundError, match="No operating-point file"):
        load_operating_point(tmp_path / "site.json")


def test_from_dict_names_the_source_and_the_remedy():
    with pytest.raises(ValueError, match="phone.json: no 'threshold' key.*notebook 06"):
        OperatingPoint.from_dict({"temperature": 1.0}, source="phone.json", remedy="Re-run notebook 06.")
    with pytest.raises(ValueError, match="must be a JSON object"):
        OperatingPoint.from_dict([0.5])
    with pytest.raises(ValueError, match="intercept must be a finite number"):
        OperatingPoint.from_dict({"threshold": 0.5, "intercept": "x"})


# --------------------------------------------------------------------------- #
# The operating point loaded from metrics.json (one loader for notebooks 05-07)
# --------------------------------------------------------------------------- #
def write_json(path, value):
    path.write_text(json.dumps(value))
    return path


def test_missing_metrics_json_gives_flagged_defaults(tmp_path):
    point = load_operating_point(tmp_path / "metrics.json")
    assert (point.threshold, point.temperature, point.band, point.has_band) == (0.5, 1.0, None, False)
    assert point.temperature_fitted is False and point.source == "defaults"
    assert "notebooks/04_evaluation.ipynb" in point.warning and str(tmp_path) in point.warning
    assert point == OperatingPoint(warning=point.warning)  # exactly the documented defaults


def test_default_path_is_the_artifacts_metrics_json(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path))
    evaluation.write_metrics(minimal_report())
    assert load_operating_point().source == str(tmp_path / "metrics.json")


def test_operating_point_from_a_full_metrics_json(tmp_path):
    report = minimal_report()
    report["band"]["recall_outside"] = float("nan")  # written as null: dropped, not a crash
    path = evaluation.write_metrics(report, tmp_path / "metrics.json")
    point = load_operating_point(path)
    assert (point.threshold, point.temperature, point.band_low, point.band_high) == (0.42, 1.7, 0.2, 0.8)
    assert point.temperature_fitted is True and point.warning == "" and point.source == str(path)
    assert point.band_statistics == {"coverage": 0.86, "accuracy_outside": 0.97}
    assert point.band == {"low": 0.2, "high": 0.8, "coverage": 0.86, "accuracy_outside": 0.97}
    np.testing.assert_allclose(point.calibrated([1.7]), sigmoid(1.0))
    assert point.referred([0.19, 0.2, 0.79, 0.8]).tolist() == [False, True, True, False]  # [low, high)
    assert str(path) in point.describe() and "not fitted" not in point.describe()


def test_a_partial_metrics_json_needs_only_the_threshold(tmp_path):
    # The contract: only "threshold" is required; no temperature -> 1, flagged not
    # fitted (uncalibrated); no band (absent or null) -> nobody is referred.
    point = load_operating_point(write_json(tmp_path / "metrics.json", {"threshold": 0.42}))
    assert (point.threshold, point.temperature, point.band) == (0.42, 1.0, None)
    assert point.temperature_fitted is False and point.warning == ""
    assert "not fitted" in point.describe()
    point = load_operating_point(write_json(
        tmp_path / "metrics.json", {"threshold": 0.3, "temperature": 2.0, "band": None}))
    assert (point.temperature, point.temperature_fitted, point.has_band) == (2.0, True, False)
    point = load_operating_point(write_json(
        tmp_path / "metrics.json", {"threshold": 0.3, "band": {"low": 0.1, "high": 0.6, "nested": {"a": 1}}}))
    assert point.band == {"low": 0.1, "high": 0.6}


@pytest.mark.parametrize("content, message", [
    ("{not json", "not readable JSON"),
    ("[0.5]", "not an object"),
    ('{"temperature": 1.0}', "no 'threshold' key"),
    ('{"threshold": null}', "threshold must be a finite number"),
    ('{"threshold": "0.5"}', "threshold must be a finite number"),
    ('{"threshold": 1.5}', r"threshold must be a probability in \[0, 1\]"),
    ('{"threshold": 0.5, "temperature": 0}', "temperature must be a positive number"),
    ('{"threshold": 0.5, "temperature": null}', "temperature must be a finite number"),
    ('{"threshold": 0.5, "band": {"low": 0.2}}', "'band' must be null or an object"),
    ('{"threshold": 0.5, "band": [0.2, 0.8]}', "'band' must be null or an object"),
    ('{"threshold": 0.5, "band": {"low": 0.8, "high": 0.2}}', "low <= high"),
    ('{"threshold": 0.5, "band": {"low": 0.2, "high": 1.2}}', "low <= high <= 1"),
], ids=["not-json", "not-object", "no-threshold", "null-threshold", "text-threshold", "threshold-range",
        "zero-temperature", "null-temperature", "band-without-high", "band-list", "band-reversed",
        "band-range"])
def test_a_broken_metrics_json_raises_naming_the_file_and_notebook_04(tmp_path, content, message):
    path = tmp_path / "metrics.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as raised:
        load_operating_point(path)
    assert str(path) in str(raised.value) and "04_evaluation" in str(raised.value)


def test_operating_point_refuses_nonsense():
    with pytest.raises(ValueError, match="temperature"):
        OperatingPoint(temperature=0.0)
    with pytest.raises(ValueError, match="both band_low and band_high"):
        OperatingPoint(band_low=0.2)
    with pytest.raises(ValueError, match="threshold"):
        OperatingPoint(threshold=-0.1)
    with pytest.raises(ValueError, match="give band_low and band_high"):
        OperatingPoint(band_statistics={"coverage": 0.9})
    with pytest.raises(ValueError, match="must not hold"):
        OperatingPoint(band_low=0.2, band_high=0.4, band_statistics={"low": 0.1})


