"""A real PACS for the archive screener's tests and benchmark: Debian's Orthanc with its DICOMweb plugin.

:func:`orthanc_server` starts ``Orthanc`` from a small JSON configuration (its own storage
folder, a free local HTTP port, no DICOM port, the DICOMweb plugin) in its own process
group and stops the group after; :func:`dicom_copy` makes a DICOM copy of a film as a
modality would send it, and :func:`store` puts it into the server over its REST API.
``make test`` installs the packages (``make orthanc``) when run as root.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from helpers import dicom
from tests import browser

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PACKAGE = "orthanc-dicomweb"
DICOMWEB_ROOT = "/dicom-web"


def dicomweb_plugin() -> str | None:
    """The DICOMweb plugin's shared library, from the Debian package's file list (None without it)."""
    try:
        listed = subprocess.run(["dpkg", "-L", DICOMWEB_PACKAGE], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:  # not a Debian system
        return None
    found = [line for line in listed.splitlines() if line.endswith(".so") and Path(line).is_file()]
    return found[0] if found else None


def unavailable_reason() -> str | None:
    """Why Orthanc with DICOMweb cannot run here (None when it can)."""
    if not Path(ORTHANC).is_file():
        return (f"no Orthanc at {ORTHANC}: install Debian's orthanc and {DICOMWEB_PACKAGE} "
                "(make test does it when run as root)")
    if dicomweb_plugin() is None:
        return (f"no DICOMweb plugin for Orthanc: install Debian's {DICOMWEB_PACKAGE} "
                "(make test does it when run as root)")
    return None


@contextlib.contextmanager
def orthanc_server() -> Iterator[str]:
    """Orthanc on 127.0.0.1 and a free port with a temporary storage folder; yields its base URL, then stops it."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    port = browser.free_port()
    with tempfile.TemporaryDirectory(prefix="cxr-orthanc-") as storage:
        configuration = {"Name": "cxr-archive", "StorageDirectory": storage, "IndexDirectory": storage,
                         "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
                         "AuthenticationEnabled": False, "Plugins": [dicomweb_plugin()],
                         "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT + "/"}}
        config_file = Path(storage) / "orthanc.json"
        config_file.write_text(json.dumps(configuration))
        with browser._server([ORTHANC, str(config_file)], f"http://127.0.0.1:{port}/system", None, expect=None):
            yield f"http://127.0.0.1:{port}"


def dicom_copy(film: Path, study: str, modality: str = "DX", study_date: str = "20240315",
               compressed: bool = False) -> bytes:
    """A DICOM copy of a film file, grey, as the only instance of its own study, with dummy patient data.

    ``study`` seeds the Study, Series and SOP Instance UIDs (unique per study, as in a
    PACS); ``compressed`` stores the pixels as baseline JPEG (quality 95) instead of raw.
    """
    grey = np.asarray(Image.open(film).convert("L"))  # (H, W) uint8
    jpeg = None
    if compressed:
        buffer = io.BytesIO()
        Image.fromarray(grey).save(buffer, format="JPEG", quality=95)
        jpeg = buffer.getvalue()
    dataset = pydicom.dcmread(io.BytesIO(dicom.film_bytes(grey, modality=modality, jpeg=jpeg)))
    dataset.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[study])
    dataset.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[study, "series"])
    dataset.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[study, "instance"])
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.StudyDate, dataset.PatientID = study_date, "PATIENT-ID-42"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def store(base_url: str, content: bytes) -> None:
    """Store one DICOM instance through Orthanc's REST API."""
    request = urllib.request.Request(f"{base_url}/instances", data=content, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        if response.status != 200:
            raise RuntimeError(f"Orthanc answered {response.status} to a stored instance.")
