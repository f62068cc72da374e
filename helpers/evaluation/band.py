"""The abstention band: "refer to a radiologist" between two thresholds, chosen on validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from helpers.evaluation.metrics import metrics_from_counts
from helpers.evaluation.splits import ScoredSplit, as_labels, as_probabilities, decision_split
from helpers.operating_point import REFER, called_pneumonia, in_band


@dataclass(frozen=True)
class Band:
    """Refer to a radiologist when ``low <= probability < high``.

    Outside the band: NORMAL below ``low``, PNEUMONIA at or above ``high``.
    """

    low: float
    high: float
    target_coverage: float
    chosen_on: str

    def decide(self, probabilities) -> np.ndarray:
        """(N,) int: 0 NORMAL, 1 PNEUMONIA, -1 referred to a radiologist."""
        probabilities = as_probabilities(probabilities)
        return np.where(in_band(probabilities, self.low, self.high), REFER,
                        called_pneumonia(probabilities, self.high).astype(np.int64))


def band_outcome(labels, probabilities, band: Band) -> dict[str, float]:
    """Coverage (share decided by the model) and the quality of those decisions.

    Returns coverage, accuracy_outside, recall_outside, specificity_outside,
    n_decided, n_referred (ratios NaN when undefined).
    """
    labels = as_labels(labels)
    decisions = band.decide(as_probabilities(probabilities, len(labels)))  # (N,) in {-1, 0, 1}
    decided = decisions >= 0
    counts = {
        "tp": int(np.sum(decided & (decisions == 1) & (labels == 1))),
        "fp": int(np.sum(decided & (decisions == 1) & (labels == 0))),
        "tn": int(np.sum(decided & (decisions == 0) & (labels == 0))),
        "fn": int(np.sum(decided & (decisions == 0) & (labels == 1))),
    }
    metrics = metrics_from_counts(**counts)
    return {
        "coverage": float(np.mean(decided)),
        "accuracy_outside": metrics["accuracy"],
        "recall_outside": metrics["recall"],
        "specificity_outside": metrics["specificity"],
        "n_decided": int(decided.sum()),
        "n_referred": int((~decided).sum()),
    }


def _band_search(labels: np.ndarray, probabilities: np.ndarray, target_coverage: float,
                 threshold: float | None, min_recall_outside: float | None) -> tuple[float, float]:
    """Best (low, high) on these arrays: max accuracy outside with coverage >= target.

    Sorted by probability, a band is a window [i, j) of referred images. Windows may
    only start and end where the probability changes (ties are never split), and a
    cut's threshold is the midpoint between its neighbouring scores, except the cut
    at the operating threshold, which takes the threshold itself.
    """
    order = np.argsort(probabilities, kind="stable")
    scores, sorted_labels = probabilities[order], labels[order]  # (N,) ascending
    n = len(scores)
    # cut c (0 < c < n) lies between scores[c - 1] and scores[c]; only where they differ
    cuts = np.flatnonzero(np.diff(scores) > 0) + 1  # (C,)
    cut_values = (scores[cuts - 1] + scores[cuts]) / 2.0  # (C,)
    threshold_cut = None
    if threshold is not None:
        threshold_cut = int(np.searchsorted(scores, threshold, side="left"))  # images below it
        if not 0 < threshold_cut < n:
            raise ValueError(f"The threshold {threshold} lies outside the validation scores.")
        cuts, index = np.unique(np.append(cuts, threshold_cut), return_index=True)
        cut_values = np.append(cut_values, threshold)[index]
        cut_values[cuts == threshold_cut] = threshold  # same partition, exact value
    if len(cuts) == 0:
        raise ValueError("All validation probabilities are equal: no band can separate them.")
    positives_below = np.concatenate([[0], np.cumsum(sorted_labels)])[cuts]  # (C,) positives in [0, c)
    total_positive = int(sorted_labels.sum())
    low_cut, high_cut = cuts[:, None], cuts[None, :]  # (C, 1), (1, C)
    decided = low_cut + (n - high_cut)  # (C, C) images below low plus at/above high
    true_negatives = low_cut - positives_below[:, None]  # NORMAL images below low
    true_positives = total_positive - positives_below[None, :]  # PNEUMONIA images at/above high
    valid = (high_cut >= low_cut) & (decided >= target_coverage * n - 1e-9)
    if threshold_cut is not None:  # the band must contain the operating threshold
        valid &= (low_cut <= threshold_cut) & (high_cut >= threshold_cut)
    if min_recall_outside is not None:
        decided_positives = positives_below[:, None] + true_positives  # FN + TP outside
        recall = true_positives / np.maximum(decided_positives, 1)
        valid &= (decided_positives > 0) & (recall >= min_recall_outside)
    if not valid.any():
        raise ValueError(
            f"No band reaches coverage {target_coverage:.0%}"
            + (f" with recall outside >= {min_recall_outside}" if min_recall_outside else "")
            + (f" around threshold {threshold:.4f}" if threshold is not None else "")
            + ". Lower target_coverage or min_recall_outside."
        )
    accuracy = np.where(valid, (true_negatives + true_positives) / np.maximum(decided, 1), -1.0)
    # best accuracy; ties -> higher coverage (np.lexsort: last key is the primary one)
    best = np.lexsort((decided.ravel(), accuracy.ravel()))[-1]
    low_index, high_index = np.unravel_index(best, accuracy.shape)
    return float(cut_values[low_index]), float(cut_values[high_index])


def choose_band(
    validation: ScoredSplit,
    target_coverage: float = 0.85,
    threshold: float | None = None,
    min_recall_outside: float | None = None,
) -> Band:
    """Choose the referral band on the validation split (refuses the test split).

    Among all bands whose validation coverage (share of images the model decides) is
    at least ``target_coverage``, take the one with the highest validation accuracy
    outside the band (ties: higher coverage).

    Args:
        threshold: if given, the band must contain it, so outside the band the model
            decides exactly as the operating threshold would.
        min_recall_outside: optional floor on the recall of the decided images.
    """
    validation = decision_split(validation, "abstention band")
    if not 0.0 < target_coverage <= 1.0:
        raise ValueError(f"target_coverage must be in (0, 1], got {target_coverage}.")
    low, high = _band_search(validation.labels, validation.probabilities, target_coverage,
                             threshold, min_recall_outside)
    return Band(low, high, float(target_coverage), validation.name)


def coverage_curve(validation: ScoredSplit, reported: ScoredSplit, target_coverages,
                   threshold: float | None = None):
    """For each target coverage: choose the band on validation, report it on ``reported``.

    Returns a DataFrame with target_coverage, low, high and, for both splits,
    coverage and accuracy_outside / recall_outside (prefixed ``validation_`` and
    ``<reported.name>_``).
    """
    import pandas as pd

    rows = []
    for target in target_coverages:
        band = choose_band(validation, float(target), threshold)
        row = {"target_coverage": float(target), "low": band.low, "high": band.high}
        for split in (validation, reported):
            outcome = band_outcome(split.labels, split.probabilities, band)
            for key in ("coverage", "accuracy_outside", "recall_outside"):
                row[f"{split.name}_{key}"] = outcome[key]
        rows.append(row)
    return pd.DataFrame(rows)
