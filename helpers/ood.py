"""Out-of-distribution (OOD) check: does an image look like the training chest X-rays?

The classifier answers "pneumonia or not" for *any* picture, so the explorer first asks
whether the picture is a chest X-ray like those it was trained on. Two gates, in order:

1. **Colour gate** -- chest X-rays are grey: in this dataset R = G = B exactly, and a
   grey film photographed or re-encoded stays near-grey. An image whose
   colourfulness (Hasler & Suesstrunk 2003, :func:`colourfulness`) exceeds
   ``max_colourfulness`` (default 25, between their "slightly" (15) and "moderately"
   (33) colourful levels, so a grey film photographed with a warm or cold cast still
   passes) is rejected. Cheap, and it catches colour photos.
2. **Feature gate** -- the Mahalanobis distance of the image's backbone features (the
   model's ``global_pool`` layer, 1280 numbers per image) to the distribution of the
   *training* images' features (mean and Ledoit-Wolf shrunk covariance). The
   threshold is a high percentile (default 99.5th) of the distances of held-out
   training images (the validation split), so about 0.5% of genuine X-rays are
   expected to be turned away. This gate catches grey photos, drawings, text, noise.

Fit data come from train (distribution) and validation (threshold) only; the test
split is used to report the false-rejection rate, and generated non-X-ray images
(:func:`non_xray_images`) to report the rejection rate, written to ``ood.json``.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers import config, guard
from helpers.cache import load_or_compute, weights_fingerprint
from helpers.jsonio import write_json
from helpers.model import POOL_LAYER
from helpers.provenance import FittedOn
from helpers.serving import guard as guard_runtime
from helpers.serving.guard import (  # noqa: F401  (re-exported: the detector at screening time)
    DEFAULT_MAX_COLOURFULNESS,
    DEFAULT_QUANTILE,
    DETECTOR_FILE_NAME,
    OODVerdict,
    colourfulness,
)

REPORT_FILE_NAME = "ood.json"
NON_XRAY_KINDS = (
    "photo_colour", "photo_grey", "colour_noise", "grey_noise", "gradient",
    "checkerboard", "text", "flat",
)


# --------------------------------------------------------------------------- #
# Gate 2: backbone features
# --------------------------------------------------------------------------- #
# classifier -> its feature model, built once (a new Keras model retraces its predict function).
_FEATURE_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def feature_model(model):
    """A Keras model sharing ``model``'s weights: pixels (B, 224, 224, 3) 0-255 -> (B, 1280).

    Built once per classifier and reused.
    """
    if model not in _FEATURE_MODELS:
        _FEATURE_MODELS[model] = _build_feature_model(model)
    return _FEATURE_MODELS[model]


def _build_feature_model(model):
    import keras

    try:
        pool = model.get_layer(POOL_LAYER)
    except ValueError as error:
        raise ValueError(
            f"The model has no '{POOL_LAYER}' layer; build it with helpers.model.build_model()."
        ) from error
    return keras.Model(model.inputs, pool.output, name="ood_features")


def compute_features(extractor, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Features of ``images`` (N, 224, 224, 3) uint8 or float 0-255 -> (N, D) float32.

    Converts to float32 one batch at a time, so a uint8 cache of thousands of images is
    never copied whole as float32.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size], dtype=np.float32)  # (B, 224, 224, 3)
        chunks.append(np.asarray(extractor.predict_on_batch(batch), dtype=np.float32))
    if not chunks:
        raise ValueError("There are no images to compute features for.")
    return np.concatenate(chunks)


def images_fingerprint(images: np.ndarray) -> str:
    """Short SHA-1 of an image array's bytes (and shape)."""
    digest = hashlib.sha1(str(images.shape).encode())
    for start in range(0, len(images), 256):
        digest.update(np.ascontiguousarray(images[start:start + 256]).tobytes())
    return digest.hexdigest()[:16]


def cached_features(model, images: np.ndarray, batch_size: int = 64, extractor=None) -> np.ndarray:
    """:func:`compute_features` cached in ``<artifacts>/cache/features-<model>-<images>.npy``.

    The key is the model's weights and the images' bytes, so a retrained model or another
    subset gets its own entry.
    """
    return load_or_compute(
        f"features-{weights_fingerprint(model)}-{images_fingerprint(images)}.npy",
        lambda: compute_features(extractor or feature_model(model), images, batch_size),
    )


@dataclass(frozen=True)
class FeatureDistribution(guard_runtime.FeatureDistribution):
    """:class:`helpers.serving.guard.FeatureDistribution`, fitted here on training features."""

    @classmethod
    def fit(cls, features: np.ndarray) -> FeatureDistribution:
        """Mean and Ledoit-Wolf shrunk covariance of ``features`` (N, D), N > 1."""
        from sklearn.covariance import LedoitWolf

        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"Need a (N, D) feature array with N >= 2, got shape {features.shape}.")
        estimator = LedoitWolf(assume_centered=False).fit(features)
        return cls(mean=estimator.location_.astype(np.float64),
                   precision=estimator.precision_.astype(np.float64))


@dataclass(frozen=True)
class OODDetector(guard_runtime.OODDetector):
    """:class:`helpers.serving.guard.OODDetector` (the gates at screening time), saved here after fitting."""

    def save(self, path: str | Path | None = None) -> Path:
        """Write the detector as ``.npz`` (default ``<artifacts>/ood/detector.npz``)."""
        if self.fitted_on is None:
            raise ValueError("This detector does not record the model it was fitted on, so nobody could check it "
                             "at load time: fit it with fit_detector(..., fitted_on=FittedOn.of_model_file(...)).")
        path = Path(path) if path else config.artifacts_dir("ood") / DETECTOR_FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        gates = {}
        if self.xray_gate is not None:
            gates.update(self.xray_gate.to_arrays("xray"))
        if self.orientation_gate is not None:
            gates.update(self.orientation_gate.to_arrays("orientation"))
        np.savez(path, mean=self.distribution.mean, precision=self.distribution.precision,
                 distance_threshold=self.distance_threshold, max_colourfulness=self.max_colourfulness,
                 quantile=self.quantile, info=json.dumps(self.info),
                 fitted_on=json.dumps(self.fitted_on.to_dict()), **gates)
        return path


def fit_detector(
    train_features: np.ndarray,
    validation_features: np.ndarray,
    quantile: float = DEFAULT_QUANTILE,
    max_colourfulness: float = DEFAULT_MAX_COLOURFULNESS,
    fitted_on: FittedOn | None = None,
) -> OODDetector:
    """Fit the distribution on train features; threshold = ``quantile`` of validation distances.

    Args:
        train_features: (N_train, D) features of training X-rays.
        validation_features: (N_val, D) features of held-out training X-rays (never test).
        quantile: share of held-out X-rays to accept, e.g. 0.995.
        max_colourfulness: colour-gate threshold.
        fitted_on: the model the features come from
            (:meth:`helpers.provenance.FittedOn.of_model_file`); needed to save the detector.
    """
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}.")
    if max_colourfulness <= 0:
        raise ValueError(f"max_colourfulness must be > 0, got {max_colourfulness}.")
    distribution = FeatureDistribution.fit(train_features)
    validation_distances = distribution.distances(validation_features)
    threshold = float(np.quantile(validation_distances, quantile))
    info = {
        "n_fit": len(train_features),
        "n_threshold": len(validation_features),
        "validation_distance_median": float(np.median(validation_distances)),
    }
    return OODDetector(distribution, threshold, float(max_colourfulness), float(quantile), info,
                       fitted_on=fitted_on)


# --------------------------------------------------------------------------- #
# Evaluation and the report
# --------------------------------------------------------------------------- #
def evaluate_detector(
    detector: OODDetector,
    test_colourfulness: np.ndarray,
    test_features: np.ndarray,
    non_xray_colourfulness: np.ndarray,
    non_xray_features: np.ndarray,
    non_xray_kinds: np.ndarray | list[str],
) -> dict:
    """The ``ood.json`` report: what the guard says of the test X-rays and of non-X-rays.

    All arrays are per image: colourfulness (N,), features (N, D); ``non_xray_kinds``
    names each non-X-ray's generator. A test X-ray is *refused* when called not an
    X-ray or the wrong way round; *unlike the population* means answered with a referral.
    """
    test_verdicts = detector.kinds(test_colourfulness, **_gate_inputs(detector, test_features))
    other_verdicts = detector.kinds(non_xray_colourfulness, **_gate_inputs(detector, non_xray_features))
    test_distances = detector.distribution.distances(test_features)
    other_distances = detector.distribution.distances(non_xray_features)
    kinds = np.asarray(non_xray_kinds)
    if not len(kinds) == len(other_verdicts):
        raise ValueError(f"{len(kinds)} kinds for {len(other_verdicts)} non-X-ray images.")
    test_refused = ~np.isin(test_verdicts, guard.ANSWERED_KINDS)
    other_refused = ~np.isin(other_verdicts, guard.ANSWERED_KINDS)
    by_colour = np.asarray(non_xray_colourfulness) > detector.max_colourfulness
    per_kind = {
        str(kind): {
            "n": int(np.sum(kinds == kind)),
            "rejection_rate": float(np.mean(other_refused[kinds == kind])),
        }
        for kind in sorted(set(kinds.tolist()))
    }
    return {
        "method": "colour gate (Hasler-Suesstrunk colourfulness), X-ray gate and orientation gate "
                  "(softmax regressions on global_pool features, helpers.guard), then Mahalanobis distance "
                  "of global_pool features to train features (Ledoit-Wolf covariance): beyond it, "
                  "'unlike the training population' (refer)",
        "threshold": float(detector.distance_threshold),
        "threshold_quantile": float(detector.quantile),
        "threshold_chosen_on": "validation split (held-out training X-rays)",
        "max_colourfulness": float(detector.max_colourfulness),
        "xray_threshold": float(detector.xray_gate.threshold) if detector.xray_gate is not None else None,
        "n_fit": int(detector.info.get("n_fit", 0)),
        "n_threshold": int(detector.info.get("n_threshold", 0)),
        "n_test": len(test_verdicts),
        "false_rejection_rate_test": float(np.mean(test_refused)),
        "test_verdicts": _verdict_counts(test_verdicts),
        "unlike_population_rate_test": float(np.mean(test_verdicts == guard.UNLIKE_POPULATION)),
        "test_distance_median": float(np.median(test_distances)),
        "n_non_xray": len(other_verdicts),
        "rejection_rate_non_xray": float(np.mean(other_refused)),
        "non_xray_verdicts": _verdict_counts(other_verdicts),
        "rejected_by_colour_gate": int(np.sum(by_colour)),
        "rejected_by_xray_gate": int(np.sum(~by_colour & other_refused)),
        "non_xray_distance_median": float(np.median(other_distances)),
        "per_kind": per_kind,
    }


def _gate_inputs(detector: OODDetector, features: np.ndarray) -> dict:
    measured = detector.measure(features)
    return {"distance": measured["distance"], "xray_probability": measured["xray_probability"],
            "upright_probability": measured["upright_probability"]}


def _verdict_counts(kinds: np.ndarray) -> dict[str, int]:
    return {kind: int(np.sum(np.asarray(kinds) == kind)) for kind in guard.VERDICT_KINDS}


def write_report(report: dict, path: str | Path | None = None) -> Path:
    """Write ``report`` as ``<artifacts>/ood.json`` (or ``path``)."""
    return write_json(report, Path(path) if path else config.artifacts_dir() / REPORT_FILE_NAME)


# --------------------------------------------------------------------------- #
# Non-X-ray images to check the detector against (generated; nothing downloaded)
# --------------------------------------------------------------------------- #
def _sample_photos() -> list[np.ndarray]:
    """Colour photos that ship with installed packages: uint8 (H, W, 3) each."""
    import matplotlib.cbook
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(image, dtype=np.uint8) for image in load_sample_images().images]
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        photos.append(np.asarray(Image.open(handle).convert("RGB"), dtype=np.uint8))
    return photos


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _random_crop(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    side = int(rng.integers(min(height, width) // 3, min(height, width) + 1))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return _resize(image[top:top + side, left:left + side], size)


def _grey(image: np.ndarray) -> np.ndarray:
    luminance = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(np.round(luminance).astype(np.uint8)[..., None], 3, axis=-1)


def _text_page(rng: np.random.Generator, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    background, ink = (255, 0) if rng.random() < 0.7 else (0, 255)
    page = Image.new("L", (size, size), background)
    draw = ImageDraw.Draw(page)
    alphabet = list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,")
    for top in range(4, size - 10, int(rng.integers(11, 18))):
        line = "".join(rng.choice(alphabet, size=int(rng.integers(15, 40))))
        draw.text((int(rng.integers(2, 20)), top), line, fill=ink)
    return np.repeat(np.asarray(page, dtype=np.uint8)[..., None], 3, axis=-1)


def _pattern(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One generated image of ``kind``: uint8 (size, size, 3)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)  # (S, S) each in [0, 1]
    if kind == "colour_noise":
        return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    if kind == "grey_noise":
        noise = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
        if rng.random() < 0.5:  # smooth (blob-like) noise as well as pixel noise
            noise = _resize(_resize(np.repeat(noise[..., None], 3, -1), size // 16), size)[..., 0]
        return np.repeat(noise[..., None], 3, axis=-1)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * cols + np.sin(angle) * rows
        if rng.random() < 0.4:  # radial
            ramp = np.hypot(rows - rng.random(), cols - rng.random())
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        colours = rng.integers(0, 256, size=(2, 3)) if rng.random() < 0.5 else np.repeat(
            rng.integers(0, 256, size=(2, 1)), 3, axis=1)
        return np.round(colours[0] + ramp[..., None] * (colours[1] - colours[0])).astype(np.uint8)
    if kind == "checkerboard":
        square = int(rng.choice([4, 8, 16, 28, 56]))
        board = ((np.arange(size)[:, None] // square + np.arange(size)[None, :] // square) % 2).astype(np.uint8)
        low, high = sorted(rng.integers(0, 256, size=2))
        return np.repeat((low + board * (high - low)).astype(np.uint8)[..., None], 3, axis=-1)
    if kind == "text":
        return _text_page(rng, size)
    if kind == "flat":
        value = rng.integers(0, 256, size=3) if rng.random() < 0.5 else np.repeat(rng.integers(0, 256), 3)
        return np.broadcast_to(value.astype(np.uint8), (size, size, 3)).copy()
    raise ValueError(f"Unknown pattern kind {kind!r}; use one of {NON_XRAY_KINDS}.")


def non_xray_images(per_kind: int = 25, seed: int = config.DEFAULT_SEED, size: int = 224):
    """Generated images that are not chest X-rays, for checking the OOD detector.

    Kinds (:data:`NON_XRAY_KINDS`): random crops of the colour photos shipped with
    scikit-learn and matplotlib (China, flower, Grace Hopper), the same crops in grey,
    colour and grey noise, colour and grey gradients, checkerboards, text pages and
    flat images. Nothing is downloaded.

    Returns:
        images: uint8 (N, size, size, 3) with N = per_kind * len(NON_XRAY_KINDS).
        kinds: (N,) str, the kind of each image.
    """
    if per_kind < 1:
        raise ValueError(f"per_kind must be >= 1, got {per_kind}.")
    rng = np.random.default_rng(seed)
    photos = _sample_photos()
    images, kinds = [], []
    for kind in NON_XRAY_KINDS:
        for index in range(per_kind):
            if kind in ("photo_colour", "photo_grey"):
                image = _random_crop(photos[index % len(photos)], rng, size)
                image = _grey(image) if kind == "photo_grey" else image
            else:
                image = _pattern(kind, rng, size)
            images.append(image)
            kinds.append(kind)
    return np.stack(images), np.array(kinds)


# --------------------------------------------------------------------------- #
# Figures
# --------------------------------------------------------------------------- #
def plot_distances(detector: OODDetector, distances: dict[str, np.ndarray], ax=None):
    """Histograms of feature distances per group, with the threshold. Returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7.0, 3.4))
    everything = np.concatenate([np.asarray(d) for d in distances.values()])
    bins = np.linspace(0.0, float(np.percentile(everything, 99.5)) * 1.05, 60)
    for name, values in distances.items():
        ax.hist(np.clip(values, bins[0], bins[-1]), bins=bins, alpha=0.5, density=True,
                label=f"{name} (n={len(values)})")
    ax.axvline(detector.distance_threshold, color="black", linestyle="--",
               label=f"threshold {detector.distance_threshold:.1f} ({100 * detector.quantile:g}th pct of validation)")
    ax.set_xlabel("Mahalanobis distance of global_pool features to the training X-rays")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    ax.figure.tight_layout()
    return ax.figure


def plot_gallery(images: np.ndarray, titles, verdicts, columns: int = 8, image_size: float = 1.6):
    """A grid of images, each titled with its name and verdict (green accepted, red rejected)."""
    import matplotlib.pyplot as plt

    count = len(images)
    rows = int(np.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(image_size * columns, image_size * 1.25 * rows),
                                squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, title, verdict in zip(axes.ravel(), images, titles, verdicts):
        ax.imshow(np.clip(image, 0, 255).astype(np.uint8))
        label = "accepted" if verdict.accepted else verdict.kind.replace("_", " ")
        ax.set_title(f"{title}\n{label} d={verdict.distance:.0f}", fontsize=7,
                     color="green" if verdict.accepted else ("darkorange" if verdict.answered else "red"))
    figure.tight_layout()
    return figure
