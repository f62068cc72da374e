"""Batched prediction and the on-disk cache of backbone activations (notebooks 02 and 03; re-exported by
:mod:`helpers.training`).

Fine-tuning runs the frozen part of the backbone once per film: its activations at
the cut layer are cached by content (model weights, films, layer), so later epochs and
reruns train the top of the network only.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from helpers import augment, config, data
from helpers import model as model_lib
from helpers.cache import load_or_compute, weights_fingerprint
from helpers.progress import progress_bar

DEFAULT_CUT_LAYER = "block_11_expand"


def resolve_strategy(strategy=None):
    """``strategy`` or the current ``tf.distribute`` strategy (the default one on CPU)."""
    import tensorflow as tf

    return strategy if strategy is not None else tf.distribute.get_strategy()



# --------------------------------------------------------------------------- #
# Sub-models of the flat graph (they share weights with the full model)
# --------------------------------------------------------------------------- #
def feature_extractor(model, cut_layer: str):
    """image (B, 224, 224, 3) 0-255 -> the input tensor of ``cut_layer``."""
    import keras

    return keras.Model(model.inputs, model.get_layer(cut_layer).input, name=f"to_{cut_layer}")


def top_model(model, cut_layer: str):
    """The input tensor of ``cut_layer`` -> probability (B, 1); shares weights with ``model``."""
    import keras

    return keras.Model(model.get_layer(cut_layer).input, model.outputs, name=f"from_{cut_layer}")


def pooling_model(model, cut_layer: str):
    """The input tensor of ``cut_layer`` -> pooled features (B, 1280)."""
    import keras

    return keras.Model(model.get_layer(cut_layer).input,
                       model.get_layer(model_lib.POOL_LAYER).output, name=f"pool_from_{cut_layer}")


def head_model(model):
    """Pooled features (B, 1280) -> probability (B, 1); shares weights with ``model``."""
    return top_model(model, model_lib.HEAD_DROPOUT_LAYER)


# --------------------------------------------------------------------------- #
# Batched prediction and the activation cache
# --------------------------------------------------------------------------- #
def predict_in_batches(model, inputs: np.ndarray, batch_size: int = 64, chunk_size: int = 512,
                       progress: bool = True, desc: str = "predict", strategy=None) -> np.ndarray:
    """``model.predict`` over ``inputs`` in chunks, with a progress bar.

    Inputs may be uint8 images (cast to float32 per chunk, so the float copy of a
    whole split is never in memory). Returns float32 of shape (N, *output_shape).
    """
    strategy = resolve_strategy(strategy)
    outputs = []
    starts = range(0, len(inputs), chunk_size)
    with strategy.scope():
        for start in progress_bar(starts, desc=desc, disable=not progress, total=len(starts)):
            chunk = np.asarray(inputs[start:start + chunk_size], dtype=np.float32)
            outputs.append(np.asarray(model.predict(chunk, batch_size=batch_size, verbose=0), dtype=np.float32))
    if not outputs:
        raise ValueError("inputs is empty: nothing to predict.")
    return np.concatenate(outputs)


def _activation_key_text(model, extractor, examples, cut_layer: str) -> str:
    """What a cached activation depends on: the images' content, the cut, the frozen weights and
    the layers below the cut (a weightless layer such as a border mask changes the output too)."""
    layers = json.dumps([[type(layer).__name__, layer.get_config()] for layer in extractor.layers],
                        sort_keys=True, default=str)
    return "|".join([
        "".join(examples.content_hashes()), cut_layer, weights_fingerprint(extractor), str(model.input_shape),
        _short_hash(layers),
    ])


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cached_activations(model, examples, cut_layer: str = DEFAULT_CUT_LAYER, batch_size: int = 64,
                       strategy=None, progress: bool = True) -> np.ndarray:
    """The frozen network's output at ``cut_layer`` for ``examples``, cached on disk.

    The cache file ``<artifacts>/cache/activations-<cut>-<N>-<key>.npy`` is keyed by
    the images' content hashes, the cut layer and a fingerprint of the frozen
    weights below the cut, so a different subset, image or weight file never reuses
    a stale entry. Images are decoded through :func:`helpers.data.decode_images_cached`.

    Returns:
        float32 (N, H, W, C), e.g. (N, 14, 14, 96) for ``block_11_expand``.
    """
    extractor = feature_extractor(model, cut_layer)
    key = _short_hash(_activation_key_text(model, extractor, examples, cut_layer))

    def compute() -> np.ndarray:
        images = data.decode_images_cached(examples, image_size=model.input_shape[1])  # (N, S, S, 3) uint8
        return predict_in_batches(extractor, images, batch_size, progress=progress,
                                  desc=f"frozen base -> {cut_layer}", strategy=strategy)

    return load_or_compute(f"activations-{cut_layer}-{len(examples)}-{key}.npy", compute)


def cached_view_activations(model, examples, cut_layer: str = DEFAULT_CUT_LAYER, views: int = 4,
                            augment_config=None, seed: int = config.DEFAULT_SEED, batch_size: int = 64,
                            strategy=None, progress: bool = True) -> list[np.ndarray]:
    """Activations at ``cut_layer`` of ``views`` augmented copies of ``examples``, cached.

    View ``v`` is :func:`helpers.augment.augment_images` with the generator
    ``np.random.default_rng([seed, v])``, run through the frozen layers once and
    stored like :func:`cached_activations` (the key adds the augmentation settings,
    the seed and the view number). Training draws from them with :class:`ViewBatches`.

    Returns:
        ``views`` float32 arrays (N, H, W, C), e.g. (N, 14, 14, 96) for ``block_11_expand``.
    """
    if views < 0:
        raise ValueError(f"views must be >= 0, got {views}.")
    augment_config = augment_config or augment.AugmentConfig()
    extractor = feature_extractor(model, cut_layer)
    key_prefix = "|".join([_activation_key_text(model, extractor, examples, cut_layer),
                           json.dumps(augment_config.to_dict(), sort_keys=True), str(seed)])
    decoded = []  # the decoded images, read once for all the views that need computing
    chunk = 256
    arrays = []
    for view in range(views):
        key = _short_hash(f"{key_prefix}|view{view}")

        def compute(view=view) -> np.ndarray:
            if not decoded:
                decoded.append(data.decode_images_cached(examples, image_size=model.input_shape[1]))
            images = decoded[0]  # (N, S, S, 3) uint8
            rng = np.random.default_rng([seed, view])
            starts = range(0, len(images), chunk)
            return np.concatenate([
                predict_in_batches(extractor, augment.augment_images(images[start:start + chunk], rng,
                                                                     augment_config),
                                   batch_size, progress=False, strategy=strategy)
                for start in progress_bar(starts, desc=f"view {view + 1}/{views} -> {cut_layer}",
                                          disable=not progress, total=len(starts))
            ])

        arrays.append(load_or_compute(f"views-{cut_layer}-{len(examples)}-{key}.npy", compute))
    return arrays


def pooled_features(model, activations: np.ndarray, cut_layer: str = DEFAULT_CUT_LAYER,
                    batch_size: int = 64, strategy=None, progress: bool = True) -> np.ndarray:
    """(N, 1280) pooled features from cut activations (runs the frozen top once)."""
    return predict_in_batches(pooling_model(model, cut_layer), activations, batch_size,
                              progress=progress, desc="top -> pooled features", strategy=strategy)


def array_batches(x: np.ndarray, y: np.ndarray, batch_size: int = 32, shuffle: bool = False,
                  seed: int = config.DEFAULT_SEED, repeat: bool = False):
    """tf.data over in-memory arrays: (x float32, y float32 (B,)), seeded reshuffle each epoch."""
    import tensorflow as tf

    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels.")
    dataset = tf.data.Dataset.from_tensor_slices((np.asarray(x, np.float32), np.asarray(y, np.float32)))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class ViewBatches:
    """Training batches that draw each image from one of several cached *views*.

    ``views[0]`` holds the un-augmented arrays and ``views[1:]`` augmented ones
    (:func:`cached_view_activations`), all of shape (N, ...). Every epoch visits
    each index of ``indices`` once, in a new seeded order, and takes each image
    from a view chosen at random, so V cached views act like on-the-fly
    augmentation at the cost of V forward passes in total.

    Batches are ``(x float32 (B, ...), y float32 (B,), sample_weight float32 (B,))``;
    the sample weight carries ``class_weight`` (1.0 without it). Use
    :meth:`as_keras` to pass it to ``fit``.
    """

    def __init__(self, views, labels, indices=None, batch_size: int = 32,
                 class_weight: dict | None = None, seed: int = config.DEFAULT_SEED):
        self.views = [np.asarray(view) for view in views]
        if not self.views:
            raise ValueError("views is empty: pass at least the un-augmented arrays.")
        sizes = {len(view) for view in self.views}
        shapes = {view.shape[1:] for view in self.views}
        if len(sizes) != 1 or len(shapes) != 1:
            raise ValueError(f"Every view must have the same shape, got {[v.shape for v in self.views]}.")
        self.labels = np.asarray(labels, np.float32).reshape(-1)
        if len(self.labels) != sizes.pop():
            raise ValueError(f"{len(self.views[0])} inputs per view but {len(self.labels)} labels.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.indices = np.arange(len(self.labels)) if indices is None else np.asarray(indices)
        self.batch_size = batch_size
        weights = np.ones(2, np.float32)
        for label, weight in (class_weight or {}).items():
            weights[int(label)] = weight
        self.sample_weights = weights[self.labels.astype(int)]
        self.rng = np.random.default_rng(seed)
        self.new_epoch()

    def new_epoch(self) -> None:
        """Draw the next epoch's order and view of each sample."""
        self.order = self.rng.permutation(self.indices)
        self.view_of = self.rng.integers(len(self.views), size=len(self.order))

    def __len__(self) -> int:
        return int(np.ceil(len(self.order) / self.batch_size))

    def __getitem__(self, batch: int):
        if not 0 <= batch < len(self):
            raise IndexError(f"batch {batch} out of range (0-{len(self) - 1}).")
        chosen = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
        indices, views = self.order[chosen], self.view_of[chosen]
        x = np.stack([self.views[view][index] for index, view in zip(indices, views)]).astype(np.float32)
        return x, self.labels[indices], self.sample_weights[indices]

    def as_keras(self):
        """A ``keras.utils.PyDataset`` over these batches (a new order each epoch)."""
        import keras

        batches = self

        class _Batches(keras.utils.PyDataset):
            def __len__(self):
                return len(batches)

            def __getitem__(self, batch):
                return batches[batch]

            def on_epoch_end(self):
                batches.new_epoch()

        return _Batches()


