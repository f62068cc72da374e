"""Parity with the Keras model (decisions, agreement, the ``parity.json`` record), and of two converted models."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers.evaluation import confusion_counts, metrics_from_counts
from helpers.jsonio import write_json
from helpers.operating_point import called_pneumonia
from helpers.targets import TARGETS, speedup_target
from helpers.tflite.paths import file_sha256, tflite_dir
from helpers.tflite.runtime import TFLiteClassifier, read_model_bytes


def decision_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, recall (sensitivity), specificity and precision at ``threshold``."""
    metrics = metrics_from_counts(**confusion_counts(np.asarray(labels).astype(np.int64),
                                                     np.asarray(probabilities).reshape(-1), threshold))
    return {name: metrics[name] for name in ("accuracy", "recall", "specificity", "precision")}


def parity(
    reference_probabilities: np.ndarray,
    probabilities: np.ndarray,
    labels: np.ndarray,
    threshold: float,
) -> dict[str, float]:
    """How closely one variant follows the Keras model on the same images.

    Args:
        reference_probabilities: (N,) Keras P(PNEUMONIA).
        probabilities: (N,) the variant's P(PNEUMONIA) on the same images.
        labels: (N,) 1 = PNEUMONIA.
        threshold: the operating point (from metrics.json).

    Returns:
        ``agreement`` (share of identical decisions), ``disagreements`` (count),
        ``max_abs_diff`` / ``mean_abs_diff`` of probabilities, and the variant's
        ``test_accuracy``, ``test_recall``, ``test_specificity``, ``test_precision``
        with ``accuracy_delta_points`` (variant - Keras, percentage points).
    """
    reference = np.asarray(reference_probabilities, dtype=np.float64).reshape(-1)
    candidate = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if not (len(reference) == len(candidate) == len(labels)) or len(labels) == 0:
        raise ValueError(f"Need as many reference probabilities ({len(reference)}) as probabilities "
                         f"({len(candidate)}) and labels ({len(labels)}), at least one.")
    same = called_pneumonia(reference, threshold) == called_pneumonia(candidate, threshold)
    difference = np.abs(reference - candidate)
    mine = decision_metrics(candidate, labels, threshold)
    theirs = decision_metrics(reference, labels, threshold)
    result = {
        "n_images": len(labels),
        "agreement": float(np.mean(same)),
        "disagreements": int(np.sum(~same)),
        "max_abs_diff": float(difference.max()),
        "mean_abs_diff": float(difference.mean()),
    }
    result.update({f"test_{name}": float(value) for name, value in mine.items()})
    result["accuracy_delta_points"] = 100.0 * (mine["accuracy"] - theirs["accuracy"])
    return result


def parity_table(
    reference_probabilities: np.ndarray,
    variant_probabilities: dict[str, np.ndarray],
    labels: np.ndarray,
    threshold: float,
    sizes: dict[str, int] | None = None,
):
    """One row per variant (plus a ``keras`` reference row): a pandas DataFrame."""
    import pandas as pd

    rows = {"keras": parity(reference_probabilities, reference_probabilities, labels, threshold)}
    for variant, probabilities in variant_probabilities.items():
        rows[variant] = parity(reference_probabilities, probabilities, labels, threshold)
    table = pd.DataFrame.from_dict(rows, orient="index")
    if sizes:
        table.insert(0, "size_mb", pd.Series({k: v / 1e6 for k, v in sizes.items()}))
    table.index.name = "variant"
    return table


@dataclass(frozen=True)
class PhoneModelTargets:
    """What the shipped phone models must meet (notebook 06 checks them after each conversion).

    Accuracy is one-sided: int8 may lose at most ``max_int8_accuracy_loss_points`` against
    Keras and may gain any amount. The speed target depends on the CPU: where float32 runs
    with AVX-512 it gains more from it than int8 does, so the target there is lower. The targets,
    and when each was set or restated, come from :data:`helpers.targets.TARGETS`.
    """

    max_int8_size_mb: float = TARGETS["int8_size_mb"].bar
    min_int8_speedup: float = TARGETS["int8_speedup"].bar  # one thread, vs float32
    min_int8_speedup_avx512: float = TARGETS["int8_speedup_avx512"].bar
    min_int8_agreement: float = TARGETS["int8_agreement"].bar  # share of films with the same decision as Keras
    max_int8_accuracy_loss_points: float = -TARGETS["int8_accuracy_delta"].bar
    min_float16_agreement: float = TARGETS["float16_agreement"].bar

    def speedup_bar(self, cpu_flags) -> float:
        """The int8 speed-up target on a CPU with these ``/proc/cpuinfo`` flags."""
        return self.min_int8_speedup_avx512 if "avx512f" in set(cpu_flags or ()) else self.min_int8_speedup


def target_table(benchmark: dict, int8_validation: dict, int8_test: dict, float16_test: dict,
                 targets: PhoneModelTargets = PhoneModelTargets()):
    """A pandas DataFrame (target, measured, met, history), one row per target.

    ``history``: when the target was set and, if restated, when and why (:mod:`helpers.targets`).

    Args:
        benchmark: ``benchmark.json`` of ``benchmarks/tflite_benchmark.py`` (sizes, speed, CPU flags).
        int8_validation, int8_test, float16_test: :func:`parity` results (``agreement``,
            ``accuracy_delta_points``) on validation, where the int8 method was chosen, and on test.
    """
    import pandas as pd

    int8 = benchmark["variants"]["int8"]
    speedup_bar = targets.speedup_bar(benchmark.get("machine", {}).get("cpu_flags"))
    loss = targets.max_int8_accuracy_loss_points
    speed_history = speedup_target(benchmark.get("machine", {}).get("cpu_flags")).history()
    rows = [
        (f"int8 size <= {targets.max_int8_size_mb:g} MB", f"{int8['size_mb']:.2f} MB",
         int8["size_mb"] <= targets.max_int8_size_mb, TARGETS["int8_size_mb"].history()),
        (f"int8 speed-up >= {speedup_bar:g}x (1 thread, this CPU)", f"{int8['speedup_vs_float32_1thread']:.2f}x",
         int8["speedup_vs_float32_1thread"] >= speedup_bar, speed_history),
    ]
    for split, result in (("validation", int8_validation), ("test", int8_test)):
        rows += [
            (f"int8 agreement >= {targets.min_int8_agreement:.1%} ({split})", f"{result['agreement']:.2%}",
             result["agreement"] >= targets.min_int8_agreement, TARGETS["int8_agreement"].history()),
            (f"int8 accuracy >= Keras - {loss:g} pts ({split})",
             f"{result['accuracy_delta_points']:+.2f} pts", result["accuracy_delta_points"] >= -loss,
             TARGETS["int8_accuracy_delta"].history()),
        ]
    rows.append((f"float16 agreement >= {targets.min_float16_agreement:.1%} (test)",
                 f"{float16_test['agreement']:.2%}", float16_test["agreement"] >= targets.min_float16_agreement,
                 TARGETS["float16_agreement"].history()))
    return pd.DataFrame(rows, columns=["target", "measured", "met", "history"])


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: write None instead."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


PARITY_FILE_NAME = "parity.json"


def write_parity(results: dict[str, dict], paths: dict[str, Path], threshold: float,
                 directory: str | os.PathLike | None = None, one_pass: dict | None = None,
                 profile: str | None = None) -> Path:
    """Write {variant: parity(...)} with each model's SHA-256 to ``tflite/parity.json``.

    ``one_pass``: the one-pass models' checks (``heatmap_spearman_<variant>`` and
    friends, from notebook 06), written as they are under ``"one_pass"``. ``profile``:
    the run's profile (``"full"`` or ``"smoke"``); ``make report`` uses only a full one.
    """
    directory = Path(directory) if directory is not None else tflite_dir()
    record = {"profile": profile, "threshold": float(threshold), "variants": {
        variant: {"model_sha256": file_sha256(paths[variant]),
                  **{k: finite_or_none(v) for k, v in result.items()}}
        for variant, result in results.items() if variant in paths}}
    if one_pass is not None:
        record["one_pass"] = one_pass
    return write_json(record, directory / PARITY_FILE_NAME)


def read_parity(paths: dict[str, Path], directory: str | os.PathLike | None = None) -> dict[str, dict]:
    """Parity results from ``tflite/parity.json`` for the variants whose file is unchanged.

    A variant is left out when parity.json is missing or its SHA-256 no longer
    matches the ``.tflite`` (the model was converted again since).
    """
    directory = Path(directory) if directory is not None else tflite_dir(create=False)
    path = directory / PARITY_FILE_NAME
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    found = {}
    for variant, result in record.get("variants", {}).items():
        if (variant in paths and Path(paths[variant]).is_file()
                and result.get("model_sha256") == file_sha256(paths[variant])):
            found[variant] = result
    return found


# --------------------------------------------------------------------------- #
# Two conversions of the same model
# --------------------------------------------------------------------------- #
def _plain(value):
    """A flatbuffer object (``ModelT`` parts) as plain Python values, comparable with ``==``."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "__dict__"):
        return {key: _plain(item) for key, item in sorted(vars(value).items())}
    return value


def _graph_description(content: bytes) -> list[tuple[str, object]]:
    """``(where, what)`` for every op and tensor of a ``.tflite``: what a model computes, without its metadata.

    Ops: op code, version, options, input and output tensors. Tensors: name, type, shape,
    quantization (scales, zero points, axis) and constant values (the weights). Left
    out: the ``metadata`` table (the converter's ``CONVERSION_METADATA`` and
    ``min_runtime_version``, our embedded JSON), whose order may differ between two
    conversions of the same model.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    codes = [(max(code.builtinCode, code.deprecatedBuiltinCode), code.customCode, code.version)
             for code in model.operatorCodes]
    description = [("subgraphs", len(model.subgraphs))]
    for graph_index, graph in enumerate(model.subgraphs):
        description += [(f"subgraph {graph_index} inputs", _plain(graph.inputs)),
                        (f"subgraph {graph_index} outputs", _plain(graph.outputs))]
        for index, operator in enumerate(graph.operators):
            description.append((f"subgraph {graph_index} op {index}", (
                codes[operator.opcodeIndex], _plain(operator.inputs), _plain(operator.outputs),
                operator.builtinOptionsType, _plain(operator.builtinOptions))))
        for index, tensor in enumerate(graph.tensors):
            quantization = tensor.quantization
            buffer = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
            description.append((f"subgraph {graph_index} tensor {index} ({(tensor.name or b'').decode()})", (
                (tensor.name or b"").decode(), tensor.type, _plain(tensor.shape),
                None if quantization is None else (_plain(quantization.scale), _plain(quantization.zeroPoint),
                                                   quantization.quantizedDimension),
                b"" if buffer is None else np.asarray(buffer, dtype=np.uint8).tobytes())))
    return description


def compare_models(first: str | os.PathLike, second: str | os.PathLike, images: np.ndarray | None = None) -> dict:
    """Whether two ``.tflite`` files hold the same model: bytes, graph and weights, outputs.

    Two conversions of one Keras model with the same settings give the same graph; the
    bytes may still differ where the converter orders its metadata entries differently
    (the QuantizationDebugger's model and ``TFLiteConverter.convert()``'s do).

    Args:
        first, second: the two models.
        images: (N, S, S, 3) raw 0-255 pixels to run both on, or None to skip.

    Returns:
        ``same_bytes``, ``same_graph`` (every op, tensor type, shape, quantization
        parameter and weight equal: see :func:`_graph_description`), ``first_difference``
        (where the graphs first differ, or None), ``input`` / ``output`` (dtype, shape,
        scale and zero point of each model, as pairs), and ``max_abs_diff`` of their
        probabilities on ``images`` (None without images).
    """
    first, second = Path(first), Path(second)
    contents = read_model_bytes(first), read_model_bytes(second)
    descriptions = [_graph_description(content) for content in contents]
    first_difference = next((where for (where, one), (_, other) in zip(*descriptions) if one != other), None)
    if first_difference is None and len(descriptions[0]) != len(descriptions[1]):
        first_difference = f"number of ops and tensors ({len(descriptions[0])} vs {len(descriptions[1])})"
    classifiers = TFLiteClassifier(first), TFLiteClassifier(second)
    result = {
        "same_bytes": contents[0] == contents[1],
        "same_graph": first_difference is None,
        "first_difference": first_difference,
        "input": [(c.input.dtype.name, c.input.shape, c.input.scale, c.input.zero_point) for c in classifiers],
        "output": [(c.output.dtype.name, c.output.shape, c.output.scale, c.output.zero_point) for c in classifiers],
        "max_abs_diff": None,
    }
    if images is not None:
        probabilities = [classifier.predict(images) for classifier in classifiers]  # 2 x (N,) float32
        result["max_abs_diff"] = float(np.max(np.abs(probabilities[0] - probabilities[1])))
    return result
