"""README blocks rewritten from the results files."""

from __future__ import annotations

import pytest

from helpers import report

BENCHMARK = {
    "films": 624, "p50_ms": 14.2, "p95_ms": 21.7, "keras_films": 40, "keras_p50_ms": 95.0, "speedup_vs_keras": 6.7,
    "stages_p50_ms": {"decode": 2.0, "model": 7.0, "ood": 1.5, "heatmap": 0.5, "overlay": 3.0},
    "cold_start_s": 0.44, "rss_mb": 180.4, "imported_tensorflow": False,
    "decisions": {"films_decided": 618, "flips_vs_keras_notebook_04": 4, "int8_disagreements_in_parity_json": 3.0,
                  "float32_one_pass_flips_vs_keras": 1},
    "ood": {"test_films_refused": 6}, "machine": {"cpu": {"cpu_model": "AMD EPYC", "cpu_flags": ["avx2", "fma"]}},
}


def test_only_the_named_block_is_rewritten():
    text = "intro\n<!-- begin:app -->\nold\n<!-- end:app -->\n<!-- begin:other -->\nkeep\n<!-- end:other -->\n"
    rewritten = report.replace_block(text, "app", "new line")
    assert rewritten == "intro\n<!-- begin:app -->\nnew line\n<!-- end:app -->\n<!-- begin:other -->\nkeep\n<!-- end:other -->\n"
    with pytest.raises(ValueError, match="begin:missing"):
        report.replace_block(text, "missing", "x")


def test_app_block_states_the_measured_figures():
    block = report.app_block(BENCHMARK, {"one_pass": {"n_heatmap_images": 100, "heatmap_spearman_float32": 1.0,
                                                      "heatmap_spearman_float16": 0.9994,
                                                      "heatmap_spearman_int8": 0.982}})
    assert "median 14 ms, p95 22 ms" in block and "6.7x faster" in block
    assert "4 of 618 differ (float32 one pass: 1; notebook 06's int8 parity: 3)" in block
    assert "int8 0.982" in block
    assert "AMD EPYC (avx2, fma)" in block


def test_reliability_block_has_a_row_per_input_kind_and_the_guard_table():
    reliability = {
        "fuzz": {"inputs": 5000, "decided": 100, "refused": 4900, "unhandled": 0, "slowest_s": 0.12,
                 "slowest_input": "fuzz_1.gif", "by_kind": {"truncate": {"decided": 0, "refused": 2500, "unhandled": 0},
                                                             "bit_flip": {"decided": 100, "refused": 2400, "unhandled": 0}}},
        "bit16_agreement": 0.995, "bit16_films_compared": 618, "dicom_agreement": 0.993, "dicom_copies_compared": 1843,
        "guard": {"test films, inverted": {"chest_xray": 1, "not_xray": 0, "wrong_way_round": 623, "unlike_population": 0}},
    }
    ood_report = {"orientation": {"n_test": 624, "inverted_detected": 1.0, "upside_down_detected": 0.998,
                                  "rotated_detected": 1.0, "upright_false_alarm": 0.0016},
                  "false_rejection_rate_test": 0.0016, "unlike_population_rate_test": 0.006,
                  "rejection_rate_non_xray": 1.0}
    block = report.reliability_block(reliability, ood_report)
    assert "| truncate | 2,500 | 0 | 2,500 | 0 |" in block and "| **all** | **5,000** | 100 | 4,900 | **0** |" in block
    assert "99.5% of 618" in block and "99.3% of 1843" in block
    assert "| test films, inverted | 1 | 0 | 623 | 0 |" in block
    assert "upside down 99.8%" in block and "upright films flagged 0.16%" in block


def test_the_readme_has_the_reliability_block():
    assert "<!-- begin:reliability -->" in report.README.read_text()


def test_the_readme_has_the_app_block():
    assert "<!-- begin:app -->" in report.README.read_text()


def test_new_site_block_has_every_row_and_the_targets():
    entry = {metric: {"mean": 0.9, "p05": 0.88, "p95": 0.92} for metric in
             ("accuracy", "recall", "specificity", "ece", "coverage")}
    record = {"zero_shot": entry, "label_free": entry, "calibrated": {"20": entry, "50": entry},
              "targets": {"k=20 accuracy mean >= 0.92": False, "k=20 recall mean >= 0.96": True},
              "label_free_depth_control": {"chosen": 20, "shifts": {"4": 0.07, "all": -0.95}, "size": 400,
                                           "tolerance": 0.25},
              "label_free_whole_site": {"darker machine, zero-shot": {"accuracy": 0.9, "specificity": 1.0, "recall": 0.8},
                                        "darker machine, label-free": {"accuracy": 0.5, "specificity": 0.1,
                                                                       "recall": 0.96}}}
    block = report.new_site_block(record)
    assert "first 20 BatchNorm layers" in block and "k = 50 per class | 0.900 (0.880-0.920)" in block
    assert "k=20 accuracy mean >= 0.92 **missed**" in block and "k=20 recall mean >= 0.96 met" in block
    assert "4 layers +0.07, all layers -0.95" in block
    assert "simulated darker machine site (whole site): accuracy 0.900 → 0.500" in block


def test_readme_results_block_and_model_card_match_the_reference_file():
    from helpers.jsonio import read_json_object

    reference = read_json_object(report.REFERENCE)
    text = report.README.read_text()
    block = text.split("<!-- begin:results -->\n", 1)[1].split("<!-- end:results -->", 1)[0]
    assert block.rstrip("\n") == report.results_block(reference), "run `make report` after a full run"
    assert report.MODEL_CARD.read_text() == report.model_card(reference), "run `make report` after a full run"


def test_reference_results_collects_the_headline_figures(tmp_path):
    from helpers.jsonio import write_json

    entry = {"value": 0.9, "ci_low": 0.85, "ci_high": 0.95}
    write_json({"profile": "full", "n_images": {"validation": 10, "test": 20}, "threshold": 0.6,
                "threshold_rule": "recall >= 0.98", "bootstrap": {"unit": "patient", "n_resamples": 2000},
                "test": {name: entry for name in report.HEADLINE_METRICS},
                "validation": {name: entry for name in report.HEADLINE_METRICS},
                "ece_before": 0.12, "ece_after": 0.11, "temperature": 0.9, "band": None,
                "dataset_shift_auc": {"train_vs_test_NORMAL": 0.93, "train_vs_validation_NORMAL": 0.53}},
               tmp_path / "metrics.json")
    reference = report.reference_results(tmp_path)
    assert reference["threshold"] == 0.6 and reference["test"]["recall"] == entry and "int8" not in reference
    block = report.results_block(reference)
    assert "| recall (sensitivity) | 0.900 [0.850, 0.950] | 0.900 [0.850, 0.950] |" in block
    assert "threshold 0.600" in block and "training vs test NORMAL films 0.93" in block
    card = report.model_card(reference)
    assert "Not a medical device" in card and "## Limitations" in card and "| accuracy | 0.900 [0.850, 0.950]" in card
