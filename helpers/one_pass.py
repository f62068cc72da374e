"""The one-pass phone model: decision, heat map and OOD features from a single TFLite call.

The head is ``global_pool -> dropout -> logit (one dense unit)``, so with the
``out_relu`` activations A (7, 7, 1280), dense weights w and bias b::

    logit = b + w . mean_ij(A_ij) = mean_ij(b + w . A_ij) = mean_ij(logit_map_ij)

The logit map is the dense layer applied to every feature vector: a 1x1
convolution with the same weights. Grad-CAM of the logit at ``out_relu`` has
channel weights ``d logit / d A_ijk`` averaged over positions = w_k / 49, so its
weighted sum is ``(logit_map_ij - b) / 49``: Grad-CAM *is* the class activation map
here, and needs no gradients. Notebook 06 checks it on real films.

:func:`one_pass_model` adds the map and the pooled features as outputs;
:func:`convert_one_pass` writes the float32, float16 and int8 files with metadata
declaring them, which :class:`helpers.OnePassEngine` checks at load time.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from helpers import tflite
from helpers.gradcam import rank_correlation
from helpers.model import LAST_CONV_LAYER, LOGIT_LAYER, POOL_LAYER
from helpers.operating_point import OperatingPoint
from helpers.provenance import file_sha256
from helpers.serving.engine import ONE_PASS_VARIANTS, OUTPUT_ROLES, OnePassEngine
from helpers.serving.pipeline import heatmap_from_logit_map, one_pass_path

LOGIT_MAP_LAYER = "logit_map"
OUTPUT_MEANINGS = {
    "probability": "P(PNEUMONIA) before calibration, as the single-output model",
    "logit_map": "the logit layer applied to each 7x7 out_relu feature vector; its mean is the logit. "
                 "Heat map = ReLU(sign * (map - logit_map.bias)), sign +1 for PNEUMONIA, -1 for NORMAL",
    "pooled_features": "global_pool features (1280), input of the OOD detector",
}


def one_pass_model(model):
    """A Keras model with outputs ``[probability (B, 1), logit map (B, 7, 7, 1), pooled (B, 1280)]``.

    Shares every layer with ``model`` (no copy); the logit map is a 1x1 convolution
    holding the ``logit`` layer's kernel and bias.
    """
    import keras

    kernel, bias = model.get_layer(LOGIT_LAYER).get_weights()  # (1280, 1), (1,)
    features = model.get_layer(LAST_CONV_LAYER).output  # (B, 7, 7, 1280)
    convolution = keras.layers.Conv2D(1, 1, name=LOGIT_MAP_LAYER)
    logit_map = convolution(features)  # (B, 7, 7, 1)
    convolution.set_weights([kernel.reshape(1, 1, -1, 1), bias])
    pooled = model.get_layer(POOL_LAYER).output  # (B, 1280)
    return keras.Model(model.inputs, [model.outputs[0], logit_map, pooled], name=f"{model.name}_one_pass")


def head_bias(model) -> float:
    """The ``logit`` layer's bias: the heat map is ``map - bias`` (see the module docstring)."""
    return float(model.get_layer(LOGIT_LAYER).get_weights()[1][0])


def declared_outputs(one_pass) -> dict:
    """The metadata's ``outputs`` block for a :func:`one_pass_model`: shape (one image) and meaning per role."""
    return {role: {"shape": [1, *[int(d) for d in tensor.shape[1:]]], "meaning": OUTPUT_MEANINGS[role]}
            for role, tensor in zip(OUTPUT_ROLES, one_pass.outputs)}


def convert_one_pass(model, variant: str, point: OperatingPoint, calibration_images: np.ndarray | None = None,
                     directory: str | os.PathLike | None = None, keras_model_path: str | os.PathLike | None = None,
                     calibration: dict | None = None, extra: dict | None = None) -> Path:
    """Convert the one-pass version of ``model`` to ``variant`` and publish its metadata.

    Args:
        model: the Keras classifier as converted for the single-output ``variant``
            (for int8: the bias-corrected copy, :func:`helpers.tflite.with_logit_bias_shift`).
        variant: ``"float32"``, ``"float16"`` or ``"int8"``.
        calibration_images: (N, 224, 224, 3) raw 0-255 training images, for int8.

    Returns the ``.tflite`` path (its JSON metadata is written beside it).
    """
    if variant not in ONE_PASS_VARIANTS:
        raise ValueError(f"One-pass variants are {ONE_PASS_VARIANTS}, got {variant!r}.")
    path = one_pass_path(variant, directory or tflite.tflite_dir())
    combined = one_pass_model(model)
    tflite.convert(combined, variant, path, calibration_images)
    metadata = tflite.build_metadata(path, variant, point, keras_model_path, calibration=calibration,
                                     extra={"logit_map": {"bias": head_bias(model)}, **(extra or {})},
                                     outputs=declared_outputs(combined))
    tflite.publish_metadata(path, metadata)
    return path


def heatmap_agreement(keras_heatmaps: np.ndarray, one_pass_heatmaps: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation of two sets of (N, H, W) heat maps, per image: mean, min, median."""
    if keras_heatmaps.shape != one_pass_heatmaps.shape:
        raise ValueError(f"Heat maps differ in shape: {keras_heatmaps.shape} vs {one_pass_heatmaps.shape}.")
    correlations = np.array([rank_correlation(a, b) for a, b in zip(keras_heatmaps, one_pass_heatmaps)])
    return {"mean": float(np.nanmean(correlations)), "min": float(np.nanmin(correlations)),
            "median": float(np.nanmedian(correlations)), "n_images": len(correlations)}


def one_pass_heatmaps(engine: OnePassEngine, images: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps (N, 224, 224) for ``classes`` (N,) and probabilities (N,) from one engine call per image."""
    heatmaps, probabilities = [], []
    for image, decided in zip(np.asarray(images, dtype=np.float32), classes):
        probability, logit_map, _ = engine.run(image)
        heatmaps.append(heatmap_from_logit_map(logit_map, engine.bias, bool(decided)))
        probabilities.append(probability)
    return np.stack(heatmaps), np.asarray(probabilities, dtype=np.float32)


class KerasOnePassEngine:
    """The Keras model with the one-pass outputs, behind the engine interface of :mod:`helpers.serving.engine`.

    ``run(pixels)`` gives what the ``.tflite`` gives -- P(PNEUMONIA), the (7, 7) logit map
    and the pooled features -- from :func:`one_pass_model`, so a
    :class:`helpers.serving.pipeline.Screener` decides, guards and draws the heat map
    for the Keras model with the same code as for the phone model.

    Args:
        model: the Keras classifier (layer names of :mod:`helpers.model`).
        point: the operating point to decide with (notebook 04's, usually).
        model_path: the ``.keras`` file it was loaded from: its SHA-256 is what fitted
            files (detector, site calibration) are checked against. None: an unsaved model.
    """

    def __init__(self, model, point: OperatingPoint, model_path: str | os.PathLike | None = None):
        self.model = model
        self.one_pass = one_pass_model(model)
        self.bias = head_bias(model)
        self.point = point
        self.path = Path(model_path) if model_path else Path(f"{model.name}.keras (not saved)")
        self._sha256 = file_sha256(model_path) if model_path else None
        self.provenance_note = "" if model_path else "An unsaved Keras model: its provenance is not checked."

    @property
    def name(self) -> str:
        return "Keras (one pass)"

    @property
    def version(self) -> str:
        return f"{self.model.name} sha256 {self._sha256[:12]}" if self._sha256 else self.model.name

    @property
    def keras_sha256(self) -> str | None:
        return self._sha256

    @property
    def feature_width(self) -> int:
        return int(self.one_pass.outputs[2].shape[-1])

    def run(self, pixels: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """One image (224, 224, 3) 0-255 -> (P(PNEUMONIA), logit map (7, 7), pooled features (D,))."""
        pixels = np.asarray(pixels, dtype=np.float32)
        expected = tuple(int(d) for d in self.one_pass.inputs[0].shape[1:])
        if pixels.shape != expected:
            raise ValueError(f"Expected one image of shape {expected}, got {pixels.shape}.")
        probability, logit_map, pooled = self.one_pass.predict_on_batch(pixels[np.newaxis])
        return (float(np.asarray(probability).reshape(-1)[0]), np.asarray(logit_map, dtype=np.float32)[0, ..., 0],
                np.asarray(pooled, dtype=np.float32).reshape(-1))
