"""helpers.quantization_noise: flip chances and parity-target odds from measured logit errors."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import quantization_noise as noise


def sigmoid(logits) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def test_logit_known_values_and_rejects_non_probabilities():
    np.testing.assert_allclose(noise.logit([0.5, sigmoid(1.0), sigmoid(-2.0)]), [0.0, 1.0, -2.0], atol=1e-12)
    assert np.isfinite(noise.logit([0.0, 1.0])).all()  # clipped, not infinite
    with pytest.raises(ValueError, match="not logits"):
        noise.logit([0.2, 1.5])


def test_logit_errors_keep_the_band_only():
    reference = np.r_[np.full(12, 0.5), 0.999, 0.001]  # the last two are outside (0.05, 0.95)
    candidate = np.r_[np.full(12, sigmoid(0.2)), 0.5, 0.5]
    errors = noise.logit_errors(reference, candidate)
    assert errors.shape == (12,)
    np.testing.assert_allclose(errors, 0.2, atol=1e-9)


@pytest.mark.parametrize("reference, candidate, band, message", [
    (np.full(12, 0.5), np.full(11, 0.5), noise.ERROR_BAND, "one length"),
    (np.full(12, 0.5), np.full(12, 0.5), (0.9, 0.1), "low < high"),
    (np.r_[np.full(3, 0.5), np.full(20, 0.99)], np.full(23, 0.5), noise.ERROR_BAND, "Only 3 images"),
])
def test_logit_errors_reject_bad_input(reference, candidate, band, message):
    with pytest.raises(ValueError, match=message):
        noise.logit_errors(reference, candidate, band)


def test_flip_probabilities_known_values():
    errors = np.array([-1.0, 0.0, 1.0])  # each equally likely
    # Threshold 0.5 (logit 0): logits 0.5 and -0.5 flip only with the error of the
    # opposite sign (1 in 3); -0.2 needs an error >= 0.2 (1 in 3); 5 never flips;
    # exactly at the threshold (a positive decision) flips with any negative error.
    reference = sigmoid([0.5, -0.5, -0.2, 5.0, 0.0])
    chance = noise.flip_probabilities(reference, 0.5, errors)
    np.testing.assert_allclose(chance, [1 / 3, 1 / 3, 1 / 3, 0.0, 1 / 3])


@pytest.mark.parametrize("threshold, errors, message", [
    (0.0, [0.1], "strictly between 0 and 1"),
    (0.5, [], "non-empty"),
    (0.5, [0.1, np.nan], "finite"),
])
def test_flip_probabilities_reject_bad_input(threshold, errors, message):
    with pytest.raises(ValueError, match=message):
        noise.flip_probabilities(np.array([0.4, 0.6]), threshold, errors)


def test_simulate_parity_certain_flip_of_a_keras_error():
    # 100 images far from the threshold, one NORMAL at logit -1 that Keras gets right
    # and one PNEUMONIA at logit -1 that Keras misses; every error is +2, so both
    # flip in every draw: one right answer lost, one wrong answer fixed.
    reference = sigmoid(np.r_[np.full(100, 8.0), -1.0, -1.0])
    labels = np.r_[np.ones(100, int), 0, 1]
    simulated = noise.simulate_parity(reference, labels, 0.5, np.full(5, 2.0), draws=50)
    assert simulated["disagreements"].tolist() == [2] * 50
    np.testing.assert_allclose(simulated["accuracy_delta_points"], 0.0)
    simulated = noise.simulate_parity(reference[:-1], labels[:-1], 0.5, np.full(5, 2.0), draws=50)
    np.testing.assert_allclose(simulated["accuracy_delta_points"], -100 / 101)


def test_simulate_parity_is_seeded_and_checks_labels():
    reference = sigmoid(np.linspace(-1, 1, 40))
    labels = np.arange(40) % 2
    first = noise.simulate_parity(reference, labels, 0.5, [-0.5, 0.5], draws=200, seed=3)
    second = noise.simulate_parity(reference, labels, 0.5, [-0.5, 0.5], draws=200, seed=3)
    np.testing.assert_array_equal(first["disagreements"], second["disagreements"])
    with pytest.raises(ValueError, match="one label per probability"):
        noise.simulate_parity(reference, labels[:-1], 0.5, [0.1])


def test_chance_of_targets_two_coin_flips():
    # 200 images: 99.5% agreement allows 1 disagreement. Two correctly classified
    # PNEUMONIA images sit 0.5 logit above the threshold and flip with chance 1/2;
    # each flip costs 0.5 points, so accuracy stays within 0.3 only with no flip.
    reference = sigmoid(np.r_[np.full(198, 6.0), 0.5, 0.5])
    labels = np.ones(200, int)
    chance = noise.chance_of_targets(reference, labels, 0.5, [-1.0, 1.0], draws=20_000, seed=0)
    assert chance.n_images == 200 and chance.max_disagreements == 1
    assert chance.expected_disagreements == pytest.approx(1.0)
    assert chance.p_agreement == pytest.approx(0.75, abs=0.015)
    assert chance.p_accuracy_within == pytest.approx(0.25, abs=0.015)
    assert chance.p_accuracy_not_worse == pytest.approx(chance.p_accuracy_within)
    assert chance.p_both == pytest.approx(0.25, abs=0.015)


def test_noise_table_rows_and_zero_noise():
    reference = sigmoid(np.linspace(-2, 2, 50))
    labels = (np.arange(50) >= 25).astype(int)
    table = noise.noise_table({"validation": (reference, labels), "test": (reference, labels)}, 0.5,
                              errors=np.linspace(-0.3, 0.3, 11), scales=(1.0, 0.0), draws=500)
    assert list(table.index) == [("validation", 1.0), ("validation", 0.0), ("test", 1.0), ("test", 0.0)]
    silent = table.loc[("test", 0.0)]
    assert silent["logit_error_std"] == 0.0 and silent["expected_disagreements"] == 0.0
    assert silent["p_both"] == 1.0
    assert table.loc[("test", 1.0), "expected_disagreements"] > 0
