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

from helpers import layers
from helpers.config import KERAS_MODEL_FILE_NAME, artifacts_dir
from helpers.data import IMAGE_SIZE
from helpers.errors import MissingFile, ModelFileError

LAST_CONV_LAYER = "out_relu"
LOGIT_LAYER = "logit"
PROBABILITY_LAYER = "probability"
POOL_LAYER = "global_pool"
HEAD_DROPOUT_LAYER = "head_dropout"
BORDER_MASK_LAYER = "border_mask"
MODEL_FILE_NAME = KERAS_MODEL_FILE_NAME


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
    border_mask: float = 0.0,
):
    """Build the classifier; the MobileNetV2 base is frozen (``trainable=False``).

    Args:
        weights: ``"imagenet"`` (from the Keras cache, ``KERAS_HOME``; downloaded if
            absent) or ``None`` for random initialisation (tests).
        dropout: dropout rate before the output unit.
        output_bias: initial logit bias, e.g. :func:`initial_output_bias`.
        image_size: input height = width.
        border_mask: > 0 hides the outer band of this fraction of each side
            (:func:`helpers.layers.border_mask`, the film's mean grey there); 0 adds no layer.
    """
    import keras

    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")  # raw 0-255
    pixels = inputs
    if border_mask:
        pixels = layers.border_mask(border_mask, name=BORDER_MASK_LAYER)(inputs)  # (B, S, S, 3), the band grey
    scaled = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_plus1")(pixels)
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
    probability = add_head(features, dropout=dropout, output_bias=output_bias)  # (B, 1)
    return keras.Model(inputs, probability, name="pneumonia_mobilenetv2")


def add_head(features, dropout: float = 0.2, output_bias: float | None = None):
    """The classification head on pooled features: dropout -> ``logit`` -> ``probability``.

    Shared by :func:`build_model` and :func:`build_head_model` (the class-imbalance
    notebook trains heads alone on cached features), so both have the same layers.

    Args:
        features: (B, F) KerasTensor of pooled features.
        dropout: dropout rate before the output unit.
        output_bias: initial logit bias (``None``: zero).
    Returns:
        (B, 1) KerasTensor, the sigmoid probability.
    """
    import keras

    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    features = keras.layers.Dropout(dropout, name=HEAD_DROPOUT_LAYER)(features)
    bias_initializer = (
        keras.initializers.Constant(output_bias) if output_bias is not None else "zeros"
    )
    logit = keras.layers.Dense(1, bias_initializer=bias_initializer, name=LOGIT_LAYER)(features)  # (B, 1)
    return keras.layers.Activation("sigmoid", name=PROBABILITY_LAYER)(logit)  # (B, 1)


def build_head_model(feature_size: int = 1280, dropout: float = 0.2, output_bias: float | None = None):
    """A stand-alone head: pooled features (B, feature_size) -> probability (B, 1)."""
    import keras

    inputs = keras.Input(shape=(feature_size,), name="pooled_features")
    return keras.Model(inputs, add_head(inputs, dropout, output_bias), name="pneumonia_head")


def unfreeze_from(model, first_layer: str, freeze_batch_norm: bool = True) -> list[str]:
    """Make ``first_layer`` and every layer after it trainable (phase 2 of fine-tuning).

    Layers before ``first_layer`` stay frozen. BatchNormalization layers stay frozen
    when ``freeze_batch_norm`` (Keras then runs them in inference mode, so their
    moving statistics are never updated from small, imbalanced batches).

    Args:
        model: a model from :func:`build_model`.
        first_layer: e.g. ``"block_13_expand"`` (unfreezes blocks 13-16, ``Conv_1``, head).
    Returns:
        The names of the layers that now have trainable weights.
    """
    import keras

    names = [layer.name for layer in model.layers]
    if first_layer not in names:
        blocks = sorted({name.split("_expand")[0] for name in names if name.endswith("_expand")})
        raise ValueError(
            f"The model has no layer {first_layer!r}. Use a block's first layer such as "
            f"'block_13_expand' (blocks with an expand layer: {', '.join(blocks)})."
        )
    start = names.index(first_layer)
    for index, layer in enumerate(model.layers):
        is_batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= start and not (freeze_batch_norm and is_batch_norm)
    return [layer.name for layer in model.layers if layer.trainable and layer.weights]


def freeze_base(model) -> None:
    """Freeze everything except the head (phase 1 of fine-tuning)."""
    head_layers = {HEAD_DROPOUT_LAYER, LOGIT_LAYER, PROBABILITY_LAYER}
    for layer in model.layers:
        layer.trainable = layer.name in head_layers


def logit_model(model):
    """A model sharing ``model``'s weights that outputs the logit, (B, 1)."""
    import keras

    return keras.Model(model.inputs, model.get_layer(LOGIT_LAYER).output)


def default_model_path() -> Path:
    return artifacts_dir("model") / MODEL_FILE_NAME


def load_model(path: str | Path | None = None):
    """Load a saved classifier with ``safe_mode=True`` and check it is this project's model.

    Raises:
        MissingFile: no file (says which notebook trains the model).
        ModelFileError: the file is corrupt (not a readable ``.keras`` archive) or holds a
            model of another architecture (no ``logit`` / ``global_pool`` / ``out_relu``
            layer, or another input or output shape); the message names the file.
    """
    import keras

    path = Path(path) if path else default_model_path()
    retrain = ("Train it again: run notebooks/03_finetune_mobilenetv2.ipynb (or `make run`), or set "
               "CXR_ARTIFACTS_DIR to the artifacts folder that holds model/" + MODEL_FILE_NAME + ".")
    if not path.is_file():
        raise MissingFile(f"No trained model at {path}. {retrain}")
    layers.register()  # the project's own layers, for loading
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, OSError, zipfile.BadZipFile, KeyError... for a bad archive
        raise ModelFileError(f"{path} is corrupt or not a Keras model file: it could not be loaded "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}). "
                             f"{retrain}") from error
    check_architecture(model, path, retrain)
    return model


def check_architecture(model, path: str | Path = "the model", remedy: str = "") -> None:
    """Raise :class:`ModelFileError` unless ``model`` is this project's classifier.

    Checked: the layers every consumer looks up by name (``out_relu``, ``global_pool``,
    ``logit``), one input of shape (None, 224, 224, 3) and one output of shape (None, 1).
    """
    names = {layer.name for layer in model.layers}
    missing = [name for name in (LAST_CONV_LAYER, POOL_LAYER, LOGIT_LAYER) if name not in names]
    input_shapes = [tuple(tensor.shape) for tensor in model.inputs]
    output_shapes = [tuple(tensor.shape) for tensor in model.outputs]
    problems = []
    if missing:
        problems.append(f"no layer(s) {missing}")
    if input_shapes != [(None, IMAGE_SIZE, IMAGE_SIZE, 3)]:
        problems.append(f"input(s) {input_shapes} instead of [(None, {IMAGE_SIZE}, {IMAGE_SIZE}, 3)]")
    if output_shapes != [(None, 1)]:
        problems.append(f"output(s) {output_shapes} instead of [(None, 1)]")
    if problems:
        raise ModelFileError(f"{path} holds a model of another architecture ({'; '.join(problems)}), "
                             f"not this project's MobileNetV2 pneumonia classifier. {remedy}".rstrip())
