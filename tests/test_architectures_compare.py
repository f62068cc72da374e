"""helpers.architectures: the multiply-add counter by hand, MobileNetV2 against its paper, conversion, ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import architectures


def tiny_network():
    """8x8x3 -> Conv2D 3x3x4 (same) -> BatchNorm -> DepthwiseConv2D 3x3 stride 2 -> SeparableConv2D 1x1x5 -> Dense 2."""
    import keras

    inputs = keras.Input(shape=(8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # (8, 8, 4)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)  # (4, 4, 4)
    x = keras.layers.SeparableConv2D(5, 1)(x)  # (4, 4, 5)
    x = keras.layers.Flatten()(x)  # (80,)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


# Each kernel weight is used once per output position (biases not counted):
CONV = 8 * 8 * (3 * 3 * 3 * 4)  # 64 positions x 108 weights = 6912
DEPTHWISE = 4 * 4 * (3 * 3 * 4)  # 16 positions x 36 weights = 576
SEPARABLE = 4 * 4 * (1 * 1 * 4 * 1 + 1 * 1 * 4 * 5)  # 16 x (4 depthwise + 20 pointwise) = 384
DENSE = 80 * 2  # 160


def test_multiply_adds_of_a_tiny_network_match_the_hand_count():
    model = tiny_network()
    assert architectures.multiply_adds_by_kind(model) == {
        "Conv2D": CONV, "DepthwiseConv2D": DEPTHWISE, "SeparableConv2D": SEPARABLE, "Dense": DENSE}
    assert architectures.multiply_adds(model) == CONV + DEPTHWISE + SEPARABLE + DENSE == 8032


def test_a_nested_model_is_counted_through():
    import keras

    inner = tiny_network()
    inputs = keras.Input(shape=(8, 8, 3))
    outer = keras.Model(inputs, keras.layers.Dense(1)(inner(inputs)))
    assert architectures.multiply_adds(outer) == 8032 + 2


def test_unknown_spatial_size_is_refused():
    import keras

    inputs = keras.Input(shape=(None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    with pytest.raises(ValueError, match="fixed"):
        architectures.multiply_adds(model)


def test_mobilenetv2_at_224_matches_its_paper():
    """Sandler et al. 2018: about 300 M multiply-adds and 3.4 M parameters (alpha 1.0, 224 x 224)."""
    model = architectures.build_network("MobileNetV2")
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 1000)
    counted = architectures.multiply_adds(model)
    assert abs(counted / architectures.MOBILENETV2_PAPER_MULTIPLY_ADDS - 1) < 0.01, counted
    assert model.count_params() == 3_538_984  # the Keras Applications table's figure
    assert abs(model.count_params() / architectures.MOBILENETV2_PAPER_PARAMETERS - 1) < 0.05


def test_the_head_variant_has_one_sigmoid_unit():
    model = architectures.build_network("MobileNetV2", 96, head=True)
    assert model.output_shape == (None, 1)
    assert model.count_params() == 2_257_984 + 1280 + 1  # the base without its top, then the 1-unit head


def test_unknown_network_and_tiny_input_are_refused():
    with pytest.raises(ValueError, match="Unknown network"):
        architectures.build_network("AlexNet")
    with pytest.raises(ValueError, match="at least 32"):
        architectures.build_network("MobileNetV2", 16)
    with pytest.raises(ValueError, match="Unknown networks"):
        architectures.measure_networks(["MobileNetV2", "LeNet"])


def test_convert_and_time_a_tiny_network(tmp_path):
    model = tiny_network()
    calibration = np.random.default_rng(0).uniform(0, 255, size=(4, 8, 8, 3)).astype(np.float32)
    float_path = architectures.convert(model, "float32", tmp_path / "tiny_float32.tflite")
    int8_path = architectures.convert(model, "int8", tmp_path / "tiny_int8.tflite", calibration)
    assert float_path.stat().st_size > 4 * model.count_params()  # the float32 weights are in the file
    assert int8_path.stat().st_size > 0
    timing = architectures.latency_ms(int8_path, runs=5, warmup=1)
    assert timing["runs"] == 5 and timing["num_threads"] == 1
    assert 0 < timing["median_ms"] <= timing["p95_ms"]
    with pytest.raises(ValueError, match="variant"):
        architectures.convert(model, "float16", tmp_path / "tiny_float16.tflite")
    with pytest.raises(ValueError, match="runs"):
        architectures.latency_ms(float_path, runs=0)


def _row(name, parameters, size_mb, multiply_adds, median_ms, int8=True):
    row = {"network": name, "image_size": 224, "top1": architectures.ARCHITECTURES[name].top1,
           "parameters": parameters, "multiply_adds": multiply_adds, "float32_bytes": size_mb * 1e6,
           "float32_median_ms": median_ms, "float32_p95_ms": median_ms * 1.1}
    if int8:
        row.update(int8_bytes=size_mb * 0.25e6, int8_median_ms=median_ms / 2, int8_p95_ms=median_ms / 1.8)
    return row


ROWS = [_row("MobileNetV2", 3.5e6, 14, 0.3e9, 10), _row("VGG16", 140e6, 560, 15e9, 400),
        _row("EfficientNetB0", 5.25e6, 21, 0.39e9, 20, int8=False)]


def test_ratios_divide_by_the_reference_and_skip_what_is_missing():
    table = architectures.ratios(ROWS)
    assert set(table) == {"VGG16", "EfficientNetB0"}
    assert table["VGG16"]["parameters"] == pytest.approx(40)
    assert table["VGG16"]["multiply_adds"] == pytest.approx(50)
    assert table["VGG16"]["int8_median_ms"] == pytest.approx(40)
    assert "int8_bytes" not in table["EfficientNetB0"]
    assert table["EfficientNetB0"]["parameters"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="reference"):
        architectures.ratios(ROWS[1:])


def test_claim_sentence_states_the_range_and_the_verdict():
    sentence = architectures.claim_sentence(ROWS)
    assert "parameters 1.5x (EfficientNetB0) to 40x (VGG16)" in sentence
    assert "holds for none of them" in sentence and "largest gap is 50x" in sentence
    assert "holds only for multiply-adds vs VGG16" in architectures.claim_sentence(ROWS, claim=45)


def test_table_plot_and_record():
    import matplotlib

    matplotlib.use("Agg")
    table = architectures.comparison_table(ROWS)
    assert list(table.index) == ["MobileNetV2", "VGG16", "EfficientNetB0"]
    assert table.loc["VGG16", "params (M)"] == pytest.approx(140)
    assert math.isnan(table.loc["EfficientNetB0", "int8 (MB)"])
    figure = architectures.plot_size_vs_latency(ROWS, "int8")
    assert len(figure.axes[0].collections) == 2  # EfficientNetB0 has no int8 model
    record = architectures.comparison_record(ROWS, [], {"profile": "test"})
    assert record["claim"] and record["top1_source"].startswith("Keras Applications")
