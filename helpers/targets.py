"""The project's targets: each required value, the date it was set and, if it was restated, when and why.

:data:`TARGETS` is the one home of these values and dates. ``make report``
(:mod:`helpers.report`) renders a line per target into the README and the model card
from the committed results files, saying whether it is met or missed, with its
dates; :class:`helpers.tflite.PhoneModelTargets` takes the phone-model targets from here
and notebook 06's target table shows the same dates.

A target is *restated* when its required value or its reading changed after a result against it
was known; the restatement says what changed and why, so a reader can judge it. The
dates are those of the project's history (``git log``) where each target first
appears and where it changed.

Each target names where its measured value comes from: a results file (``source``:
``results/<source>.json``, written by ``make report``) and a dotted path in it
(``field``). The targets of notebook 08's site calibration live in that notebook's
parameters and in ``new_site.json`` (which records each one with its verdict); their
dates are :data:`SITE_CALIBRATION`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AT_LEAST = ">="
AT_MOST = "<="
SYMBOLS = {AT_LEAST: "≥", AT_MOST: "≤"}


def history(set_on: str, restated_on: str | None = None, restatement: str | None = None) -> str:
    """``set YYYY-MM-DD``, and the restatement with its date and reason when there is one."""
    text = f"set {set_on}"
    if restated_on:
        text += f"; restated {restated_on}, after a result was known: {restatement}"
    return text


@dataclass(frozen=True)
class Target:
    """One target: ``what`` ``relation`` ``bar`` (the value required), measured at ``field`` of
    ``results/<source>.json``.

    ``shown`` formats both the required value and the measured value (a ``str.format`` spec such as
    ``"{:.1%}"``). ``set_on`` and ``restated_on`` are ISO dates (YYYY-MM-DD).
    """

    key: str
    what: str
    relation: str
    bar: float
    shown: str
    set_on: str
    source: str
    field: str
    restated_on: str | None = None
    restatement: str | None = None

    def __post_init__(self):
        if self.relation not in SYMBOLS:
            raise ValueError(f"Target {self.key!r}: relation {self.relation!r} is not one of {sorted(SYMBOLS)}.")
        if (self.restated_on is None) != (self.restatement is None):
            raise ValueError(f"Target {self.key!r}: a restatement needs both its date and its reason.")

    def met(self, value: float) -> bool:
        """Whether ``value`` meets the required value (a NaN never does)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return value >= self.bar if self.relation == AT_LEAST else value <= self.bar

    def history(self) -> str:
        return history(self.set_on, self.restated_on, self.restatement)

    def line(self, value: float) -> str:
        """One Markdown line: the target, the measured value, met or **missed**, and the dates."""
        verdict = "met" if self.met(value) else "**missed**"
        return (f"{self.what} {SYMBOLS[self.relation]} {self.shown.format(self.bar)}: "
                f"{self.shown.format(value)}, {verdict} ({self.history()})")


@dataclass(frozen=True)
class TargetGroup:
    """Targets whose required values are recorded beside their verdicts in a results file (notebook 08's)."""

    what: str
    set_on: str
    source: str
    field: str
    restated_on: str | None = None
    restatement: str | None = None

    def history(self) -> str:
        return history(self.set_on, self.restated_on, self.restatement)

    def line(self, verdicts: dict[str, bool]) -> str:
        """One Markdown line: every target of the group, met or **missed**, and the dates."""
        if not verdicts:
            raise ValueError(f"No verdicts for {self.what}: the results file records none under {self.field!r}.")
        return (f"{self.what} ({self.history()}): "
                + "; ".join(f"{name} {'met' if met else '**missed**'}" for name, met in verdicts.items()) + ".")


ONE_SIDED_ACCURACY = (
    "made one-sided (int8 may gain any amount of accuracy; before, it had to stay within 0.3 points "
    "either way), because beside the agreement target a two-sided target left room for at most one net "
    "decision flip on the test set, so meeting it was a draw of quantization noise")
SPEED_BY_CPU = (
    "lowered from 1.8x for CPUs with AVX-512, where float32 gains more from the wide vector units than "
    "int8 does, so the int8 : float32 ratio depends on the CPU it is measured on")

_TARGETS = (
    # Test-set quality of the trained model (notebook 04, results/reference.json)
    Target("test_roc_auc", "test ROC-AUC", AT_LEAST, 0.965, "{:.3f}", "2026-11-25", "reference", "test.roc_auc.value"),
    Target("test_recall", "test recall", AT_LEAST, 0.97, "{:.3f}", "2026-11-25", "reference", "test.recall.value"),
    Target("test_accuracy", "test accuracy", AT_LEAST, 0.90, "{:.3f}", "2026-11-25", "reference",
           "test.accuracy.value"),
    Target("test_ece_after_scaling", "test ECE after temperature scaling", AT_MOST, 0.05, "{:.3f}", "2026-11-25",
           "reference", "calibration.ece_after"),
    Target("band_coverage", "share of test films decided outside the referral band", AT_LEAST, 0.85, "{:.0%}",
           "2026-11-25", "reference", "band.coverage"),
    Target("band_accuracy", "accuracy on the test films decided outside the band", AT_LEAST, 0.97, "{:.3f}",
           "2026-11-25", "reference", "band.accuracy_outside"),
    # Zero-shot test figures of the model chosen among the candidates (helpers.candidates, results/candidates.json)
    Target("zero_shot_accuracy", "zero-shot test accuracy of the chosen candidate", AT_LEAST, 0.90, "{:.3f}",
           "2026-12-05", "candidates", "chosen_test.metrics.accuracy.value"),
    Target("zero_shot_recall", "its test recall", AT_LEAST, 0.97, "{:.3f}", "2026-12-05", "candidates",
           "chosen_test.metrics.recall.value"),
    Target("zero_shot_roc_auc", "its test ROC-AUC", AT_LEAST, 0.975, "{:.3f}", "2026-12-05", "candidates",
           "chosen_test.metrics.roc_auc.value"),
    Target("zero_shot_ece", "its test ECE (temperature fitted on validation)", AT_MOST, 0.08, "{:.3f}", "2026-12-05",
           "candidates", "chosen_test.ece"),
    # The phone models (notebook 06: parity.json and benchmark.json, in results/reference.json)
    Target("int8_size_mb", "int8 model size", AT_MOST, 3.0, "{:.2f} MB", "2026-11-25", "reference", "int8.size_mb"),
    Target("int8_speedup", "int8 speed-up over float32 (1 thread, CPU without AVX-512)", AT_LEAST, 1.8, "{:.2f}x",
           "2026-11-25", "reference", "speed.int8_speedup_vs_float32_1thread"),
    Target("int8_speedup_avx512", "int8 speed-up over float32 (1 thread, CPU with AVX-512)", AT_LEAST, 1.6,
           "{:.2f}x", "2026-11-25", "reference", "speed.int8_speedup_vs_float32_1thread",
           restated_on="2026-12-02", restatement=SPEED_BY_CPU),
    Target("int8_agreement", "int8 decisions equal to Keras's (test films)", AT_LEAST, 0.995, "{:.1%}",
           "2026-11-25", "reference", "int8.agreement"),
    Target("int8_accuracy_delta", "int8 accuracy minus Keras accuracy (test films)", AT_LEAST, -0.3,
           "{:+.2f} points", "2026-11-25", "reference", "int8.accuracy_delta_points",
           restated_on="2026-12-02", restatement=ONE_SIDED_ACCURACY),
    Target("float16_agreement", "float16 decisions equal to Keras's (test films)", AT_LEAST, 0.998, "{:.1%}",
           "2026-11-25", "reference", "float16.agreement"),
    # The web app (make benchmark: results/app_benchmark.json; notebook 06: results/parity.json)
    Target("app_p95_ms", "app end to end per film, p95", AT_MOST, 60.0, "{:.0f} ms", "2026-12-02", "app_benchmark",
           "p95_ms"),
    Target("app_speedup_vs_keras", "app speed-up over the explorer's Keras Grad-CAM path", AT_LEAST, 5.0,
           "{:.1f}x", "2026-12-02", "app_benchmark", "speedup_vs_keras"),
    Target("app_cold_start_s", "app cold start (import to first verdict)", AT_MOST, 3.0, "{:.1f} s", "2026-12-02",
           "app_benchmark", "cold_start_s"),
    Target("app_rss_mb", "app peak memory after 20 films", AT_MOST, 400.0, "{:.0f} MB", "2026-12-02",
           "app_benchmark", "rss_mb"),
    Target("heatmap_float32", "float32 one-pass heat map vs Keras Grad-CAM (Spearman)", AT_LEAST, 0.99, "{:.3f}",
           "2026-12-02", "parity", "one_pass.heatmap_spearman_float32"),
    Target("heatmap_int8", "int8 one-pass heat map vs Keras Grad-CAM (Spearman)", AT_LEAST, 0.95, "{:.3f}",
           "2026-12-02", "parity", "one_pass.heatmap_spearman_int8"),
    # The guard and damaged inputs (notebook 07: results/ood.json; make reliability: results/reliability.json)
    Target("guard_test_refused", "test X-rays refused by the guard", AT_MOST, 0.01, "{:.2%}", "2026-11-25", "ood",
           "false_rejection_rate_test"),
    Target("orientation_inverted", "inverted test films detected", AT_LEAST, 0.95, "{:.1%}", "2026-12-02", "ood",
           "orientation.inverted_detected"),
    Target("orientation_upside_down", "upside-down test films detected", AT_LEAST, 0.95, "{:.1%}", "2026-12-02",
           "ood", "orientation.upside_down_detected"),
    Target("orientation_rotated", "rotated test films detected", AT_LEAST, 0.95, "{:.1%}", "2026-12-02", "ood",
           "orientation.rotated_detected"),
    Target("orientation_upright_flagged", "upright test films flagged as the wrong way round", AT_MOST, 0.01,
           "{:.2%}", "2026-12-02", "ood", "orientation.upright_false_alarm"),
    Target("fuzz_unhandled", "damaged inputs ending in an unhandled error", AT_MOST, 0, "{:,}", "2026-12-02",
           "reliability", "fuzz.unhandled"),
    Target("bit16_agreement", "16-bit copies of test films with the 8-bit decision", AT_LEAST, 0.99, "{:.1%}",
           "2026-12-02", "reliability", "bit16_agreement"),
    Target("dicom_agreement", "DICOM copies of test films with the 8-bit decision", AT_LEAST, 0.99, "{:.1%}",
           "2026-12-02", "reliability", "dicom_agreement"),
    Target("load_mismatches", "answers under load (8 threads, one shared screener) that differ from the film alone",
           AT_MOST, 0, "{:,}", "2026-12-05", "reliability", "concurrency.threads.mismatches"),
    Target("session_mismatches", "browser sessions uploading at once that see another session's answer", AT_MOST, 0,
           "{:,}", "2026-12-05", "reliability", "concurrency.browser.mismatches"),
    # The archive screener on Dask (benchmarks/archive_benchmark.py, results/archive_benchmark.json)
    Target("archive_scaling", "archive screener, 2 workers over 1 worker on 2 cores (films/s)", AT_LEAST, 1.7,
           "{:.2f}x", "2026-12-05", "archive_benchmark", "scaling.folder_2_over_1_worker"),
    Target("archive_over_loop", "archive screener, 2 workers over the plain loop (films/s)", AT_LEAST, 1.0, "{:.2f}x",
           "2026-12-05", "archive_benchmark", "scaling.folder_2_workers_over_loop"),
    Target("archive_manifest_client_mb", "archive client's peak memory on a 1,000,000-row manifest", AT_MOST, 1000.0,
           "{:.0f} MB", "2026-12-05", "archive_benchmark", "manifest.client_peak_rss_mb"),
)
TARGETS: dict[str, Target] = {target.key: target for target in _TARGETS}

SITE_CALIBRATION = TargetGroup("Targets set for the site calibration on site A", "2026-12-02", "new_site", "targets")


def speedup_target(cpu_flags) -> Target:
    """The int8 speed-up target that applies on a CPU with these ``/proc/cpuinfo`` flags."""
    return TARGETS["int8_speedup_avx512" if "avx512f" in set(cpu_flags or ()) else "int8_speedup"]


def measured(record: dict, field: str):
    """The value at the dotted ``field`` of ``record``, or None where any part is missing."""
    value = record
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def lines(targets, results: dict[str, dict]) -> list[str]:
    """A Markdown line for each of ``targets`` whose value ``results`` ({source: record}) holds."""
    found = []
    for target in targets:
        value = measured(results.get(target.source) or {}, target.field)
        if value is not None:
            found.append(target.line(value))
    return found


def markdown_lines(keys, results: dict[str, dict]) -> list[str]:
    """``- <target line>.`` for each target of ``keys`` (:data:`TARGETS`) whose measured value ``results`` holds."""
    return [f"- {line}." for line in lines([TARGETS[key] for key in keys], results)]


def section(target_lines: list[str]) -> list[str]:
    """A README block's closing list of targets (nothing when there are none)."""
    return ["", "Targets (met or missed, and when each was set):", *target_lines] if target_lines else []
