"""Metrics at a threshold, threshold-free ranking metrics, bootstrap confidence intervals, tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from helpers import config
from helpers.data import CLASS_NAMES
from helpers.evaluation.splits import METRIC_NAMES, REFERENCE_RESULTS, as_labels, as_probabilities
from helpers.operating_point import called_pneumonia, outcomes


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when undefined (e.g. precision with no positive call)."""
    return float(numerator) / float(denominator) if denominator else float("nan")


def confusion_counts(labels, probabilities, threshold: float) -> dict[str, int]:
    """{tp, fp, tn, fn}: an image is called PNEUMONIA when probability >= threshold."""
    labels = as_labels(labels)
    predicted = called_pneumonia(as_probabilities(probabilities, len(labels)), threshold)  # (N,) bool
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

    labels = as_labels(labels)
    probabilities = as_probabilities(probabilities, len(labels))
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

    c = confusion_counts(labels, probabilities, threshold)
    table = pd.DataFrame(
        [[c["tn"], c["fp"]], [c["fn"], c["tp"]]],
        index=pd.Index([f"true {n}" for n in CLASS_NAMES]),
        columns=pd.Index([f"predicted {n}" for n in CLASS_NAMES]),
    )
    if normalize:
        table = table.div(table.sum(axis=1).replace(0, np.nan), axis=0)
    return table


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
    labels = as_labels(labels)
    probabilities = as_probabilities(probabilities, len(labels))
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
