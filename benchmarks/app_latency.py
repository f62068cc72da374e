"""Benchmark the web app's screening path against the explorer's Keras path (the same pipeline, Keras engine).

    python benchmarks/app_latency.py                  # every test film, 40 through Keras
    python benchmarks/app_latency.py --films 40 --keras-films 8    # quick

Writes ``<artifacts>/app_benchmark.json``:

* ``p50_ms`` / ``p95_ms`` -- end to end per film on the int8 one-pass model, as the app
  runs it (:meth:`helpers.screening.Screener.screen_and_overlay`: decode, model, OOD
  check, decision, heat map, overlay PNG), over real test films (their encoded bytes);
* ``keras_p50_ms`` / ``speedup_vs_keras`` -- the explorer's path
  (:meth:`helpers.explorer.Explainer.explain_bytes`: the same pipeline with the Keras
  one-pass engine, :class:`helpers.one_pass.KerasOnePassEngine`) on the same films, in the same run;
* ``cold_start_s`` and ``rss_mb`` -- measured in the app's own process: a fresh
  interpreter that imports the screening path, loads the engine and screens (time
  to the first verdict; peak resident memory, ``VmHWM``, after 20 films), and
  whether it imported TensorFlow; the latencies above come from that process too;
* ``decisions`` -- the app's decision at the threshold on every test film against
  notebook 04's Keras decisions (``predictions/test.csv``), with the number of int8
  flips notebook 06's parity table recorded;
* ``ood`` -- test films the app's guard refuses, and those it refers as unlike the training
  population (features from the int8 model);
* ``profile`` -- ``"full"`` for all test films on a full run's model (``make report`` uses
  only such a file), else ``"smoke"`` or ``"shortened"`` (:func:`helpers.report.benchmark_profile`).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install needed

from helpers import config
from helpers.jsonio import write_json
from helpers.report import benchmark_profile
from helpers.targets import TARGETS

BENCHMARK_FILE_NAME = "app_benchmark.json"
DEFAULT_KERAS_FILMS = 40  # fewer (or --films) make a shortened benchmark, which make report does not use
APP_TARGETS = ("app_p95_ms", "app_speedup_vs_keras", "app_cold_start_s", "app_rss_mb")
COLD_START_FILMS = 20
# The app's side runs in a fresh interpreter, as the app does: no TensorFlow in the process.
APP_PROCESS_SCRIPT = """
import json, resource, sys, time
start = time.perf_counter()
from pathlib import Path
from helpers import screening

def peak_mb():  # peak resident set of this process (ru_maxrss would include the parent's at fork time)
    try:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

screener = screening.Screener.load(sys.argv[3])
files = sorted(Path(sys.argv[1]).iterdir())
screener.screen_and_overlay(files[0].read_bytes(), files[0].name)
record = {"cold_start_s": time.perf_counter() - start, "imported_tensorflow": "tensorflow" in sys.modules,
          "engine": screener.engine.name, "model_file": screener.engine.path.name,
          "model_version": screener.engine.version, "films": []}
for path in files[:int(sys.argv[4])]:  # warm-up
    screener.screen_and_overlay(path.read_bytes(), path.name)
for index, path in enumerate(files):
    content = path.read_bytes()
    begin = time.perf_counter()
    result, _ = screener.screen_and_overlay(content, path.name)
    record["films"].append({"total_ms": (time.perf_counter() - begin) * 1e3, "accepted": result.accepted,
                            "guard": result.guard, "probability": result.probability, "stages_ms": result.timings_ms})
    if index + 1 == COLD_START_FILMS:
        record[f"rss_mb_after_{COLD_START_FILMS}"] = peak_mb()
record["rss_mb_end"] = peak_mb()
Path(sys.argv[2]).write_text(json.dumps(record))
""".replace("COLD_START_FILMS", str(COLD_START_FILMS))


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def app_process(films: list[tuple[str, bytes]], variant: str = "int8", warmup: int = 5) -> dict:
    """Run :data:`APP_PROCESS_SCRIPT` in a fresh interpreter on ``films`` (written, in order, to a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="cxr-app-benchmark-") as folder:
        films_dir = Path(folder) / "films"
        films_dir.mkdir()
        for index, (name, content) in enumerate(films):
            (films_dir / f"{index:04d}_{Path(name).name}").write_bytes(content)
        output = Path(folder) / "record.json"
        completed = subprocess.run([sys.executable, "-c", APP_PROCESS_SCRIPT, str(films_dir), str(output), variant,
                                    str(warmup)], capture_output=True, text=True, cwd=str(config.PROJECT_ROOT),
                                   check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"The app process failed:\n{completed.stderr[-2000:]}")
        return json.loads(output.read_text())


def main(argv: list[str] | None = None) -> int:
    from benchmarks import timing
    from helpers import data, explorer, ood, operating_point, predict, screening, tflite
    from helpers import model as model_lib

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=None, help="test films timed through the app path (default: all)")
    parser.add_argument("--keras-films", type=int, default=DEFAULT_KERAS_FILMS,
                        help="of those, films timed through the Keras engine")
    parser.add_argument("--warmup", type=int, default=5)
    arguments = parser.parse_args(argv)

    test = data.load_splits()["test"]
    if arguments.films:
        test = test.head(arguments.films, seed=config.DEFAULT_SEED)
    films = [(path, bytes(content)) for path, content in zip(test.paths, test.image_bytes)]
    app = app_process(films, "int8", arguments.warmup)
    app_ms = [film["total_ms"] for film in app["films"]]

    model = model_lib.load_model()
    explainer = explorer.Explainer(model, operating_point.load_operating_point(), ood.OODDetector.load())
    keras_films = films[: arguments.keras_films]
    for name, content in keras_films[: arguments.warmup]:
        explainer.explain_bytes(content, name)
    keras_ms = []
    for name, content in keras_films:
        start = time.perf_counter()
        explainer.explain_bytes(content, name)
        keras_ms.append((time.perf_counter() - start) * 1e3)

    keras = predict.read_predictions_for(list(test.paths), "test")  # notebook 04's Keras probabilities
    if keras is None:
        raise SystemExit(f"No Keras predictions for these films in {predict.predictions_path('test')}: "
                         "run notebook 04 first (make run).")
    point = screening.Screener.load("int8").point
    refused = np.array([not film["accepted"] for film in app["films"]])  # (N,) refused by the OOD check
    keras_decisions = point.predicted(keras["probability"].to_numpy()[~refused])
    app_decisions = point.predicted(np.array([film["probability"] for film in app["films"] if film["accepted"]]))
    flips = int(np.sum(app_decisions != keras_decisions))
    # the same pipeline on the float32 one-pass model: flips it shows come from decoding (Pillow vs TensorFlow)
    float32 = app_process(films, "float32", arguments.warmup)
    float32_decided = np.array([film["accepted"] for film in float32["films"]]) & ~refused
    float32_flips = int(np.sum(
        point.predicted(np.array([film["probability"]
                                  for film, keep in zip(float32["films"], float32_decided) if keep]))
        != point.predicted(keras["probability"].to_numpy()[float32_decided])))
    parity = tflite.read_parity({"int8": tflite.tflite_path("int8")})
    documented = parity.get("int8", {}).get("disagreements")
    decided = [film for film in app["films"] if film["accepted"]]
    report = {
        "profile": benchmark_profile(
            shortened=arguments.films is not None or arguments.keras_films < DEFAULT_KERAS_FILMS),
        "engine": app["engine"], "model_file": app["model_file"], "model_version": app["model_version"],
        "films": len(films), "p50_ms": percentile(app_ms, 50), "p95_ms": percentile(app_ms, 95),
        "mean_ms": float(np.mean(app_ms)),
        "stages_p50_ms": {stage: percentile([film["stages_ms"].get(stage, 0.0) for film in decided], 50)
                          for stage in ("decode", "model", "ood", "heatmap", "overlay")},
        "keras_films": len(keras_films),
        "keras_p50_ms": percentile(keras_ms, 50), "keras_p95_ms": percentile(keras_ms, 95),
        "speedup_vs_keras": percentile(keras_ms, 50) / percentile(app_ms, 50),
        "cold_start_s": app["cold_start_s"], "rss_mb": app[f"rss_mb_after_{COLD_START_FILMS}"],
        "rss_mb_after_all_films": app["rss_mb_end"], "imported_tensorflow": app["imported_tensorflow"],
        "cold_start_films": COLD_START_FILMS,
        "decisions": {"films_decided": int(np.sum(~refused)), "flips_vs_keras_notebook_04": flips,
                      "int8_disagreements_in_parity_json": documented,
                      "float32_one_pass_flips_vs_keras": float32_flips,
                      "note": "decisions at the threshold (before the refer band) on films the app decided"},
        "ood": {"test_films_refused": int(refused.sum()), "refusal_rate": float(refused.mean()),
                "test_films_referred_unlike_population": sum(film["guard"] == "unlike_population"
                                                             for film in app["films"]),
                "refused": [name for (name, _), film in zip(films, app["films"]) if not film["accepted"]][:20]},
        "machine": {"cpu": timing.cpu_description(), "python": platform.python_version()},
        "method": "app side in a fresh interpreter without TensorFlow (as the app runs), 2 threads, after "
                  "a warm-up; Keras side in this process",
    }
    report["targets"] = {key: TARGETS[key].met(report[TARGETS[key].field]) for key in APP_TARGETS}
    path = write_json(report, config.artifacts_dir() / BENCHMARK_FILE_NAME)
    print(json.dumps({key: report[key] for key in ("p50_ms", "p95_ms", "keras_p50_ms", "speedup_vs_keras",
                                                   "cold_start_s", "rss_mb", "imported_tensorflow", "decisions",
                                                   "targets")}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
