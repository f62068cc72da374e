"""Class imbalance: the four corrections notebook 02 compares, and the one 03 uses.

The train split holds about three PNEUMONIA films for each NORMAL one (notebook 01
counts them). Four ways to handle it:

* ``none``           -- plain binary cross-entropy;
* ``class_weights``  -- weight class c by ``total / (2 * n_c)`` (both classes then
                        contribute the same total weight, and the mean weight is 1);
* ``output_bias``    -- start the logit bias at ``log(pos / neg)`` so the untrained
                        model already predicts the prior (faster, calmer start);
* ``oversampling``   -- repeat NORMAL images (seeded, with replacement) until both
                        classes are equally frequent.

:func:`strategy_inputs` turns a strategy name into what training needs: the sample
indices, a ``class_weight`` dict and an initial output bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from helpers import config
from helpers.model import initial_output_bias

STRATEGIES = ("none", "class_weights", "output_bias", "oversampling")


def _class_counts(labels) -> tuple[int, int]:
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        raise ValueError("labels is empty: pass the training labels (0 = NORMAL, 1 = PNEUMONIA).")
    unexpected = set(np.unique(labels).tolist()) - {0, 1}
    if unexpected:
        raise ValueError(f"labels must be 0 (NORMAL) or 1 (PNEUMONIA), found {sorted(unexpected)}.")
    positive = int(np.sum(labels == 1))
    negative = int(labels.size - positive)
    if positive == 0 or negative == 0:
        raise ValueError(
            f"Need both classes to correct the imbalance, got {negative} NORMAL and "
            f"{positive} PNEUMONIA labels. Use a larger (stratified) subset."
        )
    return negative, positive


def class_weights(labels) -> dict[int, float]:
    """``{0: total / (2 * n_normal), 1: total / (2 * n_pneumonia)}``.

    >>> class_weights([0, 1, 1, 1])
    {0: 2.0, 1: 0.6666666666666666}
    """
    negative, positive = _class_counts(labels)
    total = negative + positive
    return {0: total / (2.0 * negative), 1: total / (2.0 * positive)}


def output_bias(labels) -> float:
    """``log(n_pneumonia / n_normal)``, the logit that predicts the class prior."""
    negative, positive = _class_counts(labels)
    return initial_output_bias(positive, negative)


def oversample_indices(labels, seed: int = config.DEFAULT_SEED) -> np.ndarray:
    """Indices that keep every example and add minority-class repeats until balanced.

    The extra minority indices are drawn with replacement (seeded); the result is
    shuffled. Shape (2 * n_majority,).
    """
    labels = np.asarray(labels).reshape(-1)
    negative, positive = _class_counts(labels)
    minority = 0 if negative < positive else 1
    missing = abs(positive - negative)
    rng = np.random.default_rng(seed)
    extra = rng.choice(np.flatnonzero(labels == minority), size=missing, replace=True)
    indices = np.concatenate([np.arange(labels.size), extra])
    return rng.permutation(indices)


@dataclass(frozen=True)
class StrategyInputs:
    """What a training run needs for one imbalance strategy.

    Attributes:
        indices: (M,) int, training examples to use (repeats for oversampling).
        class_weight: Keras ``class_weight`` dict or ``None``.
        output_bias: initial logit bias or ``None`` (zero).
    """

    indices: np.ndarray
    class_weight: dict[int, float] | None
    output_bias: float | None


def strategy_inputs(strategy: str, labels, seed: int = config.DEFAULT_SEED) -> StrategyInputs:
    """Translate a strategy name (one of :data:`STRATEGIES`) for the training labels."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown imbalance strategy {strategy!r}: use one of {STRATEGIES}.")
    labels = np.asarray(labels).reshape(-1)
    _class_counts(labels)  # validates both classes are present
    everything = np.arange(labels.size)
    if strategy == "class_weights":
        return StrategyInputs(everything, class_weights(labels), None)
    if strategy == "output_bias":
        return StrategyInputs(everything, None, output_bias(labels))
    if strategy == "oversampling":
        return StrategyInputs(oversample_indices(labels, seed), None, None)
    return StrategyInputs(everything, None, None)


def comparison_table(rows: list[dict]):
    """A pandas DataFrame of the comparison (one row per strategy)."""
    import pandas as pd

    columns = ["strategy", "recall", "specificity", "balanced_accuracy", "precision", "accuracy",
               "roc_auc", "pr_auc"]
    return pd.DataFrame([{key: row[key] for key in columns} for row in rows]).set_index("strategy")


def plot_comparison(rows: list[dict], validation_labels):
    """Left: the four metrics per strategy (bars). Right: validation PR curves."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    metrics = ["recall", "specificity", "pr_auc", "roc_auc"]
    figure, (bars, curves) = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(rows)
    positions = np.arange(len(metrics))
    for index, row in enumerate(rows):
        bars.bar(positions + index * width, [row[m] for m in metrics], width, label=row["strategy"])
        precision, recall, _ = precision_recall_curve(validation_labels, row["probabilities"])
        curves.plot(recall, precision, label=f"{row['strategy']} (PR-AUC {row['pr_auc']:.3f})")
    bars.set_xticks(positions + width * (len(rows) - 1) / 2, ["recall @0.5", "specificity @0.5", "PR-AUC", "ROC-AUC"])
    bars.set_ylim(0.0, 1.05)
    bars.set_title("Validation metrics per strategy")
    bars.legend(loc="lower left", fontsize=8)
    curves.set_xlabel("recall (PNEUMONIA)")
    curves.set_ylabel("precision")
    curves.set_title("Validation precision-recall curves")
    curves.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    return figure


# Tie-break order: simplest to carry into fine-tuning first (no duplicated images,
# same epoch length, applies unchanged to phase 2).
PREFERENCE = ("class_weights", "oversampling", "output_bias", "none")


def choose_strategy(rows: list[dict], tolerance: float = 0.01) -> str:
    """The documented rule: the highest validation balanced accuracy at threshold 0.5,
    ``(recall + specificity) / 2``; strategies within ``tolerance`` of the best are
    tied, and ties go to the first in :data:`PREFERENCE`.

    ROC-AUC barely moves between strategies (they rank images alike) and the
    decision threshold is tuned on validation later (04). What differs is how the
    loss balances the two classes, visible as recall vs specificity at 0.5; the
    fine-tuning phase then learns features under that balance.
    """
    if not rows:
        raise ValueError("No comparison rows: run helpers.training.compare_strategies first.")
    best = max(row["balanced_accuracy"] for row in rows)
    tied = [row["strategy"] for row in rows if row["balanced_accuracy"] >= best - tolerance]
    return min(tied, key=lambda name: PREFERENCE.index(name) if name in PREFERENCE else len(PREFERENCE))


def comparison_record(rows: list[dict], chosen: str, settings: dict | None = None) -> dict:
    """The JSON-able ``imbalance/comparison.json``: settings, one entry per strategy, the choice."""
    keep = ("recall", "specificity", "balanced_accuracy", "precision", "accuracy", "roc_auc", "pr_auc",
            "threshold", "tp", "fp", "tn", "fn", "class_weight", "output_bias", "train_examples")
    return {
        "settings": settings or {},
        "split": "validation",
        "strategies": {row["strategy"]: {key: row[key] for key in keep} for row in rows},
        "chosen": chosen,
        "rule": "highest validation balanced accuracy at threshold 0.5; within 0.01 of the best "
                f"counts as a tie, broken by the order {list(PREFERENCE)}",
    }


def plot_class_counts(counts: dict[str, dict[str, int]]):
    """Bars of NORMAL / PNEUMONIA images per split, labelled with the PNEUMONIA share."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    splits = list(counts)
    positions = np.arange(len(splits))
    for offset, class_name in zip((-0.2, 0.2), ("NORMAL", "PNEUMONIA")):
        values = [counts[split][class_name] for split in splits]
        axis.bar(positions + offset, values, 0.4, label=class_name)
    for position, split in zip(positions, splits):
        total = sum(counts[split].values())
        share = counts[split]["PNEUMONIA"] / total if total else 0.0
        axis.text(position, max(counts[split].values()) * 1.02, f"{share:.0%} PNEUMONIA", ha="center", fontsize=8)
    axis.set_xticks(positions, splits)
    axis.set_ylabel("images")
    axis.set_title("Images per class and split")
    axis.legend()
    figure.tight_layout()
    return figure
