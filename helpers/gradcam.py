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

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

from helpers import config
from helpers.gradcam_maps import (  # noqa: F401  (re-exported: the maps and pictures)
    CONV_LAYER,
    DEFAULT_RANDOMIZE_FROM,
    LOGIT_LAYER,
    TARGETS,
    _get_layer,  # the layer lookup with its "did you mean" message
    check_images,
    compute_gradcam,
    gradcam_model,
    gradcam_steps,
    overlay,
    plot_average_maps,
    plot_randomization,
    plot_side_by_side,
    plot_steps,
    target_signs,
)
from helpers.jsonio import write_json
from helpers.operating_point import outcomes
from helpers.predict import predictions_path, read_predictions_for
from helpers.training import predict_in_batches


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
    peak_place = ("inside the border band: a marker, edge or label, not lung" if shares["peak_in_border"]
                  else "inside the central region")
    sentence = (f"{name}: the average map peaks at the {vertical} {horizontal} of the image ({peak_place}); "
                f"{shares['border']:.0%} of the heat lies in the border band, "
                f"which covers {shares['border_area']:.0%} of the image")
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


def plot_outcome_gallery(model, images, labels, probabilities, threshold: float, per_group: int = 4,
                         seed: int = config.DEFAULT_SEED, alpha: float = 0.4, colormap: str = "jet",
                         split: str = "test"):
    """True/false positives/negatives with their Grad-CAM, a seeded choice per group.

    Each map explains the *predicted* class (PNEUMONIA for TP/FP, NORMAL for TN/FN):
    "what made the model say this?". Rows: image and overlay per group. ``split`` names
    the films in the title ("validation" for the development gallery, "test" for the report).

    Returns ``(figure, chosen)`` where ``chosen`` maps "TP"/"TN"/"FP"/"FN" to indices into ``images``.
    """
    groups = outcome_groups(labels, probabilities, threshold)
    chosen = {name: choose(indices, per_group, seed) for name, indices in groups.items()}
    figure, axes = plt.subplots(2 * len(groups), per_group, figsize=(2.3 * per_group, 2.3 * 2 * len(groups)),
                                squeeze=False)
    for group_index, (name, indices) in enumerate(chosen.items()):
        image_row, map_row = axes[2 * group_index], axes[2 * group_index + 1]
        predicted_class = 1 if name in ("TP", "FP") else 0
        heatmaps = (compute_gradcam(model, np.asarray(images[indices], dtype=np.float32),
                                    target=[predicted_class] * len(indices))
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
    figure.suptitle(f"{split.capitalize()} outcomes at threshold {threshold:.3f} (seeded choice)")
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / figure.get_figheight()))  # room for the title
    return figure, chosen


def write_report(results: dict, artifacts: Path | None = None) -> Path:
    """Write ``results`` as ``<artifacts>/gradcam.json`` (atomically); returns the path.

    NumPy numbers become plain JSON numbers and NaN (e.g. an empty group) becomes null.
    """
    path = Path(artifacts or config.artifacts_dir()) / "gradcam.json"
    for key in ("randomization_rank_correlation", "deletion_auc_gradcam", "deletion_auc_random", "n_images"):
        if key not in results:
            raise ValueError(f"gradcam.json needs the key {key!r}.")
    return write_json(results, path, sort_keys=True)
