"""Benchmark the four TFLite variants: size, latency (1 and N threads), peak memory, parity.

    python benchmarks/tflite_benchmark.py                 # 200 timed runs per variant and thread count
    python benchmarks/tflite_benchmark.py --runs 5 --warmup 2 --parity-images 40   # smoke (CI)

Reads ``<artifacts>/tflite/pneumonia_mobilenetv2_<variant>.tflite`` (written by
notebooks/06_tflite_conversion.ipynb) and writes ``<artifacts>/tflite/benchmark.json``
with one entry per variant: ``size_bytes``, ``latency_ms_1thread_median``,
``latency_ms_1thread_p90``, the same for N threads, ``peak_rss_mb``, ``agreement``,
``test_accuracy`` and more.

Method. All variants are timed in the same process and run, on the same real test
image, round-robin in blocks of 10 invocations (``helpers.timing.interleaved_latency``),
so a load change on a shared machine hits every variant alike and the ratios hold.
Peak memory is measured in a fresh subprocess per variant (``ru_maxrss`` after loading
and 10 invocations) so the variants do not inflate each other. Agreement and test
accuracy come from ``tflite/parity.json`` when notebook 06 wrote it for exactly these
files (SHA-256 checked); otherwise they are computed here against the Keras model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install needed

from benchmarks import timing
from helpers import tflite
from helpers.jsonio import write_json
from helpers.report import benchmark_profile

BENCHMARK_FILE_NAME = "benchmark.json"
DEFAULT_RUNS = 200  # fewer make a shortened benchmark, which make report does not use


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                        help="timed invocations per variant and thread count (>= 200 for the report)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed invocations first")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                        help="thread count of the multi-thread measurement")
    parser.add_argument("--parity-images", type=int, default=None,
                        help="test images for agreement/accuracy when parity.json cannot be reused (default: all)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="folder with the .tflite files (default <artifacts>/tflite)")
    parser.add_argument("--output", type=Path, default=None, help="JSON to write (default <model-dir>/benchmark.json)")
    parser.add_argument("--memory-probe", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- #
# Peak memory, one subprocess per model
# --------------------------------------------------------------------------- #
def peak_rss_mb() -> float:
    """This process's peak resident memory (MiB).

    ``VmHWM`` from /proc (Linux) is reset by exec, unlike ``ru_maxrss``, which a child
    inherits from the process that started it (a 700 MB notebook kernel, say).
    """
    import resource

    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    scale = 1024 if sys.platform != "darwin" else 2**20  # ru_maxrss: KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def memory_probe(path: Path) -> dict:
    """Run in a child process: RSS before loading, peak RSS after load + 10 invocations."""
    import psutil

    before_mb = psutil.Process().memory_info().rss / 2**20
    classifier = tflite.TFLiteClassifier(path, num_threads=1)
    image = np.full((1, *classifier.input.shape[1:]), 128, dtype=np.float32)  # (1, S, S, 3) mid-grey
    classifier.set_input(classifier.prepare_input(image))
    for _ in range(10):
        classifier.invoke()
    peak_mb = peak_rss_mb()
    return {"rss_before_load_mb": before_mb, "peak_rss_mb": peak_mb, "peak_rss_increase_mb": peak_mb - before_mb}


def measure_memory(path: Path) -> dict:
    result = subprocess.run([sys.executable, __file__, "--memory-probe", str(path)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"Memory probe of {path.name} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- #
# Agreement and accuracy
# --------------------------------------------------------------------------- #
def benchmark_image() -> np.ndarray:
    """One real test X-ray (224, 224, 3) float32 0-255 (latency does not depend on content)."""
    from helpers import data

    test = data.load_examples("test")
    return data.load_image(test.image_bytes[0])


def compute_parity(paths: dict[str, Path], image_count: int | None) -> dict[str, dict]:
    """Agreement and test metrics of each variant vs the Keras model (when parity.json is stale)."""
    from helpers import data
    from helpers import model as model_lib
    from helpers.operating_point import load_operating_point

    threshold = load_operating_point().threshold
    test = data.load_examples("test").head(image_count)
    images = data.decode_images_cached(test)  # (N, 224, 224, 3) uint8
    keras_probabilities = model_lib.load_model().predict(images.astype(np.float32), batch_size=32, verbose=0)[:, 0]
    results = {}
    for variant, path in paths.items():
        probabilities = tflite.TFLiteClassifier(path, num_threads=os.cpu_count()).predict(images)
        results[variant] = tflite.parity(keras_probabilities, probabilities, test.labels, threshold)
        results[variant]["threshold"] = threshold
    return results


# --------------------------------------------------------------------------- #
# The benchmark
# --------------------------------------------------------------------------- #
def run_benchmark(args: argparse.Namespace) -> dict:
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        raise ValueError("--runs and --threads must be >= 1 and --warmup >= 0.")
    model_dir = args.model_dir or tflite.tflite_dir(create=False)
    paths = {variant: tflite.tflite_path(variant, model_dir) for variant in tflite.VARIANTS}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"Missing TFLite models {missing}. Convert them first: run "
                                "notebooks/06_tflite_conversion.ipynb (python -m helpers.notebooks --only 06).")
    image = benchmark_image()  # (224, 224, 3) float32 0-255
    latency = {}
    thread_counts = sorted({1, args.threads})
    for threads in thread_counts:
        classifiers = {variant: tflite.TFLiteClassifier(path, num_threads=threads) for variant, path in paths.items()}
        start = time.perf_counter()
        samples = timing.interleaved_latency(classifiers, image, runs=args.runs, warmup=args.warmup)
        print(f"latency, {threads} thread(s): {time.perf_counter() - start:.0f} s", flush=True)
        latency[threads] = {variant: timing.latency_summary(values) for variant, values in samples.items()}
        del classifiers

    parity = tflite.read_parity(paths, model_dir)
    parity_source = "parity.json (notebook 06)"
    if set(parity) != set(paths):
        parity, parity_source = compute_parity(paths, args.parity_images), "computed by this script"

    variants = {}
    for variant, path in paths.items():
        entry = {"file": path.name, "size_bytes": path.stat().st_size, "size_mb": path.stat().st_size / 1e6}
        for threads in thread_counts:
            summary = latency[threads][variant]
            for key in ("median", "p90", "mean", "min"):
                entry[f"latency_ms_{threads}thread_{key}"] = summary[key]
        multi = latency[max(thread_counts)][variant]
        entry.update({"multithread_threads": max(thread_counts),
                      "latency_ms_multithread_median": multi["median"], "latency_ms_multithread_p90": multi["p90"]})
        entry.update(measure_memory(path))
        result = parity[variant]
        entry.update({"agreement": result["agreement"], "test_accuracy": result["test_accuracy"],
                      "accuracy_delta_points": result.get("accuracy_delta_points"),
                      "max_abs_diff": result.get("max_abs_diff"), "parity_images": result.get("n_images")})
        variants[variant] = entry
    reference = variants["float32"]["latency_ms_1thread_median"]
    for entry in variants.values():
        entry["speedup_vs_float32_1thread"] = reference / entry["latency_ms_1thread_median"]
    return {
        "profile": benchmark_profile(shortened=args.runs < DEFAULT_RUNS),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    **timing.cpu_description(),  # int8 / float32 ratios depend on these
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "settings": {"runs": args.runs, "warmup": args.warmup, "thread_counts": thread_counts,
                     "interleaved_block": 10, "parity_source": parity_source,
                     "runtime": tflite.interpreter_class().__module__},
        "variants": variants,
    }


def summary_lines(report: dict) -> list[str]:
    multi = report["settings"]["thread_counts"][-1]
    machine = report["machine"]
    lines = [f"CPU: {machine['cpu_model'] or machine['processor']} "
             f"({' '.join(machine['cpu_flags']) or 'flags unknown'}), {machine['cpu_count']} cores"]
    lines += [f"{'variant':>13} {'MB':>6} {'1t med':>7} {'1t p90':>7} {f'{multi}t med':>7} {'speedup':>7} "
              f"{'peak MB':>7} {'agree':>7} {'acc':>6}"]
    for variant, e in report["variants"].items():
        lines.append(f"{variant:>13} {e['size_mb']:6.2f} {e['latency_ms_1thread_median']:7.2f} "
                     f"{e['latency_ms_1thread_p90']:7.2f} {e['latency_ms_multithread_median']:7.2f} "
                     f"{e['speedup_vs_float32_1thread']:6.2f}x {e['peak_rss_mb']:7.0f} "
                     f"{e['agreement']:7.2%} {e['test_accuracy']:6.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_probe is not None:
        print(json.dumps(memory_probe(args.memory_probe)))
        return 0
    report = run_benchmark(args)
    output = args.output or (args.model_dir or tflite.tflite_dir()) / BENCHMARK_FILE_NAME
    write_json(report, output)
    print("\n".join(summary_lines(report)))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
