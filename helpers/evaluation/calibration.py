"""Calibration: temperature scaling, reliability bins, ECE, Brier score, log loss."""

from __future__ import annotations

import math

import numpy as np

from helpers.evaluation.splits import (
    DEFAULT_ECE_BINS,
    ScoredSplit,
    as_labels,
    as_probabilities,
    decision_split,
)
from helpers.operating_point import sigmoid


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / temperature)``, float64, same shape."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}.")
    return sigmoid(np.asarray(logits, dtype=np.float64) / temperature)


def negative_log_likelihood(labels, logits, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / temperature)`` (nats)."""
    labels = as_labels(labels)
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    # -log sigmoid(z) = logaddexp(0, -z); -log(1 - sigmoid(z)) = logaddexp(0, z)
    return float(np.mean(np.where(labels == 1, np.logaddexp(0.0, -scaled), np.logaddexp(0.0, scaled))))


def fit_temperature_to_arrays(labels, logits, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T > 0 minimizing the NLL of ``sigmoid(logits / T)``.

    Low-level; notebooks use :func:`fit_temperature` with the validation split.
    """
    from scipy.optimize import minimize_scalar

    labels = as_labels(labels)
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(logits)} logits.")
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(labels, logits, math.exp(log_t)),
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(result.x))


def fit_temperature(validation: ScoredSplit) -> float:
    """Temperature scaling fitted on the validation split's logits (refuses test)."""
    validation = decision_split(validation, "temperature")
    return fit_temperature_to_arrays(validation.labels, validation.logits)


def describe_temperature(temperature: float) -> str:
    """One sentence on what a fitted temperature says about the model's confidence.

    ``T > 1`` softens the logits: the model was over-confident where T was fitted;
    ``T < 1`` sharpens them: it was under-confident; ``T = 1`` (to 2 decimals) leaves them.
    """
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}.")
    if round(temperature, 2) == 1.0:
        return f"T = {temperature:.2f}: the probabilities were already calibrated; scaling leaves them as they are."
    if temperature > 1:
        return (f"T = {temperature:.2f} > 1: the model was over-confident; dividing the logits by T softens its "
                "probabilities towards 0.5.")
    return (f"T = {temperature:.2f} < 1: the model was under-confident; dividing the logits by T sharpens its "
            "probabilities towards 0 and 1.")


def calibration_bins(labels, probabilities, n_bins: int = DEFAULT_ECE_BINS):
    """Equal-width bins of P(PNEUMONIA) on [0, 1]: the data of a reliability diagram.

    Returns a DataFrame with one row per bin: ``low``, ``high``, ``count``,
    ``mean_probability`` (confidence) and ``positive_rate`` (observed frequency);
    empty bins have NaN means and count 0.
    """
    import pandas as pd

    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    labels = as_labels(labels)
    probabilities = as_probabilities(probabilities, len(labels))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.clip(np.digitize(probabilities, edges[1:-1], right=False), 0, n_bins - 1)  # (N,)
    counts = np.bincount(bin_of, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_probability = np.bincount(bin_of, probabilities, n_bins) / counts
        positive_rate = np.bincount(bin_of, labels.astype(np.float64), n_bins) / counts
    return pd.DataFrame({"low": edges[:-1], "high": edges[1:], "count": counts,
                         "mean_probability": mean_probability, "positive_rate": positive_rate})


def expected_calibration_error(labels, probabilities, n_bins: int = DEFAULT_ECE_BINS) -> float:
    """ECE of P(PNEUMONIA): sum over bins of (share of images) x |positive rate - mean probability|.

    Equal-width bins on [0, 1] (15 by default). 0 = perfectly calibrated.
    """
    bins = calibration_bins(labels, probabilities, n_bins)
    filled = bins[bins["count"] > 0]
    weights = filled["count"] / bins["count"].sum()
    return float(np.sum(weights * np.abs(filled["positive_rate"] - filled["mean_probability"])))


def brier_score(labels, probabilities) -> float:
    """Mean squared error between P(PNEUMONIA) and the 0/1 label (lower is better); scikit-learn's."""
    from sklearn.metrics import brier_score_loss

    labels = as_labels(labels)
    probabilities = as_probabilities(probabilities, len(labels))
    return float(brier_score_loss(labels, probabilities, pos_label=1))


def calibration_summary(split: ScoredSplit, temperature: float, n_bins: int = DEFAULT_ECE_BINS) -> dict:
    """ECE, Brier score and NLL of ``split`` before (T = 1) and after temperature scaling."""
    calibrated = apply_temperature(split.logits, temperature)
    return {
        "ece_before": expected_calibration_error(split.labels, split.probabilities, n_bins),
        "ece_after": expected_calibration_error(split.labels, calibrated, n_bins),
        "brier_before": brier_score(split.labels, split.probabilities),
        "brier_after": brier_score(split.labels, calibrated),
        "nll_before": negative_log_likelihood(split.labels, split.logits, 1.0),
        "nll_after": negative_log_likelihood(split.labels, split.logits, temperature),
    }
