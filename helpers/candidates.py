"""Model candidates, compared where a new hospital's shift can show, never on test.

The official test set comes from a different population than the training films (the
two-sample test of notebook 04), and clean validation, drawn from the training
population, is nearly perfect for every reasonable model. So candidates are compared on

* **validation** (patients held out from the official train split): ROC-AUC and the
  specificity at the project's operating point (the highest threshold keeping
  recall >= 0.98), with patient-level bootstrap intervals;
* **acquisition shifts** of the same validation films
  (:func:`helpers.augment.acquisition_shifts`: noise, sharpening and blur, JPEG, gamma
  and a harder contrast curve, zoom, collimation bands, text burnt into other corners),
  each read at the validation threshold: the mean and the worst specificity and recall.

The selection rule, fixed before any candidate is trained: the highest mean balanced
accuracy over the acquisition shifts, among candidates whose validation ROC-AUC is
within 0.002 of the reference recipe's (the best single epoch). Each candidate's test set is
scored at most **once** (``--score-test``), after the choice is written down, logged in the
test-set ledger, zero-shot at its validation operating point; nothing is chosen from it.

Run ``python -m helpers.candidates NAME`` to train (or reuse) candidate NAME and write
its selection record to ``<artifacts>/candidates/NAME/selection.json``;
``python -m helpers.candidates --table`` writes every record to
``results/candidates.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from helpers import augment, config, data, evaluation, gradcam, jsonio, ledger, shortcuts, training
from helpers import model as model_lib
from helpers.operating_point import called_pneumonia, logit, sigmoid

MIN_RECALL = 0.98
AUC_TOLERANCE = 0.002  # a candidate may lose at most this much validation ROC-AUC to the reference
BOOTSTRAP_ROUNDS = 1000
PROBABILITY_FLOOR = 1e-7  # probabilities are clipped to [floor, 1 - floor] before taking logits (float32 outputs)
RESULTS_FILE = config.PROJECT_ROOT / "results" / "candidates.json"

# name -> (what it changes, TrainingConfig overrides of the defaults). "reference" is the defaults: the
# best single epoch, the project's recipe until weight averaging was chosen here (2026-12-06).
CANDIDATES = {
    "reference": ("the best single epoch: head, then blocks 11-16 with early stopping on validation loss", {}),
    "head_only": ("a linear probe: the head on frozen ImageNet features, no fine-tuning (Kumar et al. 2022: "
                  "fine-tuning can distort features that generalise)", {"finetune_epochs": 0}),
    "border_masked": ("the outer 12% of each side hidden inside the model (the inside's mean grey there), so "
                      "borders, collimation edges, markers and text cannot decide", {"border_mask": 0.12}),
    "weight_averaging": ("stochastic weight averaging: all 10 phase-2 epochs, the mean of epochs 3-10 kept "
                         "(SWAD, Cha et al. 2021)", {"average_from_epoch": 3}),
}


def candidate_dir(name: str) -> Path:
    return config.artifacts_dir(f"candidates/{name}")


def candidate_config(name: str) -> training.TrainingConfig:
    if name not in CANDIDATES:
        raise ValueError(f"Unknown candidate {name!r}; choose from {sorted(CANDIDATES)}.")
    imbalance = training.chosen_imbalance_strategy(config.artifacts_dir() / "imbalance" / "comparison.json")
    return dataclasses.replace(training.TrainingConfig(imbalance=imbalance, average_from_epoch=0),
                               **CANDIDATES[name][1])


def train_candidate(name: str, splits: dict, augmented_views: int = 4):
    """Train candidate ``name`` the way notebook 03 trains (same caches, views and seed) with the candidate's
    settings; returns the model."""
    cfg = candidate_config(name)
    config.set_seeds(cfg.seed)
    model = training.build_and_compile(cfg)
    train, validation = splits["train"], splits["validation"]
    train_activations = training.cached_activations(model, train, cfg.unfreeze_from)
    validation_activations = training.cached_activations(model, validation, cfg.unfreeze_from)
    views = training.cached_view_activations(model, train, cfg.unfreeze_from, views=augmented_views, seed=cfg.seed)
    result = training.train_two_phase(model, train_activations, train.labels, validation_activations,
                                      validation.labels, cfg, train_views=views, verbose=2)
    path = candidate_dir(name) / "model.keras"
    model.save(path)
    jsonio.write_json({"config": cfg.to_dict(), **result.summary()}, candidate_dir(name) / "training.json")
    return model


def load_candidate(name: str):
    path = candidate_dir(name) / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"No trained model for candidate {name!r} at {path}: run "
                                f"`python -m helpers.candidates {name}` first.")
    return model_lib.load_model(path)


def predict(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N,) P(pneumonia) of (N, 224, 224, 3) 0-255 images (cast to float32 chunk by chunk)."""
    return training.predict_in_batches(model, images, batch_size, progress=False).reshape(-1)


def _interval(labels, probabilities, threshold, groups, names) -> dict:
    return evaluation.bootstrap_metrics(labels, probabilities, threshold, n_resamples=BOOTSTRAP_ROUNDS,
                                        groups=groups, metric_names=names)


def selection_record(model, validation, images: np.ndarray, seed: int = config.DEFAULT_SEED) -> dict:
    """Validation and acquisition-shift figures of ``model`` (see the module docstring)."""
    labels = validation.labels.astype(int)
    groups = data.split_groups(validation)
    probabilities = predict(model, images)
    threshold = float(evaluation.choose_threshold(labels, probabilities, min_recall=MIN_RECALL))
    logits = logit(probabilities, epsilon=PROBABILITY_FLOOR)
    record = {
        "threshold": threshold,
        "temperature": float(evaluation.fit_temperature_to_arrays(labels, logits)),
        "validation": _interval(labels, probabilities, threshold, groups, ("roc_auc", "specificity", "recall")),
        "validation_log_loss": float(evaluation.negative_log_likelihood(labels, logits)),
        "shifts": {},
    }
    for index, (name, change) in enumerate(augment.acquisition_shifts().items()):
        if name == "clean":
            continue
        rng = np.random.default_rng([seed, index])
        changed = np.concatenate([predict(model, change(images[start:start + 256], rng))
                                  for start in range(0, len(images), 256)])
        metrics = evaluation.binary_metrics(labels, changed, threshold)
        record["shifts"][name] = {key: float(metrics[key]) for key in ("roc_auc", "specificity", "recall")}
    shifted = record["shifts"].values()
    record["shift_summary"] = {
        "mean_specificity": float(np.mean([row["specificity"] for row in shifted])),
        "worst_specificity": float(np.min([row["specificity"] for row in shifted])),
        "mean_recall": float(np.mean([row["recall"] for row in shifted])),
        "worst_recall": float(np.min([row["recall"] for row in shifted])),
        "mean_balanced_accuracy": float(np.mean([(row["specificity"] + row["recall"]) / 2 for row in shifted])),
    }
    return record


def shortcut_record(model, validation, images: np.ndarray, threshold: float, maps_per_outcome: int = 60,
                    seed: int = config.DEFAULT_SEED) -> dict:
    """Checks 2-4 of :mod:`helpers.shortcuts` for ``model`` on the validation films (check 1, the
    border-only classifier, does not depend on the model: notebook 05 runs it)."""
    labels = validation.labels.astype(int)

    def probabilities_of(batch):
        return model.predict_on_batch(np.asarray(batch, np.float32)).reshape(-1)

    probabilities = predict(model, images)
    outcomes = shortcuts.outcome_labels(labels, probabilities, threshold)
    rows = np.concatenate([gradcam.choose(np.flatnonzero(outcomes == name), maps_per_outcome, seed=seed)
                           for name in shortcuts.OUTCOMES])
    maps = gradcam.compute_gradcam(model, images[rows].astype(np.float32),
                                   target=called_pneumonia(probabilities[rows], threshold).astype(int))
    return {
        "decisions_changed": {
            "border blanked": shortcuts.decisions_changed(probabilities_of, images, labels, threshold,
                                                          shortcuts.blank_border, probabilities=probabilities),
            "marker regions blanked": shortcuts.decisions_changed(probabilities_of, images, labels, threshold,
                                                                  shortcuts.blank_marker_regions,
                                                                  probabilities=probabilities),
        },
        "thorax_heat": shortcuts.heat_inside_box(maps, outcomes[rows]),
    }


def test_record(model, test, threshold: float, temperature: float, why: str) -> dict:
    """The test set scored once, zero-shot at the validation operating point, logged in the ledger."""
    images = data.decode_images_cached(test)
    labels = test.labels.astype(int)
    probabilities = predict(model, images)
    logits = logit(probabilities, epsilon=PROBABILITY_FLOOR)
    calibrated = sigmoid(logits / temperature)
    ledger.record_test_scoring("model candidate: test metrics at its validation threshold", why, len(labels),
                               profile="full")
    return {
        "scored_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "why": why,
        "metrics": _interval(labels, probabilities, threshold, data.split_groups(test),
                             ("accuracy", "recall", "specificity", "roc_auc")),
        "ece": float(evaluation.expected_calibration_error(labels, calibrated)),
        "ece_uncalibrated": float(evaluation.expected_calibration_error(labels, probabilities)),
    }


def run(name: str, score_test_because: str | None = None, with_shortcuts: bool = False) -> dict:
    """Train (unless a model exists) and evaluate candidate ``name``; write its selection record."""
    splits = data.load_splits()
    path = candidate_dir(name) / "selection.json"
    record = jsonio.read_json_object(path) if path.is_file() else None
    if record is None:
        start = time.perf_counter()
        model = (load_candidate(name) if (candidate_dir(name) / "model.keras").is_file()
                 else train_candidate(name, splits))
        images = data.decode_images_cached(splits["validation"])
        record = {"name": name, "what": CANDIDATES[name][0], "config": candidate_config(name).to_dict(),
                  "commit": ledger.current_commit(),
                  "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  **selection_record(model, splits["validation"], images)}
        record["seconds"] = round(time.perf_counter() - start, 1)
        jsonio.write_json(record, path)
    if with_shortcuts and "shortcuts" not in record:
        record["shortcuts"] = shortcut_record(load_candidate(name), splits["validation"],
                                              data.decode_images_cached(splits["validation"]), record["threshold"])
        jsonio.write_json(record, path)
    if score_test_because:
        if "test" in record:
            raise ValueError(f"Candidate {name!r} was scored on test already ({record['test']['scored_utc']}): "
                             "each candidate is scored once.")
        record["test"] = test_record(load_candidate(name), splits["test"], record["threshold"],
                                     record["temperature"], score_test_because)
        jsonio.write_json(record, path)
    return record


def write_table(path: Path = RESULTS_FILE) -> Path:
    """Every candidate's selection record (and test record, where scored) in one JSON, and the choice."""
    records = {name: jsonio.read_json_object(candidate_dir(name) / "selection.json")
               for name in CANDIDATES if (candidate_dir(name) / "selection.json").is_file()}
    if "reference" not in records:
        raise FileNotFoundError("The reference candidate has no selection record: run "
                                "`python -m helpers.candidates reference` first.")
    reference_auc = records["reference"]["validation"]["roc_auc"]["value"]
    eligible = {name: record for name, record in records.items()
                if record["validation"]["roc_auc"]["value"] >= reference_auc - AUC_TOLERANCE}
    chosen = max(eligible, key=lambda name: eligible[name]["shift_summary"]["mean_balanced_accuracy"])
    rule = " ".join(__doc__.split("The selection rule, fixed before any candidate is trained: ")[1]
                    .split(" Each candidate's test set")[0].split())
    table = {"rule": rule, "chosen": chosen, "candidates": records}
    if "test" in records[chosen]:
        table["chosen_test"] = records[chosen]["test"]
    return jsonio.write_json(table, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"candidates to train and evaluate: {sorted(CANDIDATES)}")
    parser.add_argument("--score-test", metavar="WHY", help="also score the test set once, with this reason")
    parser.add_argument("--shortcuts", action="store_true",
                        help="also run the shortcut checks of the model on the validation films")
    parser.add_argument("--table", action="store_true", help=f"write {RESULTS_FILE.relative_to(config.PROJECT_ROOT)}")
    arguments = parser.parse_args(argv)
    for name in arguments.names:
        record = run(name, arguments.score_test, arguments.shortcuts)
        print(name, record["validation"]["roc_auc"], record["shift_summary"], record.get("test", {}).get("metrics"))
    if arguments.table:
        print("wrote", write_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
