"""DICOM films, the format every X-ray machine writes: bytes -> a grey film in 0-255, or a clear refusal.

What is applied, in the order the standard gives (PS3.4 N.2):

1. the **Modality LUT** (rescale slope / intercept, or the LUT sequence): stored values
   -> the machine's values;
2. the **VOI window** the file declares (center / width, linear function of C.11.2.1.2),
   or its VOI LUT sequence; without one, the project's rule for high-bit-depth films
   (:func:`helpers.imaging.window_to_8bit`: the 0.5-99.5 percentile range);
3. **MONOCHROME1** (white air, as some detectors store it) is inverted to MONOCHROME2.

Refused with a reason: files that are not DICOM images, other modalities than
projection radiography (CT, MR, ultrasound, ...), several frames, colour, pixel data
that cannot be decoded. Only the image attributes are read from the dataset (no
patient name, ID or date is displayed, logged or written anywhere), and nothing
from an upload touches the disk. JPEG and JPEG 2000 transfer syntaxes decode with the
pinned ``pylibjpeg`` plugins (or Pillow).
"""

from __future__ import annotations

import hashlib
import io

import numpy as np

from helpers.errors import UnusableInput
from helpers.imaging import window_to_8bit

DICOM_MAGIC_OFFSET = 128  # "DICM" follows a 128-byte preamble in a DICOM file (Part 10)
PROJECTION_MODALITIES = ("CR", "DX", "RG", "DR")  # computed / digital radiography, radiographic imaging
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


def read_film(content: bytes, name: str = "the file") -> tuple[np.ndarray, dict]:
    """DICOM bytes -> (grey film (H, W) float32 0-255, image facts without patient data).

    Raises:
        DicomRejected: not a usable single-frame grey projection radiograph (message
            names ``name`` and what to do).
    """
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as error:
        raise DicomRejected(f"{name} is a DICOM file, and reading DICOM needs pydicom (pip install -r "
                            "requirements.txt). Or export the image as PNG and upload that.") from error

    try:
        dataset = pydicom.dcmread(io.BytesIO(bytes(content)), force=False)
    except Exception as error:  # pydicom raises many kinds for damaged files
        raise DicomRejected(f"{name} looks like DICOM but could not be read ({type(error).__name__}): it is "
                            "truncated or damaged. Export the film again from the PACS or the X-ray machine.") from error
    modality = str(dataset.get("Modality", "") or "")
    if "PixelData" not in dataset and "Rows" in dataset:
        raise DicomRejected(f"{name} describes an image but its pixel data is missing: the file is truncated or "
                            "damaged. Export the film again from the PACS or the X-ray machine.")
    if "PixelData" not in dataset:
        raise DicomRejected(f"{name} is a DICOM file without an image (a report or a structured document). "
                            "Upload the X-ray image itself.")
    if modality and modality not in PROJECTION_MODALITIES:
        kind = MODALITY_NAMES.get(modality, f"a {modality} image")
        raise DicomRejected(f"{name} is {kind} (DICOM modality {modality}), not a chest X-ray. This model reads "
                            "frontal chest radiographs (modality CR or DX) only.")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomRejected(f"{name} holds {frames} frames (a series or a cine loop); a chest X-ray is one frame. "
                            "Export the single frontal film.")
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        raise DicomRejected(f"{name} is a colour DICOM image ({photometric}); X-rays are grey. Upload the "
                            "original radiograph, not a screenshot or a coloured rendering.")
    try:
        stored = dataset.pixel_array  # (H, W) integers
    except Exception as error:  # missing decoder, damaged pixel data
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", str(syntax))
        raise DicomRejected(f"{name}: its pixel data ({syntax_name}) could not be decoded "
                            f"({type(error).__name__}): the file is truncated or damaged, or compressed in a way "
                            "this app cannot read. Export it again, uncompressed or as PNG.") from error
    values = apply_modality_lut(stored, dataset)
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        film = linear_window(values, _first(dataset.WindowCenter), _first(dataset.WindowWidth))
        window = "declared center/width"
    elif "VOILUTSequence" in dataset:
        film = window_to_8bit(apply_voi_lut(values, dataset), (0.0, 100.0))
        window = "declared VOI LUT"
    else:
        film = window_to_8bit(values)
        window = "0.5-99.5 percentile (none declared)"
    if photometric == "MONOCHROME1":
        film = 255.0 - film  # white air -> dark air, as every other film the model saw
    facts = {"modality": modality or "unknown", "rows": int(film.shape[0]), "columns": int(film.shape[1]),
             "bits_stored": int(dataset.get("BitsStored", 0) or 0), "photometric": photometric, "window": window}
    return film.astype(np.float32), facts


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
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(len(film.tobytes())), photometric, modality,
                                                                 hashlib.sha256(film.tobytes()).hexdigest()])  # reproducible
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
