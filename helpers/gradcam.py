"""Grad-CAM (Selvaraju et al. 2017), written out step by step, with its checks.

Grad-CAM answers "which part of the image raised this score?" for one conv layer:

1. Run the image through the model and keep the last conv block's activations
   ``A`` (B, 7, 7, 1280) and the pneumonia logit ``z`` (B, 1).
2. The score to explain is ``s = +z`` for PNEUMONIA and ``s = -z`` for NORMAL.
   (The logit, not the sigmoid probability: the sigmoid saturates and its
   gradient vanishes for confident predictions.)
3. Gradients ``dA = ds/dA`` (B, 7, 7, 1280): how much each activation moves ``s``.
4. Channel weights ``alpha`` = the spatial mean of ``dA`` (B, 1280): how much
   channel ``k`` as a whole speaks for the class.
5. Weighted sum over channels ``sum_k alpha_k A_k`` (B, 7, 7).
6. ReLU (B, 7, 7): keep only the regions that *raise* the score.
7. Normalize each map to [0, 1] by its maximum (an all-zero map stays zero:
   nothing in the image raised the score).
8. Upsample (bilinear) to the image size (B, 224, 224).

:func:`gradcam_steps` returns every intermediate array (the notebook prints their
shapes); :func:`compute_gradcam` runs it batch by batch and returns the maps.

The checks:

* :func:`randomization_check` -- Adebayo et al. 2018, "Sanity Checks for Saliency
  Maps": re-initialize the head and the top blocks of a *clone* of the model; if the
  maps barely change (high rank correlation), they describe the image, not the model.
* :func:`deletion_curves` -- faithfulness: blank the image patch by patch, most
  heated patches first, and track the explained class's probability; compare with
  blanking the same patches in random order. A faithful map makes the score drop
  faster (lower area under the curve).

Everything works on the flat functional graph of :mod:`helpers.model` (layers
``out_relu`` and ``logit``) and on any functional Keras model with such layers.
"""

from __future__ import annotations

import difflib
import weakref
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

from helpers import config, imaging
from helpers.jsonio import write_json
from helpers.operating_point import outcomes
from helpers.predict import predictions_path, read_predictions_for
from helpers.training import predict_in_batches

CONV_LAYER = "out_relu"
LOGIT_LAYER = "logit"
TARGETS = ("pneumonia", "normal")  # class index 1 / 0, as in helpers.data.CLASS_NAMES
# Layers re-initialized by the model-randomization check on MobileNetV2: the
# classifier head and the top blocks (14-16 and the final 1x1 conv).
DEFAULT_RANDOMIZE_FROM = "block_14_expand"

# Built once per model and reused (building and tracing cost seconds each time):
# classifier -> {(conv_layer, logit_layer): Grad-CAM model}; Grad-CAM model -> tf.function.
_GRADCAM_MODELS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_COMPILED_STEPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


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


def plot_outcome_gallery(model, images, labels, probabilities, threshold: float, per_group: int = 4,
                         seed: int = config.DEFAULT_SEED, alpha: float = 0.4, colormap: str = "jet"):
    """True/false positives/negatives with their Grad-CAM, a seeded choice per group.

    Each map explains the *predicted* class (PNEUMONIA for TP/FP, NORMAL for TN/FN):
    "what made the model say this?". Rows: image and overlay per group.

    Returns ``(figure, chosen)`` where ``chosen`` maps "TP"/"TN"/"FP"/"FN" to test indices.
    """
    groups = outcome_groups(labels, probabilities, threshold)
    chosen = {name: choose(indices, per_group, seed) for name, indices in groups.items()}
    figure, axes = plt.subplots(2 * len(groups), per_group, figsize=(2.3 * per_group, 2.3 * 2 * len(groups)),
                                squeeze=False)
    for group_index, (name, indices) in enumerate(chosen.items()):
        image_row, map_row = axes[2 * group_index], axes[2 * group_index + 1]
        predicted_class = 1 if name in ("TP", "FP") else 0
        heatmaps = (compute_gradcam(model, np.asarray(images[indices], dtype=np.float32), target=[predicted_class] * len(indices))
                    if len(indices) else [])
        for column in range(per_group):
            image_row[column].axis("off")
            map_row[column].axis("off")
            if column >= len(indices):
                continue
            index = indices[column]
            image_row[column].imshow(np.asarray(images[index]).astype(np.uint8))
            image_row[column].set_title(f"{name}  P(pneumonia)={probabilities[index]:.2f}", fontsize=8)
            map_row[column].imshow(overlay(images[index], heatmaps[column], alpha, colormap))
        explained = "PNEUMONIA" if predicted_class else "NORMAL"
        image_row[0].text(-0.1, 0.5, f"{name} ({len(groups[name])})", transform=image_row[0].transAxes,
                          rotation=90, va="center", ha="right", fontsize=10)
        map_row[0].text(-0.1, 0.5, f"map: {explained}", transform=map_row[0].transAxes,
                        rotation=90, va="center", ha="right", fontsize=8)
        if not len(indices):
            image_row[0].text(0.5, 0.5, "none in this set", transform=image_row[0].transAxes, ha="center")
    figure.suptitle(f"Test outcomes at threshold {threshold:.3f} (seeded choice)")
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / figure.get_figheight()))  # room for the title
    return figure, chosen


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


# --------------------------------------------------------------------------- #
# Sanity check: model randomization (Adebayo et al. 2018)
# --------------------------------------------------------------------------- #
def layers_from(model, first_layer: str) -> list[str]:
    """Names of the layers with weights from ``first_layer`` to the output (graph order)."""
    _get_layer(model, first_layer)
    names = [layer.name for layer in model.layers]
    return [layer.name for layer in model.layers[names.index(first_layer):] if layer.weights]


def randomized_clone(model, layer_names: Sequence[str], seed: int = config.DEFAULT_SEED):
    """A copy of ``model`` whose ``layer_names`` are re-initialized; ``model`` is untouched.

    Each weight is redrawn with its layer's own initializer (kernels: Glorot/He as
    built; batch norm: identity; biases: zeros), seeded.
    """
    import keras

    for name in layer_names:
        _get_layer(model, name)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for offset, name in enumerate(layer_names):
        layer = clone.get_layer(name)
        for index, variable in enumerate(layer.weights):
            short_name = variable.name.split("/")[-1]
            initializer = getattr(layer, f"{short_name}_initializer", None)
            if initializer is None and short_name == "kernel":
                initializer = getattr(layer, "depthwise_initializer", None)
            if initializer is None:
                raise ValueError(f"Cannot re-initialize weight {variable.name!r} of layer {name!r}: "
                                 "its layer has no matching initializer attribute.")
            initializer = keras.initializers.get(initializer)
            if hasattr(initializer, "seed"):
                initializer = initializer.__class__.from_config(
                    {**initializer.get_config(), "seed": seed + 1000 * offset + index})
            variable.assign(initializer(variable.shape, dtype=variable.dtype))
    return clone


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two maps (NaN when either map is constant)."""
    first, second = np.ravel(first), np.ravel(second)
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return float("nan")
    return float(spearmanr(first, second).statistic)


def randomization_check(model, images, target="pneumonia", randomize_from: str = DEFAULT_RANDOMIZE_FROM,
                        seed: int = config.DEFAULT_SEED, batch_size: int = 16,
                        conv_layer: str = CONV_LAYER, logit_layer: str = LOGIT_LAYER) -> dict:
    """Compare Grad-CAM maps of ``model`` with those of a clone whose top is re-initialized.

    Returns a dict: ``mean_rank_correlation`` (over images where both maps vary),
    ``mean_abs_rank_correlation``, ``correlations`` (N,), ``n_undefined`` (a constant
    map, e.g. all zero), ``randomized_layers``, ``original`` and ``randomized`` maps.
    A faithful explanation method gives a low correlation.
    """
    names = layers_from(model, randomize_from)
    original = compute_gradcam(model, images, target, conv_layer, logit_layer, batch_size)
    randomized_model = randomized_clone(model, names, seed)
    randomized = compute_gradcam(randomized_model, images, target, conv_layer, logit_layer, batch_size)
    if original.ndim == 2:
        original, randomized = original[np.newaxis], randomized[np.newaxis]
    correlations = np.array([rank_correlation(a, b) for a, b in zip(original, randomized)])
    defined = correlations[np.isfinite(correlations)]
    return {
        "mean_rank_correlation": float(defined.mean()) if len(defined) else float("nan"),
        "mean_abs_rank_correlation": float(np.abs(defined).mean()) if len(defined) else float("nan"),
        "correlations": correlations,
        "n_undefined": int(len(correlations) - len(defined)),
        "randomized_layers": names,
        "original": original,
        "randomized": randomized,
    }


# --------------------------------------------------------------------------- #
# Faithfulness: deletion curves
# --------------------------------------------------------------------------- #
def patch_scores(heatmaps: np.ndarray, grid: int) -> np.ndarray:
    """Mean heat per patch: (N, H, W) -> (N, grid, grid). H and W must be multiples of grid."""
    count, height, width = heatmaps.shape
    if height % grid or width % grid:
        raise ValueError(f"The image size {height}x{width} must be a multiple of grid={grid}.")
    return heatmaps.reshape(count, grid, height // grid, grid, width // grid).mean(axis=(2, 4))


def deletion_orders(heatmaps: np.ndarray, grid: int, seed: int = config.DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Order in which to delete the grid x grid patches: (N, grid*grid) indices each.

    Returns ``(gradcam_order, random_order)``: hottest patch first (ties broken at
    random), and a seeded random permutation.
    """
    rng = np.random.default_rng(seed)
    scores = patch_scores(heatmaps, grid).reshape(len(heatmaps), -1)  # (N, P)
    tie_breaker = rng.random(scores.shape)
    gradcam_order = np.lexsort((tie_breaker, -scores), axis=-1)  # sort by -score, then at random
    random_order = np.argsort(rng.random(scores.shape), axis=1)
    return gradcam_order, random_order


def baseline_images(images: np.ndarray, fill: str = "mean", blur_sigma: float = 12.0) -> np.ndarray:
    """What a deleted patch is replaced with: (N, H, W, 3) float32.

    ``"mean"``: each image's mean colour; ``"blur"``: a heavily blurred copy (keeps
    the coarse brightness, removes detail; less out-of-distribution than a flat patch).
    """
    images = np.asarray(images, dtype=np.float32)
    if fill == "mean":
        return np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape).astype(np.float32)
    if fill == "blur":
        return np.stack([gaussian_filter(image, sigma=(blur_sigma, blur_sigma, 0)) for image in images])
    raise ValueError(f"fill must be 'mean' or 'blur', got {fill!r}.")


def delete_patches(images, baselines, order, count: int, grid: int) -> np.ndarray:
    """Replace the first ``count`` patches of each image's ``order`` by its baseline.

    images, baselines: (N, H, W, 3); order: (N, grid*grid). Returns (N, H, W, 3).
    """
    number, height, width, _ = images.shape
    mask = np.zeros((number, grid * grid), dtype=bool)
    np.put_along_axis(mask, order[:, :count], True, axis=1)
    mask = mask.reshape(number, grid, 1, grid, 1)
    mask = np.broadcast_to(mask, (number, grid, height // grid, grid, width // grid)).reshape(number, height, width, 1)
    return np.where(mask, baselines, images).astype(np.float32)


def curve_area(fractions: np.ndarray, values: np.ndarray) -> float:
    """Area under a curve sampled at ``fractions`` in [0, 1] (trapezoid rule)."""
    return float(np.trapezoid(values, fractions)) if hasattr(np, "trapezoid") else float(np.trapz(values, fractions))


def deletion_curves(model, images, heatmaps, target="pneumonia", steps: int = 10, grid: int = 14,
                    fill: str = "mean", seed: int = config.DEFAULT_SEED, batch_size: int = 32) -> dict:
    """Deletion curves: the explained class's probability as patches are blanked.

    Patches (grid x grid, 16x16 px at 224 with grid 14) are deleted in ``steps``
    equal steps, hottest first (Grad-CAM order) or in random order. At fraction 0
    both curves start at the model's probability; at 1 the whole image is baseline.

    Args:
        images: (N, H, W, 3) 0-255. heatmaps: (N, H, W) from :func:`compute_gradcam`
            for the same ``target``.
        target: the class whose probability is tracked: ``"pneumonia"`` (P(pneumonia)),
            ``"normal"`` (1 - P(pneumonia)) or (N,) class indices.

    Returns a dict: ``fractions`` (steps+1,), ``gradcam`` and ``random`` (N, steps+1)
    probabilities, ``areas_gradcam`` and ``areas_random`` (N,) per-image areas under
    the curves, ``auc_gradcam`` and ``auc_random`` (their means; lower = faster drop),
    ``fill``, ``grid``.
    """
    images = check_images(images, model)
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    if heatmaps.shape != images.shape[:3]:
        raise ValueError(f"Need one (H, W) heatmap per image: images {images.shape}, heatmaps {heatmaps.shape}.")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    signs = target_signs(target, len(images))  # (N,) +1 pneumonia / -1 normal
    patches = grid * grid
    counts = np.round(np.linspace(0, patches, steps + 1)).astype(int)  # patches deleted per step
    fractions = counts / patches
    baselines = baseline_images(images, fill)
    orders = dict(zip(("gradcam", "random"), deletion_orders(heatmaps, grid, seed)))
    curves = {}
    for name, order in orders.items():
        columns = []
        for count in counts:
            edited = delete_patches(images, baselines, order, count, grid)  # (N, H, W, 3)
            probability = predict_in_batches(model, edited, batch_size, progress=False)[:, 0]  # (N,) P(pneumonia)
            columns.append(np.where(signs > 0, probability, 1.0 - probability))
        curves[name] = np.stack(columns, axis=1)  # (N, steps + 1)
    areas = {name: np.array([curve_area(fractions, curve) for curve in curves[name]]) for name in curves}  # (N,)
    return {
        "fractions": fractions,
        "gradcam": curves["gradcam"],
        "random": curves["random"],
        "areas_gradcam": areas["gradcam"],
        "areas_random": areas["random"],
        "auc_gradcam": float(areas["gradcam"].mean()),
        "auc_random": float(areas["random"].mean()),
        "fill": fill,
        "grid": grid,
    }


def subset_deletion(result: dict, rows) -> dict:
    """The :func:`deletion_curves` result restricted to ``rows`` (a boolean mask or
    indices), with the areas recomputed; the areas are NaN when no row is selected."""
    rows = np.asarray(rows)
    subset = dict(result)
    for key in ("gradcam", "random", "areas_gradcam", "areas_random"):
        subset[key] = result[key][rows]
    for name in ("gradcam", "random"):
        areas = subset[f"areas_{name}"]
        subset[f"auc_{name}"] = float(areas.mean()) if len(areas) else float("nan")
    return subset


def plot_deletion_curves(result: dict, ax=None, label: str = "P(explained class)"):
    """Mean deletion curves (Grad-CAM order vs random order) with their areas."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    fractions = result["fractions"]
    if len(result["gradcam"]) == 0:
        ax.text(0.5, 0.5, "no images", transform=ax.transAxes, ha="center")
        return ax
    for name, style in (("gradcam", "-o"), ("random", "--s")):
        mean = result[name].mean(axis=0)
        ax.plot(fractions, mean, style, markersize=3,
                label=f"{'Grad-CAM order' if name == 'gradcam' else 'random order'} "
                      f"(AUC {result['auc_' + name]:.3f})")
    ax.set_xlabel("fraction of image deleted")
    ax.set_ylabel(label)
    ax.set_ylim(0, 1)
    ax.set_title(f"Deletion curves, {len(result['gradcam'])} images\n"
                 f"(fill: {result['fill']}, {result['grid']}x{result['grid']} patches)", fontsize=10)
    ax.legend()
    return ax


# --------------------------------------------------------------------------- #
# Where does the model look?
# --------------------------------------------------------------------------- #
def average_maps(model, images, indices, target, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Mean image (H, W, 3) and mean Grad-CAM heatmap (H, W) over ``images[indices]``.

    Returns zeros of the right shape when ``indices`` is empty.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        height, width = np.shape(images)[1:3]
        return np.zeros((height, width, 3), np.float32), np.zeros((height, width), np.float32)
    selected = np.asarray(images[indices], dtype=np.float32)  # (k, H, W, 3)
    heatmaps = compute_gradcam(model, selected, target=target, batch_size=batch_size)
    heatmaps = heatmaps.reshape((-1,) + selected.shape[1:3])  # (k, H, W) also for k = 1
    return selected.mean(axis=0), heatmaps.mean(axis=0)


def region_shares(heatmaps: np.ndarray, border: float = 0.1) -> dict[str, float]:
    """Share of the total heat in image regions, averaged over (N, H, W) heatmaps.

    ``border``: the outer band (``border`` of the width on each side), where text
    markers, labels and collimation edges sit; ``center``: the rest. ``top_left``,
    ``top_right``, ``bottom_left``, ``bottom_right``: quadrants. ``*_area`` gives the
    share a uniform map would have, for comparison. ``peak_row``/``peak_column``: where
    the mean map is hottest (fractions of height/width), ``peak_in_border``: whether
    that peak lies in the border band.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    if heatmaps.ndim == 2:
        heatmaps = heatmaps[np.newaxis]
    if not 0.0 < border < 0.5:
        raise ValueError(f"border must be in (0, 0.5), got {border}.")
    _, height, width = heatmaps.shape
    band_h, band_w = int(round(border * height)), int(round(border * width))
    center = np.zeros((height, width), dtype=bool)
    center[band_h:height - band_h, band_w:width - band_w] = True
    half_h, half_w = height // 2, width // 2
    regions = {
        "border": ~center,
        "center": center,
        "top_left": np.s_[:half_h, :half_w],
        "top_right": np.s_[:half_h, half_w:],
        "bottom_left": np.s_[half_h:, :half_w],
        "bottom_right": np.s_[half_h:, half_w:],
    }
    totals = heatmaps.sum(axis=(1, 2))  # (N,)
    valid = totals > 0
    shares = {}
    for name, region in regions.items():
        region_mask = np.zeros((height, width), dtype=bool)
        region_mask[region] = True
        heat = heatmaps[:, region_mask].sum(axis=1)
        shares[name] = float(np.mean(heat[valid] / totals[valid])) if valid.any() else float("nan")
        shares[f"{name}_area"] = float(region_mask.mean())
    # Where the average map peaks, as fractions of the height and width (0, 0 = top left).
    mean_map = heatmaps.mean(axis=0)  # (H, W)
    peak_row, peak_column = np.unravel_index(int(np.argmax(mean_map)), mean_map.shape)
    shares["peak_row"] = float((peak_row + 0.5) / height)
    shares["peak_column"] = float((peak_column + 0.5) / width)
    shares["peak_in_border"] = bool(not center[peak_row, peak_column])
    return shares


def describe_regions(name: str, shares: dict) -> str:
    """One plain sentence on where an average map puts its heat (from :func:`region_shares`)."""
    vertical = "top" if shares["peak_row"] < 1 / 3 else "bottom" if shares["peak_row"] > 2 / 3 else "middle"
    horizontal = ("left" if shares["peak_column"] < 1 / 3 else "right" if shares["peak_column"] > 2 / 3
                  else "centre")
    sentence = (f"{name}: the average map peaks at the {vertical} {horizontal} of the image "
                f"({'inside the border band: a marker, edge or label, not lung' if shares['peak_in_border'] else 'inside the central region'}); "
                f"{shares['border']:.0%} of the heat lies in the border band, which covers {shares['border_area']:.0%} of the image")
    if shares["border"] > shares["border_area"]:
        sentence += " -- MORE than a uniform map: the model leans on the image's edges."
    else:
        sentence += " -- less than a uniform map."
    return sentence


# --------------------------------------------------------------------------- #
# Predictions, threshold and galleries
# --------------------------------------------------------------------------- #
def probabilities_for_paths(model, paths: Sequence[str], images: np.ndarray, split: str = "test",
                            batch_size: int = 32) -> tuple[np.ndarray, str]:
    """P(pneumonia) for the images of ``paths``: from notebook 04's
    ``predictions/<split>.csv`` when it covers every path, otherwise predicted here in
    batches.

    Args:
        images: float (N, H, W, 3) raw 0-255, the images of ``paths`` in that order.

    Returns ``((N,) float32, source)``.
    """
    saved = read_predictions_for(paths, split)
    if saved is not None:
        return saved["probability"].to_numpy(dtype=np.float32), str(predictions_path(split))
    images = check_images(images, model)
    probabilities = predict_in_batches(model, images, batch_size, progress=False)[:, 0]  # (N,)
    return probabilities, f"predicted here ({predictions_path(split)} missing or not covering these images)"


def outcome_groups(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Indices of true/false positives/negatives: {"TP", "TN", "FP", "FN"} -> (k,) int."""
    outcome = outcomes(labels, probabilities, threshold)  # (N,) "TP"/"TN"/"FP"/"FN"
    return {name: np.flatnonzero(outcome == name) for name in ("TP", "TN", "FP", "FN")}


def choose(indices: np.ndarray, count: int, seed: int = config.DEFAULT_SEED) -> np.ndarray:
    """A seeded choice of up to ``count`` of ``indices`` (sorted; all if fewer)."""
    indices = np.asarray(indices)
    if len(indices) <= count:
        return np.sort(indices)
    return np.sort(np.random.default_rng(seed).choice(indices, size=count, replace=False))


def example_index(labels, probabilities, threshold: float, seed: int = config.DEFAULT_SEED) -> int:
    """A seeded true positive to explain (the most confident image if there is none)."""
    true_positives = outcome_groups(labels, probabilities, threshold)["TP"]
    if len(true_positives):
        return int(choose(true_positives, 1, seed)[0])
    return int(np.argmax(probabilities))


def write_report(results: dict, artifacts: Path | None = None) -> Path:
    """Write ``results`` as ``<artifacts>/gradcam.json`` (atomically); returns the path.

    NumPy numbers become plain JSON numbers and NaN (e.g. an empty group) becomes null.
    """
    path = Path(artifacts or config.artifacts_dir()) / "gradcam.json"
    for key in ("randomization_rank_correlation", "deletion_auc_gradcam", "deletion_auc_random", "n_images"):
        if key not in results:
            raise ValueError(f"gradcam.json needs the key {key!r}.")
    return write_json(results, path, sort_keys=True)
