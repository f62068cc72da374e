"""Shortcut checks: does the classifier decide from the lungs, or from the film's edges,
markers and text?

A model trained on one hospital's films can learn cues that come with the hospital,
not with the disease: where the laterality marker sits, burnt-in text, the border and
collimation edge (Zech et al., PLOS Medicine 2018; DeGrave et al., Nature Machine
Intelligence 2021). Four checks, each a number:

1. **Border-only classifier** (:func:`border_only_auc`): blank the centre of every film
   (only the outer band is left) and train a linear classifier on ImageNet features of
   what remains. If the border alone predicts the label well, the border carries a
   shortcut a fine-tuned network can find.
2. **Border blanked** (:func:`decisions_changed`): fill the outer band with the film's
   median grey and count how many of the model's decisions change.
3. **Heat inside the thorax** (:func:`heat_inside_box`): the share of Grad-CAM heat
   inside a central thorax box, per outcome (TP / FP / FN / TN), against the share of
   the image the box covers. A map that reads the lungs puts more heat there than a
   uniform map would.
4. **Markers and text blanked**: the laterality letter ("R") of this dataset sits on
   the left edge, from the top corner to mid-height; text labels sit in the corners.
   :func:`blank_marker_regions` fills those places with median grey and
   :func:`decisions_changed` counts the changed decisions.

Every function takes raw 0-255 images (N, H, W, 3) and returns plain numbers, so a
notebook can tabulate them and a run can save them as JSON.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from helpers import config, evaluation, layers
from helpers.operating_point import called_pneumonia
from helpers.operating_point import outcomes as outcome_labels  # noqa: F401  ("TP"/"FP"/"FN"/"TN" per film)

DEFAULT_BORDER = 0.12  # the outer band, as a fraction of the side, on each side
# [top, left, bottom, right] of the thorax, as fractions of the height and width.
THORAX_BOX = (0.08, 0.12, 0.92, 0.88)
# Where markers and text sit in these films, [top, left, bottom, right] as fractions.
MARKER_REGIONS = (
    (0.0, 0.0, 0.6, 0.12),  # the left edge from the top corner to below mid-height ("R")
    (0.0, 0.82, 0.14, 1.0),  # the top-right corner
    (0.88, 0.0, 1.0, 0.18),  # the bottom-left corner
    (0.88, 0.78, 1.0, 1.0),  # the bottom-right corner (text such as exposure values)
)
OUTCOMES = ("TP", "FP", "FN", "TN")


def _check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected images of shape (N, H, W, 3), got {images.shape}.")
    return images


def border_mask(height: int, width: int, border: float = DEFAULT_BORDER) -> np.ndarray:
    """(H, W) bool, True in the outer band of ``border`` of the side on each side: the band the
    model's border mask (:func:`helpers.layers.inner_mask`) would hide."""
    return layers.inner_mask(height, width, border)[0, :, :, 0] == 0.0


def box_mask(height: int, width: int, box) -> np.ndarray:
    """(H, W) bool, True inside ``box`` = [top, left, bottom, right] (fractions of the side)."""
    top, left, bottom, right = (float(value) for value in box)
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
        raise ValueError(f"A box is [top, left, bottom, right] with 0 <= top < bottom <= 1 and "
                         f"0 <= left < right <= 1, got {box}.")
    mask = np.zeros((height, width), dtype=bool)
    rows = slice(int(round(top * height)), int(round(bottom * height)))
    columns = slice(int(round(left * width)), int(round(right * width)))
    mask[rows, columns] = True
    return mask


def fill_with_median(images, mask: np.ndarray) -> np.ndarray:
    """Copies of ``images`` with the pixels under ``mask`` (H, W) set to each film's median grey.

    Returns (N, H, W, 3): uint8 for uint8 films (the median rounded), float32 otherwise.
    """
    images = _check_images(images)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != images.shape[1:3]:
        raise ValueError(f"The mask is {mask.shape}, the images are {images.shape[1:3]}.")
    filled = images.copy() if images.dtype == np.uint8 else images.astype(np.float32)  # (N, H, W, 3)
    medians = np.median(filled.reshape(len(filled), -1), axis=1)  # (N,)
    if filled.dtype == np.uint8:
        medians = np.round(medians)
    filled[:, mask, :] = medians[:, None, None]
    return filled


def blank_border(images, border: float = DEFAULT_BORDER) -> np.ndarray:
    """The outer band filled with median grey (check 2)."""
    images = _check_images(images)
    return fill_with_median(images, border_mask(*images.shape[1:3], border))


def keep_border_only(images, border: float = DEFAULT_BORDER) -> np.ndarray:
    """Everything but the outer band filled with median grey: what the border-only classifier sees."""
    images = _check_images(images)
    return fill_with_median(images, ~border_mask(*images.shape[1:3], border))


def marker_mask(height: int, width: int, regions=MARKER_REGIONS) -> np.ndarray:
    """(H, W) bool, True where this dataset's markers and text sit (:data:`MARKER_REGIONS`)."""
    mask = np.zeros((height, width), dtype=bool)
    for region in regions:
        mask |= box_mask(height, width, region)
    return mask


def blank_marker_regions(images, regions=MARKER_REGIONS) -> np.ndarray:
    """The marker and text regions filled with median grey (check 4)."""
    images = _check_images(images)
    return fill_with_median(images, marker_mask(*images.shape[1:3], regions))


def decisions_changed(predict: Callable[[np.ndarray], np.ndarray], images, labels, threshold: float,
                      change: Callable[[np.ndarray], np.ndarray], batch_size: int = 256,
                      probabilities=None) -> dict:
    """How many decisions ``change`` flips at ``threshold``.

    Args:
        predict: images (B, H, W, 3) float 0-255 -> (B,) P(pneumonia).
        images: (N, H, W, 3) 0-255; labels: (N,) 0/1.
        change: images -> changed images, applied batch by batch.
        probabilities: (N,) P(pneumonia) of the unchanged images, when already known.

    Returns:
        ``changed`` (count), ``changed_share``, ``normal_to_pneumonia`` and
        ``pneumonia_to_normal`` (counts), and ``specificity``/``recall`` before and after.
    """
    images = _check_images(images)
    labels = np.asarray(labels).astype(int).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}.")
    before_chunks, after_chunks = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].astype(np.float32)
        if probabilities is None:
            before_chunks.append(np.asarray(predict(batch)).reshape(-1))
        after_chunks.append(np.asarray(predict(change(batch))).reshape(-1))
    before = (np.asarray(probabilities).reshape(-1) if probabilities is not None
              else np.concatenate(before_chunks))  # (N,)
    after = np.concatenate(after_chunks)  # (N,)
    decided_before, decided_after = called_pneumonia(before, threshold), called_pneumonia(after, threshold)
    flipped = decided_before != decided_after

    def rate(decisions, label, positive):
        rows = labels == label
        return float(np.mean(decisions[rows] == positive)) if rows.any() else float("nan")

    return {
        "films": int(len(images)),
        "changed": int(flipped.sum()),
        "changed_share": float(flipped.mean()) if len(flipped) else float("nan"),
        "normal_to_pneumonia": int(np.sum(flipped & decided_after)),
        "pneumonia_to_normal": int(np.sum(flipped & ~decided_after)),
        "specificity_before": rate(decided_before, 0, False),
        "specificity_after": rate(decided_after, 0, False),
        "recall_before": rate(decided_before, 1, True),
        "recall_after": rate(decided_after, 1, True),
    }


def heat_inside_box(heatmaps, outcomes, box=THORAX_BOX) -> dict:
    """Share of Grad-CAM heat inside ``box``, averaged per outcome, and the box's area share.

    Args:
        heatmaps: (N, H, W) non-negative maps.
        outcomes: (N,) strings "TP"/"FP"/"FN"/"TN".

    Returns:
        ``{"box_area": a, "TP": {"films": n, "heat_inside": s}, ...}``; an outcome with no
        film (or only all-zero maps) has ``heat_inside`` NaN.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    if heatmaps.ndim != 3:
        raise ValueError(f"Expected heatmaps of shape (N, H, W), got {heatmaps.shape}.")
    outcomes = np.asarray(outcomes).reshape(-1)
    if len(outcomes) != len(heatmaps):
        raise ValueError(f"heatmaps and outcomes differ in length: {len(heatmaps)} vs {len(outcomes)}.")
    inside = box_mask(*heatmaps.shape[1:], box)
    totals = heatmaps.sum(axis=(1, 2))  # (N,)
    shares = np.full(len(heatmaps), np.nan)
    nonzero = totals > 0
    shares[nonzero] = heatmaps[nonzero][:, inside].sum(axis=1) / totals[nonzero]
    result = {"box": [float(value) for value in box], "box_area": float(inside.mean())}
    for outcome in OUTCOMES:
        rows = (outcomes == outcome) & nonzero
        result[outcome] = {"films": int(np.sum(outcomes == outcome)),
                           "heat_inside": float(np.mean(shares[rows])) if rows.any() else float("nan")}
    return result


def border_only_auc(train_features, train_labels, evaluation_features, evaluation_labels,
                    regularization: float = 0.01, bootstrap: int = 1000, groups=None,
                    seed: int = config.DEFAULT_SEED) -> dict:
    """ROC-AUC of a linear classifier on border-only features (check 1), with a bootstrap interval.

    Args:
        train_features: (N, D) features of the border-only training films.
        evaluation_features: (M, D) the same for held-out films (other patients).
        groups: (M,) patient ids of the held-out films: the interval resamples patients.

    Returns:
        ``{"auc", "ci_low", "ci_high", "train_films", "evaluation_films"}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_labels = np.asarray(train_labels).astype(int)
    evaluation_labels = np.asarray(evaluation_labels).astype(int)
    for name, labels in (("training", train_labels), ("evaluation", evaluation_labels)):
        if len(np.unique(labels)) < 2:
            raise ValueError(f"The {name} films need both classes to measure a ROC-AUC.")
    classifier = make_pipeline(StandardScaler(),
                               LogisticRegression(C=regularization, class_weight="balanced", max_iter=5000))
    classifier.fit(np.asarray(train_features), train_labels)
    scores = classifier.predict_proba(np.asarray(evaluation_features))[:, 1]  # (M,)
    interval = evaluation.bootstrap_metrics(evaluation_labels, scores, threshold=0.5, n_resamples=bootstrap,
                                            seed=seed, groups=groups, metric_names=("roc_auc",))["roc_auc"]
    return {"auc": interval["value"], "ci_low": interval["ci_low"], "ci_high": interval["ci_high"],
            "train_films": int(len(train_labels)), "evaluation_films": int(len(evaluation_labels))}




def plot_regions(image, border: float = DEFAULT_BORDER, box=THORAX_BOX, regions=MARKER_REGIONS):
    """One film with the three regions the checks use: the border band (blanked in check 2,
    kept alone in check 1), the thorax box (check 3) and the marker regions (check 4)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image = np.asarray(image)
    height, width = image.shape[:2]
    figure, axis = plt.subplots(figsize=(4.2, 4.2))
    axis.imshow(image.astype(np.uint8))
    band = border * width
    axis.add_patch(Rectangle((band, band), width - 2 * band, height - 2 * band, fill=False, edgecolor="yellow",
                             linestyle="--", linewidth=1.5, label="inside the border band"))
    top, left, bottom, right = box
    axis.add_patch(Rectangle((left * width, top * height), (right - left) * width, (bottom - top) * height,
                             fill=False, edgecolor="lime", linewidth=1.5, label="thorax box"))
    for index, (top, left, bottom, right) in enumerate(regions):
        axis.add_patch(Rectangle((left * width, top * height), (right - left) * width, (bottom - top) * height,
                                 color="red", alpha=0.35, label="marker regions" if index == 0 else None))
    axis.legend(loc="lower center", fontsize=7, framealpha=0.8)
    axis.set_axis_off()
    figure.tight_layout()
    return figure
