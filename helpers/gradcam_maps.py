"""Grad-CAM maps of the Keras model and how to draw them (notebook 05; re-exported by :mod:`helpers.gradcam`).

:func:`compute_gradcam` weighs the ``out_relu`` activations by the gradient of the
logit (signed for the class explained), keeps the positive part, normalizes and
upsamples to the film; :func:`gradcam_steps` returns every intermediate for teaching.
The screening pipeline needs no gradients: for this head the map equals the class
activation map it reads from the one-pass model (:mod:`helpers.one_pass`).
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from helpers import imaging

CONV_LAYER = "out_relu"
LOGIT_LAYER = "logit"
TARGETS = ("pneumonia", "normal")  # class index 1 / 0, as in helpers.data.CLASS_NAMES
# Layers re-initialized by the model-randomization check on MobileNetV2: the
# classifier head and the top blocks (14-16 and the final 1x1 conv).
DEFAULT_RANDOMIZE_FROM = "block_14_expand"

# Built once per model and reused (building and tracing cost seconds each time):
# classifier -> {(conv_layer, logit_layer): Grad-CAM model}; Grad-CAM model -> tf.function.
_GRADCAM_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPILED_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------- #
# Input checks
# --------------------------------------------------------------------------- #
def _get_layer(model, name: str):
    names = [layer.name for layer in model.layers]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"The model {model.name!r} has no layer named {name!r}.{hint} Grad-CAM needs the "
            f"last conv block (default {CONV_LAYER!r}) and the pre-sigmoid score (default "
            f"{LOGIT_LAYER!r}) as layers of one flat functional graph, as built by "
            "helpers.model.build_model(); pass conv_layer=/logit_layer= for another model."
        )
    return model.get_layer(name)


def _model_image_shape(model) -> tuple:
    """(H, W, C) the model expects; entries may be None."""
    if len(model.inputs) != 1:
        raise ValueError(f"Grad-CAM needs a model with one image input, got {len(model.inputs)} inputs.")
    return tuple(model.inputs[0].shape[1:])


def check_images(images, model) -> np.ndarray:
    """Return ``images`` as float32 (N, H, W, C) (a single (H, W, C) image gets N = 1).

    Raises:
        ValueError: the array is not 3-D/4-D or its size does not match the model input.
    """
    array = np.asarray(images)
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"images must be a numeric array, got dtype {array.dtype}.")
    if array.ndim == 3:
        array = array[np.newaxis]
    expected = _model_image_shape(model)
    if array.ndim != 4 or len(expected) != 3:
        raise ValueError(
            f"images must have shape (N, H, W, C) or (H, W, C), got {np.shape(images)}. "
            "Decode them with helpers.data.load_image / decode_images (float 0-255)."
        )
    for actual, wanted, axis in zip(array.shape[1:], expected, ("height", "width", "channels")):
        if wanted is not None and actual != wanted:
            raise ValueError(
                f"images have {axis} {actual} but the model expects {wanted} "
                f"(input shape (N, {', '.join(str(e) for e in expected)}), got {array.shape}). "
                "Resize with helpers.data.decode_and_resize."
            )
    if len(array) == 0:
        raise ValueError("images is empty: pass at least one image.")
    return array.astype(np.float32, copy=False)


def target_signs(target, count: int) -> np.ndarray:
    """(count,) float32 of +1 (explain PNEUMONIA: the logit) or -1 (NORMAL: minus the logit).

    Args:
        target: ``"pneumonia"``, ``"normal"``, or a sequence of class indices
            (1 = PNEUMONIA, 0 = NORMAL), one per image (e.g. the predicted classes).
    """
    if isinstance(target, str):
        if target.lower() not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS} or class indices (0/1), got {target!r}.")
        return np.full(count, 1.0 if target.lower() == "pneumonia" else -1.0, dtype=np.float32)
    indices = np.asarray(target).reshape(-1)
    if len(indices) != count or not np.isin(indices, (0, 1)).all():
        raise ValueError(
            f"target as an array needs one class index (0 = NORMAL, 1 = PNEUMONIA) per image: "
            f"{count} image(s), got {np.asarray(target).tolist()!r}."
        )
    return np.where(indices == 1, 1.0, -1.0).astype(np.float32)


# --------------------------------------------------------------------------- #
# Grad-CAM
# --------------------------------------------------------------------------- #
def gradcam_model(model, conv_layer: str = CONV_LAYER, logit_layer: str = LOGIT_LAYER):
    """A model sharing ``model``'s weights with two outputs: the conv block's activations
    (B, h, w, K) and the logit (B, 1). Raises ValueError for a missing layer."""
    import keras

    conv = _get_layer(model, conv_layer)
    logit = _get_layer(model, logit_layer)
    _model_image_shape(model)
    return keras.Model(model.inputs[0], [conv.output, logit.output], name=f"{model.name}_gradcam")


def _forward_and_gradients(grad_model, images, signs):
    """Steps 1-3 (TensorFlow): activations (B, h, w, K), logits (B,), gradients (B, h, w, K)."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        activations, logits = grad_model(images, training=False)  # (B, h, w, K), (B, 1)
        scores = signs * logits[:, 0]  # (B,): +logit for PNEUMONIA, -logit for NORMAL
        # Images are independent (no batch statistics at inference), so the gradient
        # of the sum gives each image its own gradient.
        total = tf.reduce_sum(scores)  # () -- inside the tape, or it is not recorded
    gradients = tape.gradient(total, activations)  # (B, h, w, K)
    return activations, logits[:, 0], gradients


def _compiled(grad_model):
    """The gradient step as a tf.function, cached per Grad-CAM model (much faster on CPU)."""
    import tensorflow as tf

    if grad_model not in _COMPILED_STEPS:
        model_reference = weakref.ref(grad_model)  # no cycle: the cache must not keep it alive

        def step(images, signs):
            return _forward_and_gradients(model_reference(), images, signs)

        _COMPILED_STEPS[grad_model] = tf.function(step, reduce_retracing=True)
    return _COMPILED_STEPS[grad_model]


def _cached_gradcam_model(model, conv_layer: str, logit_layer: str):
    models = _GRADCAM_MODELS.setdefault(model, {})
    if (conv_layer, logit_layer) not in models:
        models[(conv_layer, logit_layer)] = gradcam_model(model, conv_layer, logit_layer)
    return models[(conv_layer, logit_layer)]


def gradcam_steps(grad_model, images: np.ndarray, target="pneumonia") -> dict[str, np.ndarray]:
    """Grad-CAM for one batch with every intermediate result, for teaching.

    Args:
        grad_model: from :func:`gradcam_model`.
        images: float (B, H, W, 3) raw 0-255 pixels (the model rescales inside).
        target: see :func:`target_signs`.

    Returns a dict of NumPy arrays (shapes for MobileNetV2 at 224):
        ``activations`` (B, 7, 7, 1280), ``logits`` (B,), ``gradients`` (B, 7, 7, 1280),
        ``channel_weights`` (B, 1280), ``weighted_sum`` (B, 7, 7), ``relu`` (B, 7, 7),
        ``normalized`` (B, 7, 7) in [0, 1], ``heatmap`` (B, H, W) float32 in [0, 1].
    """
    images = check_images(images, grad_model)
    signs = target_signs(target, len(images))
    # Steps 1-3: forward pass and gradients of the signed logit.
    activations, logits, gradients = _compiled(grad_model)(images, signs)
    activations, logits, gradients = activations.numpy(), logits.numpy(), gradients.numpy()
    # Step 4: one weight per channel = global average of its gradients.
    channel_weights = gradients.mean(axis=(1, 2))  # (B, K)
    # Step 5: weighted sum of the activation maps.
    weighted_sum = np.einsum("bhwk,bk->bhw", activations, channel_weights)  # (B, h, w)
    # Step 6: ReLU -- only evidence *for* the class.
    relu = np.maximum(weighted_sum, 0.0)  # (B, h, w)
    # Step 7: per-image normalization to [0, 1].
    normalized = imaging.normalize_maps(relu)  # (B, h, w)
    # Step 8: upsample to the image.
    heatmap = imaging.upsample_maps(normalized, images.shape[1:3])  # (B, H, W)
    return {
        "activations": activations,
        "logits": logits,
        "gradients": gradients,
        "channel_weights": channel_weights.astype(np.float32),
        "weighted_sum": weighted_sum.astype(np.float32),
        "relu": relu.astype(np.float32),
        "normalized": normalized,
        "heatmap": heatmap,
    }


def compute_gradcam(
    model,
    images,
    target="pneumonia",
    conv_layer: str = CONV_LAYER,
    logit_layer: str = LOGIT_LAYER,
    batch_size: int = 16,
    return_logits: bool = False,
):
    """Grad-CAM heatmaps for many images, computed in batches.

    Args:
        model: the classifier (e.g. ``helpers.model.load_model()``).
        images: float (N, H, W, 3) or one (H, W, 3) image, raw 0-255.
        target: ``"pneumonia"``, ``"normal"`` or (N,) class indices.
        batch_size: images per gradient step.
        return_logits: also return the (N,) logits.

    Returns:
        float32 (N, H, W) in [0, 1] (``(H, W)`` for a single 3-D image), and the
        (N,) logits when ``return_logits``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    single = np.ndim(images) == 3
    grad_model = _cached_gradcam_model(model, conv_layer, logit_layer)
    images = check_images(images, grad_model)
    signs = target_signs(target, len(images))
    classes = (signs > 0).astype(np.int64)
    heatmaps, logits = [], []
    for start in range(0, len(images), batch_size):
        steps = gradcam_steps(grad_model, images[start:start + batch_size], classes[start:start + batch_size])
        heatmaps.append(steps["heatmap"])
        logits.append(steps["logits"])
    heatmaps = np.concatenate(heatmaps)  # (N, H, W)
    logits = np.concatenate(logits)  # (N,)
    if single:
        heatmaps = heatmaps[0]
    return (heatmaps, logits) if return_logits else heatmaps


# --------------------------------------------------------------------------- #
# Pictures
# --------------------------------------------------------------------------- #
def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """Blend a heatmap over an image: float32 (H, W, 3) in [0, 1], ready for ``imshow``.

    The blend is :func:`helpers.imaging.overlay` (what the web app shows); this only
    looks up any Matplotlib colormap by name.

    Args:
        image: (H, W, 3) or (H, W), uint8 or float 0-255 (the project's pixels; never guessed from the values).
        heatmap: (H, W) in [0, 1].
        alpha: opacity of the heatmap (0 = image only, 1 = heatmap only).
        colormap: a Matplotlib colormap name.
    """
    colours = matplotlib.colormaps[colormap](np.linspace(0.0, 1.0, 256))[:, :3]  # (256, 3)
    return imaging.overlay(image, heatmap, alpha, colours)


def plot_side_by_side(images, heatmaps, titles: Sequence[str] | None = None, alpha: float = 0.4,
                      colormap: str = "jet", image_size: float = 2.2, suptitle: str | None = None):
    """One column per image: the X-ray on top, the Grad-CAM overlay below.

    Args:
        images: (N, H, W, 3) 0-255. heatmaps: (N, H, W) in [0, 1].
        titles: one per image (e.g. ``"P=0.93"``).
    Returns the Matplotlib figure.
    """
    images, heatmaps = np.asarray(images), np.asarray(heatmaps)
    if images.ndim == 3:
        images, heatmaps = images[np.newaxis], heatmaps[np.newaxis]
    if len(images) != len(heatmaps) or len(images) == 0:
        raise ValueError(f"Need as many heatmaps as images (at least one), got {len(images)} and {len(heatmaps)}.")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"Need one title per image: {len(images)} images, {len(titles)} titles.")
    count = len(images)
    figure, axes = plt.subplots(2, count, figsize=(image_size * count, image_size * 2.1), squeeze=False)
    for column in range(count):
        axes[0, column].imshow(np.clip(images[column], 0, 255).astype(np.uint8))
        axes[1, column].imshow(overlay(images[column], heatmaps[column], alpha, colormap))
        if titles is not None:
            axes[0, column].set_title(titles[column], fontsize=8)
        for row in range(2):
            axes[row, column].axis("off")
    axes[0, 0].text(-0.08, 0.5, "image", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.08, 0.5, "Grad-CAM", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    if suptitle:
        figure.suptitle(suptitle)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / figure.get_figheight()) if suptitle else None)
    return figure


def plot_steps(image: np.ndarray, steps: dict, index: int = 0, alpha: float = 0.4, colormap: str = "jet"):
    """The Grad-CAM steps of one image, left to right: image, weighted sum (7x7),
    ReLU, normalized, upsampled heatmap, overlay. ``steps`` from :func:`gradcam_steps`."""
    panels = [
        ("image", np.clip(image, 0, 255).astype(np.uint8), None),
        (f"weighted sum {steps['weighted_sum'][index].shape}", steps["weighted_sum"][index], "RdBu_r"),
        (f"ReLU {steps['relu'][index].shape}", steps["relu"][index], "viridis"),
        (f"normalized {steps['normalized'][index].shape}", steps["normalized"][index], "viridis"),
        (f"upsampled {steps['heatmap'][index].shape}", steps["heatmap"][index], colormap),
        ("overlay", overlay(image, steps["heatmap"][index], alpha, colormap), None),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for ax, (title, picture, cmap) in zip(axes, panels):
        if cmap == "RdBu_r":  # centred on zero: red raises the score, blue lowers it
            limit = float(np.abs(picture).max()) or 1.0
            ax.imshow(picture, cmap=cmap, vmin=-limit, vmax=limit)
        else:
            ax.imshow(picture, cmap=cmap)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    figure.tight_layout()
    return figure


def plot_randomization(images, original, randomized, correlations, count: int = 5,
                       alpha: float = 0.4, colormap: str = "jet"):
    """Rows: image, Grad-CAM of the trained model, Grad-CAM after randomization."""
    count = min(count, len(images))
    figure, axes = plt.subplots(3, count, figsize=(2.3 * count, 7.2), squeeze=False)
    for column in range(count):
        axes[0, column].imshow(np.asarray(images[column]).astype(np.uint8))
        axes[1, column].imshow(overlay(images[column], original[column], alpha, colormap))
        axes[2, column].imshow(overlay(images[column], randomized[column], alpha, colormap))
        axes[2, column].set_title(f"Spearman {correlations[column]:.2f}", fontsize=8)
        for row in range(3):
            axes[row, column].axis("off")
    for row, text in enumerate(("image", "trained", "randomized top")):
        axes[row, 0].text(-0.1, 0.5, text, transform=axes[row, 0].transAxes, rotation=90, va="center", ha="right")
    figure.tight_layout()
    return figure


def plot_average_maps(mean_images: dict, mean_heatmaps: dict, border: float = 0.1,
                      alpha: float = 0.5, colormap: str = "jet"):
    """Per group (e.g. "PNEUMONIA (TP)"): the mean image and the mean heatmap over it,
    with the ``border`` band outlined (where text markers and edges sit)."""
    figure, axes = plt.subplots(1, 2 * len(mean_images), figsize=(3.2 * 2 * len(mean_images), 3.4), squeeze=False)
    for group_index, name in enumerate(mean_images):
        image, heatmap = mean_images[name], mean_heatmaps[name]
        scaled = heatmap / heatmap.max() if heatmap.max() > 0 else heatmap
        height, width = heatmap.shape
        axes[0, 2 * group_index].imshow(np.clip(image, 0, 255).astype(np.uint8))
        axes[0, 2 * group_index].set_title(f"mean image: {name}", fontsize=9)
        axes[0, 2 * group_index + 1].imshow(overlay(image, scaled, alpha, colormap))
        axes[0, 2 * group_index + 1].add_patch(Rectangle(
            (border * width, border * height), (1 - 2 * border) * width, (1 - 2 * border) * height,
            fill=False, edgecolor="white", linestyle="--", linewidth=1))
        axes[0, 2 * group_index + 1].set_title(f"mean Grad-CAM: {name}", fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    figure.tight_layout()
    return figure


