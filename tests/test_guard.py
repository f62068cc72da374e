"""The guard's gates: transformed films, the linear gates, their thresholds, the three verdicts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from helpers import guard, ood
from helpers.provenance import FittedOn, ProvenanceMismatch


@pytest.fixture(autouse=True)
def private_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path / "artifacts"))


def films(count: int = 3, size: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, size=(count, size, size, 1), dtype=np.uint8)
    return np.repeat(grey, 3, axis=-1)


# --------------------------------------------------------------------------- #
# Transformed films
# --------------------------------------------------------------------------- #
def test_orientation_variants_turn_each_film_the_named_way():
    images = films()
    variants = guard.orientation_variants(images)
    assert list(variants) == ["inverted", "upside_down", "rotated_left", "rotated_right"]
    np.testing.assert_array_equal(variants["inverted"], 255.0 - images)
    np.testing.assert_array_equal(variants["upside_down"][:, 0], images[:, -1])  # bottom row on top
    np.testing.assert_array_equal(variants["rotated_left"][:, 0, :], images[:, :, -1])  # right column on top
    np.testing.assert_array_equal(np.rot90(variants["rotated_right"], 1, axes=(1, 2)), images)
    assert [guard.orientation_of(name) for name in variants] == ["inverted", "upside_down", "rotated", "rotated"]
    with pytest.raises(ValueError, match="square"):
        guard.orientation_variants(np.zeros((1, 4, 6, 3)))


def test_orientation_label_reads_combined_variant_names():
    assert guard.orientation_label("upright") == guard.UPRIGHT
    assert guard.orientation_label("strong") == guard.UPRIGHT
    assert guard.orientation_label("strong+rotated_left") == "rotated"
    assert guard.orientation_label("strong+inverted") == "inverted"


def test_equalise_spreads_two_grey_levels_to_the_ends():
    image = np.zeros((1, 4, 4, 3), np.uint8)
    image[0, :2] = 100
    image[0, 2:] = 120
    equalised = guard.equalise(image)
    assert equalised.dtype == np.float32 and equalised.shape == image.shape
    assert set(np.unique(equalised).tolist()) == {0.0, 255.0}
    assert np.all(equalised[0, :2] == 0.0) and np.all(equalised[0, 2:] == 255.0)


def test_acquisition_variants_keep_shape_and_range():
    images = films(count=2, size=32)
    variants = guard.acquisition_variants(images, np.random.default_rng(0))
    assert list(variants) == ["strong", "equalised", "zoomed_out", "zoomed_in"]
    for name, altered in variants.items():
        assert altered.shape == images.shape and altered.min() >= 0.0 and altered.max() <= 255.0, name
    assert np.all(variants["zoomed_out"][:, 0, 0] == 0.0)  # the shrunk film sits on a black border


def test_variant_features_computes_every_variant_once():
    calls = []

    def features_of(images):
        calls.append(len(images))
        return np.asarray(images, np.float32).mean(axis=(1, 2))  # (N, 3)

    variants = guard.variant_features(features_of, films(count=2, size=16), np.random.default_rng(0))
    assert len(variants) == 1 + 4 + 4 + 4 and len(calls) == len(variants)
    assert {guard.orientation_label(name) for name in variants} == set(guard.ORIENTATIONS)
    assert all(values.shape == (2, 3) for values in variants.values())
    plain = guard.variant_features(features_of, films(count=2, size=16), np.random.default_rng(0), turn_strong=False)
    assert not any("+" in name for name in plain)


# --------------------------------------------------------------------------- #
# Linear gates
# --------------------------------------------------------------------------- #
def clusters(centres: dict[str, tuple], count: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = np.concatenate([rng.normal(centre, 0.3, size=(count, len(centre))) for centre in centres.values()])
    labels = np.repeat(list(centres), count)
    return features, labels


def test_linear_gate_separates_clusters_and_round_trips_through_arrays():
    centres = {"upright": (0, 0), "inverted": (3, 0), "upside_down": (0, 3), "rotated": (-3, 0)}
    features, labels = clusters(centres)
    gate = guard.fit_linear_gate(features, labels, guard.ORIENTATIONS, watched="upright")
    probabilities = gate.probabilities(features)
    assert probabilities.shape == (240, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(np.array(guard.ORIENTATIONS)[probabilities.argmax(axis=1)] == labels) > 0.97
    stored = gate.with_threshold(0.3).to_arrays("orientation")
    again = guard.LinearGate.from_arrays(stored, "orientation")
    assert again.classes == guard.ORIENTATIONS and again.threshold == 0.3 and again.watched == 0
    np.testing.assert_allclose(again.probabilities(features), probabilities, rtol=1e-5)
    with pytest.raises(ValueError, match="dimensions"):
        gate.probabilities(np.zeros((1, 5)))


def test_fit_linear_gate_names_unknown_and_missing_classes():
    features = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"\['cat'\] are not among"):
        guard.fit_linear_gate(features, ["xray", "cat", "xray", "not_xray"], guard.XRAY_CLASSES, "xray")
    with pytest.raises(ValueError, match=r"No training examples of \['not_xray'\]"):
        guard.fit_linear_gate(features, ["xray"] * 4, guard.XRAY_CLASSES, "xray")
    with pytest.raises(ValueError, match="probability in"):
        guard.fit_linear_gate(np.eye(4), ["xray", "not_xray"] * 2, guard.XRAY_CLASSES, "xray").with_threshold(1.0)


def test_threshold_between_is_halfway_between_the_edges_in_logit():
    accepted = 1.0 / (1.0 + np.exp(-np.full(100, 4.0)))  # all at logit 4
    refused = 1.0 / (1.0 + np.exp(-np.full(100, -2.0)))  # all at logit -2
    assert guard.threshold_between(accepted, refused) == pytest.approx(1.0 / (1.0 + np.exp(-1.0)))


def test_gates_fitted_on_variants_flag_what_they_learned():
    rng = np.random.default_rng(1)

    def variants(seed):
        generator = np.random.default_rng(seed)
        upright = generator.normal(0, 0.3, (50, 3))
        return {"upright": upright, "strong": upright + generator.normal(0, 0.2, (50, 3)),
                "inverted": upright + (4, 0, 0), "upside_down": upright + (0, 4, 0),
                "rotated_left": upright + (0, 0, 4), "rotated_right": upright + (0, 0, 4.5)}

    train, validation, test = variants(1), variants(2), variants(3)
    orientation = guard.fit_orientation_gate(train, validation)
    report = guard.orientation_report(orientation, test)
    assert report["inverted_detected"] == report["upside_down_detected"] == report["rotated_detected"] == 1.0
    assert report["upright_false_alarm"] == 0.0 and report["named_correctly"] == 1.0
    assert 0.0 < report["threshold"] < 1.0
    non_xray = rng.normal(-6, 0.5, (60, 3))
    xray = guard.fit_xray_gate(train, non_xray[:30], validation, non_xray[30:])
    assert not np.any(xray.fires(np.concatenate(list(test.values()))))
    assert np.all(xray.fires(rng.normal(-6, 0.5, (20, 3))))
    block = guard.xray_report(xray, test)
    assert block["called_not_xray_worst"] == 0.0 and set(block["called_not_xray"]) == set(test)


# --------------------------------------------------------------------------- #
# The detector's three verdicts
# --------------------------------------------------------------------------- #
def toy_detector() -> ood.OODDetector:
    """2-D features: x0 > 0 is an X-ray, x1 > 0 means inverted, |x| > 10 is far from training."""
    xray = guard.LinearGate(guard.XRAY_CLASSES, np.zeros(2, np.float32), np.ones(2, np.float32),
                            np.array([[0, 1], [0, 0]], np.float32), np.zeros(2, np.float32), 0.5, 1)
    orientation = guard.LinearGate(guard.ORIENTATIONS, np.zeros(2, np.float32), np.ones(2, np.float32),
                                   np.array([[0, 0, 0, 0], [0, 1, 0, 0]], np.float32),
                                   np.array([0, 0, -20, -20], np.float32), 0.5, 0)
    detector = ood.OODDetector(ood.FeatureDistribution(np.zeros(2), np.eye(2)), distance_threshold=10.0,
                               fitted_on=FittedOn("a" * 64, 2))
    return detector.with_gates(xray, orientation)


def test_detector_gives_the_four_verdicts_in_gate_order():
    detector = toy_detector()
    images = films(count=5, size=8)
    images[4, ..., 0] = 255  # a strongly red picture
    features = np.array([[5.0, -5.0], [-5.0, -5.0], [5.0, 5.0], [30.0, -5.0], [5.0, -5.0]])
    verdicts = detector.check(images, features)
    assert [v.kind for v in verdicts] == [guard.CHEST_XRAY, guard.NOT_XRAY, guard.WRONG_WAY_ROUND,
                                          guard.UNLIKE_POPULATION, guard.NOT_XRAY]
    assert [v.gate for v in verdicts] == ["accepted", "xray", "orientation", "features", "colour"]
    assert [v.accepted for v in verdicts] == [True, False, False, False, False]
    assert [v.answered for v in verdicts] == [True, False, False, True, False]
    assert "does not look like a chest X-ray" in verdicts[1].message
    assert verdicts[2].orientation == "inverted" and "inverted (a negative" in verdicts[2].message
    assert "turn it upright" in verdicts[2].message
    assert "outside the population" in verdicts[3].message and "Refer to a radiologist" in verdicts[3].message
    kinds = detector.kinds(ood.colourfulness(images), **ood._gate_inputs(detector, features))
    assert kinds.tolist() == [v.kind for v in verdicts]


def test_detector_with_gates_saves_and_loads_them(tmp_path):
    detector = toy_detector()
    path = detector.save(tmp_path / "detector.npz")
    loaded = ood.OODDetector.load(path)
    features = np.array([[5.0, -5.0], [5.0, 5.0]])
    assert [v.kind for v in loaded.check(films(2), features)] == [guard.CHEST_XRAY, guard.WRONG_WAY_ROUND]
    assert loaded.orientation_gate.classes == guard.ORIENTATIONS


def test_a_detector_file_without_gates_says_to_refit_it(tmp_path):
    plain = ood.OODDetector(ood.FeatureDistribution(np.zeros(2), np.eye(2)), distance_threshold=10.0,
                            fitted_on=FittedOn("a" * 64, 2))
    path = plain.save(tmp_path / "old_detector.npz")
    with pytest.raises(ValueError, match="old_detector.npz was fitted before the X-ray and orientation gates"
                                         ".*07_prediction_explorer"):
        ood.OODDetector.load(path)


def test_a_detector_knows_its_model_and_refuses_another(tmp_path):
    path = toy_detector().save(tmp_path / "detector.npz")
    loaded = ood.OODDetector.load(path)
    assert loaded.fitted_on == FittedOn("a" * 64, 2)
    loaded.require_model("a" * 64, "detector.npz", "model.tflite")  # the model it was fitted on: fine
    with pytest.raises(ProvenanceMismatch, match="detector.npz was fitted on another model.*Fit the detector again"):
        loaded.require_model("b" * 64, "detector.npz", "model.tflite")
    with pytest.raises(ProvenanceMismatch, match="records no model hash"):
        loaded.require_model(None, "detector.npz", "model.tflite")
    with pytest.raises(ValueError, match="does not record the model it was fitted on"):
        dataclasses.replace(loaded, fitted_on=None).save(tmp_path / "unknown.npz")


def test_a_detector_file_without_its_model_is_refused(tmp_path):
    path = toy_detector().save(tmp_path / "detector.npz")
    with np.load(path) as stored:
        arrays = {name: stored[name] for name in stored.files if name != "fitted_on"}
    np.savez(tmp_path / "anonymous.npz", **arrays)
    with pytest.raises(ProvenanceMismatch, match="anonymous.npz does not record which model.*07_prediction_explorer"):
        ood.OODDetector.load(tmp_path / "anonymous.npz")


def test_report_separates_refusals_from_referrals(tmp_path):
    detector = toy_detector()
    test_features = np.array([[5.0, -5.0], [5.0, 5.0], [30.0, -5.0], [5.0, -4.0]])  # ok, turned, far, ok
    other_features = np.array([[-5.0, -5.0], [-5.0, 0.0], [30.0, -5.0]])  # two not X-ray, one far "X-ray"
    report = ood.evaluate_detector(detector, np.zeros(4), test_features, np.array([50.0, 0.0, 0.0]),
                                   other_features, ["photo_colour", "text", "flat"])
    assert report["false_rejection_rate_test"] == 0.25 and report["unlike_population_rate_test"] == 0.25
    assert report["test_verdicts"] == {"chest_xray": 2, "not_xray": 0, "wrong_way_round": 1, "unlike_population": 1}
    assert report["rejection_rate_non_xray"] == pytest.approx(2 / 3)
    assert (report["rejected_by_colour_gate"], report["rejected_by_xray_gate"]) == (1, 1)
    assert report["per_kind"]["flat"] == {"n": 1, "rejection_rate": 0.0}
    written = ood.write_report(report, tmp_path / "ood.json")
    assert json.loads(written.read_text()) == report
