"""Keras layers of the classifier's own, built on first use (Keras is imported only then).

:func:`border_mask` makes a :class:`BorderMask` layer: it hides the outer band of every
film, whose pixels are replaced by the mean grey of the film's inside, inside the model,
so every pipeline that runs the model (the Keras notebooks, the TFLite phone model, the
web apps) sees the same thing. The model's geometry is unchanged, so Grad-CAM maps still
line up with the film. :func:`register` makes a saved model with such a layer loadable.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def inner_mask(height: int, width: int, border: float) -> np.ndarray:
    """(1, H, W, 1) float32: 1 inside, 0 in the outer band of ``border`` of each side."""
    if not 0.0 < border < 0.5:
        raise ValueError(f"border must be in (0, 0.5), got {border}.")
    band_h, band_w = max(1, int(round(border * height))), max(1, int(round(border * width)))
    mask = np.zeros((1, height, width, 1), np.float32)
    mask[:, band_h:height - band_h, band_w:width - band_w, :] = 1.0
    return mask


@lru_cache(maxsize=1)
def register():
    """Define and register the project's layers with Keras (once); returns the BorderMask class."""
    import keras

    @keras.saving.register_keras_serializable(package="cxr")
    class BorderMask(keras.layers.Layer):
        """(B, H, W, C) pixels -> the same with the outer ``border`` of each side set to the mean of
        the rest, so nothing in the band (not even its brightness) reaches the network. Weightless."""

        def __init__(self, border: float = 0.12, **kwargs):
            super().__init__(**kwargs)
            inner_mask(8, 8, border)  # checks the value
            self.border = float(border)

        def call(self, images):
            mask = inner_mask(images.shape[1], images.shape[2], self.border)
            inside = keras.ops.convert_to_tensor(mask)
            # (B, 1, 1, 1): the mean of the inside only (a MEAN op, as the phone runtimes all have it)
            mean = keras.ops.mean(images * inside, axis=(1, 2, 3), keepdims=True) / float(mask.mean())
            return images * inside + mean * (1.0 - inside)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "border": self.border}

    return BorderMask


def border_mask(border: float, name: str):
    """A BorderMask layer hiding the outer ``border`` of each side."""
    return register()(border, name=name)
