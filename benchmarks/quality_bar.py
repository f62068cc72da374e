"""Quality bar: the trained model's test figures at the threshold chosen on validation.

    python benchmarks/quality_bar.py           # evaluate <artifacts>/model/pneumonia_mobilenetv2.keras
    python benchmarks/quality_bar.py --train   # first train: notebooks 02 + 03, full profile, timed
    make quality                               # the first form

Configuration comes from the environment like everywhere else (``CXR_DATA_DIR``,
``KERAS_HOME``, ``CXR_ARTIFACTS_DIR``). The model is the one notebook 03 saved.

The decision threshold is chosen on the patient-level **validation** split only: the
highest threshold that keeps validation recall >= 0.98 (``--min-recall``). The test
split is then scored once at that threshold and never used to choose anything.

Targets (issue 3), on the official 624 test images: ROC-AUC >= 0.965, recall >= 0.97,
accuracy >= 0.90 (stretch: accuracy >= 0.94, ROC-AUC >= 0.98), and full-profile
training (notebooks 02 + 03) within 30 minutes on 2 CPU cores. This is a benchmark,
not a test: it prints the figures and whether each target is met; ``--strict`` makes
the exit status 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(PROJECT_ROOT))

from helpers.targets import TARGETS as PROJECT_TARGETS

TARGETS = {name: PROJECT_TARGETS[f"test_{name}"].bar for name in ("roc_auc", "recall", "accuracy")}
STRETCH = {"roc_auc": 0.98, "accuracy": 0.94}
TRAINING_BUDGET_S = 30 * 60


def train_full_profile() -> dict[str, float]:
    """Run notebooks 02 and 03 in the full profile; {notebook: seconds}."""
    from helpers import notebooks

    return notebooks.run_all("full", ["02", "03"])


def score_split(model, examples, desc: str):
    """P(PNEUMONIA) for every image of ``examples``: float64 (N,)."""
    from helpers import data, training

    images = data.decode_images_cached(examples, image_size=int(model.input_shape[1]))  # (N, S, S, 3) uint8
    return training.predict_in_batches(model, images, desc=desc).reshape(-1).astype("float64")


def metrics_at(labels, probabilities, threshold: float) -> dict:
    """helpers.evaluation.binary_metrics (the project's metric definitions)."""
    from helpers import evaluation

    return evaluation.binary_metrics(labels, probabilities, threshold)


def quality_bar(min_recall: float = 0.98, model_path: str | None = None) -> dict:
    """Choose the threshold on validation, score test once; returns the report."""
    from helpers import data, training
    from helpers import model as model_lib

    model = model_lib.load_model(model_path)
    splits = data.load_splits()
    validation, test = splits["validation"], splits["test"]
    validation_probabilities = score_split(model, validation, "validation")
    threshold = training.recall_threshold(validation.labels, validation_probabilities, min_recall)
    test_probabilities = score_split(model, test, "test")
    return {
        "model": str(model_path or model_lib.default_model_path()),
        "rule": f"highest threshold with validation recall >= {min_recall:g}",
        "threshold": threshold,
        "validation": metrics_at(validation.labels, validation_probabilities, threshold),
        "test": metrics_at(test.labels, test_probabilities, threshold),
        "test_images": len(test),
        "validation_images": len(validation),
    }


def training_seconds_from_record() -> dict | None:
    from helpers import config

    path = config.artifacts_dir("model", create=False) / "training_record.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return {"profile": record.get("profile"), "cache_s": record.get("cache_seconds"),
            **record.get("seconds_per_phase", {})}


def print_report(report: dict, training_timings: dict | None) -> bool:
    """Print the figures and targets; True when every target is met."""
    test = report["test"]
    print(f"\nModel: {report['model']}")
    print(f"Threshold {report['threshold']:.4f} ({report['rule']}; "
          f"validation recall {report['validation']['recall']:.4f}, "
          f"specificity {report['validation']['specificity']:.4f})")
    print(f"\nTest ({report['test_images']} images) at that threshold:")
    all_met = True
    for name in ("roc_auc", "pr_auc", "recall", "precision", "accuracy", "specificity", "f1"):
        line = f"  {name:<12} {test[name]:.4f}"
        if name in TARGETS:
            met = test[name] >= TARGETS[name]
            all_met &= met
            line += (f"   target >= {TARGETS[name]:.3f} ({PROJECT_TARGETS[f'test_{name}'].history()}): "
                     f"{'met' if met else 'MISSED'}")
            if name in STRETCH:
                line += f"   (stretch >= {STRETCH[name]:.2f}: {'met' if test[name] >= STRETCH[name] else 'not yet'})"
        print(line)
    print(f"  confusion    tp={test['tp']} fp={test['fp']} tn={test['tn']} fn={test['fn']}")
    if training_timings:
        total = training_timings.get("total_s")
        if total is not None:
            met = total <= TRAINING_BUDGET_S
            all_met &= met
            print(f"\nTraining (02 + 03, full profile): {total / 60:.1f} min   "
                  f"target <= {TRAINING_BUDGET_S / 60:.0f} min: {'met' if met else 'MISSED'}")
        print(f"Training timings: {json.dumps(training_timings)}")
    return all_met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="store_true",
                        help="first run notebooks 02 and 03 in the full profile (timed)")
    parser.add_argument("--min-recall", type=float, default=0.98,
                        help="validation recall the threshold must keep (default 0.98)")
    parser.add_argument("--model", default=None, help="a .keras file (default: the one notebook 03 saved)")
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    timings = None
    if args.train:
        start = time.perf_counter()
        timings = {name: round(seconds, 1) for name, seconds in train_full_profile().items()}
        timings["total_s"] = round(time.perf_counter() - start, 1)
    report = quality_bar(args.min_recall, args.model)
    recorded = training_seconds_from_record()
    if timings is None and recorded:
        timings = {"from_training_record": recorded}
    all_met = print_report(report, timings)
    if args.json:
        from helpers.training import save_json

        save_json({**report, "training_timings": timings, "all_targets_met": all_met}, args.json)
    return 1 if args.strict and not all_met else 0


if __name__ == "__main__":
    sys.exit(main())
