"""Decompression bombs: small files that declare huge images are refused before anything is decoded.

Each bomb below is a real file that a decoder would expand to a gigabyte or more (the
declared size; small versions of the same generators decode to the flat images they
claim, see ``test_the_generators_build_real_images``). Each is refused by the upload entry
points (:func:`helpers.uploads.decode_upload` and :func:`helpers.uploads.dataset_film_bytes`)
with a message naming the file, in under a second and under 100 MB of extra memory,
measured in a fresh interpreter: ``tracemalloc`` for Python's allocations and the
growth of the peak resident size (``ru_maxrss``) for everything else (NumPy, Pillow,
pylibjpeg and openjpeg allocate outside ``tracemalloc``; the peak is reset before each
call). A decoded bomb exceeds both bounds more than tenfold (before the header checks,
under a 6 GB address-space cap, the DICOM ones took 3-41 s and 1.3-5.2 GB), so the
generous bounds cannot flake on a slow machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers import data, dicom, uploads

MAX_SECONDS = 1.0
MAX_EXTRA_MB = 100.0
MB = 2**20


# --------------------------------------------------------------------------- #
# Bomb generators: real files, built without ever holding their pixels
# --------------------------------------------------------------------------- #
def png_bomb(width: int, height: int, channels: int = 1) -> bytes:
    """A valid 8-bit PNG of a black image (grey, RGB or RGBA): zlib of zero rows, made by repeating one block."""
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    raw_length = (width * channels + 1) * height  # each row: filter byte 0, then zeros
    chunk = MB
    full, rest = divmod(raw_length, chunk)
    compressor = zlib.compressobj(9)
    head = compressor.compress(b"")  # the zlib header comes with the first output
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH) if full else b""
    tail = compressor.compress(bytes(rest)) + compressor.flush()
    adler = 1
    for _ in range(full):
        adler = zlib.adler32(bytes(chunk), adler)
    adler = zlib.adler32(bytes(rest), adler)
    # a full flush makes the block self-contained, so it can be repeated; the Adler-32 is the whole image's
    stream = head + block * full + tail[:-4] + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def jpeg_bomb(width: int, height: int) -> bytes:
    """A valid baseline JPEG of a flat mid-grey image: every 8x8 block is "DC difference 0, end of block".

    Pillow writes the headers (standard Huffman tables) for one 8x8 block; the frame
    size is set in the SOF and the entropy-coded data repeats the 6-bit code of a flat
    block (``00`` + ``1010``: four blocks in the 3 bytes 28 A2 8A).
    """
    from PIL import Image

    small = io.BytesIO()
    Image.new("L", (8, 8), 128).save(small, format="JPEG", quality=75)
    encoded = small.getvalue()
    scan = encoded.index(b"\xff\xda")
    headers = bytearray(encoded[:scan + 2 + struct.unpack(">H", encoded[scan + 2:scan + 4])[0]])
    frame = headers.index(b"\xff\xc0")
    headers[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    groups, left = divmod(-(-width // 8) * -(-height // 8), 4)
    bits = "001010" * left
    bits += "1" * (-len(bits) % 8)  # pad the last byte with ones
    tail = bytes(int(bits[start:start + 8], 2) for start in range(0, len(bits), 8))
    return bytes(headers) + b"\x28\xa2\x8a" * groups + tail + b"\xff\xd9"


def declared_jpeg(width: int, height: int) -> bytes:
    """A small JPEG whose SOF is rewritten to declare ``width`` x ``height`` (too big for jpeg_bomb's file limit)."""
    from PIL import Image

    small = io.BytesIO()
    Image.new("L", (64, 64), 128).save(small, format="JPEG")
    encoded = bytearray(small.getvalue())
    frame = encoded.index(b"\xff\xc0")
    encoded[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(encoded)


def j2k_bomb(width: int, height: int, levels: int = 5) -> bytes:
    """A valid JPEG 2000 codestream of a flat mid-grey 8-bit image (ISO/IEC 15444-1 Annex A), about 100 bytes.

    Mid-grey is 0 after the DC level shift, so every wavelet coefficient is 0 and every
    packet is empty: one 0 byte per packet (one layer, default 2**15 precincts, LRCP).
    """
    size = struct.pack(">HHIIIIIIIIH", 41, 0, width, height, 0, 0, width, height, 0, 0, 1) + bytes([7, 1, 1])
    coding = struct.pack(">HBBHBBBBBB", 12, 0, 0, 1, 0, levels, 4, 4, 0, 1)  # 5/3 reversible, 64x64 code blocks
    exponents = [8] + [9, 9, 10] * levels  # no quantization: 8 bits + the band's gain
    quantization = struct.pack(">HB", 3 + len(exponents), 0x40) + bytes(exponent << 3 for exponent in exponents)
    packets = sum(_ceil(_ceil(width, 2 ** (levels - r)), 2**15) * _ceil(_ceil(height, 2 ** (levels - r)), 2**15)
                  for r in range(levels + 1))  # precincts per resolution level
    body = bytes(packets)
    tile = b"\xff\x90" + struct.pack(">HHIBB", 10, 0, 12 + 2 + len(body), 0, 1)
    return (b"\xff\x4f\xff\x51" + size + b"\xff\x52" + coding + b"\xff\x5c" + quantization + tile + b"\xff\x93"
            + body + b"\xff\xd9")


def _ceil(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def rle_bomb(expanded_bytes: int) -> bytes:
    """An RLE Lossless frame (PS3.5 G.3) of one segment of 2-byte runs, each repeating a zero 128 times."""
    return struct.pack("<16I", 1, 64, *([0] * 14)) + b"\x81\x00" * (expanded_bytes // 128)


def dicom_file(rows: int, columns: int, pixel_data: bytes, syntax: str, frames: int = 1, bits: int = 8) -> bytes:
    """A DX DICOM file with these header values around ``pixel_data`` (encapsulated for compressed syntaxes)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1.1"
    meta.TransferSyntaxUID = syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.PatientName = "Test^Patient"
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = rows, columns
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = bits, bits, bits - 1, 0
    if frames > 1:
        dataset.NumberOfFrames = frames
    dataset.PixelData = pixel_data
    if UID(syntax).is_encapsulated:
        dataset["PixelData"].VR = "OB"
        dataset["PixelData"].is_undefined_length = True
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def encapsulated(rows: int, columns: int, stream: bytes, syntax: str) -> bytes:
    from pydicom.encaps import encapsulate

    return dicom_file(rows, columns, encapsulate([stream]), syntax)


def encapsulate_frames(streams: list[bytes]) -> bytes:
    """Encapsulated pixel data listing each stream as a frame in its Basic Offset Table."""
    from pydicom.encaps import encapsulate

    return encapsulate(streams, has_bot=True)


def deflated_dicom_bomb(pixel_bytes: int, rows: int = 512, columns: int = 512) -> bytes:
    """A Deflated Explicit VR Little Endian file whose dataset inflates to ``pixel_bytes`` of zero pixel data."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    small = dicom_file(rows, columns, bytes(2), DeflatedExplicitVRLittleEndian)  # pydicom deflates it
    (meta_length,) = struct.unpack("<I", small[140:144])  # (0002,0000) UL, right after "DICM"
    meta, dataset = small[:144 + meta_length], zlib.decompress(small[144 + meta_length:], -15)
    dataset = dataset[:dataset.index(b"\xe0\x7f\x10\x00")]  # without its PixelData element
    dataset += b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", pixel_bytes)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(dataset) + compressor.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(pixel_bytes, MB)
    block = compressor.compress(bytes(MB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.compress(bytes(rest)) + compressor.flush()
    return meta + head + block * full + tail


# --------------------------------------------------------------------------- #
# The bombs: name -> (build, bytes a decoder would allocate)
# --------------------------------------------------------------------------- #
def _bombs() -> dict:
    from pydicom import uid

    return {
        "dicom_uncompressed_40000x40000.dcm": (
            lambda: dicom_file(40000, 40000, bytes(1024), uid.ExplicitVRLittleEndian, bits=16), 40000 * 40000 * 2),
        "dicom_uncompressed_600_frames.dcm": (
            lambda: dicom_file(2048, 2048, bytes(1024), uid.ExplicitVRLittleEndian, frames=600, bits=16),
            600 * 2048 * 2048 * 2),
        "dicom_jpeg_32768x32768.dcm": (
            lambda: encapsulated(32768, 32768, jpeg_bomb(32768, 32768), uid.JPEGBaseline8Bit), 32768 * 32768),
        "dicom_jpeg_32768x32768_under_a_512x512_header.dcm": (
            lambda: encapsulated(512, 512, jpeg_bomb(32768, 32768), uid.JPEGBaseline8Bit), 32768 * 32768),
        "dicom_jpeg_second_frame_32768x32768_under_a_one_frame_header.dcm": (
            lambda: dicom_file(512, 512, encapsulate_frames([jpeg_bomb(512, 512), jpeg_bomb(32768, 32768)]),
                               uid.JPEGBaseline8Bit), 32768 * 32768),
        "dicom_j2k_40000x40000.dcm": (
            lambda: encapsulated(40000, 40000, j2k_bomb(40000, 40000), uid.JPEG2000Lossless), 40000 * 40000),
        "dicom_j2k_40000x40000_under_a_512x512_header.dcm": (
            lambda: encapsulated(512, 512, j2k_bomb(40000, 40000), uid.JPEG2000Lossless), 40000 * 40000),
        "dicom_rle_1600MB_under_a_512x512_header.dcm": (
            lambda: encapsulated(512, 512, rle_bomb(1600 * MB), uid.RLELossless), 1600 * MB),
        "dicom_deflated_1GB.dcm": (lambda: deflated_dicom_bomb(1024 * MB), 1024 * MB),
        "png_20000x20000_rgb.png": (lambda: png_bomb(20000, 20000, 3), 20000 * 20000 * 3),
        "png_13000x13000_rgba_under_pillows_limit.png": (lambda: png_bomb(13000, 13000, 4), 13000 * 13000 * 4),
        "jpeg_32768x32768.jpg": (lambda: jpeg_bomb(32768, 32768), 32768 * 32768),
        "jpeg_60000x60000_declared.jpg": (lambda: declared_jpeg(60000, 60000), 60000 * 60000),
    }


BOMBS = _bombs()

CHILD = r"""
import json, sys, time, tracemalloc
from helpers import uploads
from tests.test_bombs import peak_rss_since_reset, reset_peak_rss, warm_up

warm_up()  # imports and decoders loaded, as in a running server
with open(sys.argv[1], "rb") as handle:
    content = handle.read()
name = sys.argv[2]
results = {}
for entry in ("decode_upload", "dataset_film_bytes"):
    refuse = getattr(uploads, entry)
    before = reset_peak_rss()
    start = time.perf_counter()
    try:
        refuse(content, name)
        outcome = {"refused": False, "message": "decoded"}
    except uploads.ImageRejected as rejection:
        outcome = {"refused": True, "message": str(rejection)}
    outcome["seconds"] = time.perf_counter() - start
    outcome["rss_growth_mb"] = (peak_rss_since_reset() - before) / 2**20
    tracemalloc.start()  # a second run for Python's own allocations (tracemalloc slows it down)
    try:
        refuse(content, name)
    except uploads.ImageRejected:
        pass
    outcome["python_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    results[entry] = outcome
print(json.dumps(results))
"""


def reset_peak_rss() -> int:
    """Reset the peak resident size to the current one (Linux: /proc/self/clear_refs); return the current size, bytes.

    Elsewhere the peak cannot be reset: the current size is returned and
    :func:`peak_rss_since_reset` reports the lifetime peak, which only overstates.
    """
    import psutil

    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return psutil.Process().memory_info().rss


def peak_rss_since_reset() -> int:
    """The peak resident size in bytes since :func:`reset_peak_rss` (VmHWM), or the lifetime peak."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def warm_up() -> None:
    """Load what a running server has loaded: Pillow's plugins, pydicom, its decoders (a small film each)."""
    from PIL import Image
    from pydicom import uid

    buffer = io.BytesIO()
    Image.new("L", (96, 80), 100).save(buffer, format="PNG")
    uploads.decode_upload(buffer.getvalue(), "warm.png")
    for syntax, stream in ((uid.JPEGBaseline8Bit, jpeg_bomb(96, 80)), (uid.JPEG2000Lossless, j2k_bomb(96, 80))):
        uploads.decode_upload(encapsulated(80, 96, stream, syntax), "warm.dcm")


@pytest.fixture(scope="module")
def bomb_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    paths = {}
    for name, (build, _) in BOMBS.items():
        paths[name] = folder / name
        paths[name].write_bytes(build())
    return paths


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_bomb_is_refused_fast_and_small_by_every_upload_entry(bomb_files, name):
    path = bomb_files[name]
    declared = BOMBS[name][1]
    assert declared > 600 * MB and path.stat().st_size <= uploads.MAX_UPLOAD_BYTES
    completed = subprocess.run([sys.executable, "-c", CHILD, str(path), name], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    for entry, outcome in results.items():
        assert outcome["refused"] and name in outcome["message"], (entry, outcome)
        assert "\n" not in outcome["message"] and "Test^Patient" not in outcome["message"]
        assert outcome["seconds"] < MAX_SECONDS, (entry, outcome)
        assert outcome["python_peak_mb"] < MAX_EXTRA_MB, (entry, outcome)
        assert outcome["rss_growth_mb"] < MAX_EXTRA_MB, (entry, outcome)
        print(f"{name} via {entry}: {path.stat().st_size:,} bytes, declares {declared / MB:,.0f} MB; refused in "
              f"{outcome['seconds'] * 1e3:.0f} ms, Python peak {outcome['python_peak_mb']:.1f} MB, "
              f"RSS growth {outcome['rss_growth_mb']:.1f} MB")


@pytest.mark.parametrize("name", [name for name in BOMBS if name.startswith("dicom")])
def test_read_film_refuses_dicom_bombs_with_a_dicom_rejection(bomb_files, name):
    with pytest.raises(dicom.DicomRejected, match=name.replace(".", r"\.")):
        dicom.read_film(bomb_files[name].read_bytes(), name)


@pytest.mark.parametrize("name", ["png_20000x20000_rgb.png", "png_13000x13000_rgba_under_pillows_limit.png",
                                  "jpeg_60000x60000_declared.jpg"])
def test_the_tensorflow_loader_refuses_image_bombs_before_decoding(bomb_files, name):
    with pytest.raises(data.DataError, match="MP|too large"):
        data.load_image(bomb_files[name].read_bytes())


def test_pillows_own_bomb_error_is_turned_into_a_rejection_naming_the_file(bomb_files):
    with pytest.raises(uploads.ImageRejected, match=r"png_20000x20000_rgb\.png is far too large.*below 50 megapixels"):
        uploads.inspect_image_bytes(bomb_files["png_20000x20000_rgb.png"].read_bytes(), "png_20000x20000_rgb.png")


def test_a_png_is_measured_before_its_exif_is_looked_for(bomb_files, monkeypatch):
    """Pillow decodes a whole PNG to find an eXIf chunk after the pixels: the size comes first."""
    from PIL import PngImagePlugin

    def no_decoding(self):
        raise AssertionError("the PNG was decoded before its size was checked")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    with pytest.raises(uploads.ImageRejected, match=r"13000x13000 pixels \(169 MP\); the limit is 50 MP"):
        uploads.inspect_image_bytes(bomb_files["png_13000x13000_rgba_under_pillows_limit.png"].read_bytes(), "big")


def test_the_generators_build_real_images():
    """Small versions of each bomb decode to the flat image they claim: the big ones are real bombs."""
    import openjpeg
    from PIL import Image
    from pydicom import uid

    assert np.asarray(Image.open(io.BytesIO(png_bomb(300, 200, 3)))).shape == (200, 300, 3)
    assert not np.asarray(Image.open(io.BytesIO(png_bomb(300, 200, 3)))).any()
    grey = np.asarray(Image.open(io.BytesIO(jpeg_bomb(320, 240))))
    assert grey.shape == (240, 320) and grey.min() == grey.max() == 128
    for width, height in ((700, 500), (33000, 100)):  # 33000: two precincts at full resolution
        grey = openjpeg.decode(j2k_bomb(width, height))
        assert grey.shape == (height, width) and grey.min() == grey.max() == 128
    expanded = pydicom.dcmread(io.BytesIO(encapsulated(512, 512, rle_bomb(512 * 512), uid.RLELossless)))
    assert expanded.pixel_array.shape == (512, 512) and not expanded.pixel_array.any()
    small = pydicom.dcmread(io.BytesIO(deflated_dicom_bomb(512 * 512)))
    assert small.pixel_array.shape == (512, 512) and not small.pixel_array.any()


def test_codestream_sizes_are_read_from_the_headers():
    from PIL import Image

    assert dicom.codestream_size(jpeg_bomb(32768, 1000)) == (1000, 32768, 1, 8)
    assert dicom.codestream_size(j2k_bomb(40000, 30000)) == (30000, 40000, 1, 8)
    buffer = io.BytesIO()  # an EXIF block before the frame header is walked over, not read as one
    Image.new("L", (120, 90), 7).save(buffer, format="JPEG", exif=Image.Exif().tobytes() + bytes(200))
    assert dicom.codestream_size(buffer.getvalue()) == (90, 120, 1, 8)
    assert dicom.codestream_size(b"\xff\xd8\xff\xda\x00\x08") is None  # a scan before any frame header
    assert dicom.codestream_size(b"not a codestream") is None
