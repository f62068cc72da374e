"""Two-phase fine-tuning of the MobileNetV2 classifier, fast on CPU by caching.

Every BatchNormalization layer runs in inference mode and the layers below the cut
are frozen, so the frozen part of the network is a fixed function of the image.
We run it once per image (and once per augmented *view*), store its output under
``<artifacts>/cache/`` and train only what changes:

* phase 1 -- frozen base, train the head (dropout + ``logit``) on cached pooled
  1280-d features (``global_pool``): an epoch takes a fraction of a second instead
  of a full forward pass over every image;
* phase 2 -- unfreeze from a cut layer (default ``block_11_expand``: blocks 11-16,
  ``Conv_1`` and the head; BatchNorm stays frozen) with a lower learning rate and
  train the *top sub-model* on the cached activations at the cut (14x14x96 for
  blocks 11-13, 7x7x160 for blocks 14-15). The default was chosen on validation
  among blocks 7, 11, 13 and 14 (see notebook 03).

Augmentation (acquisition-style framing, exposure and marker erasing; never flips
or rotations, see :mod:`helpers.augment`) fits the same scheme: a few augmented
views of every training image are run through the frozen layers once
(:func:`cached_view_activations`), and each epoch takes every image from one view
drawn at random (:class:`ViewBatches`). V views cost V forward passes in total
instead of one per epoch.

Sub-models made from the flat functional graph (``keras.Model(cut_tensor,
model.output)``) share their layers and weights with the full model, so training
them trains the model that is saved. Early stopping and the best-weights checkpoint
watch the validation metric across both phases; phase 2 continues the epoch count
(``initial_epoch``).

Strategy-aware: functions take a ``tf.distribute`` strategy (default: the current
one, ``tf.distribute.get_strategy()``); build and compile the model under its
scope (:func:`build_and_compile` does).

Determinism: :func:`helpers.config.set_seeds` seeds Python, NumPy and TF; the data
order comes from seeded ``tf.data`` shuffles and dropout from Keras' seeded
generator. What remains: multi-threaded oneDNN kernels may sum in different orders,
so weights (and metrics) can differ in the last digits between runs or machines;
``config.enable_op_determinism()`` removes this at a speed cost.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers import augment, config, evaluation, imbalance
from helpers import model as model_lib
from helpers.activations import (  # noqa: F401  (re-exported: batched prediction, the activation cache)
    ViewBatches,
    array_batches,
    cached_activations,
    cached_view_activations,
    feature_extractor,
    head_model,
    pooled_features,
    pooling_model,
    predict_in_batches,
    resolve_strategy,
    top_model,
)

DEFAULT_CUT_LAYER = "block_11_expand"
METRIC_NAMES = ("loss", "auc", "pr_auc", "precision", "recall")


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class TrainingConfig:
    """Everything that defines a fine-tuning run (saved in the training record)."""

    head_epochs: int = 20
    head_learning_rate: float = 1e-3
    finetune_epochs: int = 10
    finetune_learning_rate: float = 1e-4
    unfreeze_from: str = DEFAULT_CUT_LAYER
    batch_size: int = 32
    dropout: float = 0.2
    patience: int = 3
    monitor: str = "val_loss"
    imbalance: str = "class_weights"
    seed: int = config.DEFAULT_SEED
    # Stochastic weight averaging over phase 2: 0 keeps the best epoch (early stopping);
    # k >= 1 runs every phase-2 epoch and keeps the mean of the weights after epochs k, k+1, ...
    average_from_epoch: int = 0
    # > 0: the model hides the outer band of this fraction of each side (helpers.layers.BorderMask).
    border_mask: float = 0.0

    def __post_init__(self):
        if self.head_epochs < 1 or self.finetune_epochs < 0:
            raise ValueError("head_epochs must be >= 1 and finetune_epochs >= 0, got "
                             f"{self.head_epochs} and {self.finetune_epochs}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}.")
        if self.imbalance not in imbalance.STRATEGIES:
            raise ValueError(f"imbalance must be one of {imbalance.STRATEGIES}, got {self.imbalance!r}.")
        if not 0 <= self.average_from_epoch <= self.finetune_epochs:
            raise ValueError(f"average_from_epoch must be in [0, finetune_epochs={self.finetune_epochs}], "
                             f"got {self.average_from_epoch}.")
        if not self.monitor.startswith("val_"):
            raise ValueError(f"monitor must be a validation metric like 'val_auc', got {self.monitor!r}.")

    @property
    def monitor_mode(self) -> str:
        """``"min"`` for a loss, ``"max"`` for every other metric (AUC, recall, ...)."""
        return monitor_mode(self.monitor)

    def to_dict(self) -> dict:
        return asdict(self)


def monitor_mode(monitor: str) -> str:
    """``"min"`` when ``monitor`` is a loss (``val_loss``), else ``"max"``."""
    return "min" if monitor.endswith("loss") else "max"


def chosen_imbalance_strategy(comparison_file: str | Path, default: str = "class_weights") -> str:
    """The strategy notebook 02 chose (``"chosen"`` in its ``comparison.json``), else ``default``."""
    path = Path(comparison_file)
    if not path.is_file():
        return default
    chosen = json.loads(path.read_text()).get("chosen", default)
    if chosen not in imbalance.STRATEGIES:
        raise ValueError(f"{path} names an unknown strategy {chosen!r} (known: {imbalance.STRATEGIES}). "
                         "Re-run notebooks/02_class_imbalance.ipynb.")
    return chosen


def training_metrics() -> list:
    """The metrics every phase reports (train and ``val_``): AUC, PR-AUC, precision, recall."""
    import keras

    return [
        keras.metrics.AUC(name="auc"),
        keras.metrics.AUC(curve="PR", name="pr_auc"),
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
    ]


def compile_classifier(model, learning_rate: float) -> None:
    """Adam + binary cross-entropy + :func:`training_metrics`.

    Call under the strategy's scope so optimizer slots are created there.
    """
    import keras

    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}.")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=training_metrics(),
    )


def build_and_compile(training_config: TrainingConfig, output_bias: float | None = None,
                      weights: str | None = "imagenet", strategy=None, image_size: int | None = None):
    """Build the classifier under ``strategy``'s scope, base frozen."""
    strategy = resolve_strategy(strategy)
    kwargs = {} if image_size is None else {"image_size": image_size}
    with strategy.scope():
        model = model_lib.build_model(weights=weights, dropout=training_config.dropout,
                                      output_bias=output_bias, border_mask=training_config.border_mask, **kwargs)
    return model


# --------------------------------------------------------------------------- #
# Metrics on probabilities
# --------------------------------------------------------------------------- #
def probability_metrics(labels, probabilities, threshold: float = 0.5) -> dict:
    """``helpers.evaluation.binary_metrics`` plus balanced accuracy and the threshold.

    One set of metric definitions for the whole project: roc_auc, pr_auc, recall,
    specificity, precision, accuracy, f1, the counts tp/fp/tn/fn, and here also
    balanced_accuracy (the imbalance notebook ranks strategies by it) and threshold.
    """
    metrics = evaluation.binary_metrics(labels, probabilities, threshold)
    metrics["balanced_accuracy"] = float((metrics["recall"] + metrics["specificity"]) / 2)
    metrics["threshold"] = float(threshold)
    return metrics


def stress_test(model, images: np.ndarray, labels, threshold: float, seed: int = config.DEFAULT_SEED,
                perturbations: dict | None = None, progress: bool = True):
    """Metrics of ``model`` on changed copies of (validation) images, one row per change.

    Args:
        images: (N, S, S, 3) pixels 0-255; labels: (N,) 0/1.
        threshold: the decision threshold the recall/specificity/accuracy columns use.
        perturbations: ``{name: f(images, rng)}``, default
            :func:`helpers.augment.stress_perturbations`.

    Returns:
        A DataFrame indexed by change: ``roc_auc``, ``recall``, ``specificity``,
        ``accuracy`` at ``threshold``, and ``normal_p90`` (90th percentile of
        P(PNEUMONIA) on the NORMAL films: how close the normals drift to the threshold).
    """
    labels = np.asarray(labels).astype(int)
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}.")
    perturbations = augment.stress_perturbations() if perturbations is None else perturbations
    rows = {}
    for index, (name, change) in enumerate(perturbations.items()):
        rng = np.random.default_rng([seed, index])
        # Change and predict chunk by chunk: no float copy of the whole split in memory.
        probabilities = np.concatenate([
            predict_in_batches(model, change(images[start:start + 256], rng), progress=False).reshape(-1)
            for start in range(0, len(images), 256)])  # (N,)
        metrics = evaluation.binary_metrics(labels, probabilities, threshold)
        normal = probabilities[labels == 0]
        rows[name] = {"roc_auc": metrics["roc_auc"], "recall": metrics["recall"],
                      "specificity": metrics["specificity"], "accuracy": metrics["accuracy"],
                      "normal_p90": float(np.percentile(normal, 90)) if len(normal) else float("nan")}
        if progress:
            print(f"{name:>22}: specificity {metrics['specificity']:.3f}, recall {metrics['recall']:.3f}")
    return pd.DataFrame.from_dict(rows, orient="index")


def recall_threshold(labels, probabilities, min_recall: float = 0.98) -> float:
    """The highest threshold keeping recall >= ``min_recall`` (``evaluation.choose_threshold``)."""
    return float(evaluation.choose_threshold(np.asarray(labels), np.asarray(probabilities), min_recall=min_recall))


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
class BestWeightsCheckpoint:
    """Keeps (and optionally saves) the full model's best weights across both phases.

    A Keras callback (see :meth:`callback`) for each phase's ``fit``; the best value
    carries over from phase 1 to phase 2, so a phase 2 that never beats phase 1 leaves
    phase 1's weights in place after :meth:`restore`.
    """

    def __init__(self, full_model, monitor: str = "val_loss", path: str | Path | None = None):
        self.full_model = full_model
        self.monitor = monitor
        self.sign = -1.0 if monitor_mode(monitor) == "min" else 1.0  # compare sign * value, higher wins
        self.path = Path(path) if path else None
        self.best_value = -np.inf if self.sign > 0 else np.inf
        self.best_epoch = None  # 1-based
        self.best_weights = None

    def callback(self):
        import keras

        checkpoint = self

        class _Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                checkpoint.update(epoch + 1, (logs or {}).get(checkpoint.monitor))

        return _Callback()

    def update(self, epoch: int, value) -> bool:
        if value is None:
            raise ValueError(f"The monitored metric {self.monitor!r} is not in the logs: pass "
                             "validation data, or monitor one of the logged val_ metrics.")
        if not self.sign * value > self.sign * self.best_value:
            return False
        self.best_value, self.best_epoch = float(value), int(epoch)
        self.best_weights = self.full_model.get_weights()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.full_model.save(self.path)
        return True

    def restore(self) -> None:
        if self.best_weights is None:
            raise ValueError("No epoch was recorded yet: nothing to restore.")
        self.full_model.set_weights(self.best_weights)


class WeightAverage:
    """The running mean of a model's weights after chosen epochs: stochastic weight averaging
    (Izmailov et al., UAI 2018), which Cha et al. (SWAD, NeurIPS 2021) found to generalise
    better to unseen domains than the best single epoch.

    BatchNorm runs in inference mode with frozen statistics here, so the averaged weights
    need no BatchNorm update afterwards.
    """

    def __init__(self, full_model, first_epoch: int):
        if first_epoch < 1:
            raise ValueError(f"first_epoch must be >= 1 (1-based), got {first_epoch}.")
        self.full_model = full_model
        self.first_epoch = int(first_epoch)
        self.epochs: list[int] = []
        self._sums = None

    def callback(self):
        import keras

        average = self

        class _Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                average.update(epoch + 1)

        return _Callback()

    def update(self, epoch: int) -> bool:
        if epoch < self.first_epoch:
            return False
        weights = [np.asarray(weight, dtype=np.float64) for weight in self.full_model.get_weights()]
        self._sums = weights if self._sums is None else [total + weight for total, weight in zip(self._sums, weights)]
        self.epochs.append(int(epoch))
        return True

    def apply(self) -> None:
        if not self.epochs:
            raise ValueError(f"No epoch from {self.first_epoch} on was recorded: nothing to average.")
        current = self.full_model.get_weights()
        self.full_model.set_weights([(total / len(self.epochs)).astype(weight.dtype)
                                     for total, weight in zip(self._sums, current)])


@dataclass
class TrainingResult:
    """What :func:`train_two_phase` did.

    ``history`` maps each metric (``loss``, ``val_auc``, ...) to one value per epoch;
    ``phase`` gives each epoch's phase (1 or 2); epochs are 1-based.
    """

    history: dict[str, list[float]]
    phase: list[int]
    best_epoch: int
    best_value: float
    monitor: str
    epochs_per_phase: dict[str, int]
    seconds_per_phase: dict[str, float]
    trainable_layers_phase2: list[str] = field(default_factory=list)
    averaged_epochs: list[int] = field(default_factory=list)  # empty: the best epoch's weights

    @property
    def epochs(self) -> list[int]:
        return list(range(1, len(self.phase) + 1))

    def summary(self) -> dict:
        return {
            "epochs_run": len(self.phase),
            "epochs_per_phase": self.epochs_per_phase,
            "best_epoch": self.best_epoch,
            "best_phase": self.phase[self.best_epoch - 1],
            f"best_{self.monitor}": self.best_value,
            "seconds_per_phase": self.seconds_per_phase,
            "trainable_layers_phase2": len(self.trainable_layers_phase2),
            "averaged_epochs": self.averaged_epochs,
        }


def _append_history(merged: dict, history: dict, phase_list: list, phase: int) -> None:
    lengths = {len(values) for values in history.values()}
    epochs = lengths.pop() if lengths else 0
    for key, values in history.items():
        merged.setdefault(key, []).extend(float(v) for v in values)
    phase_list.extend([phase] * epochs)


def train_two_phase(
    model,
    train_activations: np.ndarray,
    train_labels: np.ndarray,
    validation_activations: np.ndarray,
    validation_labels: np.ndarray,
    training_config: TrainingConfig = TrainingConfig(),
    strategy=None,
    checkpoint_path: str | Path | None = None,
    verbose: int = 2,
    train_views=(),
) -> TrainingResult:
    """Phase 1 (head on pooled features) then phase 2 (top blocks on cut activations).

    Args:
        model: from :func:`build_and_compile` / :func:`helpers.model.build_model`,
            built under ``strategy``'s scope. Trained in place; on return it holds
            the best validation weights of either phase.
        train_activations: (N, H, W, C) float32, :func:`cached_activations` at
            ``training_config.unfreeze_from``.
        train_labels: (N,) 0/1.
        validation_activations, validation_labels: the same for validation.
        checkpoint_path: where the best full model is saved whenever it improves.
        train_views: augmented copies of ``train_activations`` (each (N, H, W, C),
            :func:`cached_view_activations`); each epoch takes every image from one
            view drawn at random among the original and these (:class:`ViewBatches`).

    With ``training_config.average_from_epoch`` k >= 1, phase 2 runs all its epochs and
    the model keeps the mean of the weights after phase-2 epochs k, k+1, ...
    (:class:`WeightAverage`) instead of the best epoch's.
    """
    import keras


    strategy = resolve_strategy(strategy)
    cfg = training_config
    train_labels = np.asarray(train_labels).reshape(-1).astype(np.float32)
    validation_labels = np.asarray(validation_labels).reshape(-1).astype(np.float32)
    if len(train_activations) != len(train_labels):
        raise ValueError(f"{len(train_activations)} train activations but {len(train_labels)} labels.")
    if len(validation_activations) != len(validation_labels):
        raise ValueError(f"{len(validation_activations)} validation activations but "
                         f"{len(validation_labels)} labels.")
    expected = tuple(model.get_layer(cfg.unfreeze_from).input.shape[1:])
    all_views = [train_activations, *train_views]
    if any(tuple(view.shape) != tuple(train_activations.shape) for view in all_views):
        raise ValueError(f"Every augmented view must have the shape of train_activations "
                         f"{train_activations.shape}, got {[view.shape for view in all_views]}.")
    if tuple(train_activations.shape[1:]) != expected:
        raise ValueError(f"Activations have shape {train_activations.shape[1:]} but the input of "
                         f"{cfg.unfreeze_from!r} is {expected}: compute them with "
                         f"cached_activations(model, examples, {cfg.unfreeze_from!r}).")
    inputs = imbalance.strategy_inputs(cfg.imbalance, train_labels, cfg.seed)
    if inputs.output_bias is not None:
        model.get_layer(model_lib.LOGIT_LAYER).bias.assign([inputs.output_bias])
    indices = inputs.indices
    checkpoint = BestWeightsCheckpoint(model, cfg.monitor, checkpoint_path)
    history, phase = {}, []
    seconds = {}

    # Phase 1: frozen base; the head learns on pooled features.
    start = time.perf_counter()
    model_lib.freeze_base(model)
    train_pooled = [pooled_features(model, view, cfg.unfreeze_from, strategy=strategy, progress=verbose > 0)
                    for view in all_views]
    validation_pooled = pooled_features(model, validation_activations, cfg.unfreeze_from,
                                        strategy=strategy, progress=verbose > 0)
    with strategy.scope():
        head = head_model(model)
        compile_classifier(head, cfg.head_learning_rate)
    stopper = keras.callbacks.EarlyStopping(cfg.monitor, patience=cfg.patience, mode=cfg.monitor_mode)
    fitted = head.fit(
        ViewBatches(train_pooled, train_labels, indices, cfg.batch_size, inputs.class_weight, cfg.seed).as_keras(),
        validation_data=array_batches(validation_pooled, validation_labels, 256),
        epochs=cfg.head_epochs,
        callbacks=[stopper, checkpoint.callback()], shuffle=False, verbose=verbose,
    )
    _append_history(history, fitted.history, phase, 1)
    seconds["phase1"] = time.perf_counter() - start
    del train_pooled, validation_pooled

    # Phase 2: unfreeze from the cut (BatchNorm frozen), lower learning rate.
    trainable = []
    start = time.perf_counter()
    if cfg.finetune_epochs > 0:
        phase1_epochs = len(phase)
        checkpoint.restore()  # continue from the best head
        trainable = model_lib.unfreeze_from(model, cfg.unfreeze_from, freeze_batch_norm=True)
        with strategy.scope():
            top = top_model(model, cfg.unfreeze_from)
            compile_classifier(top, cfg.finetune_learning_rate)
        if cfg.average_from_epoch:  # every epoch runs; the mean of the late ones is kept
            average = WeightAverage(model, first_epoch=phase1_epochs + cfg.average_from_epoch)
            callbacks = [average.callback(), checkpoint.callback()]
        else:
            callbacks = [keras.callbacks.EarlyStopping(cfg.monitor, patience=cfg.patience, mode=cfg.monitor_mode,
                                                       baseline=checkpoint.best_value), checkpoint.callback()]
        fitted = top.fit(
            ViewBatches(all_views, train_labels, indices, cfg.batch_size, inputs.class_weight,
                        cfg.seed + 1).as_keras(),
            validation_data=array_batches(validation_activations, validation_labels, 128),
            epochs=phase1_epochs + cfg.finetune_epochs, initial_epoch=phase1_epochs,
            callbacks=callbacks, shuffle=False, verbose=verbose,
        )
        _append_history(history, fitted.history, phase, 2)
    seconds["phase2"] = time.perf_counter() - start
    averaged_epochs = []
    if cfg.finetune_epochs > 0 and cfg.average_from_epoch:
        average.apply()
        averaged_epochs = average.epochs
        scores = top.evaluate(array_batches(validation_activations, validation_labels, 128), verbose=0,
                              return_dict=True)
        checkpoint.best_value, checkpoint.best_epoch = float(scores[cfg.monitor[len("val_"):]]), len(phase)
        if checkpoint.path is not None:
            model.save(checkpoint.path)
    else:
        checkpoint.restore()
    return TrainingResult(
        history=history,
        phase=phase,
        best_epoch=checkpoint.best_epoch,
        best_value=checkpoint.best_value,
        monitor=cfg.monitor,
        epochs_per_phase={"phase1": phase.count(1), "phase2": phase.count(2)},
        seconds_per_phase={key: round(value, 2) for key, value in seconds.items()},
        trainable_layers_phase2=trainable,
        averaged_epochs=averaged_epochs,
    )


def gradient_throughput(model, inputs: np.ndarray, labels: np.ndarray, steps: int = 2) -> float:
    """Images per second of forward + backward passes (no weight update) on ``inputs``.

    Used to measure what caching saves: compare the full model on images with the
    top sub-model on cached activations (same trainable weights).
    """
    import keras
    import tensorflow as tf

    x = tf.constant(np.asarray(inputs, np.float32))
    y = tf.constant(np.asarray(labels, np.float32).reshape(-1, 1))
    loss_fn = keras.losses.BinaryCrossentropy()

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            predictions = model(x, training=True)
            loss = loss_fn(y, predictions)
        return tape.gradient(loss, model.trainable_weights)

    step()  # trace
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(inputs) / (time.perf_counter() - start)


# --------------------------------------------------------------------------- #
# Curves and the training record
# --------------------------------------------------------------------------- #
def plot_training_curves(result: TrainingResult):
    """Loss, AUC, precision and recall per epoch, train vs validation, phases marked."""
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    epochs = result.epochs
    boundary = result.epochs_per_phase["phase1"] + 0.5
    for axis, name in zip(axes, ("loss", "auc", "precision", "recall")):
        axis.plot(epochs, result.history[name], "o-", label="train", markersize=3)
        axis.plot(epochs, result.history[f"val_{name}"], "o-", label="validation", markersize=3)
        if result.epochs_per_phase["phase2"]:
            axis.axvline(boundary, color="grey", linestyle="--", linewidth=1)
        axis.axvline(result.best_epoch, color="green", linestyle=":", linewidth=1)
        axis.set_title(name)
        axis.set_xlabel("epoch")
    axes[0].legend(title="dashed: phase 2 starts\ndotted: best epoch", fontsize=8, title_fontsize=8)
    figure.tight_layout()
    return figure


def training_record(training_config: TrainingConfig, result: TrainingResult, validation_metrics: dict,
                    extra: dict | None = None) -> dict:
    """The JSON-able record 03 writes to ``<artifacts>/model/training_record.json``."""
    record = {
        "config": training_config.to_dict(),
        "epochs": len(result.phase),
        **result.summary(),
        "history": result.history,
        "phase_of_epoch": result.phase,
        "validation_metrics": validation_metrics,
    }
    record.update(extra or {})
    return record


# --------------------------------------------------------------------------- #
# Notebook 02: one head per imbalance strategy (helpers.imbalance), same budget
# --------------------------------------------------------------------------- #
def compare_strategies(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    validation_features: np.ndarray,
    validation_labels: np.ndarray,
    strategies: tuple[str, ...] = imbalance.STRATEGIES,
    epochs: int = 10,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    dropout: float = 0.2,
    seed: int = config.DEFAULT_SEED,
    strategy=None,
) -> list[dict]:
    """Train one fresh head per imbalance strategy on the same cached features.

    Every run gets the same budget (``epochs`` over the original train-set size, so
    oversampling does not get more steps) and the same seed.

    Args:
        train_features: (N, F) float32 pooled features of the train split.
        train_labels: (N,) 0/1.
        validation_features: (M, F) float32.
        validation_labels: (M,) 0/1.
        strategy: ``tf.distribute`` strategy (default: the current one).
    Returns:
        One row per strategy: name, validation recall / specificity / precision /
        accuracy at threshold 0.5, ROC-AUC, PR-AUC, the probabilities and the history.
    """
    strategy = resolve_strategy(strategy)
    train_labels = np.asarray(train_labels).reshape(-1)
    steps_per_epoch = int(np.ceil(len(train_labels) / batch_size))
    rows = []
    for name in strategies:
        config.set_seeds(seed)
        inputs = imbalance.strategy_inputs(name, train_labels, seed)
        with strategy.scope():
            head = model_lib.build_head_model(train_features.shape[1], dropout, inputs.output_bias)
            compile_classifier(head, learning_rate)
        x = train_features[inputs.indices]
        y = train_labels[inputs.indices].astype(np.float32)
        # Same number of gradient steps for every strategy: the oversampled set is
        # repeated and cut to epochs * steps_per_epoch batches.
        dataset = array_batches(x, y, batch_size, shuffle=True, seed=seed, repeat=True)
        history = head.fit(
            dataset,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=(validation_features, validation_labels.astype(np.float32)),
            class_weight=inputs.class_weight,
            shuffle=False,  # the dataset is already shuffled (seeded)
            verbose=0,
        )
        probabilities = head.predict(validation_features, batch_size=256, verbose=0).reshape(-1)
        row = {"strategy": name}
        row.update(probability_metrics(validation_labels, probabilities, threshold=0.5))
        row["class_weight"] = inputs.class_weight
        row["output_bias"] = inputs.output_bias
        row["train_examples"] = len(inputs.indices)
        row["probabilities"] = probabilities
        row["history"] = {key: [float(v) for v in values] for key, values in history.history.items()}
        rows.append(row)
    return rows
