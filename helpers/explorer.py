"""The prediction explorer's logic: cases by outcome, metrics at a threshold, one image explained.

Everything here is plain Python/NumPy/pandas so it is tested without a browser;
:mod:`helpers.widgets` only wires these functions to ipywidgets.

* :class:`~helpers.operating_point.OperatingPoint` (from
  :func:`helpers.operating_point.load_operating_point`) -- threshold, temperature and
  referral band from ``metrics.json`` (notebook 04) or a site calibration file, or
  clearly-labelled defaults when it is missing. It holds the decision rule; the
  explorer only asks it.
* :func:`outcome_table` / :func:`select_cases` -- every test image with its outcome
  (TP / TN / FP / FN at a threshold, and whether it falls in the referral band),
  filtered and sorted by confidence.
* :func:`metrics_at_threshold` -- confusion matrix and precision / recall /
  specificity of the whole test set at any threshold.
* :class:`Engine` -- "which model answers": the Keras model or a TFLite variant,
  each a callable mapping pixels (B, 224, 224, 3) float 0-255 to logits (B,).
* :class:`Explainer` -- one image (a test case, or the bytes of an upload) to an
  :class:`Explanation`: probability, calibrated probability, decision, referral,
  Grad-CAM heatmap -- or a rejection message for a corrupt, too small, or
  non-X-ray image (never a traceback).

Upload rules live in :mod:`helpers.uploads` (shared with the web app and the batch
screener): what is accepted, and the message for what is not.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from helpers import ood
from helpers.data import CLASS_NAMES, IMAGE_SIZE
from helpers.errors import UnusableInput, one_line
from helpers.evaluation import binary_metrics, confusion_counts, metrics_from_counts
from helpers.gradcam import compute_gradcam, overlay
from helpers.guard import UNLIKE_POPULATION
from helpers.model import logit_model
from helpers.operating_point import OperatingPoint, logit, outcomes, sigmoid
from helpers.predict import predict, predictions_path, read_predictions_for
from helpers.screening import ONE_PASS_STEM, check_provenance
from helpers.tflite import VARIANTS, TFLiteClassifier, TFLiteModelError, metadata_path, read_metadata, tflite_dir
from helpers.uploads import ImageInfo, decode_upload

OUTCOMES = ("all", "TP", "TN", "FP", "FN", "referred")
OUTCOME_DESCRIPTIONS = {
    "all": "all test images",
    "TP": "true positives: PNEUMONIA called PNEUMONIA",
    "TN": "true negatives: NORMAL called NORMAL",
    "FP": "false positives: NORMAL called PNEUMONIA",
    "FN": "false negatives: PNEUMONIA called NORMAL (missed)",
    "referred": "inside the referral band: sent to a radiologist",
}
SORT_ORDERS = ("most confident first", "least confident first")


# --------------------------------------------------------------------------- #
# Cases by outcome
# --------------------------------------------------------------------------- #
def outcome_table(predictions, point: OperatingPoint, threshold: float | None = None):
    """Each image's outcome at ``threshold`` (default: the operating point's).

    Args:
        predictions: DataFrame with ``path``, ``label``, ``probability``, ``logit``
            (``helpers.predict`` format, e.g. ``predictions/test.csv``).

    Returns:
        A copy with added columns ``calibrated_probability``, ``predicted`` (0/1),
        ``decision`` (class name), ``outcome`` (TP/TN/FP/FN), ``referred`` (bool)
        and ``confidence`` (calibrated probability of the decided class; it can be
        below 0.5 when the threshold is set low to favour recall).
        The index is kept, so rows still point at the same images.
    """
    missing = {"path", "label", "probability", "logit"} - set(predictions.columns)
    if missing:
        raise ValueError(f"The predictions table lacks column(s) {sorted(missing)}; make it "
                         "with helpers.predict.predict(model, examples).")
    if threshold is not None:
        point = point.with_threshold(threshold)
    table = predictions.copy()
    probabilities = table["probability"].to_numpy(dtype=np.float64)  # (N,)
    calibrated = point.calibrated(table["logit"].to_numpy(dtype=np.float64))  # (N,)
    predicted = point.predicted(probabilities)  # (N,) 0/1
    table["calibrated_probability"] = calibrated
    table["predicted"] = predicted
    table["decision"] = np.array(CLASS_NAMES)[predicted]
    table["outcome"] = point.outcomes(table["label"].to_numpy(), probabilities)
    table["referred"] = point.referred(probabilities)
    table["confidence"] = np.where(predicted == 1, calibrated, 1.0 - calibrated)
    return table


def outcome_counts(table) -> dict[str, int]:
    """{outcome: number of images} for every entry of :data:`OUTCOMES`."""
    counts = {name: int((table["outcome"] == name).sum()) for name in ("TP", "TN", "FP", "FN")}
    return {"all": int(len(table)), **counts, "referred": int(table["referred"].sum())}


def select_cases(table, outcome: str = "all", order: str = SORT_ORDERS[0]):
    """The rows of one outcome, sorted by confidence (ties by path, so the order is stable).

    Args:
        table: from :func:`outcome_table`.
        outcome: one of :data:`OUTCOMES` ("referred" = inside the band, any outcome).
        order: one of :data:`SORT_ORDERS`.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}.")
    if order not in SORT_ORDERS:
        raise ValueError(f"order must be one of {SORT_ORDERS}, got {order!r}.")
    if outcome == "all":
        chosen = table
    elif outcome == "referred":
        chosen = table[table["referred"]]
    else:
        chosen = table[table["outcome"] == outcome]
    ascending = order == SORT_ORDERS[1]
    return chosen.sort_values(["confidence", "path"], ascending=[ascending, True], kind="stable")


def metrics_at_threshold(labels, probabilities, threshold: float) -> dict:
    """Confusion counts and metrics of the whole set at ``threshold`` (raw probability).

    ``helpers.evaluation.binary_metrics``: tp, fp, tn, fn, accuracy, precision,
    recall, specificity, f1 (NaN where undefined), roc_auc, pr_auc.
    """
    return binary_metrics(labels, probabilities, threshold)


def threshold_curves(labels, probabilities, thresholds: np.ndarray | None = None):
    """Precision, recall and specificity at each threshold (for the threshold plot).

    Returns a DataFrame with ``threshold``, ``precision``, ``recall``, ``specificity``.
    """
    thresholds = np.linspace(0.0, 1.0, 101) if thresholds is None else np.asarray(thresholds)
    rows = []
    for threshold in thresholds:
        metrics = metrics_from_counts(**confusion_counts(labels, probabilities, float(threshold)))
        rows.append({"threshold": float(threshold), **{k: metrics[k] for k in ("precision", "recall", "specificity")}})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- #
# Engines: which model answers
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Engine:
    """A named model: ``logits(images)`` maps (B, 224, 224, 3) float32 0-255 -> (B,) float64."""

    name: str
    logits: Callable[[np.ndarray], np.ndarray]
    description: str = ""

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (B,), logits (B,)) for images (B, 224, 224, 3) 0-255."""
        logits = np.asarray(self.logits(np.asarray(images, dtype=np.float32)), dtype=np.float64).reshape(-1)
        return sigmoid(logits), logits


KERAS_ENGINE_NAME = "Keras"


def keras_engine(model, name: str = KERAS_ENGINE_NAME) -> Engine:
    """The Keras model, scored through its ``logit`` layer (exact logits)."""
    scorer = logit_model(model)  # (B, 224, 224, 3) -> (B, 1)

    def logits(images: np.ndarray) -> np.ndarray:
        return np.asarray(scorer.predict_on_batch(images), dtype=np.float64).reshape(-1)

    return Engine(name, logits, "Keras model (float32), the reference")


def probability_engine(name: str, predict_probabilities: Callable[[np.ndarray], np.ndarray],
                       description: str = "") -> Engine:
    """Wrap any callable returning P(PNEUMONIA) (B,) as an :class:`Engine` (logit = log(p/(1-p)))."""
    def logits(images: np.ndarray) -> np.ndarray:
        return logit(np.asarray(predict_probabilities(images), dtype=np.float64).reshape(-1))

    return Engine(name, logits, description)


def tflite_engine(path: str | os.PathLike, name: str | None = None) -> Engine:
    """A ``.tflite`` variant through ``helpers.tflite.TFLiteClassifier`` (loaded once, now).

    Its output is a probability (uint8-quantized for int8 models), so the logit is
    recovered as log(p / (1 - p)); a saturated 0 or 1 is clipped to +-27.6. A model
    with metadata must come from the current Keras model
    (:func:`helpers.screening.check_provenance`): an out-of-date one is refused.
    """
    classifier = TFLiteClassifier(path)
    if metadata_path(path).is_file():  # converted by notebook 06: it must come from the current Keras model
        check_provenance(read_metadata(path), Path(path))  # raises ScreeningModelError (a ValueError) if not
    stem = Path(path).stem
    name = name or "TFLite " + stem.split("_mobilenetv2_")[-1]
    return probability_engine(name, classifier.predict, f"TensorFlow Lite model {Path(path).name}")


def discover_engines(model=None, tflite_directory: str | os.PathLike | None = None) -> tuple[dict, list[str]]:
    """The Keras engine (when ``model`` is given) and every loadable ``.tflite`` variant.

    Returns:
        engines: {name: Engine}, Keras first, then TFLite variants by file name.
        notes: human-readable lines about missing or unloadable TFLite files.
    """
    engines, notes = {}, []
    if model is not None:
        engines[KERAS_ENGINE_NAME] = keras_engine(model)
    directory = Path(tflite_directory) if tflite_directory else tflite_dir(create=False)
    files = sorted(path for path in directory.glob("*.tflite")  # the one-pass models are the web app's
                   if not path.name.startswith(ONE_PASS_STEM)) if directory.is_dir() else []
    # float32, float16, dynamic_range, int8 (least to most compressed); unknown names last
    rank = {variant: index for index, variant in enumerate(VARIANTS)}
    files.sort(key=lambda path: (rank.get(path.stem.split("_mobilenetv2_")[-1], len(rank)), path.name))
    if not files:
        notes.append(f"No TFLite models in {directory}: run notebooks/06_tflite_conversion.ipynb "
                     "to compare the phone models here.")
    for path in files:
        try:
            engine = tflite_engine(path)
        except (TFLiteModelError, ValueError) as error:
            notes.append(f"Skipped {path.name}: {error}")
            continue
        engines[engine.name] = engine
    return engines, notes


# --------------------------------------------------------------------------- #
# Uploaded bytes -> checked pixels
# --------------------------------------------------------------------------- #
def read_upload(value) -> list[tuple[str, bytes]]:
    """(name, bytes) of each file in an ipywidgets ``FileUpload.value``.

    ipywidgets 8 gives a tuple of dicts with ``name``, ``type``, ``size``,
    ``last_modified`` and ``content`` (a ``memoryview``). The 7.x dict format
    ``{name: {"metadata": ..., "content": bytes}}`` is accepted too.
    """
    if not value:
        return []
    if isinstance(value, dict):  # ipywidgets 7.x
        return [(str(name), bytes(entry["content"])) for name, entry in value.items()]
    files = []
    for entry in value:
        content = entry["content"]
        content = content.tobytes() if isinstance(content, memoryview) else bytes(content)
        files.append((str(entry.get("name", "upload")), content))
    return files


# --------------------------------------------------------------------------- #
# One image explained
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Explanation:
    """What the explorer shows for one image.

    ``accepted`` False means no prediction: ``message`` says why (bad file, not a
    chest X-ray) and the numeric fields are None.
    """

    name: str
    accepted: bool
    message: str
    engine: str = ""
    image: np.ndarray | None = None  # (224, 224, 3) float32 0-255
    probability: float | None = None  # raw model output P(PNEUMONIA)
    calibrated_probability: float | None = None
    logit: float | None = None
    threshold: float | None = None
    decision: str | None = None  # "PNEUMONIA" / "NORMAL" at the threshold
    referred: bool = False
    heatmap: np.ndarray | None = None  # (224, 224) in [0, 1], Grad-CAM of the decided class
    label: int | None = None  # true label when known (test cases)
    ood: object | None = None  # helpers.ood.OODVerdict
    info: ImageInfo | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def outcome(self) -> str | None:
        """TP/TN/FP/FN when the true label is known."""
        if not self.accepted or self.label is None:
            return None
        return str(outcomes([self.label], [self.probability], self.threshold)[0])

    def summary(self) -> str:
        """One line: decision, calibrated probability, referral (or the rejection)."""
        if not self.accepted:
            return f"{self.name}: not analysed. {self.message}"
        text = (f"{self.name}: {self.decision} (calibrated P(pneumonia) = {self.calibrated_probability:.3f}, "
                f"raw {self.probability:.3f}, threshold {self.threshold:.3f}, {self.engine})")
        if self.referred and self.ood is not None and self.ood.kind == UNLIKE_POPULATION:
            text += "; outside the population the model was validated on: refer to a radiologist"
        elif self.referred:
            text += "; inside the referral band: refer to a radiologist"
        if self.label is not None:
            text += f"; truth {CLASS_NAMES[self.label]} ({self.outcome})"
        return text


class Explainer:
    """Predict and explain one image with any engine; Grad-CAM and OOD use the Keras model.

    Args:
        model: the Keras classifier (Grad-CAM needs its gradients; the OOD features
            come from its ``global_pool`` layer).
        point: the operating point (threshold / temperature / band).
        detector: a fitted ``helpers.ood.OODDetector``, or None to skip the OOD check
            (the explanation then carries a note saying so).
        engines: {name: Engine}; default: the Keras model only.
    """

    def __init__(self, model, point: OperatingPoint, detector=None, engines: dict | None = None):
        self.model = model
        self.point = point
        self.detector = detector
        self.engines = dict(engines) if engines else {KERAS_ENGINE_NAME: keras_engine(model)}
        self._features = ood.feature_model(model) if detector is not None else None

    def engine(self, name: str | None) -> Engine:
        if name is None:
            return next(iter(self.engines.values()))
        if name not in self.engines:
            raise ValueError(f"Unknown engine {name!r}; available: {list(self.engines)}.")
        return self.engines[name]

    def check_ood(self, image: np.ndarray):
        """The OOD verdict for one (224, 224, 3) image, or None without a detector."""
        if self.detector is None:
            return None
        features = ood.compute_features(self._features, image[np.newaxis])  # (1, 1280)
        return self.detector.check(image[np.newaxis], features)[0]

    def explain_image(self, image: np.ndarray, name: str = "image", engine: str | None = None,
                      threshold: float | None = None, label: int | None = None,
                      check_ood: bool = True, refuse_ood: bool = True,
                      info: ImageInfo | None = None) -> Explanation:
        """Explain decoded pixels (224, 224, 3) 0-255.

        Args:
            check_ood: run the OOD check (needs a detector).
            refuse_ood: refuse an image the check rejects (uploads). With False (test
                cases, known X-rays) the prediction is still made and a note says the
                check would have refused the image.
        """
        image = np.asarray(image, dtype=np.float32)
        if image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(f"Expected one ({IMAGE_SIZE}, {IMAGE_SIZE}, 3) image, got {image.shape}; "
                             "decode it with helpers.data.load_image.")
        point = self.point if threshold is None else self.point.with_threshold(threshold)
        threshold = point.threshold
        chosen = self.engine(engine)
        verdict = self.check_ood(image) if check_ood else None
        notes = []
        if check_ood and verdict is None:
            notes.append("No out-of-distribution check (no detector fitted): the model answers "
                         "for any picture.")
        outside = verdict is not None and verdict.kind == UNLIKE_POPULATION
        if verdict is not None and not verdict.accepted and not refuse_ood:
            notes.append("The OOD check would not give a plain decision if this image were uploaded: "
                         + verdict.message)
        elif outside:
            notes.append(verdict.message)
        elif verdict is not None and not verdict.accepted:
            return Explanation(name, False, verdict.message, chosen.name, image=image, label=label,
                               ood=verdict, info=info, threshold=threshold, notes=tuple(notes))
        probabilities, logits = chosen.predict(image[np.newaxis])
        probability, logit_value = float(probabilities[0]), float(logits[0])
        decided_class = int(point.predicted([probability])[0])
        heatmap = compute_gradcam(self.model, image, target=[decided_class])  # (224, 224)
        if chosen.name != KERAS_ENGINE_NAME:
            notes.append("Grad-CAM is computed on the Keras model (TFLite models have no gradients).")
        calibrated = float(point.calibrated(logit_value))
        return Explanation(
            name=name, accepted=True,
            message=verdict.message if verdict is not None else "No OOD check.",
            engine=chosen.name, image=image, probability=probability,
            calibrated_probability=calibrated, logit=logit_value, threshold=threshold,
            decision=CLASS_NAMES[decided_class],
            referred=bool(point.referred([probability])[0]) or (outside and refuse_ood),
            heatmap=heatmap, label=label, ood=verdict, info=info, notes=tuple(notes),
        )

    def explain_bytes(self, content: bytes, name: str = "upload", engine: str | None = None,
                      threshold: float | None = None) -> Explanation:
        """Explain an uploaded file; any unusable input gives a rejected Explanation."""
        try:
            image, info = decode_upload(content, name)
            return self.explain_image(image, name, engine, threshold, info=info)
        except UnusableInput as rejection:  # the file, or the engine's model file: one message, no traceback
            return Explanation(name, False, one_line(rejection), engine or "", threshold=threshold)


# --------------------------------------------------------------------------- #
# Pictures
# --------------------------------------------------------------------------- #
def overlay_image(explanation: Explanation, alpha: float = 0.4) -> np.ndarray | None:
    """The Grad-CAM overlay (224, 224, 3) float in [0, 1], or None without a heatmap."""
    if explanation.heatmap is None or explanation.image is None:
        return None
    return overlay(explanation.image, explanation.heatmap, alpha)


def plot_explanation(explanation: Explanation, alpha: float = 0.4):
    """Image and Grad-CAM overlay side by side, the result as the title. Returns the figure."""
    figure, axes = plt.subplots(1, 2, figsize=(6.4, 3.6))
    for ax in axes:
        ax.axis("off")
    if explanation.image is not None:
        axes[0].imshow(np.clip(explanation.image, 0, 255).astype(np.uint8))
        axes[0].set_title("image", fontsize=9)
    overlay_picture = overlay_image(explanation, alpha)
    if overlay_picture is not None:
        axes[1].imshow(overlay_picture)
        axes[1].set_title(f"Grad-CAM: why {explanation.decision}", fontsize=9)
    else:
        axes[1].text(0.5, 0.5, "no prediction", ha="center", va="center", transform=axes[1].transAxes)
    if explanation.accepted:
        title = (f"{explanation.decision}  calibrated P={explanation.calibrated_probability:.3f}"
                 + ("  REFER" if explanation.referred else "")
                 + (f"  truth {CLASS_NAMES[explanation.label]} ({explanation.outcome})"
                    if explanation.label is not None else ""))
    else:
        title = "rejected: " + explanation.message.split(". ")[0]
    figure.suptitle(f"{explanation.name} [{explanation.engine}]\n{title}", fontsize=9)
    figure.tight_layout()
    return figure


def plot_threshold_curves(curves, threshold: float, chosen_threshold: float | None = None, ax=None,
                          chosen_label: str = "validation-chosen"):
    """Precision / recall / specificity against the threshold, current and chosen marked."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 3.0))
    for column in ("precision", "recall", "specificity"):
        ax.plot(curves["threshold"], curves[column], label=column)
    if chosen_threshold is not None:
        ax.axvline(chosen_threshold, color="black", linestyle="--", linewidth=1,
                   label=f"{chosen_label} {chosen_threshold:.3f}")
    ax.axvline(threshold, color="red", linewidth=1.2, label=f"current {threshold:.3f}")
    ax.set_xlabel("threshold on P(pneumonia)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="lower left")
    ax.figure.tight_layout()
    return ax.figure


def figure_png(figure) -> bytes:
    """A Matplotlib figure as PNG bytes; the figure is closed (no duplicate display)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


# --------------------------------------------------------------------------- #
# The test predictions the browser starts from
# --------------------------------------------------------------------------- #
def load_test_predictions(model, examples, split: str = "test", spot_checks: int = 4,
                     tolerance: float = 1e-3) -> tuple[object, list[str]]:
    """Predictions for ``examples`` in their order (index 0..N-1), and notes for the reader.

    Reads ``<artifacts>/predictions/<split>.csv`` (notebook 04) when it covers every
    image and agrees with ``model`` on ``spot_checks`` images (logits within
    ``tolerance``); otherwise predicts with ``model`` and says why.
    """
    notes = []
    path = predictions_path(split)
    if path.is_file():
        frame = read_predictions_for(examples.paths, split)
        if frame is not None:
            frame["label"] = np.asarray(examples.labels, dtype=np.int64)
            check = np.linspace(0, len(frame) - 1, min(spot_checks, len(frame))).astype(int)
            recomputed = predict(model, examples.subset(check), progress=False)["logit"].to_numpy()
            if np.allclose(recomputed, frame["logit"].to_numpy()[check], atol=tolerance):
                notes.append(f"Test predictions read from {path} (notebook 04).")
                return frame, notes
            notes.append(f"{path} was written by a different model (logits differ): re-run "
                         "notebooks/04_evaluation.ipynb. Predicting here with the loaded model.")
        else:
            notes.append(f"{path} does not cover these {len(examples)} images (another subset): "
                         "predicting here with the loaded model.")
    else:
        notes.append(f"No {path}: run notebooks/04_evaluation.ipynb to save them. Predicting "
                     "here with the loaded model.")
    return predict(model, examples, progress=False), notes


# --------------------------------------------------------------------------- #
# Demo uploads: what a new user might try, as files
# --------------------------------------------------------------------------- #
def demo_uploads(xray_bytes: bytes, seed: int = 42) -> dict[str, bytes]:
    """Files a reader might upload, built from one X-ray and the photos shipped with packages.

    Returns {file name: bytes}: the X-ray enlarged to 1000x800 (PNG, grey), the same
    X-ray with a warm phone-camera tint (JPEG, RGB), a colour photo, a grey portrait,
    a text page, a truncated JPEG, a text file renamed .png, and a 48x48 thumbnail.
    """
    def encoded(array: np.ndarray, fmt: str, **options) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    with Image.open(io.BytesIO(bytes(xray_bytes))) as opened:
        xray = opened.convert("L")
    large = np.asarray(xray.resize((800, 1000), Image.BILINEAR), dtype=np.uint8)  # (1000, 800)
    tint = np.array([1.0, 0.93, 0.82], dtype=np.float32)  # warm cast of a photographed film
    tinted = np.clip(np.asarray(xray, dtype=np.float32)[..., None] * tint + 8, 0, 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    photos = ood._sample_photos()  # china, flower, Grace Hopper (uint8 RGB)
    whole_jpeg = encoded(large, "JPEG", quality=90)
    return {
        "my_xray_1000x800.png": encoded(large, "PNG"),
        "xray_photographed_tinted.jpg": encoded(tinted, "JPEG", quality=90),
        "holiday_photo.jpg": encoded(photos[0], "JPEG", quality=90),
        "portrait_grey.png": encoded(ood._grey(photos[2]), "PNG"),
        "scanned_letter.png": encoded(ood._text_page(rng, 400), "PNG"),
        "download_interrupted.jpg": whole_jpeg[: len(whole_jpeg) // 3],
        "notes_renamed.png": b"Patient notes: cough for 3 days, fever. Not an image.\n",
        "thumbnail_48px.png": encoded(np.asarray(xray.resize((48, 48)), dtype=np.uint8), "PNG"),
    }


def upload_results_table(results: list[Explanation]):
    """One row per explained upload: accepted, decision / reason (for the notebook)."""
    rows = []
    for result in results:
        rows.append({
            "file": result.name,
            "analysed": result.accepted,
            "decision": result.decision if result.accepted else "-",
            "calibrated P(pneumonia)": round(result.calibrated_probability, 3) if result.accepted else None,
            "refer": result.referred if result.accepted else None,
            "OOD distance": round(result.ood.distance, 1) if result.ood is not None else None,
            "message": result.message if not result.accepted else "",
        })
    return pd.DataFrame(rows)


def compare_engines(explainer: Explainer, images: np.ndarray, names, threshold: float | None = None):
    """Every engine's answer on the same images: one row per (image, engine).

    Args:
        images: (N, 224, 224, 3) float 0-255. names: (N,) labels for the rows.
    Returns a DataFrame with image, engine, probability, calibrated probability,
    decision and referral.
    """
    point = explainer.point if threshold is None else explainer.point.with_threshold(threshold)
    images = np.asarray(images, dtype=np.float32)
    rows = []
    for engine in explainer.engines.values():
        probabilities, logits = engine.predict(images)
        calibrated = point.calibrated(logits)
        referred = point.referred(probabilities)
        predicted = point.predicted(probabilities)
        for name, probability, calibrated_value, refer, decided in zip(
                names, probabilities, calibrated, referred, predicted):
            rows.append({"image": name, "engine": engine.name, "probability": float(probability),
                         "calibrated": float(calibrated_value),
                         "decision": CLASS_NAMES[int(decided)], "refer": bool(refer)})
    return pd.DataFrame(rows)
