"""The operating point: how a model score becomes a decision. The one home of the decision rule.

The rule, written once here and nowhere else in the project:

* **PNEUMONIA** when the model's raw probability ``p >= threshold``, else **NORMAL**;
* **refer to a radiologist** when ``band_low <= p < band_high`` (if there is a band);
* the probability *shown* is calibrated: ``sigmoid(logit / temperature + intercept)``
  (temperature scaling when ``intercept`` is 0, Platt scaling otherwise). Calibration
  is monotonic, so it never changes a decision.

An :class:`OperatingPoint` also says how and on what it was chosen (``chosen_on``,
``rule``, ``provenance``), so a site calibration (``helpers.site``) and the
validation one (notebook 04, in ``metrics.json``) travel in the same shape: the
explorer, the TFLite metadata, the parity checks and the Grad-CAM galleries all read
one with :func:`load_operating_point` / :meth:`OperatingPoint.from_dict`.

    point = load_operating_point()            # <artifacts>/metrics.json, or defaults + warning
    point.decide([0.1, 0.7, 0.95])            # array([ 0, -1,  1]): NORMAL, REFER, PNEUMONIA
    point.decision_names([0.1, 0.7, 0.95])    # ['NORMAL', 'REFER', 'PNEUMONIA']
    point.save("site_operating_point.json")   # strict JSON, with its provenance
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helpers import config
from helpers.config import CLASS_NAMES
from helpers.errors import UnusableInput
from helpers.jsonio import read_json_object, write_json

NORMAL, PNEUMONIA, REFER = 0, 1, -1
REFER_NAME = "REFER"
DEFAULT_THRESHOLD = 0.5
DEFAULT_TEMPERATURE = 1.0
DEFAULTS_SOURCE = "defaults"
SCHEMA = "cxr-operating-point/1"
METRICS_FILE_NAME = "metrics.json"
RULE_TEXT = ("PNEUMONIA when the raw probability p >= threshold; refer to a radiologist when "
             "band low <= p < band high; shown probability sigmoid(logit / temperature + intercept)")
RERUN_NOTEBOOK_04 = ("Re-run notebooks/04_evaluation.ipynb (`python -m helpers.notebooks --only 04`) "
                     "to rewrite it.")
# metrics.json (notebook 04) predates the ``chosen_on`` key; its threshold rule is on validation.
METRICS_CHOSEN_ON = "validation split, by patient (notebook 04, metrics.json)"


# --------------------------------------------------------------------------- #
# The rule on arrays (the only probability-vs-threshold comparisons in the project)
# --------------------------------------------------------------------------- #
class OperatingPointError(UnusableInput):
    """A saved operating point (metrics.json, a site file, a TFLite sidecar) cannot be read; names the file."""


def _probabilities(probabilities) -> np.ndarray:
    array = np.asarray(probabilities, dtype=np.float64)
    if array.size and not np.all(np.isfinite(array)):
        raise ValueError("Probabilities must be finite numbers (got NaN or infinity).")
    return array


def called_pneumonia(probabilities, threshold: float) -> np.ndarray:
    """Bool array, same shape: the model calls PNEUMONIA (``probability >= threshold``)."""
    return _probabilities(probabilities) >= float(threshold)


def in_band(probabilities, low: float, high: float) -> np.ndarray:
    """Bool array, same shape: ``low <= probability < high`` (referred to a radiologist)."""
    probabilities = _probabilities(probabilities)
    return (probabilities >= float(low)) & (probabilities < float(high))


def outcomes(labels, probabilities, threshold: float) -> np.ndarray:
    """(N,) str "TP"/"TN"/"FP"/"FN" at ``threshold`` (label 1 = PNEUMONIA)."""
    positive = np.asarray(labels) == 1
    predicted = called_pneumonia(probabilities, threshold)
    if predicted.shape != positive.shape:
        raise ValueError(f"{positive.shape[0] if positive.ndim else 1} labels but "
                         f"{predicted.shape[0] if predicted.ndim else 1} probabilities.")
    return np.where(predicted, np.where(positive, "TP", "FP"), np.where(positive, "FN", "TN"))


def sigmoid(logits) -> np.ndarray:
    """Numerically stable logistic function, float64."""
    logits = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -logits))


def logit(probabilities, epsilon: float = 1e-12) -> np.ndarray:
    """log(p / (1 - p)), with p clipped to [epsilon, 1 - epsilon]."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), epsilon, 1.0 - epsilon)
    return np.log(p) - np.log1p(-p)


# --------------------------------------------------------------------------- #
# The record
# --------------------------------------------------------------------------- #
def _real_number(value, name: str) -> float:
    """``value`` as a finite float; ValueError for None, bool, text or NaN/inf."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def _band_statistics(statistics) -> dict:
    """The band's extra entries (coverage, accuracy_outside...) kept as JSON scalars."""
    if not isinstance(statistics, dict):
        raise ValueError(f"band_statistics must be a dict, got {type(statistics).__name__}.")
    reserved = {"low", "high"} & set(statistics)
    if reserved:
        raise ValueError(f"band_statistics must not hold {sorted(reserved)}: pass band_low / band_high.")
    return {str(key): value for key, value in statistics.items()
            if isinstance(value, (numbers.Real, str))}  # drops None (a NaN saved as null) and nesting


@dataclass(frozen=True)
class OperatingPoint:
    """How the model decides, and how that was chosen.

    Attributes:
        threshold: PNEUMONIA when the raw probability >= threshold, in [0, 1].
        temperature: > 0; calibrated probability = sigmoid(logit / temperature + intercept).
        intercept: Platt intercept of the calibration (0 for temperature scaling).
        band_low, band_high: referred when low <= raw probability < high (both None: no band).
        band_statistics: the band's other entries (coverage, accuracy_outside...),
            numbers and strings only.
        temperature_fitted: the calibration was fitted (False: stand-in values and the
            shown probability is the raw one).
        chosen_on: what the values were chosen on ("validation", "site: ...").
        rule: how the threshold was chosen, in words.
        provenance: JSON-able facts (method, k, date, model version...).
        source: the file it was read from (or "defaults").
        warning: non-empty when defaults stand in for a missing file; says what to run.
    """

    threshold: float = DEFAULT_THRESHOLD
    temperature: float = DEFAULT_TEMPERATURE
    band_low: float | None = None
    band_high: float | None = None
    band_statistics: dict = field(default_factory=dict, hash=False)
    temperature_fitted: bool = False
    intercept: float = 0.0
    chosen_on: str = ""
    rule: str = ""
    provenance: dict = field(default_factory=dict, hash=False, compare=False)
    source: str = DEFAULTS_SOURCE
    warning: str = ""

    def __post_init__(self):
        threshold = _real_number(self.threshold, "threshold")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}.")
        temperature = _real_number(self.temperature, "temperature")
        if not temperature > 0.0:
            raise ValueError(f"temperature must be a positive number, got {temperature}.")
        intercept = _real_number(self.intercept, "intercept")
        if (self.band_low is None) != (self.band_high is None):
            raise ValueError("Give both band_low and band_high, or neither.")
        low = high = None
        if self.band_low is not None:
            low, high = _real_number(self.band_low, "band low"), _real_number(self.band_high, "band high")
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"The band needs 0 <= low <= high <= 1, got low {low}, high {high}.")
        statistics = _band_statistics(self.band_statistics)
        if statistics and low is None:
            raise ValueError("band_statistics describe a band: give band_low and band_high too.")
        if not isinstance(self.provenance, dict):
            raise ValueError(f"provenance must be a dict, got {type(self.provenance).__name__}.")
        for name, value in (("threshold", threshold), ("temperature", temperature), ("intercept", intercept),
                            ("band_low", low), ("band_high", high), ("band_statistics", statistics)):
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ rule
    @property
    def has_band(self) -> bool:
        return self.band_low is not None

    @property
    def band(self) -> dict | None:
        """``{"low", "high", **band_statistics}``, or None without a band."""
        if not self.has_band:
            return None
        return {"low": self.band_low, "high": self.band_high, **self.band_statistics}

    def predicted(self, probabilities) -> np.ndarray:
        """(N,) int 0/1: the class at the threshold, ignoring the band."""
        return called_pneumonia(probabilities, self.threshold).astype(np.int64)

    def referred(self, probabilities) -> np.ndarray:
        """(N,) bool: the raw probability lies in the referral band."""
        probabilities = _probabilities(probabilities)
        if not self.has_band:
            return np.zeros(probabilities.shape, dtype=bool)
        return in_band(probabilities, self.band_low, self.band_high)

    def decide(self, probabilities) -> np.ndarray:
        """(N,) int: NORMAL 0, PNEUMONIA 1, REFER -1 (inside the band)."""
        return np.where(self.referred(probabilities), REFER, self.predicted(probabilities))

    def decision_names(self, probabilities) -> list[str]:
        """The decisions of :meth:`decide` in words: "NORMAL", "PNEUMONIA" or "REFER"."""
        names = {NORMAL: CLASS_NAMES[0], PNEUMONIA: CLASS_NAMES[1], REFER: REFER_NAME}
        return [names[int(code)] for code in np.atleast_1d(self.decide(probabilities))]

    def outcomes(self, labels, probabilities) -> np.ndarray:
        """(N,) "TP"/"TN"/"FP"/"FN" at this threshold."""
        return outcomes(labels, probabilities, self.threshold)

    def calibrated(self, logits) -> np.ndarray:
        """Calibrated P(PNEUMONIA) from logits, same shape (float64)."""
        return sigmoid(np.asarray(logits, dtype=np.float64) / self.temperature + self.intercept)

    def calibrated_from_probability(self, probabilities) -> np.ndarray:
        """Calibrated P(PNEUMONIA) from raw probabilities (an engine that outputs only p)."""
        return self.calibrated(logit(probabilities))

    def with_threshold(self, threshold: float) -> OperatingPoint:
        """The same point with another threshold (a reader's slider), marked as moved."""
        if float(threshold) == self.threshold:
            return self
        return dataclasses.replace(self, threshold=threshold, rule=f"set by hand (was {self.threshold:.4f})")

    def describe(self) -> str:
        band = (f"referral band [{self.band_low:.3f}, {self.band_high:.3f})" if self.has_band
                else "no referral band")
        calibration = f"temperature {self.temperature:.3f}"
        if self.intercept:
            calibration += f", intercept {self.intercept:+.3f}"
        fitted = "" if self.temperature_fitted else " (not fitted)"
        chosen = f", chosen on {self.chosen_on}" if self.chosen_on else ""
        return f"threshold {self.threshold:.3f}, {calibration}{fitted}, {band}{chosen} (from {self.source})"

    # ------------------------------------------------------------- files
    def to_dict(self) -> dict:
        """The JSON form (what :meth:`from_dict` reads back)."""
        return {
            "schema": SCHEMA, "threshold": self.threshold, "temperature": self.temperature,
            "intercept": self.intercept, "band": self.band, "calibrated": self.temperature_fitted,
            "chosen_on": self.chosen_on, "rule": self.rule, "applies_to": RULE_TEXT,
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, saved: dict, source: str = "", remedy: str = "") -> OperatingPoint:
        """Read :meth:`to_dict`'s form, or the operating-point keys of ``metrics.json``.

        Needs ``threshold``; ``temperature`` (absent: 1, not fitted), ``intercept``,
        ``band`` (null or ``{"low", "high", ...}``), ``chosen_on``, ``rule``/``threshold_rule``
        and ``provenance`` are optional. Anything else is ignored. A value of the wrong
        kind or out of range raises ValueError naming ``source`` and ``remedy``.
        """
        where = f"{source}: " if source else ""
        if not isinstance(saved, dict):
            raise OperatingPointError(f"{where}an operating point must be a JSON object, got "
                             f"{type(saved).__name__}. {remedy}".rstrip())
        if "threshold" not in saved:
            raise OperatingPointError(f"{where}no 'threshold' key (keys: {sorted(saved)}). {remedy}".rstrip())
        band = saved.get("band")
        if band is not None and not (isinstance(band, dict) and band.get("low") is not None
                                     and band.get("high") is not None):
            raise OperatingPointError(f"{where}'band' must be null or an object with numbers 'low' and 'high', "
                             f"got {band!r}. {remedy}".rstrip())
        band = band or {}
        fitted = saved.get("calibrated", "temperature" in saved)
        try:
            return cls(
                threshold=saved["threshold"],
                temperature=saved.get("temperature", DEFAULT_TEMPERATURE),
                intercept=saved.get("intercept", 0.0),
                band_low=band.get("low"), band_high=band.get("high"),
                band_statistics={key: value for key, value in band.items() if key not in ("low", "high")},
                temperature_fitted=bool(fitted),
                chosen_on=str(saved.get("chosen_on") or (METRICS_CHOSEN_ON if "threshold_rule" in saved else "")),
                rule=str(saved.get("rule", saved.get("threshold_rule", ""))),
                provenance=saved.get("provenance") or {},
                source=source or DEFAULTS_SOURCE,
            )
        except ValueError as error:
            raise OperatingPointError(f"{where}{error} {remedy}".rstrip()) from error

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` to ``path`` (strict JSON, atomic)."""
        return write_json(self.to_dict(), path)


def default_metrics_path() -> Path:
    return config.artifacts_dir() / METRICS_FILE_NAME


def load_operating_point(path: str | Path | None = None) -> OperatingPoint:
    """The operating point in ``path`` (default ``<artifacts>/metrics.json``), or defaults.

    * No file at the default path (notebook 04 has not run yet): threshold 0.5,
      temperature 1 (not fitted), no band, ``source == "defaults"`` and a ``warning``
      that says to run notebooks/04_evaluation.ipynb.
    * A file needs only ``threshold`` (see :meth:`OperatingPoint.from_dict`); it may be
      ``metrics.json`` or a file written by :meth:`OperatingPoint.save` (a site
      calibration, say).
    * A file that is not a JSON object, lacks ``threshold`` or holds a value out of
      range raises ValueError naming the file and what to do.
    """
    path = Path(path) if path else default_metrics_path()
    remedy = RERUN_NOTEBOOK_04 if path.name == METRICS_FILE_NAME else (
        "Write it again with helpers.site.calibrate_site(...).save(path), or load metrics.json instead.")
    if not path.is_file():
        if path.name != METRICS_FILE_NAME:
            raise FileNotFoundError(f"No operating-point file at {path}. {remedy}")
        return OperatingPoint(warning=(
            f"No {path.name} at {path}: run notebooks/04_evaluation.ipynb to choose the threshold, "
            f"temperature and referral band on validation. Until then: threshold {DEFAULT_THRESHOLD}, "
            f"temperature {DEFAULT_TEMPERATURE} (uncalibrated), no referral band."))
    return OperatingPoint.from_dict(read_json_object(path, remedy), source=str(path), remedy=remedy)
