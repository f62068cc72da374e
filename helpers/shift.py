"""Dataset shift: do the test images come from the same population as the training images?

A validation split carved from train can only predict test performance if test looks
like train. The check here is a **classifier two-sample test** (Lopez-Paz & Oquab,
ICLR 2017; on Kaggle "adversarial validation"): label the images of one set 0 and of
the other 1, train a simple classifier to tell them apart, and measure its
cross-validated ROC-AUC.

* AUC near 0.5: the classifier cannot tell the sets apart; they look alike.
* AUC near 1: the sets are different populations, and numbers measured on one
  (validation) need not carry over to the other (test).

The comparison is made **within each class** (train NORMAL against test NORMAL, ...),
so a different class mix between the sets cannot explain the result, with the
validation split as the control (same population as train, so AUC ~0.5).

The features are MobileNetV2's **ImageNet** features (``global_pool``, 1280 numbers
per image), not those of the fine-tuned classifier: the check must not depend on
what the classifier learned. The classifier is an L2-regularized logistic
regression with balanced class weights, scored out-of-fold (stratified k-fold).

This is a diagnostic for the report, run after every choice is made: it changes no
threshold, temperature or weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from helpers import config, ood
from helpers import model as model_lib
from helpers.cache import load_or_compute
from helpers.data import CLASS_NAMES, IMAGE_SIZE

DEFAULT_FOLDS = 5
DEFAULT_REGULARIZATION = 0.01  # inverse L2 strength C of the logistic regression
SAME_POPULATION_AUC = 0.5


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class ShiftComparison:
    """One two-sample test: ``reference`` vs ``other`` images of one class.

    ``reference_scores`` (N_ref,) and ``other_scores`` (N_other,) are the out-of-fold
    probabilities that an image belongs to ``other``.
    """

    class_name: str
    reference: str
    other: str
    auc: float
    reference_scores: np.ndarray
    other_scores: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.reference} vs {self.other} ({self.class_name})"


def _check_features(features, name: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"{name} must be a (N, D) feature array, got shape {features.shape}.")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return features


def domain_scores(
    reference,
    other,
    folds: int = DEFAULT_FOLDS,
    regularization: float = DEFAULT_REGULARIZATION,
    seed: int = config.DEFAULT_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probability that each row belongs to ``other`` rather than ``reference``.

    Args:
        reference: (N_ref, D) features of the first set.
        other: (N_other, D) features of the second set.
        folds: stratified cross-validation folds; each set needs at least this many rows.
        regularization: inverse L2 strength ``C`` of the logistic regression (> 0).

    Returns:
        ``(reference_scores (N_ref,), other_scores (N_other,))``, each in [0, 1].
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    reference = _check_features(reference, "reference")
    other = _check_features(other, "other")
    if reference.shape[1] != other.shape[1]:
        raise ValueError(f"The feature sets have {reference.shape[1]} and {other.shape[1]} "
                         "dimensions: compute both with the same feature model.")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}.")
    if min(len(reference), len(other)) < folds:
        raise ValueError(f"Each set needs at least folds={folds} rows, got {len(reference)} "
                         f"and {len(other)}: use more images or fewer folds.")
    if regularization <= 0:
        raise ValueError(f"regularization must be > 0, got {regularization}.")
    features = np.concatenate([reference, other])  # (N_ref + N_other, D)
    membership = np.r_[np.zeros(len(reference), int), np.ones(len(other), int)]
    classifier = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=regularization, class_weight="balanced", max_iter=5000),
    )
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(classifier, features, membership, cv=splitter, method="predict_proba")[:, 1]
    return scores[: len(reference)], scores[len(reference):]


def domain_auc(reference_scores, other_scores) -> float:
    """ROC-AUC of telling ``other`` from ``reference`` by the scores (0.5 = indistinguishable)."""
    from sklearn.metrics import roc_auc_score

    reference_scores = np.asarray(reference_scores, dtype=np.float64)
    other_scores = np.asarray(other_scores, dtype=np.float64)
    if len(reference_scores) == 0 or len(other_scores) == 0:
        raise ValueError("Both sets need at least one score.")
    membership = np.r_[np.zeros(len(reference_scores)), np.ones(len(other_scores))]
    return float(roc_auc_score(membership, np.r_[reference_scores, other_scores]))


def compare_within_classes(
    features: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    reference: str = "train",
    others: tuple[str, ...] = ("validation", "test"),
    folds: int = DEFAULT_FOLDS,
    regularization: float = DEFAULT_REGULARIZATION,
    seed: int = config.DEFAULT_SEED,
) -> list[ShiftComparison]:
    """Two-sample tests of ``reference`` against each of ``others``, one per class.

    Args:
        features: {split name: (N, D) features}.
        labels: {split name: (N,) labels 0 = NORMAL, 1 = PNEUMONIA}.

    Returns:
        One :class:`ShiftComparison` per (class, other split), classes in
        :data:`helpers.data.CLASS_NAMES` order.
    """
    for name in (reference, *others):
        if name not in features or name not in labels:
            raise ValueError(f"No features or labels for split {name!r}; have {sorted(features)}.")
        if len(features[name]) != len(labels[name]):
            raise ValueError(f"Split {name!r} has {len(features[name])} feature rows but "
                             f"{len(labels[name])} labels.")
    comparisons = []
    for class_index, class_name in enumerate(CLASS_NAMES):
        reference_rows = np.asarray(features[reference])[np.asarray(labels[reference]) == class_index]
        for other in others:
            other_rows = np.asarray(features[other])[np.asarray(labels[other]) == class_index]
            reference_scores, other_scores = domain_scores(reference_rows, other_rows, folds,
                                                           regularization, seed)
            comparisons.append(ShiftComparison(class_name, reference, other,
                                               domain_auc(reference_scores, other_scores),
                                               reference_scores, other_scores))
    return comparisons


def shift_table(comparisons: list[ShiftComparison]):
    """One row per comparison: class, the two splits, their sizes and the AUC."""
    import pandas as pd

    return pd.DataFrame([{
        "class": comparison.class_name,
        "reference": comparison.reference,
        "compared with": comparison.other,
        "reference images": len(comparison.reference_scores),
        "compared images": len(comparison.other_scores),
        "two-sample AUC": round(comparison.auc, 3),
    } for comparison in comparisons])


def shift_record(comparisons: list[ShiftComparison]) -> dict[str, float]:
    """``{"<reference>_vs_<other>_<CLASS>": auc}`` for metrics.json."""
    return {f"{c.reference}_vs_{c.other}_{c.class_name}": c.auc for c in comparisons}


@lru_cache(maxsize=2)
def imagenet_feature_model(image_size: int = IMAGE_SIZE):
    """MobileNetV2 with its ImageNet weights only: pixels (B, S, S, 3) 0-255 -> (B, 1280).

    The same preprocessing and ``global_pool`` layer as the classifier (its head is never
    used), so no fine-tuned weight enters the shift check. Built once per image size.
    """
    return ood.feature_model(model_lib.build_model(weights="imagenet", image_size=image_size))


def imagenet_features(images: np.ndarray, batch_size: int = 64, extractor=None) -> np.ndarray:
    """ImageNet features of ``images`` (N, S, S, 3) 0-255 -> (N, 1280) float32.

    Cached as ``<artifacts>/cache/imagenet-features-<images>.npy`` (the key is the
    images' bytes; the ImageNet weights never change). ``extractor`` replaces
    :func:`imagenet_feature_model` (tests pass a small model).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected images of shape (N, H, W, 3), got {images.shape}.")
    if extractor is not None:
        return ood.compute_features(extractor, images, batch_size)
    return load_or_compute(
        f"imagenet-features-{ood.images_fingerprint(images)}.npy",
        lambda: ood.compute_features(imagenet_feature_model(images.shape[1]), images, batch_size),
    )


def plot_shift(comparisons: list[ShiftComparison]):
    """Left: the two-sample AUC of each comparison (0.5 = same population).
    Right: the scores of the comparison with the highest AUC, one histogram per set."""
    import matplotlib.pyplot as plt

    if not comparisons:
        raise ValueError("There are no comparisons to plot.")
    figure, (bar_axis, histogram_axis) = plt.subplots(1, 2, figsize=(11, 4))
    names = [comparison.name for comparison in comparisons]
    aucs = [comparison.auc for comparison in comparisons]
    colours = ["tab:grey" if comparison.other == "validation" else "tab:red" for comparison in comparisons]
    bar_axis.barh(names, aucs, color=colours)
    bar_axis.axvline(SAME_POPULATION_AUC, color="black", linestyle="--", label="same population")
    bar_axis.set_xlim(0.4, 1.0)
    bar_axis.invert_yaxis()
    bar_axis.set_xlabel("two-sample AUC")
    bar_axis.legend(loc="lower right")
    for row, auc in enumerate(aucs):
        bar_axis.text(auc + 0.01, row, f"{auc:.2f}", va="center")
    widest = max(comparisons, key=lambda comparison: comparison.auc)
    bins = np.linspace(0.0, 1.0, 21)
    histogram_axis.hist(widest.reference_scores, bins=bins, alpha=0.6, density=True,
                        label=f"{widest.reference} {widest.class_name}")
    histogram_axis.hist(widest.other_scores, bins=bins, alpha=0.6, density=True,
                        label=f"{widest.other} {widest.class_name}")
    histogram_axis.set_xlabel(f"out-of-fold probability of '{widest.other}'")
    histogram_axis.set_ylabel("density")
    histogram_axis.set_title(f"{widest.name}: AUC {widest.auc:.2f}")
    histogram_axis.legend()
    figure.tight_layout()
    return figure
