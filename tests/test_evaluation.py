"""Evaluation helpers: metrics, bootstrap, threshold, calibration, band, metrics.json."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest

from helpers import evaluation
from helpers.evaluation import ScoredSplit, TestSplitError
from helpers.operating_point import OperatingPoint, sigmoid

# Ten images, threshold 0.5 (PNEUMONIA when probability >= 0.5), checked by hand:
#   label        1    1    1    1    1    1    0    0    0    0
#   probability .95  .80  .60  .50  .40  .10  .70  .45  .30  .05
#   predicted    1    1    1    1    0    0    1    0    0    0
#   outcome     TP   TP   TP   TP   FN   FN   FP   TN   TN   TN
HAND_LABELS = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
HAND_PROBABILITIES = np.array([0.95, 0.80, 0.60, 0.50, 0.40, 0.10, 0.70, 0.45, 0.30, 0.05])


def synthetic_split(name="validation", n=600, seed=0, separation=2.0, overconfidence=1.0):
    """Scores from a logistic model: true logit z ~ N(+-separation/2 ...), label ~ Bernoulli(sigmoid(z))."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0.8, separation, size=n)  # (n,) more positives than negatives
    labels = (rng.random(n) < sigmoid(true_logits)).astype(int)
    logits = overconfidence * true_logits
    return ScoredSplit(name, labels, sigmoid(logits), logits)


# --------------------------------------------------------------------------- #
# Metrics against hand-computed confusion matrices
# --------------------------------------------------------------------------- #
def test_confusion_counts_match_hand_count():
    assert evaluation.confusion_counts(HAND_LABELS, HAND_PROBABILITIES, 0.5) == {
        "tp": 4, "fp": 1, "tn": 3, "fn": 2}


def test_binary_metrics_match_hand_computation():
    m = evaluation.binary_metrics(HAND_LABELS, HAND_PROBABILITIES, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (4, 1, 3, 2)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["recall"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))  # = 8/11
    # ROC-AUC = share of (positive, negative) pairs ranked correctly: by hand,
    # positives .95 .80 beat all 4 negatives (8), .60 beats 3 (.45 .30 .05), .50 beats 3,
    # .40 beats 2 (.30 .05), .10 beats 1 (.05): 8 + 3 + 3 + 2 + 1 = 17 of 24.
    assert m["roc_auc"] == pytest.approx(17 / 24)
    # Average precision: sum over positives (in score order) of precision at that rank / 6:
    # ranks .95(1/1) .80(2/2) .70(FP) .60(3/4) .50(4/5) .45(FP) .40(5/7) .30(FP) .10(6/9)
    expected_ap = (1 + 1 + 3 / 4 + 4 / 5 + 5 / 7 + 6 / 9) / 6
    assert m["pr_auc"] == pytest.approx(expected_ap)
    assert set(evaluation.METRIC_NAMES) | set(evaluation.COUNT_NAMES) == set(m)


def test_threshold_is_inclusive_and_extremes():
    at_one = evaluation.binary_metrics(HAND_LABELS, HAND_PROBABILITIES, 0.95)
    assert (at_one["tp"], at_one["fp"]) == (1, 0)  # 0.95 >= 0.95 counts as PNEUMONIA
    everything = evaluation.binary_metrics(HAND_LABELS, HAND_PROBABILITIES, 0.0)
    assert everything["recall"] == 1.0 and everything["specificity"] == 0.0
    nothing = evaluation.binary_metrics(HAND_LABELS, HAND_PROBABILITIES, 1.0)
    assert nothing["tp"] == nothing["fp"] == 0
    assert math.isnan(nothing["precision"])  # undefined, not silently 0


def test_confusion_table_counts_and_rates():
    counts = evaluation.confusion_table(HAND_LABELS, HAND_PROBABILITIES, 0.5)
    assert counts.to_numpy().tolist() == [[3, 1], [2, 4]]  # rows: true NORMAL, true PNEUMONIA
    rates = evaluation.confusion_table(HAND_LABELS, HAND_PROBABILITIES, 0.5, normalize=True)
    assert rates.to_numpy() == pytest.approx(np.array([[3 / 4, 1 / 4], [2 / 6, 4 / 6]]))


def test_one_class_gives_nan_auc():
    m = evaluation.binary_metrics([1, 1, 1], [0.2, 0.6, 0.9], 0.5)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["specificity"])
    assert m["recall"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "labels, probabilities, message",
    [
        ([1, 2], [0.1, 0.2], "labels must be 0"),
        ([1, 0], [0.1], "2 labels but 1 probabilities"),
        ([1, 0], [3.2, -1.0], "not logits"),
        ([1, 0], [0.1, np.nan], "finite"),
    ],
)
def test_bad_inputs_say_what_to_do(labels, probabilities, message):
    with pytest.raises(ValueError, match=message):
        evaluation.binary_metrics(labels, probabilities, 0.5)


def test_bad_threshold_rejected():
    with pytest.raises(ValueError, match="threshold must be a probability"):
        evaluation.binary_metrics(HAND_LABELS, HAND_PROBABILITIES, 1.5)


# --------------------------------------------------------------------------- #
# Bootstrap confidence intervals
# --------------------------------------------------------------------------- #
def test_bootstrap_is_deterministic_under_seed_and_contains_point_estimate():
    split = synthetic_split(n=300)
    first = evaluation.bootstrap_metrics(split.labels, split.probabilities, 0.5, n_resamples=300, seed=7)
    second = evaluation.bootstrap_metrics(split.labels, split.probabilities, 0.5, n_resamples=300, seed=7)
    other = evaluation.bootstrap_metrics(split.labels, split.probabilities, 0.5, n_resamples=300, seed=8)
    assert first == second
    assert first != other
    for name in evaluation.METRIC_NAMES:
        entry = first[name]
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
        assert entry["ci_high"] - entry["ci_low"] > 0, name
        assert entry["ci_high"] - entry["ci_low"] < 0.3, name


def test_fast_resample_metrics_equal_scikit_learn_on_the_resampled_data():
    # The bootstrap scores each resample as weights over presorted scores; it must
    # give exactly what binary_metrics (scikit-learn) gives on the resampled arrays.
    rng = np.random.default_rng(21)
    labels = rng.integers(0, 2, size=120)
    probabilities = np.round(rng.random(120), 1)  # many ties
    scorer = evaluation._WeightedScores(labels, probabilities, 0.5)
    assert scorer.metrics(np.ones(120, dtype=int)) == pytest.approx(
        {k: v for k, v in evaluation.binary_metrics(labels, probabilities, 0.5).items()
         if k in evaluation.METRIC_NAMES})
    for indices in evaluation.bootstrap_indices(120, 5, seed=1):
        expected = evaluation.binary_metrics(labels[indices], probabilities[indices], 0.5)
        got = scorer.metrics(np.bincount(indices, minlength=120))
        for name in evaluation.METRIC_NAMES:
            assert got[name] == pytest.approx(expected[name], abs=1e-12), name


def test_bootstrap_interval_narrows_with_more_data():
    small = synthetic_split(n=100, seed=1)
    large = synthetic_split(n=1600, seed=1)
    width = {}
    for label, split in (("small", small), ("large", large)):
        ci = evaluation.bootstrap_metrics(split.labels, split.probabilities, 0.5, n_resamples=200,
                                          metric_names=("accuracy",))["accuracy"]
        width[label] = ci["ci_high"] - ci["ci_low"]
    assert width["large"] < width["small"] / 2


def test_group_bootstrap_resamples_whole_groups():
    groups = np.repeat(np.arange(5), [1, 2, 3, 4, 5])  # 15 images of 5 patients
    for indices in evaluation.bootstrap_indices(15, 20, seed=0, groups=groups):
        chosen_groups = groups[indices]
        for group in np.unique(chosen_groups):
            # every chosen patient comes with all of its images (a multiple of its size)
            assert np.sum(chosen_groups == group) % np.sum(groups == group) == 0


def test_group_bootstrap_is_wider_for_correlated_images():
    rng = np.random.default_rng(3)
    patient_labels = rng.integers(0, 2, size=60)
    patient_scores = np.clip(patient_labels * 0.3 + rng.random(60) * 0.7, 0, 1)
    labels, scores = np.repeat(patient_labels, 10), np.repeat(patient_scores, 10)  # 10 copies each
    groups = np.repeat(np.arange(60), 10)
    plain = evaluation.bootstrap_metrics(labels, scores, 0.5, 300, metric_names=("accuracy",))["accuracy"]
    grouped = evaluation.bootstrap_metrics(labels, scores, 0.5, 300, groups=groups,
                                           metric_names=("accuracy",))["accuracy"]
    assert grouped["ci_high"] - grouped["ci_low"] > 2 * (plain["ci_high"] - plain["ci_low"])


def test_metrics_table_formats_intervals():
    results = {"test": {"recall": {"value": 0.97, "ci_low": 0.95, "ci_high": 0.99}}}
    assert evaluation.metrics_table(results).loc["recall", "test"] == "0.970 [0.950, 0.990]"


def test_comparison_table_lists_references():
    table = evaluation.comparison_table({"this model": {"accuracy": 0.9, "precision": 0.88, "recall": 0.98}})
    assert table.loc["this model", "recall"] == "0.980"
    assert table.loc["Original notebook (reported)", "precision"] == "0.773"
    assert len(table) == 1 + len(evaluation.REFERENCE_RESULTS)


# --------------------------------------------------------------------------- #
# Threshold selection: validation only, by API design
# --------------------------------------------------------------------------- #
def test_choose_threshold_is_highest_keeping_recall():
    # positives' probabilities .95 .80 .60 .50 .40 .10: recall >= 4/6 needs the 4th largest
    assert evaluation.choose_threshold(HAND_LABELS, HAND_PROBABILITIES, min_recall=0.66) == 0.50
    assert evaluation.choose_threshold(HAND_LABELS, HAND_PROBABILITIES, min_recall=1.0) == 0.10
    assert evaluation.choose_threshold(HAND_LABELS, HAND_PROBABILITIES, min_recall=0.5) == 0.60


def test_choose_threshold_on_synthetic_data_meets_target_and_is_highest():
    split = synthetic_split(n=1000, seed=4)
    threshold = evaluation.choose_threshold(split.labels, split.probabilities, 0.98)
    recall = evaluation.binary_metrics(split.labels, split.probabilities, threshold)["recall"]
    assert recall >= 0.98
    higher = np.nextafter(threshold, 1.0)
    assert evaluation.binary_metrics(split.labels, split.probabilities, higher)["recall"] < 0.98


def test_choose_threshold_exact_fraction_is_not_broken_by_rounding():
    labels = np.ones(50, dtype=int)
    scores = np.linspace(0.01, 0.99, 50)
    # 0.98 * 50 = 49.000000000000004 in floating point: still 49 positives needed
    assert evaluation.choose_threshold(labels, scores, 0.98) == pytest.approx(scores[1])


def test_choose_threshold_needs_positives():
    with pytest.raises(ValueError, match="no PNEUMONIA case"):
        evaluation.choose_threshold([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="min_recall"):
        evaluation.choose_threshold([0, 1], [0.1, 0.2], min_recall=0)


def test_operating_point_is_chosen_on_validation():
    validation = synthetic_split("validation", n=500)
    point = evaluation.choose_operating_point(validation, min_recall=0.95)
    assert point.chosen_on == "validation"
    assert point.validation_recall >= 0.95
    assert point.threshold == evaluation.choose_threshold(validation.labels, validation.probabilities, 0.95)
    assert "validation recall >= 0.95" in point.rule


@pytest.mark.parametrize(
    "decide",
    [
        lambda split: evaluation.choose_operating_point(split),
        lambda split: evaluation.fit_temperature(split),
        lambda split: evaluation.choose_band(split, 0.85),
    ],
    ids=["threshold", "temperature", "band"],
)
def test_decisions_refuse_the_test_split(decide):
    test = synthetic_split("test")
    with pytest.raises(TestSplitError, match="test is only reported"):
        decide(test)
    with pytest.raises(TypeError, match="ScoredSplit named 'validation'"):
        decide((test.labels, test.probabilities))  # raw arrays cannot sneak in either
    with pytest.raises(ValueError, match="chosen on"):
        decide(synthetic_split("train"))


def test_decision_functions_take_one_split_only():
    # No decision function has a second data argument through which test could leak.
    for function in (evaluation.choose_operating_point, evaluation.fit_temperature, evaluation.choose_band):
        data_parameters = [p for p in inspect.signature(function).parameters.values()
                           if p.annotation in ("ScoredSplit", ScoredSplit)]
        assert [p.name for p in data_parameters] == ["validation"], function.__name__


def test_decisions_do_not_depend_on_test_labels():
    validation = synthetic_split("validation", seed=5)
    chosen = evaluation.choose_operating_point(validation)
    test = synthetic_split("test", seed=6)
    flipped = ScoredSplit("test", 1 - test.labels, test.probabilities, test.logits)
    # Reporting uses test; the operating point is the same object whatever test holds.
    assert evaluation.binary_metrics(test.labels, test.probabilities, chosen.threshold) != \
        evaluation.binary_metrics(flipped.labels, flipped.probabilities, chosen.threshold)
    assert evaluation.choose_operating_point(validation) == chosen


def test_scored_split_is_read_only_and_named():
    split = synthetic_split(n=20)
    with pytest.raises(ValueError, match="read-only"):
        split.labels[0] = 1 - split.labels[0]
    with pytest.raises(AttributeError):
        split.name = "validation"  # frozen dataclass
    with pytest.raises(ValueError, match="name must be one of"):
        ScoredSplit("holdout", [0, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="holds no images"):
        ScoredSplit("validation", [], [])


def test_scored_split_derives_logits_and_reads_frames():
    import pandas as pd

    split = ScoredSplit("validation", [0, 1], [0.25, 0.75])
    assert split.logits == pytest.approx([-math.log(3), math.log(3)])
    frame = pd.DataFrame({"path": ["a", "b"], "label": [0, 1], "probability": [0.25, 0.75],
                          "logit": [-math.log(3), math.log(3)]})
    assert ScoredSplit.from_frame("test", frame).name == "test"
    with pytest.raises(ValueError, match="lack column"):
        ScoredSplit.from_frame("test", frame.drop(columns="logit"))


# --------------------------------------------------------------------------- #
# Calibration
# --------------------------------------------------------------------------- #
def test_apply_temperature():
    logits = np.array([-2.0, 0.0, 4.0])
    assert evaluation.apply_temperature(logits, 1.0) == pytest.approx(sigmoid(logits))
    assert evaluation.apply_temperature(logits, 2.0) == pytest.approx(sigmoid(logits / 2))
    assert evaluation.apply_temperature(np.array([1000.0, -1000.0]), 1.0) == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="positive"):
        evaluation.apply_temperature(logits, 0.0)


def test_temperature_scaling_reduces_nll_of_overconfident_model():
    validation = synthetic_split("validation", n=4000, seed=2, overconfidence=3.0)
    temperature = evaluation.fit_temperature(validation)
    assert temperature == pytest.approx(3.0, rel=0.15)  # undoes the 3x over-confidence
    before = evaluation.negative_log_likelihood(validation.labels, validation.logits, 1.0)
    after = evaluation.negative_log_likelihood(validation.labels, validation.logits, temperature)
    assert after < before - 0.05
    # ... and it generalizes: a fresh sample of the same model improves too
    fresh = synthetic_split("test", n=4000, seed=3, overconfidence=3.0)
    summary = evaluation.calibration_summary(fresh, temperature)
    assert summary["nll_after"] < summary["nll_before"]
    assert summary["ece_after"] < summary["ece_before"]
    assert summary["brier_after"] < summary["brier_before"]


def test_temperature_of_calibrated_model_is_near_one():
    validation = synthetic_split("validation", n=4000, seed=9)
    assert evaluation.fit_temperature(validation) == pytest.approx(1.0, abs=0.15)


def test_ece_of_perfectly_calibrated_scores_is_near_zero():
    rng = np.random.default_rng(0)
    probabilities = rng.random(200_000)
    labels = (rng.random(200_000) < probabilities).astype(int)  # P(y=1 | p) = p exactly
    assert evaluation.expected_calibration_error(labels, probabilities, 15) < 0.01


def test_ece_by_hand():
    # Two bins of 2: [0.1, 0.1] with labels [0, 1] -> |0.5 - 0.1| = 0.4;
    # [0.9, 0.9] with labels [1, 1] -> |1 - 0.9| = 0.1. ECE = (2 * 0.4 + 2 * 0.1) / 4
    labels, probabilities = [0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]
    assert evaluation.expected_calibration_error(labels, probabilities, 15) == pytest.approx(0.25)
    bins = evaluation.calibration_bins(labels, probabilities, 15)
    assert len(bins) == 15 and bins["count"].sum() == 4
    # probability 1.0 falls in the last bin, 0.0 in the first
    edge = evaluation.calibration_bins([1, 0], [1.0, 0.0], 15)
    assert edge["count"].iloc[-1] == 1 and edge["count"].iloc[0] == 1


def test_the_written_out_ece_and_temperature_of_notebook_04_equal_the_helpers():
    # The notebook's inline steps, on synthetic scores: equal-width bins, |positive rate - mean
    # probability| weighted by the bin's share; T minimizing the NLL of sigmoid(logit / T).
    from scipy.optimize import minimize_scalar

    split = synthetic_split(n=3000, seed=4, overconfidence=0.6)  # under-confident: T < 1
    n_bins = 15
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.clip(np.digitize(split.probabilities, edges[1:-1]), 0, n_bins - 1)  # (N,)
    ece = 0.0
    for index in range(n_bins):
        in_bin = bin_of == index
        if in_bin.any():
            ece += in_bin.mean() * abs(split.labels[in_bin].mean() - split.probabilities[in_bin].mean())
    np.testing.assert_allclose(ece, evaluation.expected_calibration_error(split.labels, split.probabilities, n_bins),
                               rtol=1e-12)

    def nll(log_temperature):
        scaled = split.logits / np.exp(log_temperature)  # (N,)
        return np.mean(np.where(split.labels == 1, np.logaddexp(0, -scaled), np.logaddexp(0, scaled)))

    fitted = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-6})
    temperature = evaluation.fit_temperature(split)
    np.testing.assert_allclose(np.exp(fitted.x), temperature, rtol=1e-5)
    assert temperature < 1 and "under-confident" in evaluation.describe_temperature(temperature)


def test_describe_temperature_names_the_direction():
    assert "over-confident" in evaluation.describe_temperature(2.5)
    assert "softens" in evaluation.describe_temperature(2.5)
    assert "under-confident" in evaluation.describe_temperature(0.925)
    assert "T = 0.93 < 1" in evaluation.describe_temperature(0.925)
    assert "already calibrated" in evaluation.describe_temperature(1.001)
    with pytest.raises(ValueError, match="positive"):
        evaluation.describe_temperature(0.0)


def test_ece_of_overconfident_scores_is_large():
    split = synthetic_split(n=4000, overconfidence=3.0)
    assert evaluation.expected_calibration_error(split.labels, split.probabilities) > 0.05


def test_brier_score_by_hand():
    assert evaluation.brier_score([1, 0], [0.8, 0.4]) == pytest.approx((0.04 + 0.16) / 2)


# --------------------------------------------------------------------------- #
# Abstention band
# --------------------------------------------------------------------------- #
def test_band_decides_outside_and_refers_inside():
    band = evaluation.Band(low=0.3, high=0.7, target_coverage=0.5, chosen_on="validation")
    assert band.decide([0.1, 0.3, 0.5, 0.7, 0.9]).tolist() == [0, -1, -1, 1, 1]
    outcome = evaluation.band_outcome([0, 0, 1, 1, 0], [0.1, 0.3, 0.5, 0.7, 0.9], band)
    assert outcome["coverage"] == pytest.approx(3 / 5)
    assert outcome["accuracy_outside"] == pytest.approx(2 / 3)  # 0.1->0 ok, 0.7->1 ok, 0.9->1 wrong
    assert outcome["recall_outside"] == 1.0
    assert (outcome["n_decided"], outcome["n_referred"]) == (3, 2)


@pytest.mark.parametrize("target", [0.5, 0.7, 0.85, 0.95, 1.0])
def test_band_honours_its_coverage_target(target):
    validation = synthetic_split("validation", n=800, seed=11)
    band = evaluation.choose_band(validation, target_coverage=target)
    outcome = evaluation.band_outcome(validation.labels, validation.probabilities, band)
    assert outcome["coverage"] >= target
    assert band.low <= band.high
    # abstaining on the uncertain middle makes the decided cases more accurate
    all_decided = evaluation.band_outcome(validation.labels, validation.probabilities,
                                          evaluation.Band(0.5, 0.5, 1.0, "validation"))
    assert outcome["accuracy_outside"] >= all_decided["accuracy_outside"] - 1e-12


def test_band_accuracy_rises_as_coverage_falls():
    validation = synthetic_split("validation", n=800, seed=12)
    accuracies = [evaluation.band_outcome(validation.labels, validation.probabilities,
                                          evaluation.choose_band(validation, c))["accuracy_outside"]
                  for c in (1.0, 0.9, 0.8, 0.6)]
    assert accuracies == sorted(accuracies)


def test_band_is_optimal_on_a_small_case_by_brute_force():
    validation = synthetic_split("validation", n=40, seed=13)
    band = evaluation.choose_band(validation, target_coverage=0.8)
    best = evaluation.band_outcome(validation.labels, validation.probabilities, band)["accuracy_outside"]
    scores = np.unique(validation.probabilities)
    for low in scores:
        for high in scores[scores >= low]:
            outcome = evaluation.band_outcome(validation.labels, validation.probabilities,
                                              evaluation.Band(low, high, 0.8, "validation"))
            if outcome["coverage"] >= 0.8:
                assert outcome["accuracy_outside"] <= best + 1e-12


def test_band_contains_operating_threshold_and_agrees_with_it_outside():
    validation = synthetic_split("validation", n=800, seed=14)
    threshold = evaluation.choose_operating_point(validation).threshold
    band = evaluation.choose_band(validation, 0.85, threshold=threshold)
    assert band.low <= threshold <= band.high
    decisions = band.decide(validation.probabilities)
    decided = decisions >= 0
    assert np.array_equal(decisions[decided], (validation.probabilities[decided] >= threshold).astype(int))
    full = evaluation.choose_band(validation, 1.0, threshold=threshold)  # no referral at all
    assert full.low == full.high == threshold


def test_band_recall_floor_and_impossible_targets():
    validation = synthetic_split("validation", n=400, seed=15)
    band = evaluation.choose_band(validation, 0.8, min_recall_outside=0.99)
    assert evaluation.band_outcome(validation.labels, validation.probabilities, band)["recall_outside"] >= 0.99
    with pytest.raises(ValueError, match="target_coverage"):
        evaluation.choose_band(validation, 0.0)
    constant = ScoredSplit("validation", [0, 1, 1], [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="equal"):
        evaluation.choose_band(constant, 0.8)


def test_coverage_curve_chooses_on_validation_and_reports_on_test():
    validation = synthetic_split("validation", n=500, seed=16)
    test = synthetic_split("test", n=500, seed=17)
    curve = evaluation.coverage_curve(validation, test, [1.0, 0.9, 0.8])
    assert list(curve["target_coverage"]) == [1.0, 0.9, 0.8]
    assert (curve["validation_coverage"] >= curve["target_coverage"]).all()
    assert {"test_coverage", "test_accuracy_outside", "test_recall_outside"} <= set(curve.columns)
    with pytest.raises(TestSplitError):
        evaluation.coverage_curve(test, validation, [0.9])  # roles swapped: refused


# --------------------------------------------------------------------------- #
# Error analysis
# --------------------------------------------------------------------------- #
def test_most_confident_errors():
    import pandas as pd

    frame = pd.DataFrame({"path": [f"p{i}" for i in range(10)], "label": HAND_LABELS,
                          "probability": HAND_PROBABILITIES})
    false_negatives = evaluation.most_confident_errors(frame, 0.5, "false_negative")
    assert list(false_negatives["probability"]) == [0.10, 0.40]  # most confident NORMAL call first
    false_positives = evaluation.most_confident_errors(frame, 0.5, "false_positive", count=3)
    assert list(false_positives["path"]) == ["p6"]
    with pytest.raises(ValueError, match="kind"):
        evaluation.most_confident_errors(frame, 0.5, "fn")


# --------------------------------------------------------------------------- #
# metrics.json
# --------------------------------------------------------------------------- #
def minimal_report():
    entry = {"value": 0.9, "ci_low": 0.85, "ci_high": 0.95}
    metrics = {name: dict(entry) for name in evaluation.METRIC_NAMES}
    return {
        "threshold": 0.42, "temperature": 1.7,
        "band": {"low": 0.2, "high": 0.8, "coverage": 0.86, "accuracy_outside": 0.97, "recall_outside": 0.99},
        "ece_before": 0.08, "ece_after": 0.03, "test": metrics, "validation": metrics,
    }


def test_metrics_json_round_trip_is_strict_json(tmp_path):
    report = minimal_report()
    report["test"]["precision"] = {"value": float("nan"), "ci_low": np.float32(0.5), "ci_high": np.int64(1)}
    path = evaluation.write_metrics(report, tmp_path / "metrics.json")
    text = path.read_text()
    assert "NaN" not in text
    loaded = evaluation.load_metrics(path)
    assert loaded["test"]["precision"] == {"value": None, "ci_low": 0.5, "ci_high": 1}
    assert loaded["threshold"] == 0.42
    assert json.loads(text) == loaded


def test_metrics_json_default_path_uses_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path))
    path = evaluation.write_metrics(minimal_report())
    assert path == tmp_path / "metrics.json"
    assert evaluation.load_metrics()["temperature"] == 1.7


def test_load_metrics_missing_file_says_to_run_notebook_04(tmp_path):
    with pytest.raises(FileNotFoundError, match="04_evaluation"):
        evaluation.load_metrics(tmp_path / "metrics.json")


def test_metrics_schema_is_enforced(tmp_path):
    report = minimal_report()
    del report["band"]["recall_outside"]
    del report["validation"]
    with pytest.raises(ValueError, match="band lacks 'recall_outside'.*missing|missing.*band lacks"):
        evaluation.write_metrics(report, tmp_path / "metrics.json")
    assert not (tmp_path / "metrics.json").exists()


def test_threshold_choice_is_not_the_loaded_operating_point():
    chosen = evaluation.choose_operating_point(synthetic_split(n=200, seed=3))
    assert isinstance(chosen, evaluation.ThresholdChoice)
    assert not isinstance(chosen, OperatingPoint)


# --------------------------------------------------------------------------- #
# Figures (headless smoke checks; the numbers they draw are tested above)
# --------------------------------------------------------------------------- #
def test_figures_draw_headless():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from helpers import evaluation_plots
    from tests.conftest import encode_image, synthetic_image

    validation = synthetic_split("validation", n=300, seed=30)
    test = synthetic_split("test", n=300, seed=31)
    curve = evaluation.coverage_curve(validation, test, [1.0, 0.9, 0.8])
    figures = [
        evaluation_plots.plot_roc_and_pr(test.labels, test.probabilities, {"chosen": 0.3, "0.5": 0.5}),
        evaluation_plots.plot_confusion_matrices(test.labels, test.probabilities, 0.3),
        evaluation_plots.plot_reliability(test.labels, {"before": test.probabilities,
                                                        "after": evaluation.apply_temperature(test.logits, 2.0)}),
        evaluation_plots.plot_coverage_curve(curve, chosen_target=0.85, accuracy_target=0.97),
    ]
    from helpers import data

    examples = data.Examples(np.array(["chest_xray/test/PNEUMONIA/person1_virus_1.jpeg"]), np.array([1]),
                             np.array([encode_image(synthetic_image(1))], dtype=object))
    errors = pd.DataFrame({"path": examples.paths, "label": [1], "probability": [0.02]})
    figures.append(evaluation_plots.plot_error_gallery(examples, errors, "false negatives"))
    figures.append(evaluation_plots.plot_error_gallery(examples, errors.iloc[:0], "false positives"))
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figures)
    with pytest.raises(ValueError, match="not among the examples"):
        evaluation_plots.plot_error_gallery(examples, errors.assign(path="elsewhere.jpeg"), "x")
    plt.close("all")
