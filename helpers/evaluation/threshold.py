"""The decision threshold, chosen on validation only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from helpers.evaluation.metrics import confusion_counts, metrics_from_counts
from helpers.evaluation.splits import (
    DEFAULT_MIN_RECALL,
    ScoredSplit,
    as_labels,
    as_probabilities,
    decision_split,
)


def choose_threshold(validation_labels, validation_probabilities, min_recall: float = DEFAULT_MIN_RECALL) -> float:
    """Highest threshold whose validation recall is still >= ``min_recall``.

    An image is called PNEUMONIA when probability >= threshold. With P positives,
    keeping recall >= r needs k = ceil(r * P) positives at or above the threshold, so
    the highest such threshold is the k-th largest positive probability.

    Low-level: it trusts its caller to pass validation arrays. Notebooks call
    :func:`choose_operating_point` with a validation :class:`ScoredSplit`, which
    refuses the test split.
    """
    if not 0.0 < min_recall <= 1.0:
        raise ValueError(f"min_recall must be in (0, 1], got {min_recall}.")
    labels = as_labels(validation_labels)
    probabilities = as_probabilities(validation_probabilities, len(labels))
    positive_scores = np.sort(probabilities[labels == 1])[::-1]  # (P,) descending
    if len(positive_scores) == 0:
        raise ValueError("The validation labels hold no PNEUMONIA case: recall is undefined, "
                         "so no threshold can be chosen. Use the full validation split.")
    needed = math.ceil(round(min_recall * len(positive_scores), 9))  # round: 0.98*50 = 49.000000001
    return float(positive_scores[needed - 1])


@dataclass(frozen=True)
class ThresholdChoice:
    """The decision threshold and how it was chosen (always on validation).

    What :func:`choose_operating_point` returns in notebook 04; the complete
    operating point that the other notebooks load from metrics.json (threshold,
    temperature, band) is :class:`OperatingPoint`.
    """

    threshold: float
    min_recall: float
    chosen_on: str
    validation_recall: float
    validation_specificity: float

    @property
    def rule(self) -> str:
        return (f"highest threshold with {self.chosen_on} recall >= {self.min_recall:g} "
                "(PNEUMONIA when probability >= threshold)")


def choose_operating_point(validation: ScoredSplit, min_recall: float = DEFAULT_MIN_RECALL) -> ThresholdChoice:
    """Choose the threshold on the validation split (refuses the test split)."""
    validation = decision_split(validation, "decision threshold")
    threshold = choose_threshold(validation.labels, validation.probabilities, min_recall)
    counts = metrics_from_counts(**confusion_counts(validation.labels, validation.probabilities, threshold))
    return ThresholdChoice(threshold, float(min_recall), validation.name,
                          counts["recall"], counts["specificity"])
