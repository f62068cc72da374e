"""Dataset-shift check: two-sample AUC, within-class comparisons, table, record, features."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import shift


def gaussian(count: int, seed: int, shift_by: float = 0.0, dimensions: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift_by, 1.0, size=(count, dimensions))


def test_same_population_gives_auc_near_half():
    reference_scores, other_scores = shift.domain_scores(gaussian(300, 0), gaussian(200, 1))
    assert reference_scores.shape == (300,) and other_scores.shape == (200,)
    assert abs(shift.domain_auc(reference_scores, other_scores) - 0.5) < 0.08


def test_shifted_population_gives_high_auc():
    # Every dimension moved by one standard deviation: a linear classifier separates them.
    reference_scores, other_scores = shift.domain_scores(gaussian(300, 0), gaussian(200, 1, shift_by=1.0))
    assert shift.domain_auc(reference_scores, other_scores) > 0.95
    assert other_scores.mean() > reference_scores.mean()


def test_domain_auc_known_values():
    assert shift.domain_auc([0.1, 0.2], [0.8, 0.9]) == 1.0
    assert shift.domain_auc([0.8, 0.9], [0.1, 0.2]) == 0.0
    assert shift.domain_auc([0.5, 0.5], [0.5, 0.5]) == 0.5


def test_domain_scores_are_seeded():
    first = shift.domain_scores(gaussian(50, 0), gaussian(40, 1, 0.3), seed=3)
    second = shift.domain_scores(gaussian(50, 0), gaussian(40, 1, 0.3), seed=3)
    np.testing.assert_array_equal(first[0], second[0])


@pytest.mark.parametrize("reference, other, folds, message", [
    (np.zeros((10, 3)), np.zeros((10, 4)), 5, "same feature model"),
    (np.zeros((10, 3)), np.zeros((3, 3)), 5, "at least folds=5 rows"),
    (np.zeros(10), np.zeros((10, 3)), 5, r"\(N, D\)"),
    (np.full((10, 3), np.nan), np.zeros((10, 3)), 5, "NaN"),
    (np.zeros((10, 3)), np.zeros((10, 3)), 1, "folds must be >= 2"),
])
def test_domain_scores_reject_bad_input(reference, other, folds, message):
    with pytest.raises(ValueError, match=message):
        shift.domain_scores(reference, other, folds=folds)


def shifted_splits():
    """train and validation from one population; test NORMAL moved, test PNEUMONIA not."""
    labels = {"train": np.r_[np.zeros(150), np.ones(150)].astype(int),
              "validation": np.r_[np.zeros(60), np.ones(60)].astype(int),
              "test": np.r_[np.zeros(60), np.ones(60)].astype(int)}
    features = {
        "train": np.concatenate([gaussian(150, 0), gaussian(150, 1, 3.0)]),
        "validation": np.concatenate([gaussian(60, 2), gaussian(60, 3, 3.0)]),
        "test": np.concatenate([gaussian(60, 4, 1.5), gaussian(60, 5, 3.0)]),
    }
    return features, labels


def test_compare_within_classes_finds_the_shifted_class_only():
    features, labels = shifted_splits()
    comparisons = shift.compare_within_classes(features, labels)
    by_name = {comparison.name: comparison for comparison in comparisons}
    assert list(by_name) == ["train vs validation (NORMAL)", "train vs test (NORMAL)",
                             "train vs validation (PNEUMONIA)", "train vs test (PNEUMONIA)"]
    assert by_name["train vs test (NORMAL)"].auc > 0.95
    for name in ("train vs validation (NORMAL)", "train vs validation (PNEUMONIA)",
                 "train vs test (PNEUMONIA)"):
        assert abs(by_name[name].auc - 0.5) < 0.15, name
    assert len(by_name["train vs test (NORMAL)"].reference_scores) == 150
    assert len(by_name["train vs test (NORMAL)"].other_scores) == 60

    table = shift.shift_table(comparisons)
    assert list(table.columns) == ["class", "reference", "compared with", "reference images",
                                   "compared images", "two-sample AUC"]
    assert table["compared images"].tolist() == [60, 60, 60, 60]
    record = shift.shift_record(comparisons)
    assert set(record) == {"train_vs_validation_NORMAL", "train_vs_test_NORMAL",
                           "train_vs_validation_PNEUMONIA", "train_vs_test_PNEUMONIA"}
    assert record["train_vs_test_NORMAL"] == by_name["train vs test (NORMAL)"].auc


def test_compare_within_classes_rejects_missing_or_mismatched_splits():
    features, labels = shifted_splits()
    with pytest.raises(ValueError, match="No features or labels for split 'holdout'"):
        shift.compare_within_classes(features, labels, others=("holdout",))
    labels["test"] = labels["test"][:-1]
    with pytest.raises(ValueError, match="120 feature rows but 119 labels"):
        shift.compare_within_classes(features, labels)


def test_plot_shift_draws_one_bar_per_comparison():
    import matplotlib

    matplotlib.use("Agg")
    features, labels = shifted_splits()
    figure = shift.plot_shift(shift.compare_within_classes(features, labels))
    bar_axis, histogram_axis = figure.axes
    assert len(bar_axis.patches) == 4
    assert "train vs test (NORMAL)" in histogram_axis.get_title()
    with pytest.raises(ValueError, match="no comparisons"):
        shift.plot_shift([])


def test_imagenet_features_use_the_given_extractor_and_check_shape():
    import keras

    inputs = keras.Input((8, 8, 3))
    extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))  # (B, 3): mean pixel
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    features = shift.imagenet_features(images, batch_size=2, extractor=extractor)
    np.testing.assert_allclose(features, images.reshape(5, -1, 3).mean(axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        shift.imagenet_features(images[..., 0], extractor=extractor)
