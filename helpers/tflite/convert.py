"""Convert the Keras classifier to the four TFLite variants (float32, float16, dynamic range, int8)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from helpers.tflite.exporting import converter_options, input_name, model_target
from helpers.tflite.int8 import quantize_int8
from helpers.tflite.paths import VARIANTS, tflite_path


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

    path, temporary = model_target(path if path is not None else tflite_path(variant))
    if variant == "int8":
        return quantize_int8(model, calibration_images, float_layers).save(path)
    options = converter_options(variant, calibration_images)
    _, height, width, channels = model.input_shape
    signature = [tf.TensorSpec((1, height, width, channels), tf.float32, name=input_name(model))]
    model.export(str(temporary), format="litert", input_signature=signature, verbose=False, **options)
    temporary.replace(path)  # never leave a half-written model under the real name
    return path


def convert_all(
    model,
    calibration_images: np.ndarray,
    directory: str | os.PathLike | None = None,
    variants: Sequence[str] = VARIANTS,
    progress: bool = True,
) -> dict[str, Path]:
    """Convert every variant; returns {variant: path}."""
    paths = {}
    for variant in variants:
        start = time.perf_counter()
        paths[variant] = convert(model, variant, tflite_path(variant, directory), calibration_images)
        if progress:
            size_mb = paths[variant].stat().st_size / 1e6
            print(f"{variant:>13}: {size_mb:6.2f} MB in {time.perf_counter() - start:5.1f} s -> {paths[variant].name}")
    return paths
