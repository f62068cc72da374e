"""Acquisition-style augmentation for chest X-rays: framing, exposure and markers.

No flips and no rotations: a chest X-ray is taken in one orientation, and a
flipped film puts the heart on the wrong side. What *does* vary between hospitals,
machines and technicians is

* **framing** -- how much of the body is in the film and where it sits
  (a random crop of 75-100 % of the side, moved anywhere, resized back);
* **exposure** -- brightness, contrast and gamma;
* **markers** -- the burnt-in laterality letter ("R"/"L") and text labels. A model
  trained on one hospital's films can learn *where the marker is* instead of the
  lungs (notebook 05 found this shortcut). Random erasing of a small patch near an
  edge or corner, where markers sit, takes that cue away from some views.

:func:`augment_images` draws every random number from one ``numpy`` generator, so a
seed gives the same views on every machine. Training caches a few augmented
*views* of each image through the frozen layers (see
:func:`helpers.training.cached_activations`), so augmentation costs one extra
forward pass per view instead of one per epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random changes; ``AugmentConfig()`` is the project's default."""

    min_crop: float = 0.75  # crop side as a fraction of the image side (1.0: no zoom)
    max_aspect_change: float = 0.1  # crop height/width varies by +-10 %
    brightness: float = 0.1  # added offset, as a fraction of 255
    contrast: float = 0.2  # contrast factor in [1 - c, 1 + c]
    gamma: float = 0.2  # gamma in [1 - g, 1 + g]
    erase_probability: float = 0.5  # chance of one erased patch near an edge
    erase_size: tuple[float, float] = (0.08, 0.2)  # patch side, fraction of the image side

    def __post_init__(self):
        if not 0.3 <= self.min_crop <= 1.0:
            raise ValueError(f"min_crop must be in [0.3, 1], got {self.min_crop}.")
        for name in ("max_aspect_change", "brightness", "contrast", "gamma"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}.")
        if not 0.0 <= self.erase_probability <= 1.0:
            raise ValueError(f"erase_probability must be in [0, 1], got {self.erase_probability}.")
        low, high = self.erase_size
        if not 0.0 < low <= high < 0.5:
            raise ValueError(f"erase_size must satisfy 0 < low <= high < 0.5, got {self.erase_size}.")

    def to_dict(self) -> dict:
        return asdict(self)


def random_crop_boxes(count: int, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """(count, 4) crop boxes ``[y1, x1, y2, x2]`` in normalized coordinates, inside the image."""
    side = rng.uniform(config.min_crop, 1.0, count)
    aspect = rng.uniform(1.0 - config.max_aspect_change, 1.0 + config.max_aspect_change, count)
    height = np.minimum(side * np.sqrt(aspect), 1.0)
    width = np.minimum(side / np.sqrt(aspect), 1.0)
    top = rng.uniform(0.0, 1.0, count) * (1.0 - height)
    left = rng.uniform(0.0, 1.0, count) * (1.0 - width)
    return np.stack([top, left, top + height, left + width], axis=1).astype(np.float32)


def erase_near_edges(images: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Fill one patch per image (with probability ``erase_probability``) near an edge.

    The patch touches the image border band where markers sit (its centre lies in
    the outer 25 % of the side on at least one axis) and is filled with the image's
    median grey, so no new bright or black shape is introduced.

    Args:
        images: float32 (B, H, W, C), modified in place and returned.
    """
    count, height, width = images.shape[:3]
    for index in range(count):
        if rng.uniform() >= config.erase_probability:
            continue
        size = rng.uniform(*config.erase_size, 2) * (height, width)
        patch_h, patch_w = max(1, int(size[0])), max(1, int(size[1]))
        # One axis near an edge (first or last quarter), the other anywhere.
        centre = rng.uniform(0.0, 1.0, 2)
        edge_axis = rng.integers(2)
        near = rng.uniform(0.0, 0.25)
        centre[edge_axis] = near if rng.uniform() < 0.5 else 1.0 - near
        top = int(np.clip(centre[0] * height - patch_h / 2, 0, height - patch_h))
        left = int(np.clip(centre[1] * width - patch_w / 2, 0, width - patch_w))
        images[index, top:top + patch_h, left:left + patch_w, :] = np.median(images[index])
    return images


def augment_images(images: np.ndarray, rng: np.random.Generator,
                   config: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """One random acquisition-style view of each image.

    Args:
        images: (B, H, W, 3) pixels 0-255 (uint8 or float).
        rng: e.g. ``np.random.default_rng(seed)``; consumed in a fixed order.

    Returns:
        float32 (B, H, W, 3) in [0, 255], same size as the input.
    """
    import tensorflow as tf

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (B, H, W, 3), got {images.shape}.")
    count, height, width = images.shape[:3]
    if count == 0:
        return np.zeros(images.shape, np.float32)
    boxes = random_crop_boxes(count, rng, config)
    views = tf.image.crop_and_resize(
        tf.constant(images, tf.float32), boxes, tf.range(count), (height, width), method="bilinear",
    ).numpy()  # (B, H, W, 3) float32

    # Exposure: gamma on [0, 1], then contrast around the image mean, then brightness.
    shape = (count, 1, 1, 1)
    gamma = rng.uniform(1.0 - config.gamma, 1.0 + config.gamma, count).reshape(shape)
    contrast = rng.uniform(1.0 - config.contrast, 1.0 + config.contrast, count).reshape(shape)
    offset = rng.uniform(-config.brightness, config.brightness, count).reshape(shape) * 255.0
    views = 255.0 * np.power(np.clip(views / 255.0, 0.0, 1.0), gamma)
    mean = views.mean(axis=(1, 2, 3), keepdims=True)
    views = (views - mean) * contrast + mean + offset
    views = np.clip(views, 0.0, 255.0).astype(np.float32)
    return erase_near_edges(views, rng, config)


def plot_augmented_examples(images: np.ndarray, rng: np.random.Generator,
                            config: AugmentConfig = AugmentConfig(), views: int = 3):
    """A grid: each row one image, the original then ``views`` augmented views.

    Args:
        images: (R, H, W, 3) pixels 0-255, one row each.
    """
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    if len(images) == 0 or views < 1:
        raise ValueError(f"Need at least one image and one view, got {len(images)} and {views}.")
    augmented = [augment_images(images, rng, config) for _ in range(views)]  # views x (R, H, W, 3)
    figure, axes = plt.subplots(len(images), views + 1, figsize=(2.2 * (views + 1), 2.2 * len(images)),
                                squeeze=False)
    for row, image in enumerate(images):
        panels = [image] + [view[row] for view in augmented]
        for column, panel in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(np.asarray(panel).astype(np.uint8))
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title("original" if column == 0 else f"view {column}", fontsize=9)
    figure.tight_layout()
    return figure
