"""Why MobileNetV2: measure it against other ImageNet classifiers (notebook 10).

For each network of :data:`ARCHITECTURES`, built by ``keras.applications`` with random
weights (``weights=None``: no download; sizes and speed do not depend on the weights,
accuracy does, so none is measured here), :func:`measure_network` records:

* parameters (``count_params``);
* multiply-adds of one forward pass (:func:`multiply_adds`): counted layer by layer
  for convolutions, depthwise convolutions and fully connected layers, the convention
  of the MobileNetV2 paper ("300 M multiply-adds" at 224 x 224); batch normalization,
  activations, pooling and additions are left out (a small share);
* the size of the float32 and the full-integer int8 ``.tflite`` files;
* single-thread latency of one image with the LiteRT interpreter: median and 95th
  percentile over timed runs after warm-up runs.

The published ImageNet top-1 accuracy of each network (:data:`TOP1_SOURCE`) is a
fixed fact carried beside the measurements, never measured here.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers import data
from helpers.model import add_head
from helpers.tflite.exporting import converter_options, model_target, quiet_quantizer
from helpers.tflite.runtime import TensorInfo, load_interpreter, to_input_dtype

REFERENCE = "MobileNetV2"
CLAIMED_RATIO = 100  # the "100x smaller" claim this comparison checks
TOP1_SOURCE = ("Keras Applications table, https://keras.io/api/applications/ (ImageNet validation set, "
               "single centre crop at the native input size)")
# MobileNetV2 paper (Sandler et al. 2018, Table 6): alpha 1.0 at 224 x 224.
MOBILENETV2_PAPER_MULTIPLY_ADDS = 300e6
MOBILENETV2_PAPER_PARAMETERS = 3.4e6


@dataclass(frozen=True)
class Architecture:
    """A ``keras.applications`` network: its native input size and its published ImageNet top-1."""

    name: str  # the keras.applications function, e.g. "MobileNetV2"
    native_size: int  # input height = width it was trained at
    top1: float  # published ImageNet top-1 accuracy, percent (TOP1_SOURCE)
    paper: str  # where the architecture was published


ARCHITECTURES = {architecture.name: architecture for architecture in (
    Architecture("MobileNetV2", 224, 71.3, "https://arxiv.org/abs/1801.04381"),
    Architecture("VGG16", 224, 71.3, "https://arxiv.org/abs/1409.1556"),
    Architecture("ResNet50", 224, 74.9, "https://arxiv.org/abs/1512.03385"),
    Architecture("InceptionV3", 299, 77.9, "https://arxiv.org/abs/1512.00567"),
    Architecture("EfficientNetB0", 224, 77.1, "https://arxiv.org/abs/1905.11946"),
    Architecture("DenseNet121", 224, 75.0, "https://arxiv.org/abs/1608.06993"),
)}


def architecture(name: str) -> Architecture:
    """The entry of :data:`ARCHITECTURES` called ``name``; ValueError listing the known names otherwise."""
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown network {name!r}: choose from {list(ARCHITECTURES)}.")
    return ARCHITECTURES[name]


def build_network(name: str, image_size: int | None = None, head: bool = False):
    """A randomly initialised ``keras.applications`` network, ``(B, S, S, 3)`` in.

    Args:
        name: a key of :data:`ARCHITECTURES`.
        image_size: input height = width; ``None`` for the network's native size.
        head: ``False``: the ImageNet classifier (``include_top=True``, 1000 classes,
            ``(B, 1000)`` out). ``True``: the base without its top, global average
            pooling and this project's head (dropout, one unit, sigmoid; ``(B, 1)``
            out), the shape of the pneumonia classifier.
    """
    import keras

    entry = architecture(name)
    size = entry.native_size if image_size is None else int(image_size)
    if size < 32:
        raise ValueError(f"image_size must be at least 32 pixels (the networks downsample 32x), got {size}.")
    constructor = getattr(keras.applications, entry.name)
    if not head:
        return constructor(weights=None, include_top=True, classes=1000, input_shape=(size, size, 3))
    base = constructor(weights=None, include_top=False, input_shape=(size, size, 3), pooling="avg")
    probability = add_head(base.output)  # (B, 1)
    return keras.Model(base.input, probability, name=f"{entry.name.lower()}_pneumonia_head")


# --------------------------------------------------------------------------- #
# Multiply-adds, layer by layer
# --------------------------------------------------------------------------- #
def _positions(shape) -> int:
    """Output positions of a layer: the product of its output shape without batch and channels."""
    dimensions = [-1 if d is None else int(d) for d in shape[1:-1]]
    if any(d <= 0 for d in dimensions):
        raise ValueError(f"Output shape {tuple(shape)} has an unknown size: build the model with a fixed "
                         "input_shape (e.g. (224, 224, 3)) before counting multiply-adds.")
    return math.prod(dimensions)


def layer_multiply_adds(layer) -> int:
    """Multiply-adds of one call of ``layer`` (0 for a layer that is neither convolution nor dense).

    Each weight of a convolution kernel is used once per output position: a Conv2D
    with a (k, k, C_in, C_out) kernel on an H x W output does ``H * W * k * k * C_in *
    C_out`` multiply-adds, a depthwise (k, k, C, 1) kernel ``H * W * k * k * C``, a
    Dense (C_in, C_out) kernel ``C_in * C_out`` per input row. Biases are not counted.
    """
    import keras

    kinds = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
             keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    if isinstance(layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
        positions = _positions(layer.output.shape)
        return positions * (int(np.prod(layer.depthwise_kernel.shape)) + int(np.prod(layer.pointwise_kernel.shape)))
    if isinstance(layer, kinds):
        return _positions(layer.output.shape) * int(np.prod(layer.kernel.shape))
    return 0


def _leaf_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):  # a nested model: count the layers inside it
            yield from _leaf_layers(layer)
        else:
            yield layer


def multiply_adds_by_kind(model) -> dict[str, int]:
    """Multiply-adds of one forward pass of one image, by layer class (``{"Conv2D": ..., "Dense": ...}``)."""
    counts: dict[str, int] = {}
    for layer in _leaf_layers(model):
        count = layer_multiply_adds(layer)
        if count:
            kind = type(layer).__name__
            counts[kind] = counts.get(kind, 0) + count
    return counts


def multiply_adds(model) -> int:
    """Multiply-adds of one forward pass of one image (convolutions and dense layers; see the module doc)."""
    return sum(multiply_adds_by_kind(model).values())


def parameters_by_kind(model) -> dict[str, int]:
    """Parameters by layer class, e.g. how many of VGG16's live in its Dense layers."""
    counts: dict[str, int] = {}
    for layer in _leaf_layers(model):
        count = int(layer.count_params())
        if count:
            kind = type(layer).__name__
            counts[kind] = counts.get(kind, 0) + count
    return counts


# --------------------------------------------------------------------------- #
# TFLite files and their latency
# --------------------------------------------------------------------------- #
def convert(model, variant: str, path: str | os.PathLike, calibration_images: np.ndarray | None = None) -> Path:
    """Write ``model`` as a ``variant`` (``"float32"`` or ``"int8"``) ``.tflite`` at ``path``; returns the path.

    ``model.export(format="litert")`` with the project's converter settings
    (:func:`helpers.tflite.converter_options`): float32 as it is; int8 full-integer
    (every op in int8, uint8 pixels in, float out), calibrated on ``calibration_images``
    (N, S, S, 3) 0-255. A fixed batch of one image.
    """
    import tensorflow as tf

    if variant not in ("float32", "int8"):
        raise ValueError(f"variant must be 'float32' or 'int8', got {variant!r}.")
    path, temporary = model_target(path)
    options = converter_options(variant, calibration_images)
    _, height, width, channels = model.input_shape
    signature = [tf.TensorSpec((1, height, width, channels), tf.float32, name="image")]
    logger = tf.get_logger()  # the SavedModel writer logs "Assets written to <temporary folder>" at INFO
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with quiet_quantizer(), warnings.catch_warnings():
            # uint8 pixels in without given input statistics: the calibration sets them (scale 1, zero point 0).
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            model.export(str(temporary), format="litert", input_signature=signature, verbose=False, **options)
    finally:
        logger.setLevel(level)
    temporary.replace(path)
    return path


def latency_ms(path: str | os.PathLike, runs: int = 30, warmup: int = 3, num_threads: int = 1,
               seed: int = 0) -> dict[str, float]:
    """Time ``runs`` invocations of the ``.tflite`` at ``path`` on one random image, after ``warmup`` untimed ones.

    Returns:
        ``{"median_ms", "p95_ms", "runs", "num_threads"}``; each time covers
        ``invoke()`` only (the input is set once: no decoding or copying).
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}.")
    interpreter = load_interpreter(path, num_threads=num_threads)
    info = TensorInfo.from_details(interpreter.get_input_details()[0])
    pixels = np.random.default_rng(seed).uniform(0, 255, size=info.shape).astype(np.float32)  # (1, S, S, 3)
    interpreter.set_tensor(info.index, to_input_dtype(info, pixels))
    for _ in range(warmup):
        interpreter.invoke()
    times = np.empty(runs)
    for index in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times[index] = (time.perf_counter() - start) * 1e3
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95)),
            "runs": runs, "num_threads": num_threads}


def calibration_pixels(examples, image_size: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` real films resized to ``image_size``: (N, S, S, 3) float32 0-255, for int8 calibration."""
    subset = examples.head(count, seed=seed)
    return data.decode_images(subset, image_size=image_size, progress=False)


# --------------------------------------------------------------------------- #
# One network, then all of them
# --------------------------------------------------------------------------- #
def measure_network(name: str, image_size: int | None = None, calibration_images: np.ndarray | None = None,
                    runs: int = 30, warmup: int = 3, int8: bool = True, num_threads: int = 1,
                    directory: str | os.PathLike | None = None) -> dict:
    """Build, count, convert and time one network; returns one row of the comparison.

    Args:
        name: a key of :data:`ARCHITECTURES`.
        image_size: input size; ``None`` for the native one.
        calibration_images: (N, S, S, 3) 0-255 at that size, for int8 (required when ``int8``).
        runs, warmup, num_threads: see :func:`latency_ms`.
        int8: also convert and time the full-integer int8 model.
        directory: where the ``.tflite`` files are kept; ``None``: a temporary folder,
            deleted afterwards (VGG16's float32 file alone is over 500 MB).
    """
    import keras

    entry = architecture(name)
    size = entry.native_size if image_size is None else int(image_size)
    if int8 and calibration_images is None:
        raise ValueError("int8 needs calibration_images: (N, S, S, 3) 0-255 pixels at the network's input size.")
    if calibration_images is not None and int8 and tuple(np.shape(calibration_images)[1:3]) != (size, size):
        raise ValueError(f"calibration_images are {np.shape(calibration_images)[1:3]}, the network takes "
                         f"({size}, {size}): resize them (calibration_pixels) first.")
    start = time.perf_counter()
    model = build_network(name, size)
    row = {"network": name, "image_size": size, "top1": entry.top1, "parameters": int(model.count_params()),
           "multiply_adds": multiply_adds(model)}
    row["build_s"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="cxr-architectures-") as scratch:
        folder = Path(directory) if directory is not None else Path(scratch)
        for variant in ("float32", "int8") if int8 else ("float32",):
            start = time.perf_counter()
            path = convert(model, variant, folder / f"{name.lower()}_{size}_{variant}.tflite", calibration_images)
            row[f"{variant}_convert_s"] = time.perf_counter() - start
            row[f"{variant}_bytes"] = path.stat().st_size
            timing = latency_ms(path, runs=runs, warmup=warmup, num_threads=num_threads)
            row[f"{variant}_median_ms"], row[f"{variant}_p95_ms"] = timing["median_ms"], timing["p95_ms"]
    keras.backend.clear_session()  # free the graph before the next network
    return row


def measure_networks(names: Sequence[str], image_size: int | None = None, calibration=None,
                     int8_networks: Sequence[str] = (), runs: int = 30, warmup: int = 3,
                     progress: bool = True) -> list[dict]:
    """:func:`measure_network` for each of ``names``; rows in the same order.

    Args:
        calibration: a function ``size -> (N, S, S, 3) 0-255`` pixels, called for each
            network in ``int8_networks`` (e.g. ``lambda size: calibration_pixels(train, size, 8)``).
        int8_networks: the networks whose int8 model is also converted and timed.
    """
    unknown = [name for name in (*names, *int8_networks) if name not in ARCHITECTURES]
    if unknown:
        raise ValueError(f"Unknown networks {unknown}: choose from {list(ARCHITECTURES)}.")
    if int8_networks and calibration is None:
        raise ValueError("int8_networks needs calibration: a function from input size to 0-255 pixels.")
    rows = []
    for name in names:
        size = ARCHITECTURES[name].native_size if image_size is None else image_size
        int8 = name in int8_networks
        row = measure_network(name, size, calibration(size) if int8 else None, runs=runs, warmup=warmup, int8=int8)
        rows.append(row)
        if progress:
            times = ", ".join(f"{key[:-2].replace('_', ' ')} {value:.0f} s" for key, value in row.items()
                              if key.endswith("_s"))
            print(f"{name:>14}: {times}", flush=True)
    return rows


def head_rows(names: Sequence[str], image_size: int = 224) -> list[dict]:
    """Parameters and multiply-adds of each network as the pneumonia classifier (no top, 1-unit head)."""
    import keras

    rows = []
    for name in names:
        model = build_network(name, image_size, head=True)
        rows.append({"network": name, "image_size": image_size, "parameters": int(model.count_params()),
                     "multiply_adds": multiply_adds(model)})
        keras.backend.clear_session()
    return rows


# --------------------------------------------------------------------------- #
# Tables, ratios, the sentence and the figure
# --------------------------------------------------------------------------- #
MEASURES = {  # row key -> how the table and the sentence name it
    "parameters": "parameters",
    "float32_bytes": "float32 file",
    "int8_bytes": "int8 file",
    "multiply_adds": "multiply-adds",
    "float32_median_ms": "float32 latency",
    "int8_median_ms": "int8 latency",
}


def comparison_table(rows: Sequence[dict]):
    """The rows as a readable table: millions, megabytes and milliseconds, one network per line."""
    import pandas as pd

    table = pd.DataFrame([{
        "network": row["network"],
        "input": row["image_size"],
        "params (M)": row["parameters"] / 1e6,
        "multiply-adds (G)": row["multiply_adds"] / 1e9,
        "float32 (MB)": row["float32_bytes"] / 1e6,
        "int8 (MB)": row["int8_bytes"] / 1e6 if "int8_bytes" in row else float("nan"),
        "float32 median (ms)": row["float32_median_ms"],
        "float32 p95 (ms)": row["float32_p95_ms"],
        "int8 median (ms)": row.get("int8_median_ms", float("nan")),
        "int8 p95 (ms)": row.get("int8_p95_ms", float("nan")),
        "ImageNet top-1 (%)": row["top1"],
    } for row in rows])
    return table.set_index("network")


def ratios(rows: Sequence[dict], reference: str = REFERENCE) -> dict[str, dict[str, float]]:
    """``{network: {measure: network's value / reference's value}}`` for every other network.

    A ratio of 40 for ``"parameters"`` means 40 times as many parameters as the
    reference; measures missing on either side (int8 not converted) are left out.
    """
    by_name = {row["network"]: row for row in rows}
    if reference not in by_name:
        raise ValueError(f"The reference {reference!r} is not among the measured networks {list(by_name)}.")
    base = by_name[reference]
    result = {}
    for name, row in by_name.items():
        if name == reference:
            continue
        result[name] = {measure: row[measure] / base[measure] for measure in MEASURES
                        if measure in row and measure in base and base[measure]}
    return result


def claim_sentence(rows: Sequence[dict], reference: str = REFERENCE, claim: float = CLAIMED_RATIO) -> str:
    """A sentence on how much of "``claim``x smaller" holds, from the measured ratios.

    States the largest and smallest ratio of each measure (with the networks), and
    whether any of them reaches ``claim``.
    """
    table = ratios(rows, reference)
    if not table:
        raise ValueError("At least one network besides the reference is needed to compare.")
    parts, reached = [], []
    for measure, label in MEASURES.items():
        values = {name: entry[measure] for name, entry in table.items() if measure in entry}
        if not values:
            continue
        largest, smallest = max(values, key=values.get), min(values, key=values.get)
        if largest == smallest:
            parts.append(f"{label} {_times(values[largest])} ({largest})")
        else:
            parts.append(f"{label} {_times(values[smallest])} ({smallest}) to {_times(values[largest])} ({largest})")
        reached += [f"{label} vs {name}" for name, value in values.items() if value >= claim]
    largest_gap = max(max(entry.values()) for entry in table.values())
    verdict = (f"\"{claim:g}x smaller\" holds for none of them: the largest gap is {_times(largest_gap)}."
               if not reached else f"\"{claim:g}x smaller\" holds only for {', '.join(reached)}.")
    others = next(iter(table)) if len(table) == 1 else f"the other {len(table)} networks"
    return f"Against {others}, {reference} is smaller or faster by: {'; '.join(parts)}. {verdict}"


def _times(ratio: float) -> str:
    """A ratio as people say it: ``1.5x``, ``12x``."""
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:.0f}x"


def plot_size_vs_latency(rows: Sequence[dict], variant: str = "float32"):
    """Scatter of ``variant`` file size (MB, log) against single-thread median latency (ms, log), top-1 as labels."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogFormatter

    if variant not in ("float32", "int8"):
        raise ValueError(f"variant must be 'float32' or 'int8', got {variant!r}.")
    shown = [row for row in rows if f"{variant}_bytes" in row]
    if not shown:
        raise ValueError(f"No row has a {variant} model: convert at least one network to {variant}.")
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in shown:
        size_mb, median = row[f"{variant}_bytes"] / 1e6, row[f"{variant}_median_ms"]
        axes.scatter(size_mb, median, s=60, color="tab:blue" if row["network"] == REFERENCE else "tab:grey")
        axes.annotate(f"{row['network']}\n{row['top1']:.1f}% top-1", (size_mb, median),
                      textcoords="offset points", xytext=(6, 4), fontsize=8)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.margins(0.2)  # room for the labels
    for axis in (axes.xaxis, axes.yaxis):  # plain numbers (20, not 2 x 10^1); minor ones where the span is short
        axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    axes.set_xlabel(f"{variant} .tflite size (MB, log scale)")
    axes.set_ylabel("median latency, one image, 1 thread (ms, log)")
    axes.set_title("Size against speed (labels: published ImageNet top-1)")
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    return figure


def comparison_record(rows: Sequence[dict], head: Sequence[dict], settings: dict) -> dict:
    """What ``architectures/comparison.json`` holds: the rows, the ratios, the sentence and the settings."""
    return {
        "rows": list(rows),
        "pneumonia_head": list(head),
        "ratios_to_reference": ratios(rows) if len(rows) > 1 else {},
        "claim": claim_sentence(rows) if len(rows) > 1 else "",
        "reference": REFERENCE,
        "top1_source": TOP1_SOURCE,
        "settings": dict(settings),
    }
