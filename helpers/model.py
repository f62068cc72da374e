"""MobileNetV2 (ImageNet) with a small pneumonia head, as one flat functional graph.

Input: raw RGB pixels in [0, 255], shape (batch, 224, 224, 3). A ``Rescaling`` layer
maps them to MobileNetV2's [-1, 1], so the saved ``.keras`` file loads with
``safe_mode=True`` and the phone model needs no outside preprocessing.

Output: P(PNEUMONIA), shape (batch, 1). The pre-sigmoid score is the ``logit``
layer's output (used by Grad-CAM and temperature scaling); the last conv block is
``out_relu`` (7x7x1280 at 224).
"""

from __future__ import annotations

import math
from pathlib import Path

from helpers.data import IMAGE_SIZE

LAST_CONV_LAYER = "out_relu"
LOGIT_LAYER = "logit"
PROBABILITY_LAYER = "probability"
POOL_LAYER = "global_pool"
MODEL_FILE_NAME = "pneumonia_mobilenetv2.keras"


def initial_output_bias(num_positive: int, num_negative: int) -> float:
    """log(pos / neg): the logit bias that makes the untrained model predict the prior."""
    if num_positive <= 0 or num_negative <= 0:
        raise ValueError(f"Need both classes, got {num_positive} positive and {num_negative} negative.")
    return math.log(num_positive / num_negative)


def build_model(
    weights: str | None = "imagenet",
    dropout: float = 0.2,
    output_bias: float | None = None,
    image_size: int = IMAGE_SIZE,
):
    """Build the classifier; the MobileNetV2 base is frozen (``trainable=False``).

    Args:
        weights: ``"imagenet"`` (from the Keras cache, ``KERAS_HOME``; downloaded if
            absent) or ``None`` for random initialisation (tests).
        dropout: dropout rate before the output unit.
        output_bias: initial logit bias, e.g. :func:`initial_output_bias`.
        image_size: input height = width.
    """
    import keras

    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")  # raw 0-255
    scaled = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_plus1")(inputs)
    # The base is created on the model's own tensor: its layers become layers of the
    # outer model (one flat graph), so `out_relu` is reachable for Grad-CAM.
    base = keras.applications.MobileNetV2(
        input_tensor=scaled,
        input_shape=(image_size, image_size, 3),
        include_top=False,
        weights=weights,
        alpha=1.0,
    )
    for layer in base.layers:
        layer.trainable = False
    features = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)(base.output)  # (B, 1280)
    features = keras.layers.Dropout(dropout, name="head_dropout")(features)
    bias_initializer = (
        keras.initializers.Constant(output_bias) if output_bias is not None else "zeros"
    )
    logit = keras.layers.Dense(1, bias_initializer=bias_initializer, name=LOGIT_LAYER)(features)  # (B, 1)
    probability = keras.layers.Activation("sigmoid", name=PROBABILITY_LAYER)(logit)  # (B, 1)
    return keras.Model(inputs, probability, name="pneumonia_mobilenetv2")


def logit_model(model):
    """A model sharing ``model``'s weights that outputs the logit, (B, 1)."""
    import keras

    return keras.Model(model.inputs, model.get_layer(LOGIT_LAYER).output)


def default_model_path() -> Path:
    from helpers.config import artifacts_dir

    return artifacts_dir("model") / MODEL_FILE_NAME


def load_model(path: str | Path | None = None):
    """Load a saved classifier with ``safe_mode=True``.

    Raises:
        FileNotFoundError: with the command that creates the model.
    """
    import keras

    path = Path(path) if path else default_model_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"No trained model at {path}. Train it first: run "
            "notebooks/03_finetune_mobilenetv2.ipynb (or `make run`), or set "
            "CXR_ARTIFACTS_DIR to the artifacts folder that holds model/" + MODEL_FILE_NAME + "."
        )
    return keras.saving.load_model(path, safe_mode=True)
