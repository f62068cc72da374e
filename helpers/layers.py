"""Keras layers of the classifier's own (imported by :mod:`helpers.model` when it builds or loads one).

:class:`BorderMask` hides the outer band of every film: the pixels there are replaced
by the mean grey of the film's inside, inside the model, so every pipeline that runs the model (the
Keras notebooks, the TFLite phone model, the web apps) sees the same thing. The
model's geometry is unchanged, so Grad-CAM maps still line up with the film.
"""

from __future__ import annotations

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="cxr")
class BorderMask(keras.layers.Layer):
    """(B, H, W, C) pixels -> the same with the outer ``border`` of each side set to the mean of the
    rest, so nothing in the band (not even its brightness) reaches the network.

    Weightless; a fixed (1, H, W, 1) mask built from the input shape.
    """

    def __init__(self, border: float = 0.12, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < border < 0.5:
            raise ValueError(f"border must be in (0, 0.5), got {border}.")
        self.border = float(border)

    def inner_mask(self, height: int, width: int) -> np.ndarray:
        """(1, H, W, 1) float32: 1 inside, 0 in the border band."""
        band_h, band_w = max(1, int(round(self.border * height))), max(1, int(round(self.border * width)))
        mask = np.zeros((1, height, width, 1), np.float32)
        mask[:, band_h:height - band_h, band_w:width - band_w, :] = 1.0
        return mask

    def call(self, images):
        inside = keras.ops.convert_to_tensor(self.inner_mask(images.shape[1], images.shape[2]))
        inside_share = float(self.inner_mask(images.shape[1], images.shape[2]).mean())
        # (B, 1, 1, 1): the mean of the inside only (a MEAN op, as the phone runtimes all have it)
        mean = keras.ops.mean(images * inside, axis=(1, 2, 3), keepdims=True) / inside_share
        return images * inside + mean * (1.0 - inside)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "border": self.border}
