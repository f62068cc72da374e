"""TensorFlow Lite (LiteRT): convert, run, check parity, and describe the phone models.

Four variants of the saved Keras classifier are written to ``<artifacts>/tflite/``:

==================  ===========================================================  ==========
variant             what is quantized                                            input
==================  ===========================================================  ==========
``float32``         nothing (reference conversion)                               float32
``float16``         weights stored as float16, computed in float32 on CPU        float32
``dynamic_range``   weights int8, activations quantized on the fly               float32
``int8``            weights and activations int8, calibrated on training         uint8
                    images, except the float stem (see below); output float32
==================  ===========================================================  ==========

The first three go through Keras 3's own exporter, ``model.export(path,
format="litert", **converter_kwargs)``: on the TensorFlow backend it writes a
SavedModel and hands every keyword to ``tf.lite.TFLiteConverter``. Keras' default
``supported_ops`` include ``SELECT_TF_OPS`` (Flex); we override it with builtin ops
only, so an op the phone runtime lacks fails the conversion instead of the app.

The int8 model is built the same way by hand (:func:`quantize_int8`): a SavedModel
from ``keras.export.ExportArchive``, ``tf.lite.TFLiteConverter.from_saved_model``
with the same int8 settings (:func:`converter_options`), then the public
``tf.lite.experimental.QuantizationDebugger``, which measures each op's int8 error
on training images and quantizes the model with a chosen set of ops kept in float
(*selective quantization*). What stays float, and why, is in :func:`float_stem_layers`:
the input rescaling and MobileNetV2's first inverted-residual block, where the
debugger finds by far the largest int8 error.

Every model keeps the Keras contract: raw RGB pixels 0-255 at 224x224 in (the model
rescales inside), P(PNEUMONIA) out. The int8 model takes **uint8** pixels: a phone
app passes its bitmap bytes straight in, and the input tensor is 4x smaller than
float. Its SavedModel takes uint8 and casts to float first, so inside the model the
pixel values are exact (as with scale 1, zero point 0); the input tensor is a plain
uint8 tensor (no quantization parameters; :func:`convert` checks it).
Its output is float32, so every variant is read the same way. Int8 errors push the
logit by a roughly constant amount through MobileNetV2; :func:`estimate_logit_shift`
measures it on training images and :func:`with_logit_bias_shift` removes it before
the final conversion (bias correction).

Beside each ``.tflite`` a JSON file (same stem) holds what an app needs: labels,
input size and range, the operating point (threshold, temperature, abstention band)
from ``<artifacts>/metrics.json``, model version and data provenance. The same JSON
is also embedded in the model file itself, in the flatbuffer's ``metadata`` table
under :data:`EMBEDDED_METADATA_NAME` (:func:`publish_metadata`), so a model copied
without its JSON still carries its threshold and labels.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import io
import json
import math
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from helpers import config
from helpers.data import CLASS_NAMES
from helpers.errors import UnusableInput
from helpers.jsonio import json_ready, write_json
from helpers.operating_point import OperatingPoint, called_pneumonia

VARIANTS = ("float32", "float16", "dynamic_range", "int8")
TFLITE_SUBDIR = "tflite"
MODEL_STEM = "pneumonia_mobilenetv2"
METADATA_SCHEMA_VERSION = 1
TFLITE_FILE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer
# Stated tolerances (max |probability difference| vs Keras) used by the tests on a
# tiny model and reported by the notebook for MobileNetV2.
PROBABILITY_TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "dynamic_range": 3e-2, "int8": 5e-2}

DATASET_PROVENANCE = {
    "name": "Chest X-Ray Images (Pneumonia), paediatric, Guangzhou Women and Children's Medical Center",
    "citation": ("Kermany, Zhang, Goldbaum et al., Identifying Medical Diagnoses and Treatable "
                 "Diseases by Image-Based Deep Learning, Cell 172(5):1122-1131, 2018"),
    "doi": "10.1016/j.cell.2018.02.010",
    "data_doi": "10.17632/rscbjbr9sj.2",
    "license": "CC BY 4.0",
    "splits": ("train: official train split minus 20% of patients held out for validation "
               "(helpers.data.load_splits, seed 42); test: official test split (624 images)"),
}


class TFLiteModelError(UnusableInput):
    """A .tflite or metadata file is corrupt, unreadable or not what the code expects."""


# --------------------------------------------------------------------------- #
# Paths
# --------------------------------------------------------------------------- #
def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"Unknown TFLite variant {variant!r}: use one of {VARIANTS}.")


def tflite_dir(create: bool = True) -> Path:
    """``<artifacts>/tflite``."""
    return config.artifacts_dir(TFLITE_SUBDIR, create=create)


def tflite_path(variant: str, directory: str | os.PathLike | None = None) -> Path:
    """``<directory or artifacts/tflite>/pneumonia_mobilenetv2_<variant>.tflite``."""
    _check_variant(variant)
    directory = Path(directory) if directory is not None else tflite_dir()
    return directory / f"{MODEL_STEM}_{variant}.tflite"


def metadata_path(model_path: str | os.PathLike) -> Path:
    """The metadata file beside a ``.tflite``: same folder and stem, ``.json``."""
    return Path(model_path).with_suffix(".json")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- #
# Conversion
# --------------------------------------------------------------------------- #
def representative_dataset(
    images: np.ndarray, dtype=np.float32
) -> Callable[[], Iterator[list[np.ndarray]]]:
    """Calibration generator for full-integer quantization.

    Args:
        images: (N, S, S, 3) uint8 or float 0-255 pixels, decoded by ``helpers.data``
            exactly as at inference (no normalization: the model rescales inside).
        dtype: what the model's input takes: ``np.float32`` (Keras' exporter, the
            default) or ``np.uint8`` (the int8 variant's SavedModel; pixels are rounded).

    Returns:
        A zero-argument function yielding ``[image]`` with image (1, S, S, 3) ``dtype``,
        the form ``TFLiteConverter.representative_dataset`` expects.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"Calibration images must be (N, S, S, 3) with N >= 1, got shape {images.shape}.")
    if images.min() < 0 or images.max() > 255:
        raise ValueError(
            f"Calibration pixels must be raw 0-255 (got {images.min():.3g}..{images.max():.3g}): "
            "decode them with helpers.data (decode_images_cached / load_image), do not normalize."
        )
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.uint8)):
        raise ValueError(f"dtype must be np.float32 or np.uint8, got {dtype}.")

    def generator() -> Iterator[list[np.ndarray]]:
        for image in images:
            if np.dtype(dtype) == np.uint8:
                yield [quantize(image[np.newaxis], np.uint8, 1.0, 0)]  # (1, S, S, 3) uint8 0-255
            else:
                yield [image[np.newaxis].astype(np.float32)]  # (1, S, S, 3) float32 0-255

    return generator


def evenly_spaced(images: np.ndarray, count: int | None) -> np.ndarray:
    """``count`` rows spread evenly through ``images`` (all of them if ``count`` is None or larger).

    Splits are stored class by class, so ``images[:count]`` may hold one class only
    (the first 120 of the 500 calibration images are all NORMAL); evenly spaced rows
    keep the class mix.
    """
    images = np.asarray(images)
    if count is None or count >= len(images):
        return images
    if count < 1:
        raise ValueError(f"count must be >= 1 (or None for all), got {count}.")
    return images[np.linspace(0, len(images) - 1, count).round().astype(int)]


def converter_options(variant: str, calibration_images: np.ndarray | None = None) -> dict:
    """Keyword arguments for ``model.export(path, format="litert", **options)``.

    Keras' LiteRT exporter (TensorFlow backend) sets each key on its
    ``tf.lite.TFLiteConverter``; ``target_spec`` is given as a dict. For ``"int8"``
    :func:`quantize_int8` sets the same keys on its own converter.

    Args:
        variant: one of :data:`VARIANTS`.
        calibration_images: (N, S, S, 3) raw 0-255 training images; required for
            ``"int8"`` and ignored otherwise.
    """
    import tensorflow as tf

    _check_variant(variant)
    builtins_only = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex (SELECT_TF_OPS): fail early
    if variant == "float32":
        return {"target_spec": {"supported_ops": builtins_only}}
    if variant == "float16":
        return {
            "optimizations": [tf.lite.Optimize.DEFAULT],
            "target_spec": {"supported_ops": builtins_only, "supported_types": [tf.float16]},
        }
    if variant == "dynamic_range":
        return {"optimizations": [tf.lite.Optimize.DEFAULT], "target_spec": {"supported_ops": builtins_only}}
    if calibration_images is None:
        raise ValueError("The int8 variant needs calibration_images: (N, 224, 224, 3) raw 0-255 "
                         "training images, e.g. data.decode_images_cached(splits['train'].head(1000)).")
    return {
        "optimizations": [tf.lite.Optimize.DEFAULT],
        "representative_dataset": representative_dataset(calibration_images),
        # Integer kernels, builtin ops only: conversion fails if an op has no TFLite builtin.
        "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
        "inference_input_type": tf.uint8,  # raw 0-255 pixels, scale 1, zero point 0
        "inference_output_type": tf.float32,  # P(PNEUMONIA) as a float, like the other variants
    }


def convert(
    model,
    variant: str,
    path: str | os.PathLike | None = None,
    calibration_images: np.ndarray | None = None,
    float_layers: Sequence[str] | None = None,
) -> Path:
    """Convert ``model`` to one TFLite variant.

    float32, float16 and dynamic range go through ``model.export(format="litert")``;
    int8 through :func:`quantize_int8` (selective quantization). The signature has a
    fixed batch of 1, ``(1, S, S, 3)`` float32 (uint8 for int8), which is what a phone
    app runs; no tensor resizing is needed.

    Args:
        model: the Keras classifier (input (B, S, S, 3) raw 0-255, output (B, 1)).
        variant: one of :data:`VARIANTS`.
        path: target ``.tflite`` (default :func:`tflite_path`).
        calibration_images: (N, S, S, 3) raw 0-255 training images, for ``"int8"``.
        float_layers: for ``"int8"``, Keras layers kept in float (default
            :func:`float_stem_layers`; ``()`` quantizes everything).

    Returns:
        The written path.

    Raises:
        TFLiteModelError: the int8 uint8 input does not take raw pixels as they are.
    """
    import tensorflow as tf

    path, temporary = _model_target(path if path is not None else tflite_path(variant))
    if variant == "int8":
        return quantize_int8(model, calibration_images, float_layers).save(path)
    options = converter_options(variant, calibration_images)
    _, height, width, channels = model.input_shape
    signature = [tf.TensorSpec((1, height, width, channels), tf.float32, name=_input_name(model))]
    model.export(str(temporary), format="litert", input_signature=signature, verbose=False, **options)
    temporary.replace(path)  # never leave a half-written model under the real name
    return path


def _model_target(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(path, temporary)`` for writing a model atomically: write ``temporary``, then rename it.

    Checks the ``.tflite`` suffix and creates the folder.
    """
    path = Path(path)
    if path.suffix != ".tflite":
        raise ValueError(f"A TFLite model path must end with .tflite, got {path}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, path.with_suffix(".part.tflite")


def _write_model_bytes(path: str | os.PathLike, content: bytes) -> Path:
    """Write a ``.tflite`` flatbuffer atomically (see :func:`_model_target`); returns the path."""
    path, temporary = _model_target(path)
    temporary.write_bytes(content)
    temporary.replace(path)  # never leave a half-written model under the real name
    return path


def _input_name(model) -> str:
    name = getattr(model.inputs[0], "name", None) or "image"
    return name.split(":")[0]


def _check_uint8_input_is_raw_pixels(path: Path) -> None:
    """A uint8 input must take pixel values as they are.

    Either unquantized (scale 0: the int8 variant's SavedModel casts it to float) or
    quantized with scale 1 and zero point 0 (a converter-made input quantization).
    """
    details = _load_interpreter(path).get_input_details()[0]
    scale, zero_point = details["quantization"]
    if details["dtype"] == np.uint8 and scale != 0.0 and not (abs(scale - 1.0) < 1e-6 and zero_point == 0):
        raise TFLiteModelError(
            f"{path.name}: the uint8 input has scale {scale} and zero point {zero_point}, not 1 and 0, "
            "so raw pixels would need rescaling on the phone. The calibration images do not span "
            "0-255: use more (and real) training images."
        )


# --------------------------------------------------------------------------- #
# Selective int8: the QuantizationDebugger keeps a few ops in float
# --------------------------------------------------------------------------- #
FLOAT_STEM_END_LAYER = "expanded_conv_project_BN"  # last layer of MobileNetV2's first block
# The Quantization Debugger guide flags an op when rmse/scale of its int8 output (vs
# float, same input) exceeds 0.7; pure rounding noise gives 1/sqrt(12) = 0.29.
SUSPECT_RMSE_OVER_SCALE = 0.7
DEBUG_IMAGES = 100  # training images the debugger measures per-op errors on
INT8_CONVERTER_PATH = ("keras.export.ExportArchive (uint8 input) -> tf.lite.TFLiteConverter.from_saved_model "
                       "-> tf.lite.experimental.QuantizationDebugger.get_nondebug_quantized_model (float stem)")


def float_stem_layers(model, end_layer: str = FLOAT_STEM_END_LAYER) -> tuple[str, ...]:
    """Keras layers the int8 variant keeps in float: every layer from the input through ``end_layer``.

    For MobileNetV2 that is the *stem*: the ``to_minus1_plus1`` rescaling, ``Conv1``
    (+ batch norm, ReLU6) and the first inverted-residual block ``expanded_conv``
    (depthwise + projection), the 112x112 layers before the first stride-2 block.
    Everything after it (blocks 1-16, the last conv, pooling and the logit) is int8.

    Why (measured, notebook 06):

    * The Quantization Debugger, on 100 training images, finds the largest int8 error
      of the whole network in ``expanded_conv_depthwise`` (rmse/scale 1.18, the only
      conv above the 0.7 flag; every other conv is at most 0.59). This is a known
      MobileNetV2 trait: its first depthwise layer, batch norm folded in, has
      per-channel ranges spread over orders of magnitude (Nagel et al. 2019,
      "Data-Free Quantization"). Keeping only that layer float is not enough, since it
      still amplifies the int8 noise of ``Conv1``'s output, so the whole prefix from
      the input stays float (the input rescaling then costs nothing either).
    * The float part ends on the block's 16-channel output, the smallest tensor there
      is to quantize, and holds 0.1% of the weights: +3 KB and about +0.1 ms on one core.
    * These are ImageNet weights that training never changes (fine-tuning unfreezes
      from ``block_11_expand``, see ``helpers.training``), so the rule carries over to
      a retrained model; notebook 06 re-measures every op and lists any other op above
      the flag (:meth:`Int8Quantization.suspects`) before a model ships.

    On the 1,044 validation images (bias-corrected, threshold from metrics.json) the
    float stem agreed with Keras on 99.52% of decisions (5 disagreements, accuracy
    +0.10 points) against 99.43% (6) fully int8, at 2.72 MB and 1.96x float32's
    single-thread speed; with two other calibration sets 4 and 5 against 7 and 7.
    The speed ratio depends on the CPU: on a Xeon with AVX-512 the float stem gave
    1.64-1.73x and fully int8 only 1.47-1.50x.

    Returns ``()`` (fully int8) for a model without ``end_layer``.
    """
    names = [layer.name for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if end_layer not in names:
        return ()
    return tuple(names[: names.index(end_layer) + 1])


def _mentions_layer(tensor_name: str, layer: str) -> bool:
    """Whether a (possibly fused, ``;``-joined) TFLite tensor name comes from Keras layer ``layer``.

    Keras 3 names a layer's ops ``<model>_1/<layer>_1/<op>``: a path component equal
    to the layer name, optionally with a ``_<n>`` suffix.
    """
    pattern = re.compile(re.escape(layer) + r"(_\d+)?")
    return any(pattern.fullmatch(component)
               for part in tensor_name.split(";") for component in part.split("/"))


def _short_tensor_name(tensor_name: str) -> str:
    """``model_1/Conv1_relu_1/Relu6;...`` -> ``Conv1_relu_1/Relu6`` (first fused name, no model scope)."""
    first = tensor_name.split(";")[0]
    return first.split("/", 1)[1] if "/" in first else first


@dataclass(frozen=True)
class Int8Quantization:
    """The int8 model from :func:`quantize_int8` and what the debugger measured.

    Attributes:
        content: the ``.tflite`` flatbuffer.
        float_layers: Keras layers asked to stay float.
        float_nodes: the TFLite op outputs denylisted for them (kept float).
        layer_errors: one dict per quantizable op of the *fully* int8 model, in graph
            order: ``op``, ``tensor`` (short name), ``rmse_over_scale`` (rmse of the
            int8 output against the float op on the same input, in quantization
            steps), ``max_abs_error``, ``mean_error``, ``scale``, ``float`` (kept float
            here), measured on training images.
        debug_images: how many training images the errors were measured on.
        all_int8_content: the same calibration with nothing kept float, for comparison.
    """

    content: bytes
    float_layers: tuple[str, ...]
    float_nodes: tuple[str, ...]
    layer_errors: list[dict]
    debug_images: int
    all_int8_content: bytes

    def suspects(self, threshold: float = SUSPECT_RMSE_OVER_SCALE) -> list[dict]:
        """The int8 ops (not kept float) whose rmse/scale exceeds ``threshold``, worst first."""
        found = [e for e in self.layer_errors if not e["float"] and e["rmse_over_scale"] > threshold]
        return sorted(found, key=lambda e: -e["rmse_over_scale"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model (atomically) and check its uint8 input takes raw pixels."""
        path = _write_model_bytes(path, self.content)
        _check_uint8_input_is_raw_pixels(path)
        return path

    def summary(self) -> dict:
        """JSON-ready facts for the model's metadata."""
        return {"method": "selective int8 (tf.lite.experimental.QuantizationDebugger)",
                "float_layers": list(self.float_layers), "float_ops": len(self.float_nodes),
                "debug_images": self.debug_images,
                "suspects_above_0.7": [e["tensor"] for e in self.suspects()]}


def quantize_int8(
    model,
    calibration_images: np.ndarray,
    float_layers: Sequence[str] | None = None,
    debug_images: int = DEBUG_IMAGES,
) -> Int8Quantization:
    """Full-integer int8 with a few layers kept in float (selective quantization), public APIs only.

    1. ``keras.export.ExportArchive`` writes a SavedModel whose input is **uint8**
       pixels, cast to float32 before the model (exact: raw pixels, as scale 1 and
       zero point 0 would give).
    2. ``tf.lite.TFLiteConverter.from_saved_model`` with :func:`converter_options`
       ``("int8")``: the settings Keras' exporter would get, builtin ops only,
       calibrated on ``calibration_images``.
    3. ``tf.lite.experimental.QuantizationDebugger`` calibrates, measures every op's
       int8 error on ``debug_images`` of them, and
       ``get_nondebug_quantized_model()`` quantizes everything except the ops of
       ``float_layers`` (``QuantizationDebugOptions(denylisted_nodes=...)``). The
       output is float32 (a dequantize op at the end).

    Args:
        model: the Keras classifier (input (B, S, S, 3) raw 0-255, output (B, 1)).
        calibration_images: (N, S, S, 3) raw 0-255 **training** images.
        float_layers: Keras layer names kept in float; default
            :func:`float_stem_layers`, ``()`` for a fully int8 model.
        debug_images: how many of the calibration images (:func:`evenly_spaced`) the
            per-op errors are measured on.

    Raises:
        ValueError: no calibration images, an unknown layer name, or float layers
            that match no TFLite op.
    """
    import tensorflow as tf

    options = converter_options("int8", calibration_images)  # validates the images
    images = np.asarray(calibration_images)  # (N, S, S, 3) 0-255
    layer_names = {layer.name for layer in model.layers}
    float_layers = float_stem_layers(model) if float_layers is None else tuple(float_layers)
    unknown = [name for name in float_layers if name not in layer_names]
    if unknown:
        raise ValueError(f"float_layers {unknown} are not layers of {model.name!r}: use names from "
                         "model.layers, e.g. tflite.float_stem_layers(model).")
    if debug_images < 1:
        raise ValueError(f"debug_images must be >= 1, got {debug_images}.")
    debug_set = evenly_spaced(images, debug_images)  # (D, S, S, 3)

    with tempfile.TemporaryDirectory(prefix="cxr-int8-") as saved_model_dir:
        _write_uint8_saved_model(model, saved_model_dir)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.experimental_enable_resource_variables = True  # as Keras' exporter
        _set_converter_options(converter, options)
        converter.representative_dataset = representative_dataset(images, dtype=np.uint8)
        with quiet_quantizer():
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=representative_dataset(debug_set, dtype=np.uint8))
            debugger.run()  # per-op errors of the fully int8 model
            statistics = io.StringIO()
            debugger.layer_statistics_dump(statistics)
            rows = list(csv.DictReader(io.StringIO(statistics.getvalue())))
            float_nodes = tuple(row["tensor_name"] for row in rows
                                if any(_mentions_layer(row["tensor_name"], layer) for layer in float_layers))
            if float_layers and not float_nodes:
                raise ValueError(f"float_layers {list(float_layers)} match no TFLite op of {model.name!r} "
                                 "(were they fused away?): choose other layers.")
            all_int8_content = debugger.get_nondebug_quantized_model()  # nothing denylisted yet
            content = all_int8_content
            if float_nodes:
                debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(float_nodes))
                content = debugger.get_nondebug_quantized_model()

    layer_errors = []
    for row in rows:
        scale = float(row["scale"])
        layer_errors.append({
            "op": row["op_name"], "tensor": _short_tensor_name(row["tensor_name"]),
            "rmse_over_scale": math.sqrt(float(row["mean_squared_error"])) / scale if scale else float("nan"),
            "max_abs_error": float(row["max_abs_error"]), "mean_error": float(row["mean_error"]),
            "scale": scale, "float": row["tensor_name"] in float_nodes})
    return Int8Quantization(bytes(content), float_layers, float_nodes, layer_errors, len(debug_set),
                            bytes(all_int8_content))


# The quantizer's C++ code writes one "fully_quantize: 0, inference_type: 6, ..." line
# to standard error per call, and the debugger builds its float reference with the
# deprecated tf.lite.Interpreter (TensorFlow's code, not ours; we run models with
# LiteRT). Both are noise in a notebook: quiet_quantizer drops exactly these.
QUANTIZER_NOISE_LINE = re.compile(r"^fully_quantize: \d+, inference_type: ")
INTERPRETER_DEPRECATION_WARNING = r"\s*Warning: tf\.lite\.Interpreter is deprecated"


@contextlib.contextmanager
def quiet_quantizer(noise: re.Pattern = QUANTIZER_NOISE_LINE):
    """Hide the quantizer's known log lines; every other line written to standard error is kept.

    Native code writes to file descriptor 2, below Python's ``sys.stderr``, so the
    descriptor is pointed at a temporary file for the duration and its lines are
    written back to ``sys.stderr`` afterwards, less those matching ``noise``, also
    when the block raises. The deprecation warning of ``tf.lite.Interpreter`` raised
    inside TensorFlow's debugger is ignored (only that message).
    """
    sys.stderr.flush()
    saved_descriptor = os.dup(2)
    with tempfile.TemporaryFile() as captured, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=INTERPRETER_DEPRECATION_WARNING, category=UserWarning)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved_descriptor, 2)
            os.close(saved_descriptor)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", errors="replace").splitlines()
                    if not noise.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def _write_uint8_saved_model(model, directory: str | os.PathLike) -> None:
    """SavedModel of ``model`` taking (1, S, S, 3) uint8 pixels, cast to float32 first."""
    import keras
    import tensorflow as tf

    _, height, width, channels = model.input_shape

    def serve(image):  # (1, S, S, 3) uint8 raw pixels
        return model(tf.cast(image, tf.float32), training=False)  # (1, 1) P(PNEUMONIA)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=[
        tf.TensorSpec((1, height, width, channels), tf.uint8, name=_input_name(model))])
    archive.write_out(str(directory), verbose=False)


def _set_converter_options(converter, options: dict) -> None:
    """Set :func:`converter_options` on a converter, as Keras' LiteRT exporter does."""
    for key, value in options.items():
        if key == "target_spec":
            for spec_key, spec_value in value.items():
                setattr(converter.target_spec, spec_key, spec_value)
        else:
            setattr(converter, key, value)


def convert_all(
    model,
    calibration_images: np.ndarray,
    directory: str | os.PathLike | None = None,
    variants: Sequence[str] = VARIANTS,
    progress: bool = True,
) -> dict[str, Path]:
    """Convert every variant; returns {variant: path}."""
    import time

    paths = {}
    for variant in variants:
        start = time.perf_counter()
        paths[variant] = convert(model, variant, tflite_path(variant, directory), calibration_images)
        if progress:
            size_mb = paths[variant].stat().st_size / 1e6
            print(f"{variant:>13}: {size_mb:6.2f} MB in {time.perf_counter() - start:5.1f} s -> {paths[variant].name}")
    return paths


# --------------------------------------------------------------------------- #
# Bias correction of the int8 logit
# --------------------------------------------------------------------------- #
def tflite_pooled_features(path: str | os.PathLike, images: np.ndarray, pool_layer: str = "global_pool") -> np.ndarray:
    """Pooled features (N, F) float32 inside a ``.tflite``, dequantized.

    Runs without the XNNPACK delegate and with intermediate tensors kept (slow,
    ~0.2 s per image for MobileNetV2): a diagnostic and bias-correction tool, not
    an inference path.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    classifier = TFLiteClassifier(path)  # validates the file
    interpreter = Interpreter(
        model_path=str(path), num_threads=2, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    matches = [t for t in interpreter.get_tensor_details()
               if pool_layer in t["name"] and len(t["shape"]) == 2 and t["shape"][0] == 1 and t["shape"][1] > 1]
    if not matches:
        raise TFLiteModelError(f"{Path(path).name} has no (1, F) tensor named like {pool_layer!r}.")
    pooled = matches[-1]
    scale, zero_point = pooled["quantization"]
    features = []
    for image in classifier.prepare_input(images):  # (S, S, 3) input dtype
        interpreter.set_tensor(classifier.input.index, image[np.newaxis])
        interpreter.invoke()
        raw = interpreter.get_tensor(pooled["index"])  # (1, F)
        features.append(dequantize(raw, scale, zero_point) if scale else raw.astype(np.float32))
    return np.concatenate(features)  # (N, F)


def estimate_logit_shift(model, int8_path: str | os.PathLike, images: np.ndarray) -> dict[str, float]:
    """How far int8 quantization moves the logit, on average, on ``images``.

    The logit is linear in the pooled features, so the shift of one image is
    ``w . (f_int8 - f_keras)``. Quantization errors do not average out to zero
    through MobileNetV2 (rounding and clipping have a sign), so the mean shift is a
    systematic bias that :func:`with_logit_bias_shift` can remove ("bias correction",
    Nagel et al. 2019). Use training images only, like the calibration set, with
    both classes in their usual mix (:func:`evenly_spaced`, not the first N of a
    class-sorted array: the shift differs by class, 0.21 on NORMAL images only vs
    0.34 on all 500 calibration images for the float-stem int8 model).

    Returns:
        ``{"mean", "std", "n_images"}`` of the per-image logit shift.
    """
    import keras

    from helpers.model import LOGIT_LAYER, POOL_LAYER

    feature_model = keras.Model(model.inputs, model.get_layer(POOL_LAYER).output)
    keras_features = feature_model.predict(np.asarray(images, dtype=np.float32), batch_size=32, verbose=0)  # (N, F)
    lite_features = tflite_pooled_features(int8_path, images, POOL_LAYER)  # (N, F)
    weights = model.get_layer(LOGIT_LAYER).get_weights()[0][:, 0]  # (F,)
    shifts = (lite_features - keras_features) @ weights  # (N,)
    return {"mean": float(shifts.mean()), "std": float(shifts.std()), "n_images": int(len(shifts))}


def with_logit_bias_shift(model, shift: float):
    """A copy of ``model`` whose ``logit`` bias is lowered by ``shift`` (the original is untouched)."""
    import keras

    from helpers.model import LOGIT_LAYER

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    kernel, bias = copy.get_layer(LOGIT_LAYER).get_weights()
    copy.get_layer(LOGIT_LAYER).set_weights([kernel, bias - np.float32(shift)])
    return copy


# --------------------------------------------------------------------------- #
# Running a .tflite: one wrapper for float, uint8 and int8 I/O
# --------------------------------------------------------------------------- #
def _interpreter_class():
    """LiteRT's interpreter; ``tf.lite.Interpreter`` only where LiteRT has no wheel."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # e.g. a platform without an ai-edge-litert wheel
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


def _read_model_bytes(path: Path) -> bytes:
    """The bytes of a ``.tflite``, with a clear error when it is missing or not a TFLite flatbuffer."""
    if not path.is_file():
        raise FileNotFoundError(
            f"No TFLite model at {path}. Create it with notebooks/06_tflite_conversion.ipynb "
            "(python -m helpers.notebooks --only 06), or set CXR_ARTIFACTS_DIR to the artifacts "
            "folder that holds tflite/."
        )
    content = path.read_bytes()
    if len(content) < 8 or content[4:8] != TFLITE_FILE_IDENTIFIER:
        raise TFLiteModelError(
            f"{path} is not a TFLite model ({len(content)} bytes, no 'TFL3' flatbuffer identifier): "
            "it is empty, truncated or another kind of file. Delete it and convert again "
            "(notebooks/06_tflite_conversion.ipynb)."
        )
    return content


def _load_interpreter(path: str | os.PathLike, num_threads: int | None = 1):
    path = Path(path)
    content = _read_model_bytes(path)
    try:
        interpreter = _interpreter_class()(model_content=content, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise TFLiteModelError(
            f"{path} could not be loaded by the LiteRT interpreter ({str(error).strip()[:300]}). "
            "The file is corrupt or was written for a newer runtime: delete it and convert again "
            "(notebooks/06_tflite_conversion.ipynb)."
        ) from error
    return interpreter


def quantize(values: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    """Real values -> integer tensor values: ``round(x / scale) + zero_point``, clipped."""
    info = np.iinfo(dtype)
    quantized = np.round(np.asarray(values, dtype=np.float64) / scale) + zero_point
    return np.clip(quantized, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor values -> real values: ``(q - zero_point) * scale`` as float32."""
    return ((np.asarray(values, dtype=np.float64) - zero_point) * scale).astype(np.float32)


@dataclass(frozen=True)
class TensorInfo:
    """What one input/output tensor wants: name, shape, dtype and (scale, zero point)."""

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return np.issubdtype(self.dtype, np.integer) and self.scale != 0.0

    @classmethod
    def from_details(cls, details: dict) -> "TensorInfo":
        scale, zero_point = details["quantization"]
        return cls(details["name"], int(details["index"]), tuple(int(d) for d in details["shape"]),
                   np.dtype(details["dtype"]), float(scale), int(zero_point))

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.name,
                "quantization": {"scale": self.scale, "zero_point": self.zero_point} if self.quantized else None}


def to_input_dtype(info: TensorInfo, images: np.ndarray) -> np.ndarray:
    """0-255 pixels -> what the input tensor ``info`` takes.

    Quantized inputs use their (scale, zero point); an unquantized integer input (the
    int8 variants' uint8 pixels, cast to float inside) takes the pixel values rounded
    and clipped, i.e. scale 1 and zero point 0.
    """
    if info.quantized:
        return quantize(images, info.dtype, info.scale, info.zero_point)
    if np.issubdtype(info.dtype, np.integer):
        return quantize(images, info.dtype, 1.0, 0)
    return np.asarray(images).astype(info.dtype)


def output_values(interpreter, info: TensorInfo) -> np.ndarray:
    """The output tensor ``info`` after an invocation, as float32 (dequantized if integer)."""
    raw = interpreter.get_tensor(info.index)
    if info.quantized:
        return dequantize(raw, info.scale, info.zero_point)
    return raw.astype(np.float32)


def check_classifier_shapes(path: Path, input_shape, output_shape) -> None:
    """Raise :class:`TFLiteModelError` unless the tensors are (B, S, S, 3) pixels in and (B, 1) probability out."""
    input_shape, output_shape = tuple(int(n) for n in input_shape), tuple(int(n) for n in output_shape)
    image_ok = len(input_shape) == 4 and input_shape[3] == 3 and input_shape[1] == input_shape[2] > 0
    if not image_ok or len(output_shape) != 2 or output_shape[1] != 1:
        raise TFLiteModelError(
            f"{path.name} takes input {list(input_shape)} and returns {list(output_shape)}; a pneumonia classifier "
            "takes (batch, size, size, 3) pixels and returns (batch, 1) probabilities. It is another model: "
            "re-run notebook 06 to convert this project's model.")


class TFLiteClassifier:
    """Run a single-input, single-output classifier ``.tflite`` on raw 0-255 pixels.

    Handles float, uint8 and int8 input and output: float pixels are quantized with
    the input tensor's (scale, zero point), integer outputs dequantized with the
    output's, so :meth:`predict` always takes (N, S, S, 3) 0-255 pixels and returns
    (N,) float32 probabilities whatever the variant.

    Raises:
        FileNotFoundError: no file at ``path`` (with how to create it).
        TFLiteModelError: the file is empty, truncated, corrupt or has more than one
            input or output.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = 1):
        self.path = Path(path)
        self.num_threads = num_threads
        self.interpreter = _load_interpreter(self.path, num_threads)
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise TFLiteModelError(f"{self.path.name} has {len(inputs)} inputs and {len(outputs)} outputs; "
                                   "TFLiteClassifier expects one image input and one probability output.")
        self.input = TensorInfo.from_details(inputs[0])
        self.output = TensorInfo.from_details(outputs[0])
        check_classifier_shapes(self.path, self.input.shape, self.output.shape)
        self._batch_size = self.input.shape[0] if self.input.shape[0] > 0 else 1

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    @property
    def image_size(self) -> int:
        return self.input.shape[1]

    def __repr__(self) -> str:
        return (f"TFLiteClassifier({self.path.name}, input {self.input.dtype.name}{list(self.input.shape)}, "
                f"output {self.output.dtype.name}{list(self.output.shape)}, threads={self.num_threads})")

    def prepare_input(self, images: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) 0-255 pixels -> the input tensor's dtype (:func:`to_input_dtype`)."""
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input.shape[1:]:
            raise ValueError(f"Expected images of shape (N, {', '.join(map(str, self.input.shape[1:]))}) "
                             f"(raw 0-255 RGB from helpers.data), got {images.shape}.")
        return to_input_dtype(self.input, images)

    def read_output(self) -> np.ndarray:
        """The output tensor of the last invocation as float32 (dequantized if integer)."""
        return output_values(self.interpreter, self.output)

    def set_input(self, batch: np.ndarray) -> None:
        """Place one already-prepared batch (from :meth:`prepare_input`) in the input tensor."""
        self.interpreter.set_tensor(self.input.index, batch)

    def invoke(self) -> None:
        self.interpreter.invoke()

    def predict(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """Probabilities for (N, S, S, 3) raw 0-255 pixels -> (N,) float32."""
        from helpers.progress import progress_bar

        prepared = self.prepare_input(images)  # (N, S, S, 3) input dtype
        probabilities = np.empty(len(prepared), dtype=np.float32)
        starts = range(0, len(prepared), self._batch_size)
        for start in progress_bar(starts, desc=self.path.stem, disable=not progress):
            batch = prepared[start:start + self._batch_size]
            if len(batch) < self._batch_size:  # only with a fixed batch > 1: pad the tail
                batch = np.concatenate([batch, np.repeat(batch[-1:], self._batch_size - len(batch), 0)])
            self.set_input(batch)
            self.invoke()
            output = self.read_output().reshape(self._batch_size, -1)[:, 0]  # (B,) P(PNEUMONIA)
            stop = min(start + self._batch_size, len(prepared))
            probabilities[start:stop] = output[: stop - start]
        return probabilities


# --------------------------------------------------------------------------- #
# Parity with the Keras model
# --------------------------------------------------------------------------- #
def decision_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, recall (sensitivity), specificity and precision at ``threshold``."""
    from helpers.evaluation import confusion_counts, metrics_from_counts

    metrics = metrics_from_counts(**confusion_counts(np.asarray(labels).astype(np.int64),
                                                     np.asarray(probabilities).reshape(-1), threshold))
    return {name: metrics[name] for name in ("accuracy", "recall", "specificity", "precision")}


def parity(
    reference_probabilities: np.ndarray,
    probabilities: np.ndarray,
    labels: np.ndarray,
    threshold: float,
) -> dict[str, float]:
    """How closely one variant follows the Keras model on the same images.

    Args:
        reference_probabilities: (N,) Keras P(PNEUMONIA).
        probabilities: (N,) the variant's P(PNEUMONIA) on the same images.
        labels: (N,) 1 = PNEUMONIA.
        threshold: the operating point (from metrics.json).

    Returns:
        ``agreement`` (share of identical decisions), ``disagreements`` (count),
        ``max_abs_diff`` / ``mean_abs_diff`` of probabilities, and the variant's
        ``test_accuracy``, ``test_recall``, ``test_specificity``, ``test_precision``
        with ``accuracy_delta_points`` (variant - Keras, percentage points).
    """
    reference = np.asarray(reference_probabilities, dtype=np.float64).reshape(-1)
    candidate = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if not (len(reference) == len(candidate) == len(labels)) or len(labels) == 0:
        raise ValueError(f"Need as many reference probabilities ({len(reference)}) as probabilities "
                         f"({len(candidate)}) and labels ({len(labels)}), at least one.")
    same = called_pneumonia(reference, threshold) == called_pneumonia(candidate, threshold)
    difference = np.abs(reference - candidate)
    mine = decision_metrics(candidate, labels, threshold)
    theirs = decision_metrics(reference, labels, threshold)
    result = {
        "n_images": int(len(labels)),
        "agreement": float(np.mean(same)),
        "disagreements": int(np.sum(~same)),
        "max_abs_diff": float(difference.max()),
        "mean_abs_diff": float(difference.mean()),
    }
    result.update({f"test_{name}": float(value) for name, value in mine.items()})
    result["accuracy_delta_points"] = 100.0 * (mine["accuracy"] - theirs["accuracy"])
    return result


def parity_table(
    reference_probabilities: np.ndarray,
    variant_probabilities: dict[str, np.ndarray],
    labels: np.ndarray,
    threshold: float,
    sizes: dict[str, int] | None = None,
):
    """One row per variant (plus a ``keras`` reference row): a pandas DataFrame."""
    import pandas as pd

    rows = {"keras": parity(reference_probabilities, reference_probabilities, labels, threshold)}
    for variant, probabilities in variant_probabilities.items():
        rows[variant] = parity(reference_probabilities, probabilities, labels, threshold)
    table = pd.DataFrame.from_dict(rows, orient="index")
    if sizes:
        table.insert(0, "size_mb", pd.Series({k: v / 1e6 for k, v in sizes.items()}))
    table.index.name = "variant"
    return table


# --------------------------------------------------------------------------- #
# Metadata beside each .tflite
# --------------------------------------------------------------------------- #
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

    _check_variant(variant)
    interpreter = _load_interpreter(model_path)
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


_REQUIRED_METADATA = ("schema_version", "model_file", "variant", "labels", "input", "output", "decision")


def write_metadata(model_path: str | os.PathLike, metadata: dict) -> Path:
    """Write ``metadata`` as JSON beside ``model_path`` (same stem, ``.json``)."""
    missing = [key for key in _REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"Metadata lacks {missing}: build it with helpers.tflite.build_metadata.")
    return write_json(metadata, metadata_path(model_path))


EMBEDDED_METADATA_NAME = "cxr_pneumonia_metadata"  # the entry in the .tflite flatbuffer's metadata table
FILE_IDENTITY_KEYS = ("model_sha256", "size_bytes")  # in the JSON beside the model only: a file cannot hold its own hash


def _read_flatbuffer(path: Path):
    """The model as LiteRT's generated schema object (``ModelT``), with clear errors."""
    from ai_edge_litert import schema_py_generated as schema

    content = bytearray(_read_model_bytes(path))
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

    path = _model_target(model_path)[0]  # a .tflite path, checked before reading
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
    return _write_model_bytes(path, bytes(builder.Output()))


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


def read_metadata(path: str | os.PathLike) -> dict:
    """Read the metadata of a ``.tflite`` (pass the model or the ``.json`` path).

    Raises:
        FileNotFoundError: no metadata file (with how to write it).
        TFLiteModelError: not JSON, a different schema version, or required keys missing.
    """
    path = Path(path)
    path = metadata_path(path) if path.suffix == ".tflite" else path
    if not path.is_file():
        raise FileNotFoundError(f"No metadata file at {path}. Write it with helpers.tflite.write_metadata "
                                "(notebooks/06_tflite_conversion.ipynb does it for every variant).")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TFLiteModelError(f"{path} is not valid JSON ({error}). Delete it and re-run notebook 06.") from error
    if not isinstance(metadata, dict) or metadata.get("schema_version") != METADATA_SCHEMA_VERSION:
        version = metadata.get("schema_version") if isinstance(metadata, dict) else None
        raise TFLiteModelError(f"{path} has metadata schema version {version!r}; this code reads "
                               f"version {METADATA_SCHEMA_VERSION}. Re-run notebook 06.")
    missing = [key for key in _REQUIRED_METADATA if key not in metadata]
    if missing:
        raise TFLiteModelError(f"{path} lacks {missing}. Re-run notebook 06 to rewrite it.")
    return metadata


# --------------------------------------------------------------------------- #
# What the app does with the metadata (the reference implementation, tested)
# --------------------------------------------------------------------------- #
def interpret(probability: float, metadata: dict) -> dict:
    """Turn one model output into what the app shows, following ``metadata["decision"]``.

    The decision rule is :class:`helpers.operating_point.OperatingPoint`'s, read from
    the metadata: the threshold and the band apply to the model's raw output
    probability; the calibration only changes the confidence shown.
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


# --------------------------------------------------------------------------- #
# Latency and memory (used by benchmarks/tflite_benchmark.py)
# --------------------------------------------------------------------------- #
# Instruction-set extensions that decide which XNNPACK kernels run, so how int8 and
# float32 compare: the same files gave int8 1.93-1.97x float32's single-thread speed
# on one x86 CPU and 1.64-1.73x on an AVX-512 Xeon (float32 gains more from AVX-512).
SPEED_RELEVANT_CPU_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16",  # x86
    "asimd", "asimddp", "i8mm", "sve", "sve2", "bf16",  # Arm (Features line)
)


def parse_cpuinfo(text: str) -> dict:
    """The CPU's name and its speed-relevant flags, from the text of Linux ``/proc/cpuinfo``.

    Returns:
        ``{"cpu_model": str | None, "cpu_flags": [...]}``: the first ``model name`` (x86)
        or ``Model`` / ``Hardware`` line (Arm), and those of
        :data:`SPEED_RELEVANT_CPU_FLAGS` on the first ``flags`` / ``Features`` line, in
        that tuple's order. Missing lines give ``None`` and ``[]``.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("model") or fields.get("hardware") or None
    present = set((fields.get("flags") or fields.get("features") or "").split())
    return {"cpu_model": model, "cpu_flags": [flag for flag in SPEED_RELEVANT_CPU_FLAGS if flag in present]}


def cpu_description(cpuinfo_path: str | os.PathLike = "/proc/cpuinfo") -> dict:
    """:func:`parse_cpuinfo` of this machine; ``None`` and ``[]`` where there is no cpuinfo (macOS, Windows)."""
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
    except OSError:
        text = ""  # the benchmark's "processor" field (platform.processor()) still names the CPU
    return parse_cpuinfo(text)


def time_invocations(classifier: TFLiteClassifier, runs: int) -> np.ndarray:
    """Milliseconds of ``runs`` back-to-back ``invoke()`` calls on the current input."""
    import time

    durations = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = time.perf_counter_ns()
        classifier.invoke()
        durations[i] = (time.perf_counter_ns() - start) / 1e6
    return durations


def interleaved_latency(
    classifiers: dict[str, TFLiteClassifier],
    image: np.ndarray,
    runs: int = 200,
    warmup: int = 20,
    block: int = 10,
) -> dict[str, np.ndarray]:
    """Latency samples (ms) for several models, measured round-robin in blocks.

    Models are timed in alternating blocks of ``block`` runs rather than one after
    the other, so a change in machine load (shared CPU) hits all of them alike and
    their ratios stay trustworthy.

    Args:
        classifiers: {name: classifier}.
        image: one (S, S, 3) raw 0-255 image fed to every model.
        runs: timed runs per model (after ``warmup`` untimed ones).
    """
    if runs < 1 or warmup < 0 or block < 1:
        raise ValueError(f"Need runs >= 1, warmup >= 0 and block >= 1, got {runs}, {warmup}, {block}.")
    for classifier in classifiers.values():
        classifier.set_input(classifier.prepare_input(image[np.newaxis]))
        time_invocations(classifier, warmup)
    samples = {name: [] for name in classifiers}
    done = 0
    while done < runs:
        count = min(block, runs - done)
        for name, classifier in classifiers.items():
            samples[name].append(time_invocations(classifier, count))
        done += count
    return {name: np.concatenate(parts) for name, parts in samples.items()}


def latency_summary(samples_ms: np.ndarray) -> dict[str, float]:
    samples_ms = np.asarray(samples_ms)
    return {"median": float(np.median(samples_ms)), "p90": float(np.percentile(samples_ms, 90)),
            "mean": float(np.mean(samples_ms)), "min": float(np.min(samples_ms)), "runs": int(len(samples_ms))}


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: write None instead."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value



# --------------------------------------------------------------------------- #
# parity.json: the notebook's parity results, reused by the benchmark script
# --------------------------------------------------------------------------- #
PARITY_FILE_NAME = "parity.json"


def write_parity(results: dict[str, dict], paths: dict[str, Path], threshold: float,
                 directory: str | os.PathLike | None = None, one_pass: dict | None = None) -> Path:
    """Write {variant: parity(...)} with each model's SHA-256 to ``tflite/parity.json``.

    ``one_pass``: the one-pass models' checks (``heatmap_spearman_<variant>`` and
    friends, from notebook 06), written as they are under ``"one_pass"``.
    """
    directory = Path(directory) if directory is not None else tflite_dir()
    record = {"threshold": float(threshold), "variants": {
        variant: {"model_sha256": file_sha256(paths[variant]),
                  **{k: finite_or_none(v) for k, v in result.items()}}
        for variant, result in results.items() if variant in paths}}
    if one_pass is not None:
        record["one_pass"] = one_pass
    return write_json(record, directory / PARITY_FILE_NAME)


def read_parity(paths: dict[str, Path], directory: str | os.PathLike | None = None) -> dict[str, dict]:
    """Parity results from ``tflite/parity.json`` for the variants whose file is unchanged.

    A variant is left out when parity.json is missing or its SHA-256 no longer
    matches the ``.tflite`` (the model was converted again since).
    """
    directory = Path(directory) if directory is not None else tflite_dir(create=False)
    path = directory / PARITY_FILE_NAME
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    found = {}
    for variant, result in record.get("variants", {}).items():
        if variant in paths and Path(paths[variant]).is_file() and result.get("model_sha256") == file_sha256(paths[variant]):
            found[variant] = result
    return found
