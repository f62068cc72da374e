"""How many decision flips should a quantized model's noise cause? (parity targets under noise)

An int8 model does not shift every logit by the same amount: rounding through some
60 quantized ops adds a small, image-specific error to each logit. An image whose
Keras logit sits close to the threshold can cross it; one far away never does. So
the number of decisions a quantized model changes, and whether those changes help
or hurt accuracy, depend on two things we can measure separately:

* the **logit error** of the quantized model, ``logit(p_lite) - logit(p_keras)``,
  measured where it was chosen (the validation split; :func:`logit_errors`), and
* how many images of a split lie near the threshold, from the Keras model alone.

:func:`flip_probabilities` combines them per image, using the measured errors as
they are (no Gaussian assumption); :func:`simulate_parity` draws whole splits of
flips and :func:`chance_of_targets` turns the draws into the probability that a
model with this error meets parity targets such as "agrees on >= 99.5% of
decisions and its accuracy is within 0.3 points". Images are treated as
independent: each image's error is drawn on its own.

Nothing here looks at a quantized model's test outputs: the errors come from
validation, the Keras test probabilities and labels only say where the test images
lie. It answers "is the observed test result what this noise level predicts?" and
"how small must the noise be for the target to be met reliably?".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from helpers import evaluation, operating_point
from helpers.operating_point import called_pneumonia
from helpers.tflite.parity import PhoneModelTargets

# The int8 model's output is a uint8 probability (steps of 1/256): its logit means
# little near 0 or 1, so errors are measured where Keras is between these.
ERROR_BAND = (0.05, 0.95)
DEFAULT_DRAWS = 20_000
# An int8 output can be exactly 0 or 1; its logit is clipped to about +-16.
PROBABILITY_EPSILON = 1e-7


def logit(probabilities: np.ndarray) -> np.ndarray:
    """(N,) probabilities, checked (finite, in [0, 1]) -> float64 logits, p clipped to [1e-7, 1 - 1e-7]."""
    return operating_point.logit(evaluation.as_probabilities(probabilities), PROBABILITY_EPSILON)


def _as_probability_vectors(*arrays: np.ndarray) -> list[np.ndarray]:
    vectors = [np.asarray(array, dtype=np.float64).reshape(-1) for array in arrays]
    if len({len(vector) for vector in vectors}) != 1 or len(vectors[0]) == 0:
        raise ValueError(f"Need non-empty arrays of one length, got lengths {[len(v) for v in vectors]}.")
    return vectors


def logit_errors(
    reference_probabilities: np.ndarray,
    probabilities: np.ndarray,
    band: tuple[float, float] = ERROR_BAND,
    min_images: int = 10,
) -> np.ndarray:
    """Per-image logit error of a converted model against Keras, ``(M,)`` float64.

    Args:
        reference_probabilities: (N,) Keras P(PNEUMONIA).
        probabilities: (N,) the converted model's P(PNEUMONIA) on the same images.
        band: keep images whose Keras probability lies strictly inside it; an int8
            output (1/256 steps) has no meaningful logit near 0 or 1.
        min_images: fewer images inside ``band`` than this is an error.

    Returns:
        ``logit(probabilities) - logit(reference)`` for the M images inside ``band``.

    Raises:
        ValueError: arrays of different lengths, probabilities outside [0, 1], a bad
            band, or fewer than ``min_images`` images inside the band.
    """
    reference, candidate = _as_probability_vectors(reference_probabilities, probabilities)
    low, high = band
    if not 0 <= low < high <= 1:
        raise ValueError(f"band must satisfy 0 <= low < high <= 1, got {band}.")
    inside = (reference > low) & (reference < high)
    if inside.sum() < max(min_images, 1):
        raise ValueError(f"Only {int(inside.sum())} images have a Keras probability inside {band}: "
                         "measure the logit error on a larger split (e.g. the whole validation split).")
    return logit(candidate[inside]) - logit(reference[inside])


def flip_probabilities(reference_probabilities: np.ndarray, threshold: float, errors: np.ndarray) -> np.ndarray:
    """For each image, the chance that a logit error drawn from ``errors`` flips its decision.

    Args:
        reference_probabilities: (N,) Keras P(PNEUMONIA).
        threshold: the operating point; decision = probability >= threshold.
        errors: (M,) measured logit errors (:func:`logit_errors`), each equally likely.

    Returns:
        (N,) float64 in [0, 1]: the share of ``errors`` that move the image's logit
        across the threshold's logit (0 for images far from it).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold}.")
    errors = np.asarray(errors, dtype=np.float64).reshape(-1)
    if len(errors) == 0 or np.any(~np.isfinite(errors)):
        raise ValueError("errors must be a non-empty array of finite logit errors "
                         "(helpers.quantization_noise.logit_errors).")
    reference = np.asarray(reference_probabilities, dtype=np.float64).reshape(-1)  # (N,)
    reference_logits = logit(reference)  # (N,)
    threshold_logit = float(operating_point.logit(threshold, PROBABILITY_EPSILON))
    positive = called_pneumonia(reference, threshold)  # (N,) Keras decisions
    sorted_errors = np.sort(errors)
    margin = threshold_logit - reference_logits  # (N,) logit change needed to reach the threshold
    # A positive decision flips when logit + error < threshold logit: error < margin.
    below = np.searchsorted(sorted_errors, margin, side="left") / len(errors)
    # A negative decision flips when logit + error >= threshold logit: error >= margin.
    at_or_above = 1.0 - below
    return np.where(positive, below, at_or_above)


def simulate_parity(
    reference_probabilities: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    errors: np.ndarray,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Draw ``draws`` possible quantized models: which decisions flip, and what that does to accuracy.

    Returns:
        ``disagreements`` (draws,) int: decisions that differ from Keras;
        ``accuracy_delta_points`` (draws,) float: quantized minus Keras accuracy, points;
        ``flip_probabilities`` (N,) float: each image's chance to flip (:func:`flip_probabilities`).
    """
    reference = np.asarray(reference_probabilities, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(reference) or len(labels) == 0:
        raise ValueError(f"Need one label per probability, got {len(labels)} labels "
                         f"for {len(reference)} probabilities.")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}.")
    chance = flip_probabilities(reference, threshold, errors)  # (N,)
    at_risk = np.flatnonzero(chance > 0)  # only images that can flip matter
    correct = called_pneumonia(reference, threshold) == labels.astype(bool)  # (N,) Keras right?
    rng = np.random.default_rng(seed)
    flips = rng.random((draws, len(at_risk))) < chance[at_risk]  # (draws, R)
    # A flip turns a right answer wrong (-1) or a wrong one right (+1).
    change = np.where(correct[at_risk], -1, 1)  # (R,)
    return {"disagreements": flips.sum(axis=1),
            "accuracy_delta_points": 100.0 * (flips * change).sum(axis=1) / len(reference),
            "flip_probabilities": chance}


@dataclass(frozen=True)
class ParityChance:
    """What a logit-error level predicts for one split (from :func:`chance_of_targets`)."""

    n_images: int
    expected_disagreements: float
    max_disagreements: int  # the most the agreement target allows
    p_agreement: float  # P(agreement >= target)
    p_accuracy_within: float  # P(|accuracy delta| <= target), two-sided
    p_accuracy_not_worse: float  # P(accuracy delta >= -target), one-sided
    p_both: float  # P(agreement and two-sided accuracy targets both met)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def chance_of_targets(
    reference_probabilities: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    errors: np.ndarray,
    min_agreement: float = PhoneModelTargets.min_int8_agreement,
    max_accuracy_delta_points: float = PhoneModelTargets.max_int8_accuracy_loss_points,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> ParityChance:
    """The chance that a quantized model with logit errors like ``errors`` meets the parity targets."""
    if not 0 < min_agreement <= 1 or max_accuracy_delta_points < 0:
        raise ValueError("min_agreement must be in (0, 1] and max_accuracy_delta_points >= 0.")
    simulated = simulate_parity(reference_probabilities, labels, threshold, errors, draws, seed)
    n_images = len(np.asarray(labels).reshape(-1))
    max_disagreements = int(np.floor(n_images * (1 - min_agreement) + 1e-9))
    agreement_met = simulated["disagreements"] <= max_disagreements
    delta = simulated["accuracy_delta_points"]
    within = np.abs(delta) <= max_accuracy_delta_points + 1e-9
    return ParityChance(
        n_images=n_images,
        expected_disagreements=float(simulated["flip_probabilities"].sum()),
        max_disagreements=max_disagreements,
        p_agreement=float(agreement_met.mean()),
        p_accuracy_within=float(within.mean()),
        p_accuracy_not_worse=float((delta >= -max_accuracy_delta_points - 1e-9).mean()),
        p_both=float((agreement_met & within).mean()),
    )


def noise_table(
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    threshold: float,
    errors: np.ndarray,
    scales: tuple[float, ...] = (1.0,),
    **targets,
):
    """One row per (split, error scale): :class:`ParityChance` as a pandas DataFrame.

    Args:
        splits: ``{name: (keras_probabilities, labels)}``.
        threshold: the operating point.
        errors: measured logit errors; each row scales them by ``scale`` (1.0 = as
            measured, 0.5 = a quantized model half as noisy).
        **targets: passed to :func:`chance_of_targets` (``min_agreement`` etc.).
    """
    errors = np.asarray(errors, dtype=np.float64)
    rows = []
    for name, (probabilities, labels) in splits.items():
        for scale in scales:
            chance = chance_of_targets(probabilities, labels, threshold, errors * scale, **targets)
            rows.append({"split": name, "error_scale": scale, "logit_error_std": float(np.std(errors * scale)),
                         **chance.as_dict()})
    return pd.DataFrame(rows).set_index(["split", "error_scale"])
