"""Training helpers: imbalance math, metrics, sub-models and the cache, two-phase training,
one step that lowers the loss, and a MirroredStrategy step over two logical CPUs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import imbalance, jsonio, training
from helpers import model as model_lib
from tests.conftest import tiny_examples, tiny_training_setup

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMALL = 64  # image size for fast random-weight models (MobileNetV2 accepts >= 32)


# --------------------------------------------------------------------------- #
# Imbalance math (hand-computed values)
# --------------------------------------------------------------------------- #
def test_class_weights_match_hand_computed_values():
    labels = np.array([0] * 25 + [1] * 75)
    weights = imbalance.class_weights(labels)
    # total / (2 * n): 100 / 50 = 2.0 and 100 / 150 = 2/3
    assert weights == {0: pytest.approx(2.0), 1: pytest.approx(2.0 / 3.0)}
    # Both classes then carry the same total weight, and the mean weight is 1.
    assert 25 * weights[0] == pytest.approx(75 * weights[1])
    assert (25 * weights[0] + 75 * weights[1]) / 100 == pytest.approx(1.0)


def test_class_weights_on_the_real_split_sizes():
    labels = np.array([0] * 1341 + [1] * 3875)
    weights = imbalance.class_weights(labels)
    assert weights[0] == pytest.approx(5216 / 2682)  # 1.9446...
    assert weights[1] == pytest.approx(5216 / 7750)  # 0.6730...


@pytest.mark.parametrize("labels, message", [
    ([1, 1, 1], "both classes"),
    ([], "empty"),
    ([0, 1, 2], "must be 0"),
])
def test_class_weights_reject_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        imbalance.class_weights(labels)


def test_output_bias_is_log_prior_odds():
    assert imbalance.output_bias([0, 1, 1, 1]) == pytest.approx(math.log(3.0))


def test_oversampling_keeps_everything_and_balances_deterministically():
    labels = np.array([0] * 3 + [1] * 7)
    indices = imbalance.oversample_indices(labels, seed=1)
    assert len(indices) == 14
    assert set(range(10)) <= set(indices.tolist())
    assert np.sum(labels[indices] == 0) == np.sum(labels[indices] == 1) == 7
    np.testing.assert_array_equal(indices, imbalance.oversample_indices(labels, seed=1))


def test_strategy_inputs_for_every_strategy():
    labels = np.array([0, 0, 1, 1, 1, 1])
    rows = {name: imbalance.strategy_inputs(name, labels) for name in imbalance.STRATEGIES}
    assert rows["none"].class_weight is None and rows["none"].output_bias is None
    assert rows["class_weights"].class_weight == {0: 1.5, 1: 0.75}
    assert rows["output_bias"].output_bias == pytest.approx(math.log(2.0))
    assert len(rows["oversampling"].indices) == 8
    with pytest.raises(ValueError, match="Unknown imbalance strategy"):
        imbalance.strategy_inputs("smote", labels)


def test_choose_strategy_takes_best_balanced_accuracy_with_documented_ties():
    rows = [
        {"strategy": "none", "balanced_accuracy": 0.80},
        {"strategy": "oversampling", "balanced_accuracy": 0.905},
        {"strategy": "class_weights", "balanced_accuracy": 0.90},
    ]
    assert imbalance.choose_strategy(rows) == "class_weights"  # tie within 0.01: preference order
    rows[1]["balanced_accuracy"] = 0.93
    assert imbalance.choose_strategy(rows) == "oversampling"
    with pytest.raises(ValueError, match="compare_strategies"):
        imbalance.choose_strategy([])


# --------------------------------------------------------------------------- #
# Metrics and the threshold rule
# --------------------------------------------------------------------------- #
def test_probability_metrics_match_hand_counts():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    probabilities = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05])
    metrics = training.probability_metrics(labels, probabilities, threshold=0.5)
    # predicted positive: 0.9 0.8 0.6 (TP=3) and 0.7 (FP=1); FN=1 (0.3); TN=3
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (3, 1, 3, 1)
    assert metrics["recall"] == pytest.approx(0.75)
    assert metrics["specificity"] == pytest.approx(0.75)
    assert metrics["precision"] == pytest.approx(0.75)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["roc_auc"] == pytest.approx(14 / 16)  # 0.6 and 0.3 rank below 0.7: 2 of 16 pairs


def test_recall_threshold_is_the_highest_keeping_min_recall():
    labels = np.array([1, 1, 1, 1, 0, 0])
    probabilities = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2])
    assert training.recall_threshold(labels, probabilities, min_recall=0.75) == pytest.approx(0.6)
    assert training.recall_threshold(labels, probabilities, min_recall=1.0) == pytest.approx(0.3)
    threshold = training.recall_threshold(labels, probabilities, min_recall=0.98)
    assert training.probability_metrics(labels, probabilities, threshold)["recall"] >= 0.98


def test_training_config_validates():
    with pytest.raises(ValueError, match="imbalance"):
        training.TrainingConfig(imbalance="smote")
    with pytest.raises(ValueError, match="monitor"):
        training.TrainingConfig(monitor="auc")
    assert training.TrainingConfig().to_dict()["unfreeze_from"] == training.DEFAULT_CUT_LAYER


# --------------------------------------------------------------------------- #
# Sub-models and the activation cache
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def small_model():
    import keras

    keras.utils.set_random_seed(0)
    return model_lib.build_model(weights=None, image_size=SMALL)


def test_top_model_on_activations_equals_the_full_model(small_model):
    images = np.random.default_rng(2).uniform(0, 255, (3, SMALL, SMALL, 3)).astype(np.float32)
    cut = "block_14_expand"
    activations = training.feature_extractor(small_model, cut).predict(images, verbose=0)
    assert activations.shape == (3, 2, 2, 160)
    np.testing.assert_allclose(training.top_model(small_model, cut).predict(activations, verbose=0),
                               small_model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    pooled = training.pooled_features(small_model, activations, cut, progress=False)
    np.testing.assert_allclose(training.head_model(small_model).predict(pooled, verbose=0),
                               small_model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    # Shared weights: the sub-model's logit kernel is the full model's variable.
    top = training.top_model(small_model, cut)
    assert top.get_layer(model_lib.LOGIT_LAYER).kernel is small_model.get_layer(model_lib.LOGIT_LAYER).kernel


def test_cached_activations_are_written_once_and_reused(small_model, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path))
    examples = tiny_examples()
    first = training.cached_activations(small_model, examples, "block_13_expand", progress=False)
    assert first.shape == (6, 4, 4, 96) and first.dtype == np.float32
    files = sorted((tmp_path / "cache").glob("activations-block_13_expand-6-*.npy"))
    assert len(files) == 1
    again = training.cached_activations(small_model, examples, "block_13_expand", progress=False)
    np.testing.assert_array_equal(first, again)
    training.cached_activations(small_model, examples.subset([0, 1, 2]), "block_13_expand", progress=False)
    assert len(list((tmp_path / "cache").glob("activations-*.npy"))) == 2  # new subset, new key


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
def test_one_training_step_lowers_the_loss():
    """One phase-2 step (top sub-model on cut activations) lowers the loss and trains
    the full model's weights. Random-weight MobileNetV2 squashes raw images to ~1e-12
    at the top, so the tiny synthetic data are activations at the cut, like the cache."""
    import keras

    keras.utils.set_random_seed(0)
    model = model_lib.build_model(weights=None, image_size=32, dropout=0.0)
    cut = "block_16_expand"
    model_lib.unfreeze_from(model, cut)
    top = training.top_model(model, cut)
    training.compile_classifier(top, learning_rate=1e-2)
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 4, dtype=np.float32)
    activations = (rng.normal(0, 1, (8, 1, 1, 160)) + 2 * labels[:, None, None, None]).astype(np.float32)
    kernel_before = model.get_layer("Conv_1").kernel.numpy().copy()
    before = top.evaluate(activations, labels, batch_size=8, verbose=0, return_dict=True)["loss"]
    top.fit(activations, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
    after = top.evaluate(activations, labels, batch_size=8, verbose=0, return_dict=True)["loss"]
    assert after < before
    assert not np.array_equal(model.get_layer("Conv_1").kernel.numpy(), kernel_before)


def test_train_two_phase_runs_both_phases_and_keeps_the_best(tmp_path):
    cfg, model, images, labels = tiny_training_setup(head_epochs=2, finetune_epochs=2, count=16)
    activations = training.feature_extractor(model, cfg.unfreeze_from).predict(images, verbose=0)
    checkpoint = tmp_path / "best.keras"
    result = training.train_two_phase(model, activations, labels, activations[:8], labels[:8], cfg,
                                      checkpoint_path=checkpoint, verbose=0)
    assert result.phase == [1, 1, 2, 2] and result.epochs == [1, 2, 3, 4]
    assert len(result.history["val_auc"]) == 4 and set(training.METRIC_NAMES) <= set(result.history)
    # The default monitor is validation loss (lower is better).
    assert cfg.monitor == "val_loss" and cfg.monitor_mode == "min"
    assert result.best_value == pytest.approx(min(result.history["val_loss"]))
    assert result.best_epoch == int(np.argmin(result.history["val_loss"])) + 1
    assert checkpoint.is_file() and "block_15_expand" in result.trainable_layers_phase2
    record = training.training_record(cfg, result, {"roc_auc": 1.0})
    path = jsonio.write_json(record, tmp_path / "record.json")
    assert json.loads(path.read_text())["best_epoch"] == result.best_epoch
    figure = training.plot_training_curves(result)
    assert len(figure.axes) == 4


def test_train_two_phase_checks_activation_shapes():
    cfg = training.TrainingConfig(head_epochs=1, finetune_epochs=0, unfreeze_from="block_15_expand")
    model = training.build_and_compile(cfg, weights=None, image_size=32)
    wrong = np.zeros((4, 2, 2, 96), np.float32)
    with pytest.raises(ValueError, match="cached_activations"):
        training.train_two_phase(model, wrong, np.array([0, 1, 0, 1]), wrong, np.array([0, 1, 0, 1]), cfg)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf

    # Two logical CPU devices must be configured before TensorFlow initialises.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from helpers import config, training

    config.set_seeds(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    cfg = training.TrainingConfig(head_epochs=1, finetune_epochs=1, unfreeze_from="block_16_expand",
                                  batch_size=4, patience=1)
    model = training.build_and_compile(cfg, weights=None, strategy=strategy, image_size=32)
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 4)
    images = rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    activations = training.predict_in_batches(
        training.feature_extractor(model, cfg.unfreeze_from), images, 4, progress=False, strategy=strategy)
    result = training.train_two_phase(model, activations, labels, activations, labels, cfg,
                                      strategy=strategy, verbose=0)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                      "variable": type(model.get_layer("logit").kernel.value).__name__,
                      "loss": result.history["loss"]}))
""")


def test_training_runs_under_mirrored_strategy_on_two_logical_cpus():
    environment = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], cwd=PROJECT_ROOT, env=environment,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert "Mirrored" in report["variable"]
    assert len(report["loss"]) == 2 and all(np.isfinite(report["loss"]))


@pytest.mark.parametrize("monitor, values, best_epoch", [
    ("val_auc", [0.90, 0.95, 0.93], 2),
    ("val_loss", [0.50, 0.60, 0.40], 3),
])
def test_best_weights_checkpoint_follows_the_monitor_direction(monitor, values, best_epoch):
    head = model_lib.build_head_model(feature_size=4)
    checkpoint = training.BestWeightsCheckpoint(head, monitor)
    for epoch, value in enumerate(values, start=1):
        head.get_layer(model_lib.LOGIT_LAYER).bias.assign([float(epoch)])
        checkpoint.update(epoch, value)
    assert checkpoint.best_epoch == best_epoch
    checkpoint.restore()
    assert head.get_layer(model_lib.LOGIT_LAYER).bias.numpy()[0] == best_epoch
    with pytest.raises(ValueError, match="not in the logs"):
        checkpoint.update(4, None)


def test_weight_average_keeps_the_mean_of_the_chosen_epochs():
    head = model_lib.build_head_model(feature_size=4)
    average = training.WeightAverage(head, first_epoch=2)
    for epoch in (1, 2, 3):
        head.get_layer(model_lib.LOGIT_LAYER).bias.assign([float(10 * epoch)])
        average.update(epoch)
    assert average.epochs == [2, 3]
    average.apply()
    assert head.get_layer(model_lib.LOGIT_LAYER).bias.numpy()[0] == pytest.approx(25.0)
    with pytest.raises(ValueError, match="nothing to average"):
        training.WeightAverage(head, first_epoch=5).apply()
    with pytest.raises(ValueError, match="average_from_epoch"):
        training.TrainingConfig(finetune_epochs=3, average_from_epoch=4)


def test_train_two_phase_with_weight_averaging_runs_every_phase2_epoch(tmp_path):
    cfg, model, images, labels = tiny_training_setup(head_epochs=1, finetune_epochs=3, count=16)
    cfg = training.TrainingConfig(**{**cfg.to_dict(), "average_from_epoch": 2, "patience": 1})
    activations = training.feature_extractor(model, cfg.unfreeze_from).predict(images, verbose=0)
    result = training.train_two_phase(model, activations, labels, activations[:8], labels[:8], cfg,
                                      checkpoint_path=tmp_path / "averaged.keras", verbose=0)
    assert result.phase == [1, 2, 2, 2]  # no early stop in phase 2
    assert result.averaged_epochs == [3, 4] and result.summary()["averaged_epochs"] == [3, 4]
    top = training.top_model(model, cfg.unfreeze_from)
    training.compile_classifier(top, cfg.finetune_learning_rate)
    loss = top.evaluate(activations[:8], labels[:8].astype(np.float32), verbose=0, return_dict=True)["loss"]
    assert result.best_value == pytest.approx(loss, rel=1e-4)  # the averaged model's validation loss
    assert (tmp_path / "averaged.keras").is_file()
