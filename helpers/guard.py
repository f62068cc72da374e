"""What kind of picture is this? Two small classifiers on the model's own features.

The out-of-distribution check (:mod:`helpers.ood`) asks one question -- is this image
far from the training films? -- and so cannot tell apart three different answers a
user needs:

* **not a chest X-ray** (a photo, a drawing, a page of text, noise): refuse;
* **a chest X-ray the wrong way round** (inverted, upside down, on its side): refuse
  and say what was detected, so the user can fix it;
* **a chest X-ray unlike the training population** (another hospital, an adult,
  another machine): answer "refer to a radiologist", never a confident decision.

Each gate is a :class:`helpers.serving.guard.LinearGate` (applied at screening time
there, fitted here): the 1280 ``global_pool`` features the model computes anyway,
standardized, then a logistic regression. They are trained on
*transformed training films only* and their thresholds set on the validation split:

* the **X-ray gate** learns "X-ray or not" from training films under strong
  acquisition changes (:func:`acquisition_variants`: exposure, contrast, histogram
  equalisation, framing, noise, blur, JPEG) and turned every way
  (:func:`orientation_variants`) as positives, against generated non-X-rays
  (:func:`helpers.ood.non_xray_images`) as negatives. Variety in the positives is
  what lets it call an X-ray from another hospital an X-ray;
* the **orientation gate** learns upright / inverted / upside down / rotated from the
  same films turned each way.

No probability-versus-threshold rule of the classifier lives here: these are gates
on the input, decided before the model's answer is used.
"""

from __future__ import annotations

import numpy as np

from helpers import augment
from helpers.operating_point import logit, sigmoid
from helpers.serving.guard import (  # noqa: F401  (re-exported: the gates' runtime and the verdict kinds)
    ANSWERED_KINDS,
    CHEST_XRAY,
    NOT_XRAY,
    ORIENTATION_WORDS,
    ORIENTATIONS,
    UNLIKE_POPULATION,
    UPRIGHT,
    VERDICT_KINDS,
    WRONG_WAY_ROUND,
    XRAY_CLASSES,
    LinearGate,
)

EDGE_QUANTILE = 0.005  # threshold_between: each group's edge is this far into its tail
LOGIT_EPSILON = 1e-9  # gate probabilities saturate near 0 and 1: clip before taking the logit
STRONG_ACQUISITION = augment.AugmentConfig(min_crop=0.5, brightness=0.25, contrast=0.5, gamma=0.5,
                                           noise_std=24.0, sharpness=1.5)


# --------------------------------------------------------------------------- #
# The transformed films the gates learn from
# --------------------------------------------------------------------------- #
def orientation_variants(images: np.ndarray) -> dict[str, np.ndarray]:
    """Each way a film can be the wrong way round: ``{name: (N, H, W, 3)}``.

    ``inverted`` (255 - pixels), ``upside_down`` (rows reversed: a flip about the
    horizontal axis, which is how a film put in upside down looks), ``rotated_left`` and
    ``rotated_right`` (90 degrees). Images must be square, as the model's input is.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"Expected square images (N, S, S, C), got {images.shape}.")
    return {
        "inverted": (255.0 - images.astype(np.float32)),
        "upside_down": images[:, ::-1],
        "rotated_left": np.rot90(images, k=1, axes=(1, 2)),
        "rotated_right": np.rot90(images, k=3, axes=(1, 2)),
    }


def orientation_of(variant: str) -> str:
    """The orientation class of an :func:`orientation_variants` name (``rotated_left`` -> ``rotated``)."""
    return "rotated" if variant.startswith("rotated") else variant


def equalise(images: np.ndarray) -> np.ndarray:
    """Histogram equalisation of each grey film (N, H, W, 3) 0-255 -> float32, as some PACS exports do."""
    images = np.asarray(images)
    grey = np.clip(np.round(images[..., 0]), 0, 255).astype(np.uint8)  # (N, H, W): R = G = B on a film
    out = np.empty(grey.shape, np.float32)
    for index, plane in enumerate(grey):
        cumulative = np.bincount(plane.ravel(), minlength=256).cumsum()  # (256,)
        darkest = cumulative[cumulative > 0][0]  # pixels at the darkest level present: they map to 0
        spread = max(int(cumulative[-1] - darkest), 1)
        out[index] = np.clip(255.0 * (cumulative - darkest) / spread, 0.0, 255.0)[plane]
    return np.repeat(out[..., np.newaxis], 3, axis=-1)


def acquisition_variants(images: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Strong changes of machine, exposure and framing that leave a film an upright X-ray.

    ``strong`` (:func:`helpers.augment.augment_images` with :data:`STRONG_ACQUISITION`:
    exposure, contrast, gamma, crop to half the side, noise, blur or sharpening, JPEG),
    ``equalised`` (histogram equalisation), ``zoomed_out`` (the film shrunk to 70% on a
    black border, as a wide field of view or an adult chest) and ``zoomed_in`` (the
    central 70%). Returns ``{name: float32 (N, H, W, 3)}``.
    """
    images = np.asarray(images)
    return {
        "strong": augment.augment_images(images, rng, STRONG_ACQUISITION),
        "equalised": equalise(images),
        "zoomed_out": augment.zoom_centre(images, 0.7),
        "zoomed_in": augment.zoom_centre(images, 1.0 / 0.7),
    }


# --------------------------------------------------------------------------- #
# Fitting a standardized logistic regression on features
# --------------------------------------------------------------------------- #
def fit_linear_gate(features: np.ndarray, labels, classes: tuple[str, ...], watched: str,
                    regularization: float = 0.05, balanced: bool = False, seed: int = 0) -> LinearGate:
    """Fit a :class:`LinearGate` (threshold 0.5 until one is chosen on validation).

    Args:
        features: (N, D) training features; labels: (N,) class names, each in ``classes``.
        regularization: inverse L2 strength ``C`` of scikit-learn's LogisticRegression
            (small: many correlated features, few source films).
        balanced: weigh the classes to equal total weight (few negatives, many positives).
    """
    from sklearn.linear_model import LogisticRegression

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    unknown = sorted(set(labels.tolist()) - set(classes))
    if unknown:
        raise ValueError(f"Labels {unknown} are not among the classes {classes}.")
    missing = [name for name in classes if not np.any(labels == name)]
    if missing:
        raise ValueError(f"No training examples of {missing}: every class needs some.")
    mean = features.mean(axis=0)
    scale = features.std(axis=0) + 1e-6
    targets = np.array([classes.index(label) for label in labels.tolist()])  # (N,) 0..K-1, coef_ rows in this order
    model = LogisticRegression(C=regularization, max_iter=3000, random_state=seed,
                               class_weight="balanced" if balanced else None)
    model.fit((features - mean) / scale, targets)
    if len(classes) == 2:  # one weight vector w: softmax over (0, w) is the sigmoid of w
        weights = np.stack([np.zeros(features.shape[1]), model.coef_[0]], axis=1)  # (D, 2)
        bias = np.array([0.0, model.intercept_[0]])
    else:
        weights, bias = model.coef_.T, model.intercept_  # (D, K), (K,)
    return LinearGate(tuple(classes), mean.astype(np.float32), scale.astype(np.float32),
                      weights.astype(np.float32), bias.astype(np.float32), 0.5, classes.index(watched))


def threshold_between(accepted_scores: np.ndarray, refused_scores: np.ndarray,
                      quantile: float = EDGE_QUANTILE) -> float:
    """Both gates' threshold rule: halfway (in logit) between the two groups' near edges.

    ``accepted_scores`` (e.g. validation X-rays, every variant) should pass and
    ``refused_scores`` (validation non-X-rays, or films turned the wrong way) should not. The edges are the
    ``quantile`` of the first and the ``1 - quantile`` of the second; halfway between
    them leaves the same margin on both sides, which is what lets an X-ray from
    elsewhere, a little less X-ray-like than the training films, still pass.
    """
    low_edge = np.quantile(logit(accepted_scores, LOGIT_EPSILON), quantile)
    high_edge = np.quantile(logit(refused_scores, LOGIT_EPSILON), 1.0 - quantile)
    return float(sigmoid(0.5 * (low_edge + high_edge)))


# --------------------------------------------------------------------------- #
# Fitting both gates on transformed training films; thresholds on validation
# --------------------------------------------------------------------------- #
def variant_features(features_of, images: np.ndarray, rng: np.random.Generator,
                     turn_strong: bool = True) -> dict[str, np.ndarray]:
    """Features of every variant of ``images``: ``{variant: (N, D)}``.

    ``upright`` (the films as given), the :func:`acquisition_variants`, the
    :func:`orientation_variants` of the films, and (``turn_strong``) those of the
    ``strong`` variant too (``strong+inverted``, ...), so a wrong-way film is
    recognised whatever the machine. ``features_of``: (N, H, W, 3) pixels -> (N, D).
    """
    out = {UPRIGHT: features_of(images)}
    acquisition = acquisition_variants(images, rng)
    for name, altered in acquisition.items():
        out[name] = features_of(altered)
    for name, turned in orientation_variants(images).items():
        out[name] = features_of(turned)
    if turn_strong:
        for name, turned in orientation_variants(acquisition["strong"]).items():
            out[f"strong+{name}"] = features_of(turned)
    return out


def orientation_label(variant: str) -> str:
    """The orientation class of a :func:`variant_features` name: ``strong+rotated_left`` -> ``rotated``."""
    last = variant.split("+")[-1]
    turned = orientation_of(last)
    return turned if turned in ORIENTATIONS else UPRIGHT


def _stack(variants: dict[str, np.ndarray], label_of) -> tuple[np.ndarray, np.ndarray]:
    features = np.concatenate(list(variants.values()))
    labels = np.concatenate([[label_of(name)] * len(values) for name, values in variants.items()])
    return features, labels


def fit_orientation_gate(train_variants: dict[str, np.ndarray],
                         validation_variants: dict[str, np.ndarray]) -> LinearGate:
    """Upright / inverted / upside down / rotated, from training variants; threshold on validation.

    The gate fires when P(upright) is below a threshold set by :func:`threshold_between`
    the validation films that are upright (as given and under every acquisition change)
    and those turned the wrong way: the same rule as the X-ray gate.
    """
    features, labels = _stack(train_variants, orientation_label)
    gate = fit_linear_gate(features, labels, ORIENTATIONS, watched=UPRIGHT)
    upright = [values for name, values in validation_variants.items() if orientation_label(name) == UPRIGHT]
    turned = [values for name, values in validation_variants.items() if orientation_label(name) != UPRIGHT]
    if not upright or not turned:
        raise ValueError("The validation variants need upright and turned films (helpers.guard.variant_features).")
    return gate.with_threshold(threshold_between(gate.watched_probability(np.concatenate(upright)),
                                                 gate.watched_probability(np.concatenate(turned))))


def fit_xray_gate(train_variants: dict[str, np.ndarray], non_xray_train: np.ndarray,
                  validation_variants: dict[str, np.ndarray], non_xray_validation: np.ndarray) -> LinearGate:
    """X-ray or not: every training variant (any orientation) against generated non-X-rays.

    Classes are weighted to balance; the threshold is :func:`threshold_between` the
    validation variants and a second, differently seeded set of non-X-rays.
    """
    xrays = np.concatenate(list(train_variants.values()))
    features = np.concatenate([xrays, np.asarray(non_xray_train)])
    labels = np.array(["xray"] * len(xrays) + ["not_xray"] * len(non_xray_train))
    gate = fit_linear_gate(features, labels, XRAY_CLASSES, watched="xray", balanced=True)
    accepted = gate.watched_probability(np.concatenate(list(validation_variants.values())))
    refused = gate.watched_probability(non_xray_validation)
    return gate.with_threshold(threshold_between(accepted, refused))


def gate_report(gate: LinearGate, variants: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of each variant's films on which ``gate`` fires: ``{variant: rate}``."""
    return {name: float(np.mean(gate.fires(values))) for name, values in variants.items()}


def orientation_report(gate: LinearGate, test_variants: dict[str, np.ndarray]) -> dict:
    """The ``ood.json`` ``orientation`` block, measured on transformed **test** films.

    ``*_detected``: share of films turned that way that the gate flags;
    ``upright_false_alarm``: share of the upright test films flagged;
    ``named_correctly``: of the flagged wrong-way films, the share whose orientation is named right.
    """
    rates = gate_report(gate, test_variants)
    probabilities = {name: gate.probabilities(values) for name, values in test_variants.items()}
    named, flagged = 0, 0
    for name, values in probabilities.items():
        truth = orientation_label(name)
        if truth == UPRIGHT or "+" in name:
            continue
        fired = gate.fires_at(values[:, gate.watched])
        wrong = values.copy()
        wrong[:, gate.watched] = -1.0
        named += int(np.sum(np.array(gate.classes)[wrong.argmax(axis=1)][fired] == truth))
        flagged += int(fired.sum())
    acquisition_alarms = [rates[name] for name in test_variants if orientation_label(name) == UPRIGHT]
    return {
        "method": "softmax regression on global_pool features (upright / inverted / upside down / rotated), "
                  "trained on transformed training films; fires when P(upright) < threshold",
        "threshold": float(gate.threshold),
        "threshold_chosen_on": "validation split: halfway (logit) between the 0.5% edge of upright validation "
                               "films (as given and under acquisition changes) and the 99.5% edge of turned ones",
        "n_test": len(test_variants[UPRIGHT]),
        "inverted_detected": rates["inverted"],
        "upside_down_detected": rates["upside_down"],
        "rotated_detected": float(np.mean([rates["rotated_left"], rates["rotated_right"]])),
        "upright_false_alarm": rates[UPRIGHT],
        "acquisition_changes_false_alarm": float(np.mean(acquisition_alarms)),
        "named_correctly": float(named / flagged) if flagged else None,
        "per_variant_flagged": rates,
    }


def xray_report(gate: LinearGate, test_variants: dict[str, np.ndarray]) -> dict:
    """The ``ood.json`` ``xray_gate`` block: share of each transformed **test** film variant called not an X-ray."""
    rates = gate_report(gate, test_variants)
    return {
        "method": "logistic regression on global_pool features: training films under strong acquisition changes "
                  "and turned every way vs generated non-X-rays (classes balanced)",
        "threshold": float(gate.threshold),
        "threshold_chosen_on": "validation split: halfway (logit) between the 0.5% edge of transformed validation "
                               "films and the 99.5% edge of a second, differently seeded set of non-X-rays",
        "called_not_xray": rates,
        "called_not_xray_worst": float(max(rates.values())),
    }
