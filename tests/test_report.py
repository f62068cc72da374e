"""README blocks and the model card rendered from results/, which make report fills from full-profile artifacts only."""

from __future__ import annotations

import re
import shutil

import pytest

from helpers import model_selection, report
from helpers.jsonio import read_json_object, write_json

BENCHMARK = {
    "films": 624, "p50_ms": 14.2, "p95_ms": 21.7, "keras_films": 40, "keras_p50_ms": 95.0, "speedup_vs_keras": 6.7,
    "stages_p50_ms": {"decode": 2.0, "model": 7.0, "ood": 1.5, "heatmap": 0.5, "overlay": 3.0},
    "cold_start_s": 0.44, "rss_mb": 180.4, "imported_tensorflow": False,
    "decisions": {"films_decided": 618, "flips_vs_keras_notebook_04": 4, "int8_disagreements_in_parity_json": 3.0,
                  "float32_one_pass_flips_vs_keras": 1},
    "ood": {"test_films_refused": 6}, "machine": {"cpu": {"cpu_model": "AMD EPYC", "cpu_flags": ["avx2", "fma"]}},
}
ONE_PASS = {"n_heatmap_images": 100, "heatmap_spearman_float32": 1.0, "heatmap_spearman_float16": 0.9994,
            "heatmap_spearman_int8": 0.982}
RELIABILITY = {
    "fuzz": {"inputs": 5000, "decided": 100, "refused": 4900, "unhandled": 0, "slowest_s": 0.12,
             "slowest_input": "fuzz_1.gif",
             "by_kind": {"truncate": {"decided": 0, "refused": 2500, "unhandled": 0},
                         "bit_flip": {"decided": 100, "refused": 2400, "unhandled": 0}}},
    "bit16_agreement": 0.995, "bit16_films_compared": 618, "dicom_agreement": 0.985, "dicom_copies_compared": 1843,
    "guard": {"test films, inverted": {"chest_xray": 1, "not_xray": 0, "wrong_way_round": 623, "unlike_population": 0}},
}
OOD = {"orientation": {"n_test": 624, "inverted_detected": 1.0, "upside_down_detected": 0.998,
                       "rotated_detected": 1.0, "upright_false_alarm": 0.0016},
       "false_rejection_rate_test": 0.0016, "unlike_population_rate_test": 0.006, "rejection_rate_non_xray": 1.0}
_ENTRY = {metric: {"mean": 0.9, "p05": 0.88, "p95": 0.92} for metric in
          ("accuracy", "recall", "specificity", "ece", "coverage")}
NEW_SITE = {"zero_shot": _ENTRY, "label_free": _ENTRY, "calibrated": {"20": _ENTRY, "50": _ENTRY},
            "targets": {"k=20 accuracy mean >= 0.92": False, "k=20 recall mean >= 0.96": True},
            "label_free_depth_control": {"chosen": 20, "shifts": {"4": 0.07, "all": -0.95}, "size": 400,
                                         "tolerance": 0.25},
            "label_free_whole_site": {"darker machine, zero-shot": {"accuracy": 0.9, "specificity": 1.0, "recall": 0.8},
                                      "darker machine, label-free": {"accuracy": 0.5, "specificity": 0.1,
                                                                     "recall": 0.96}},
            "shift_reports": {"large": "not copied into results/"}}
_METRIC = {"value": 0.9, "ci_low": 0.85, "ci_high": 0.95}
METRICS = {"n_images": {"validation": 10, "test": 20}, "threshold": 0.6,
           "threshold_rule": "recall >= 0.98", "bootstrap": {"unit": "patient", "n_resamples": 2000},
           "test": dict.fromkeys(report.HEADLINE_METRICS, _METRIC),
           "validation": dict.fromkeys(report.HEADLINE_METRICS, _METRIC),
           "ece_before": 0.12, "ece_after": 0.11, "temperature": 0.9,
           "band": {"coverage": 0.7, "accuracy_outside": 0.95, "recall_outside": 1.0, "validation_coverage": 0.88},
           "dataset_shift_auc": {"train_vs_test_NORMAL": 0.93, "train_vs_validation_NORMAL": 0.53}}
PARITY = {"threshold": 0.6, "variants": {
    "int8": {"size_mb": 2.7, "agreement": 0.989, "disagreements": 7.0, "accuracy_delta_points": 0.8},
    "float16": {"size_mb": 4.5, "agreement": 1.0, "disagreements": 0.0, "accuracy_delta_points": 0.0}},
    "one_pass": ONE_PASS}
TFLITE_BENCHMARK = {"variants": {"int8": {"speedup_vs_float32_1thread": 1.65}},
                    "machine": {"cpu_model": "Xeon", "cpu_flags": ["avx2", "avx512f"]}}
_ARCHIVE_RUN = {"films_per_s": 30.0, "cluster_start_s": 2.0, "first_result_s": 3.5, "worker_peak_rss_mb": [140.0],
                "cores_used": 0.95, "films_per_cpu_second": 31.6}
ARCHIVE = {"films": 2000, "cores": 2, "sched_autogroup": True, "load_average_start": [1.5, 1.0, 1.0],
           "load_average_end": [2.5, 1.0, 1.0],
           "stages_ms": {"read": 0.1, "decode": 2.0, "model": 9.0, "ood": 1.5, "heatmap": 0.5},
           "folder": {"loop": {"films_per_s": 50.0, "threads": 2}, "dask_1": _ARCHIVE_RUN,
                      "dask_2": {**_ARCHIVE_RUN, "films_per_s": 57.0, "worker_peak_rss_mb": [140.0, 141.0],
                                 "cores_used": 1.8}},
           "dicomweb": {"dask_1": {**_ARCHIVE_RUN, "films_per_s": 25.0}},
           "rows_equal_loop": True,
           "without_dask": {"processes_1": 32.0, "processes_2": 61.0, "2_over_1": 1.9, "processes_1_cores_used": 1.0,
                            "processes_2_cores_used": 1.9,
                            "dask_allocator_default": {"variable": "MALLOC_TRIM_THRESHOLD_=65536",
                                                       "films_per_s": 24.0}},
           "manifest": {"rows": 1_000_000, "result_rows": 1_000_000, "all_refused": True, "client_peak_rss_mb": 180.0},
           "scaling": {"folder_2_over_1_worker": 1.9, "folder_2_workers_over_loop": 1.14}}
# Every source as an artifact of a full run, by results name: (path in the artifacts folder, record).
SHORTCUTS = {"judged_on": "validation", "shortcuts": {
    "border": 0.12, "border_only_classifier": {"auc": 0.97, "ci_low": 0.95, "ci_high": 0.98, "train_films": 40,
                                               "evaluation_films": 10},
    "decisions_changed": {"border blanked": {"films": 10, "changed": 2, "normal_to_pneumonia": 2,
                                             "pneumonia_to_normal": 0}},
    "thorax_heat": {"box_area": 0.64, "TP": {"films": 5, "heat_inside": 0.8}, "FP": {"films": 0, "heat_inside": None},
                    "FN": {"films": 1, "heat_inside": 0.5}, "TN": {"films": 4, "heat_inside": 0.7}}}}
FULL_RUN = {"reference": ("metrics.json", METRICS), "shortcuts": ("gradcam.json", SHORTCUTS),
            "parity": ("tflite/parity.json", PARITY),
            "tflite_benchmark": ("tflite/benchmark.json", TFLITE_BENCHMARK), "ood": ("ood.json", OOD),
            "new_site": ("new_site.json", NEW_SITE), "app_benchmark": ("app_benchmark.json", BENCHMARK),
            "reliability": ("reliability.json", RELIABILITY), "archive_benchmark": ("archive_benchmark.json", ARCHIVE)}


def write_artifacts(folder, profiles: dict[str, str | None]) -> None:
    """The sources named in ``profiles`` in ``folder``, each recording that profile (None: no profile field)."""
    for name, profile in profiles.items():
        path, record = FULL_RUN[name]
        write_json({**record, **({"profile": profile} if profile else {})}, folder / path)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """README, model card and results/ copied into ``tmp_path``; an empty artifacts folder."""
    results = tmp_path / "results"
    shutil.copytree(report.RESULTS_DIR, results)
    shutil.copy(report.README, tmp_path / "README.md")
    shutil.copy(report.MODEL_CARD, tmp_path / "model_card.md")
    monkeypatch.setattr(report, "RESULTS_DIR", results)
    monkeypatch.setattr(report, "README", tmp_path / "README.md")
    monkeypatch.setattr(report, "MODEL_CARD", tmp_path / "model_card.md")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(artifacts))
    return tmp_path


def snapshot(folder) -> dict[str, str]:
    """{relative path: text} of the README, the model card and every results file."""
    return {str(path.relative_to(folder)): path.read_text()
            for path in sorted(folder.rglob("*")) if path.is_file() and "artifacts" not in path.parts}


def test_only_the_named_block_is_rewritten():
    text = "intro\n<!-- begin:app -->\nold\n<!-- end:app -->\n<!-- begin:other -->\nkeep\n<!-- end:other -->\n"
    rewritten = report.replace_block(text, "app", "new line")
    assert rewritten == ("intro\n<!-- begin:app -->\nnew line\n<!-- end:app -->\n"
                         "<!-- begin:other -->\nkeep\n<!-- end:other -->\n")
    assert report.readme_block(rewritten, "app") == "new line"
    with pytest.raises(ValueError, match="begin:missing"):
        report.replace_block(text, "missing", "x")


def test_app_block_states_the_measured_figures_and_its_targets():
    block = report.app_block(BENCHMARK, {"one_pass": ONE_PASS})
    assert "median 14 ms, p95 22 ms" in block and "6.7x faster" in block
    assert "4 of 618 differ (float32 one pass: 1; notebook 06's int8 parity: 3)" in block
    assert "int8 0.982" in block
    assert "AMD EPYC (avx2, fma)" in block
    assert "- app end to end per film, p95 ≤ 60 ms: 22 ms, met (set 2026-12-02)." in block
    assert "int8 one-pass heat map vs Keras Grad-CAM (Spearman) ≥ 0.950: 0.982, met (set 2026-12-02)." in block


def test_reliability_block_has_a_row_per_input_kind_the_guard_table_and_its_targets():
    block = report.reliability_block(RELIABILITY, OOD)
    assert "| truncate | 2,500 | 0 | 2,500 | 0 |" in block and "| **all** | **5,000** | 100 | 4,900 | **0** |" in block
    assert "99.5% of 618" in block and "98.5% of 1843" in block
    assert "| test films, inverted | 1 | 0 | 623 | 0 |" in block
    assert "upside down 99.8%" in block and "upright films flagged 0.16%" in block
    assert "DICOM copies of test films with the 8-bit decision ≥ 99.0%: 98.5%, **missed** (set 2026-12-02)" in block
    assert "upright test films flagged as the wrong way round ≤ 1.00%: 0.16%, met" in block


def test_archive_block_states_the_runs_the_scaling_note_and_its_targets():
    block = report.archive_block(ARCHIVE)
    assert "| plain loop (`helpers.screen`, 2 LiteRT threads) | 50.0 | - | - | - |" in block
    assert "| Dask, 2 workers, folder | 57.0 | 1.80 | 2.0 s / 3.5 s | 140, 141 MB |" in block
    assert "| Dask, 1 worker, Orthanc over DICOMweb | 25.0 |" in block and "2 workers, Orthanc" not in block
    assert "1.90x the films/s of 1 worker (efficiency 95%) and 1.14x the plain loop" in block
    assert "the model limits throughput (69% of the pipeline)" in block and "about 32 films/s per core" in block
    assert "1,000,000 rows, each a refusal; the client's peak memory 180 MB" in block
    assert "load average 1.5 at the start, 2.5 at the end" in block and "autogroup scheduling was on" in block
    assert "Per CPU-second, 2 workers screen 100% of the films 1 worker does" in block
    assert "(0.95 and 1.80 cores on average)" in block
    assert "screen 1.90x the films/s of one on the same films (1.00 and 1.90 cores of CPU time)." in block
    assert ("Started with Dask's default `MALLOC_TRIM_THRESHOLD_=65536` (which the local cluster leaves out), "
            "one such process screens 24.0 films/s instead of 32.0 (-25%).") in block
    assert ("- archive screener, 2 workers over 1 worker on 2 cores (films/s) ≥ 1.70x: 1.90x, "
            "met (set 2026-12-05).") in block
    slow_storage = {**ARCHIVE, "stages_ms": {**ARCHIVE["stages_ms"], "read": 20.0}}
    assert "reading the films limits throughput" in report.archive_block(slow_storage)


def test_the_readme_has_every_block():
    text = report.README.read_text()
    assert all(f"<!-- begin:{block} -->" in text for block in report.BLOCK_SOURCES)


def test_new_site_block_has_every_row_and_the_dated_targets():
    block = report.new_site_block(NEW_SITE)
    assert "first 20 BatchNorm layers" in block and "k = 50 per class | 0.900 (0.880-0.920)" in block
    assert ("- Targets set for the site calibration on site A (set 2026-12-02): k=20 accuracy mean >= 0.92 "
            "**missed**; k=20 recall mean >= 0.96 met.") in block
    assert "issue" not in block
    assert "4 layers +0.07, all layers -0.95" in block
    assert "simulated darker machine site (whole site): accuracy 0.900 → 0.500" in block


def test_results_block_says_which_targets_are_missed_and_when_they_were_set():
    reference = report.reference_results(METRICS, {"parity": PARITY, "tflite_benchmark": TFLITE_BENCHMARK})
    block = report.results_block(reference)
    assert "| recall (sensitivity) | 0.900 [0.850, 0.950] | 0.900 [0.850, 0.950] |" in block
    assert "- int8 decisions equal to Keras's (test films) ≥ 99.5%: 98.9%, **missed** (set 2026-11-25)." in block
    assert "- test accuracy ≥ 0.900: 0.900, met (set 2026-11-25)." in block
    assert "float16 decisions equal to Keras's (test films) ≥ 99.8%: 100.0%, met" in block
    # a restated target says when and why
    assert ("int8 accuracy minus Keras accuracy (test films) ≥ -0.30 points: +0.80 points, met (set 2026-11-25; "
            "restated 2026-12-02, after a result was known: made one-sided") in block
    assert ("int8 speed-up over float32 (1 thread, CPU with AVX-512) ≥ 1.60x: 1.65x, met (set 2026-11-25; "
            "restated 2026-12-02, after a result was known: lowered from 1.8x") in block
    assert "measured on Xeon." in block


def target_lines(text: str) -> list[str]:
    """The lines of ``text`` that state a target: list items with a bar, and the site calibration's line."""
    return [line for line in text.splitlines()
            if line.startswith("- ") and (" ≥ " in line or " ≤ " in line or line.startswith("- Targets"))]


def test_every_target_line_in_the_readme_blocks_and_the_model_card_says_met_or_missed_with_a_date():
    text = report.README.read_text()
    blocks = "\n".join(report.readme_block(text, block) for block in report.BLOCK_SOURCES)
    lines = target_lines(blocks) + target_lines(report.MODEL_CARD.read_text())
    assert len(lines) >= 10
    for line in lines:
        assert re.search(r"(: .*, met|\*\*missed\*\*)", line) and re.search(r"\(set \d{4}-\d{2}-\d{2}", line), line


def test_the_target_line_check_catches_an_undated_or_unjudged_line():
    assert target_lines("- k=20 accuracy mean >= 0.92\n- int8 agreement ≥ 99.5%: 98.9%\nprose ≥ 1") == [
        "- int8 agreement ≥ 99.5%: 98.9%"]


def test_reference_results_collects_the_headline_figures():
    reference = report.reference_results(METRICS)
    assert reference["threshold"] == 0.6 and reference["test"]["recall"] == _METRIC and "int8" not in reference
    block = report.results_block(reference)
    assert "threshold 0.600" in block and "training vs test NORMAL films 0.93" in block
    card = report.model_card({"reference": reference})
    assert "Not a medical device" in card and "## Limitations" in card and "| accuracy | 0.900 [0.850, 0.950]" in card
    assert "## Targets" in card and "test accuracy ≥ 0.900: 0.900, met (set 2026-11-25)" in card


# --------------------------------------------------------------------------- #
# The committed README and model card against results/
# --------------------------------------------------------------------------- #
def test_each_readme_block_with_its_results_file_matches_what_the_file_renders():
    results = report.load_results()
    rendered = report.render_blocks(results)
    assert "results" in rendered  # results/reference.json is always committed
    text = report.README.read_text()
    for block, content in rendered.items():
        assert report.readme_block(text, block) == content, f"the {block} block: run `make report` after a full run"


def test_every_committed_readme_block_has_its_results_file():
    missing = report.missing_sources(report.README.read_text(), report.load_results())
    assert missing == [], f"these blocks cannot be checked: {missing}; run `make run`, then `make report`"


def test_the_model_card_matches_the_results_files():
    assert report.MODEL_CARD.read_text() == report.model_card(report.load_results()), "run `make report`"


def test_missing_sources_names_each_block_without_its_results_file():
    text = "<!-- begin:results -->\n<!-- end:results -->\n<!-- begin:app -->\n<!-- end:app -->\n"
    assert report.missing_sources(text, {"reference": {}}) == [
        "results/app_benchmark.json (the app block)", "results/parity.json (the app block)"]
    assert report.missing_sources(text, {"reference": {}, "app_benchmark": {}, "parity": {}}) == []


# --------------------------------------------------------------------------- #
# make report: full-profile artifacts only, copied into results/, every block rendered from results/
# --------------------------------------------------------------------------- #
def test_a_full_run_fills_results_and_every_block_is_rendered_from_it(project, capsys):
    write_artifacts(project / "artifacts", dict.fromkeys(FULL_RUN, "full"))
    assert report.main([]) == 0
    results = report.load_results(project / "results")
    # The ledger is appended by runs and candidates.json written by helpers.candidates, not by make report.
    assert set(results) - {"test_ledger", "candidates"} == set(FULL_RUN)
    assert set(results["shortcuts"]) == {"profile", "shortcuts"}
    assert results["new_site"]["zero_shot"] == _ENTRY and "shift_reports" not in results["new_site"]
    assert results["reference"]["speed"]["int8_speedup_vs_float32_1thread"] == 1.65
    text = report.README.read_text()
    for block, content in report.render_blocks(results).items():
        assert report.readme_block(text, block) == content
    assert report.missing_sources(text, results) == []
    assert report.MODEL_CARD.read_text() == report.model_card(results)
    card = report.MODEL_CARD.read_text()
    assert "app cold start (import to first verdict) ≤ 3.0 s: 0.4 s, met (set 2026-12-02)" in card
    assert "Targets set for the site calibration on site A (set 2026-12-02)" in card
    assert (project / "artifacts" / "report.md").is_file()


@pytest.mark.parametrize("profile", ["smoke", "shortened", None])
@pytest.mark.parametrize("name", list(FULL_RUN))
def test_a_source_not_made_in_the_full_profile_is_refused_and_nothing_changes(project, capsys, name, profile):
    write_artifacts(project / "artifacts", {**dict.fromkeys(FULL_RUN, "full"), name: profile})
    before = snapshot(project)
    assert report.main([]) == 1
    assert snapshot(project) == before
    message = capsys.readouterr().err
    path = project / "artifacts" / FULL_RUN[name][0]
    assert str(path) in message and "make report changed nothing" in message
    assert (f"was made with the profile {profile!r}" if profile else "records no profile") in message
    assert "To make a full one, run `make" in message
    assert message.count("\n- ") == 1  # only the refused source is named


def test_without_artifacts_the_blocks_are_rendered_from_results_as_they_are(project):
    before = snapshot(project)
    assert report.main([]) == 0
    results = report.load_results(project / "results")
    assert snapshot(project)["results/reference.json"] == before["results/reference.json"]
    assert report.readme_block(report.README.read_text(), "results") == report.results_block(results["reference"])


def test_benchmark_profile_follows_the_run_and_the_benchmark_size(tmp_path):
    assert report.benchmark_profile(shortened=False, artifacts=tmp_path) == "unknown"
    write_json({"profile": "smoke"}, tmp_path / "metrics.json")
    assert report.benchmark_profile(shortened=False, artifacts=tmp_path) == "smoke"
    write_json({"profile": "full"}, tmp_path / "metrics.json")
    assert report.benchmark_profile(shortened=False, artifacts=tmp_path) == "full"
    assert report.benchmark_profile(shortened=True, artifacts=tmp_path) == "shortened"


def test_results_files_are_json_objects():
    for path in report.RESULTS_DIR.glob("*.json"):
        assert isinstance(read_json_object(path), dict)


def test_reliability_block_states_the_load_test_and_its_targets():
    load = {"threads": {"threads": 8, "screens": 400, "mismatches": 0, "errors": 0, "throughput_per_s": 35.2,
                        "latency_p95_ms": 406.0, "alone_p95_ms": 40.0, "interpreters": 1},
            "browser": {"sessions": 4, "screens": 4, "mismatches": 1}}
    block = report.reliability_block({**RELIABILITY, "concurrency": load}, OOD)
    assert "8 threads x 50 screens" in block and "**0 of 400 answers differ**" in block
    assert "35 films/s, p95 latency 406 ms under load (40 ms alone) with 1 interpreter(s)" in block
    assert "4 Chromium sessions uploading at the same moment" in block and "1 saw another session's answer" in block
    assert "differ from the film alone ≤ 0: 0, met (set 2026-12-05)" in block
    assert "see another session's answer ≤ 0: 1, **missed** (set 2026-12-05)" in block
    assert "Under load" not in report.reliability_block(RELIABILITY, OOD)  # older files: no load test, no line


def test_the_model_selection_block_shows_every_candidate_and_the_chosen_ones_targets():
    validation = {"roc_auc": _METRIC, "specificity": _METRIC, "recall": _METRIC}
    shifted = {"mean_specificity": 0.95, "worst_specificity": 0.8, "mean_recall": 0.97, "worst_recall": 0.93,
               "mean_balanced_accuracy": 0.96}
    test = {"metrics": dict.fromkeys(("accuracy", "recall", "specificity", "roc_auc"), _METRIC), "ece": 0.07}
    candidates = {"rule": "the best under shift", "chosen": "masked", "chosen_test": test, "candidates": {
        "reference": {"what": "the recipe", "validation": validation, "shift_summary": shifted},
        "masked": {"what": "no border", "validation": validation, "shift_summary": shifted, "test": test,
                   "shortcuts": {key: SHORTCUTS["shortcuts"][key] for key in ("decisions_changed", "thorax_heat")}}}}
    block = model_selection.block(candidates, {"shortcuts": SHORTCUTS["shortcuts"]})
    assert "Chosen: **masked**" in block and "| reference: the recipe |" in block and "not scored" in block
    assert "| 0.950 / 0.800 | 0.970 / 0.930 | 0.900 / 0.900 / 0.900 / 0.900 / 0.070 |" in block
    assert "zero-shot test accuracy of the chosen candidate ≥ 0.900: 0.900, met (set 2026-12-05)" in block
    assert "its test ROC-AUC ≥ 0.975: 0.900, **missed**" in block
    assert "ROC-AUC 0.970 (0.950-0.980)" in block and "border blanked: 2 of 10 decisions change" in block
    assert "TP 80% (5 films)" in block and "FP" not in block.split("thorax box")[1]
    assert "- masked: border blanked: 2 of 10 decisions change (2 to PNEUMONIA, 0 to NORMAL)" in block
    assert "- reference:" not in block  # no shortcut checks recorded for it
