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
    Image.fromarray((film.astype(np.uint16) * 16)).save(buffer, format="PNG")
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
