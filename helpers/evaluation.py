"""Evaluation: metrics with bootstrap CIs, choosing the operating point, calibration, abstention.

The rule of this module: **decisions are made on validation, test is only reported.**
Every decision (threshold, temperature, abstention band) is taken by a function that
accepts one :class:`ScoredSplit` and refuses a split named ``"test"``, so test labels
cannot reach a decision through this API::

    validation = ScoredSplit("validation", labels, probabilities, logits)
    point = choose_operating_point(validation, min_recall=0.98)      # decision
    binary_metrics(test.labels, test.probabilities, point.threshold)  # report

Scales: every threshold (``threshold``, ``band.low``, ``band.high``) applies to the
model's **raw output probability** (``sigmoid(logit)``, what the Keras and TFLite
models return). Temperature scaling is monotonic, so it never changes a decision; it
only makes the displayed probability honest (``apply_temperature``).

The decisions travel to notebooks 05-07 through ``<artifacts>/metrics.json``:
:func:`write_metrics` saves them (full schema), and
:func:`helpers.operating_point.load_operating_point` reads the
:class:`~helpers.operating_point.OperatingPoint` back, which holds the one decision rule.

Label 1 is PNEUMONIA (positive), 0 is NORMAL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from helpers import config
from helpers.jsonio import read_json_object, write_json
from helpers.operating_point import (REFER, RERUN_NOTEBOOK_04, called_pneumonia, default_metrics_path,
                                     in_band, logit, outcomes, sigmoid)

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


# --------------------------------------------------------------------------- #
# Scored splits: labels + model scores, named
# --------------------------------------------------------------------------- #
def _as_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {labels.shape}.")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (NORMAL) or 1 (PNEUMONIA); got values "
                         f"{sorted(set(np.unique(labels).tolist()) - {0, 1})[:5]}.")
    return labels.astype(np.int64)


def _as_probabilities(probabilities, expected_length: int | None = None) -> np.ndarray:
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
        labels = _as_labels(self.labels)
        if len(labels) == 0:
            raise ValueError(f"The {self.name} split holds no images.")
        probabilities = _as_probabilities(self.probabilities, len(labels))
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
    def from_frame(cls, name: str, frame) -> "ScoredSplit":
        """From a predictions table with columns ``label``, ``probability``, ``logit``."""
        missing = {"label", "probability", "logit"} - set(frame.columns)
        if missing:
            raise ValueError(f"The {name} predictions lack column(s) {sorted(missing)}; "
                             "make them with helpers.predict.predict(model, examples).")
        return cls(name, frame["label"].to_numpy(), frame["probability"].to_numpy(),
                   frame["logit"].to_numpy())


def _decision_split(split, purpose: str) -> ScoredSplit:
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


# --------------------------------------------------------------------------- #
# Metrics at a threshold
# --------------------------------------------------------------------------- #
def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when undefined (e.g. precision with no positive call)."""
    return float(numerator) / float(denominator) if denominator else float("nan")


def confusion_counts(labels, probabilities, threshold: float) -> dict[str, int]:
    """{tp, fp, tn, fn}: an image is called PNEUMONIA when probability >= threshold."""
    labels = _as_labels(labels)
    predicted = called_pneumonia(_as_probabilities(probabilities, len(labels)), threshold)  # (N,) bool
    positive = labels == 1
    return {
        "tp": int(np.sum(predicted & positive)),
        "fp": int(np.sum(predicted & ~positive)),
        "tn": int(np.sum(~predicted & ~positive)),
        "fn": int(np.sum(~predicted & positive)),
    }


def metrics_from_counts(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    """accuracy, precision, recall (sensitivity), specificity, f1 from a confusion matrix.

    A ratio whose denominator is 0 is NaN (undefined), never a silent 0.
    """
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def ranking_metrics(labels, probabilities) -> dict[str, float]:
    """Threshold-free ROC-AUC and PR-AUC (average precision); NaN with one class only."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = _as_labels(labels)
    probabilities = _as_probabilities(probabilities, len(labels))
    if len(np.unique(labels)) < 2:
        return {"roc_auc": float("nan"), "pr_auc": float("nan")}
    return {
        "roc_auc": float(roc_auc_score(labels, probabilities)),
        "pr_auc": float(average_precision_score(labels, probabilities)),
    }


def binary_metrics(labels, probabilities, threshold: float) -> dict:
    """All metrics at ``threshold`` (PNEUMONIA when probability >= threshold).

    Returns:
        accuracy, precision, recall, specificity, f1, roc_auc, pr_auc (floats,
        NaN where undefined) and tp, fp, tn, fn (ints).
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}.")
    counts = confusion_counts(labels, probabilities, threshold)
    return {**metrics_from_counts(**counts), **ranking_metrics(labels, probabilities), **counts}


def confusion_table(labels, probabilities, threshold: float, normalize: bool = False):
    """2x2 DataFrame, rows = true class, columns = predicted class.

    ``normalize=True`` gives rates per true class (each row sums to 1): the diagonal
    is specificity (NORMAL) and recall (PNEUMONIA).
    """
    import pandas as pd

    from helpers.data import CLASS_NAMES

    c = confusion_counts(labels, probabilities, threshold)
    table = pd.DataFrame(
        [[c["tn"], c["fp"]], [c["fn"], c["tp"]]],
        index=pd.Index([f"true {n}" for n in CLASS_NAMES]),
        columns=pd.Index([f"predicted {n}" for n in CLASS_NAMES]),
    )
    if normalize:
        table = table.div(table.sum(axis=1).replace(0, np.nan), axis=0)
    return table


# --------------------------------------------------------------------------- #
# Bootstrap confidence intervals
# --------------------------------------------------------------------------- #
def bootstrap_indices(n_items: int, n_resamples: int, seed: int, groups=None) -> list[np.ndarray]:
    """Index arrays of ``n_resamples`` bootstrap resamples (with replacement).

    Args:
        groups: optional (N,) group ids (e.g. patient ids): whole groups are resampled,
            so correlated images of one patient move together (cluster bootstrap).
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}.")
    rng = np.random.default_rng(seed)
    if groups is None:
        return [rng.integers(0, n_items, size=n_items) for _ in range(n_resamples)]
    groups = np.asarray(groups)
    if len(groups) != n_items:
        raise ValueError(f"groups has {len(groups)} entries for {n_items} items.")
    _, group_of_item = np.unique(groups, return_inverse=True)
    members = np.split(np.argsort(group_of_item, kind="stable"),
                       np.cumsum(np.bincount(group_of_item))[:-1])  # list of (n_g,) arrays
    n_groups = len(members)
    return [np.concatenate([members[g] for g in rng.integers(0, n_groups, size=n_groups)])
            for _ in range(n_resamples)]


class _WeightedScores:
    """Scores sorted once, so each bootstrap resample is a weight vector: O(N), no sort.

    A resample that draws image i k times gives it weight k. All metrics are then
    weighted sums over the presorted scores (ties grouped like scikit-learn does).
    """

    def __init__(self, labels: np.ndarray, probabilities: np.ndarray, threshold: float):
        order = np.argsort(-probabilities, kind="stable")  # (N,) highest score first
        scores = probabilities[order]
        self.order = order
        self.positive = labels[order].astype(np.float64)  # (N,) 1.0 for PNEUMONIA
        self.called_positive = called_pneumonia(scores, threshold)  # (N,) bool
        # last index of each run of equal scores (distinct thresholds, descending)
        self.group_last = np.append(np.flatnonzero(np.diff(scores) != 0), len(scores) - 1)

    def metrics(self, weights: np.ndarray) -> dict[str, float]:
        weights = weights[self.order].astype(np.float64)  # (N,) multiplicity per image
        positive_weight = weights * self.positive
        negative_weight = weights - positive_weight
        tp = positive_weight[self.called_positive].sum()
        fp = negative_weight[self.called_positive].sum()
        fn, tn = positive_weight.sum() - tp, negative_weight.sum() - fp
        result = metrics_from_counts(tp, fp, tn, fn)
        cumulative_tp = np.cumsum(positive_weight)[self.group_last]  # (G,) at each distinct threshold
        cumulative_fp = np.cumsum(negative_weight)[self.group_last]
        n_positive, n_negative = cumulative_tp[-1], cumulative_fp[-1]
        if n_positive == 0 or n_negative == 0:
            return {**result, "roc_auc": float("nan"), "pr_auc": float("nan")}
        tp_in_group = np.diff(cumulative_tp, prepend=0.0)
        fp_in_group = np.diff(cumulative_fp, prepend=0.0)
        # ROC-AUC: P(positive scores above negative), ties count one half
        negatives_below = n_negative - cumulative_fp
        result["roc_auc"] = float(np.sum(tp_in_group * (negatives_below + 0.5 * fp_in_group))
                                  / (n_positive * n_negative))
        # PR-AUC as average precision: sum of (recall step) x (precision at that threshold)
        called = cumulative_tp + cumulative_fp
        precision = np.divide(cumulative_tp, called, out=np.zeros_like(called), where=called > 0)
        result["pr_auc"] = float(np.sum(tp_in_group * precision) / n_positive)
        return result


def bootstrap_metrics(
    labels,
    probabilities,
    threshold: float,
    n_resamples: int = 2000,
    seed: int = config.DEFAULT_SEED,
    confidence: float = 0.95,
    groups=None,
    metric_names: Sequence[str] = METRIC_NAMES,
) -> dict[str, dict[str, float]]:
    """Point estimate and percentile bootstrap CI of each metric at a fixed threshold.

    The threshold is held fixed (it was chosen on validation before); only the images
    (or, with ``groups``, the patients) are resampled. Resamples where a metric is
    undefined (e.g. one class only) are skipped for that metric.

    Returns:
        {metric: {"value", "ci_low", "ci_high"}} for ``metric_names``.
    """
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), e.g. 0.95; got {confidence}.")
    unknown = set(metric_names) - set(METRIC_NAMES)
    if unknown:
        raise ValueError(f"Unknown metric(s) {sorted(unknown)}; choose from {METRIC_NAMES}.")
    labels = _as_labels(labels)
    probabilities = _as_probabilities(probabilities, len(labels))
    point = binary_metrics(labels, probabilities, threshold)
    scorer = _WeightedScores(labels, probabilities, threshold)
    samples = {name: [] for name in metric_names}
    for indices in bootstrap_indices(len(labels), n_resamples, seed, groups):
        resampled = scorer.metrics(np.bincount(indices, minlength=len(labels)))
        for name in metric_names:
            samples[name].append(resampled[name])
    tail = 100.0 * (1.0 - confidence) / 2.0
    result = {}
    for name in metric_names:
        values = np.asarray(samples[name], dtype=np.float64)
        values = values[np.isfinite(values)]
        low, high = (np.percentile(values, [tail, 100.0 - tail]) if len(values)
                     else (float("nan"), float("nan")))
        result[name] = {"value": float(point[name]), "ci_low": float(low), "ci_high": float(high)}
    return result


def metrics_table(results: dict[str, dict[str, dict[str, float]]], digits: int = 3):
    """DataFrame (metric x column) of "value [ci_low, ci_high]" strings.

    ``results`` maps a column name (e.g. "test, validation threshold") to the output
    of :func:`bootstrap_metrics`.
    """
    import pandas as pd

    def cell(entry):
        return f"{entry['value']:.{digits}f} [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"

    return pd.DataFrame({column: {name: cell(entry) for name, entry in metrics.items()}
                         for column, metrics in results.items()})


def comparison_table(rows: dict[str, dict[str, float]]):
    """This project's rows next to :data:`REFERENCE_RESULTS` (accuracy, precision, recall).

    Args:
        rows: {row name: binary_metrics(...)-like dict} for this project's models.
    """
    import pandas as pd

    def show(value):
        if value is None:
            return "—"
        if isinstance(value, tuple):
            return f"{value[0]:.2f}–{value[1]:.2f}"
        return f"{value:.3f}"

    records = []
    for name, metrics in rows.items():
        records.append({"model": name, **{k: show(metrics.get(k)) for k in ("accuracy", "precision", "recall")}})
    for reference in REFERENCE_RESULTS:
        records.append({"model": reference["model"],
                        **{k: show(reference.get(k)) for k in ("accuracy", "precision", "recall")}})
    return pd.DataFrame(records).set_index("model")


# --------------------------------------------------------------------------- #
# The operating point (decision threshold), from validation only
# --------------------------------------------------------------------------- #
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
    labels = _as_labels(validation_labels)
    probabilities = _as_probabilities(validation_probabilities, len(labels))
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
    validation = _decision_split(validation, "decision threshold")
    threshold = choose_threshold(validation.labels, validation.probabilities, min_recall)
    counts = metrics_from_counts(**confusion_counts(validation.labels, validation.probabilities, threshold))
    return ThresholdChoice(threshold, float(min_recall), validation.name,
                          counts["recall"], counts["specificity"])


# --------------------------------------------------------------------------- #
# Calibration: temperature scaling, ECE, Brier, NLL
# --------------------------------------------------------------------------- #
def apply_temperature(logits, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / temperature)``, float64, same shape."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}.")
    return sigmoid(np.asarray(logits, dtype=np.float64) / temperature)


def negative_log_likelihood(labels, logits, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / temperature)`` (nats)."""
    labels = _as_labels(labels)
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    # -log sigmoid(z) = logaddexp(0, -z); -log(1 - sigmoid(z)) = logaddexp(0, z)
    return float(np.mean(np.where(labels == 1, np.logaddexp(0.0, -scaled), np.logaddexp(0.0, scaled))))


def fit_temperature_to_arrays(labels, logits, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T > 0 minimizing the NLL of ``sigmoid(logits / T)``.

    Low-level; notebooks use :func:`fit_temperature` with the validation split.
    """
    from scipy.optimize import minimize_scalar

    labels = _as_labels(labels)
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
    validation = _decision_split(validation, "temperature")
    return fit_temperature_to_arrays(validation.labels, validation.logits)


def calibration_bins(labels, probabilities, n_bins: int = DEFAULT_ECE_BINS):
    """Equal-width bins of P(PNEUMONIA) on [0, 1]: the data of a reliability diagram.

    Returns a DataFrame with one row per bin: ``low``, ``high``, ``count``,
    ``mean_probability`` (confidence) and ``positive_rate`` (observed frequency);
    empty bins have NaN means and count 0.
    """
    import pandas as pd

    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    labels = _as_labels(labels)
    probabilities = _as_probabilities(probabilities, len(labels))
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

    labels = _as_labels(labels)
    probabilities = _as_probabilities(probabilities, len(labels))
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


# --------------------------------------------------------------------------- #
# Abstention band: "refer to a radiologist"
# --------------------------------------------------------------------------- #
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
        probabilities = _as_probabilities(probabilities)
        return np.where(in_band(probabilities, self.low, self.high), REFER,
                        called_pneumonia(probabilities, self.high).astype(np.int64))


def band_outcome(labels, probabilities, band: Band) -> dict[str, float]:
    """Coverage (share decided by the model) and the quality of those decisions.

    Returns coverage, accuracy_outside, recall_outside, specificity_outside,
    n_decided, n_referred (ratios NaN when undefined).
    """
    labels = _as_labels(labels)
    decisions = band.decide(_as_probabilities(probabilities, len(labels)))  # (N,) in {-1, 0, 1}
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
    validation = _decision_split(validation, "abstention band")
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


# --------------------------------------------------------------------------- #
# Error analysis
# --------------------------------------------------------------------------- #
def most_confident_errors(predictions, threshold: float, kind: str, count: int = 6):
    """The ``count`` most confident mistakes of one kind, most confident first.

    Args:
        predictions: DataFrame with ``path``, ``label``, ``probability``.
        kind: ``"false_negative"`` (PNEUMONIA called NORMAL, lowest probability first)
            or ``"false_positive"`` (NORMAL called PNEUMONIA, highest first).
    """
    outcome = outcomes(predictions["label"].to_numpy(), predictions["probability"].to_numpy(), threshold)
    if kind == "false_negative":
        mistakes = predictions[outcome == "FN"]
        return mistakes.sort_values("probability", ascending=True, kind="stable").head(count)
    if kind == "false_positive":
        mistakes = predictions[outcome == "FP"]
        return mistakes.sort_values("probability", ascending=False, kind="stable").head(count)
    raise ValueError(f"kind must be 'false_negative' or 'false_positive', got {kind!r}.")


# --------------------------------------------------------------------------- #
# metrics.json: the one source of truth for the operating point
# --------------------------------------------------------------------------- #
REQUIRED_KEYS = ("threshold", "temperature", "band", "ece_before", "ece_after", "test", "validation")
BAND_KEYS = ("low", "high", "coverage", "accuracy_outside", "recall_outside")


def validate_metrics(report: dict) -> dict:
    """Check the metrics.json schema; returns ``report`` or raises ValueError saying what is missing."""
    problems = [f"missing key {key!r}" for key in REQUIRED_KEYS if key not in report]
    band = report.get("band", {})
    problems += [f"band lacks {key!r}" for key in BAND_KEYS if key not in band]
    for split in ("test", "validation"):
        for name in METRIC_NAMES:
            entry = report.get(split, {}).get(name)
            if not isinstance(entry, dict) or not {"value", "ci_low", "ci_high"} <= set(entry):
                problems.append(f"{split}.{name} needs value, ci_low, ci_high")
    if problems:
        raise ValueError("metrics.json does not follow the schema: " + "; ".join(problems[:8])
                         + ". Re-run notebooks/04_evaluation.ipynb to rewrite it.")
    return report


def write_metrics(report: dict, path: str | Path | None = None) -> Path:
    """Validate and write ``report`` as strict JSON (NaN -> null), atomically."""
    validate_metrics(report)
    return write_json(report, Path(path) if path else default_metrics_path())


def load_metrics(path: str | Path | None = None) -> dict:
    """Read ``<artifacts>/metrics.json`` (threshold, temperature, band, metrics with CIs).

    Raises:
        FileNotFoundError: with the notebook that writes it.
    """
    path = Path(path) if path else default_metrics_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"No metrics at {path}. Run notebooks/04_evaluation.ipynb first (it chooses the "
            "threshold, temperature and referral band on validation and writes this file), "
            "e.g. `python -m helpers.notebooks --only 04`, or set CXR_ARTIFACTS_DIR to the "
            "artifacts folder that holds metrics.json."
        )
    return validate_metrics(read_json_object(path, RERUN_NOTEBOOK_04))
