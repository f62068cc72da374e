"""Shared conversion machinery: converter settings, calibration data, atomic model writes, a quiet quantizer."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from helpers.tflite.paths import TFLiteModelError, check_variant
from helpers.tflite.runtime import INTERPRETER_DEPRECATION_WARNING, load_interpreter, quantize


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

    check_variant(variant)
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


def model_target(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(path, temporary)`` for writing a model atomically: write ``temporary``, then rename it.

    Checks the ``.tflite`` suffix and creates the folder.
    """
    path = Path(path)
    if path.suffix != ".tflite":
        raise ValueError(f"A TFLite model path must end with .tflite, got {path}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, path.with_suffix(".part.tflite")


def write_model_bytes(path: str | os.PathLike, content: bytes) -> Path:
    """Write a ``.tflite`` flatbuffer atomically (see :func:`model_target`); returns the path."""
    path, temporary = model_target(path)
    temporary.write_bytes(content)
    temporary.replace(path)  # never leave a half-written model under the real name
    return path


def input_name(model) -> str:
    name = getattr(model.inputs[0], "name", None) or "image"
    return name.split(":")[0]


def check_uint8_input_is_raw_pixels(path: Path) -> None:
    """A uint8 input must take pixel values as they are.

    Either unquantized (scale 0: the int8 variant's SavedModel casts it to float) or
    quantized with scale 1 and zero point 0 (a converter-made input quantization).
    """
    details = load_interpreter(path).get_input_details()[0]
    scale, zero_point = details["quantization"]
    if details["dtype"] == np.uint8 and scale != 0.0 and not (abs(scale - 1.0) < 1e-6 and zero_point == 0):
        raise TFLiteModelError(
            f"{path.name}: the uint8 input has scale {scale} and zero point {zero_point}, not 1 and 0, "
            "so raw pixels would need rescaling on the phone. The calibration images do not span "
            "0-255: use more (and real) training images."
        )


# The quantizer's C++ code writes one "fully_quantize: 0, inference_type: 6, ..." line
# to standard error per call, and the debugger builds its float reference with the
# deprecated tf.lite.Interpreter (TensorFlow's code, not ours; we run models with
# LiteRT). Both are noise in a notebook: quiet_quantizer drops exactly these.
QUANTIZER_NOISE_LINE = re.compile(r"^fully_quantize: \d+, inference_type: ")


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


def set_converter_options(converter, options: dict) -> None:
    """Set :func:`converter_options` on a converter, as Keras' LiteRT exporter does."""
    for key, value in options.items():
        if key == "target_spec":
            for spec_key, spec_value in value.items():
                setattr(converter.target_spec, spec_key, spec_value)
        else:
            setattr(converter, key, value)
