"""Scored splits (labels and model scores, named) and the rule that decisions never look at test."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from helpers.operating_point import logit

METRIC_NAMES = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc")
COUNT_NAMES = ("tp", "fp", "tn", "fn")
SPLIT_NAMES = ("train", "validation", "test")
DECISION_SPLITS = ("validation",)  # the only split a decision may be fitted on
DEFAULT_MIN_RECALL = 0.98
DEFAULT_ECE_BINS = 15
METRICS_SCHEMA_VERSION = 1


# Published results this project is compared against (test set, threshold 0.5).
REFERENCE_RESULTS = (
    {"model": "Original notebook (reported)", "recall": 0.972, "precision": 0.773},
    {"model": "keras.io 'Pneumonia Classification on TPU' (reported)",
     "accuracy": (0.79, 0.81), "recall": (0.98, 0.99)},
)


class TestSplitError(ValueError):
    """A decision (threshold, temperature, band) was asked to look at the test split."""

    __test__ = False  # not a pytest test class


def as_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {labels.shape}.")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (NORMAL) or 1 (PNEUMONIA); got values "
                         f"{sorted(set(np.unique(labels).tolist()) - {0, 1})[:5]}.")
    return labels.astype(np.int64)


def as_probabilities(probabilities, expected_length: int | None = None) -> np.ndarray:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 2 and probabilities.shape[1] == 1:
        probabilities = probabilities[:, 0]  # the model's (N, 1) output
    if probabilities.ndim != 1:
        raise ValueError(f"probabilities must be (N,) or (N, 1), got shape {probabilities.shape}.")
    if expected_length is not None and len(probabilities) != expected_length:
        raise ValueError(f"{expected_length} labels but {len(probabilities)} probabilities: "
                         "pass one probability per image, in the same order.")
    if not np.isfinite(probabilities).all() or (probabilities < 0).any() or (probabilities > 1).any():
        raise ValueError("probabilities must be finite and in [0, 1]; pass the model's "
                         "sigmoid output (or apply_temperature(logits, T)), not logits.")
    return probabilities


@dataclass(frozen=True)
class ScoredSplit:
    """One split's labels and model scores, with the split's name.

    The name is what keeps test out of decisions: :func:`choose_operating_point`,
    :func:`fit_temperature` and :func:`choose_band` accept only a split named
    ``"validation"``. Arrays are copied and made read-only.

    Attributes:
        name: ``"train"``, ``"validation"`` or ``"test"``.
        labels: (N,) int64, 1 = PNEUMONIA.
        probabilities: (N,) float64, raw model output P(PNEUMONIA).
        logits: (N,) float64 pre-sigmoid scores; derived from the probabilities
            when not given (exact up to clipping at 1e-12).
    """

    name: str
    labels: np.ndarray
    probabilities: np.ndarray
    logits: np.ndarray | None = field(default=None)

    def __post_init__(self):
        if self.name not in SPLIT_NAMES:
            raise ValueError(f"ScoredSplit name must be one of {SPLIT_NAMES}, got {self.name!r}.")
        labels = as_labels(self.labels)
        if len(labels) == 0:
            raise ValueError(f"The {self.name} split holds no images.")
        probabilities = as_probabilities(self.probabilities, len(labels))
        if self.logits is None:
            logits = logit(probabilities)
        else:
            logits = np.asarray(self.logits, dtype=np.float64).reshape(-1)
            if len(logits) != len(labels) or not np.isfinite(logits).all():
                raise ValueError(f"logits must be (N,) = ({len(labels)},) finite numbers, "
                                 f"got shape {np.shape(self.logits)}.")
        for name, array in (("labels", labels), ("probabilities", probabilities), ("logits", logits)):
            array = array.copy()
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_frame(cls, name: str, frame) -> ScoredSplit:
        """From a predictions table with columns ``label``, ``probability``, ``logit``."""
        missing = {"label", "probability", "logit"} - set(frame.columns)
        if missing:
            raise ValueError(f"The {name} predictions lack column(s) {sorted(missing)}; "
                             "make them with helpers.predict.predict(model, examples).")
        return cls(name, frame["label"].to_numpy(), frame["probability"].to_numpy(),
                   frame["logit"].to_numpy())


def decision_split(split, purpose: str) -> ScoredSplit:
    """Return ``split`` if a decision may be fitted on it; refuse test (and raw arrays)."""
    if not isinstance(split, ScoredSplit):
        raise TypeError(
            f"{purpose} is chosen from a ScoredSplit named 'validation', got "
            f"{type(split).__name__}. Wrap the validation predictions: "
            "ScoredSplit('validation', labels, probabilities, logits)."
        )
    if split.name == "test":
        raise TestSplitError(
            f"Refusing to choose the {purpose} on the test split: decisions are made on "
            "validation and test is only reported. Pass the validation ScoredSplit."
        )
    if split.name not in DECISION_SPLITS:
        raise ValueError(f"The {purpose} is chosen on {DECISION_SPLITS}, got the {split.name!r} split.")
    return split
