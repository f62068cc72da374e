"""DICOM films, the format every X-ray machine writes: bytes -> a grey film in 0-255, or a clear refusal.

What is applied, in the order the standard gives (PS3.4 N.2):

1. the **Modality LUT** (rescale slope / intercept, or the LUT sequence): stored values
   -> the machine's values;
2. the **VOI window** the file declares (center / width, linear function of C.11.2.1.2),
   or its VOI LUT sequence; without one, the declared depth decides, never the values:
   an unsigned film of at most 8 bits stored (and no rescale) is already grey levels
   (0..2**BitsStored - 1 stretched to 0-255, as an 8-bit PNG is read), a deeper one
   gets the project's rule for high-bit-depth films
   (:func:`helpers.imaging.window_to_8bit`: the 0.5-99.5 percentile range);
3. **MONOCHROME1** (white air, as some detectors store it) is inverted to MONOCHROME2.

Refused with a reason: files that are not DICOM images, other modalities than
projection radiography (CT, MR, ultrasound, ...), several frames, colour, pixel data
that cannot be decoded. Only the image attributes are read from the dataset (no
patient name, ID or date is displayed, logged or written anywhere), and nothing
from an upload touches the disk. JPEG and JPEG 2000 transfer syntaxes decode with the
pinned ``pylibjpeg`` plugins (or Pillow).

Decompression bombs are refused **before decoding**: the size the header declares
(Rows x Columns x frames x samples x BitsAllocated / 8) is checked against the pixel
and byte limits; for JPEG, JPEG-LS and JPEG 2000 the image size the compressed stream
itself declares (its SOF / SIZ header) must be the one the DICOM header declares
(pydicom's decoders would otherwise decode a huge stream under a small header and
only then notice); RLE segments are measured before they are expanded; a deflated
dataset is measured in chunks before pydicom inflates it; and only the first frame is
ever decoded.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np

from helpers.errors import UnusableInput, distinct_pair
from helpers.imaging import MAX_DECODED_BYTES, MAX_IMAGE_PIXELS, window_to_8bit

DICOM_MAGIC_OFFSET = 128  # "DICM" follows a 128-byte preamble in a DICOM file (Part 10)
PROJECTION_MODALITIES = ("CR", "DX", "RG", "DR")  # computed / digital radiography, radiographic imaging
DEFLATE_HEADROOM_BYTES = 16 * 2**20  # a deflated dataset may inflate to the pixel budget plus this much
INFLATE_CHUNK_BYTES = 2**20
RLE_PADDING_BYTES = 256  # an RLE segment may decode to this much more than Rows x Columns (encoder padding)
EXPORT_AGAIN = "Export the film again from the PACS or the X-ray machine."
MODALITY_NAMES = {"CT": "a CT scan", "MR": "an MRI scan", "US": "an ultrasound image", "NM": "a nuclear medicine image",
                  "PT": "a PET scan", "MG": "a mammogram", "XA": "an angiography run", "OT": "an image of another kind",
                  "SC": "a screen capture"}


class DicomRejected(UnusableInput):
    """A DICOM file that cannot be screened; the message says why (never a patient attribute)."""


def is_dicom(content: bytes) -> bool:
    """Part 10 files: a 128-byte preamble, then ``DICM``."""
    return bytes(content[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4]) == b"DICM"


def _first(value) -> float:
    """The first of a multi-valued attribute (Window Center may hold several windows)."""
    try:
        return float(value[0])
    except (TypeError, IndexError):
        return float(value)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear VOI function (PS3.3 C.11.2.1.2.1) onto 0-255 as float32."""
    if width < 1:
        raise DicomRejected(f"declares a window width of {width}, below the minimum of 1")
    scaled = (np.asarray(values, dtype=np.float64) - (center - 0.5)) / (width - 1) + 0.5
    return (np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.float32)


def read_film(content: bytes, name: str = "the file", max_pixels: int = MAX_IMAGE_PIXELS,
              max_bytes: int = MAX_DECODED_BYTES) -> tuple[np.ndarray, dict]:
    """DICOM bytes -> (grey film (H, W) float32 0-255, image facts without patient data).

    Args:
        max_pixels, max_bytes: the largest film (Rows x Columns) and stored pixel array
            decoded; checked from the headers before any pixel is decoded
            (:mod:`helpers.uploads` passes its upload limits).

    Raises:
        DicomRejected: not a usable single-frame grey projection radiograph, or larger
            than the limits (message names ``name`` and what to do).
    """
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as error:
        raise DicomRejected(f"{name} is a DICOM file, and reading DICOM needs pydicom (pip install -r "
                            "requirements.txt). Or export the image as PNG and upload that.") from error

    content = bytes(content)
    _refuse_inflating_beyond(content, name, max_bytes + DEFLATE_HEADROOM_BYTES)
    try:
        dataset = pydicom.dcmread(io.BytesIO(content), force=False)
    except Exception as error:  # pydicom raises many kinds for damaged files
        raise DicomRejected(f"{name} looks like DICOM but could not be read ({type(error).__name__}): it is "
                            f"truncated or damaged. {EXPORT_AGAIN}") from error
    modality = str(dataset.get("Modality", "") or "")
    if "PixelData" not in dataset and "Rows" in dataset:
        raise DicomRejected(f"{name} describes an image but its pixel data is missing: the file is truncated or "
                            f"damaged. {EXPORT_AGAIN}")
    if "PixelData" not in dataset:
        raise DicomRejected(f"{name} is a DICOM file without an image (a report or a structured document). "
                            "Upload the X-ray image itself.")
    if modality and modality not in PROJECTION_MODALITIES:
        kind = MODALITY_NAMES.get(modality, f"a {modality} image")
        raise DicomRejected(f"{name} is {kind} (DICOM modality {modality}), not a chest X-ray. This model reads "
                            "frontal chest radiographs (modality CR or DX) only.")
    frames = _integer(dataset, "NumberOfFrames", 1, name)
    if frames > 1:
        raise DicomRejected(f"{name} holds {frames} frames (a series or a cine loop); a chest X-ray is one frame. "
                            "Export the single frontal film.")
    samples = _integer(dataset, "SamplesPerPixel", 1, name)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        raise DicomRejected(f"{name} is a colour DICOM image ({photometric}); X-rays are grey. Upload the "
                            "original radiograph, not a screenshot or a coloured rendering.")
    check_declared_size(dataset, name, max_pixels, max_bytes)
    check_compressed_stream(dataset, name, max_bytes)
    try:
        dataset.pixel_array_options(index=0, allow_excess_frames=False)  # the one frame, never extra fragments
        stored = dataset.pixel_array  # (H, W) integers
    except Exception as error:  # missing decoder, damaged pixel data
        raise DicomRejected(f"{name}: its pixel data ({_syntax_name(dataset)}) could not be decoded "
                            f"({type(error).__name__}): the file is truncated or damaged, or compressed in a way "
                            "this app cannot read. Export it again, uncompressed or as PNG.") from error
    values = apply_modality_lut(stored, dataset)
    bits_stored = int(dataset.get("BitsStored", 0) or 0)
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        film = linear_window(values, _first(dataset.WindowCenter), _first(dataset.WindowWidth))
        window = "declared center/width"
    elif "VOILUTSequence" in dataset:
        film = window_to_8bit(apply_voi_lut(values, dataset), (0.0, 100.0))
        window = "declared VOI LUT"
    elif 0 < bits_stored <= 8 and not _has_modality_transform(dataset) and not dataset.get("PixelRepresentation"):
        film = np.asarray(stored, dtype=np.float32) * np.float32(255.0 / (2 ** bits_stored - 1))
        window = f"{bits_stored} bits stored: grey levels as they are (none declared)"
    else:
        film = window_to_8bit(values)
        window = "0.5-99.5 percentile (none declared)"
    if photometric == "MONOCHROME1":
        film = 255.0 - film  # white air -> dark air, as every other film the model saw
    facts = {"modality": modality or "unknown", "rows": int(film.shape[0]), "columns": int(film.shape[1]),
             "bits_stored": bits_stored, "photometric": photometric, "window": window}
    return film.astype(np.float32), facts


def _integer(dataset, keyword: str, default: int, name: str) -> int:
    """An integer attribute (``default`` when absent or empty); a value that is not a number is refused."""
    try:
        return int(dataset.get(keyword, default) or default)
    except (TypeError, ValueError) as error:
        raise DicomRejected(f"{name} declares {keyword} as {dataset.get(keyword)!r}, which is not a number: "
                            f"the file is damaged. {EXPORT_AGAIN}") from error


def _has_modality_transform(dataset) -> bool:
    """True when the Modality LUT changes the stored values (a rescale other than 1, 0, or a LUT)."""
    try:
        return ("ModalityLUTSequence" in dataset or float(dataset.get("RescaleSlope", 1) or 1) != 1.0
                or float(dataset.get("RescaleIntercept", 0) or 0) != 0.0)
    except (TypeError, ValueError):  # an unreadable rescale: not plain grey levels
        return True


def _syntax_name(dataset) -> str:
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    return str(getattr(syntax, "name", syntax))


# --------------------------------------------------------------------------- #
# Sizes from the headers, before decoding (decompression bombs)
# --------------------------------------------------------------------------- #
def check_declared_size(dataset, name: str, max_pixels: int = MAX_IMAGE_PIXELS,
                        max_bytes: int = MAX_DECODED_BYTES) -> int:
    """The stored pixel array the DICOM header declares, in bytes; raise :class:`DicomRejected` above the limits.

    Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated / 8 (bit-packed
    1-bit data unpacks to a byte per pixel), from the attributes alone: ``pixel_array``
    is not touched.
    """
    rows, columns = _integer(dataset, "Rows", 0, name), _integer(dataset, "Columns", 0, name)
    bits = _integer(dataset, "BitsAllocated", 0, name)
    frames = max(_integer(dataset, "NumberOfFrames", 1, name), 1)
    samples = max(_integer(dataset, "SamplesPerPixel", 1, name), 1)
    if rows < 1 or columns < 1 or bits < 1:
        raise DicomRejected(f"{name} does not declare its image size (Rows {rows}, Columns {columns}, "
                            f"BitsAllocated {bits}): the file is damaged. {EXPORT_AGAIN}")
    declared = rows * columns * frames * samples * -(-bits // 8)
    if rows * columns > max_pixels:
        shown, limit = distinct_pair(rows * columns / 1e6, max_pixels / 1e6)
        raise DicomRejected(f"{name} declares a {columns}x{rows} image ({shown} MP); the limit is {limit} MP, "
                            "so it is not decoded. Export the film at a lower resolution, or as PNG, and upload that.")
    if declared > max_bytes:
        shown, limit = distinct_pair(declared / 2**20, max_bytes / 2**20)
        raise DicomRejected(f"{name} declares {shown} MB of pixels ({columns}x{rows}, {frames} frame(s), "
                            f"{samples} sample(s) of {bits} bits); the limit is {limit} MB, so it is not decoded. "
                            "Export the single film at 16 bits or fewer, or as PNG, and upload that.")
    return declared


def check_compressed_stream(dataset, name: str, max_bytes: int = MAX_DECODED_BYTES) -> None:
    """Refuse compressed pixel data whose own header declares another (larger) image than the DICOM header.

    pydicom hands the first frame's codestream to the decoder, which allocates the
    size the *codestream* declares and only then is the result compared with Rows x
    Columns: a 600-byte JPEG 2000 stream of a 40,000 x 40,000 image under a 512 x 512
    header allocates gigabytes. So the JPEG / JPEG-LS SOF (or hierarchical DHP) and
    the JPEG 2000 SIZ of exactly the bytes pydicom will decode are read first; RLE
    segments are measured without expanding them; other compressions are refused.
    """
    from pydicom import uid

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return
    syntax = uid.UID(syntax)
    if not syntax.is_transfer_syntax:  # a damaged UID: pydicom cannot say how the pixels are stored
        raise DicomRejected(f"{name} declares the transfer syntax {str(syntax)[:64]!r}, which is not a DICOM "
                            f"transfer syntax: the file is damaged. {EXPORT_AGAIN}")
    if not syntax.is_encapsulated:
        return
    codecs = (*uid.JPEGTransferSyntaxes, *uid.JPEGLSTransferSyntaxes, *uid.JPEG2000TransferSyntaxes)
    if syntax not in codecs and syntax != uid.RLELossless:
        raise DicomRejected(f"{name} is compressed as {syntax.name}, which this app does not decode. Export it "
                            "again uncompressed (or JPEG / JPEG 2000), or as PNG.")
    stored_frames = _encapsulated_frames(dataset)
    if stored_frames > 1:
        raise DicomRejected(f"{name} declares one frame but its compressed pixel data holds {stored_frames}, so it "
                            f"is not decoded: the file is damaged or crafted. {EXPORT_AGAIN}")
    frame = _first_frame(dataset, name)
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if syntax == uid.RLELossless:
        if _rle_expands_beyond(frame, rows * columns + RLE_PADDING_BYTES):
            raise DicomRejected(f"{name}: its RLE pixel data expands to more than the declared {columns}x{rows} "
                                f"image, so it is not decoded: the file is damaged or crafted. {EXPORT_AGAIN}")
        return
    declared = codestream_size(frame)
    if declared is None:
        raise DicomRejected(f"{name}: its {syntax.name} pixel data does not start with a readable image header, "
                            f"so it is not decoded: the file is truncated or damaged. {EXPORT_AGAIN}")
    stream_rows, stream_columns, components, bits = declared
    if (stream_rows, stream_columns, components) != (rows, columns, samples):
        raise DicomRejected(f"{name}: its compressed image is {stream_columns}x{stream_rows} with {components} "
                            f"channel(s), but the DICOM header declares {columns}x{rows} with {samples}, so it is "
                            f"not decoded: the file is damaged or crafted. {EXPORT_AGAIN}")
    decoded = stream_rows * stream_columns * components * (1 if bits <= 8 else 2 if bits <= 16 else 4)
    if decoded > max_bytes:
        shown, limit = distinct_pair(decoded / 2**20, max_bytes / 2**20)
        raise DicomRejected(f"{name}: its compressed image holds {shown} MB of {bits}-bit pixels; the limit is "
                            f"{limit} MB, so it is not decoded. Export it at 16 bits or fewer, or as PNG.")


def _encapsulated_frames(dataset) -> int:
    """How many frames the offset tables of encapsulated pixel data list (pydicom decodes any extra ones)."""
    from pydicom.encaps import parse_basic_offsets

    if "ExtendedOffsetTable" in dataset:
        return len(dataset.ExtendedOffsetTable) // 8  # 8-byte offsets
    try:
        return len(parse_basic_offsets(io.BytesIO(dataset.PixelData)))
    except Exception:  # a damaged item tag: _first_frame names the damage
        return 0


def _first_frame(dataset, name: str) -> bytes:
    """The encoded bytes pydicom's decoder receives for frame 0 (the same call its DecodeRunner makes)."""
    from pydicom.encaps import get_frame

    offsets = None
    if "ExtendedOffsetTable" in dataset and "ExtendedOffsetTableLengths" in dataset:
        offsets = (dataset.ExtendedOffsetTable, dataset.ExtendedOffsetTableLengths)
    try:
        return bytes(get_frame(dataset.PixelData, 0, number_of_frames=1, extended_offsets=offsets))
    except Exception as error:  # pydicom raises several kinds for damaged encapsulation
        raise DicomRejected(f"{name}: its compressed pixel data is not laid out as DICOM requires "
                            f"({type(error).__name__}): the file is damaged. {EXPORT_AGAIN}") from error


JPEG_SIZE_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF,
                     0xDE, 0xF7}  # SOF0-15 without DHT/JPG/DAC, DHP (hierarchical), SOF55 (JPEG-LS)
JPEG_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def codestream_size(stream: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, bits) a JPEG, JPEG-LS or JPEG 2000 stream declares; None if none is found.

    Read from the header only: the first SOF / DHP segment of a JPEG (after SOI, walking
    the segment lengths, so APP payloads such as EXIF thumbnails are skipped), or the
    SIZ segment of a JPEG 2000 codestream (bare, or in a JP2 file's ``jp2c`` box).
    Decoders decode the first image of a stream, so that header is the one that counts.
    """
    stream = bytes(stream)
    if stream.startswith(b"\xff\xd8"):
        return _jpeg_size(stream)
    if stream.startswith(JP2_SIGNATURE):
        stream = _jp2_codestream(stream)
    if stream.startswith(b"\xff\x4f\xff\x51") and len(stream) >= 4 + 38 + 3:
        (_, _, width, height, left, top, _, _, _, _, components) = struct.unpack(">HHIIIIIIIIH", stream[4:42])
        if components < 1 or len(stream) < 42 + 3 * components:
            return None
        bits = max((stream[42 + 3 * index] & 0x7F) + 1 for index in range(components))
        return height - top, width - left, components, bits
    return None


def _jpeg_size(stream: bytes) -> tuple[int, int, int, int] | None:
    position = 2
    while position + 4 <= len(stream):
        if stream[position] != 0xFF:
            return None  # not a marker where one must be: damaged
        marker = stream[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            return None
        (length,) = struct.unpack(">H", stream[position + 2:position + 4])
        if marker in JPEG_SIZE_MARKERS:
            if length < 8 or position + 10 > len(stream):
                return None
            bits, height, width, components = struct.unpack(">BHHB", stream[position + 4:position + 10])
            return height, width, components, bits
        if length < 2:
            return None
        position += 2 + length
    return None


def _jp2_codestream(stream: bytes) -> bytes:
    """The ``jp2c`` box's content of a JP2 file (ISO/IEC 15444-1 Annex I); empty if there is none."""
    position = 0
    while position + 8 <= len(stream):
        length, kind = struct.unpack(">I4s", stream[position:position + 8])
        header = 8
        if length == 1:  # the length follows as 8 bytes
            if position + 16 > len(stream):
                return b""
            (length,) = struct.unpack(">Q", stream[position + 8:position + 16])
            header = 16
        elif length == 0:  # the box runs to the end
            length = len(stream) - position
        if kind == b"jp2c":
            return stream[position + header:position + length]
        if length < header:
            return b""
        position += length
    return b""


def _rle_expands_beyond(frame: bytes, limit: int) -> bool:
    """True if a segment of an RLE Lossless frame (PS3.5 G.3) decodes to more than ``limit`` bytes.

    Counts what each PackBits header adds, without writing the bytes, and stops as soon
    as ``limit`` is passed: a segment of 2-byte runs repeating 128 bytes each would
    otherwise expand 64-fold inside pydicom before its length is compared.
    """
    if len(frame) < 64:
        return False  # pydicom refuses the missing header itself
    count, *offsets = struct.unpack("<16I", frame[:64])
    starts = sorted(offset for offset in offsets[:count] if 64 <= offset <= len(frame))
    whole = memoryview(frame)  # segments as views: no copy of a 30 MB frame
    for start, end in zip(starts, starts[1:] + [len(frame)]):
        segment, position, decoded = whole[start:end], 0, 0
        while position < len(segment):
            header = segment[position]
            if header > 128:  # the next byte, 257 - header times
                decoded, position = decoded + 257 - header, position + 2
            elif header < 128:  # the next header + 1 bytes as they are
                decoded, position = decoded + header + 1, position + header + 2
            else:  # 128: no operation
                position += 1
            if decoded > limit:
                return True
    return False


def _refuse_inflating_beyond(content: bytes, name: str, limit: int) -> None:
    """A Deflated Explicit VR Little Endian file is measured in chunks before pydicom inflates it whole.

    pydicom's ``dcmread`` inflates the entire dataset into memory first (one
    ``zlib.decompress``); deflate reaches 1000:1, so a 30 MB upload could become 30 GB.
    """
    from pydicom.filereader import read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    stream = io.BytesIO(content)
    try:
        read_preamble(stream, False)
        syntax = _meta_transfer_syntax(stream, read_dataset)
    except Exception:  # a damaged header: dcmread raises for it, before inflating anything
        return
    if syntax != DeflatedExplicitVRLittleEndian:
        return
    inflater, remaining, inflated = zlib.decompressobj(-zlib.MAX_WBITS), content[stream.tell():], 0
    try:
        while remaining and inflated <= limit:
            inflated += len(inflater.decompress(remaining, INFLATE_CHUNK_BYTES))
            remaining = inflater.unconsumed_tail
    except zlib.error:
        return  # not valid deflate data: dcmread reports the damage
    if inflated > limit:
        raise DicomRejected(f"{name} is a deflated DICOM file that expands to more than {limit / 2**20:.0f} MB, "
                            "the limit, so it is not read. Export the film again uncompressed, or as PNG.")


def _meta_transfer_syntax(stream, read_dataset) -> str:
    """The file meta's Transfer Syntax UID, read as pydicom's ``dcmread`` reads the meta group."""
    start = stream.tell()
    for implicit in (False, True):  # explicit VR as the standard says; pydicom retries implicit VR
        stream.seek(start)
        meta = read_dataset(stream, is_implicit_VR=implicit, is_little_endian=True,
                            stop_when=lambda tag, vr, length: tag >> 16 != 2)
        try:
            return str(meta.get("TransferSyntaxUID", "") or "")
        except NotImplementedError:
            continue
    return ""


def film_bytes(film: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 8, window=None,
                modality: str = "DX", frames: int = 1, jpeg: bytes | None = None) -> bytes:
    """A Part 10 DICOM file holding ``film`` ((H, W) or (frames, H, W) unsigned integers, or a JPEG of it).

    For the tests and the reliability benchmark: DICOM copies of real films, in the
    variants machines write. The patient name is a fixed dummy that must never be shown.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    # reproducible: the same film gets the same UID
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(len(film.tobytes())), photometric, modality,
                                                                 hashlib.sha256(film.tobytes()).hexdigest()])
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.PatientName = "Test^Patient"  # must never show up anywhere
    dataset.Modality = modality
    dataset.Rows, dataset.Columns = film.shape[-2:]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 8 if bits_stored <= 8 else 16
    dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = bits_stored, bits_stored - 1, 0
    if frames > 1:
        dataset.NumberOfFrames = frames
    if window:
        dataset.WindowCenter, dataset.WindowWidth = window
    if jpeg:
        from pydicom.encaps import encapsulate

        dataset.PixelData = encapsulate([jpeg])
        dataset["PixelData"].VR = "OB"
        dataset["PixelData"].is_undefined_length = True
    else:
        dtype = np.uint8 if bits_stored <= 8 else np.uint16
        dataset.PixelData = np.ascontiguousarray(film.astype(dtype)).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
