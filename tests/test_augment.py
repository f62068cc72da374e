"""Acquisition-style augmentation and the cached-views training batches."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import augment, training

NO_SENSOR = {"sharpness": 0.0, "noise_std": 0.0, "jpeg_probability": 0.0}
NO_CHANGE = augment.AugmentConfig(min_crop=1.0, max_aspect_change=0.0, brightness=0.0, contrast=0.0,
                                  gamma=0.0, erase_probability=0.0, **NO_SENSOR)


def _left_bright_images(count: int = 3, size: int = 32) -> np.ndarray:
    """(count, size, size, 3) uint8: left half 200, right half 40 (an orientation cue)."""
    images = np.full((count, size, size, 3), 40, np.uint8)
    images[:, :, : size // 2] = 200
    return images


def test_augment_returns_float_pixels_of_the_same_shape():
    images = np.random.default_rng(0).integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    views = augment.augment_images(images, np.random.default_rng(1))
    assert views.shape == (5, 48, 48, 3) and views.dtype == np.float32
    assert views.min() >= 0.0 and views.max() <= 255.0
    assert not np.allclose(views, images)  # something changed


def test_augment_is_reproducible_from_the_seed():
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    first = augment.augment_images(images, np.random.default_rng(7))
    second = augment.augment_images(images, np.random.default_rng(7))
    other = augment.augment_images(images, np.random.default_rng(8))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_no_change_settings_give_back_the_image():
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(augment.augment_images(images, np.random.default_rng(0), NO_CHANGE),
                               images.astype(np.float32), atol=1e-3)


def test_augment_never_flips_the_film():
    """Crops move and zoom but keep left on the left: no flips, no rotations."""
    images = _left_bright_images(count=50)
    framing_only = augment.AugmentConfig(brightness=0.0, contrast=0.0, gamma=0.0, erase_probability=0.0,
                                         **NO_SENSOR)
    views = augment.augment_images(images, np.random.default_rng(3), framing_only)
    left, right = views[:, :, :4].mean(axis=(1, 2, 3)), views[:, :, -4:].mean(axis=(1, 2, 3))
    assert np.all(left > 150) and np.all(right < 90)


def test_crop_boxes_stay_inside_the_image_and_respect_min_crop():
    boxes = augment.random_crop_boxes(1000, np.random.default_rng(0), augment.AugmentConfig(min_crop=0.8))
    assert boxes.shape == (1000, 4)
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0
    heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert np.sqrt(heights * widths).min() >= 0.8 - 1e-6


def test_erasing_fills_one_patch_near_an_edge_with_the_median_grey():
    images = np.zeros((20, 40, 40, 3), np.float32)
    images[:, :, :20] = 100.0  # median 50 of a half-0, half-100 image
    always = augment.AugmentConfig(erase_probability=1.0, erase_size=(0.2, 0.2))
    erased = augment.erase_near_edges(images.copy(), np.random.default_rng(0), always)
    for original, view in zip(images, erased):
        changed = np.argwhere(np.any(original != view, axis=-1))
        assert len(changed) > 0
        assert np.all(view[tuple(changed.T)] == 50.0)
        top, left = changed.min(axis=0)
        bottom, right = changed.max(axis=0)
        centre = ((top + bottom) / 2 / 40, (left + right) / 2 / 40)
        assert min(centre[0], 1 - centre[0], centre[1], 1 - centre[1]) <= 0.25 + 0.05


@pytest.mark.parametrize("kwargs, message", [
    ({"min_crop": 0.1}, "min_crop"),
    ({"gamma": 1.5}, "gamma"),
    ({"erase_probability": 2.0}, "erase_probability"),
    ({"erase_size": (0.3, 0.1)}, "erase_size"),
    ({"sharpness": -0.5}, "sharpness"),
    ({"noise_std": 100.0}, "noise_std"),
    ({"jpeg_probability": 1.5}, "jpeg_probability"),
    ({"jpeg_quality": (0, 90)}, "jpeg_quality"),
])
def test_augment_config_rejects_bad_ranges(kwargs, message):
    with pytest.raises(ValueError, match=message):
        augment.AugmentConfig(**kwargs)


def test_sharpness_minus_one_is_the_gaussian_blur_and_zero_the_image():
    from scipy import ndimage

    images = np.random.default_rng(0).uniform(50, 200, (2, 24, 24, 3)).astype(np.float32)
    blurred = augment.change_sharpness(images, np.array([-1.0, 0.0]))
    np.testing.assert_allclose(blurred[0], ndimage.gaussian_filter(images[0], (1, 1, 0)), atol=1e-3)
    np.testing.assert_allclose(blurred[1], images[1], atol=1e-5)
    sharpened = augment.change_sharpness(images, np.array([1.0, 1.0]))
    assert np.abs(np.diff(sharpened, axis=2)).mean() > np.abs(np.diff(images, axis=2)).mean()
    with pytest.raises(ValueError, match="one sharpness amount per image"):
        augment.change_sharpness(images, np.array([0.5]))


def test_noise_has_the_asked_std_and_keeps_the_film_grey():
    images = np.full((2, 64, 64, 3), 128.0, np.float32)
    noisy = augment.add_grey_noise(images, np.random.default_rng(0), np.array([0.0, 10.0]))
    np.testing.assert_array_equal(noisy[0], images[0])
    assert 9.0 < noisy[1].std() < 11.0
    np.testing.assert_array_equal(noisy[..., 0], noisy[..., 2])


def test_jpeg_recompression_changes_only_the_chosen_images():
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).round().astype(np.float32)
    out = augment.recompress_jpeg(images, [0, 30])
    np.testing.assert_array_equal(out[0], images[0])
    assert np.abs(out[1] - images[1]).mean() > 5.0  # quality 30 smooths random pixels a lot
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255


def test_default_views_carry_sensor_noise():
    flat = np.full((8, 48, 48, 3), 120, np.uint8)
    views = augment.augment_images(flat, np.random.default_rng(0))
    assert views.std(axis=(1, 2, 3)).max() > 2.0  # noise, blur and JPEG show up on a flat film


def test_augment_rejects_grey_images_without_channels():
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        augment.augment_images(np.zeros((2, 32, 32), np.uint8), np.random.default_rng(0))


# --------------------------------------------------------------------------- #
# ViewBatches
# --------------------------------------------------------------------------- #
def _views(count: int = 10, view_count: int = 3) -> list[np.ndarray]:
    """View v of sample i holds the value 100 * v + i everywhere: easy to decode."""
    return [np.full((count, 2, 2, 1), 0, np.float32) + (100 * view + np.arange(count))[:, None, None, None]
            for view in range(view_count)]


def _epoch(batches: training.ViewBatches):
    values, labels, weights = [], [], []
    for index in range(len(batches)):
        x, y, w = batches[index]
        values.append(x[:, 0, 0, 0])
        labels.append(y)
        weights.append(w)
    return np.concatenate(values), np.concatenate(labels), np.concatenate(weights)


def test_view_batches_visit_every_sample_once_per_epoch_from_random_views():
    labels = np.array([0, 1, 1, 1, 1, 0, 1, 1, 1, 1])
    batches = training.ViewBatches(_views(), labels, batch_size=4, class_weight={0: 2.5, 1: 0.625}, seed=0)
    assert len(batches) == 3
    values, batch_labels, weights = _epoch(batches)
    samples, views = values.astype(int) % 100, values.astype(int) // 100
    assert sorted(samples) == list(range(10))  # each image once
    np.testing.assert_array_equal(batch_labels, labels[samples])  # labels follow their image
    np.testing.assert_array_equal(weights, np.where(labels[samples] == 0, 2.5, 0.625))
    seen_views = set(views)
    batches.new_epoch()
    second, _, _ = _epoch(batches)
    seen_views |= set(second.astype(int) // 100)
    assert seen_views == {0, 1, 2} and not np.array_equal(values, second)


def test_view_batches_follow_oversampled_indices_and_are_seeded():
    labels = np.array([0, 1, 1, 1])
    indices = np.array([0, 0, 0, 1, 2, 3])
    first = training.ViewBatches(_views(4, 2), labels, indices, batch_size=4, seed=5)
    second = training.ViewBatches(_views(4, 2), labels, indices, batch_size=4, seed=5)
    values, _, weights = _epoch(first)
    np.testing.assert_array_equal(values, _epoch(second)[0])
    assert sorted(values.astype(int) % 100) == [0, 0, 0, 1, 2, 3]
    assert np.all(weights == 1.0)  # no class weights


def test_view_batches_reject_mismatched_views_and_labels():
    with pytest.raises(ValueError, match="same shape"):
        training.ViewBatches([np.zeros((4, 2)), np.zeros((3, 2))], [0, 1, 0, 1])
    with pytest.raises(ValueError, match="labels"):
        training.ViewBatches([np.zeros((4, 2))], [0, 1, 0])
    with pytest.raises(IndexError):
        training.ViewBatches([np.zeros((4, 2))], [0, 1, 0, 1], batch_size=4)[1]


def test_train_two_phase_with_views_trains_and_checks_their_shape():
    from tests.conftest import tiny_training_setup

    cfg, model, images, labels = tiny_training_setup(head_epochs=1, finetune_epochs=1, count=8)
    extractor = training.feature_extractor(model, cfg.unfreeze_from)
    activations = extractor.predict(images, verbose=0)
    view = extractor.predict(np.clip(images * 0.9, 0, 255), verbose=0)
    result = training.train_two_phase(model, activations, labels, activations, labels, cfg, verbose=0,
                                      train_views=[view])
    assert result.phase == [1, 2]
    with pytest.raises(ValueError, match="augmented view"):
        training.train_two_phase(model, activations, labels, activations, labels, cfg, verbose=0,
                                 train_views=[view[:4]])


def test_cached_view_activations_differ_per_view_and_are_reused(tmp_path, monkeypatch):
    import keras

    from helpers import model as model_lib
    from tests.conftest import tiny_examples

    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path))
    keras.utils.set_random_seed(0)
    model = model_lib.build_model(weights=None, image_size=32)
    examples = tiny_examples(4)

    views = training.cached_view_activations(model, examples, "block_13_expand", views=2, progress=False)
    assert len(views) == 2 and views[0].shape == (4, 2, 2, 96)
    assert not np.array_equal(views[0], views[1])
    assert len(list((tmp_path / "cache").glob("views-block_13_expand-4-*.npy"))) == 2
    again = training.cached_view_activations(model, examples, "block_13_expand", views=2, progress=False)
    np.testing.assert_array_equal(views[1], again[1])
    other_seed = training.cached_view_activations(model, examples, "block_13_expand", views=1, seed=1,
                                                  progress=False)
    assert not np.array_equal(views[0], other_seed[0])


def test_plot_augmented_examples_has_one_row_per_image_and_a_column_per_view():
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    figure = augment.plot_augmented_examples(images, np.random.default_rng(0), views=3)
    assert len(figure.axes) == 2 * 4
    assert [axis.get_title() for axis in figure.axes[:4]] == ["original", "view 1", "view 2", "view 3"]
    with pytest.raises(ValueError, match="at least one"):
        augment.plot_augmented_examples(images[:0], np.random.default_rng(0))


# --------------------------------------------------------------------------- #
# Stress tests on fixed acquisition changes
# --------------------------------------------------------------------------- #
def test_zoom_centre_crops_in_and_shrinks_onto_black():
    images = np.full((1, 40, 40, 3), 200.0, np.float32)
    images[:, 18:22, 18:22] = 0.0  # a dark centre square, 4 px
    zoomed_in = augment.zoom_centre(images, 2.0)
    assert zoomed_in[0, 20, 20, 0] < 50 and (zoomed_in[0, :, :, 0] < 100).sum() > 4 * 4 * 2
    zoomed_out = augment.zoom_centre(images, 0.5)
    assert zoomed_out[0, 0, 0, 0] == 0.0 and zoomed_out[0, 12, 12, 0] == pytest.approx(200.0)
    with pytest.raises(ValueError, match="zoom factor"):
        augment.zoom_centre(images, 10.0)


def test_stress_perturbations_keep_shape_and_range():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    perturbations = augment.stress_perturbations()
    assert next(iter(perturbations)) == "clean"
    for name, change in perturbations.items():
        out = change(images, np.random.default_rng(0))
        assert out.shape == images.shape and out.dtype == np.float32, name
        assert out.min() >= 0.0 and out.max() <= 255.0, name
    np.testing.assert_array_equal(perturbations["clean"](images, None), images.astype(np.float32))


def _brightness_model():
    """P(PNEUMONIA) = sigmoid(20 * (mean pixel / 255 - 0.5)): bright films are 'pneumonia'."""
    import keras

    inputs = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(inputs))
    dense = keras.layers.Dense(1, activation="sigmoid")
    model = keras.Model(inputs, dense(pooled))
    dense.set_weights([np.full((3, 1), 20.0 / 3, np.float32), np.array([-10.0], np.float32)])
    return model


def test_stress_test_reports_one_row_per_change_at_the_threshold():
    labels = np.array([0, 0, 1, 1])
    images = np.stack([np.full((16, 16, 3), value, np.float32) for value in (50, 60, 200, 210)])
    perturbations = {"clean": augment.stress_perturbations()["clean"],
                     "white film": lambda batch, rng: np.full(batch.shape, 255.0, np.float32)}
    table = training.stress_test(_brightness_model(), images, labels, 0.5, perturbations=perturbations,
                                 progress=False)
    assert list(table.index) == ["clean", "white film"]
    assert table.loc["clean", "specificity"] == 1.0 and table.loc["clean", "recall"] == 1.0
    assert table.loc["white film", "specificity"] == 0.0 and table.loc["white film", "accuracy"] == 0.5
    assert table.loc["white film", "normal_p90"] > 0.99
    with pytest.raises(ValueError, match="differ in length"):
        training.stress_test(_brightness_model(), images, labels[:3], 0.5, progress=False)


def test_acquisition_shifts_extend_the_stress_set_and_keep_shape_and_range():
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    shifts = augment.acquisition_shifts()
    assert set(augment.stress_perturbations()) < set(shifts)
    for name, change in shifts.items():
        changed = change(images, np.random.default_rng(1))
        assert changed.shape == images.shape and changed.dtype == np.float32, name
        assert changed.min() >= 0.0 and changed.max() <= 255.0, name


def test_collimation_blackens_the_edges_only():
    images = np.full((2, 50, 50, 3), 200.0, np.float32)
    collimated = augment.collimate(images, 0.1)
    assert (collimated[:, :5] == 0).all() and (collimated[:, :, -5:] == 0).all()
    assert (collimated[:, 5:45, 5:45] == 200).all() and (images == 200).all()
    with pytest.raises(ValueError, match="collimation"):
        augment.collimate(images, 0.5)


def test_text_is_burnt_into_the_corners_not_the_lungs():
    images = np.full((1, 112, 112, 3), 60.0, np.float32)
    burnt = augment.burn_in_text(images, np.random.default_rng(0))
    changed = np.any(burnt != images, axis=-1)[0]  # (H, W)
    assert changed[:20, 90:].any() and changed[100:, :60].any()  # the letter and the ID line
    assert not changed[30:90, 20:90].any()


def test_s_curve_keeps_black_white_and_grey_and_raises_contrast():
    values = np.array([0.0, 64.0, 127.5, 191.0, 255.0], np.float32).reshape(1, 1, 5, 1).repeat(3, axis=-1)
    curved = augment.s_curve(values)[0, 0, :, 0]
    np.testing.assert_allclose(curved[[0, 2, 4]], [0.0, 127.5, 255.0], atol=1e-3)
    assert curved[1] < 64.0 and curved[3] > 191.0
