"""TFLite helpers on a tiny Keras model (Rescaling -> conv -> pool -> logit -> sigmoid).

Every variant is converted once per module (a few seconds each). Stated tolerances:
max |P(TFLite) - P(Keras)| <= ``tflite.PROBABILITY_TOLERANCE[variant]`` on random
raw 0-255 images (float32 1e-4, float16 5e-3, dynamic range 3e-2, int8 5e-2). The
selective int8 path (float stem) is checked on a second tiny model that carries
MobileNetV2's stem layer names, with the int8 tolerance.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings

import numpy as np
import pytest

from benchmarks import timing
from helpers import tflite
from helpers.operating_point import OperatingPoint, load_operating_point

SIZE = 16  # tiny images keep conversion and calibration fast


def tiny_model(seed: int = 0):
    """Same contract as helpers.model.build_model: raw 0-255 in, P(PNEUMONIA) (B, 1) out."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(SIZE, SIZE, 3), name="image")  # (B, 16, 16, 3) 0-255
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_plus1")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu6", name="conv")(x)  # (B, 14, 14, 8)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)  # (B, 8)
    logit = keras.layers.Dense(1, name="logit")(x)  # (B, 1)
    probability = keras.layers.Activation("sigmoid", name="probability")(logit)
    return keras.Model(inputs, probability, name="tiny")


def random_images(count: int, seed: int) -> np.ndarray:
    """(count, 16, 16, 3) uint8 images that hit both 0 and 255 (the full pixel range)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, SIZE, SIZE, 3), dtype=np.uint8)
    images[0, 0, 0] = (0, 0, 0)
    images[0, 0, 1] = (255, 255, 255)
    return images


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def test_images():
    return random_images(24, seed=2)


@pytest.fixture(scope="module")
def keras_probabilities(model, test_images):
    return model.predict(test_images.astype(np.float32), verbose=0)[:, 0]  # (24,)


@pytest.fixture(scope="module")
def converted(model, tmp_path_factory):
    """{variant: path} for all four variants of the tiny model."""
    directory = tmp_path_factory.mktemp("tflite")
    calibration = random_images(64, seed=1)
    return tflite.convert_all(model, calibration, directory, progress=False)


# --------------------------------------------------------------------------- #
# Conversion
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("variant", tflite.VARIANTS)
def test_each_variant_loads_and_matches_keras(converted, variant, test_images, keras_probabilities):
    classifier = tflite.TFLiteClassifier(converted[variant])
    probabilities = classifier.predict(test_images)  # (24,) float32
    assert probabilities.shape == (len(test_images),) and probabilities.dtype == np.float32
    difference = np.abs(probabilities - keras_probabilities).max()
    assert difference <= tflite.PROBABILITY_TOLERANCE[variant], f"{variant}: max |diff| {difference:.2e}"


def test_file_names_and_sizes_shrink_with_quantization(converted):
    assert {v: p.name for v, p in converted.items()} == {
        v: f"pneumonia_mobilenetv2_{v}.tflite" for v in tflite.VARIANTS}
    assert not list(converted["int8"].parent.glob("*.part*")), "temporary files left behind"


def test_int8_takes_raw_uint8_pixels_and_returns_float(converted):
    classifier = tflite.TFLiteClassifier(converted["int8"])
    assert classifier.input.dtype == np.uint8
    # A plain uint8 tensor (no quantization parameters) that the model casts to float32
    # first: pixel value = uint8 value, as scale 1 and zero point 0 would give.
    assert (classifier.input.scale, classifier.input.zero_point) == (0.0, 0)
    cast = [t for t in classifier.interpreter.get_tensor_details()
            if t["dtype"] == np.float32 and tuple(t["shape"]) == classifier.input.shape]
    assert cast, "no float32 copy of the uint8 input (the cast) in the int8 model"
    assert classifier.output.dtype == np.float32
    for variant in ("float32", "float16", "dynamic_range"):
        assert tflite.TFLiteClassifier(converted[variant]).input.dtype == np.float32


def test_unquantized_uint8_input_gets_rounded_clipped_pixels(converted):
    classifier = tflite.TFLiteClassifier(converted["int8"])
    images = np.full((1, SIZE, SIZE, 3), 254.6, dtype=np.float32)
    images[0, 0, 0] = (-3.0, 0.4, 300.0)
    prepared = classifier.prepare_input(images)
    assert prepared.dtype == np.uint8 and prepared[0, 1, 1, 0] == 255
    assert list(prepared[0, 0, 0]) == [0, 0, 255]


def float16_by_hand(model) -> bytes:
    """The float16 conversion written out (notebook 06 shows the same steps on the real model)."""
    import keras
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as saved_model_dir:
        archive = keras.export.ExportArchive()  # Keras model -> SavedModel with one fixed-shape endpoint
        archive.track(model)
        archive.add_endpoint("serve", lambda image: model(image, training=False),
                             input_signature=[tf.TensorSpec((1, SIZE, SIZE, 3), tf.float32, name="image")])
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.experimental_enable_resource_variables = True
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def int8_by_hand(model, images: np.ndarray) -> bytes:
    """The fully int8 conversion written out: uint8 pixels in, a generator of training images to calibrate."""
    import keras
    import tensorflow as tf

    def representative_images():
        for image in images:  # (S, S, 3) uint8
            yield [image[np.newaxis]]  # (1, S, S, 3) uint8, what the SavedModel below takes

    with tempfile.TemporaryDirectory() as saved_model_dir:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", lambda image: model(tf.cast(image, tf.float32), training=False),
                             input_signature=[tf.TensorSpec((1, SIZE, SIZE, 3), tf.uint8, name="image")])
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.experimental_enable_resource_variables = True
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_images
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
        with tflite.quiet_quantizer():
            return converter.convert()


def test_float16_written_out_is_byte_for_byte_the_helpers(model, converted, tmp_path, test_images):
    path = tflite.write_model_bytes(tmp_path / "float16_by_hand.tflite", float16_by_hand(model))
    assert path.read_bytes() == converted["float16"].read_bytes()
    check = tflite.compare_models(path, converted["float16"], test_images)
    assert check["same_bytes"] and check["same_graph"] and check["max_abs_diff"] == 0.0


def test_int8_written_out_is_the_helpers_fully_int8_model(model, tmp_path, test_images):
    calibration = random_images(16, seed=1)
    by_hand = tflite.write_model_bytes(tmp_path / "int8_by_hand.tflite", int8_by_hand(model, calibration))
    quantization = tflite.quantize_int8(model, calibration, float_layers=(), debug_images=4)
    helper = tflite.write_model_bytes(tmp_path / "int8_helper.tflite", quantization.all_int8_content)
    check = tflite.compare_models(by_hand, helper, test_images)
    # Same ops, tensor types, quantization parameters and weights; only the converter's
    # metadata entries come in another order, so the bytes differ.
    assert check["same_graph"], check["first_difference"]
    assert check["input"][0] == check["input"][1] == ("uint8", (1, SIZE, SIZE, 3), 0.0, 0)
    assert check["output"][0] == check["output"][1] and check["output"][0][0] == "float32"
    assert check["max_abs_diff"] == 0.0


def test_compare_models_finds_where_two_models_differ(converted, test_images):
    same = tflite.compare_models(converted["float32"], converted["float32"])
    assert same["same_bytes"] and same["same_graph"] and same["max_abs_diff"] is None
    other = tflite.compare_models(converted["float32"], converted["float16"], test_images)
    assert not other["same_bytes"] and not other["same_graph"]
    assert other["first_difference"].startswith("subgraph 0")
    assert 0.0 < other["max_abs_diff"] <= tflite.PROBABILITY_TOLERANCE["float16"]


def test_int8_needs_calibration_images():
    with pytest.raises(ValueError, match="needs calibration_images"):
        tflite.converter_options("int8")


def test_evenly_spaced_keeps_both_ends_of_a_class_sorted_array():
    labels = np.array([0] * 6 + [1] * 4)  # stored class by class, like the splits
    assert list(labels[:3]) == [0, 0, 0]
    assert list(tflite.evenly_spaced(labels, 3)) == [0, 0, 1]  # rows 0, 4 (rounded 4.5), 9
    assert len(tflite.evenly_spaced(labels, None)) == 10 and len(tflite.evenly_spaced(labels, 99)) == 10
    with pytest.raises(ValueError, match="count must be >= 1"):
        tflite.evenly_spaced(labels, 0)


def test_uint8_calibration_rounds_pixels():
    images = np.full((2, SIZE, SIZE, 3), 254.6, dtype=np.float32)
    batches = list(tflite.representative_dataset(images, dtype=np.uint8)())
    assert len(batches) == 2 and batches[0][0].dtype == np.uint8 and batches[0][0].shape == (1, SIZE, SIZE, 3)
    assert int(batches[0][0].max()) == 255


def test_calibration_rejects_normalized_pixels():
    with pytest.raises(ValueError, match="raw 0-255"):
        tflite.representative_dataset(np.full((2, SIZE, SIZE, 3), -1.0, dtype=np.float32))


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="Unknown TFLite variant"):
        tflite.tflite_path("int4")


def test_builtin_ops_only_so_flex_ops_fail_at_conversion(tmp_path):
    import keras
    import tensorflow as tf

    class NeedsFlex(keras.layers.Layer):  # tf.linalg.det has no TFLite builtin kernel
        def call(self, x):
            matrices = tf.reshape(x, (-1, 12, 2, 2))  # (B, 12, 2, 2)
            return tf.reduce_mean(tf.linalg.det(matrices), axis=1, keepdims=True)  # (B, 1)

    inputs = keras.Input(shape=(4, 4, 3), name="image")
    model = keras.Model(inputs, NeedsFlex()(inputs))
    with pytest.raises(Exception, match="(?i)select|flex|not supported|legaliz"):
        tflite.convert(model, "float32", tmp_path / "flex.tflite")
    assert not (tmp_path / "flex.tflite").exists()


# --------------------------------------------------------------------------- #
# The interpreter wrapper: float, uint8 and int8 I/O
# --------------------------------------------------------------------------- #
def test_quantize_and_dequantize_round_trip():
    values = np.array([0.0, 1.0, 127.0, 255.0, 300.0])
    assert list(tflite.quantize(values, np.uint8, 1.0, 0)) == [0, 1, 127, 255, 255]  # clipped
    assert list(tflite.quantize(values[:4], np.int8, 1.0, -128)) == [-128, -127, -1, 127]
    assert np.allclose(tflite.dequantize(np.array([-128, 0, 127], np.int8), 1 / 256, -128),
                       [0.0, 0.5, 255 / 256])


def test_classifier_handles_int8_input_and_int8_output(model, tmp_path, test_images, keras_probabilities):
    import tensorflow as tf

    options = tflite.converter_options("int8", random_images(64, seed=1))
    options.update(inference_input_type=tf.int8, inference_output_type=tf.int8)
    path = tmp_path / "int8_io.tflite"
    model.export(str(path), format="litert", verbose=False,
                 input_signature=[tf.TensorSpec((1, SIZE, SIZE, 3), tf.float32, name="image")], **options)
    classifier = tflite.TFLiteClassifier(path)
    assert classifier.input.dtype == np.int8 and classifier.output.dtype == np.int8
    assert classifier.input.quantized and classifier.output.quantized
    probabilities = classifier.predict(test_images)
    assert np.abs(probabilities - keras_probabilities).max() <= tflite.PROBABILITY_TOLERANCE["int8"]


# --------------------------------------------------------------------------- #
# Selective int8: MobileNetV2's stem kept in float
# --------------------------------------------------------------------------- #
STEM_LAYERS = ("to_minus1_plus1", "Conv1", "bn_Conv1", "Conv1_relu", "expanded_conv_depthwise",
               "expanded_conv_depthwise_BN", "expanded_conv_depthwise_relu", "expanded_conv_project",
               "expanded_conv_project_BN")


def stem_model(seed: int = 0):
    """A tiny model with MobileNetV2's stem layer names (Rescaling, Conv1, expanded_conv), then one int8 block."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input(shape=(SIZE, SIZE, 3), name="image")  # (B, 16, 16, 3) 0-255
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_plus1")(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="Conv1")(x)  # (B, 8, 8, 8)
    x = layers.BatchNormalization(name="bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="expanded_conv_depthwise")(x)
    x = layers.BatchNormalization(name="expanded_conv_depthwise_BN")(x)
    x = layers.ReLU(6.0, name="expanded_conv_depthwise_relu")(x)
    x = layers.Conv2D(4, 1, use_bias=False, name="expanded_conv_project")(x)  # (B, 8, 8, 4)
    x = layers.BatchNormalization(name="expanded_conv_project_BN")(x)
    x = layers.Conv2D(8, 1, activation="relu6", name="block_1_expand")(x)  # (B, 8, 8, 8)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)  # (B, 8)
    logit = layers.Dense(1, name="logit")(x)  # (B, 1)
    return keras.Model(inputs, layers.Activation("sigmoid", name="probability")(logit), name="stem")


@pytest.fixture(scope="module")
def selective(tmp_path_factory):
    """(model, Int8Quantization, path) of the stem model, float stem by default."""
    model = stem_model()
    quantization = tflite.quantize_int8(model, random_images(64, seed=1), debug_images=16)
    path = quantization.save(tmp_path_factory.mktemp("selective") / "stem_int8.tflite")
    return model, quantization, path


def test_float_stem_is_every_layer_through_the_first_block():
    assert tflite.float_stem_layers(stem_model()) == STEM_LAYERS
    assert tflite.float_stem_layers(tiny_model()) == ()  # no MobileNetV2 stem: fully int8


def test_selective_int8_loads_with_uint8_pixels_in_and_float_out(selective, test_images):
    model, _, path = selective
    classifier = tflite.TFLiteClassifier(path)
    assert classifier.input.dtype == np.uint8 and (classifier.input.scale, classifier.input.zero_point) == (0.0, 0)
    assert classifier.output.dtype == np.float32
    keras_probabilities = model.predict(test_images.astype(np.float32), verbose=0)[:, 0]  # (24,)
    difference = np.abs(classifier.predict(test_images) - keras_probabilities).max()
    assert difference <= tflite.PROBABILITY_TOLERANCE["int8"], f"max |diff| {difference:.2e}"


def test_selective_int8_keeps_the_stem_float_and_the_rest_int8(selective):
    _, quantization, path = selective
    assert quantization.float_layers == STEM_LAYERS and quantization.float_nodes
    details = tflite.TFLiteClassifier(path).interpreter.get_tensor_details()  # every tensor of the flatbuffer
    for node in quantization.float_nodes:  # denylisted op outputs (flatbuffer names may add a digit)
        dtypes = {t["dtype"] for t in details if t["name"].startswith(node)}
        assert dtypes == {np.float32}, f"{node}: {dtypes}"
    for layer in ("Conv1", "expanded_conv_depthwise", "expanded_conv_project"):  # weights too
        assert {t["dtype"] for t in details if f"/{layer}_1/" in t["name"]} == {np.float32}, layer
    assert np.int8 in {t["dtype"] for t in details if "/block_1_expand_1/" in t["name"]}
    assert np.int8 in {t["dtype"] for t in details if "/global_pool_1/" in t["name"]}


def test_layer_errors_cover_every_op_and_flag_the_float_ones(selective):
    _, quantization, _ = selective
    errors = quantization.layer_errors
    assert quantization.debug_images == 16 and len(errors) >= 6
    assert sum(e["float"] for e in errors) == len(quantization.float_nodes)
    assert all(np.isfinite(e["rmse_over_scale"]) and e["rmse_over_scale"] >= 0 for e in errors)
    suspects = quantization.suspects(threshold=0.0)
    assert all(not e["float"] for e in suspects)
    assert [e["rmse_over_scale"] for e in suspects] == sorted((e["rmse_over_scale"] for e in suspects), reverse=True)
    summary = json.loads(json.dumps(quantization.summary()))
    assert summary["float_layers"] == list(STEM_LAYERS) and summary["float_ops"] == len(quantization.float_nodes)


def test_no_float_layers_gives_a_fully_int8_model(tmp_path):
    quantization = tflite.quantize_int8(stem_model(), random_images(16, seed=1), float_layers=(), debug_images=4)
    path = quantization.save(tmp_path / "all_int8.tflite")
    details = tflite.TFLiteClassifier(path).interpreter.get_tensor_details()
    assert quantization.float_nodes == () and not any(e["float"] for e in quantization.layer_errors)
    assert np.int8 in {t["dtype"] for t in details if "/Conv1_1/" in t["name"]}


def test_float_layers_must_exist_and_match_an_op():
    with pytest.raises(ValueError, match="not layers of"):
        tflite.quantize_int8(tiny_model(), random_images(4, seed=1), float_layers=("Conv1",))
    # the tiny model's Rescaling is folded into its conv: no op of its own to keep float
    with pytest.raises(ValueError, match="match no TFLite op"):
        tflite.quantize_int8(tiny_model(), random_images(4, seed=1), float_layers=("to_minus1_plus1",))


def test_classifier_rejects_wrong_image_shape(converted):
    classifier = tflite.TFLiteClassifier(converted["float32"])
    with pytest.raises(ValueError, match=r"Expected images of shape \(N, 16, 16, 3\)"):
        classifier.predict(np.zeros((2, 8, 8, 3), np.float32))


def test_missing_model_says_how_to_create_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="06_tflite_conversion"):
        tflite.TFLiteClassifier(tmp_path / "nope.tflite")


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\x00" * 4 + b"XXXX" + b"\x00" * 64],
                         ids=["empty", "text", "wrong-identifier"])
def test_corrupt_model_gives_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(tflite.TFLiteModelError, match="not a TFLite model.*convert again"):
        tflite.TFLiteClassifier(path)


def test_single_output_engine_refuses_a_model_with_another_output_shape(tmp_path):
    import keras

    inputs = keras.Input(shape=(SIZE, SIZE, 3))
    scores = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs))  # (B, 3): three classes
    path = tmp_path / "three_classes.tflite"
    tflite.convert(keras.Model(inputs, scores), "float32", path)
    with pytest.raises(tflite.TFLiteModelError, match=r"three_classes.tflite takes input \[1, 16, 16, 3\] "
                                                      r"and returns \[1, 3\].*re-run notebook 06"):
        tflite.TFLiteClassifier(path)


def test_truncated_model_gives_a_clear_error(converted, tmp_path):
    content = converted["float32"].read_bytes()
    path = tmp_path / "truncated.tflite"
    path.write_bytes(content[: len(content) // 3])
    with pytest.raises(tflite.TFLiteModelError, match="convert again"):
        tflite.TFLiteClassifier(path)


# --------------------------------------------------------------------------- #
# Parity
# --------------------------------------------------------------------------- #
def test_parity_counts_flipped_decisions_and_accuracy_delta():
    keras_p = np.array([0.1, 0.45, 0.55, 0.9])
    lite_p = np.array([0.1, 0.55, 0.55, 0.8])  # one decision flips (0.45 -> 0.55)
    labels = np.array([0, 0, 1, 1])
    result = tflite.parity(keras_p, lite_p, labels, threshold=0.5)
    assert result["agreement"] == 0.75 and result["disagreements"] == 1
    assert result["max_abs_diff"] == pytest.approx(0.1)
    assert result["mean_abs_diff"] == pytest.approx(0.05)
    assert result["test_accuracy"] == 0.75 and result["accuracy_delta_points"] == pytest.approx(-25.0)


def test_parity_table_has_a_keras_row_and_one_row_per_variant():
    keras_p = np.array([0.2, 0.8])
    table = tflite.parity_table(keras_p, {"int8": keras_p + 0.01}, np.array([0, 1]), 0.5,
                                sizes={"int8": 2_000_000})
    assert list(table.index) == ["keras", "int8"]
    assert table.loc["keras", "agreement"] == 1.0 and table.loc["int8", "size_mb"] == 2.0


def test_parity_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="as many"):
        tflite.parity(np.zeros(3), np.zeros(2), np.zeros(3), 0.5)


# --------------------------------------------------------------------------- #
# Metadata
# --------------------------------------------------------------------------- #
METRICS = {"threshold": 0.62, "temperature": 1.7,
           "band": {"low": 0.3, "high": 0.9, "coverage": 0.86, "accuracy_outside": 0.97, "recall_outside": 0.99}}


def test_decision_block_is_the_operating_point_with_its_source(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({**METRICS, "test": {}, "validation": {}}))
    block = tflite.decision_block(load_operating_point(path))
    assert (block["threshold"], block["temperature"], block["calibrated"]) == (0.62, 1.7, True)
    assert block["band"]["low"] == 0.3 and block["band"]["coverage"] == 0.86 and block["source"] == "metrics.json"
    assert OperatingPoint.from_dict(block).to_dict() == load_operating_point(path).to_dict()  # read back whole


def test_decision_block_flags_uncalibrated_defaults(tmp_path):
    block = tflite.decision_block(load_operating_point(tmp_path / "metrics.json"))
    assert block["threshold"] == 0.5 and block["temperature"] == 1.0 and block["band"] is None
    assert block["calibrated"] is False and "04_evaluation" in block["source"]


def test_metadata_round_trips(converted, tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(METRICS))
    model_path = converted["int8"]
    metadata = tflite.build_metadata(model_path, "int8", load_operating_point(path),
                                     calibration={"split": "train", "n_images": 64, "seed": 1})
    written = tflite.write_metadata(model_path, metadata)
    assert written == model_path.with_suffix(".json")
    assert tflite.read_metadata(model_path) == json.loads(json.dumps(metadata))
    assert tflite.read_metadata(written)["input"]["dtype"] == "uint8"
    assert metadata["labels"] == ["NORMAL", "PNEUMONIA"] and metadata["input"]["range"] == [0, 255]
    assert metadata["model_sha256"] == tflite.file_sha256(model_path)
    assert metadata["decision"]["threshold"] == 0.62 and metadata["decision"]["band"]["high"] == 0.9


def test_published_metadata_is_embedded_in_the_model_and_outputs_are_unchanged(
        converted, tmp_path, test_images):
    original = converted["int8"]
    model_path = tmp_path / original.name
    model_path.write_bytes(original.read_bytes())
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(METRICS))
    before = tflite.TFLiteClassifier(model_path).predict(test_images)
    metadata = tflite.build_metadata(model_path, "int8", load_operating_point(metrics))
    written = tflite.publish_metadata(model_path, metadata)

    embedded = tflite.read_embedded_metadata(model_path)
    assert embedded["decision"]["threshold"] == 0.62 and embedded["labels"] == ["NORMAL", "PNEUMONIA"]
    assert "model_sha256" not in embedded and "size_bytes" not in embedded  # a file can't hold its own hash
    sidecar = tflite.read_metadata(written)
    assert sidecar["model_sha256"] == tflite.file_sha256(model_path)
    assert sidecar["size_bytes"] == model_path.stat().st_size
    assert {k: v for k, v in sidecar.items() if k not in ("model_sha256", "size_bytes")} == embedded
    np.testing.assert_array_equal(tflite.TFLiteClassifier(model_path).predict(test_images), before)


def test_embedding_twice_replaces_the_earlier_copy(converted, tmp_path):
    from ai_edge_litert import schema_py_generated as schema

    model_path = tmp_path / "model.tflite"
    model_path.write_bytes(converted["float32"].read_bytes())
    tflite.embed_metadata(model_path, {"schema_version": 1, "note": "first"})
    size_after_first = model_path.stat().st_size
    tflite.embed_metadata(model_path, {"schema_version": 1, "note": "second"})
    assert tflite.read_embedded_metadata(model_path)["note"] == "second"
    assert abs(model_path.stat().st_size - size_after_first) < 16
    flatbuffer = schema.ModelT.InitFromPackedBuf(bytearray(model_path.read_bytes()), 0)
    names = [entry.name.decode() for entry in flatbuffer.metadata]
    assert names.count(tflite.EMBEDDED_METADATA_NAME) == 1
    assert "min_runtime_version" in names  # the converter's own entries survive


def test_embedded_metadata_errors_say_what_to_do(converted, tmp_path):
    with pytest.raises(tflite.TFLiteModelError, match="no embedded metadata.*publish_metadata"):
        tflite.read_embedded_metadata(converted["float16"])
    with pytest.raises(FileNotFoundError, match="06_tflite_conversion"):
        tflite.read_embedded_metadata(tmp_path / "missing.tflite")
    not_a_model = tmp_path / "photo.tflite"
    not_a_model.write_bytes(b"\xff\xd8\xff\xe0 not a model at all")
    with pytest.raises(tflite.TFLiteModelError, match="not a TFLite model"):
        tflite.embed_metadata(not_a_model, {"schema_version": 1})
    with pytest.raises(ValueError, match=".tflite"):
        tflite.embed_metadata(tmp_path / "model.bin", {"schema_version": 1})


def test_metadata_reader_gives_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="write_metadata"):
        tflite.read_metadata(tmp_path / "model.tflite")
    bad = tmp_path / "model.json"
    bad.write_text("{not json")
    with pytest.raises(tflite.TFLiteModelError, match="not valid JSON"):
        tflite.read_metadata(bad)
    bad.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(tflite.TFLiteModelError, match="schema version 99"):
        tflite.read_metadata(bad)


def test_interpret_applies_threshold_band_and_temperature():
    metadata = {"labels": ["NORMAL", "PNEUMONIA"],
                "decision": {"threshold": 0.62, "temperature": 2.0, "band": {"low": 0.3, "high": 0.9},
                             "calibrated": True}}
    assert tflite.interpret(0.95, metadata)["label"] == "PNEUMONIA"
    assert tflite.interpret(0.10, metadata)["label"] == "NORMAL"
    referred = tflite.interpret(0.70, metadata)
    assert referred["label"] == "REFER" and referred["model_label"] == "PNEUMONIA"
    assert tflite.interpret(0.90, metadata)["label"] == "PNEUMONIA"  # band is [low, high)
    # temperature 2 pulls 0.95 towards 0.5: sigmoid(logit(0.95) / 2)
    assert tflite.interpret(0.95, metadata)["confidence"] == pytest.approx(1 / (1 + np.sqrt(0.05 / 0.95)))


# --------------------------------------------------------------------------- #
# Latency helpers (used by benchmarks/tflite_benchmark.py)
# --------------------------------------------------------------------------- #
def test_interleaved_latency_gives_runs_samples_per_model(converted, test_images):
    classifiers = {v: tflite.TFLiteClassifier(converted[v]) for v in ("float32", "int8")}
    samples = timing.interleaved_latency(classifiers, test_images[0], runs=7, warmup=2, block=3)
    assert {k: len(v) for k, v in samples.items()} == {"float32": 7, "int8": 7}
    summary = timing.latency_summary(samples["int8"])
    assert summary["runs"] == 7 and 0 < summary["min"] <= summary["median"] <= summary["p90"]


def test_quiet_quantizer_drops_only_the_quantizer_lines(capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tflite.quiet_quantizer():
            os.write(2, b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32\n"
                        b"a real native error line\n")
            warnings.warn("    Warning: tf.lite.Interpreter is deprecated and is scheduled for deletion", UserWarning,
                          stacklevel=1)
            warnings.warn("another warning", UserWarning, stacklevel=1)
    err = capfd.readouterr().err
    assert "a real native error line" in err
    assert "fully_quantize" not in err
    assert [str(w.message) for w in caught] == ["another warning"]


def test_quiet_quantizer_keeps_lines_when_the_block_raises(capfd):
    with pytest.raises(RuntimeError, match="conversion failed"):
        with tflite.quiet_quantizer():
            os.write(2, b"why it failed\n")
            raise RuntimeError("conversion failed")
    assert "why it failed" in capfd.readouterr().err


# --------------------------------------------------------------------------- #
# Which CPU a benchmark ran on (int8 / float32 ratios depend on it)
# --------------------------------------------------------------------------- #
X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu vme sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni amx_int8 amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu vme
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp i8mm
CPU part\t: 0xd0b

Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""


def test_parse_cpuinfo_x86_takes_the_first_processor_and_the_speed_flags():
    description = timing.parse_cpuinfo(X86_CPUINFO)
    assert description == {"cpu_model": "Intel(R) Xeon(R) Processor",
                           "cpu_flags": ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                                         "amx_int8"]}


def test_parse_cpuinfo_arm_reads_features_and_model():
    assert timing.parse_cpuinfo(ARM_CPUINFO) == {"cpu_model": "Raspberry Pi 5 Model B Rev 1.0",
                                                 "cpu_flags": ["asimd", "asimddp", "i8mm"]}


def test_cpu_description_without_cpuinfo_falls_back(tmp_path):
    assert timing.parse_cpuinfo("") == {"cpu_model": None, "cpu_flags": []}
    assert timing.cpu_description(tmp_path / "no-cpuinfo") == {"cpu_model": None, "cpu_flags": []}


def _benchmark(size_mb: float, speedup: float, flags) -> dict:
    return {"variants": {"int8": {"size_mb": size_mb, "speedup_vs_float32_1thread": speedup}},
            "machine": {"cpu_flags": flags}}


def test_phone_model_targets_are_one_sided_on_accuracy_and_lower_for_speed_with_avx512():
    better = {"agreement": 0.996, "accuracy_delta_points": +0.8}  # int8 more accurate: fine
    worse = {"agreement": 0.996, "accuracy_delta_points": -0.4}  # loses more than 0.3 points
    float16 = {"agreement": 0.999, "accuracy_delta_points": 0.0}
    table = tflite.target_table(_benchmark(2.7, 1.7, ["avx2", "avx512f"]), better, worse, float16)
    met = dict(zip(table["target"], table["met"]))
    assert len(table) == 7
    assert met["int8 speed-up >= 1.6x (1 thread, this CPU)"]
    assert met["int8 accuracy >= Keras - 0.3 pts (validation)"]
    assert not met["int8 accuracy >= Keras - 0.3 pts (test)"]
    elsewhere = tflite.target_table(_benchmark(3.2, 1.7, ["avx2"]), better, better, float16)
    met = dict(zip(elsewhere["target"], elsewhere["met"]))
    assert not met["int8 speed-up >= 1.8x (1 thread, this CPU)"] and not met["int8 size <= 3 MB"]
