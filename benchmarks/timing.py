"""Latency and CPU description for the benchmarks: which CPU, and how fast each TFLite model runs on it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from helpers.tflite.runtime import TFLiteClassifier

# Instruction-set extensions that decide which XNNPACK kernels run, so how int8 and
# float32 compare: the same files ran int8 faster relative to float32 on a plain x86 CPU
# than on an AVX-512 Xeon, where float32 gains more (docs/design_decisions.md, notebook 06).
SPEED_RELEVANT_CPU_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16",  # x86
    "asimd", "asimddp", "i8mm", "sve", "sve2", "bf16",  # Arm (Features line)
)


def parse_cpuinfo(text: str) -> dict:
    """The CPU's name and its speed-relevant flags, from the text of Linux ``/proc/cpuinfo``.

    Returns:
        ``{"cpu_model": str | None, "cpu_flags": [...]}``: the first ``model name`` (x86)
        or ``Model`` / ``Hardware`` line (Arm), and those of
        :data:`SPEED_RELEVANT_CPU_FLAGS` on the first ``flags`` / ``Features`` line, in
        that tuple's order. Missing lines give ``None`` and ``[]``.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("model") or fields.get("hardware") or None
    present = set((fields.get("flags") or fields.get("features") or "").split())
    return {"cpu_model": model, "cpu_flags": [flag for flag in SPEED_RELEVANT_CPU_FLAGS if flag in present]}


def cpu_description(cpuinfo_path: str | os.PathLike = "/proc/cpuinfo") -> dict:
    """:func:`parse_cpuinfo` of this machine; ``None`` and ``[]`` where there is no cpuinfo (macOS, Windows)."""
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
    except OSError:
        text = ""  # the benchmark's "processor" field (platform.processor()) still names the CPU
    return parse_cpuinfo(text)


def time_invocations(classifier: TFLiteClassifier, runs: int) -> np.ndarray:
    """Milliseconds of ``runs`` back-to-back ``invoke()`` calls on the current input."""
    import time

    durations = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = time.perf_counter_ns()
        classifier.invoke()
        durations[i] = (time.perf_counter_ns() - start) / 1e6
    return durations


def interleaved_latency(
    classifiers: dict[str, TFLiteClassifier],
    image: np.ndarray,
    runs: int = 200,
    warmup: int = 20,
    block: int = 10,
) -> dict[str, np.ndarray]:
    """Latency samples (ms) for several models, measured round-robin in blocks.

    Models are timed in alternating blocks of ``block`` runs rather than one after
    the other, so a change in machine load (shared CPU) hits all of them alike and
    their ratios stay trustworthy.

    Args:
        classifiers: {name: classifier}.
        image: one (S, S, 3) raw 0-255 image fed to every model.
        runs: timed runs per model (after ``warmup`` untimed ones).
    """
    if runs < 1 or warmup < 0 or block < 1:
        raise ValueError(f"Need runs >= 1, warmup >= 0 and block >= 1, got {runs}, {warmup}, {block}.")
    for classifier in classifiers.values():
        classifier.set_input(classifier.prepare_input(image[np.newaxis]))
        time_invocations(classifier, warmup)
    samples = {name: [] for name in classifiers}
    done = 0
    while done < runs:
        count = min(block, runs - done)
        for name, classifier in classifiers.items():
            samples[name].append(time_invocations(classifier, count))
        done += count
    return {name: np.concatenate(parts) for name, parts in samples.items()}


def latency_summary(samples_ms: np.ndarray) -> dict[str, float]:
    samples_ms = np.asarray(samples_ms)
    return {"median": float(np.median(samples_ms)), "p90": float(np.percentile(samples_ms, 90)),
            "mean": float(np.mean(samples_ms)), "min": float(np.min(samples_ms)), "runs": len(samples_ms)}
