"""The guard at screening time: is this film a chest X-ray, upright, like the validated population?

Runtime half of the out-of-distribution check: apply what notebook 07 fitted, read it
from ``<artifacts>/ood/detector.npz``; no fitting code and no TensorFlow. The gates,
in order (the reasons for each are in :mod:`helpers.ood` and :mod:`helpers.guard`,
which fit them):

1. colour: chest X-rays are grey (:func:`colourfulness`);
2. the X-ray gate: a :class:`LinearGate` on the pooled features, "X-ray or not";
3. the orientation gate: a :class:`LinearGate`, upright / inverted / upside down / rotated;
4. the feature distance: Mahalanobis distance to the training films' features
   (:class:`FeatureDistribution`), far = unlike the validated population.

Each film gets one of four verdict kinds (:data:`VERDICT_KINDS`): the model answers a
``chest_xray``; ``not_xray`` and ``wrong_way_round`` are refused with a message saying
what to do; ``unlike_population`` is referred, the probability shown second.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helpers import config
from helpers.errors import distinct_pair
from helpers.provenance import FittedOn, ProvenanceMismatch

CHEST_XRAY = "chest_xray"
NOT_XRAY = "not_xray"
WRONG_WAY_ROUND = "wrong_way_round"
UNLIKE_POPULATION = "unlike_population"
VERDICT_KINDS = (CHEST_XRAY, NOT_XRAY, WRONG_WAY_ROUND, UNLIKE_POPULATION)
ANSWERED_KINDS = (CHEST_XRAY, UNLIKE_POPULATION)  # the model's probability is computed (shown second for the latter)

UPRIGHT = "upright"
ORIENTATIONS = (UPRIGHT, "inverted", "upside_down", "rotated")
ORIENTATION_WORDS = {
    "inverted": "inverted (a negative: air white, bones dark)",
    "upside_down": "upside down",
    "rotated": "turned on its side (rotated 90 degrees)",
}
XRAY_CLASSES = ("not_xray", "xray")

DEFAULT_QUANTILE = 0.995
DEFAULT_MAX_COLOURFULNESS = 25.0
DETECTOR_FILE_NAME = "detector.npz"
SINGLE_FILM_ROWS = 4  # up to this many rows, distances skip BLAS (see FeatureDistribution.distances)


# --------------------------------------------------------------------------- #
# Gate 1: colour
# --------------------------------------------------------------------------- #
def colourfulness(images: np.ndarray) -> np.ndarray:
    """Hasler & Suesstrunk colourfulness of each image: (N, H, W, 3) -> (N,) float.

    0 for a grey image; about 15 "slightly", 33 "moderately", 59 "quite" colourful.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected RGB images of shape (N, H, W, 3), got {images.shape}.")
    pixels = images.astype(np.float32)
    red_green = pixels[..., 0] - pixels[..., 1]  # (N, H, W)
    yellow_blue = 0.5 * (pixels[..., 0] + pixels[..., 1]) - pixels[..., 2]  # (N, H, W)
    axes = (1, 2)
    spread = np.sqrt(red_green.std(axes) ** 2 + yellow_blue.std(axes) ** 2)
    offset = np.sqrt(red_green.mean(axes) ** 2 + yellow_blue.mean(axes) ** 2)
    return spread + 0.3 * offset


# --------------------------------------------------------------------------- #
# Gates 2 and 3: a standardized logistic regression on features
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class LinearGate:
    """Softmax regression on standardized features: (N, D) -> (N, K) class probabilities.

    ``threshold`` applies to the probability of ``classes[watched]`` (set on validation
    by the fitting function); the gate *fires* when that probability is below it.
    """

    classes: tuple[str, ...]
    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    weights: np.ndarray  # (D, K)
    bias: np.ndarray  # (K,)
    threshold: float = 0.5
    watched: int = 0  # the class whose probability the threshold applies to

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N, K) probabilities (rows sum to 1)."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        if features.shape[1] != self.mean.shape[0]:
            raise ValueError(f"Features have {features.shape[1]} dimensions, the gate {self.mean.shape[0]}: "
                             "use the model the gate was fitted on.")
        standardized = (features - self.mean) / self.scale  # (N, D)
        scores = np.einsum("nd,dk->nk", standardized, self.weights, optimize=False) + self.bias  # (N, K), no BLAS
        scores -= scores.max(axis=1, keepdims=True)
        exponentials = np.exp(scores)
        return exponentials / exponentials.sum(axis=1, keepdims=True)

    def watched_probability(self, features: np.ndarray) -> np.ndarray:
        """(N,) probability of ``classes[watched]``."""
        return self.probabilities(features)[:, self.watched]

    def fires(self, features: np.ndarray) -> np.ndarray:
        """(N,) bool: the watched class's probability is below the threshold."""
        return self.fires_at(self.watched_probability(features))

    def fires_at(self, watched_probabilities) -> np.ndarray:
        """(N,) bool from precomputed watched-class probabilities: the gate's one rule."""
        return np.asarray(watched_probabilities) < self.threshold

    def with_threshold(self, threshold: float) -> LinearGate:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"A gate threshold is a probability in (0, 1), got {threshold}.")
        return LinearGate(self.classes, self.mean, self.scale, self.weights, self.bias, float(threshold), self.watched)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays to store in an ``.npz`` under ``prefix``."""
        return {f"{prefix}_classes": np.array(self.classes), f"{prefix}_mean": self.mean,
                f"{prefix}_scale": self.scale, f"{prefix}_weights": self.weights, f"{prefix}_bias": self.bias,
                f"{prefix}_threshold": np.float64(self.threshold), f"{prefix}_watched": np.int64(self.watched)}

    @classmethod
    def from_arrays(cls, stored, prefix: str) -> LinearGate:
        """Read :meth:`to_arrays` back from a loaded ``.npz``; KeyError names the missing array."""
        return cls(tuple(str(name) for name in stored[f"{prefix}_classes"]),
                   np.asarray(stored[f"{prefix}_mean"], np.float32), np.asarray(stored[f"{prefix}_scale"], np.float32),
                   np.asarray(stored[f"{prefix}_weights"], np.float32),
                   np.asarray(stored[f"{prefix}_bias"], np.float32),
                   float(stored[f"{prefix}_threshold"]), int(stored[f"{prefix}_watched"]))


# --------------------------------------------------------------------------- #
# Gate 4: distance to the training features
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class FeatureDistribution:
    """Gaussian model of training features: mean (D,) and precision matrix (D, D)."""

    mean: np.ndarray
    precision: np.ndarray

    @functools.cached_property
    def _precision32(self) -> np.ndarray:
        return self.precision.astype(np.float32)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (N, D) -> (N,)."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if features.shape[1] != self.mean.shape[0]:
            raise ValueError(f"Features have {features.shape[1]} dimensions, the fitted "
                             f"distribution {self.mean.shape[0]}: use the same model.")
        centred = features - self.mean  # (N, D)
        if len(centred) <= SINGLE_FILM_ROWS:
            # One upload: a plain loop in float32 (half the memory to stream, relative error ~1e-6), so
            # BLAS threads do not wake up and then spin while the phone model runs (benchmarks/app_latency.py).
            projected = np.einsum("nd,de->ne", centred.astype(np.float32), self._precision32, optimize=False)
        else:
            projected = centred @ self.precision  # (N, D): one BLAS product for many images
        squared = np.sum(projected * centred, axis=1)  # (N,)
        return np.sqrt(np.maximum(squared, 0.0))


def _item(values, index: int) -> float | None:
    return None if values is None else float(values[index])


# --------------------------------------------------------------------------- #
# The detector: the gates, with their thresholds
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class OODVerdict:
    """The guard's verdict on one image (the four kinds: :data:`VERDICT_KINDS`).

    ``kind``: ``chest_xray`` (the model answers), ``not_xray`` or ``wrong_way_round``
    (refused), ``unlike_population`` (an X-ray the model was not validated on: refer,
    the probability only as secondary information). ``gate`` names the test that
    decided: ``accepted``, ``colour``, ``xray``, ``orientation`` or ``features``.
    """

    accepted: bool  # kind == chest_xray: the model's decision stands
    gate: str
    colourfulness: float
    distance: float
    distance_threshold: float
    message: str
    kind: str = CHEST_XRAY
    orientation: str | None = None  # what was detected when the film is the wrong way round
    xray_probability: float | None = None
    upright_probability: float | None = None

    @property
    def answered(self) -> bool:
        """The model's probability is computed: a chest X-ray, or one unlike the training population."""
        return self.kind in ANSWERED_KINDS


@dataclass(frozen=True)
class OODDetector:
    """Colour gate + Mahalanobis feature gate with thresholds chosen on validation images."""

    distribution: FeatureDistribution
    distance_threshold: float
    max_colourfulness: float = DEFAULT_MAX_COLOURFULNESS
    quantile: float = DEFAULT_QUANTILE
    info: dict = field(default_factory=dict)
    xray_gate: LinearGate | None = None  # X-ray or not (fitted by helpers.guard); None: the colour gate only
    orientation_gate: LinearGate | None = None  # upright or not; None: not checked
    fitted_on: FittedOn | None = None  # the model whose features it was fitted on; required to save

    def require_model(self, model_sha256: str | None, source: str, model_name: str) -> None:
        """Refuse (``ProvenanceMismatch``) unless this detector was fitted on the model in use."""
        remedy = ("Fit the detector again on this model (notebook 07), or use the model it was fitted on.")
        if self.fitted_on is None:
            raise ProvenanceMismatch(f"{source} does not record which model it was fitted on. {remedy}")
        self.fitted_on.require(model_sha256, int(self.distribution.mean.shape[0]), source, model_name, remedy)

    def with_gates(self, xray_gate: LinearGate, orientation_gate: LinearGate) -> OODDetector:
        """The same detector with the X-ray and orientation gates (fitted by :mod:`helpers.guard`)."""
        return dataclasses.replace(self, xray_gate=xray_gate, orientation_gate=orientation_gate)

    def check(self, images: np.ndarray, features: np.ndarray) -> list[OODVerdict]:
        """Verdicts for images (N, H, W, 3) 0-255 and their features (N, D)."""
        colour = colourfulness(images)
        measured = self.measure(features)
        if len(colour) != len(measured["distance"]):
            raise ValueError(f"{len(colour)} images but {len(measured['distance'])} feature rows.")
        kinds = self.kinds(colour, measured["distance"], measured["xray_probability"],
                           measured["upright_probability"])  # the rule, once
        return [self._verdict(kinds[i], float(colour[i]), float(measured["distance"][i]),
                              _item(measured["xray_probability"], i), _item(measured["upright_probability"], i),
                              measured["orientation"][i] if measured["orientation"] is not None else None)
                for i in range(len(colour))]

    def measure(self, features: np.ndarray) -> dict:
        """What the gates look at, per image: distance, P(X-ray), P(upright), likeliest wrong orientation."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        measured = {"distance": self.distribution.distances(features), "xray_probability": None,
                    "upright_probability": None, "orientation": None}
        if self.xray_gate is not None:
            measured["xray_probability"] = self.xray_gate.watched_probability(features)
        if self.orientation_gate is not None:
            probabilities = self.orientation_gate.probabilities(features)  # (N, 4)
            upright = self.orientation_gate.classes.index(UPRIGHT)
            wrong = probabilities.copy()
            wrong[:, upright] = -1.0
            measured["upright_probability"] = probabilities[:, upright]
            measured["orientation"] = [self.orientation_gate.classes[k] for k in wrong.argmax(axis=1)]
        return measured

    def kinds(self, colour: np.ndarray, distance: np.ndarray, xray_probability: np.ndarray | None = None,
              upright_probability: np.ndarray | None = None) -> np.ndarray:
        """(N,) verdict kinds from precomputed measurements,
        the gates in order (colour, X-ray, orientation, distance)."""
        colour, distance = np.asarray(colour), np.asarray(distance)
        kinds = np.full(len(distance), CHEST_XRAY, dtype=object)
        far = UNLIKE_POPULATION if self.xray_gate is not None else NOT_XRAY  # see _verdict
        kinds[distance > self.distance_threshold] = far
        if upright_probability is not None and self.orientation_gate is not None:
            kinds[self.orientation_gate.fires_at(upright_probability)] = WRONG_WAY_ROUND
        if xray_probability is not None and self.xray_gate is not None:
            kinds[self.xray_gate.fires_at(xray_probability)] = NOT_XRAY
        kinds[colour > self.max_colourfulness] = NOT_XRAY
        return kinds

    def accepted(self, colour: np.ndarray, distance: np.ndarray, xray_probability: np.ndarray | None = None,
                 upright_probability: np.ndarray | None = None) -> np.ndarray:
        """(N,) bool: every gate passed (verdict ``chest_xray``), from precomputed measurements."""
        return self.kinds(colour, distance, xray_probability, upright_probability) == CHEST_XRAY

    def _verdict(self, kind: str, colour: float, distance: float, xray_probability: float | None = None,
                 upright_probability: float | None = None, orientation: str | None = None) -> OODVerdict:
        """The verdict of one image whose ``kind`` :meth:`kinds` decided: which gate, and the message."""
        facts = {"xray_probability": xray_probability, "upright_probability": upright_probability}
        distance_text, threshold_text = distinct_pair(distance, self.distance_threshold, 1)  # "60.605 > 60.601"
        if kind == NOT_XRAY and colour > self.max_colourfulness:
            colour_text, most_text = distinct_pair(colour, self.max_colourfulness, 0)
            return self._made("colour", kind, colour, distance, facts, (
                f"This image is in colour (colourfulness {colour_text}, chest X-rays "
                f"are grey: at most {most_text}). It is not a chest X-ray, "
                "so no prediction is made. Upload a frontal chest X-ray."))
        if kind == NOT_XRAY and self.xray_gate is not None:
            score_text, below_text = distinct_pair(xray_probability, self.xray_gate.threshold, 2)
            return self._made("xray", kind, colour, distance, facts, (
                f"This image does not look like a chest X-ray (X-ray score {score_text}, "
                f"below {below_text}), so no prediction is made. "
                "Upload a frontal chest X-ray."))
        if kind == NOT_XRAY:
            # Without the X-ray gate, distance cannot tell "not an X-ray" from "an unfamiliar X-ray": refuse.
            return self._made("features", kind, colour, distance, facts, (
                f"This image does not look like the chest X-rays the model was trained on (feature "
                f"distance {distance_text} > {threshold_text}, the {100 * self.quantile:g}th "
                "percentile of held-out training X-rays), so no prediction is made. Upload a frontal "
                "chest X-ray, upright and not inverted (bones light, air dark)."))
        if kind == WRONG_WAY_ROUND:
            words = ORIENTATION_WORDS.get(orientation, "the wrong way round")
            score_text, below_text = distinct_pair(upright_probability, self.orientation_gate.threshold, 2)
            return self._made("orientation", kind, colour, distance, facts, (
                f"This chest X-ray looks {words} (upright score {score_text}, "
                f"below {below_text}). No prediction is made on a film the "
                "wrong way round: turn it upright (bones light, air dark, head at the top) and "
                "upload it again."), orientation)
        if kind == UNLIKE_POPULATION:
            return self._made("features", kind, colour, distance, facts, (
                f"This looks like a chest X-ray, but it lies outside the population this model was "
                f"validated on (feature distance {distance_text} > {threshold_text}, "
                f"the {100 * self.quantile:g}th percentile of held-out training films): another "
                "hospital, machine or patient group. Refer to a radiologist; the model's probability "
                "is shown for reference only, not as a decision."))
        return self._made("accepted", kind, colour, distance, facts, (
            f"Looks like a chest X-ray{', upright,' if self.orientation_gate is not None else ''} like the "
            f"training films (feature distance {distance_text} <= {threshold_text})."))

    def _made(self, gate: str, kind: str, colour: float, distance: float, facts: dict, message: str,
              orientation: str | None = None) -> OODVerdict:
        return OODVerdict(kind == CHEST_XRAY, gate, colour, distance, self.distance_threshold, message,
                          kind, orientation, facts["xray_probability"], facts["upright_probability"])

    # ------------------------------------------------------------------ io
    @classmethod
    def load(cls, path: str | Path | None = None) -> OODDetector:
        path = Path(path) if path else config.artifacts_dir("ood", create=False) / DETECTOR_FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"No OOD detector at {path}. Fit it by running "
                "notebooks/07_prediction_explorer.ipynb (or helpers.ood.fit_detector)."
            )
        with np.load(path, allow_pickle=False) as stored:
            names = set(stored.files)
            if not {"xray_mean", "orientation_mean"} <= names:
                raise ValueError(f"The OOD detector {path} was fitted before the X-ray and orientation gates "
                                 "existed (helpers.guard): "
                                 "re-run notebooks/07_prediction_explorer.ipynb to fit it again.")
            fitted_on = FittedOn.from_dict(json.loads(str(stored["fitted_on"])) if "fitted_on" in names else None,
                                           str(path), "Re-run notebooks/07_prediction_explorer.ipynb to fit it again.")
            return cls(
                distribution=FeatureDistribution(stored["mean"], stored["precision"]),
                distance_threshold=float(stored["distance_threshold"]),
                max_colourfulness=float(stored["max_colourfulness"]),
                quantile=float(stored["quantile"]),
                info=json.loads(str(stored["info"])),
                xray_gate=LinearGate.from_arrays(stored, "xray"),
                orientation_gate=LinearGate.from_arrays(stored, "orientation"),
                fitted_on=fitted_on,
            )
