"""The prediction explorer's logic: cases by outcome, metrics at a threshold, one image screened.

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
* :func:`discover_engines` -- "which model answers": the Keras model with the
  one-pass outputs (:class:`helpers.one_pass.KerasOnePassEngine`) and the one-pass
  TFLite variants the web app runs (:class:`helpers.serving.engine.OnePassEngine`).
* :class:`Explainer` -- one image (a test case, or the bytes of an upload) through
  the web app's pipeline (:class:`helpers.serving.pipeline.Screener`: decode, one
  pass, guard, decision, heat map from the logit map), shown as an
  :class:`Explanation`: the pipeline's :class:`~helpers.serving.pipeline.ScreeningResult`
  and the truth when known. The explorer builds no verdict of its own, so it gives
  the app's and the CLI's answer, refusals and messages included.

Upload rules live in :mod:`helpers.uploads` (shared with the web app and the batch
screener): what is accepted, and the message for what is not. Grad-CAM by gradients
(:mod:`helpers.gradcam`, notebook 05) explains the Keras model layer by layer; for
this head the pipeline's heat map equals it (notebook 06 checks it).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from helpers import ood
from helpers.data import CLASS_NAMES, IMAGE_SIZE
from helpers.errors import UnusableInput, one_line
from helpers.evaluation import binary_metrics, confusion_counts, metrics_from_counts
from helpers.model import default_model_path
from helpers.one_pass import KerasOnePassEngine
from helpers.operating_point import OperatingPoint, load_operating_point, outcomes
from helpers.predict import predict, predictions_path, read_predictions_for
from helpers.serving.engine import ONE_PASS_VARIANTS, OnePassEngine
from helpers.serving.pipeline import Screener, ScreeningResult, one_pass_path
from helpers.tflite import tflite_dir
from helpers.uploads import ImageInfo

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
    return {"all": len(table), **counts, "referred": int(table["referred"].sum())}


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
KERAS_ENGINE_NAME = "Keras (one pass)"


def discover_engines(model=None, tflite_directory: str | os.PathLike | None = None,
                     point: OperatingPoint | None = None,
                     model_path: str | os.PathLike | None = None) -> tuple[dict, list[str]]:
    """The Keras one-pass engine (when ``model`` is given) and every loadable one-pass ``.tflite``.

    Every engine gives the three outputs of the one-pass model (:mod:`helpers.serving.engine`),
    so each screens through the same :class:`~helpers.serving.pipeline.Screener` as the
    web app. A ``.tflite`` must come from the current Keras model (its metadata's hash,
    :func:`helpers.serving.engine.check_provenance`): an out-of-date one is skipped with the remedy.

    Args:
        point: the Keras engine's operating point (default: :func:`load_operating_point`).
        model_path: the ``.keras`` file ``model`` was loaded from (default: the artifacts' one, if any).

    Returns:
        engines: {name: engine}, Keras first, then the TFLite variants (int8, float16, float32).
        notes: human-readable lines about missing or unloadable TFLite files.
    """
    engines, notes = {}, []
    if model is not None:
        saved = Path(model_path) if model_path else default_model_path()
        engines[KERAS_ENGINE_NAME] = KerasOnePassEngine(model, point or load_operating_point(),
                                                        saved if saved.is_file() else None)
    directory = Path(tflite_directory) if tflite_directory else tflite_dir(create=False)
    files = [one_pass_path(variant, directory) for variant in ONE_PASS_VARIANTS]
    files = [path for path in files if path.is_file()]
    if not files:
        notes.append(f"No one-pass TFLite models in {directory}: run notebooks/06_tflite_conversion.ipynb "
                     "to compare the phone models here.")
    for path in files:
        try:
            engine = OnePassEngine(path)
        except UnusableInput as error:  # ScreeningModelError: a broken, mismatched or out-of-date file
            notes.append(f"Skipped {path.name}: {one_line(error)}")
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
# One image explained: the pipeline's result, seen by the explorer
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Explanation:
    """What the explorer shows for one image: a :class:`ScreeningResult`, and the truth when known.

    The verdict, the probabilities, the heat map and every message are the pipeline's
    (:class:`helpers.serving.pipeline.Screener`, the same as the web app and the CLI);
    this view adds the test label and its outcome.
    """

    result: ScreeningResult
    label: int | None = None  # true label when known (test cases)

    @property
    def name(self) -> str:
        return self.result.name

    @property
    def accepted(self) -> bool:
        return self.result.accepted

    @property
    def message(self) -> str:
        return self.result.message

    @property
    def engine(self) -> str:
        return self.result.engine

    @property
    def image(self) -> np.ndarray | None:
        return self.result.image

    @property
    def heatmap(self) -> np.ndarray | None:
        return self.result.heatmap

    @property
    def probability(self) -> float | None:
        return self.result.probability

    @property
    def calibrated_probability(self) -> float | None:
        return self.result.calibrated_probability

    @property
    def threshold(self) -> float | None:
        return self.result.threshold

    @property
    def decision(self) -> str | None:
        """PNEUMONIA / NORMAL at the threshold (the model's answer, also when referred)."""
        return self.result.model_decision

    @property
    def referred(self) -> bool:
        return self.result.referred

    @property
    def notes(self) -> tuple[str, ...]:
        return self.result.notes

    @property
    def outcome(self) -> str | None:
        """TP/TN/FP/FN when the true label is known."""
        if not self.accepted or self.label is None:
            return None
        return str(outcomes([self.label], [self.probability], self.threshold)[0])

    def summary(self) -> str:
        """The pipeline's one line, and the truth when known."""
        text = self.result.summary()
        if self.outcome is not None:
            text += f"; truth {CLASS_NAMES[self.label]} ({self.outcome})"
        return text


class Explainer:
    """Screen one image with any engine through the pipeline the web app uses.

    Args:
        model: the Keras classifier (the default engine, :class:`KerasOnePassEngine`).
        point: the operating point (threshold / temperature / band); the slider moves its threshold.
        detector: a fitted ``helpers.ood.OODDetector``, or None: then only the colour
            check runs (each result carries a note saying so), as in the app.
        engines: {name: engine} (:func:`discover_engines`); default: the Keras model only.
    """

    def __init__(self, model, point: OperatingPoint, detector=None, engines: dict | None = None):
        self.model = model
        self.point = point
        self.detector = detector
        self.engines = dict(engines) if engines else {KERAS_ENGINE_NAME: KerasOnePassEngine(model, point)}
        self.screeners = {name: Screener(engine, detector) for name, engine in self.engines.items()}

    def screener(self, name: str | None) -> Screener:
        """The pipeline of engine ``name`` (default: the first engine)."""
        if name is None:
            return next(iter(self.screeners.values()))
        if name not in self.screeners:
            raise ValueError(f"Unknown engine {name!r}; available: {list(self.screeners)}.")
        return self.screeners[name]

    def point_at(self, threshold: float | None) -> OperatingPoint:
        return self.point if threshold is None else self.point.with_threshold(threshold)

    def explain_image(self, image: np.ndarray, name: str = "image", engine: str | None = None,
                      threshold: float | None = None, label: int | None = None,
                      known_film: bool = False, info: ImageInfo | None = None) -> Explanation:
        """Screen decoded pixels (224, 224, 3) 0-255.

        Args:
            known_film: a test-set film (a known X-ray): a guard refusal becomes a note
                and the model still answers, so every case can be browsed.
        """
        image = np.asarray(image, dtype=np.float32)
        if image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(f"Expected one ({IMAGE_SIZE}, {IMAGE_SIZE}, 3) image, got {image.shape}; "
                             "decode it with helpers.data.load_image.")
        result = self.screener(engine).screen_pixels(image, name, info, point=self.point_at(threshold),
                                                     known_film=known_film)
        return Explanation(result, label)

    def explain_bytes(self, content: bytes, name: str = "upload", engine: str | None = None,
                      threshold: float | None = None) -> Explanation:
        """Screen an uploaded file exactly as the web app does; an unusable file gives a refusal."""
        return Explanation(self.screener(engine).screen_bytes(content, name, point=self.point_at(threshold)))


# --------------------------------------------------------------------------- #
# Pictures
# --------------------------------------------------------------------------- #
def overlay_image(explanation: Explanation, alpha: float = 0.4) -> np.ndarray | None:
    """The pipeline's heat-map overlay (224, 224, 3) float in [0, 1], or None for a refusal."""
    return explanation.result.overlay(alpha)


def plot_explanation(explanation: Explanation, alpha: float = 0.4):
    """Image and heat-map overlay side by side, the result as the title. Returns the figure."""
    figure, axes = plt.subplots(1, 2, figsize=(6.4, 3.6))
    for ax in axes:
        ax.axis("off")
    if explanation.image is not None:
        axes[0].imshow(np.clip(explanation.image, 0, 255).astype(np.uint8))
        axes[0].set_title("image", fontsize=9)
    overlay_picture = overlay_image(explanation, alpha)
    if overlay_picture is not None:
        axes[1].imshow(overlay_picture)
        axes[1].set_title(f"heat map: why {explanation.decision}", fontsize=9)
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
    """One row per screened upload: analysed, decision / reason (for the notebook)."""
    rows = []
    for explanation in results:
        result = explanation.result
        rows.append({
            "file": result.name,
            "analysed": result.accepted,
            "decision": result.decision if result.accepted else "-",
            "calibrated P(pneumonia)": round(result.calibrated_probability, 3) if result.accepted else None,
            "guard": result.guard or "-",
            "OOD distance": round(result.distance, 1) if result.distance is not None else None,
            "message": result.message if not result.accepted or result.outside_population else "",
        })
    return pd.DataFrame(rows)


def compare_engines(explainer: Explainer, images: np.ndarray, names, threshold: float | None = None):
    """Every engine's answer on the same images, through the pipeline: one row per (image, engine).

    Args:
        images: (N, 224, 224, 3) float 0-255 test films. names: (N,) labels for the rows.
    Returns a DataFrame with image, engine, probability, calibrated probability,
    decision (PNEUMONIA / NORMAL at the threshold) and referral.
    """
    rows = []
    for engine in explainer.engines:
        for name, image in zip(names, np.asarray(images, dtype=np.float32)):
            result = explainer.explain_image(image, str(name), engine, threshold, known_film=True).result
            rows.append({"image": name, "engine": engine, "probability": result.probability,
                         "calibrated": result.calibrated_probability, "decision": result.model_decision,
                         "refer": result.referred})
    return pd.DataFrame(rows)
