"""The metadata beside and inside each ``.tflite`` (labels, input, operating point, provenance), and
:func:`interpret`, the reference implementation of what an app does with it."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import numpy as np

from helpers.data import CLASS_NAMES
from helpers.jsonio import json_ready, write_json
from helpers.operating_point import OperatingPoint
from helpers.serving.engine import REQUIRED_METADATA, read_metadata  # noqa: F401  (read_metadata re-exported)
from helpers.tflite.exporting import model_target, write_model_bytes
from helpers.tflite.int8 import INT8_CONVERTER_PATH
from helpers.tflite.paths import (
    DATASET_PROVENANCE,
    METADATA_SCHEMA_VERSION,
    MODEL_STEM,
    TFLITE_FILE_IDENTIFIER,
    TFLiteModelError,
    check_variant,
    file_sha256,
    metadata_path,
)
from helpers.tflite.runtime import TensorInfo, load_interpreter, read_model_bytes


def decision_block(point: OperatingPoint) -> dict:
    """The metadata's ``decision`` entry: the operating point's JSON form, and where it came from.

    Without metrics.json, the defaults (threshold 0.5, temperature 1, no band) are
    flagged ``"calibrated": False`` so an app can show it is uncalibrated.
    """
    source = Path(point.source).name if point.source != "defaults" else (
        "defaults: metrics.json not found (run notebooks/04_evaluation.ipynb)")
    return {**point.to_dict(), "source": source}


def model_version(keras_model_path: str | os.PathLike | None = None) -> dict:
    """Model version: the Keras file's SHA-256 (short) and training_record.json facts."""
    path = Path(keras_model_path) if keras_model_path else None
    version = {"keras_file": path.name if path else None}
    if path and path.is_file():
        digest = file_sha256(path)
        version.update({"keras_sha256": digest, "version": f"{MODEL_STEM}-{digest[:12]}"})
        record_path = path.parent / "training_record.json"
        if record_path.is_file():
            try:
                record = json.loads(record_path.read_text())
            except json.JSONDecodeError:
                record = {}
            version["training_record"] = {key: record[key] for key in
                                          ("created", "created_utc", "profile", "epochs", "strategy", "seed")
                                          if key in record}
    return version


def build_metadata(
    model_path: str | os.PathLike,
    variant: str,
    operating_point: OperatingPoint,
    keras_model_path: str | os.PathLike | None = None,
    calibration: dict | None = None,
    extra: dict | None = None,
    outputs: dict | None = None,
) -> dict:
    """Everything a phone app needs to run ``model_path`` and read its output.

    Args:
        outputs: for a model with several outputs (the one-pass screening models),
            ``{role: {"shape": [...], "meaning": ...}}``; its ``probability`` output is
            described under ``output`` as for the single-output models.
    """
    import keras
    import tensorflow as tf

    check_variant(variant)
    interpreter = load_interpreter(model_path)
    model_input = TensorInfo.from_details(interpreter.get_input_details()[0])
    output_details = [TensorInfo.from_details(detail) for detail in interpreter.get_output_details()]
    if outputs is None and len(output_details) != 1:
        raise TFLiteModelError(f"{Path(model_path).name} has {len(output_details)} outputs: declare them "
                               "with outputs={role: {'shape': ...}}.")
    probability_output = output_details[0] if outputs is None else next(
        (info for info in output_details if list(info.shape) == list(outputs["probability"]["shape"])), None)
    if probability_output is None:
        raise TFLiteModelError(f"{Path(model_path).name} has no output of the declared probability shape "
                               f"{outputs['probability']['shape']}.")
    image_size = model_input.shape[1]
    input_info = model_input.as_dict()
    input_info.update({
        "layout": "NHWC", "color": "RGB", "height": image_size, "width": image_size,
        "range": [0, 255],
        "preprocessing": ("Decode the image, convert grayscale/RGBA to RGB, resize to 224x224 (bilinear), "
                          "keep raw 0-255 pixel values: no mean/std normalization, the model rescales inside."
                          + (" Pass the pixels as uint8 bytes (scale 1, zero point 0)." if
                             model_input.dtype == np.uint8 else " Pass them as float32.")),
    })
    output_info = probability_output.as_dict()
    output_info["meaning"] = ("P(PNEUMONIA) before calibration; calibrated probability = "
                              "sigmoid(logit(p) / temperature + intercept)")
    metadata = {
        "schema_version": METADATA_SCHEMA_VERSION,
        "model_file": Path(model_path).name,
        "model_sha256": file_sha256(model_path),
        "size_bytes": Path(model_path).stat().st_size,
        "variant": variant,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "labels": list(CLASS_NAMES),
        "positive_label": CLASS_NAMES[1],
        "input": input_info,
        "output": output_info,
        "decision": decision_block(operating_point),
        "model_version": model_version(keras_model_path),
        "provenance": {
            "dataset": DATASET_PROVENANCE,
            "quantization_calibration": calibration,
            "converter": {"path": (INT8_CONVERTER_PATH if variant == "int8" else 'keras Model.export(format="litert")'),
                          "ops": "TFLite builtins only", "tensorflow": tf.__version__, "keras": keras.__version__},
        },
        "intended_use": "Teaching project. Not a medical device: do not use for diagnosis.",
    }
    if outputs is not None:
        metadata["outputs"] = outputs
    if extra:
        metadata.update(extra)
    return metadata




def write_metadata(model_path: str | os.PathLike, metadata: dict) -> Path:
    """Write ``metadata`` as JSON beside ``model_path`` (same stem, ``.json``)."""
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"Metadata lacks {missing}: build it with helpers.tflite.build_metadata.")
    return write_json(metadata, metadata_path(model_path))


EMBEDDED_METADATA_NAME = "cxr_pneumonia_metadata"  # the entry in the .tflite flatbuffer's metadata table
# in the JSON beside the model only: a file cannot hold its own hash
FILE_IDENTITY_KEYS = ("model_sha256", "size_bytes")


def _read_flatbuffer(path: Path):
    """The model as LiteRT's generated schema object (``ModelT``), with clear errors."""
    from ai_edge_litert import schema_py_generated as schema

    content = bytearray(read_model_bytes(path))
    try:
        return schema.ModelT.InitFromPackedBuf(content, 0)
    except Exception as error:  # flatbuffers raises assorted low-level errors on bad offsets
        raise TFLiteModelError(f"{path} could not be parsed as a TFLite model ({type(error).__name__}). "
                               "Re-run notebook 06 to convert it again.") from error


def embed_metadata(model_path: str | os.PathLike, metadata: dict) -> Path:
    """Store ``metadata`` as JSON inside the ``.tflite`` (replacing an earlier copy), atomically.

    Uses the flatbuffer's own ``metadata`` table (name -> buffer), read and written
    with the schema classes that ship with ``ai_edge_litert``: the graph and weights
    are untouched, so the model gives the same outputs. ``model_sha256`` and
    ``size_bytes`` are left out (a file cannot contain its own hash); the JSON beside
    the model has them.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    path = model_target(model_path)[0]  # a .tflite path, checked before reading
    model = _read_flatbuffer(path)
    if any(getattr(buffer, "offset", 0) > 1 for buffer in model.buffers or []):
        raise TFLiteModelError(f"{path} keeps its weights outside the flatbuffer (a model over 2 GB); "
                               "embedding metadata is not supported for it.")
    payload = {key: value for key, value in metadata.items() if key not in FILE_IDENTITY_KEYS}
    data = np.frombuffer(json.dumps(json_ready(payload), allow_nan=False).encode("utf-8"), np.uint8)
    entry = _embedded_entry(model)
    if entry is not None:
        model.buffers[entry.buffer].data = data  # replace the earlier copy in place
    else:
        buffer = schema.BufferT()
        buffer.data = data
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = EMBEDDED_METADATA_NAME
        entry.buffer = len(model.buffers) - 1
        model.metadata = list(model.metadata or []) + [entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
    return write_model_bytes(path, bytes(builder.Output()))


def _embedded_entry(model):
    """The ``metadata`` table entry named :data:`EMBEDDED_METADATA_NAME` of a ``ModelT``, or None."""
    for entry in model.metadata or []:
        name = entry.name.decode("utf-8") if isinstance(entry.name, bytes) else str(entry.name)
        if name == EMBEDDED_METADATA_NAME:
            return entry
    return None


def read_embedded_metadata(model_path: str | os.PathLike) -> dict:
    """The metadata JSON stored inside a ``.tflite`` by :func:`embed_metadata`.

    Raises:
        FileNotFoundError / TFLiteModelError: no model, or not a TFLite model.
        TFLiteModelError: the model has no embedded metadata, or it is not JSON.
    """
    path = Path(model_path)
    model = _read_flatbuffer(path)
    entry = _embedded_entry(model)
    if entry is None:
        raise TFLiteModelError(f"{path} has no embedded metadata ({EMBEDDED_METADATA_NAME!r}). Embed it with "
                               "helpers.tflite.publish_metadata (notebook 06 does it for every variant).")
    raw = model.buffers[entry.buffer].data
    try:
        return json.loads(bytes(np.asarray(raw, np.uint8)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TFLiteModelError(f"The metadata embedded in {path} is not valid JSON ({error}). "
                               "Re-run notebook 06.") from error


def publish_metadata(model_path: str | os.PathLike, metadata: dict) -> Path:
    """Embed ``metadata`` in the model, then write the JSON beside it with the final file's hash and size.

    Returns the JSON path. Record anything that hashes the model file (e.g.
    :func:`write_parity`) after this call.
    """
    embed_metadata(model_path, metadata)
    final = {**metadata, "model_sha256": file_sha256(model_path), "size_bytes": Path(model_path).stat().st_size}
    return write_metadata(model_path, final)


def interpret(probability: float, metadata: dict) -> dict:
    """Turn one model output into what the app shows, following ``metadata["decision"]``.

    The decision rule is :class:`helpers.operating_point.OperatingPoint`'s, read from
    the metadata: the threshold and the band apply to the model's raw output
    probability; the calibration only changes the confidence shown.

    A phone app repeats these steps. On Android, with LiteRT's ``Interpreter``, the int8
    model and the JSON beside it (an app that ships only the ``.tflite`` reads the same
    JSON from the model's ``metadata`` table, entry :data:`EMBEDDED_METADATA_NAME`)::

        val meta = JSONObject(assets.open("pneumonia_mobilenetv2_int8.json").reader().readText())
        val interpreter = Interpreter(loadModelFile("pneumonia_mobilenetv2_int8.tflite"))
        val size = meta.getJSONObject("input").getInt("height")             // 224
        val input = ByteBuffer.allocateDirect(size * size * 3)              // uint8 RGB, raw 0-255
        val pixels = IntArray(size * size)
        Bitmap.createScaledBitmap(xray, size, size, true).getPixels(pixels, 0, size, 0, 0, size, size)
        for (p in pixels) {
            input.put((p shr 16 and 0xFF).toByte()); input.put((p shr 8 and 0xFF).toByte())
            input.put((p and 0xFF).toByte())
        }
        val output = Array(1) { FloatArray(1) }
        interpreter.run(input.rewind(), output)
        val p = output[0][0]                                                 // P(PNEUMONIA), raw
        val d = meta.getJSONObject("decision")
        val band = d.optJSONObject("band")
        val label = when {
            band != null && p >= band.getDouble("low") && p < band.getDouble("high") -> "Refer to a radiologist"
            p >= d.getDouble("threshold") -> "PNEUMONIA"
            else -> "NORMAL"
        }
        val q = p.coerceIn(1e-7f, 1 - 1e-7f)
        val shown = 1 / (1 + exp(-(ln(q / (1 - q)) / d.getDouble("temperature") + d.optDouble("intercept", 0.0))))
        if (!d.getBoolean("calibrated")) showWarning("Uncalibrated model")
    """
    point = OperatingPoint.from_dict(metadata["decision"], source=str(metadata.get("model_file", "")),
                                     remedy="Re-run notebook 06 to rewrite the metadata.")
    probability = float(probability)
    calibrated = float(point.calibrated_from_probability(probability))
    positive = bool(point.predicted([probability])[0])
    label = metadata["labels"][1] if positive else metadata["labels"][0]
    refer = bool(point.referred([probability])[0])
    return {"label": "REFER" if refer else label, "model_label": label, "probability": probability,
            "confidence": calibrated if positive else 1.0 - calibrated,
            "calibrated": point.temperature_fitted}
