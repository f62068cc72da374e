"""What the phone web app (``phone/``) needs from the trained artifacts, in the form it downloads.

    python -m helpers.phone_export                      # <artifacts> -> phone/public/
    python -m helpers.phone_export --artifacts DIR --output FOLDER

The page runs the one-pass model in the browser (LiteRT.js) and repeats the
screening pipeline of :mod:`helpers.screening` in JavaScript. This module writes
the files it reads, into ``phone/public/`` (git-ignored):

* ``models/pneumonia_mobilenetv2_onepass_<variant>.<hash>.tflite`` -- each one-pass
  model found, its file name carrying the first 12 hex digits of its SHA-256, so a
  new model is a new URL and the offline cache holds the current one only;
* ``guard.<hash>.bin`` -- the guard's numbers (:class:`helpers.ood.OODDetector`):
  the feature mean, the upper triangle of the 1280x1280 precision matrix in float16
  (scaled by a power of two into float16's range) and the X-ray and orientation gates
  in float32, little-endian, each array at a 4-byte boundary;
* ``bundle.json`` -- per variant its operating point, head bias, input type and
  version (read through :class:`helpers.screening.OnePassEngine`, as the Streamlit app
  reads them), the guard's thresholds and the layout of ``guard.<hash>.bin``, the
  upload rules of :mod:`helpers.uploads` and the notice the app shows.

One source of truth for the guard: :func:`read_guard` turns the shipped bytes back
into an :class:`~helpers.ood.OODDetector`, so Python computes the same distances and
gate scores as the page from the same numbers (the phone tests and
``benchmarks/phone_benchmark.py`` compare the two).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from helpers import config, guard, imaging, screening, uploads
from helpers.jsonio import read_json_object, write_json
from helpers.ood import FeatureDistribution, OODDetector
from helpers.provenance import FittedOn, file_sha256

BUNDLE_SCHEMA = "cxr-phone-bundle/1"
BUNDLE_FILE_NAME = "bundle.json"
MODELS_SUBDIR = "models"
GUARD_STEM = "guard"
HASH_DIGITS = 12
DEFAULT_OUTPUT = config.PROJECT_ROOT / "phone" / "public"
FLOAT16_TARGET = 2.0 ** 14  # the precision matrix is scaled so its largest entry is near this (float16 max 65504)
ARRAY_ALIGNMENT = 4
ICON_SIZES = (192, 512)  # what browsers ask of an installable page's manifest


class PhoneExportError(screening.ScreeningModelError):
    """The artifacts lack what the phone app needs; says which file and how to make it."""


# --------------------------------------------------------------------------- #
# The guard's numbers, as shipped
# --------------------------------------------------------------------------- #
def precision_scale(precision: np.ndarray) -> float:
    """The power of two that brings the precision matrix's largest entry near :data:`FLOAT16_TARGET`."""
    largest = float(np.max(np.abs(precision)))
    if not math.isfinite(largest) or largest == 0.0:
        raise ValueError("The precision matrix is zero or not finite: re-fit the detector (notebook 07).")
    return float(2.0 ** math.floor(math.log2(FLOAT16_TARGET / largest)))


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
    """Row-major upper triangle (diagonal included) of a square (D, D) matrix -> (D (D + 1) / 2,)."""
    rows, columns = np.triu_indices(matrix.shape[0])
    return np.asarray(matrix)[rows, columns]


def symmetric_from_upper(values: np.ndarray, size: int) -> np.ndarray:
    """Inverse of :func:`upper_triangle`: (D (D + 1) / 2,) -> the symmetric (D, D) float64 matrix."""
    if len(values) != size * (size + 1) // 2:
        raise ValueError(f"{len(values)} values do not fill the upper triangle of a {size}x{size} matrix.")
    matrix = np.zeros((size, size), dtype=np.float64)
    rows, columns = np.triu_indices(size)
    matrix[rows, columns] = values
    matrix[columns, rows] = values
    return matrix


def guard_arrays(detector: OODDetector) -> dict[str, np.ndarray]:
    """The arrays of ``guard.<hash>.bin``, in file order, in the dtypes they are stored in."""
    if detector.xray_gate is None or detector.orientation_gate is None:
        raise PhoneExportError("The OOD detector has no X-ray or orientation gate: re-run notebook 07 "
                               "(python -m helpers.notebooks --only 07) to fit the guard.")
    scale = precision_scale(detector.distribution.precision)
    arrays = {"mean": np.asarray(detector.distribution.mean, np.float32),
              "precision_upper": (upper_triangle(detector.distribution.precision) * scale).astype(np.float16)}
    for prefix, gate in (("xray", detector.xray_gate), ("orientation", detector.orientation_gate)):
        arrays.update({f"{prefix}_mean": np.asarray(gate.mean, np.float32),
                       f"{prefix}_scale": np.asarray(gate.scale, np.float32),
                       f"{prefix}_weights": np.asarray(gate.weights, np.float32),
                       f"{prefix}_bias": np.asarray(gate.bias, np.float32)})
    return arrays


def pack_arrays(arrays: dict[str, np.ndarray]) -> tuple[bytes, list[dict]]:
    """Little-endian bytes of ``arrays`` (each at a 4-byte boundary) and their layout entries."""
    chunks, layout, offset = [], [], 0
    for name, array in arrays.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        layout.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape), "offset": offset,
                       "bytes": len(data)})
        padding = (-len(data)) % ARRAY_ALIGNMENT
        chunks += [data, b"\0" * padding]
        offset += len(data) + padding
    return b"".join(chunks), layout


def unpack_arrays(content: bytes, layout: list[dict]) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_arrays`."""
    arrays = {}
    for entry in layout:
        dtype = np.dtype(entry["dtype"]).newbyteorder("<")
        count = int(np.prod(entry["shape"])) if entry["shape"] else 1
        end = entry["offset"] + count * dtype.itemsize
        if end > len(content):
            raise ValueError(f"The guard file is {len(content)} bytes; array {entry['name']!r} ends at {end}. "
                             "Export it again (python -m helpers.phone_export).")
        arrays[entry["name"]] = np.frombuffer(content, dtype, count, entry["offset"]).reshape(entry["shape"])
    return arrays


def gate_description(gate: guard.LinearGate) -> dict:
    return {"classes": list(gate.classes), "threshold": float(gate.threshold), "watched": int(gate.watched)}


def guard_description(detector: OODDetector, file_name: str, layout: list[dict], scale: float) -> dict:
    """The ``guard`` entry of ``bundle.json``: thresholds, gates, words, and the binary file's layout."""
    return {"file": file_name, "layout": layout, "precision_scale": scale, "fitted_on": detector.fitted_on.to_dict(),
            "dimensions": int(detector.distribution.mean.shape[0]),
            "distance_threshold": float(detector.distance_threshold),
            "max_colourfulness": float(detector.max_colourfulness), "quantile": float(detector.quantile),
            "xray": gate_description(detector.xray_gate), "orientation": gate_description(detector.orientation_gate),
            "upright": guard.UPRIGHT, "orientation_words": dict(guard.ORIENTATION_WORDS)}


def read_guard(folder: str | os.PathLike = DEFAULT_OUTPUT) -> OODDetector:
    """The guard the page runs, from ``bundle.json`` and ``guard.<hash>.bin`` in ``folder``.

    Raises:
        PhoneExportError: no bundle or no guard in it (names the export command).
    """
    folder = Path(folder)
    bundle = read_bundle(folder)
    description = bundle.get("guard")
    if not description:
        raise PhoneExportError(f"{folder / BUNDLE_FILE_NAME} holds no guard: fit it with notebook 07, then export "
                               "again (python -m helpers.phone_export).")
    arrays = unpack_arrays((folder / description["file"]).read_bytes(), description["layout"])
    size = int(description["dimensions"])
    precision = (symmetric_from_upper(arrays["precision_upper"].astype(np.float64), size)
                 / description["precision_scale"])
    gates = {prefix: guard.LinearGate(tuple(description[prefix]["classes"]), arrays[f"{prefix}_mean"],
                                      arrays[f"{prefix}_scale"], arrays[f"{prefix}_weights"], arrays[f"{prefix}_bias"],
                                      float(description[prefix]["threshold"]), int(description[prefix]["watched"]))
             for prefix in ("xray", "orientation")}
    return OODDetector(FeatureDistribution(arrays["mean"].astype(np.float64), precision),
                       float(description["distance_threshold"]), float(description["max_colourfulness"]),
                       float(description["quantile"]), {"source": str(folder / description["file"])},
                       gates["xray"], gates["orientation"],
                       FittedOn.from_dict(description.get("fitted_on"), str(folder / BUNDLE_FILE_NAME),
                                          "Export it again (python -m helpers.phone_export)."))


def guard_storage_options(detector: OODDetector, features: np.ndarray) -> list[dict]:
    """What each way of shipping the precision matrix costs in bytes and in distance error.

    Args:
        features: (N, D) pooled features of real films, to measure on.

    Returns one row per form (float32 or float16, whole matrix or upper triangle, the
    float16 ones scaled by :func:`precision_scale`): its bytes and the largest relative
    difference of the Mahalanobis distances from those of the float64 matrix.
    """
    precision = detector.distribution.precision
    size, scale = precision.shape[0], precision_scale(precision)
    reference = detector.distribution.distances(features)
    rows = []
    for dtype in (np.float32, np.float16):
        for shape in ("whole matrix", "upper triangle"):
            stored = (precision * scale).astype(dtype) if dtype == np.float16 else precision.astype(dtype)
            values = upper_triangle(stored) if shape == "upper triangle" else stored.ravel()
            restored = stored.astype(np.float64) / (scale if dtype == np.float16 else 1.0)
            distances = FeatureDistribution(detector.distribution.mean, restored).distances(features)
            rows.append({"storage": f"{np.dtype(dtype).name}, {shape}",
                         "bytes": int(values.size * np.dtype(dtype).itemsize),
                         "max_relative_distance_error": float(np.max(np.abs(distances - reference) / reference)),
                         "matrix": f"{size}x{size}"})
    return rows


def benchmark_tables(report: dict) -> tuple[list[dict], list[dict]]:
    """The parity and latency rows of a ``phone_benchmark.json`` (``benchmarks/phone_benchmark.py``), per variant."""
    parity, latency = [], []
    for variant, entry in report.get("variants", {}).items():
        agreement = entry["parity"]
        parity.append({"variant": variant, "films": agreement["films"],
                       "decisions equal to Python's": agreement["decision_agreement"],
                       "probability max abs difference": agreement["probability_max_abs_difference"],
                       "heat-map Spearman (median)": agreement["heatmap_spearman_median"]})
        slow = next(value for key, value in entry.items() if key.startswith("slowdown_"))
        latency.append({"variant": variant, "compile ms": entry["compile_ms"],
                        "inference p50 / p95 ms": f"{entry['inference_ms']['p50']} / {entry['inference_ms']['p95']}",
                        "end to end p50 / p95 ms": f"{entry['end_to_end_ms']['p50']} / {entry['end_to_end_ms']['p95']}",
                        "4x slower CPU, end to end p50 / p95 ms":
                            f"{slow['end_to_end_ms']['p50']} / {slow['end_to_end_ms']['p95']}"})
    return parity, latency


def read_bundle(folder: str | os.PathLike = DEFAULT_OUTPUT) -> dict:
    """``bundle.json`` of an exported folder."""
    path = Path(folder) / BUNDLE_FILE_NAME
    if not path.is_file():
        raise PhoneExportError(f"No {BUNDLE_FILE_NAME} in {folder}: export it with python -m helpers.phone_export.")
    return read_json_object(path, "Export it again with python -m helpers.phone_export.")


# --------------------------------------------------------------------------- #
# The bundle
# --------------------------------------------------------------------------- #
def short_hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:HASH_DIGITS]


def variant_entry(engine: screening.OnePassEngine, file_name: str) -> dict:
    """What the page needs to run one variant and decide as :class:`helpers.screening.Screener` does."""
    outputs = engine.metadata["outputs"]
    return {"file": file_name, "sha256": file_sha256(engine.path), "size_bytes": engine.path.stat().st_size,
            "variant": engine.variant, "engine": engine.name, "model_version": engine.version,
            "input": {"shape": list(engine.input.shape), "dtype": engine.input.dtype.name},
            "outputs": {role: {"shape": list(outputs[role]["shape"])} for role in screening.OUTPUT_ROLES},
            "bias": engine.bias, "decision": engine.point.to_dict()}


def upload_rules() -> dict:
    """The limits of :mod:`helpers.uploads`, checked by the page from the file header before decoding."""
    return {"min_side": uploads.MIN_IMAGE_SIDE, "max_pixels": uploads.MAX_IMAGE_PIXELS,
            "max_bytes": uploads.MAX_UPLOAD_BYTES, "accepted_formats": list(uploads.ACCEPTED_FORMATS),
            "decompression_bomb_pixels": 2 * Image.MAX_IMAGE_PIXELS,  # Pillow refuses to open a larger image
            "image_size": imaging.IMAGE_SIZE}


def _copy_versioned(source: Path, folder: Path, stem: str, suffix: str) -> str:
    """Copy ``source`` to ``folder/<stem>.<hash><suffix>``; returns the name relative to the output root."""
    content = source.read_bytes()
    name = f"{stem}.{short_hash(content)}{suffix}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / name)
    return name


def write_icons(output: Path) -> list[Path]:
    """``icon-<size>.png``: the app's icon (a chest outline, light on dark blue) at each of :data:`ICON_SIZES`."""
    paths = []
    for size in ICON_SIZES:
        icon = Image.new("RGB", (size, size), (29, 53, 87))
        draw = ImageDraw.Draw(icon)
        unit, width = size / 64, max(2, round(size / 20))
        draw.line([(32 * unit, 10 * unit), (32 * unit, 54 * unit)], fill=(241, 250, 238), width=width)
        for top in (26, 33, 40):
            draw.line([(24 * unit, top * unit), (40 * unit, top * unit)], fill=(241, 250, 238), width=width)
        for left, right in ((14, 30), (34, 50)):
            draw.arc([left * unit, 16 * unit, right * unit, 56 * unit], 90 if left < 32 else 270,
                     270 if left < 32 else 90, fill=(241, 250, 238), width=width)
        path = output / f"icon-{size}.png"
        icon.save(path)
        paths.append(path)
    return paths


def export_bundle(artifacts: str | os.PathLike | None = None, output: str | os.PathLike = DEFAULT_OUTPUT,
                  variants: tuple[str, ...] = screening.ONE_PASS_VARIANTS, require_guard: bool = True) -> Path:
    """Write the models, the guard and ``bundle.json`` for the page into ``output``; returns the bundle path.

    Args:
        artifacts: the artifacts folder (default ``$CXR_ARTIFACTS_DIR`` or ``artifacts/``);
            its ``tflite/`` holds the one-pass models, ``ood/detector.npz`` the guard.
        variants: the variants to export, the default (the page's first choice) first;
            missing ones other than the first are skipped.
        require_guard: refuse to export without ``ood/detector.npz`` (the page would
            answer for any picture otherwise).

    Raises:
        PhoneExportError / ScreeningModelError: the first variant's model or the
            guard is missing or unusable (the message names the command that makes it).
    """
    root = Path(artifacts) if artifacts else config.artifacts_dir(create=False)
    output = Path(output)
    models_folder = output / MODELS_SUBDIR
    if models_folder.is_dir():
        shutil.rmtree(models_folder)  # only the current models: old versions must not linger in the bundle
    for stale in output.glob(f"{GUARD_STEM}.*.bin"):
        stale.unlink()
    entries = {}
    for index, variant in enumerate(variants):
        path = screening.one_pass_path(variant, root / "tflite")
        if not path.is_file() and index > 0:
            continue
        engine = screening.OnePassEngine(screening.find_model(variant, path), num_threads=1)
        name = _copy_versioned(path, models_folder, path.stem, path.suffix)
        entries[variant] = variant_entry(engine, f"{MODELS_SUBDIR}/{name}")
    detector_path = root / "ood" / "detector.npz"
    guard_entry = None
    if detector_path.is_file():
        detector = OODDetector.load(detector_path)
        first = screening.OnePassEngine(screening.one_pass_path(variants[0], root / "tflite"), num_threads=1)
        detector.require_model(first.keras_sha256, str(detector_path), first.path.name)  # as Screener.load does
        content, layout = pack_arrays(guard_arrays(detector))
        name = f"{GUARD_STEM}.{short_hash(content)}.bin"
        output.mkdir(parents=True, exist_ok=True)
        (output / name).write_bytes(content)
        guard_entry = guard_description(detector, name, layout, precision_scale(detector.distribution.precision))
    elif require_guard:
        raise PhoneExportError(f"No OOD detector at {detector_path}: the page would answer for any picture. "
                               "Fit it with notebook 07 (python -m helpers.notebooks --only 07).")
    write_icons(output)
    default = entries[variants[0]]
    guard_hash = guard_entry["file"].split(".")[1] if guard_entry else "noguard"
    bundle = {"schema": BUNDLE_SCHEMA, "version": f"{default['sha256'][:HASH_DIGITS]}-{guard_hash}",
              "default_variant": variants[0], "variants": entries, "guard": guard_entry,
              "upload_rules": upload_rules(), "not_a_medical_device": screening.NOT_A_MEDICAL_DEVICE,
              "verdict_kinds": list(guard.VERDICT_KINDS), "answered_kinds": list(guard.ANSWERED_KINDS)}
    return write_json(bundle, output / BUNDLE_FILE_NAME)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.phone_export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", help="artifacts folder (default $CXR_ARTIFACTS_DIR or artifacts/)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="the page's public folder (default phone/public)")
    parser.add_argument("--variants", nargs="+", default=list(screening.ONE_PASS_VARIANTS),
                        help="one-pass variants to export, the page's default first")
    arguments = parser.parse_args(argv)
    try:
        path = export_bundle(arguments.artifacts, arguments.output, tuple(arguments.variants))
    except screening.ScreeningModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    bundle = read_bundle(path.parent)
    sizes = ", ".join(f"{variant} {entry['size_bytes'] / 2**20:.1f} MiB"
                      for variant, entry in bundle["variants"].items())
    print(f"Exported {sizes} and the guard to {path.parent} (version {bundle['version']}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
