"""Grad-CAM: maps, checks and errors on tiny models (no ImageNet weights, no data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import gradcam, imaging

SIZE = 32  # tiny images: (N, 32, 32, 3)


def small_conv_model(seed: int = 0):
    """Input (32, 32, 3) -> conv -> conv "out_relu" (8, 8, 16) -> pool -> Dense "logit" -> sigmoid."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="conv_top")(x)
    x = keras.layers.ReLU(name="out_relu")(x)  # (B, 8, 8, 16)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    logit = keras.layers.Dense(1, name="logit")(x)
    probability = keras.layers.Activation("sigmoid", name="probability")(logit)
    return keras.Model(inputs, probability, name="small")


def quadrant_model(logit_weight: float = 1.0, logit_bias: float = 0.0):
    """A model whose output depends only on the top-left quadrant of the image.

    The image is multiplied by a fixed top-left mask before a bias-free conv with
    non-negative weights, so the "out_relu" activations outside that quadrant are
    zero; the logit weights are positive, so every channel speaks for PNEUMONIA.
    """
    import keras

    class TopLeftMask(keras.layers.Layer):
        def call(self, images):
            height, width = images.shape[1], images.shape[2]
            mask = np.zeros((1, height, width, 1), dtype="float32")
            mask[:, : height // 2, : width // 2] = 1.0
            return images * mask

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = TopLeftMask()(inputs)
    x = keras.layers.Conv2D(8, 4, strides=4, use_bias=False, name="conv_top",
                            kernel_initializer=keras.initializers.RandomUniform(0.0, 0.01, seed=1))(x)
    x = keras.layers.ReLU(name="out_relu")(x)  # (B, 8, 8, 8)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logit = keras.layers.Dense(1, name="logit", kernel_initializer=keras.initializers.Constant(logit_weight),
                               bias_initializer=keras.initializers.Constant(logit_bias))(x)
    probability = keras.layers.Activation("sigmoid", name="probability")(logit)
    return keras.Model(inputs, probability, name="quadrant")


def random_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(count, SIZE, SIZE, 3)).astype(np.float32)


def test_heatmap_shape_range_dtype():
    model = small_conv_model()
    heatmaps, logits = gradcam.compute_gradcam(model, random_images(5), batch_size=2, return_logits=True)
    assert heatmaps.shape == (5, SIZE, SIZE)
    assert heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    assert logits.shape == (5,)
    from helpers.model import logit_model

    expected = logit_model(model).predict(random_images(5), verbose=0)[:, 0]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    single = gradcam.compute_gradcam(model, random_images(1)[0])
    assert single.shape == (SIZE, SIZE)
    np.testing.assert_allclose(single, heatmaps[0], atol=1e-5)  # batching does not change a map


def test_each_nonzero_map_reaches_one_and_zero_maps_stay_zero():
    maps = np.array([[[0.0, 2.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]], dtype=np.float32)
    normalized = imaging.normalize_maps(maps)
    np.testing.assert_allclose(normalized[0], [[0.0, 1.0], [0.5, 0.25]])
    np.testing.assert_array_equal(normalized[1], 0.0)
    assert np.isfinite(normalized).all()


def test_steps_have_the_documented_shapes():
    model = small_conv_model()
    steps = gradcam.gradcam_steps(gradcam.gradcam_model(model), random_images(3))
    assert steps["activations"].shape == steps["gradients"].shape == (3, 8, 8, 16)
    assert steps["channel_weights"].shape == (3, 16)
    for name in ("weighted_sum", "relu", "normalized"):
        assert steps[name].shape == (3, 8, 8)
    assert steps["heatmap"].shape == (3, SIZE, SIZE)
    # The channel weights are the mean gradient; with GAP + Dense that is w_k / (8 * 8).
    kernel = model.get_layer("logit").get_weights()[0][:, 0]  # (16,)
    np.testing.assert_allclose(steps["channel_weights"][0], kernel / 64.0, rtol=1e-4, atol=1e-7)


def test_normal_target_negates_the_logit():
    model = small_conv_model()
    images = random_images(2)
    steps_pneumonia = gradcam.gradcam_steps(gradcam.gradcam_model(model), images, "pneumonia")
    steps_normal = gradcam.gradcam_steps(gradcam.gradcam_model(model), images, "normal")
    np.testing.assert_allclose(steps_normal["weighted_sum"], -steps_pneumonia["weighted_sum"], rtol=1e-5, atol=1e-6)


def test_quadrant_model_heatmap_is_concentrated_in_that_quadrant():
    model = quadrant_model()
    heatmaps = gradcam.compute_gradcam(model, random_images(4, seed=3))  # (4, 32, 32)
    half = SIZE // 2
    for heatmap in heatmaps:
        inside = heatmap[:half, :half].sum()
        assert inside / heatmap.sum() > 0.85
        assert heatmap[:half, :half].max() > 0.9  # the peak (bilinear upsampling blurs it a little)
        assert heatmap[half + 2:, :].max() < 0.05 and heatmap[:, half + 2:].max() < 0.05
    shares = gradcam.region_shares(heatmaps)
    assert shares["top_left"] > 0.85 and shares["top_left_area"] == 0.25
    # Nothing in the image speaks for NORMAL: all-zero maps, not NaN.
    normal = gradcam.compute_gradcam(model, random_images(2), target="normal")
    assert np.isfinite(normal).all() and normal.max() == 0.0


def bright_square_images(count: int, seed: int = 0) -> np.ndarray:
    """Dark images with one bright 8x8 square in the top-left and one in the bottom-right."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, SIZE, SIZE, 3), dtype=np.float32)
    for image in images:
        row, column = rng.integers(0, SIZE // 2 - 8, size=2)
        image[row:row + 8, column:column + 8] = 255.0
        row, column = rng.integers(SIZE // 2, SIZE - 8, size=2)
        image[row:row + 8, column:column + 8] = 255.0
    return images


def test_deletion_in_gradcam_order_beats_random_order_on_the_quadrant_model():
    model = quadrant_model(logit_weight=0.05, logit_bias=-1.0)  # keeps the sigmoid unsaturated
    images = bright_square_images(6, seed=4)
    heatmaps = gradcam.compute_gradcam(model, images)
    result = gradcam.deletion_curves(model, images, heatmaps, steps=4, grid=8, fill="mean")
    assert result["gradcam"].shape == result["random"].shape == (6, 5)
    np.testing.assert_allclose(result["gradcam"][:, 0], result["random"][:, 0])  # same start
    assert result["auc_gradcam"] < result["auc_random"]
    blurred = gradcam.deletion_curves(model, images, heatmaps, steps=2, grid=4, fill="blur")
    assert blurred["fractions"].tolist() == [0.0, 0.5, 1.0]


def test_delete_patches_blanks_exactly_the_chosen_patches():
    images = np.zeros((1, 4, 4, 3), dtype=np.float32)
    baselines = np.ones_like(images)
    order = np.array([[3, 0, 1, 2]])  # 2x2 grid: bottom-right patch first
    edited = gradcam.delete_patches(images, baselines, order, count=1, grid=2)
    np.testing.assert_array_equal(edited[0, 2:, 2:], 1.0)
    assert edited.sum() == 4 * 3


def test_randomization_check_lowers_the_correlation_and_keeps_the_original():
    model = small_conv_model(seed=5)
    images = random_images(8, seed=6)
    before = [weights.copy() for weights in model.get_weights()]
    # A clone with nothing re-initialized reproduces the maps exactly.
    identical = gradcam.randomized_clone(model, [], seed=0)
    same = gradcam.compute_gradcam(identical, images)
    original = gradcam.compute_gradcam(model, images)
    np.testing.assert_allclose(same, original, atol=1e-5)
    result = gradcam.randomization_check(model, images, randomize_from="conv_top", seed=7)
    assert result["randomized_layers"] == ["conv_top", "logit"]
    assert len(result["correlations"]) == 8
    assert result["n_undefined"] < 8
    assert result["mean_rank_correlation"] < 0.5  # vs 1.0 without randomization
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)  # the original model is untouched


def test_rank_correlation():
    a = np.arange(10.0)
    assert gradcam.rank_correlation(a, a ** 3) == pytest.approx(1.0)
    assert gradcam.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert np.isnan(gradcam.rank_correlation(a, np.zeros(10)))


def test_bad_inputs_give_clear_errors():
    model = small_conv_model()
    with pytest.raises(ValueError, match="height 16 but the model expects 32"):
        gradcam.compute_gradcam(model, np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="channels 1 but the model expects 3"):
        gradcam.compute_gradcam(model, np.zeros((2, SIZE, SIZE, 1), np.float32))
    with pytest.raises(ValueError, match=r"shape \(N, H, W, C\)"):
        gradcam.compute_gradcam(model, np.zeros((SIZE, SIZE), np.float32))
    with pytest.raises(ValueError, match="no layer named 'out_relux'.*out_relu"):
        gradcam.compute_gradcam(model, random_images(1), conv_layer="out_relux")
    with pytest.raises(ValueError, match="no layer named 'score'"):
        gradcam.gradcam_model(model, logit_layer="score")
    with pytest.raises(ValueError, match="target must be one of"):
        gradcam.compute_gradcam(model, random_images(1), target="covid")
    with pytest.raises(ValueError, match="one class index"):
        gradcam.compute_gradcam(model, random_images(2), target=[1, 0, 1])
    with pytest.raises(ValueError, match="alpha"):
        gradcam.overlay(random_images(1)[0], np.zeros((SIZE, SIZE)), alpha=2.0)
    with pytest.raises(ValueError, match="fill"):
        gradcam.baseline_images(random_images(1), fill="noise")


def test_mobilenet_layers_work_with_default_names():
    from helpers.model import build_model

    model = build_model(weights=None, image_size=96)
    images = random_images(2).repeat(3, axis=1).repeat(3, axis=2)  # (2, 96, 96, 3)
    heatmaps = gradcam.compute_gradcam(model, images, target=[1, 0])
    assert heatmaps.shape == (2, 96, 96) and heatmaps.dtype == np.float32
    names = gradcam.layers_from(model, gradcam.DEFAULT_RANDOMIZE_FROM)
    assert names[0] == "block_14_expand" and names[-1] == "logit" and "Conv_1" in names
    with pytest.raises(ValueError, match="expects 96"):
        gradcam.compute_gradcam(model, random_images(1))


def test_overlay_and_side_by_side_figure():
    import matplotlib

    matplotlib.use("Agg")
    images = random_images(3)
    heatmaps = np.linspace(0, 1, 3 * SIZE * SIZE, dtype=np.float32).reshape(3, SIZE, SIZE)
    blended = gradcam.overlay(images[0], heatmaps[0], alpha=0.5)
    assert blended.shape == (SIZE, SIZE, 3) and blended.min() >= 0.0 and blended.max() <= 1.0
    np.testing.assert_allclose(gradcam.overlay(images[0], heatmaps[0], alpha=0.0), images[0] / 255.0, atol=1e-6)
    figure = gradcam.plot_side_by_side(images, heatmaps, titles=["a", "b", "c"])
    assert len(figure.axes) == 6
    with pytest.raises(ValueError, match="one title per image"):
        gradcam.plot_side_by_side(images, heatmaps, titles=["a"])


def test_outcome_groups_and_seeded_choice():
    labels = np.array([1, 1, 0, 0, 1])
    probabilities = np.array([0.9, 0.2, 0.7, 0.1, 0.6])
    groups = gradcam.outcome_groups(labels, probabilities, threshold=0.65)
    assert {name: index.tolist() for name, index in groups.items()} == {
        "TP": [0], "TN": [3], "FP": [2], "FN": [1, 4]}
    assert gradcam.choose(np.arange(10), 3, seed=1).tolist() == gradcam.choose(np.arange(10), 3, seed=1).tolist()
    assert len(gradcam.choose(np.arange(2), 3)) == 2


def test_probabilities_for_paths_reads_saved_predictions_or_predicts(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path))
    model = small_conv_model()
    images = random_images(2, seed=3)
    predicted = model.predict(images, verbose=0)[:, 0]  # (2,)
    probabilities, source = gradcam.probabilities_for_paths(model, ["a", "b"], images, batch_size=1)
    assert "predicted here" in source and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, predicted, rtol=1e-5)

    csv = tmp_path / "predictions" / "test.csv"
    csv.parent.mkdir()
    csv.write_text("path,label,probability,logit\na,1,0.8,1.4\nb,0,0.1,-2.2\n")
    probabilities, source = gradcam.probabilities_for_paths(model, ["b", "a"], images[::-1])
    np.testing.assert_allclose(probabilities, [0.1, 0.8])
    assert source == str(csv)
    _, source = gradcam.probabilities_for_paths(model, ["a", "c"], images)  # "c" not saved
    assert "predicted here" in source


def test_validation_predictions_are_read_for_the_validation_split(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path))
    csv = tmp_path / "predictions" / "validation.csv"
    csv.parent.mkdir()
    csv.write_text("path,label,probability,logit\na,1,0.8,1.4\nb,0,0.1,-2.2\n")
    probabilities, source = gradcam.probabilities_for_paths(small_conv_model(), ["a", "b"], random_images(2),
                                                            split="validation")
    np.testing.assert_allclose(probabilities, [0.8, 0.1])
    assert source == str(csv)


def test_outcome_gallery_names_its_split_and_explains_the_predicted_class():
    images = random_images(4, seed=5)
    labels, probabilities = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.2, 0.1])
    figure, chosen = gradcam.plot_outcome_gallery(small_conv_model(), images, labels, probabilities, 0.5,
                                                  per_group=1, split="validation")
    assert figure._suptitle.get_text().startswith("Validation outcomes at threshold 0.500")
    assert {name: indices.tolist() for name, indices in chosen.items()} == {"TP": [0], "TN": [3], "FP": [1], "FN": [2]}


def test_write_report(tmp_path):
    with pytest.raises(ValueError, match="n_images"):
        gradcam.write_report({"randomization_rank_correlation": 0.1, "deletion_auc_gradcam": 0.2,
                              "deletion_auc_random": 0.3}, tmp_path)
    path = gradcam.write_report({"randomization_rank_correlation": 0.1, "deletion_auc_gradcam": 0.2,
                                 "deletion_auc_random": 0.3, "n_images": 4}, tmp_path)
    assert json.loads(path.read_text())["n_images"] == 4


def test_write_report_makes_strict_json(tmp_path):
    path = gradcam.write_report({"randomization_rank_correlation": np.float32(0.25),
                                 "deletion_auc_gradcam": float("nan"), "deletion_auc_random": np.float64(0.5),
                                 "n_images": np.int64(3), "curve": np.array([0.5, 1.0])}, tmp_path)
    report = json.loads(path.read_text())
    assert report == {"randomization_rank_correlation": 0.25, "deletion_auc_gradcam": None,
                      "deletion_auc_random": 0.5, "n_images": 3, "curve": [0.5, 1.0]}


def test_example_index_prefers_a_true_positive():
    labels = np.array([0, 1, 1, 0])
    assert gradcam.example_index(labels, np.array([0.9, 0.2, 0.8, 0.1]), 0.5) == 2
    assert gradcam.example_index(np.array([0, 0]), np.array([0.3, 0.7]), 0.5) == 1  # no TP: most confident


def test_region_shares_peak_and_uniform_map():
    uniform = gradcam.region_shares(np.ones((2, 20, 20)), border=0.1)
    assert uniform["border"] == pytest.approx(uniform["border_area"]) == pytest.approx(1 - 0.8 ** 2)
    corner = np.zeros((1, 20, 20))
    corner[0, 0, 19] = 1.0  # top-right corner: a text marker
    shares = gradcam.region_shares(corner)
    assert shares["top_right"] == 1.0 and shares["border"] == 1.0 and shares["peak_in_border"]
    assert shares["peak_row"] < 0.1 and shares["peak_column"] > 0.9


def test_subset_deletion_recomputes_the_areas():
    result = {"gradcam": np.array([[1.0, 0.0], [1.0, 1.0]]), "random": np.ones((2, 2)),
              "areas_gradcam": np.array([0.5, 1.0]), "areas_random": np.array([1.0, 1.0]),
              "auc_gradcam": 0.75, "auc_random": 1.0, "fractions": np.array([0.0, 1.0])}
    subset = gradcam.subset_deletion(result, np.array([True, False]))
    assert subset["auc_gradcam"] == 0.5 and subset["gradcam"].shape == (1, 2)
    assert np.isnan(gradcam.subset_deletion(result, np.array([False, False]))["auc_gradcam"])


def test_describe_regions_flags_border_heat():
    corner = np.zeros((1, 20, 20))
    corner[0, 10, 0] = 1.0  # left edge, mid-height: where the "R" marker sits
    sentence = gradcam.describe_regions("PNEUMONIA", gradcam.region_shares(corner))
    assert "middle left" in sentence and "border band" in sentence and "MORE" in sentence
    lungs_only = np.zeros((1, 20, 20))
    lungs_only[0, 2:18, 2:18] = 1.0  # nothing in the 2-pixel border band
    sentence = gradcam.describe_regions("NORMAL", gradcam.region_shares(lungs_only))
    assert "inside the central region" in sentence and "less than a uniform map" in sentence
