"""Image operations without TensorFlow: decode, resize, upsample a heat map, colour it.

The web app and the batch screener run on LiteRT alone, so what they do to pixels
lives here, in NumPy and Pillow:

* :func:`decode_pixels` -- encoded bytes -> float32 (224, 224, 3) 0-255, the same
  rule as :func:`helpers.data.decode_and_resize` (grey -> RGB, alpha dropped,
  bilinear antialiased resize, raw 0-255). Pillow and TensorFlow decode JPEG with
  slightly different IDCT rounding (at most 2 grey levels on the test films);
  ``tests/test_imaging.py`` pins that bound on real films.
* :func:`upsample_maps` -- bilinear upsampling of a (B, h, w) map, pixel for pixel
  what ``tf.image.resize(method="bilinear")`` gives (half-pixel centres).
* :data:`JET` / :func:`overlay` -- the heat-map colours and the blend, used by the
  app and by :func:`helpers.gradcam.overlay`.
"""

from __future__ import annotations

import io

import numpy as np

IMAGE_SIZE = 224  # the model's input height = width (helpers.data.IMAGE_SIZE)
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
MAX_IMAGE_PIXELS = 50_000_000  # the largest film decoded (helpers.uploads re-exports it as its upload rule)
MAX_DECODED_BYTES = 2 * MAX_IMAGE_PIXELS  # the largest stored pixel array decoded: a 50 MP film at 16 bits
PNG_COMPRESS_LEVEL = 1  # fast zlib: many times faster than the default level, a little larger
WINDOW_PERCENTILES = (0.5, 99.5)  # high-bit-depth films: this range of the film's pixels -> 0-255


def window_to_8bit(values: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES) -> np.ndarray:
    """A high-bit-depth film (H, W) -> float32 0-255: its ``percentiles`` range stretched to 0-255.

    A 12/14-bit detector export saved as 16-bit PNG holds values far above 255;
    squeezing them to 8 bits by bit shifting leaves a dark film. A flat film maps to 0.
    """
    values = np.asarray(values, dtype=np.float64)
    low, high = np.percentile(values, percentiles)
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return (np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.float32)


def channels(image) -> list[np.ndarray]:
    """The decoded image as 1 (grey) or 3 (RGB) float32 (H, W) planes in 0-255."""
    if image.mode in HIGH_BIT_DEPTH_MODES:
        return [window_to_8bit(np.asarray(image))]
    if image.mode in ("L", "LA", "1"):
        return [np.asarray(image.convert("L"), dtype=np.float32)]
    rgb = image.convert("RGB")  # palette, CMYK, YCbCr, RGBA (alpha dropped) -> RGB
    return [np.asarray(plane, dtype=np.float32) for plane in rgb.split()]


def resize_plane(plane: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of one float plane (H, W) -> (size, size)."""
    from PIL import Image

    resized = Image.fromarray(np.asarray(plane, dtype=np.float32), mode="F").resize((size, size), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def decode_pixels(content: bytes, size: int = IMAGE_SIZE, upright: bool = True,
                  max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded image bytes -> float32 (size, size, 3) RGB in [0, 255].

    Args:
        content: JPEG, PNG, BMP, GIF, WebP or TIFF bytes (checked by the caller).
        upright: apply the EXIF orientation, as photo viewers do (phones store
            rotated shots with a tag; the pixels themselves lie sideways).
        max_pixels: an image whose header declares more pixels is refused before
            anything is decoded (:func:`helpers.uploads.inspect_image_bytes` says why
            in a message naming the file; this keeps any other caller bounded too).

    Raises:
        OSError, SyntaxError, ValueError: Pillow could not decode the bytes, or the
            image is larger than ``max_pixels`` (the screening pipeline turns them into
            a message naming the file).
    """
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(bytes(content))) as image:
        refuse_more_pixels_than(image, max_pixels)
        image.load()
        if upright:
            image = ImageOps.exif_transpose(image)
        planes = [resize_plane(plane, size) for plane in channels(image)]
    pixels = np.stack(planes * 3 if len(planes) == 1 else planes, axis=-1)  # (size, size, 3)
    return np.clip(pixels, 0.0, 255.0)


def refuse_more_pixels_than(image, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Raise ``ValueError`` when an opened, not yet decoded PIL image declares more than ``max_pixels``."""
    if image.width * image.height > max_pixels:
        raise ValueError(f"The image is {image.width}x{image.height} pixels, more than the {max_pixels:,} "
                         "decoded here; resize it first.")


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Divide each (h, w) map by its maximum -> [0, 1]; all-zero maps stay zero.

    Args:
        maps: (B, h, w), non-negative (after the ReLU).
    """
    maxima = maps.reshape(len(maps), -1).max(axis=1)  # (B,)
    safe = np.where(maxima > 0, maxima, 1.0)  # no division by zero for empty maps
    return (maps / safe[:, None, None]).astype(np.float32)


def _interpolation_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) weights of bilinear interpolation with half-pixel centres."""
    centres = (np.arange(target) + 0.5) * (source / target) - 0.5  # source coordinate of each target pixel
    centres = np.clip(centres, 0.0, source - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, source - 1)
    fraction = centres - low
    matrix = np.zeros((target, source))
    matrix[np.arange(target), low] += 1.0 - fraction
    matrix[np.arange(target), high] += fraction
    return matrix


def upsample_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of (B, h, w) maps to (B, H, W), clipped to [0, 1].

    Written out (separable interpolation matrices) so it needs no TensorFlow; equal
    to ``tf.image.resize(maps[..., None], size, "bilinear")`` to float precision.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"Expected maps of shape (B, h, w), got {maps.shape}.")
    rows = _interpolation_matrix(maps.shape[1], size[0])  # (H, h)
    columns = _interpolation_matrix(maps.shape[2], size[1])  # (W, w)
    upsampled = rows @ maps @ columns.T  # (H, h) @ (B, h, w) @ (w, W) -> (B, H, W)
    return np.clip(upsampled, 0.0, 1.0).astype(np.float32)


def _jet_table(entries: int = 256) -> np.ndarray:
    """Matplotlib's "jet" colours as a (entries, 3) table in [0, 1], from its segment data."""
    segments = {  # (position, value) knots of each channel, as in matplotlib._cm._jet_data
        "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
        "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
        "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
    }
    positions = np.linspace(0.0, 1.0, entries)
    return np.stack([np.interp(positions, *zip(*segments[channel])) for channel in ("red", "green", "blue")],
                    axis=-1).astype(np.float32)


JET = _jet_table()  # (256, 3) heat-map colours: blue (cold) -> red (hot)


FLOAT_PIXEL_SCALE = 255.0  # the project's pixels are float 0-255 everywhere (CONTRIBUTING, "Images")


def full_scale(dtype, bits: int | None = None) -> float:
    """The value of white for pixels of ``dtype``, never guessed from the pixel values.

    Unsigned integers: ``2**bits - 1``, ``bits`` being the declared depth (a 12-bit
    film in uint16: 4095) or, by default, the dtype's (uint8: 255, uint16: 65535).
    Booleans: 1. Floats: :data:`FLOAT_PIXEL_SCALE` (255); pass ``scale=1.0`` to the
    functions below for [0, 1] floats.
    """
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return 1.0
    if np.issubdtype(dtype, np.unsignedinteger):
        return float(2 ** (bits or 8 * dtype.itemsize) - 1)
    if np.issubdtype(dtype, np.floating):
        return FLOAT_PIXEL_SCALE
    raise ValueError(f"Pixels of dtype {dtype} have no known scale: pass scale= (the value of white) explicitly.")


def to_unit_range(image: np.ndarray, scale: float | None = None) -> np.ndarray:
    """(H, W) or (H, W, 3) pixels -> float32 (H, W, 3) in [0, 1], divided by the value of white.

    Args:
        scale: the value of white; default :func:`full_scale` of the dtype (uint8 and
            float: 255, uint16: 65535). It never depends on the pixel values, so a dark
            0-255 film (maximum 1) stays dark; pass ``scale=1.0`` for [0, 1] floats.
    """
    image = _in_unit_range(image, scale)
    if image.ndim == 2:
        image = np.repeat(image[..., np.newaxis], 3, axis=-1)
    return image


def _in_unit_range(image: np.ndarray, scale: float | None) -> np.ndarray:
    """Pixels divided by the value of white (``scale``, or the dtype's): float32, same shape."""
    image = np.asarray(image)
    scale = full_scale(image.dtype) if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"scale is the value of white, a positive number; got {scale}.")
    return image.astype(np.float32) / np.float32(scale)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colours: np.ndarray = JET,
            scale: float | None = None) -> np.ndarray:
    """Blend a heat map over an image: float32 (H, W, 3) in [0, 1].

    Args:
        image: (H, W, 3) or (H, W) pixels, uint8 or float 0-255 (the project's pixels).
        heatmap: (H, W) in [0, 1].
        alpha: opacity of the heat map (0 = image only, 1 = heat map only).
        colours: (K, 3) colour table in [0, 1] (default :data:`JET`).
        scale: the value of white in ``image`` (:func:`to_unit_range`; default from
            its dtype: 255 for uint8 and float). ``scale=1.0`` for [0, 1] floats.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    image = to_unit_range(image, scale)
    heatmap = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if image.ndim != 3 or image.shape[-1] != 3 or heatmap.shape != image.shape[:2]:
        raise ValueError(f"overlay needs an (H, W, 3) image and an (H, W) heatmap, got "
                         f"{image.shape} and {heatmap.shape}.")
    colours = np.asarray(colours, dtype=np.float32)
    coloured = colours[np.round(heatmap * (len(colours) - 1)).astype(int)]  # (H, W, 3)
    return ((1.0 - alpha) * image + alpha * coloured).astype(np.float32)


def overlay_png(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> bytes:
    """:func:`overlay` with :data:`JET`, as PNG bytes, computed in 8 bits: the web app's fast path.

    Same blend as :func:`overlay` to within one grey level (``tests/test_imaging.py``),
    stored without compression: encoding takes about half the time at a larger file,
    which matters when it runs for every upload (``benchmarks/app_latency.py`` times
    the whole path).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or np.shape(heatmap) != image.shape[:2]:
        raise ValueError(f"overlay needs an (H, W, 3) image and an (H, W) heatmap, got "
                         f"{image.shape} and {np.shape(heatmap)}.")
    pixels = np.clip(image, 0, 255).astype(np.float32)  # (H, W, 3) 0-255
    index = (np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0) * (len(JET) - 1) + 0.5).astype(np.uint8)
    blended = (1.0 - alpha) * pixels + (alpha * 255.0) * JET[index]  # (H, W, 3) 0-255
    return png_bytes((blended + 0.5).astype(np.uint8), compress_level=0)  # stored, not compressed: faster


def png_bytes(image: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL, scale: float | None = None) -> bytes:
    """PNG encoding of an (H, W, 3) or (H, W) image as 8 bits.

    Args:
        scale: the value of white in ``image``; default from its dtype (:func:`full_scale`:
            uint8 and float 255, the project's pixels). Pass ``scale=1.0`` for [0, 1]
            floats such as :func:`overlay`'s. Never guessed from the pixel values.
    """
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8 or (scale is not None and float(scale) != 255.0):
        array = np.clip(np.round(_in_unit_range(array, scale) * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()
