"""A new site without labels: the shift report (step 1) and label-free BatchNorm adaptation (step 2).

Used by :mod:`helpers.site` (which re-exports these names) and notebook 08.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from helpers import config, ood, shift
from helpers.cache import load_or_compute, weights_fingerprint
from helpers.model import POOL_LAYER
from helpers.operating_point import OperatingPoint, sigmoid
from helpers.progress import progress_bar
from helpers.site_heads import LinearHead, estimate_prevalence, one_blas_thread

# --------------------------------------------------------------------------- #
# Step 1: the shift report (no labels)
# --------------------------------------------------------------------------- #
SHIFT_RULE = ("shifted when any of: two-sample AUC against training films (same estimated class mix) "
              ">= {auc:g}; OOD guard accepts < {acceptance:.0%} of the films; median feature distance "
              "above validation's {quantile:g}th percentile")


@dataclass(frozen=True)
class ShiftThresholds:
    two_sample_auc: float = 0.75
    min_acceptance: float = 0.97
    distance_quantile: float = 90.0


@one_blas_thread()  # the two-sample test's logistic regressions: 10x faster on a busy machine
def shift_report(site_features, site_logits, site_accepted, validation_features, validation_logits,
                 training_features, training_labels, detector, validation_point: OperatingPoint,
                 validation_prevalence: float, thresholds: ShiftThresholds = ShiftThresholds(),
                 seed: int = config.DEFAULT_SEED) -> dict:
    """How a new site's **unlabelled** films compare with validation and training.

    Args:
        site_features: (N, D) pooled features of the site's films (the model's ``global_pool``).
        site_logits: (N,) the model's logits on them.
        site_accepted: (N,) bool, the OOD guard's verdicts on them.
        validation_features, validation_logits: the same for validation (the reference).
        training_features, training_labels: training films, for the two-sample test.
        detector: the fitted ``helpers.ood.OODDetector`` (its feature distribution).
        validation_point: the validation operating point (temperature, threshold).
        validation_prevalence: PNEUMONIA share of validation, the class mix its
            temperature was fitted at (the prior of the class-mix estimate).

    Returns a JSON-able dict with ``acceptance``, ``distance`` (site and validation
    quantiles), ``scores`` (calibrated-probability quantiles, share called PNEUMONIA,
    Kolmogorov-Smirnov statistic against validation), ``estimated_prevalence``,
    ``two_sample_auc``, ``verdict``, ``shifted`` and ``reasons``.
    """
    from scipy.stats import ks_2samp

    site_features = np.asarray(site_features, dtype=np.float64)
    site_logits = np.asarray(site_logits, dtype=np.float64).reshape(-1)
    if len(site_features) != len(site_logits) or len(site_logits) != len(site_accepted):
        raise ValueError("site_features, site_logits and site_accepted need one entry per film.")
    quantiles = (5, 25, 50, 75, 95)
    site_distance = detector.distribution.distances(site_features)
    validation_distance = detector.distribution.distances(validation_features)
    site_shown = validation_point.calibrated(site_logits)
    validation_shown = validation_point.calibrated(validation_logits)
    prevalence = estimate_prevalence(site_shown, prior=validation_prevalence)
    # Two-sample test against training films resampled to the site's estimated class mix,
    # so that a different mix of classes alone does not raise the AUC.
    training_labels = np.asarray(training_labels).astype(int)
    size = min(2 * len(site_logits), int(np.bincount(training_labels, minlength=2).min()))
    sample = source_sample_for(training_labels, prevalence, size, seed)
    training_scores, site_scores = shift.domain_scores(np.asarray(training_features)[sample], site_features,
                                                       seed=seed)
    auc = shift.domain_auc(training_scores, site_scores)
    acceptance = float(np.mean(site_accepted))
    distance_limit = float(np.percentile(validation_distance, thresholds.distance_quantile))
    reasons = []
    if auc >= thresholds.two_sample_auc:
        reasons.append(f"a classifier tells these films from training films (two-sample AUC {auc:.2f})")
    if acceptance < thresholds.min_acceptance:
        reasons.append(f"the OOD guard accepts only {acceptance:.0%} of them")
    if float(np.median(site_distance)) > distance_limit:
        reasons.append(f"their median feature distance {np.median(site_distance):.1f} exceeds validation's "
                       f"{thresholds.distance_quantile:g}th percentile {distance_limit:.1f}")
    shifted = bool(reasons)
    verdict = ("shifted: calibrate before use (label some local films: helpers.site.calibrate_site)"
               if shifted else "looks like the training population")
    return {
        "n_films": len(site_logits),
        "acceptance": acceptance,
        "distance": {"site": {f"p{q:02d}": float(np.percentile(site_distance, q)) for q in quantiles},
                     "validation": {f"p{q:02d}": float(np.percentile(validation_distance, q)) for q in quantiles}},
        "scores": {"site": {f"p{q:02d}": float(np.percentile(site_shown, q)) for q in quantiles},
                   "validation": {f"p{q:02d}": float(np.percentile(validation_shown, q)) for q in quantiles},
                   "site_called_pneumonia": float(np.mean(validation_point.predicted(sigmoid(site_logits)))),
                   "validation_called_pneumonia": float(np.mean(validation_point.predicted(
                       sigmoid(np.asarray(validation_logits, dtype=np.float64))))),
                   "ks_statistic": float(ks_2samp(site_shown, validation_shown).statistic)},
        "estimated_prevalence": prevalence,
        "two_sample_auc": auc,
        "shifted": shifted, "verdict": verdict, "reasons": reasons,
        "rule": SHIFT_RULE.format(auc=thresholds.two_sample_auc, acceptance=thresholds.min_acceptance,
                                  quantile=thresholds.distance_quantile),
    }


# --------------------------------------------------------------------------- #
# Step 2: label-free adaptation (relative BatchNorm statistics)
# --------------------------------------------------------------------------- #
def batchnorm_layers(model) -> list:
    """The model's BatchNormalization layers, in graph order."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def channel_moments(extractor, images, batch_size: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and variance of each output of ``extractor`` over ``images``.

    Returns one ``(mean (C,), variance (C,))`` pair per output, over batch, height and width.
    """
    sums, squares, counts = None, None, None
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size], dtype=np.float32)  # (B, S, S, 3)
        outputs = extractor.predict_on_batch(batch)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        # each output has its own spatial size: (B * H_l * W_l, C_l) values per layer
        flat = [np.asarray(output, dtype=np.float64).reshape(-1, output.shape[-1]) for output in outputs]
        if sums is None:
            sums = [np.zeros(f.shape[1]) for f in flat]
            squares = [np.zeros(f.shape[1]) for f in flat]
            counts = [0] * len(flat)
        for index, values in enumerate(flat):
            sums[index] += values.sum(axis=0)
            squares[index] += np.square(values).sum(axis=0)
            counts[index] += values.shape[0]
    if sums is None:
        raise ValueError("No images to measure.")
    return [(total / count, np.maximum(square / count - np.square(total / count), 0.0))
            for total, square, count in zip(sums, squares, counts)]


def relative_statistics(moving_mean, moving_variance, epsilon: float, source, target,
                        min_std: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """New BatchNorm statistics that map the target's moments onto the source's.

    The layer then computes what it computed on source films for an input
    standardized from target moments to source moments,
    ``x' = (x - mean_t) * std_s / std_t + mean_s``. (Plain AdaBN would set the target
    moments as the statistics; with folded statistics, as here, that collapses the model.)
    Channels with (almost) no spread on either side keep their statistics.
    """
    mean_s, var_s = source
    mean_t, var_t = target
    std_s, std_t = np.sqrt(var_s), np.sqrt(var_t)
    moving_mean = np.asarray(moving_mean, dtype=np.float64)
    moving_variance = np.asarray(moving_variance, dtype=np.float64)
    ok = (std_s > min_std) & (std_t > min_std)
    ratio = np.where(ok, std_t / np.where(ok, std_s, 1.0), 1.0)  # (C,)
    new_variance = np.where(ok, np.square(ratio) * (moving_variance + epsilon) - epsilon, moving_variance)
    new_mean = np.where(ok, mean_t - (mean_s - moving_mean) * ratio, moving_mean)
    return new_mean, np.maximum(new_variance, 0.0)


def _moments_model(model):
    """pixels -> per film, for every BatchNorm layer's input, the channel mean (B, C) and the
    channel variance about that mean (B, C); then the pooled features (B, D). Reduced inside
    the graph, so a pass hands back a few numbers per channel, not every activation."""
    import keras
    from keras import ops

    outputs = []
    for layer in batchnorm_layers(model):
        values = layer.input  # (B, H, W, C)
        if len(values.shape) != 4:
            raise ValueError(f"BatchNorm layer {layer.name} takes a {len(values.shape)}-D input; the moments are "
                             "measured over height and width of (B, H, W, C) feature maps.")
        mean = ops.mean(values, axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
        outputs += [ops.squeeze(mean, axis=(1, 2)), ops.mean(ops.square(values - mean), axis=(1, 2))]
    outputs.append(model.get_layer(POOL_LAYER).output)  # (B, D)
    return keras.Model(model.inputs, outputs, name="batchnorm_moments")


def _measure(model, images, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One pass over ``images``: ``(features (N, D) float32, moments (2, sum of C) float64)``.

    Every film has the same number of values per channel, so over all films the mean is
    the mean of the film means, and the variance the mean of the film variances plus
    the variance of the film means (summed in float64).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if len(images) == 0:
        raise ValueError("No images to measure.")
    extractor = _moments_model(model)
    features, sums, squares, variances = [], 0.0, 0.0, 0.0
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size], dtype=np.float32)  # (B, S, S, 3)
        outputs = [np.asarray(output, dtype=np.float64) for output in extractor.predict_on_batch(batch)]
        means = np.concatenate(outputs[0:-1:2], axis=1)  # (B, sum of C) film means
        sums = sums + means.sum(axis=0)
        squares = squares + np.square(means).sum(axis=0)
        variances = variances + np.concatenate(outputs[1:-1:2], axis=1).sum(axis=0)
        features.append(outputs[-1].astype(np.float32))
    count = len(images)
    mean = sums / count
    variance = variances / count + np.maximum(squares / count - np.square(mean), 0.0)
    return np.concatenate(features), np.stack([mean, variance])


def features_and_moments(model, images, batch_size: int = 32) -> tuple[np.ndarray, list]:
    """The pooled features of ``images`` and the channel moments of every BatchNorm input, in one pass.

    Returns ``(features (N, D) float32, [(mean (C,), variance (C,)) per BatchNorm layer])``,
    the moments over films, height and width, measured through ``model`` as it is. Both
    are cached under ``<artifacts>/cache/`` by the model's weights and the images' bytes
    (the features under the key :func:`helpers.ood.cached_features` uses), so a film set
    measured once (a site, a source sample) is never run through the network again.
    """
    key = f"{weights_fingerprint(model)}-{ood.images_fingerprint(np.asarray(images))}"
    measured = {}

    def measure(part: int) -> np.ndarray:
        if not measured:
            measured["both"] = _measure(model, images, batch_size)
        return measured["both"][part]

    features = load_or_compute(f"features-{key}.npy", lambda: measure(0))
    flat = load_or_compute(f"batchnorm-moments-{key}.npy", lambda: measure(1))  # (2, sum of C)
    sizes = [int(layer.input.shape[-1]) for layer in batchnorm_layers(model)]
    edges = np.cumsum([0] + sizes)
    if flat.shape != (2, edges[-1]):
        raise ValueError(f"The cached BatchNorm moments have shape {flat.shape}, not (2, {edges[-1]}): delete "
                         f"batchnorm-moments-{key}.npy from the cache folder and run again.")
    return features, [(flat[0, low:high], flat[1, low:high]) for low, high in pairwise(edges)]


def adapt_batchnorm(model, source_images, target_images, layers_per_pass: int = 4, batch_size: int = 16,
                    progress: bool = True, first_layers: int | None = None):
    """A copy of ``model`` whose BatchNorm layers map target moments onto source moments.

    Args:
        source_images: (N, S, S, 3) 0-255 films like the training data, **with the
            target's class mix** (a different mix is mistaken for a change of site:
            :func:`source_sample_for`).
        target_images: (M, S, S, 3) unlabelled films of the new site.
        layers_per_pass: BatchNorm layers adapted per pass; the target's moments of
            each group are measured through the already adapted layers below it. In
            one pass (``layers_per_pass`` at least the number of layers adapted) every
            moment is measured through the original model, so the moments of
            :func:`features_and_moments` (cached) serve for every depth.
        first_layers: adapt only the first this many BatchNorm layers (None: all).
            Early layers see acquisition (contrast, exposure, sharpness); deep ones see
            content, whose moments also move with the class mix and with sampling noise.

    Returns a new Keras model (same layers and names; convertible to TFLite).
    """
    import keras

    if layers_per_pass < 1:
        raise ValueError(f"layers_per_pass must be >= 1, got {layers_per_pass}.")
    layers = batchnorm_layers(model)[:first_layers]
    if not layers:
        raise ValueError("The model has no BatchNormalization layer to adapt.")
    adapted = keras.models.clone_model(model)
    adapted.set_weights(model.get_weights())
    names = [layer.name for layer in layers]
    source = features_and_moments(model, source_images, batch_size)[1]
    target_first = features_and_moments(model, target_images, batch_size)[1]  # through the original layers
    groups = [names[start:start + layers_per_pass] for start in range(0, len(names), layers_per_pass)]
    offset = 0
    for number, group in enumerate(progress_bar(groups, desc="adapt BatchNorm", disable=not progress)):
        if number == 0:  # nothing below the first group is adapted yet
            target = target_first[:len(group)]
        else:
            extractor = keras.Model(adapted.inputs, [adapted.get_layer(name).input for name in group])
            target = channel_moments(extractor, target_images, batch_size)
        for name, target_moments in zip(group, target):
            layer = adapted.get_layer(name)
            mean, variance = relative_statistics(np.asarray(layer.moving_mean), np.asarray(layer.moving_variance),
                                                 float(layer.epsilon), source[offset], target_moments)
            layer.moving_mean.assign(mean.astype(np.float32))
            layer.moving_variance.assign(variance.astype(np.float32))
            offset += 1
    return adapted


def label_free_logits(model, source_images, target_images, layers_per_pass: int = 4, batch_size: int = 32,
                      progress: bool = False, first_layers: int | None = None):
    """``(logits (M,), adapted model)``: the target films through :func:`adapt_batchnorm`'s model.

    The adapted model's features are cached by its weights and the films, so the same
    adaptation asked for twice runs the network once.
    """
    adapted = adapt_batchnorm(model, source_images, target_images, layers_per_pass, batch_size, progress,
                              first_layers)
    features = ood.cached_features(adapted, np.asarray(target_images), batch_size)  # (M, 1280)
    return LinearHead.from_model(adapted).logits(features), adapted


def label_free_site_logits(model, training_images, training_labels, site_images, site_prevalence: float,
                           size: int, depth: int | None, layers_per_pass: int = 100, batch_size: int = 32,
                           seed: int = config.DEFAULT_SEED) -> np.ndarray:
    """The label-free row of a site: (M,) logits of its films after class-mix-matched adaptation.

    ``size`` training films with the site's PNEUMONIA share ``site_prevalence`` (estimated
    without labels, e.g. :func:`shift_report`'s ``estimated_prevalence``) are drawn with
    ``seed`` (:func:`source_sample_for`); the first ``depth`` BatchNorm layers are mapped
    from the site's moments onto theirs (:func:`adapt_batchnorm`; ``depth`` None: all,
    0: none, so the logits are the original model's, as :func:`depth_control` chooses
    when no depth passes). The same arguments give the same logits.
    """
    if depth == 0:
        return LinearHead.from_model(model).logits(features_and_moments(model, site_images, batch_size)[0])
    source = np.asarray(training_images)[source_sample_for(training_labels, site_prevalence, size, seed)]
    return label_free_logits(model, source, site_images, layers_per_pass, batch_size, first_layers=depth)[0]


def source_sample_for(training_labels, prevalence: float, size: int, seed: int = config.DEFAULT_SEED) -> np.ndarray:
    """Indices of ``size`` training films with PNEUMONIA share ``prevalence`` (seeded, sorted)."""
    labels = np.asarray(training_labels).astype(int)
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence must be in [0, 1], got {prevalence}.")
    positives = int(round(prevalence * size))
    pools = (np.flatnonzero(labels == 1), np.flatnonzero(labels == 0))
    wanted = (positives, size - positives)
    if any(count > len(pool) for count, pool in zip(wanted, pools)):
        raise ValueError(f"Not enough training films for {wanted[0]} PNEUMONIA + {wanted[1]} NORMAL.")
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(pool, count, replace=False) for pool, count in zip(pools, wanted)]))


CONTROL_TOLERANCE = 0.25  # largest |mean logit change| accepted when adapting training films to training films
DEPTH_RULE_TEXT = ("adapt the first N BatchNorm layers, N the deepest candidate whose same-population control "
                   "(one training sample adapted to another, disjoint, of the same size and class mix) moves the "
                   f"mean logit by at most {CONTROL_TOLERANCE} -- chosen without any label of the site")


def disjoint_training_samples(training_labels, prevalence: float, size: int,
                              seed: int = config.DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets of ``size`` training films each, both with PNEUMONIA share ``prevalence``."""
    labels = np.asarray(training_labels).astype(int)
    first = source_sample_for(labels, prevalence, size, seed)
    rest = np.setdiff1d(np.arange(len(labels)), first)  # (R,) films not in the first sample
    second = rest[source_sample_for(labels[rest], prevalence, size, seed + 1)]
    return first, np.sort(second)


def depth_control(model, training_images, training_labels, prevalence: float, size: int, depths,
                  tolerance: float = CONTROL_TOLERANCE, layers_per_pass: int = 100, batch_size: int = 32,
                  seed: int = config.DEFAULT_SEED) -> dict:
    """How deep label-free adaptation may go before sampling noise alone moves the logits.

    Adapting one sample of training films to another of the same population should
    change nothing; every BatchNorm layer adapted adds the sampling noise of the two
    samples' channel moments, and deep layers compound it: the change grows with the
    number of layers adapted, from next to nothing for the first few to several logits
    for all of them (notebook 08 prints ``shifts``). No site label is used.

    Args:
        training_images: (N, S, S, 3) 0-255 training films; ``training_labels`` (N,).
        prevalence: the class mix of both samples (the site's, estimated by EM).
        size: films per sample (the site's size, at most what the training films allow).
        depths: candidate numbers of first BatchNorm layers (None: all of them).

    Returns ``{"shifts": {name: mean logit change}, "chosen": depth, ...}`` with names
    ``"4"``, ``"10"``, ... and ``"all"``; ``chosen`` is the deepest passing candidate
    (None: all layers; 0: none passes, so do not adapt).
    """
    first, second = disjoint_training_samples(training_labels, prevalence, size, seed)
    source, target = training_images[first], training_images[second]
    head = LinearHead.from_model(model)
    before = head.logits(features_and_moments(model, target, batch_size)[0])  # (size,), moments cached for later
    shifts, passing = {}, []
    for depth in depths:
        after, _ = label_free_logits(model, source, target, layers_per_pass, batch_size, first_layers=depth)
        name = "all" if depth is None else str(depth)
        shifts[name] = float(np.mean(after - before))
        if abs(shifts[name]) <= tolerance:
            passing.append(depth)
    deepest = max(passing, key=lambda depth: np.inf if depth is None else depth) if passing else 0
    return {"shifts": shifts, "chosen": deepest, "tolerance": tolerance, "size": int(size),
            "prevalence": float(prevalence), "rule": DEPTH_RULE_TEXT}
