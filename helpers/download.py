"""Cached, size- and hash-checked downloads (used when no local data is configured).

A download goes to ``<target>.part`` and is renamed only once complete and the byte
count matches the server's ``Content-Length``. Beside it a ``<target>.sha256`` file
records the digest, so a later run re-uses the cached copy only if it is intact.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.request
from pathlib import Path

from helpers.jsonio import write_json
from helpers.progress import progress_bar

PUBLIC_TFRECORD_URL = (
    "https://storage.googleapis.com/download.tensorflow.org/data/ChestXRay2017/"
    "{split}/{kind}.tfrec"
)

CHUNK_BYTES = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + ".download.json")


def is_cached(target: Path) -> bool:
    """True when ``target`` exists with the size and SHA-256 recorded at download."""
    record_file = _record_path(target)
    if not (target.is_file() and record_file.is_file()):
        return False
    record = json.loads(record_file.read_text())
    return target.stat().st_size == record["size_bytes"] and sha256_of(target) == record["sha256"]


def download(url: str, target: str | Path, expected_sha256: str | None = None) -> Path:
    """Download ``url`` to ``target`` unless an intact cached copy is there.

    Raises:
        OSError: the download is incomplete (size differs from Content-Length) or
            its SHA-256 differs from ``expected_sha256``. Nothing is left under
            ``target`` in that case; run again to retry.
    """
    target = Path(target)
    if is_cached(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(partial, "wb") as out, progress_bar(
                total=total, unit="B", unit_scale=True, desc=target.name
            ) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise OSError(f"Could not download {url} ({error}). Check the internet connection, "
                      "or set CXR_DATA_DIR to a local copy of the data.") from error
    size = partial.stat().st_size
    if total is not None and size != total:
        partial.unlink(missing_ok=True)
        raise OSError(f"Incomplete download of {url}: got {size} of {total} bytes. Run again.")
    digest = sha256_of(partial)
    if expected_sha256 and digest != expected_sha256:
        partial.unlink(missing_ok=True)
        raise OSError(f"{url} has SHA-256 {digest}, expected {expected_sha256}. Run again; "
                      "if it persists the file changed upstream.")
    shutil.move(partial, target)
    write_json({"url": url, "size_bytes": size, "sha256": digest}, _record_path(target))
    return target


def download_public_tfrecords(data_dir: Path) -> Path:
    """Fetch the keras.io ChestXRay2017 TFRecord pair (train and test) into ``data_dir``.

    Returns ``data_dir``, which then holds ``ChestXRay2017/{train,test}/{images,paths}.tfrec``.
    The public train pair has 5,232 images (the official train split plus its 16 val images).
    """
    for split in ("train", "test"):
        for kind in ("images", "paths"):
            url = PUBLIC_TFRECORD_URL.format(split=split, kind=kind)
            download(url, data_dir / "ChestXRay2017" / split / f"{kind}.tfrec")
    return data_dir
