"""Acquisition-style augmentation for chest X-rays: framing, exposure, sensor and markers.

No flips and no rotations: a chest X-ray is taken in one orientation, and a
flipped film puts the heart on the wrong side. What *does* vary between hospitals,
machines and technicians is

* **framing** -- how much of the body is in the film and where it sits
  (a random crop of 75-100 % of the side, moved anywhere, resized back);
* **exposure** -- brightness, contrast and gamma;
* **sensor and storage** -- sharpness (detector, resampling), pixel noise (dose)
  and JPEG re-compression. Notebook 03's stress test measures why this matters:
  a model trained without them calls NORMAL films with a little grey noise
  PNEUMONIA far more often (``docs/design_decisions.md`` keeps the run that chose
  them). Fine texture is not evidence of pneumonia, so every view gets a random amount
  of each;
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
    sharpness: float = 1.0  # unsharp amount in [-s, +s]: -1 is a Gaussian blur (sigma 1), +1 a strong sharpen
    noise_std: float = 12.0  # Gaussian pixel noise, std drawn from [0, noise_std] grey levels
    jpeg_probability: float = 0.5  # chance of re-compressing the view as JPEG
    jpeg_quality: tuple[int, int] = (30, 95)  # JPEG quality drawn from this range

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
        if not 0.0 <= self.sharpness <= 2.0:
            raise ValueError(f"sharpness must be in [0, 2], got {self.sharpness}.")
        if not 0.0 <= self.noise_std <= 64.0:
            raise ValueError(f"noise_std must be in [0, 64] grey levels, got {self.noise_std}.")
        if not 0.0 <= self.jpeg_probability <= 1.0:
            raise ValueError(f"jpeg_probability must be in [0, 1], got {self.jpeg_probability}.")
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 100:
            raise ValueError(f"jpeg_quality must satisfy 1 <= low <= high <= 100, got {self.jpeg_quality}.")

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


def change_sharpness(images: np.ndarray, amounts: np.ndarray) -> np.ndarray:
    """Unsharp masking with a per-image amount: ``image + amount * (image - blur(image))``.

    Args:
        images: float32 (B, H, W, C) in [0, 255].
        amounts: (B,) in [-1, 2]; -1 gives the Gaussian blur (sigma 1 pixel), 0 the image,
            positive values sharpen.

    Returns:
        float32 (B, H, W, C) clipped to [0, 255].
    """
    from scipy import ndimage

    amounts = np.asarray(amounts, np.float32).reshape(-1, 1, 1, 1)
    if len(amounts) != len(images):
        raise ValueError(f"Need one sharpness amount per image, got {len(amounts)} for {len(images)} images.")
    blurred = ndimage.gaussian_filter(images, sigma=(0, 1.0, 1.0, 0))
    return np.clip(images + amounts * (images - blurred), 0.0, 255.0).astype(np.float32)


def add_grey_noise(images: np.ndarray, rng: np.random.Generator, stds: np.ndarray) -> np.ndarray:
    """Add Gaussian noise with a per-image std, the same on every channel (the film stays grey).

    Args:
        images: float32 (B, H, W, C) in [0, 255].
        stds: (B,) noise standard deviations in grey levels.
    """
    count, height, width = images.shape[:3]
    noise = rng.standard_normal((count, height, width, 1)).astype(np.float32)
    noise *= np.asarray(stds, np.float32).reshape(-1, 1, 1, 1)
    return np.clip(images + noise, 0.0, 255.0).astype(np.float32)


def recompress_jpeg(images: np.ndarray, qualities) -> np.ndarray:
    """Encode and decode each image as JPEG at its quality (``None`` or 0: left as is).

    Args:
        images: float32 (B, H, W, 3) in [0, 255].
        qualities: (B,) integer JPEG qualities 1-100, or 0 to skip that image.
    """
    import tensorflow as tf

    out = images.copy()
    for index, quality in enumerate(qualities):
        if quality:
            encoded = tf.io.encode_jpeg(tf.cast(tf.round(out[index]), tf.uint8), quality=int(quality))
            out[index] = tf.io.decode_jpeg(encoded, channels=3).numpy()
    return out


def augment_images(images: np.ndarray, rng: np.random.Generator,
                   config: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """One random acquisition-style view of each image.

    Args:
        images: (B, H, W, 3) pixels 0-255 (uint8 or float).
        rng: e.g. ``np.random.default_rng(seed)``; consumed in a fixed order.

    Returns:
        float32 (B, H, W, 3) in [0, 255], same size as the input.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (B, H, W, 3), got {images.shape}.")
    count = len(images)
    if count == 0:
        return np.zeros(images.shape, np.float32)
    views = crop_and_resize(images, random_crop_boxes(count, rng, config))  # (B, H, W, 3) float32

    # Exposure: gamma on [0, 1], then contrast around the image mean, then brightness.
    shape = (count, 1, 1, 1)
    gamma = rng.uniform(1.0 - config.gamma, 1.0 + config.gamma, count).reshape(shape)
    contrast = rng.uniform(1.0 - config.contrast, 1.0 + config.contrast, count).reshape(shape)
    offset = rng.uniform(-config.brightness, config.brightness, count).reshape(shape) * 255.0
    views = 255.0 * np.power(np.clip(views / 255.0, 0.0, 1.0), gamma)
    mean = views.mean(axis=(1, 2, 3), keepdims=True)
    views = (views - mean) * contrast + mean + offset
    views = np.clip(views, 0.0, 255.0).astype(np.float32)
    views = erase_near_edges(views, rng, config)

    # Sensor and storage: sharpness, then pixel noise, then JPEG re-compression.
    if config.sharpness > 0:
        views = change_sharpness(views, rng.uniform(-min(config.sharpness, 1.0), config.sharpness, count))
    if config.noise_std > 0:
        views = add_grey_noise(views, rng, rng.uniform(0.0, config.noise_std, count))
    if config.jpeg_probability > 0:
        compress = rng.uniform(size=count) < config.jpeg_probability
        qualities = rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1, count)
        views = recompress_jpeg(views, np.where(compress, qualities, 0))
    return views


def zoom_centre(images: np.ndarray, factor: float) -> np.ndarray:
    """Zoom about the centre: ``factor`` > 1 crops in, < 1 shrinks the film onto a black border.

    Args:
        images: (B, H, W, 3) pixels 0-255.

    Returns:
        float32 (B, H, W, 3).
    """
    if not 0.3 <= factor <= 3.0:
        raise ValueError(f"zoom factor must be in [0.3, 3], got {factor}.")
    half = 0.5 / factor  # half the box side, normalized
    box = np.array([[0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half]], np.float32)
    return crop_and_resize(images, np.repeat(box, len(images), axis=0))


def crop_and_resize(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Each image cut to its box ``[y1, x1, y2, x2]`` (normalized; outside the image is black)
    and resized back to the image size, bilinear.

    Args:
        images: (B, H, W, 3) pixels 0-255; boxes: (B, 4).

    Returns:
        float32 (B, H, W, 3).
    """
    import tensorflow as tf

    images = np.asarray(images, np.float32)
    height, width = images.shape[1:3]
    return tf.image.crop_and_resize(images, np.asarray(boxes, np.float32), tf.range(len(images)),
                                    (height, width), method="bilinear", extrapolation_value=0.0).numpy()


def stress_perturbations() -> dict:
    """Fixed acquisition changes to stress-test a model on validation images: ``{name: f(images, rng)}``.

    Each ``f`` takes (B, H, W, 3) pixels 0-255 and a generator and returns float32
    (B, H, W, 3) in [0, 255]. Unlike :func:`augment_images` every image gets the
    *same* change, at the strength named, so a table of them shows which change a
    model is fragile to. The set covers what differs between X-ray machines and
    archives: pixel noise, sharpening, JPEG storage, exposure, and framing.
    """
    def gamma(value):
        return lambda images, rng: (255.0 * np.power(np.asarray(images, np.float32) / 255.0, value)).astype(np.float32)

    def noise(std):
        return lambda images, rng: add_grey_noise(np.asarray(images, np.float32), rng, np.full(len(images), std))

    return {
        "clean": lambda images, rng: np.asarray(images, np.float32),
        "noise, std 5": noise(5.0),
        "noise, std 12": noise(12.0),
        "sharpened": lambda images, rng: change_sharpness(np.asarray(images, np.float32), np.ones(len(images))),
        "JPEG quality 30": lambda images, rng: recompress_jpeg(np.asarray(images, np.float32), [30] * len(images)),
        "gamma 0.7 (brighter)": gamma(0.7),
        "gamma 1.4 (darker)": gamma(1.4),
        "zoom in 1.2x": lambda images, rng: zoom_centre(images, 1.2),
        "zoom out 0.8x": lambda images, rng: zoom_centre(images, 0.8),
    }


def collimate(images: np.ndarray, fraction: float) -> np.ndarray:
    """Black bands of ``fraction`` of the side on all four edges, as a tighter collimator leaves.

    Returns float32 (B, H, W, 3).
    """
    if not 0.0 < fraction < 0.4:
        raise ValueError(f"collimation fraction must be in (0, 0.4), got {fraction}.")
    images = np.array(images, np.float32)  # a copy
    height, width = images.shape[1:3]
    band_h, band_w = max(1, int(round(fraction * height))), max(1, int(round(fraction * width)))
    images[:, :band_h], images[:, -band_h:] = 0.0, 0.0
    images[:, :, :band_w], images[:, :, -band_w:] = 0.0, 0.0
    return images


def burn_in_text(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """White text burnt into the corners, as another hospital's system prints it: a laterality
    letter at the top right (the other side from this dataset's "R") and an ID line at the bottom.

    Returns float32 (B, H, W, 3).
    """
    from PIL import Image, ImageDraw, ImageFont

    images = np.asarray(images, np.float32)
    height, width = images.shape[1:3]
    font = ImageFont.load_default(size=max(8, height // 14))
    small = ImageFont.load_default(size=max(6, height // 28))
    out = np.empty_like(images)
    for index, image in enumerate(images):
        film = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(film)
        draw.text((int(width * 0.86), int(height * 0.04)), "L", fill=(255, 255, 255), font=font)
        number = "".join(str(digit) for digit in rng.integers(0, 10, 7))
        draw.text((int(width * 0.04), int(height * 0.92)), f"ID {number}  AP SUPINE", fill=(255, 255, 255), font=small)
        out[index] = np.asarray(film, np.float32)
    return out


def s_curve(images: np.ndarray, strength: float = 6.0) -> np.ndarray:
    """A sigmoid contrast curve (a harder look-up table than this dataset's films have).

    Returns float32 (B, H, W, 3) in [0, 255].
    """
    if strength <= 0:
        raise ValueError(f"strength must be > 0, got {strength}.")
    values = np.asarray(images, np.float32) / 255.0
    low, high = 1.0 / (1.0 + np.exp(strength / 2)), 1.0 / (1.0 + np.exp(-strength / 2))
    curved = (1.0 / (1.0 + np.exp(-strength * (values - 0.5))) - low) / (high - low)
    return (255.0 * curved).astype(np.float32)


def acquisition_shifts() -> dict:
    """:func:`stress_perturbations` and the changes another hospital's films bring that training
    augmentation does not imitate: blur, a harder contrast curve, collimation bands, text burnt
    into other corners. ``{name: f(images, rng)}``, the same contract."""
    shifts = dict(stress_perturbations())
    shifts.update({
        "blurred": lambda images, rng: change_sharpness(np.asarray(images, np.float32), -np.ones(len(images))),
        "S-shaped contrast": lambda images, rng: s_curve(images),
        "collimated, 8% bands": lambda images, rng: collimate(images, 0.08),
        "text burnt in": burn_in_text,
    })
    return shifts


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
