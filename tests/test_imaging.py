"""TensorFlow-free image operations: the same pixels and heat maps as the TensorFlow path."""

from __future__ import annotations

import io

import numpy as np
import pytest

from helpers import imaging
from tests.conftest import encode_image


def test_upsample_maps_equals_tensorflow_bilinear():
    import tensorflow as tf

    maps = np.random.default_rng(0).uniform(0, 1, (3, 7, 7))
    expected = tf.image.resize(maps[..., np.newaxis], (224, 224), method="bilinear").numpy()[..., 0]
    np.testing.assert_allclose(imaging.upsample_maps(maps, (224, 224)), np.clip(expected, 0, 1), atol=1e-5)


def test_upsample_maps_needs_a_batch_of_maps():
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        imaging.upsample_maps(np.zeros((7, 7)), (224, 224))


def test_jet_table_matches_matplotlib():
    import matplotlib

    expected = matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3]
    assert imaging.JET.shape == (256, 3)
    np.testing.assert_allclose(imaging.JET, expected, atol=2e-3)


def test_overlay_blends_by_alpha_and_checks_shapes():
    image = np.full((4, 4, 3), 255.0)
    heatmap = np.zeros((4, 4))
    np.testing.assert_allclose(imaging.overlay(image, heatmap, alpha=0.0), 1.0)
    blended = imaging.overlay(image, heatmap, alpha=1.0)  # the coldest jet colour: dark blue
    np.testing.assert_allclose(blended[0, 0], imaging.JET[0], atol=1e-6)
    with pytest.raises(ValueError, match="heatmap"):
        imaging.overlay(image, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="alpha"):
        imaging.overlay(image, heatmap, alpha=1.5)


def test_sixteen_bit_film_is_windowed_not_squeezed():
    from PIL import Image

    rows, columns = np.mgrid[0:300, 0:260]
    film = (127.5 + 127.5 * np.sin(rows / 40.0) * np.cos(columns / 30.0)).astype(np.uint8)  # smooth, 0-255
    eight_bit = imaging.decode_pixels(encode_image(film, "PNG"))
    buffer = io.BytesIO()  # a 12-bit detector export stored in 16 bits: values 0..4095
    Image.fromarray(film.astype(np.uint16) * 16).save(buffer, format="PNG")
    sixteen_bit = imaging.decode_pixels(buffer.getvalue())
    assert sixteen_bit.shape == (224, 224, 3)
    # the 0.5-99.5 percentile window stretches the film over 0-255, as the 8-bit copy is
    assert np.corrcoef(eight_bit[..., 0].ravel(), sixteen_bit[..., 0].ravel())[0, 1] > 0.99
    assert sixteen_bit.max() > 240 and abs(sixteen_bit.mean() - eight_bit.mean()) < 5


def test_flat_high_bit_depth_film_maps_to_black():
    assert imaging.window_to_8bit(np.full((5, 5), 1000, np.uint16)).max() == 0.0


@pytest.mark.integration
def test_pillow_decoding_matches_the_training_decoder_on_real_films(real_data_dir):
    """Pillow and TensorFlow's JPEG decoders round the IDCT differently: at most 2 grey levels."""
    import tensorflow as tf

    from helpers import data

    test = data.load_examples("test", real_data_dir).head(30, seed=0)
    differences = []
    for content in test.image_bytes:
        reference = data.decode_and_resize(tf.constant(bytes(content))).numpy()
        differences.append(np.abs(imaging.decode_pixels(bytes(content)) - reference))
    differences = np.stack(differences)
    assert differences.max() <= 2.0 and differences.mean() < 1.0, (differences.max(), differences.mean())


def test_overlay_png_is_the_same_blend_in_8_bits():
    from PIL import Image

    rng = np.random.default_rng(2)
    image = rng.uniform(0, 255, (32, 40, 3)).astype(np.float32)
    heatmap = rng.uniform(0, 1, (32, 40)).astype(np.float32)
    decoded = np.asarray(Image.open(io.BytesIO(imaging.overlay_png(image, heatmap, 0.4))), dtype=np.float32)
    assert np.abs(decoded - imaging.overlay(image, heatmap, 0.4) * 255).max() <= 1.0
    with pytest.raises(ValueError, match="heatmap"):
        imaging.overlay_png(image, heatmap[:5])


# --------------------------------------------------------------------------- #
# The pixel scale comes from the dtype or the caller, never from the values
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_a_dark_0_255_film_is_not_taken_for_a_0_1_image(dtype):
    dark = np.zeros((4, 4, 3), dtype=dtype)
    dark[0, 0] = 1  # the brightest pixel is grey level 1 of 255: a nearly black film
    unit = imaging.to_unit_range(dark)
    assert unit.max() == pytest.approx(1 / 255)  # the old guess ("max <= 1: already [0, 1]") gave 1.0
    assert imaging.overlay(dark, np.zeros((4, 4)), alpha=0.0).max() == pytest.approx(1 / 255)
    from PIL import Image

    assert np.asarray(Image.open(io.BytesIO(imaging.png_bytes(dark)))).max() == 1  # not 255


def test_the_scale_is_explicit_for_unit_floats_and_declared_bit_depths():
    unit = np.full((2, 2), 0.5, dtype=np.float32)
    np.testing.assert_allclose(imaging.to_unit_range(unit, scale=1.0), 0.5)
    assert imaging.to_unit_range(unit, scale=1.0).shape == (2, 2, 3)
    twelve_bit = np.full((2, 2), 4095, dtype=np.uint16)
    np.testing.assert_allclose(imaging.to_unit_range(twelve_bit, scale=imaging.full_scale(np.uint16, bits=12)), 1.0)
    np.testing.assert_allclose(imaging.to_unit_range(twelve_bit), 4095 / 65535)  # uint16 by default: 16 bits
    assert imaging.full_scale(np.uint8) == 255 and imaging.full_scale(np.float32) == 255
    assert imaging.full_scale(np.bool_) == 1
    with pytest.raises(ValueError, match="scale="):
        imaging.to_unit_range(np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="positive"):
        imaging.to_unit_range(unit, scale=0.0)


def test_png_bytes_of_a_unit_range_overlay_says_so():
    from PIL import Image

    overlay = np.full((3, 3, 3), 0.6, dtype=np.float32)
    assert np.asarray(Image.open(io.BytesIO(imaging.png_bytes(overlay, scale=1.0)))).max() == 153
    assert np.asarray(Image.open(io.BytesIO(imaging.png_bytes(overlay)))).max() == 1  # read as 0-255 pixels


def test_high_bit_depth_is_decided_by_the_declared_mode_not_the_values():
    from PIL import Image

    low = Image.fromarray(np.arange(80 * 70, dtype=np.uint16).reshape(80, 70) % 200)  # 16-bit, values below 255
    assert low.mode.startswith("I;16")
    assert imaging.channels(low)[0].max() == 255.0  # windowed as a 16-bit film, whatever its values
    eight = Image.fromarray((np.arange(80 * 70).reshape(80, 70) % 200).astype(np.uint8))
    assert imaging.channels(eight)[0].max() == 199.0  # an 8-bit film keeps its grey levels


def test_decode_pixels_refuses_more_pixels_than_allowed_before_decoding():
    with pytest.raises(ValueError, match="300x200 pixels"):
        imaging.decode_pixels(encode_image(np.zeros((200, 300), np.uint8), "PNG"), max_pixels=300 * 200 - 1)
