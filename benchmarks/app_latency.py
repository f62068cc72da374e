"""Benchmark the web app's screening path against the explorer's Keras Grad-CAM path.

    python benchmarks/app_latency.py                  # every test film, 40 through Keras
    python benchmarks/app_latency.py --films 40 --keras-films 8    # quick

Writes ``<artifacts>/app_benchmark.json``:

* ``p50_ms`` / ``p95_ms`` -- end to end per film on the int8 one-pass model, as the app
  runs it (:meth:`helpers.screening.Screener.screen_and_overlay`: decode, model, OOD
  check, decision, heat map, overlay PNG), over real test films (their encoded bytes);
* ``keras_p50_ms`` / ``speedup_vs_keras`` -- the explorer's path
  (:meth:`helpers.explorer.Explainer.explain_bytes`: Keras prediction + Grad-CAM +
  OOD features) on the same films, in the same run;
* ``cold_start_s`` and ``rss_mb`` -- a fresh process that imports the screening
  path, loads the engine and screens 20 films (time to the first verdict; peak
  resident memory after all 20, ``VmHWM``), and whether it imported TensorFlow;
* ``decisions`` -- the app's decision at the threshold on every test film against
  notebook 04's Keras decisions (``predictions/test.csv``), with the number of int8
  flips notebook 06's parity table recorded;
* ``ood`` -- test films the app's OOD check refuses (features from the int8 model).
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

from helpers import config  # noqa: E402
from helpers.jsonio import write_json  # noqa: E402

BENCHMARK_FILE_NAME = "app_benchmark.json"
COLD_START_FILMS = 20
COLD_START_SCRIPT = """
import time, resource, sys
start = time.perf_counter()
from pathlib import Path
from helpers import screening
screener = screening.Screener.load("int8")
files = sorted(Path(sys.argv[1]).iterdir())
first = screener.screen_and_overlay(files[0].read_bytes(), files[0].name)[0]
cold_start = time.perf_counter() - start
decided = sum(screener.screen_and_overlay(path.read_bytes(), path.name)[0].accepted for path in files)
try:  # peak resident set of this process; ru_maxrss would include the parent's at fork time
    peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except OSError:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print({"cold_start_s": cold_start, "first_accepted": first.accepted, "decided": decided, "films": len(files),
       "rss_mb": peak_kb / 1024, "imported_tensorflow": "tensorflow" in sys.modules})
"""


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def cold_start(films: list[tuple[str, bytes]]) -> dict:
    """Run :data:`COLD_START_SCRIPT` in a fresh interpreter on ``films`` written to a temporary folder."""
    import ast

    with tempfile.TemporaryDirectory(prefix="cxr-app-benchmark-") as folder:
        for index, (name, content) in enumerate(films):
            (Path(folder) / f"{index:03d}_{Path(name).name}").write_bytes(content)
        completed = subprocess.run([sys.executable, "-c", COLD_START_SCRIPT, folder], capture_output=True, text=True,
                                   cwd=str(config.PROJECT_ROOT), check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"The cold-start process failed:\n{completed.stderr[-2000:]}")
    return ast.literal_eval(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from helpers import data, explorer, ood, operating_point, predict, screening, tflite
    from helpers import model as model_lib

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=None, help="test films timed through the app path (default: all)")
    parser.add_argument("--keras-films", type=int, default=40, help="of those, films timed through Keras Grad-CAM")
    parser.add_argument("--warmup", type=int, default=5)
    arguments = parser.parse_args(argv)

    test = data.load_splits()["test"]
    if arguments.films:
        test = test.head(arguments.films, seed=config.DEFAULT_SEED)
    films = [(path, bytes(content)) for path, content in zip(test.paths, test.image_bytes)]
    screener = screening.Screener.load("int8")
    for name, content in films[: arguments.warmup]:
        screener.screen_and_overlay(content, name)
    app_ms, results = [], []
    for name, content in films:
        start = time.perf_counter()
        result, _ = screener.screen_and_overlay(content, name)
        app_ms.append((time.perf_counter() - start) * 1e3)
        results.append(result)

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
    point = screener.point
    refused = np.array([not result.accepted for result in results])  # (N,) refused by the OOD check
    keras_decisions = point.predicted(keras["probability"].to_numpy()[~refused])
    app_decisions = point.predicted(np.array([result.probability for result in results if result.accepted]))
    flips = int(np.sum(app_decisions != keras_decisions))
    # the same pipeline on the float32 one-pass model: flips it shows come from decoding (Pillow vs TensorFlow)
    float32 = screening.Screener.load("float32")
    float32_results = [float32.screen_bytes(content, name) for name, content in films]
    float32_decided = np.array([result.accepted for result in float32_results]) & ~refused
    float32_flips = int(np.sum(point.predicted(np.array([r.probability for r, keep in zip(float32_results, float32_decided)
                                                         if keep])) !=
                               point.predicted(keras["probability"].to_numpy()[float32_decided])))
    parity = tflite.read_parity({"int8": tflite.tflite_path("int8")})
    documented = parity.get("int8", {}).get("disagreements")
    cold = cold_start(films[:COLD_START_FILMS])
    report = {
        "engine": screener.engine.name, "model_file": screener.engine.path.name, "model_version": screener.engine.version,
        "films": len(films), "p50_ms": percentile(app_ms, 50), "p95_ms": percentile(app_ms, 95),
        "mean_ms": float(np.mean(app_ms)),
        "stages_p50_ms": {stage: percentile([r.timings_ms.get(stage, 0.0) for r in results if r.accepted], 50)
                          for stage in ("decode", "model", "ood", "heatmap", "overlay")},
        "keras_films": len(keras_films), "keras_p50_ms": percentile(keras_ms, 50), "keras_p95_ms": percentile(keras_ms, 95),
        "speedup_vs_keras": percentile(keras_ms, 50) / percentile(app_ms, 50),
        **{key: cold[key] for key in ("cold_start_s", "rss_mb", "imported_tensorflow")},
        "cold_start_films": cold["films"],
        "decisions": {"films_decided": int(np.sum(~refused)), "flips_vs_keras_notebook_04": flips,
                      "int8_disagreements_in_parity_json": documented,
                      "float32_one_pass_flips_vs_keras": float32_flips,
                      "note": "decisions at the threshold (before the refer band) on films the app decided"},
        "ood": {"test_films_refused": int(refused.sum()), "refusal_rate": float(refused.mean()),
                "refused": [result.name for result in results if not result.accepted][:20]},
        "machine": {"cpu": tflite.cpu_description(), "python": platform.python_version()},
        "targets": {"p95_ms<=60": percentile(app_ms, 95) <= 60.0,
                    "speedup_vs_keras>=5": percentile(keras_ms, 50) / percentile(app_ms, 50) >= 5.0,
                    "cold_start_s<=3": cold["cold_start_s"] <= 3.0, "rss_mb<=400": cold["rss_mb"] <= 400.0},
    }
    path = write_json(report, config.artifacts_dir() / BENCHMARK_FILE_NAME)
    print(json.dumps({key: report[key] for key in ("p50_ms", "p95_ms", "keras_p50_ms", "speedup_vs_keras",
                                                   "cold_start_s", "rss_mb", "imported_tensorflow", "decisions",
                                                   "targets")}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
