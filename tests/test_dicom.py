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


# --------------------------------------------------------------------------- #
# Compressed transfer syntaxes, the declared depth, and headers checked before decoding
# --------------------------------------------------------------------------- #
def _film(rows: int = 120, columns: int = 100, bits: int = 12) -> np.ndarray:
    grid_rows, grid_columns = np.mgrid[0:rows, 0:columns]
    top = 2**bits - 1
    return (top / 2 + top / 3 * np.sin(grid_rows / 9.0) * np.cos(grid_columns / 7.0)).astype(np.uint16)


def _recoded(content: bytes, syntax) -> bytes:
    from pydicom import dcmread
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    dataset = dcmread(io.BytesIO(content))
    if syntax == DeflatedExplicitVRLittleEndian:
        dataset.file_meta.TransferSyntaxUID = syntax  # pydicom deflates the dataset when saving
    else:
        dataset.compress(syntax)  # RLE: pydicom's encoder; JPEG 2000: pylibjpeg-openjpeg's
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("syntax_name", ["RLELossless", "JPEG2000Lossless", "DeflatedExplicitVRLittleEndian"])
def test_lossless_compressed_films_read_as_the_uncompressed_one(syntax_name):
    from pydicom import uid

    plain = dicom.film_bytes(_film(), bits_stored=12)
    expected, _ = dicom.read_film(plain, "plain.dcm")
    film, facts = dicom.read_film(_recoded(plain, getattr(uid, syntax_name)), "packed.dcm")
    np.testing.assert_array_equal(film, expected)
    assert (facts["rows"], facts["columns"]) == (120, 100)


def test_an_8_bit_film_without_a_window_keeps_its_grey_levels():
    """BitsStored decides (8 bits: grey levels as they are, as an 8-bit PNG is read), not the value range."""
    film = np.tile(np.linspace(40, 90, 100).astype(np.uint8), (80, 1))  # a narrow range: a stretch would show
    read, facts = dicom.read_film(dicom.film_bytes(film), "film.dcm")
    np.testing.assert_array_equal(read, film.astype(np.float32))
    assert facts["window"].startswith("8 bits stored")
    six_bit = (film // 4).astype(np.uint8)  # 6 bits stored: 0..63 -> 0..255
    read, _ = dicom.read_film(dicom.film_bytes(six_bit, bits_stored=6), "film.dcm")
    np.testing.assert_allclose(read, six_bit * (255 / 63), rtol=1e-6)
    twelve_bit, facts = dicom.read_film(dicom.film_bytes(_film(), bits_stored=12), "film.dcm")
    assert facts["window"].startswith("0.5-99.5") and twelve_bit.max() == 255.0  # deeper: the documented window


def test_a_codestream_of_another_size_than_the_header_is_refused_before_decoding(monkeypatch):
    from pydicom import uid
    from pydicom.dataset import Dataset

    from tests.test_bombs import encapsulated, j2k_bomb, jpeg_bomb

    def no_decoding(self):
        raise AssertionError("pixel_array was touched")

    monkeypatch.setattr(Dataset, "pixel_array", property(no_decoding))
    for stream, syntax in ((jpeg_bomb(120, 100), uid.JPEGBaseline8Bit), (j2k_bomb(120, 100), uid.JPEG2000Lossless)):
        with pytest.raises(dicom.DicomRejected, match=r"odd\.dcm: its compressed image is 120x100 .* declares 64x64"):
            dicom.read_film(encapsulated(64, 64, stream, syntax), "odd.dcm")


def test_the_declared_size_is_checked_against_the_limits_before_decoding(monkeypatch):
    from pydicom.dataset import Dataset

    def no_decoding(self):
        raise AssertionError("pixel_array was touched")

    monkeypatch.setattr(Dataset, "pixel_array", property(no_decoding))
    content = dicom.film_bytes(_film(120, 100), bits_stored=12)
    with pytest.raises(dicom.DicomRejected, match=r"big\.dcm declares a 100x120 image \(0\.012 MP\); the limit is "
                                                  r"0\.011 MP"):
        dicom.read_film(content, "big.dcm", max_pixels=11_000)
    with pytest.raises(dicom.DicomRejected, match=r"declares 0\.023 MB of pixels .*16 bits\); the limit is 0\.019 MB"):
        dicom.read_film(content, "big.dcm", max_bytes=20_000)


def test_damaged_headers_and_unknown_compressions_are_refused_with_a_reason():
    from pydicom import dcmread, uid

    from tests.test_bombs import dicom_file, encapsulate_frames, jpeg_bomb

    dataset = dcmread(io.BytesIO(dicom.film_bytes(_film(), bits_stored=12)))
    dataset.NumberOfFrames = 9
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    frames_element = b"\x28\x00\x08\x00IS\x02\x00"  # (0028,0008) IS, 2 bytes: "9 "
    damaged = buffer.getvalue().replace(frames_element + b"9 ", frames_element + b"1A")
    with pytest.raises(dicom.DicomRejected, match="NumberOfFrames as '1A', which is not a number"):
        dicom.read_film(damaged, "bad.dcm")
    with pytest.raises(dicom.DicomRejected, match=r"compressed as MPEG2.*does not decode"):
        dicom.read_film(dicom_file(64, 64, encapsulate_frames([b"\0" * 100]), uid.MPEG2MPML), "movie.dcm")
    two = encapsulate_frames([jpeg_bomb(64, 64), jpeg_bomb(64, 64)])
    with pytest.raises(dicom.DicomRejected, match="declares one frame but its compressed pixel data holds 2"):
        dicom.read_film(dicom_file(64, 64, two, uid.JPEGBaseline8Bit), "two.dcm")
    with pytest.raises(dicom.DicomRejected, match="does not start with a readable image header"):
        dicom.read_film(dicom_file(64, 64, encapsulate_frames([b"\0" * 100]), uid.JPEG2000Lossless), "junk.dcm")


def test_a_damaged_transfer_syntax_uid_is_refused_with_a_message():
    content = dicom.film_bytes(np.full((128, 128), 100, np.uint8))
    start = content.find(b"1.2.840.10008.1.2.1")  # Explicit VR Little Endian, as the file meta declares
    damaged = content[:start] + b"1.2.840.10008.1.2.7" + content[start + 19:]  # a bit flip made it no syntax
    with pytest.raises(uploads.ImageRejected, match=r"damaged\.dcm declares the transfer syntax .* is not a DICOM"):
        uploads.decode_upload(damaged, "damaged.dcm")
