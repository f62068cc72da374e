"""Figures of notebook 04: curves, confusion matrices, reliability, coverage, errors.

Each function takes plain arrays or the tables of :mod:`helpers.evaluation` and
returns a matplotlib ``Figure`` (save it with :func:`helpers.plots.save_figure`).
The numbers they draw are computed by tested functions in ``helpers.evaluation``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from helpers import evaluation
from helpers.data import CLASS_NAMES, load_image


def plot_roc_and_pr(labels, probabilities, thresholds: dict[str, float], title: str = "test"):
    """ROC and precision-recall curves with operating points marked.

    Args:
        thresholds: {legend label: threshold}, e.g. {"chosen on validation": 0.71, "0.5": 0.5}.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    ranking = evaluation.ranking_metrics(labels, probabilities)
    figure, (roc_axis, pr_axis) = plt.subplots(1, 2, figsize=(11, 4.6))
    false_positive_rate, true_positive_rate, _ = roc_curve(labels, probabilities)
    roc_axis.plot(false_positive_rate, true_positive_rate, color="tab:blue",
                  label=f"ROC (AUC {ranking['roc_auc']:.3f})")
    roc_axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", label="chance")
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    pr_axis.plot(recall, precision, color="tab:blue", label=f"PR (AP {ranking['pr_auc']:.3f})")
    pr_axis.axhline(labels.mean(), color="0.7", linestyle="--", label=f"prevalence {labels.mean():.2f}")
    markers = (("o", 11), ("s", 7), ("^", 7), ("D", 7))  # later markers smaller: overlaps stay visible
    for (name, threshold), (marker, size) in zip(thresholds.items(), markers):
        m = evaluation.binary_metrics(labels, probabilities, threshold)
        label = f"{name} (t={threshold:.3f})"
        roc_axis.plot(1 - m["specificity"], m["recall"], marker, markersize=size, label=label)
        pr_axis.plot(m["recall"], m["precision"], marker, markersize=size, label=label)
    roc_axis.set(xlabel="false positive rate (1 - specificity)", ylabel="recall (sensitivity)",
                 title=f"ROC curve, {title}", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    pr_axis.set(xlabel="recall (sensitivity)", ylabel="precision",
                title=f"Precision-recall curve, {title}", xlim=(-0.01, 1.01), ylim=(0, 1.01))
    for axis in (roc_axis, pr_axis):
        axis.legend(loc="lower right" if axis is roc_axis else "lower left", fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_confusion_matrices(labels, probabilities, threshold: float, title: str = "test"):
    """Counts and per-true-class rates side by side."""
    counts = evaluation.confusion_table(labels, probabilities, threshold)
    rates = evaluation.confusion_table(labels, probabilities, threshold, normalize=True)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, table, kind in ((axes[0], counts, "counts"), (axes[1], rates, "rates per true class")):
        values = table.to_numpy(dtype=np.float64)  # (2, 2) rows true, columns predicted
        shown = values / values.max() if kind == "counts" and values.max() > 0 else values
        axis.imshow(shown, cmap="Blues", vmin=0, vmax=1)
        for row in range(2):
            for column in range(2):
                text = f"{int(values[row, column])}" if kind == "counts" else f"{values[row, column]:.1%}"
                axis.text(column, row, text, ha="center", va="center", fontsize=13,
                          color="white" if shown[row, column] > 0.5 else "black")
        axis.set_xticks([0, 1], [f"pred. {n}" for n in CLASS_NAMES])
        axis.set_yticks([0, 1], [f"true {n}" for n in CLASS_NAMES])
        axis.set_title(f"{title}, threshold {threshold:.3f}: {kind}")
    figure.tight_layout()
    return figure


def plot_reliability(labels, probability_sets: dict[str, np.ndarray], n_bins: int = evaluation.DEFAULT_ECE_BINS,
                     title: str = "test"):
    """Reliability diagrams (observed PNEUMONIA rate vs mean predicted probability).

    Args:
        probability_sets: {panel name: (N,) probabilities}, e.g. before / after scaling.
    """
    figure, axes = plt.subplots(1, len(probability_sets), figsize=(5.2 * len(probability_sets), 4.8),
                                squeeze=False)
    for axis, (name, probabilities) in zip(axes[0], probability_sets.items()):
        bins = evaluation.calibration_bins(labels, probabilities, n_bins)
        ece = evaluation.expected_calibration_error(labels, probabilities, n_bins)
        filled = bins[bins["count"] > 0]
        centers = (bins["low"] + bins["high"]) / 2
        axis.bar(centers, bins["positive_rate"].fillna(0), width=1 / n_bins, edgecolor="black",
                 alpha=0.6, label="observed PNEUMONIA rate")
        axis.plot([0, 1], [0, 1], color="0.4", linestyle="--", label="perfect calibration")
        axis.plot(filled["mean_probability"], filled["positive_rate"], "o-", color="tab:red",
                  markersize=4, label="bin mean")
        share_axis = axis.twinx()  # grey bars: share of images in each bin
        shares = bins["count"] / bins["count"].sum()
        share_axis.bar(centers, shares, width=1 / n_bins, color="0.2", alpha=0.15)
        share_axis.set_ylim(0, 4 * shares.max())  # the tallest share bar fills the lower quarter
        share_axis.set_yticks([])
        axis.set(xlabel="predicted P(PNEUMONIA)", ylabel="observed PNEUMONIA rate",
                 xlim=(0, 1), ylim=(0, 1), title=f"{name}, {title}: ECE {ece:.3f}")
        axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure


def plot_coverage_curve(curve, chosen_target: float | None = None, reported: str = "test",
                        accuracy_target: float | None = None):
    """Accuracy and recall of the decided cases vs coverage (from :func:`evaluation.coverage_curve`)."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for split, style in (("validation", "--"), (reported, "-")):
        axis.plot(curve[f"{split}_coverage"], curve[f"{split}_accuracy_outside"], style, marker="o",
                  markersize=3, color="tab:blue", label=f"accuracy outside band ({split})")
        axis.plot(curve[f"{split}_coverage"], curve[f"{split}_recall_outside"], style, marker="o",
                  markersize=3, color="tab:green", label=f"recall outside band ({split})")
    if chosen_target is not None:
        axis.axvline(chosen_target, color="tab:red", alpha=0.6, label=f"target coverage {chosen_target:.0%}")
    if accuracy_target is not None:
        axis.axhline(accuracy_target, color="0.5", linestyle=":", label=f"accuracy target {accuracy_target:.2f}")
    axis.set(xlabel="coverage (share of images the model decides)", ylabel="score on decided images",
             title="Refer the uncertain cases: coverage vs accuracy")
    axis.invert_xaxis()
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return figure


def plot_error_gallery(examples, errors, title: str, columns: int = 6):
    """Show the images of ``errors`` (rows of a predictions table) with probability and file name.

    Args:
        examples: :class:`helpers.data.Examples` holding the images (looked up by path).
        errors: DataFrame with ``path``, ``label``, ``probability``
            (e.g. :func:`evaluation.most_confident_errors`).
    """
    index_of_path = {path: index for index, path in enumerate(examples.paths)}
    count = len(errors)
    if count == 0:
        figure, axis = plt.subplots(figsize=(6, 1.2))
        axis.axis("off")
        axis.text(0.5, 0.5, f"{title}: none", ha="center", va="center", fontsize=12)
        return figure
    columns = min(columns, count)
    rows = int(np.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (_, row) in zip(axes.ravel(), errors.iterrows()):
        if row["path"] not in index_of_path:
            raise ValueError(f"{row['path']} is not among the examples given; pass the split it came from.")
        image = load_image(bytes(examples.image_bytes[index_of_path[row["path"]]]))  # (224, 224, 3) 0-255
        axis.imshow(image.astype(np.uint8))
        name = row["path"].rsplit("/", 1)[-1]
        axis.set_title(f"{CLASS_NAMES[int(row['label'])]}, p={row['probability']:.3f}\n{name}", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure
