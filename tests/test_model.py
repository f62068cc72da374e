"""The model contract: shapes, 0-255 input, named layers, freezing, safe_mode round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import model as model_lib
from helpers.errors import ModelFileError, UnusableInput


@pytest.fixture(scope="module")
def model():
    """The full-size classifier with random weights (no download, ~2 s to build)."""
    import keras

    keras.utils.set_random_seed(0)
    return model_lib.build_model(weights=None)


def test_input_and_output_follow_the_contract(model):
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 1)
    assert model.inputs[0].name.startswith("image")
    assert model.get_layer(model_lib.LAST_CONV_LAYER).output.shape[1:] == (7, 7, 1280)
    assert model.get_layer(model_lib.LOGIT_LAYER).output.shape[1:] == (1,)
    assert model.get_layer(model_lib.PROBABILITY_LAYER) is not None


def test_model_normalises_raw_pixels_inside_without_lambda(model):
    import keras

    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    rescaling = model.get_layer("to_minus1_plus1")
    pixels = np.array([[[[0.0, 127.5, 255.0]]]], dtype=np.float32)  # (1, 1, 1, 3) raw 0-255
    np.testing.assert_allclose(np.asarray(rescaling(pixels)), [[[[-1.0, 0.0, 1.0]]]], atol=1e-6)
    images = np.stack([np.zeros((224, 224, 3)), np.full((224, 224, 3), 255.0)]).astype(np.float32)
    probabilities = model.predict(images, verbose=0)  # (2, 1)
    assert probabilities.shape == (2, 1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_logit_model_gives_the_pre_sigmoid_score(model):
    images = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    logits = model_lib.logit_model(model).predict(images, verbose=0)
    probabilities = model.predict(images, verbose=0)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), probabilities, rtol=1e-5, atol=1e-6)


def test_base_starts_frozen_and_unfreeze_keeps_batch_norm_frozen():
    import keras

    model = model_lib.build_model(weights=None, image_size=64)
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {model_lib.LOGIT_LAYER}
    trainable = model_lib.unfreeze_from(model, "block_15_expand")
    assert "block_15_expand" in trainable and "Conv_1" in trainable and model_lib.LOGIT_LAYER in trainable
    assert "block_14_expand" not in trainable
    batch_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms and not any(layer.trainable for layer in batch_norms)
    model_lib.freeze_base(model)
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {model_lib.LOGIT_LAYER}


def test_unfreeze_from_unknown_layer_names_the_choices():
    model = model_lib.build_model(weights=None, image_size=64)
    with pytest.raises(ValueError, match="no layer 'block_99_expand'.*block_13"):
        model_lib.unfreeze_from(model, "block_99_expand")


def test_initial_output_bias_is_log_prior_odds():
    assert model_lib.initial_output_bias(3875, 1341) == pytest.approx(math.log(3875 / 1341))
    model = model_lib.build_model(weights=None, image_size=64, output_bias=math.log(3))
    np.testing.assert_allclose(model.get_layer(model_lib.LOGIT_LAYER).bias.numpy(), [math.log(3)], rtol=1e-6)
    with pytest.raises(ValueError, match="both classes"):
        model_lib.initial_output_bias(0, 10)


def test_build_model_rejects_bad_dropout():
    with pytest.raises(ValueError, match="dropout"):
        model_lib.build_model(weights=None, dropout=1.0)


def test_head_model_has_the_same_head_layers():
    head = model_lib.build_head_model(feature_size=1280, dropout=0.2)
    assert head.input_shape == (None, 1280) and head.output_shape == (None, 1)
    assert [layer.name for layer in head.layers[1:]] == [
        model_lib.HEAD_DROPOUT_LAYER, model_lib.LOGIT_LAYER, model_lib.PROBABILITY_LAYER]


def test_saved_model_reloads_with_safe_mode_and_identical_predictions(model, tmp_path):
    model_lib.unfreeze_from(model, "block_16_expand")  # the state 03 saves in
    path = tmp_path / model_lib.MODEL_FILE_NAME
    model.save(path)
    reloaded = model_lib.load_model(path)  # safe_mode=True inside
    images = np.random.default_rng(1).uniform(0, 255, (3, 224, 224, 3)).astype(np.float32)
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), model.predict(images, verbose=0))
    assert reloaded.get_layer(model_lib.LAST_CONV_LAYER).output.shape[1:] == (7, 7, 1280)
    model_lib.freeze_base(model)


def test_load_model_says_how_to_create_a_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="03_finetune_mobilenetv2"):
        model_lib.load_model(tmp_path / "missing.keras")


def test_missing_model_is_a_missing_file_of_the_project_error_family(tmp_path):
    with pytest.raises(UnusableInput, match="No trained model at .*missing.keras"):
        model_lib.load_model(tmp_path / "missing.keras")


@pytest.mark.parametrize("content", [b"", b"not a zip archive at all", b"PK\x03\x04truncated"])
def test_corrupt_model_file_names_the_file_and_says_corrupt(tmp_path, content):
    path = tmp_path / "broken.keras"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=r"broken.keras is corrupt .*03_finetune_mobilenetv2"):
        model_lib.load_model(path)


def test_model_of_another_architecture_is_refused_with_what_differs(tmp_path):
    import keras

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(3, name="scores")(keras.layers.GlobalAveragePooling2D()(inputs))
    path = tmp_path / "other.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ModelFileError, match=r"other.keras holds a model of another architecture") as caught:
        model_lib.load_model(path)
    message = str(caught.value)
    assert "'out_relu'" in message and "(None, 32, 32, 3)" in message and "(None, 3)" in message


def test_default_model_path_is_in_the_artifacts_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path))
    assert model_lib.default_model_path() == tmp_path.resolve() / "model" / model_lib.MODEL_FILE_NAME


def test_border_mask_hides_the_outer_band_and_survives_save_and_load(tmp_path):
    import keras

    from helpers import shortcuts

    keras.utils.set_random_seed(0)
    model = model_lib.build_model(weights=None, border_mask=0.12)
    films = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    masked = model.get_layer(model_lib.BORDER_MASK_LAYER)(films).numpy()
    band = shortcuts.border_mask(224, 224, 0.12)
    np.testing.assert_array_equal(masked[:, ~band], films[:, ~band])
    inside_mean = films[:, ~band].mean(axis=(1, 2))  # (2,): one grey per film
    np.testing.assert_allclose(masked[:, band], np.broadcast_to(inside_mean[:, None, None],
                                                                masked[:, band].shape), rtol=1e-5)
    changed_border = films.copy()
    changed_border[:, :10] = 255.0  # something bright in the top band: the model must not see it
    np.testing.assert_array_equal(model.predict(changed_border, verbose=0), model.predict(films, verbose=0))
    path = tmp_path / "masked.keras"
    model.save(path)
    reloaded = model_lib.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(films, verbose=0), model.predict(films, verbose=0))
    with pytest.raises(ValueError, match="border"):
        model_lib.build_model(weights=None, border_mask=0.5)
