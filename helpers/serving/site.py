"""A site calibration at screening time: the site's head and operating point, read from its file.

Runtime half of notebook 08's few-label calibration (fitting and the protocol are in
:mod:`helpers.site`): :class:`SiteCalibration` holds the refit :class:`LinearHead`
(pooled features -> logit), the site's :class:`~helpers.operating_point.OperatingPoint`
and the :class:`RecallGuarantee` its local films support, loaded from
``site_calibration.json`` with the model it was fitted on (checked against the engine
by :class:`helpers.serving.pipeline.Screener`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers import config
from helpers.jsonio import read_json_object
from helpers.operating_point import OperatingPoint, sigmoid
from helpers.provenance import FITTED_ON_KEY, FittedOn, ProvenanceMismatch

SITE_FILE_NAME = "site_calibration.json"
DEFAULT_CONFIDENCE = 0.95
BISECTION_STEPS = 60  # halvings of [0, 1]: the bound to about 1e-18, below float precision


@dataclass(frozen=True)
class LinearHead:
    """logit = features @ weights + bias, on the model's 1280 pooled features."""

    weights: np.ndarray  # (D,)
    bias: float

    def logits(self, features) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.weights):
            raise ValueError(f"Expected pooled features (N, {len(self.weights)}), got {features.shape}.")
        return features @ self.weights + self.bias  # (N,)

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "bias": self.bias}

    @classmethod
    def from_dict(cls, saved: dict, source: str = "") -> LinearHead:
        try:
            weights = np.asarray(saved["weights"], dtype=np.float64)
            bias = float(saved["bias"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: 'head' needs 'weights' (a list of numbers) and 'bias' ({error}).") \
                from error
        if weights.ndim != 1 or not np.all(np.isfinite(weights)) or not math.isfinite(bias):
            raise ValueError(f"{source}: the head's weights must be finite numbers, one per feature.")
        return cls(weights, bias)


# --------------------------------------------------------------------------- #
# The recall guarantee
# --------------------------------------------------------------------------- #
def recall_lower_bound(detected: int, positives: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """One-sided Clopper-Pearson lower bound on recall from ``detected`` of ``positives`` films.

    The Beta quantile ``Beta(1 - confidence; detected, positives - detected + 1)``, found by
    bisection on the binomial tail it equals (no SciPy at screening time).

    With all ``k`` detected it is ``(1 - confidence) ** (1 / k)``: 20 of 20 gives 0.861.
    """
    if positives < 1 or not 0 <= detected <= positives:
        raise ValueError(f"Need 0 <= detected <= positives and positives >= 1, got {detected} of {positives}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    if detected == 0:
        return 0.0
    low, high = 0.0, 1.0  # the recall at which `detected` or more of `positives` has probability 1 - confidence
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if _at_least(detected, positives, middle) < 1.0 - confidence:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _at_least(detected: int, positives: int, recall: float) -> float:
    """P(at least ``detected`` of ``positives`` found) when each is found with probability ``recall``."""
    return sum(math.comb(positives, found) * recall ** found * (1.0 - recall) ** (positives - found)
               for found in range(detected, positives + 1))


def positives_needed(target_recall: float, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """Local pneumonia films needed (all detected) before recall >= target can be claimed."""
    if not 0.0 < target_recall < 1.0:
        raise ValueError(f"target_recall must be in (0, 1), got {target_recall}.")
    return int(math.ceil(math.log(1.0 - confidence) / math.log(target_recall)))


@dataclass(frozen=True)
class RecallGuarantee:
    """What the local positives support: recall >= lower_bound with ``confidence``."""

    positives: int
    detected: int
    confidence: float
    lower_bound: float

    @classmethod
    def from_counts(cls, detected: int, positives: int, confidence: float = DEFAULT_CONFIDENCE):
        return cls(int(positives), int(detected), float(confidence),
                   recall_lower_bound(detected, positives, confidence))

    def statement(self) -> str:
        return (f"With {self.positives} local pneumonia films ({self.detected} detected, out of fold), "
                f"recall >= {self.lower_bound:.2f} at {self.confidence:.0%} confidence.")

    def claim(self, target_recall: float) -> str:
        """A sentence that claims ``target_recall`` only when the local films support it."""
        if self.lower_bound >= target_recall:
            return f"Supported: {self.statement()}"
        return (f"Not supported: recall >= {target_recall:g} cannot be claimed at "
                f"{self.confidence:.0%} confidence from {self.positives} local pneumonia films "
                f"({self.detected} detected); that needs at least "
                f"{positives_needed(target_recall, self.confidence)}, all detected. {self.statement()}")

    def to_dict(self) -> dict:
        return {"positives": self.positives, "detected": self.detected, "confidence": self.confidence,
                "lower_bound": self.lower_bound, "statement": self.statement()}


@dataclass(frozen=True)
class SiteCalibration:
    """A site's operating point, the head it applies to, and what the local films support."""

    point: OperatingPoint
    head: LinearHead
    guarantee: RecallGuarantee
    fitted_on: FittedOn | None = None  # the model whose features the head was fitted on; required to save

    def logits(self, features) -> np.ndarray:
        return self.head.logits(features)

    def probabilities(self, features) -> np.ndarray:
        """Raw P(PNEUMONIA) of the site head: what the threshold and band apply to."""
        return sigmoid(self.head.logits(features))

    def to_dict(self) -> dict:
        saved = {**self.point.to_dict(), "head": self.head.to_dict(), "guarantee": self.guarantee.to_dict()}
        if self.fitted_on is not None:
            saved[FITTED_ON_KEY] = self.fitted_on.to_dict()
        return saved

    def require_model(self, model_sha256: str | None, feature_width: int | None, source: str,
                      model_name: str) -> None:
        """Refuse (``ProvenanceMismatch``) unless this calibration was fitted on the model in use."""
        remedy = ("Calibrate the site again on this model (notebook 08, helpers.site.calibrate_site), or use "
                  "the model the calibration was fitted on.")
        if self.fitted_on is None:
            raise ProvenanceMismatch(f"{source} does not record which model it was fitted on. {remedy}")
        if feature_width is not None and len(self.head.weights) != int(feature_width):
            raise ProvenanceMismatch(f"{source} holds a head of {len(self.head.weights)} weights, but {model_name} "
                                     f"gives {feature_width} features per film. {remedy}")
        self.fitted_on.require(model_sha256, feature_width, source, model_name, remedy)

    @classmethod
    def load(cls, path: str | Path | None = None) -> SiteCalibration:
        path = Path(path) if path else config.artifacts_dir() / SITE_FILE_NAME
        remedy = "Write it with helpers.site.calibrate_site(...).save() (notebook 08)."
        if not path.is_file():
            raise FileNotFoundError(f"No site calibration at {path}. {remedy}")
        saved = read_json_object(path, remedy)
        for key in ("head", "guarantee"):
            if not isinstance(saved.get(key), dict):
                raise ValueError(f"{path}: no '{key}' object; this is not a site calibration file. {remedy}")
        guarantee = saved["guarantee"]
        try:
            recall = RecallGuarantee.from_counts(guarantee["detected"], guarantee["positives"],
                                                 guarantee["confidence"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path}: 'guarantee' lacks {error}. {remedy}") from error
        fitted_on = FittedOn.from_dict(saved.get(FITTED_ON_KEY), str(path), (
            "Calibrate the site again with notebook 08 (helpers.site.calibrate_site), which records the model."))
        return cls(OperatingPoint.from_dict(saved, source=str(path), remedy=remedy),
                   LinearHead.from_dict(saved["head"], str(path)), recall, fitted_on)
