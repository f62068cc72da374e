"""The targets registry: bars, the dates they were set and restated, and the lines that say met or missed."""

from __future__ import annotations

import datetime
import json
import re

import pytest

from helpers import config, targets, tflite


def test_every_target_is_dated_and_a_restatement_has_its_date_and_reason():
    for target in targets.TARGETS.values():
        set_on = datetime.date.fromisoformat(target.set_on)
        if target.restated_on:
            assert datetime.date.fromisoformat(target.restated_on) >= set_on and target.restatement
    datetime.date.fromisoformat(targets.SITE_CALIBRATION.set_on)
    with pytest.raises(ValueError, match="both its date and its reason"):
        targets.Target("x", "x", targets.AT_LEAST, 1.0, "{:.1f}", "2026-01-01", "reference", "x",
                       restated_on="2026-02-01")
    with pytest.raises(ValueError, match="relation"):
        targets.Target("x", "x", "==", 1.0, "{:.1f}", "2026-01-01", "reference", "x")


def test_a_line_says_met_or_missed_with_the_date_it_was_set():
    target = targets.TARGETS["int8_agreement"]
    assert target.line(0.9888) == ("int8 decisions equal to Keras's (test films) ≥ 99.5%: 98.9%, "
                                   "**missed** (set 2026-11-25)")
    assert target.line(0.997).endswith(": 99.7%, met (set 2026-11-25)")
    assert targets.TARGETS["app_p95_ms"].line(61.0).startswith(
        "app end to end per film, p95 ≤ 60 ms: 61 ms, **missed**")
    assert not target.met(float("nan")) and not target.met(None)


def test_a_restated_target_shows_when_and_why():
    line = targets.TARGETS["int8_accuracy_delta"].line(0.32)
    assert re.search(r"\+0\.32 points, met \(set 2026-11-25; restated 2026-12-02, after a result was known: made "
                     r"one-sided .*quantization noise\)$", line)
    assert "restated 2026-12-02" in targets.speedup_target(["avx2", "avx512f"]).history()
    assert targets.speedup_target(["avx2"]).bar == 1.8 and targets.speedup_target(["avx2"]).restated_on is None


def test_the_site_calibration_line_judges_every_target_and_names_no_issue():
    line = targets.SITE_CALIBRATION.line({"k=20 accuracy mean >= 0.92": False, "k=20 recall mean >= 0.96": True})
    assert line == ("Targets set for the site calibration on site A (set 2026-12-02): k=20 accuracy mean >= 0.92 "
                    "**missed**; k=20 recall mean >= 0.96 met.")
    with pytest.raises(ValueError, match="records none"):
        targets.SITE_CALIBRATION.line({})


def test_lines_skip_targets_without_a_measured_value():
    chosen = [targets.TARGETS["test_accuracy"], targets.TARGETS["int8_size_mb"]]
    assert targets.lines(chosen, {"reference": {"test": {"accuracy": {"value": 0.95}}}}) == [
        "test accuracy ≥ 0.900: 0.950, met (set 2026-11-25)"]
    assert targets.measured({"a": {"b": 1}}, "a.c") is None


def test_the_phone_model_targets_take_their_bars_from_the_registry():
    phone = tflite.PhoneModelTargets()
    assert phone.min_int8_agreement == targets.TARGETS["int8_agreement"].bar == 0.995
    assert phone.max_int8_accuracy_loss_points == 0.3 and phone.max_int8_size_mb == 3.0
    assert phone.speedup_bar(["avx512f"]) == 1.6 and phone.speedup_bar([]) == 1.8


def test_the_target_table_of_notebook_06_shows_the_dates():
    benchmark = {"variants": {"int8": {"size_mb": 2.7, "speedup_vs_float32_1thread": 1.7}},
                 "machine": {"cpu_flags": ["avx512f"]}}
    table = tflite.target_table(benchmark, {"agreement": 0.999, "accuracy_delta_points": 0.1},
                                {"agreement": 0.989, "accuracy_delta_points": 0.8}, {"agreement": 1.0})
    assert list(table.columns) == ["target", "measured", "met", "history"]
    assert table["history"].str.startswith("set 2026-11-25").all()
    accuracy = table[table["target"].str.startswith("int8 accuracy")]
    assert accuracy["history"].str.contains("restated 2026-12-02").all()


def _parameters(notebook: str) -> dict:
    """The literal assignments of a notebook's ``parameters`` cell."""
    cells = json.loads((config.PROJECT_ROOT / "notebooks" / notebook).read_text())["cells"]
    source = next("".join(cell["source"]) for cell in cells if "parameters" in cell.get("metadata", {}).get("tags", []))
    values = {}
    for line in source.splitlines():
        name, _, value = line.partition("=")
        if value:
            try:
                values[name.strip()] = float(value.split("#")[0])
            except ValueError:
                continue
    return values


def test_notebook_04_checks_the_registry_s_calibration_and_band_bars():
    parameters = _parameters("04_evaluation.ipynb")
    assert parameters["ece_target"] == targets.TARGETS["test_ece_after_scaling"].bar
    assert parameters["target_coverage"] == targets.TARGETS["band_coverage"].bar
    assert parameters["accuracy_target"] == targets.TARGETS["band_accuracy"].bar
