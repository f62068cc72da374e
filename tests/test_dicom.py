"""DICOM films: built by the tests from real test films (and pydicom's own files for the refusals)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from helpers import dicom, uploads


@pytest.fixture(scope="module")
def films(real_data_dir_module):
    """Four real test films as grey (224, 224) uint8 arrays, with their JPEG bytes."""
    from PIL import Image

    from helpers import data

    test = data.load_examples("test", real_data_dir_module).head(4, seed=0)
    return [np.asarray(Image.open(io.BytesIO(bytes(content))).convert("L")) for content in test.image_bytes]


@pytest.fixture(scope="module")
def real_data_dir_module():
    import os
    from pathlib import Path

    value = os.environ.get("CXR_DATA_DIR")
    if value and Path(value).is_dir():
        return Path(value)
    if os.environ.get("CI"):
        pytest.fail("DICOM integration tests need CXR_DATA_DIR (CI uses ../shared/data).")
    pytest.skip("DICOM integration tests need the real data: set CXR_DATA_DIR.")


def decoded(content: bytes) -> np.ndarray:
    pixels, info = uploads.decode_upload(content, "film.dcm")
    assert pixels.shape == (224, 224, 3) and info.format == "DICOM"
    return pixels[..., 0]


@pytest.mark.integration
def test_monochrome2_8_bit_equals_the_png_film(films):
    for film in films:
        png = uploads.decode_upload(_png(film), "film.png")[0][..., 0]
        assert np.abs(decoded(dicom.film_bytes(film, window=(127.5, 256))) - png).max() <= 1.0


@pytest.mark.integration
def test_monochrome1_is_inverted_back(films):
    film = films[0]
    upright = decoded(dicom.film_bytes(film, window=(127.5, 256)))
    inverted = decoded(dicom.film_bytes(255 - film, photometric="MONOCHROME1", window=(127.5, 256)))
    assert np.abs(upright - inverted).max() <= 1.0


@pytest.mark.integration
@pytest.mark.parametrize("window", [None, (2048, 4096)])
def test_twelve_bit_stored_in_sixteen_looks_like_the_8_bit_film(films, window):
    film = films[1]
    twelve_bit = film.astype(np.uint16) * 16  # 0..4080, a 12-bit detector's range
    pixels = decoded(dicom.film_bytes(twelve_bit, bits_stored=12, window=window))
    reference = uploads.decode_upload(_png(film), "film.png")[0][..., 0]
    assert np.corrcoef(pixels.ravel(), reference.ravel())[0, 1] > 0.99


@pytest.mark.integration
def test_jpeg_compressed_dicom_decodes(films):
    film = films[2]
    jpeg = _encode(film, "JPEG", quality=95)
    pixels = decoded(dicom.film_bytes(film, jpeg=jpeg, window=(127.5, 256)))
    assert np.abs(pixels - uploads.decode_upload(jpeg, "film.jpg")[0][..., 0]).mean() < 1.0


@pytest.mark.parametrize("make, message", [
    (lambda film: dicom.film_bytes(film, modality="CT"), "a CT scan"),
    (lambda film: dicom.film_bytes(np.stack([film, film]), frames=2), "2 frames"),
    (lambda film: dicom.film_bytes(film, photometric="RGB"), "colour DICOM"),
    (lambda film: dicom.film_bytes(film)[:-2000], "truncated or damaged"),
])
def test_unusable_dicom_is_refused_with_a_reason(make, message):
    film = np.tile(np.arange(100, dtype=np.uint8), (100, 1))
    with pytest.raises(uploads.ImageRejected, match=message) as caught:
        uploads.decode_upload(make(film), "study.dcm")
    assert "study.dcm" in str(caught.value) and "Test^Patient" not in str(caught.value)


@pytest.mark.parametrize("name, message", [("CT_small.dcm", "a CT scan"), ("MR_small.dcm", "an MRI scan")])
def test_pydicom_sample_files_of_other_modalities_are_refused(name, message):
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom's bundled {name} is missing")
    with open(path, "rb") as handle:
        content = handle.read()
    assert dicom.is_dicom(content)
    with pytest.raises(uploads.ImageRejected, match=message):
        uploads.decode_upload(content, name)


def test_linear_window_follows_the_standard():
    values = np.array([0.0, 1000.0, 1500.0, 2000.0, 4000.0])
    np.testing.assert_allclose(dicom.linear_window(values, center=1500, width=1001), [0, 0.1275, 127.6275, 255, 255],
                               atol=0.01)
    with pytest.raises(dicom.DicomRejected, match="window width"):
        dicom.linear_window(values, 100, 0)


def _encode(film: np.ndarray, fmt: str, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(film).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png(film: np.ndarray) -> bytes:
    return _encode(film, "PNG")
