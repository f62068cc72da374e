"""Damaged uploads, made on purpose: a seeded mutation corpus for the screening entry point.

Every input a user could send by mistake or malice -- truncated, bit-flipped,
header-mangled image files (JPEG, PNG, 16-bit PNG, TIFF, BMP, GIF, WebP, DICOM), zero
bytes, the wrong extension, an absurd declared size -- must end in a verdict or the
project's documented refusal (a
:class:`helpers.screening.ScreeningResult` with a message), never another exception,
and quickly. :func:`corpus` builds the inputs from real encoded films; :func:`run`
screens them and counts what happened. ``tests/test_fuzz.py`` runs 1,000 of them;
``benchmarks/reliability.py`` (``make reliability``) runs more on the trained model.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from helpers.dicom import film_bytes

MUTATIONS = ("truncate", "bit_flip", "byte_run", "header", "zero_bytes", "empty", "huge_declared_size",
             "wrong_extension", "concatenated", "random_bytes")
FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP")


def encodings(film: np.ndarray) -> dict[str, bytes]:
    """One grey film (H, W) uint8 encoded in every format of :data:`FORMATS` (16-bit PNG and DICOM too)."""
    encoded = {}
    for fmt in FORMATS:
        buffer = io.BytesIO()
        Image.fromarray(film).save(buffer, format=fmt)
        encoded[fmt] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(film.astype(np.uint16) * 257).save(buffer, format="PNG")
    encoded["PNG16"] = buffer.getvalue()
    encoded["DICOM"] = film_bytes(film.astype(np.uint16) * 16, bits_stored=12)  # a 12-bit radiograph
    return encoded


def _png_with_size(content: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (CRC recomputed, so only the size lies)."""
    if content[:8] != b"\x89PNG\r\n\x1a\n":
        return content
    header = bytearray(content)
    header[16:24] = struct.pack(">II", width, height)
    header[29:33] = struct.pack(">I", zlib.crc32(bytes(header[12:29])) & 0xFFFFFFFF)
    return bytes(header)


def mutate(content: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """One damaged copy of ``content`` (see :data:`MUTATIONS`)."""
    data = bytearray(content)
    if kind == "truncate":
        return bytes(data[: int(rng.integers(0, max(1, len(data))))])
    if kind == "bit_flip":
        for position in rng.integers(0, len(data), size=int(rng.integers(1, 32))):
            data[position] ^= 1 << int(rng.integers(0, 8))
        return bytes(data)
    if kind == "byte_run":  # a run of garbage somewhere inside
        start = int(rng.integers(0, len(data)))
        length = int(rng.integers(1, 512))
        data[start:start + length] = rng.integers(0, 256, size=min(length, len(data) - start), dtype=np.uint8).tobytes()
        return bytes(data)
    if kind == "header":  # the first bytes, where format, size and tables live
        for position in rng.integers(0, min(64, len(data)), size=int(rng.integers(1, 8))):
            data[position] = int(rng.integers(0, 256))
        return bytes(data)
    if kind == "zero_bytes":
        start = int(rng.integers(0, len(data)))
        data[start:] = bytes(len(data) - start)
        return bytes(data)
    if kind == "empty":
        return b""
    if kind == "huge_declared_size":
        side = int(rng.choice([0, 1, 65_535, 100_000, 2 ** 31 - 1]))
        return _png_with_size(content, side, int(rng.choice([1, 30_000, 2 ** 31 - 1])))
    if kind == "wrong_extension":  # the bytes are fine; the caller names them as another format
        return bytes(data)
    if kind == "concatenated":
        return bytes(data) + bytes(data[: len(data) // 2])
    if kind == "random_bytes":
        return rng.integers(0, 256, size=int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
    raise ValueError(f"Unknown mutation {kind!r}; choose one of {MUTATIONS}.")


def corpus(films: list[np.ndarray], count: int, seed: int = 0) -> list[tuple[str, str, bytes]]:
    """``count`` damaged inputs ``(name, kind, bytes)`` from grey films (H, W) uint8, seeded.

    Mutations and source formats take turns, so every kind meets every format.
    """
    rng = np.random.default_rng(seed)
    sources = [(fmt, content) for film in films for fmt, content in encodings(film).items()]
    extensions = {"JPEG": "jpg", "PNG": "png", "PNG16": "png", "TIFF": "tif", "BMP": "bmp", "GIF": "gif",
                  "WEBP": "webp", "DICOM": "dcm"}
    inputs = []
    for index in range(count):
        kind = MUTATIONS[index % len(MUTATIONS)]
        fmt, content = sources[int(rng.integers(0, len(sources)))]
        extension = extensions[fmt] if kind != "wrong_extension" else rng.choice(["png", "jpg", "dcm", "txt"])
        inputs.append((f"fuzz_{index:05d}_{kind}.{extension}", kind, mutate(content, kind, rng)))
    return inputs


@dataclass(frozen=True)
class FuzzReport:
    """What happened to every input: decided, refused (by reason), unhandled (exception), and the slowest."""

    inputs: int
    decided: int
    refused: int
    unhandled: int
    slowest_s: float
    slowest_input: str
    by_kind: dict
    failures: list

    def to_dict(self) -> dict:
        return {"inputs": self.inputs, "decided": self.decided, "refused": self.refused,
                "unhandled": self.unhandled, "slowest_s": self.slowest_s, "slowest_input": self.slowest_input,
                "by_kind": self.by_kind, "failures": self.failures[:20]}


def run(screener, inputs: list[tuple[str, str, bytes]]) -> FuzzReport:
    """Screen every input; an exception is counted (with its type and message), never raised."""
    by_kind: dict[str, dict[str, int]] = {}
    decided = refused = 0
    failures, slowest, slowest_name = [], 0.0, ""
    for name, kind, content in inputs:
        counts = by_kind.setdefault(kind, {"decided": 0, "refused": 0, "unhandled": 0})
        start = time.perf_counter()
        try:
            result = screener.screen_bytes(content, name)
        except Exception as error:
            counts["unhandled"] += 1
            failures.append(f"{name}: {type(error).__name__}: {str(error)[:200]}")
            continue
        finally:
            elapsed = time.perf_counter() - start
            if elapsed > slowest:
                slowest, slowest_name = elapsed, name
        outcome = "decided" if result.accepted else "refused"
        counts[outcome] += 1
        decided += result.accepted
        refused += not result.accepted
    return FuzzReport(len(inputs), decided, refused, len(failures), slowest, slowest_name, by_kind, failures)
