"""Out-of-distribution check: colour gate, Mahalanobis feature gate, report, generated images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import ood
from helpers.provenance import FittedOn


@pytest.fixture(autouse=True)
def private_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path / "artifacts"))


def gaussian_features(count: int, dimensions: int = 8, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.5, 3.0, dimensions)  # anisotropic, so Mahalanobis != Euclidean
    return rng.normal(shift, 1.0, size=(count, dimensions)) * scales


def grey_images(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, size=(count, 32, 32, 1), dtype=np.uint8)
    return np.repeat(grey, 3, axis=-1)


# --------------------------------------------------------------------------- #
# Colour gate
# --------------------------------------------------------------------------- #
def test_colourfulness_is_zero_for_grey_and_high_for_photos():
    assert np.all(ood.colourfulness(grey_images(4)) == 0.0)
    photos, kinds = ood.non_xray_images(per_kind=2)
    colour = ood.colourfulness(photos[kinds == "photo_colour"])
    assert np.all(colour > ood.DEFAULT_MAX_COLOURFULNESS)
    assert np.all(ood.colourfulness(photos[kinds == "photo_grey"]) == 0.0)


def test_colourfulness_of_a_pure_tint_counts_the_mean_offset():
    tinted = np.zeros((1, 8, 8, 3), np.uint8)
    tinted[..., 0] = 100  # red image: R-G = 100, Y-B = 50 everywhere, no spread
    assert ood.colourfulness(tinted)[0] == pytest.approx(0.3 * np.hypot(100, 50))


def test_colourfulness_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="RGB"):
        ood.colourfulness(np.zeros((32, 32, 3)))


# --------------------------------------------------------------------------- #
# Feature gate
# --------------------------------------------------------------------------- #
def test_mahalanobis_distance_matches_scipy():
    from scipy.spatial.distance import mahalanobis

    features = gaussian_features(400)
    distribution = ood.FeatureDistribution.fit(features)
    probe = gaussian_features(5, seed=1, shift=2.0)
    expected = [mahalanobis(row, distribution.mean, distribution.precision) for row in probe]
    np.testing.assert_allclose(distribution.distances(probe), expected, rtol=1e-10)
    # a point far along the low-variance axis is further than the same step along the high one
    low_axis, high_axis = distribution.mean.copy(), distribution.mean.copy()
    low_axis[0] += 3.0
    high_axis[-1] += 3.0
    near, far = distribution.distances(np.stack([high_axis, low_axis]))
    assert far > 3 * near


def test_feature_distribution_needs_matching_dimensions():
    distribution = ood.FeatureDistribution.fit(gaussian_features(50))
    with pytest.raises(ValueError, match="same model"):
        distribution.distances(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="N >= 2"):
        ood.FeatureDistribution.fit(np.zeros((1, 8)))


def test_fit_detector_threshold_is_the_validation_quantile():
    train, validation = gaussian_features(500, seed=0), gaussian_features(400, seed=1)
    detector = ood.fit_detector(train, validation, quantile=0.99)
    distances = detector.distribution.distances(validation)
    assert detector.distance_threshold == pytest.approx(np.quantile(distances, 0.99))
    assert np.mean(distances <= detector.distance_threshold) == pytest.approx(0.99, abs=0.005)
    assert detector.info["n_fit"] == 500 and detector.info["n_threshold"] == 400
    with pytest.raises(ValueError, match="quantile"):
        ood.fit_detector(train, validation, quantile=1.0)
    with pytest.raises(ValueError, match="max_colourfulness"):
        ood.fit_detector(train, validation, max_colourfulness=0)


def test_check_gives_one_verdict_per_image_with_the_deciding_gate():
    detector = ood.fit_detector(gaussian_features(500), gaussian_features(300, seed=1))
    images = grey_images(3)
    images[1, ..., 0] = 255  # a strongly red image
    features = np.stack([detector.distribution.mean, detector.distribution.mean,
                         detector.distribution.mean + 100.0])
    verdicts = detector.check(images, features)
    assert [v.gate for v in verdicts] == ["accepted", "colour", "features"]
    assert [v.accepted for v in verdicts] == [True, False, False]
    assert "colour" in verdicts[1].message and "Upload a frontal chest X-ray" in verdicts[1].message
    assert "99.5th percentile" in verdicts[2].message
    with pytest.raises(ValueError, match="feature rows"):
        detector.check(images, features[:2])


def test_detector_save_and_load_round_trip(tmp_path):
    from tests.test_guard import toy_detector

    gates = toy_detector()
    detector = ood.fit_detector(gaussian_features(200, dimensions=2), gaussian_features(100, dimensions=2, seed=1),
                                quantile=0.98, max_colourfulness=12.0,
                                fitted_on=FittedOn("c" * 64, 2)).with_gates(gates.xray_gate, gates.orientation_gate)
    path = detector.save(tmp_path / "ood" / "detector.npz")
    loaded = ood.OODDetector.load(path)
    assert loaded.distance_threshold == detector.distance_threshold
    assert (loaded.quantile, loaded.max_colourfulness, loaded.info) == (0.98, 12.0, detector.info)
    assert loaded.fitted_on == FittedOn("c" * 64, 2)
    probe = gaussian_features(4, dimensions=2, seed=3)
    np.testing.assert_allclose(loaded.distribution.distances(probe), detector.distribution.distances(probe))
    np.testing.assert_allclose(loaded.xray_gate.probabilities(probe), detector.xray_gate.probabilities(probe))
    assert ood.OODDetector.load is not None and detector.save().name == ood.DETECTOR_FILE_NAME
    with pytest.raises(FileNotFoundError, match="07_prediction_explorer"):
        ood.OODDetector.load(tmp_path / "missing.npz")


# --------------------------------------------------------------------------- #
# The report
# --------------------------------------------------------------------------- #
def test_evaluate_detector_without_gates_refuses_far_images():
    detector = ood.OODDetector(ood.FeatureDistribution(np.zeros(2), np.eye(2)), distance_threshold=1.0,
                               info={"n_fit": 10, "n_threshold": 5})
    def on_axis(distances):
        return np.stack([np.asarray(distances, float), np.zeros(len(distances))], axis=1)
    report = ood.evaluate_detector(
        detector,
        test_colourfulness=np.zeros(4), test_features=on_axis([0.1, 0.5, 0.9, 1.5]),
        non_xray_colourfulness=np.array([50.0, 0.0, 0.0, 0.0]),
        non_xray_features=on_axis([0.2, 3.0, 0.5, 2.0]),
        non_xray_kinds=["photo_colour", "text", "text", "flat"],
    )
    assert report["false_rejection_rate_test"] == 0.25
    assert report["rejection_rate_non_xray"] == 0.75 and report["n_non_xray"] == 4
    assert (report["rejected_by_colour_gate"], report["rejected_by_xray_gate"]) == (1, 2)
    assert report["per_kind"]["text"] == {"n": 2, "rejection_rate": 0.5}
    assert report["threshold"] == 1.0 and report["n_fit"] == 10 and report["xray_threshold"] is None
    path = ood.write_report(report)
    assert path.name == "ood.json" and json.loads(path.read_text()) == report
    with pytest.raises(ValueError, match="kinds"):
        ood.evaluate_detector(detector, np.zeros(1), np.zeros((1, 2)), np.zeros(2), np.zeros((2, 2)), ["x"])


# --------------------------------------------------------------------------- #
# Generated non-X-ray images
# --------------------------------------------------------------------------- #
def test_non_xray_images_cover_every_kind_deterministically():
    images, kinds = ood.non_xray_images(per_kind=3, seed=7)
    assert images.shape == (3 * len(ood.NON_XRAY_KINDS), 224, 224, 3) and images.dtype == np.uint8
    assert sorted(set(kinds)) == sorted(ood.NON_XRAY_KINDS)
    again, _ = ood.non_xray_images(per_kind=3, seed=7)
    np.testing.assert_array_equal(images, again)
    for kind in ("photo_grey", "grey_noise", "checkerboard", "text"):
        assert np.all(ood.colourfulness(images[kinds == kind]) == 0.0), kind
    assert images[kinds == "text"].std() > 10  # there is ink on the page
    with pytest.raises(ValueError, match="per_kind"):
        ood.non_xray_images(per_kind=0)


def test_cached_features_are_reused(monkeypatch):
    from tests.test_explorer import tiny_model

    model = tiny_model()
    images = grey_images(5).repeat(7, axis=1).repeat(7, axis=2)  # (5, 224, 224, 3)
    first = ood.cached_features(model, images)
    assert first.shape == (5, 6)

    def fail(*args, **kwargs):
        raise AssertionError("features were recomputed instead of read from the cache")

    monkeypatch.setattr(ood, "compute_features", fail)
    np.testing.assert_array_equal(ood.cached_features(model, images), first)
    with pytest.raises(AssertionError):
        ood.cached_features(tiny_model(seed=1), images)  # another model: another cache entry


def test_feature_model_needs_the_pool_layer():
    import keras

    inputs = keras.Input((8, 8, 3))
    bare = keras.Model(inputs, keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="global_pool"):
        ood.feature_model(bare)
    with pytest.raises(ValueError, match="batch_size"):
        ood.compute_features(None, np.zeros((1, 8, 8, 3)), batch_size=0)


def test_one_film_and_many_films_get_the_same_distance():
    from helpers import ood

    rng = np.random.default_rng(7)
    features = rng.normal(size=(200, 32))
    distribution = ood.FeatureDistribution.fit(features)
    many = distribution.distances(features[:10])  # BLAS path
    one_by_one = np.concatenate([distribution.distances(row[np.newaxis]) for row in features[:10]])  # float32 loop
    np.testing.assert_allclose(one_by_one, many, rtol=1e-5)
