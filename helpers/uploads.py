"""Uploaded bytes -> checked model pixels: the one set of upload rules.

The web app, the batch screener and the notebook explorer all read uploads through
:func:`decode_upload`, so a file is accepted or refused the same way everywhere,
with one message naming the file and what to do. No TensorFlow: decoding is
:func:`helpers.imaging.decode_pixels` (Pillow).

Rules (:func:`inspect_image_bytes`): JPEG or PNG (BMP, GIF and WebP decode too; DICOM
through :mod:`helpers.dicom`), at
most 30 MB and 50 megapixels, and at least :data:`MIN_IMAGE_SIDE` = 64 pixels on each
side: below that the 224x224 input would be mostly interpolation (a thumbnail holds
no lung detail), and real chest X-rays are hundreds of pixels wide. Uploads are
decoded in memory and never written to disk.

Every size is checked from the file's header **before** anything is decoded (PNG
IHDR, JPEG SOF, DICOM Rows x Columns x frames x bits and the embedded JPEG / JPEG 2000
codestream's own header), so a small file that declares a huge image (a decompression
bomb) is refused in milliseconds without allocating its pixels
(``tests/test_bombs.py``).
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import numpy as np

from helpers import imaging
from helpers.dicom import DicomRejected, is_dicom, read_film
from helpers.errors import UnusableInput, distinct_pair
from helpers.imaging import (
    HIGH_BIT_DEPTH_MODES,
    IMAGE_SIZE,
    channels,
    decode_pixels,
    png_bytes,
    refuse_more_pixels_than,
    resize_plane,
)

MIN_IMAGE_SIDE = 64
MAX_IMAGE_PIXELS = imaging.MAX_IMAGE_PIXELS  # 50 MP
MAX_DECODED_BYTES = imaging.MAX_DECODED_BYTES  # a DICOM's stored pixel array: 100 MB (50 MP at 16 bits)
MAX_UPLOAD_BYTES = 30 * 1024 * 1024
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "MPO")  # MPO: JPEG from some phone cameras
EXIF_ORIENTATION_TAG = 0x0112


class ImageRejected(UnusableInput):
    """An uploaded file cannot be used; the message says why and what to upload instead."""


@dataclass(frozen=True)
class ImageInfo:
    """What the file header says: format (PIL name), width, height, mode, size in bytes."""

    format: str
    width: int
    height: int
    mode: str
    size_bytes: int
    orientation: int = 1  # EXIF orientation (1 = upright; phones store 3, 6, 8 for rotated shots)


def inspect_image_bytes(content: bytes, name: str = "the file") -> ImageInfo:
    """Check an upload before decoding it; raise :class:`ImageRejected` saying why not.

    Rejects: empty or oversized files, files that are not images or in an
    unsupported format (DICOM goes through :func:`decode_dicom_upload`), images smaller
    than :data:`MIN_IMAGE_SIDE` on a side or larger than :data:`MAX_IMAGE_PIXELS`. Only
    the header is read: the size is checked before the EXIF orientation, which for a
    PNG can mean decoding it all.
    """
    from PIL import Image, UnidentifiedImageError

    content = bytes(content)
    _check_byte_size(content, name)
    try:
        with Image.open(io.BytesIO(content)) as image:
            info = ImageInfo(str(image.format), int(image.width), int(image.height), str(image.mode),
                             len(content))
            if info.format not in ACCEPTED_FORMATS:
                raise ImageRejected(f"{name} is a {info.format} image; upload JPEG or PNG "
                                    "(BMP, GIF and WebP work too).")
            _check_pixel_size(info, name)  # before the EXIF: Pillow decodes a whole PNG to look for it
            info = dataclasses.replace(info, orientation=_exif_orientation(image))
    except Image.DecompressionBombError as error:
        raise ImageRejected(f"{name} is far too large to decode safely ({error}). "
                            f"Resize it below {MAX_IMAGE_PIXELS / 1e6:g} megapixels.") from error
    except ImageRejected:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageRejected(f"{name} is not an image file this app can read "
                            f"({type(error).__name__}). Upload a JPEG or PNG chest X-ray.") from error
    return info


def refuse_oversized_image(content: bytes, name: str = "the file") -> None:
    """Raise :class:`ImageRejected` when an image's header declares more than :data:`MAX_IMAGE_PIXELS`.

    For decoders other than the upload path (TensorFlow's, in :func:`helpers.data.load_image`):
    only the header is read; bytes Pillow cannot identify are left to that decoder's
    own error, and no other upload rule is applied.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(content))) as image:
            width, height = int(image.width), int(image.height)
    except Image.DecompressionBombError as error:
        raise ImageRejected(f"{name} is far too large to decode safely ({error}). "
                            f"Resize it below {MAX_IMAGE_PIXELS / 1e6:g} megapixels.") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return
    if width * height > MAX_IMAGE_PIXELS:
        _refuse_pixel_count(width, height, name)


def _check_byte_size(content: bytes, name: str) -> None:
    if len(content) == 0:
        raise ImageRejected(f"{name} is empty (0 bytes). Choose a JPEG or PNG chest X-ray.")
    if len(content) > MAX_UPLOAD_BYTES:
        size, limit = distinct_pair(len(content) / 2**20, MAX_UPLOAD_BYTES / 2**20)
        raise ImageRejected(f"{name} is {size} MB; the limit is {limit} MB. Save a smaller JPEG or PNG.")


def _check_pixel_size(info: ImageInfo, name: str) -> None:
    if min(info.width, info.height) < MIN_IMAGE_SIDE:
        raise ImageRejected(
            f"{name} is only {info.width}x{info.height} pixels. The model needs at least "
            f"{MIN_IMAGE_SIDE} pixels on each side (its input is {IMAGE_SIZE}x{IMAGE_SIZE}); "
            "upload the full-resolution X-ray, not a thumbnail.")
    if info.width * info.height > MAX_IMAGE_PIXELS:
        _refuse_pixel_count(info.width, info.height, name)


def _refuse_pixel_count(width: int, height: int, name: str) -> None:
    pixels, limit = distinct_pair(width * height / 1e6, MAX_IMAGE_PIXELS / 1e6)
    raise ImageRejected(f"{name} is {width}x{height} pixels ({pixels} MP); the limit is {limit} MP. "
                        "Resize it first.")


def read_dicom_film(content: bytes, name: str = "the file") -> tuple[np.ndarray, ImageInfo]:
    """A DICOM film checked by the upload rules -> (film (H, W) float32 0-255 at full size, info).

    The size limits (:data:`MAX_IMAGE_PIXELS`, :data:`MAX_DECODED_BYTES`) are checked
    from the DICOM header and the compressed stream's own header before decoding
    (:func:`helpers.dicom.read_film`).
    """
    content = bytes(content)
    _check_byte_size(content, name)
    try:
        film, facts = read_film(content, name, max_pixels=MAX_IMAGE_PIXELS,
                                max_bytes=MAX_DECODED_BYTES)  # (H, W) float32 0-255
    except DicomRejected as rejection:
        raise ImageRejected(str(rejection)) from rejection
    info = ImageInfo("DICOM", facts["columns"], facts["rows"], facts["photometric"], len(content))
    _check_pixel_size(info, name)
    return film, info


def decode_dicom_upload(content: bytes, name: str = "the file") -> tuple[np.ndarray, ImageInfo]:
    """A DICOM film -> (pixels float32 (224, 224, 3) 0-255, info); see :mod:`helpers.dicom`."""
    film, info = read_dicom_film(content, name)
    plane = resize_plane(film, IMAGE_SIZE)  # (224, 224)
    return np.clip(np.repeat(plane[..., np.newaxis], 3, axis=-1), 0.0, 255.0), info


def decode_upload(content: bytes, name: str = "the file") -> tuple[np.ndarray, ImageInfo]:
    """Checked bytes -> (pixels float32 (224, 224, 3) 0-255, header info).

    Uses :func:`helpers.imaging.decode_pixels` (grey -> RGB, alpha dropped, EXIF
    orientation applied, any size resized, high bit depth windowed). Raises :class:`ImageRejected`
    for any unusable file, including truncated ones that only fail while decoding.
    """
    if is_dicom(content):
        return decode_dicom_upload(content, name)
    info = inspect_image_bytes(content, name)
    try:
        pixels = decode_pixels(bytes(content), IMAGE_SIZE, upright=True,
                               max_pixels=MAX_IMAGE_PIXELS)  # (224, 224, 3) float32 0-255
    except (OSError, SyntaxError, ValueError) as error:  # OSError: PIL met a truncated file
        raise ImageRejected(f"{name} could not be decoded: it looks truncated or damaged "
                            f"({info.format}, {info.size_bytes} bytes). Upload a complete "
                            "JPEG or PNG file.") from error
    return pixels, info


TENSORFLOW_FORMATS = ("JPEG", "PNG", "BMP", "GIF")  # what tf.io.decode_image reads as the upload path does


def dataset_film_bytes(content: bytes, name: str = "the file") -> bytes:
    """A file of a folder dataset, checked by the upload rules -> bytes TensorFlow's decoder reads.

    The same file gets the same pixels whether it is uploaded or read as part of a
    dataset: an 8-bit JPEG, PNG, BMP or GIF stored upright is returned as it is; a
    DICOM film (windowed, MONOCHROME1 inverted), a 16-bit PNG or TIFF (windowed), a
    WebP or TIFF, or a photo with an EXIF rotation is returned as a lossless 8-bit
    PNG of the film at full resolution.

    Raises:
        ImageRejected: the file breaks an upload rule or cannot be decoded (names ``name``).
    """
    content = bytes(content)
    if is_dicom(content):
        film, _ = read_dicom_film(content, name)  # (H, W) float32 0-255, the same rules as an upload
        return png_bytes(np.round(film).astype(np.uint8))
    _, info = decode_upload(content, name)  # every rule, and a full decode (truncation shows here)
    if info.format in TENSORFLOW_FORMATS and info.mode not in HIGH_BIT_DEPTH_MODES and info.orientation == 1:
        return content
    return png_bytes(np.round(decode_full_resolution(content)).astype(np.uint8))


def decode_full_resolution(content: bytes) -> np.ndarray:
    """Decoded bytes at their own size: float32 (H, W) grey or (H, W, 3) RGB, 0-255, upright, windowed."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(bytes(content))) as image:
        refuse_more_pixels_than(image, MAX_IMAGE_PIXELS)
        image.load()
        planes = channels(ImageOps.exif_transpose(image))
    return planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)


def _exif_orientation(image) -> int:
    """The EXIF orientation of an opened PIL image; 1 (upright) when there is none.

    A file whose metadata cannot be read (e.g. a truncated PNG) counts as upright here:
    the decoder, run next, reports the damage with a clear message.
    """
    try:
        return int(image.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except (OSError, SyntaxError, ValueError, TypeError):
        return 1
