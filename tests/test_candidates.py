"""Model candidates: the selection record on a small model, the selection rule, once-only test scoring."""

import numpy as np
import pytest

from helpers import candidates, jsonio, training
from tests.conftest import tiny_examples


def record(auc, balanced_accuracy):
    return {"validation": {"roc_auc": {"value": auc}},
            "shift_summary": {"mean_balanced_accuracy": balanced_accuracy}}


@pytest.fixture
def candidate_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(candidates, "candidate_dir", lambda name: tmp_path / name)

    def write(name, content):
        (tmp_path / name).mkdir(exist_ok=True)
        jsonio.write_json(content, tmp_path / name / "selection.json")
    return write


def test_the_rule_takes_the_best_shift_score_among_candidates_close_enough_on_validation(candidate_folders, tmp_path):
    candidate_folders("reference", record(0.9990, 0.90))
    candidate_folders("head_only", record(0.9960, 0.97))  # best under shift, but loses 0.003 ROC-AUC
    candidate_folders("weight_averaging", record(0.9985, 0.93))
    table = jsonio.read_json_object(candidates.write_table(tmp_path / "candidates.json"))
    assert table["chosen"] == "weight_averaging"
    assert "0.002" in table["rule"] and set(table["candidates"]) == {"reference", "head_only", "weight_averaging"}


def test_the_table_needs_the_reference(candidate_folders, tmp_path):
    candidate_folders("weight_averaging", record(0.99, 0.9))
    with pytest.raises(FileNotFoundError, match="reference"):
        candidates.write_table(tmp_path / "candidates.json")


def test_unknown_candidates_are_refused():
    with pytest.raises(ValueError, match="Unknown candidate"):
        candidates.candidate_config("bigger_model")
    assert candidates.candidate_config("weight_averaging").average_from_epoch == 3
    assert candidates.candidate_config("head_only").finetune_epochs == 0


def test_selection_record_reads_every_shift_at_the_validation_threshold():
    import keras

    keras.utils.set_random_seed(0)
    model = training.build_and_compile(training.TrainingConfig(), weights=None, image_size=32)
    examples = tiny_examples(count=12, size=32)
    images = np.random.default_rng(0).uniform(0, 255, (12, 32, 32, 3)).astype(np.float32)
    result = candidates.selection_record(model, examples, images)
    assert 0.0 <= result["threshold"] <= 1.0 and result["temperature"] > 0
    assert set(result["validation"]) == {"roc_auc", "specificity", "recall"}
    assert "clean" not in result["shifts"] and "text burnt in" in result["shifts"]
    summary = result["shift_summary"]
    assert summary["worst_specificity"] <= summary["mean_specificity"]
    assert summary["worst_recall"] <= summary["mean_recall"]


def test_shortcut_record_runs_checks_two_to_four_on_a_small_model():
    import keras

    keras.utils.set_random_seed(0)
    model = training.build_and_compile(training.TrainingConfig(), weights=None, image_size=32)
    examples = tiny_examples(count=8, size=32)
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    result = candidates.shortcut_record(model, examples, images, threshold=0.5, maps_per_outcome=2)
    assert set(result["decisions_changed"]) == {"border blanked", "marker regions blanked"}
    assert result["decisions_changed"]["border blanked"]["films"] == 8
    mapped = [result["thorax_heat"][name]["films"] for name in ("TP", "FP", "FN", "TN")]
    assert max(mapped) <= 2 and sum(mapped) >= 2  # at most maps_per_outcome films of each outcome
