"""Screen one chest X-ray: bytes in, decision and heat map out, the same path for every front end.

The web app (``app/streamlit_app.py``), the batch screener (``python -m
helpers.screen``), the notebook explorer (:mod:`helpers.explorer`) and the phone
app's exports all run this pipeline, so the upload checks, the decision rule and
the heat map exist once:

1. :func:`helpers.uploads.decode_upload` -- checked bytes -> (224, 224, 3) pixels;
2. one pass of an engine (:class:`helpers.serving.engine.ScreeningEngine`: the
   one-pass ``.tflite`` with LiteRT, or the Keras model with the same outputs) gives
   P(PNEUMONIA), the 7x7 map of the logit (the dense head applied to each
   ``out_relu`` feature vector; its mean is the logit) and the 1280 pooled features;
3. the guard on those features (:class:`helpers.serving.guard.OODDetector`);
4. the decision from the operating point (threshold, refer band, calibration:
   :class:`helpers.operating_point.OperatingPoint`), or a site calibration's;
5. the heat map from the logit map: for this head, Grad-CAM of the logit at
   ``out_relu`` *is* the class activation map, ``ReLU(sign * (map - bias))``
   (derivation and measured check in notebook 06), upsampled and overlaid.

Everything here imports NumPy, Pillow and ``ai_edge_litert`` only: the app's own
requirements (``app/requirements.txt``) install without TensorFlow.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helpers import config, imaging
from helpers.errors import UnusableInput, one_line
from helpers.escaping import spreadsheet_cell
from helpers.operating_point import OperatingPoint
from helpers.provenance import ProvenanceMismatch
from helpers.serving import guard
from helpers.serving.engine import (
    ONE_PASS_STEM,
    ONE_PASS_VARIANTS,
    OnePassEngine,
    ScreeningEngine,
    ScreeningModelError,
    artifacts_of,
)
from helpers.serving.guard import DEFAULT_MAX_COLOURFULNESS, DETECTOR_FILE_NAME, OODDetector, colourfulness
from helpers.serving.site import SITE_FILE_NAME, SiteCalibration
from helpers.uploads import ImageInfo, ImageRejected, decode_upload

MODEL_ENVIRONMENT_VARIABLE = "CXR_SCREENING_MODEL"
SITE_ENVIRONMENT_VARIABLE = "CXR_SITE_CALIBRATION"  # a site_calibration.json (notebook 08) to use
DETECTOR_ENVIRONMENT_VARIABLE = "CXR_OOD_DETECTOR"
PRODUCE_COMMAND = "make run (notebook 06 writes artifacts/tflite/; python -m helpers.notebooks --only 06 after 03-04)"
NOT_A_MEDICAL_DEVICE = ("Teaching project, not a medical device: never use it to diagnose or treat anyone. "
                        "A radiologist reads every film.")
CSV_COLUMNS = ("file", "status", "guard", "decision", "calibrated_probability", "probability", "threshold",
               "refer_band", "referred", "reason", "engine", "model_version", "total_ms")


# --------------------------------------------------------------------------- #
# Finding the files: the phone model, its guard, a site calibration
# --------------------------------------------------------------------------- #
def one_pass_path(variant: str = "int8", directory: str | os.PathLike | None = None) -> Path:
    """``<artifacts>/tflite/pneumonia_mobilenetv2_onepass_<variant>.tflite`` (or in ``directory``)."""
    if variant not in ONE_PASS_VARIANTS:
        raise ValueError(f"Unknown one-pass variant {variant!r}; choose one of {ONE_PASS_VARIANTS}.")
    folder = Path(directory) if directory else config.artifacts_dir("tflite", create=False)
    return folder / f"{ONE_PASS_STEM}_{variant}.tflite"


def find_model(variant: str = "int8", model: str | os.PathLike | None = None) -> Path:
    """The model to load: ``model`` if given, else ``$CXR_SCREENING_MODEL``, else the artifacts folder.

    ``$CXR_SCREENING_MODEL`` may name a ``.tflite`` file or a folder holding the
    one-pass models. Raises :class:`ScreeningModelError` naming the command that
    produces the file when there is none.
    """
    given = model or os.environ.get(MODEL_ENVIRONMENT_VARIABLE)
    if given and Path(given).is_dir():
        path = one_pass_path(variant, given)
    elif given:
        path = Path(given)
    else:
        path = one_pass_path(variant)
    if not path.is_file():
        raise ScreeningModelError(
            f"No screening model at {path}. Produce it with: {PRODUCE_COMMAND}; "
            f"or point {MODEL_ENVIRONMENT_VARIABLE} (or --model) at a {ONE_PASS_STEM}_<variant>.tflite.")
    return path


def find_site_calibration(model_path: Path, site: str | os.PathLike | None = None) -> Path | None:
    """A site calibration to offer: given, ``$CXR_SITE_CALIBRATION``, or ``site_calibration.json`` of the artifacts."""
    given = site or os.environ.get(SITE_ENVIRONMENT_VARIABLE)
    if given:
        if not Path(given).is_file():
            raise ScreeningModelError(f"No site calibration at {given}. Write one with notebook 08 or unset "
                                      f"{SITE_ENVIRONMENT_VARIABLE}.")
        return Path(given)
    beside = artifacts_of(model_path) / SITE_FILE_NAME
    return beside if beside.is_file() else None


def find_detector(model_path: Path, detector: str | os.PathLike | None = None) -> Path | None:
    """The OOD detector for ``model_path``: given, ``$CXR_OOD_DETECTOR``, or ``ood/detector.npz`` of its artifacts."""
    given = detector or os.environ.get(DETECTOR_ENVIRONMENT_VARIABLE)
    if given:
        path = Path(given)
        if not path.is_file():
            raise ScreeningModelError(f"No OOD detector at {path}. Fit it with notebook 07 or unset "
                                      f"{DETECTOR_ENVIRONMENT_VARIABLE}.")
        return path
    beside = artifacts_of(model_path) / "ood" / DETECTOR_FILE_NAME
    return beside if beside.is_file() else None


def heatmap_from_logit_map(logit_map: np.ndarray, bias: float, positive: bool,
                           size: tuple[int, int] = (imaging.IMAGE_SIZE, imaging.IMAGE_SIZE)) -> np.ndarray:
    """Grad-CAM of the decided class from the logit map: (7, 7) -> (224, 224) in [0, 1].

    With logit = bias + mean over positions of w . A_ij, the Grad-CAM weights are
    w / 49, so the weighted sum is (map_ij - bias) / 49; the ReLU keeps evidence for
    the decided class (sign -1 for NORMAL) and the per-image normalization removes
    the 1/49. Then the same bilinear upsampling as :mod:`helpers.gradcam`.
    """
    sign = 1.0 if positive else -1.0
    evidence = np.maximum(sign * (np.asarray(logit_map, dtype=np.float64) - bias), 0.0)  # (7, 7)
    return imaging.upsample_maps(imaging.normalize_maps(evidence[np.newaxis]), size)[0]


# --------------------------------------------------------------------------- #
# One result per file
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class ScreeningResult:
    """What the app shows for one file. ``accepted`` False: no decision, ``message`` says why."""

    name: str
    accepted: bool
    message: str
    engine: str = ""
    model_version: str = ""
    decision: str | None = None  # "PNEUMONIA", "NORMAL" or "REFER" (inside the band)
    model_decision: str | None = None  # PNEUMONIA / NORMAL at the threshold, even when referred
    probability: float | None = None  # raw P(PNEUMONIA): what the threshold and band apply to
    calibrated_probability: float | None = None  # the confidence to show
    threshold: float | None = None
    band: tuple[float, float] | None = None
    distance: float | None = None  # OOD feature distance
    image: np.ndarray | None = None  # (224, 224, 3) float32 0-255
    heatmap: np.ndarray | None = None  # (224, 224) in [0, 1]
    timings_ms: dict = field(default_factory=dict)
    info: ImageInfo | None = None
    notes: tuple[str, ...] = ()
    inside_band: bool = False  # the raw probability lies in the operating point's refer band
    guard: str = ""  # the guard's verdict (helpers.guard.VERDICT_KINDS); "" when no check ran (unreadable file)

    @property
    def referred(self) -> bool:
        return self.decision == "REFER"

    @property
    def outside_population(self) -> bool:
        """An X-ray unlike the population the model was validated on: referred, probability secondary."""
        return self.guard == guard.UNLIKE_POPULATION

    @property
    def total_ms(self) -> float:
        return float(sum(self.timings_ms.values()))

    def overlay(self, alpha: float = 0.4) -> np.ndarray | None:
        """The heat map over the film, (224, 224, 3) in [0, 1]; None for a refusal."""
        if self.heatmap is None or self.image is None:
            return None
        return imaging.overlay(self.image, self.heatmap, alpha)

    def summary(self) -> str:
        """One line: the decision with its calibrated probability, or the refusal."""
        if not self.accepted:
            return f"{self.name}: not analysed. {self.message}"
        if self.outside_population:
            return (f"{self.name}: refer to a radiologist: outside the population the model was validated on "
                    f"(for reference only: model leans {self.model_decision}, calibrated P(pneumonia) = "
                    f"{self.calibrated_probability:.3f}; {self.engine})")
        words = {"PNEUMONIA": "PNEUMONIA", "NORMAL": "NORMAL",
                 "REFER": f"refer to a radiologist (model leans {self.model_decision})"}[self.decision]
        return (f"{self.name}: {words}; calibrated P(pneumonia) = {self.calibrated_probability:.3f} "
                f"(raw {self.probability:.3f}, threshold {self.threshold:.3f}; {self.engine})")

    def row(self) -> dict:
        """The CSV / table row (:data:`CSV_COLUMNS`)."""
        def rounded(value, digits=4):
            return None if value is None else round(float(value), digits)

        return {"file": self.name, "status": "decided" if self.accepted else "refused", "guard": self.guard,
                "decision": self.decision or "", "calibrated_probability": rounded(self.calibrated_probability),
                "probability": rounded(self.probability), "threshold": rounded(self.threshold),
                "refer_band": "" if not self.band else f"{self.band[0]:.3f}-{self.band[1]:.3f}",
                "referred": self.referred if self.accepted else "",
                "reason": self.message if not self.accepted or self.outside_population else "",
                "engine": self.engine, "model_version": self.model_version, "total_ms": round(self.total_ms, 1)}


def results_csv(results: list[ScreeningResult]) -> str:
    """All rows as CSV text (header :data:`CSV_COLUMNS`); a cell that would be a spreadsheet formula is quoted."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow({column: spreadsheet_cell(value) for column, value in result.row().items()})
    return buffer.getvalue()


# --------------------------------------------------------------------------- #
# The pipeline
# --------------------------------------------------------------------------- #
class Screener:
    """Bytes -> :class:`ScreeningResult` with one engine and (optionally) an OOD detector.

    Never raises for a bad upload: every refusal is a result with a message naming
    the file and what to do. Any engine with the three outputs will do
    (:class:`~helpers.serving.engine.ScreeningEngine`), so the app's LiteRT model and the
    notebooks' Keras model answer through the same checks, rule and heat map.
    """

    def __init__(self, engine: ScreeningEngine, detector: OODDetector | None = None,
                 site: SiteCalibration | None = None):
        self.engine = engine  # OnePassEngine (LiteRT) or helpers.one_pass.KerasOnePassEngine
        self.detector = detector
        self.site = site  # its head and operating point replace the model's

    @classmethod
    def load(cls, variant: str = "int8", model: str | os.PathLike | None = None,
             detector: str | os.PathLike | None = None, num_threads: int | None = 2,
             allow_stale: bool = False, site: str | os.PathLike | None = None) -> Screener:
        """The engine from :func:`find_model` (provenance checked) and the detector from :func:`find_detector`.

        ``site``: a site calibration file (notebook 08) whose operating point (and head,
        applied to the pooled features) replaces the validation one.
        """
        path = find_model(variant, model)
        engine = OnePassEngine(path, num_threads, allow_stale)
        detector_path = find_detector(path, detector)
        try:
            loaded = OODDetector.load(detector_path) if detector_path else None
        except ProvenanceMismatch:
            raise
        except (OSError, ValueError, KeyError) as error:
            raise ScreeningModelError(f"The OOD detector {detector_path} cannot be read ({error}). "
                                      "Re-run notebook 07 to fit it again.") from error
        if loaded is not None:
            loaded.require_model(engine.keras_sha256, str(detector_path), path.name)
        calibration = None
        if site:
            try:
                calibration = SiteCalibration.load(site)
            except ProvenanceMismatch:
                raise
            except (OSError, ValueError) as error:
                raise ScreeningModelError(str(error)) from error
            calibration.require_model(engine.keras_sha256, engine.feature_width, str(site), path.name)
        return cls(engine, loaded, calibration)

    @property
    def point(self) -> OperatingPoint:
        """The active operating point: the site calibration's when one is loaded, else the model's."""
        return self.site.point if self.site is not None else self.engine.point

    @property
    def identity(self) -> tuple:
        """What decides its answers: the model file and version, the guard, the operating point."""
        guard_facts = None if self.detector is None else (self.detector.distance_threshold, self.detector.fitted_on)
        return (str(self.engine.path), self.engine.version, guard_facts,
                json.dumps(self.point.to_dict(), sort_keys=True, default=str))

    def _refusal(self, name: str, message: str, timings: dict, point: OperatingPoint, **extra) -> ScreeningResult:
        return ScreeningResult(name, False, message, self.engine.name, self.engine.version,
                               threshold=point.threshold, timings_ms=dict(timings), **extra)

    def screen_bytes(self, content: bytes, name: str = "upload",
                     point: OperatingPoint | None = None) -> ScreeningResult:
        """Check, decode and screen the bytes of one file (``point``: another operating point, e.g. a slider's)."""
        start = time.perf_counter()
        try:
            pixels, info = decode_upload(content, name)  # (224, 224, 3) float32 0-255
        except ImageRejected as rejection:
            return self._refusal(name, str(rejection), {"decode": (time.perf_counter() - start) * 1e3},
                                 point or self.point)
        decoded = time.perf_counter()
        return self.screen_pixels(pixels, name, info, {"decode": (decoded - start) * 1e3}, point)

    def _guard(self, pixels: np.ndarray, features: np.ndarray) -> tuple[bool, str, float | None, str, list[str]]:
        """(answered, message, distance, verdict kind, notes): the detector's verdict, or the colour check alone."""
        if self.detector is not None:
            verdict = self.detector.check(pixels[np.newaxis], features[np.newaxis])[0]
            return verdict.answered, verdict.message, verdict.distance, verdict.kind, []
        colour = float(colourfulness(pixels[np.newaxis])[0])
        accepted = colour <= DEFAULT_MAX_COLOURFULNESS
        message = ("Looks grey like an X-ray (colour check only)." if accepted else
                   f"This image is in colour (colourfulness {colour:.0f}); chest X-rays are grey. "
                   "Upload a frontal chest X-ray.")
        note = ("No OOD detector found (artifacts/ood/detector.npz, notebook 07): only the colour "
                "check ran, so the model may answer for pictures that are not chest X-rays.")
        return accepted, message, None, guard.CHEST_XRAY if accepted else guard.NOT_XRAY, [note]

    def screen_pixels(self, pixels: np.ndarray, name: str = "image", info: ImageInfo | None = None,
                      timings: dict | None = None, point: OperatingPoint | None = None,
                      known_film: bool = False) -> ScreeningResult:
        """Screen decoded pixels (224, 224, 3) 0-255.

        Args:
            point: the operating point to decide with (default :attr:`point`).
            known_film: a film known to be a chest X-ray of the test set (the explorer's
                cases): a guard refusal becomes a note and the model still answers, so
                every case can be browsed. Uploads never set it.
        """
        timings = dict(timings or {})
        point = point or self.point
        start = time.perf_counter()
        try:
            probability, logit_map, features = self.engine.run(pixels)
        except UnusableInput as error:  # the engine's model file broke: a refusal naming it, not a traceback
            return self._refusal(name, f"{name}: not screened: {one_line(error)}", timings, point, info=info)
        timings["model"] = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        accepted, message, distance, guard_kind, notes = self._guard(pixels, features)
        timings["ood"] = (time.perf_counter() - start) * 1e3
        if not accepted and known_film:
            notes.append(f"The guard would not give a decision if this film were uploaded: {message}")
        elif not accepted:
            return self._refusal(name, f"{name}: {message}", timings, point, distance=distance, info=info,
                                 notes=tuple(notes), guard=guard_kind,
                                 image=np.asarray(pixels, dtype=np.float32))  # what was sent, without a heat map
        start = time.perf_counter()
        if self.site is not None:  # the site's head re-weighs the same pooled features
            probability = float(self.site.probabilities(features[np.newaxis])[0])
            notes.append(f"Site calibration active ({point.chosen_on}); the heat map is the model's own.")
        positive = bool(point.predicted([probability])[0])
        model_decision = "PNEUMONIA" if positive else "NORMAL"
        referred = bool(point.referred([probability])[0])
        outside = guard_kind == guard.UNLIKE_POPULATION  # an X-ray unlike the validated population: refer
        heatmap = heatmap_from_logit_map(logit_map, self.engine.bias, positive)
        timings["heatmap"] = (time.perf_counter() - start) * 1e3
        band = (point.band_low, point.band_high) if point.band_low is not None else None
        return ScreeningResult(
            name=name, accepted=True, message=message, engine=self.engine.name, model_version=self.engine.version,
            decision="REFER" if referred or outside else model_decision, model_decision=model_decision,
            probability=probability, calibrated_probability=float(point.calibrated_from_probability(probability)),
            threshold=point.threshold, band=band, distance=distance, image=np.asarray(pixels, dtype=np.float32),
            heatmap=heatmap, timings_ms=timings, info=info, notes=tuple(notes), inside_band=referred,
            guard=guard_kind)

    def screen_and_overlay(self, content: bytes, name: str = "upload",
                           alpha: float = 0.4) -> tuple[ScreeningResult, bytes | None]:
        """:meth:`screen_bytes` plus the overlay as PNG bytes (timed as ``overlay``): the app's whole path."""
        result = self.screen_bytes(content, name)
        if not result.accepted:
            return result, None
        start = time.perf_counter()
        picture = imaging.overlay_png(result.image, result.heatmap, alpha)
        result.timings_ms["overlay"] = (time.perf_counter() - start) * 1e3
        return result, picture


class ResultCache:
    """Screening results by file content, for one user interface session: unchanged files are not re-screened.

    The key is the SHA-256 of the file's bytes, its name (messages quote it) and the
    screener that answered (:meth:`Screener.identity`), so moving a slider or switching
    back to an engine reuses every result, while new bytes, a new name or another
    model or operating point screen again. At most ``capacity`` results are kept
    (least recently used dropped first); thread-safe.
    """

    def __init__(self, capacity: int = 64):
        if capacity < 1:
            raise ValueError(f"A result cache needs a capacity of at least 1, got {capacity}.")
        self.capacity = int(capacity)
        self._results: collections.OrderedDict[tuple, ScreeningResult] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.screened = 0  # how many screens it had to run (the rest came from the cache)

    def screen(self, screener: Screener, content: bytes, name: str) -> ScreeningResult:
        """The result for these bytes from this screener: from the cache, or screened now and kept."""
        key = (hashlib.sha256(content).hexdigest(), name, screener.identity)
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
        result = screener.screen_bytes(content, name)
        with self._lock:
            self.screened += 1
            self._results[key] = result
            self._results.move_to_end(key)
            while len(self._results) > self.capacity:
                self._results.popitem(last=False)
        return result


def sample_films(per_class: int = 3, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """A few official **test** films to try without uploading, when the dataset is configured.

    Reads the Kaggle folder layout (``chest_xray/test/{NORMAL,PNEUMONIA}/``) under
    ``data_dir`` or ``$CXR_DATA_DIR``; returns [] when there is none (the TFRecord
    layout needs TensorFlow to read, which the app does without). First files in
    name order, so the list is the same on every machine.
    """
    root = data_dir or os.environ.get("CXR_DATA_DIR")
    if not root:
        return []
    films = []
    for class_name in ("NORMAL", "PNEUMONIA"):
        folder = Path(root) / "chest_xray" / "test" / class_name
        if folder.is_dir():
            films += sorted(path for path in folder.iterdir()
                            if path.suffix.lower() in (".jpeg", ".jpg", ".png"))[:per_class]
    return films
