"""Evaluation: metrics with bootstrap CIs, choosing the operating point, calibration, abstention.

The rule of this module: **decisions are made on validation, test is only reported.**
Every decision (threshold, temperature, abstention band) is taken by a function that
accepts one :class:`ScoredSplit` and refuses a split named ``"test"``, so test labels
cannot reach a decision through this API::

    validation = ScoredSplit("validation", labels, probabilities, logits)
    point = choose_operating_point(validation, min_recall=0.98)      # decision
    binary_metrics(test.labels, test.probabilities, point.threshold)  # report

Scales: every threshold (``threshold``, ``band.low``, ``band.high``) applies to the
model's **raw output probability** (``sigmoid(logit)``, what the Keras and TFLite
models return). Temperature scaling is monotonic, so it never changes a decision; it
only makes the displayed probability honest (``apply_temperature``).

The decisions travel to notebooks 05-07 through ``<artifacts>/metrics.json``:
:func:`write_metrics` saves them (full schema), and
:func:`helpers.operating_point.load_operating_point` reads the
:class:`~helpers.operating_point.OperatingPoint` back, which holds the one decision rule.

Label 1 is PNEUMONIA (positive), 0 is NORMAL.

The package has one module per job: :mod:`~helpers.evaluation.splits` (scored
splits, the test-split rule), :mod:`~helpers.evaluation.metrics` (metrics, bootstrap,
tables, error analysis), :mod:`~helpers.evaluation.threshold`,
:mod:`~helpers.evaluation.calibration`, :mod:`~helpers.evaluation.band` and
:mod:`~helpers.evaluation.record` (``metrics.json``); figures are in
:mod:`helpers.evaluation_plots`. The names below are re-exported.
"""

from __future__ import annotations

from helpers.evaluation.band import (
    Band,
    band_outcome,
    choose_band,
    coverage_curve,
)
from helpers.evaluation.calibration import (
    apply_temperature,
    brier_score,
    calibration_bins,
    calibration_summary,
    describe_temperature,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_to_arrays,
    negative_log_likelihood,
)
from helpers.evaluation.metrics import (
    _WeightedScores,
    binary_metrics,
    bootstrap_indices,
    bootstrap_metrics,
    comparison_table,
    confusion_counts,
    confusion_table,
    metrics_from_counts,
    metrics_table,
    most_confident_errors,
    ranking_metrics,
)
from helpers.evaluation.record import (
    BAND_KEYS,
    REQUIRED_KEYS,
    load_metrics,
    validate_metrics,
    write_metrics,
)
from helpers.evaluation.splits import (
    COUNT_NAMES,
    DECISION_SPLITS,
    DEFAULT_ECE_BINS,
    DEFAULT_MIN_RECALL,
    METRIC_NAMES,
    METRICS_SCHEMA_VERSION,
    REFERENCE_RESULTS,
    SPLIT_NAMES,
    ScoredSplit,
    TestSplitError,
    as_labels,
    as_probabilities,
    decision_split,
)
from helpers.evaluation.threshold import (
    ThresholdChoice,
    choose_operating_point,
    choose_threshold,
)

__all__ = [
    "BAND_KEYS",
    "COUNT_NAMES",
    "DECISION_SPLITS",
    "DEFAULT_ECE_BINS",
    "DEFAULT_MIN_RECALL",
    "METRICS_SCHEMA_VERSION",
    "METRIC_NAMES",
    "REFERENCE_RESULTS",
    "REQUIRED_KEYS",
    "SPLIT_NAMES",
    "Band",
    "ScoredSplit",
    "TestSplitError",
    "ThresholdChoice",
    "_WeightedScores",
    "apply_temperature",
    "as_labels",
    "as_probabilities",
    "band_outcome",
    "binary_metrics",
    "bootstrap_indices",
    "bootstrap_metrics",
    "brier_score",
    "calibration_bins",
    "calibration_summary",
    "choose_band",
    "choose_operating_point",
    "choose_threshold",
    "comparison_table",
    "confusion_counts",
    "confusion_table",
    "coverage_curve",
    "decision_split",
    "describe_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "fit_temperature_to_arrays",
    "load_metrics",
    "metrics_from_counts",
    "metrics_table",
    "most_confident_errors",
    "negative_log_likelihood",
    "ranking_metrics",
    "validate_metrics",
    "write_metrics",
]
