"""Arriving at a new hospital: shift report, label-free adaptation, few-label site calibration.

The model was validated on films like its training data; a new hospital's films are
not. Three steps a hospital runs, each a function with a JSON-able result:

1. :func:`shift_report` -- on **unlabelled** local films: how many the out-of-distribution
   guard accepts, how far their features and scores sit from validation's, a
   two-sample test against training films, and a plain verdict.
2. :func:`adapt_batchnorm` -- **label-free** adaptation: relative (moment-matched)
   BatchNorm statistics from unlabelled local films, returned as a new Keras model
   (convertible to TFLite like any other). Opt-in: it can help or hurt, and without
   labels nobody can tell which (notebook 08 shows both).
3. :func:`calibrate_site` -- **few labels**: from ``k`` labelled local films per class,
   refit the head (anchored on the training features), recalibrate (Platt, corrected
   to the site's class mix), and set threshold and refer band by one cost rule fixed in
   advance; with a one-sided Clopper-Pearson **bound on recall** from the local
   positives, and a refusal to claim what ``k`` cannot support. The result is a
   :class:`SiteCalibration`: a site :class:`~helpers.operating_point.OperatingPoint`
   plus the refit head, saved to one file with its provenance.

How well step 3 works is measured by :func:`run_protocol` with the protocol in
:data:`PROTOCOL_TEXT`, which also says when it was written and which numbers on the
official test set ("site A") were already known by then. Choices (the calibration
rule, the recommended k) are made on development sites (``Site(..., development=True)``:
simulated sites built from validation patients); site A's numbers are reported, and
choose nothing.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helpers import augment, config
from helpers.evaluation import confusion_counts, expected_calibration_error, metrics_from_counts
from helpers.jsonio import write_json
from helpers.model import LOGIT_LAYER, POOL_LAYER, default_model_path
from helpers.operating_point import OperatingPoint, called_pneumonia, logit, sigmoid
from helpers.progress import progress_bar
from helpers.provenance import FittedOn, model_sha256_of
from helpers.serving import site as site_runtime
from helpers.serving.site import (  # noqa: F401  (re-exported: a site calibration at screening time)
    DEFAULT_CONFIDENCE,
    SITE_FILE_NAME,
    RecallGuarantee,
    positives_needed,
    recall_lower_bound,
)
from helpers.site_adaptation import (  # noqa: F401  (re-exported: steps 1 and 2, without labels)
    CONTROL_TOLERANCE,
    DEPTH_RULE_TEXT,
    SHIFT_RULE,
    ShiftThresholds,
    adapt_batchnorm,
    batchnorm_layers,
    channel_moments,
    depth_control,
    disjoint_training_samples,
    features_and_moments,
    label_free_logits,
    label_free_site_logits,
    relative_statistics,
    shift_report,
    source_sample_for,
)
from helpers.site_heads import (  # noqa: F401  (re-exported: the fitting pieces of step 3)
    Anchor,
    AnchoredSpace,
    LinearHead,
    LocalFilmsContradictModel,
    draw_by_patient,
    estimate_prevalence,
    fit_platt,
    one_blas_thread,
    refit_head,
    shift_to_prevalence,
    split_patients,
    weighted_logistic,
)

REPORT_FILE_NAME = "new_site.json"
K_VALUES = (5, 10, 20, 50, 100)
MIN_K = 5
RECOMMENDED_MIN_K = 10
DEFAULT_DRAWS = 200
METRICS = ("accuracy", "recall", "specificity", "ece", "coverage")

PROTOCOL_TEXT = """\
Protocol for the few-label site calibration (written on 2 December 2026; history below):
1. The site is a set of labelled films with patient ids. Repeat n_draws times (seeded):
   draw k films per class by patient (whole patients, until k films of the class), so no
   patient has films in both the draw and the rest.
2. Calibrate on the draw only: the only labels any method sees are the draw's. The
   site's unlabelled films (draw and rest, labels unseen) may be used by label-free
   steps (BatchNorm statistics, the class-mix estimate), as a hospital would.
3. Score the rest: accuracy, recall and specificity of the threshold decision on every
   rest film, ECE (15 equal-width bins) of the shown probability, and coverage (share
   of rest films not referred). Report mean, 5th and 95th percentile over draws.
4. Rows: zero_shot (validation operating point), label_free (relative BatchNorm
   statistics, validation operating point; no labels, so one model for every draw,
   scored on the same rest sets), calibrated (calibrate_site) for k in 5, 10, 20, 50, 100.
5. Methods and settings are chosen on simulated sites built from validation patients
   only (held out from training), each through one fixed acquisition change. So is
   the recommended number of labelled films (recommend_k). Site A (the official test
   set) is reported as it comes; its numbers are used to choose nothing.

How and when it was fixed (dates UTC):
- Before it was written, site A had already been looked at. Notebook 04 has reported
  each trained model's figures on the official test set since 25 November 2026
  (accuracy, specificity and calibration at the validation operating point). An
  exploratory study of an earlier model from the same training code scored five
  methods on site A with draws of k labelled films per class by patient: zero-shot,
  label-free BatchNorm statistics, a threshold re-picked on the draw, Platt scaling
  and a refit head. This protocol's design follows that study, and the targets for
  site A that notebook 08 checks were set after it.
- 2 December 2026: the protocol was written, naming one simulated site in item 5.
  The same day item 5 was widened to two simulated sites that push the model in
  opposite directions (the record does not show whether before or after the run
  below). The calibration rule was chosen on the simulated sites only.
- 2 December 2026, before the protocol first ran on site A: a run of notebook 08
  scored zero-shot and label-free on the whole of site A and was stopped to fix a
  bug in the label-free step.
- 2 December 2026: the protocol ran on site A with the chosen rule. Its label-free
  row called every film PNEUMONIA on all three sites, site A included; the
  label-free depth rule was then set on training films only, and the protocol ran
  on site A a second time with the same calibration rule (the calibrated rows came
  out identical). A best-possible threshold, chosen with all of site A's labels, was
  computed once to judge the targets; it chooses nothing.
- Until 5 December 2026 notebook 08 chose the recommended k on site A's own results;
  since then it is chosen on the simulated sites and site A is only checked at it.
"""


# --------------------------------------------------------------------------- #
# Few-label site calibration
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class CalibrationRule:
    """The rule fixed in advance (chosen on the simulated site, never on site A).

    Costs in units of one false alarm: a missed pneumonia costs ``miss_cost``, a
    referral ``refer_cost``. With a calibrated probability p, calling NORMAL costs
    ``miss_cost * p`` and calling PNEUMONIA ``1 - p``: PNEUMONIA when
    p >= 1 / (1 + miss_cost); refer when both exceed ``refer_cost``
    (Chow's rule), i.e. refer_cost / miss_cost <= p < 1 - refer_cost.
    """

    miss_cost: float = 3.0
    refer_cost: float = 0.25
    local_share: float = 0.5
    regularization: float = 1.0
    folds: int = 5
    refit_head: bool = True

    def __post_init__(self):
        if self.miss_cost <= 0 or not 0 < self.refer_cost < 1:
            raise ValueError("miss_cost must be > 0 and refer_cost in (0, 1).")
        if self.refer_cost / self.miss_cost > 1 / (1 + self.miss_cost):
            raise ValueError("refer_cost is too high for miss_cost: the band would not contain the threshold.")

    @property
    def calibrated_threshold(self) -> float:
        return 1.0 / (1.0 + self.miss_cost)

    @property
    def calibrated_band(self) -> tuple[float, float]:
        return self.refer_cost / self.miss_cost, 1.0 - self.refer_cost

    def to_dict(self) -> dict:
        return {"miss_cost": self.miss_cost, "refer_cost": self.refer_cost,
                "local_share": self.local_share, "regularization": self.regularization,
                "folds": self.folds, "refit_head": self.refit_head,
                "calibrated_threshold": self.calibrated_threshold,
                "calibrated_band": list(self.calibrated_band)}


@dataclass(frozen=True)
class SiteCalibration(site_runtime.SiteCalibration):
    """:class:`helpers.serving.site.SiteCalibration` (applied at screening time), saved here after fitting."""

    def save(self, path: str | Path | None = None) -> Path:
        """Write the calibration; it must know the model it was fitted on (``calibrate_site(..., fitted_on=)``)."""
        if self.fitted_on is None:
            raise ValueError("This site calibration does not record the model it was fitted on, so nobody could "
                             "check it at load time: pass fitted_on=FittedOn.of_model_file(model_path, width) "
                             "to calibrate_site before saving.")
        return write_json(self.to_dict(), Path(path) if path else config.artifacts_dir() / SITE_FILE_NAME)


def _site_head(rule: CalibrationRule, anchor: Anchor, features, labels) -> LinearHead:
    if not rule.refit_head:
        return anchor.space.head
    return refit_head(anchor, features, labels, rule.local_share, rule.regularization)


def cross_fitted_logits(rule: CalibrationRule, anchor: Anchor, features, labels, patient_ids,
                        rng: np.random.Generator) -> np.ndarray:
    """Out-of-fold logits of the local films: each scored by a head refit without its patients."""
    labels = np.asarray(labels).astype(int)
    if not rule.refit_head:
        return anchor.space.head.logits(features)
    folds = split_patients(patient_ids, rule.folds, rng)
    out_of_fold = np.empty(len(labels))
    for fold in range(rule.folds):
        held_out = folds == fold
        if not held_out.any():
            continue
        fit_on = ~held_out
        if len(np.unique(labels[fit_on])) < 2:  # tiny draws: fall back to the training head
            out_of_fold[held_out] = anchor.space.head.logits(np.asarray(features)[held_out])
            continue
        head = _site_head(rule, anchor, np.asarray(features)[fit_on], labels[fit_on])
        out_of_fold[held_out] = head.logits(np.asarray(features)[held_out])
    return out_of_fold


def calibrate_site(features, labels, patient_ids, unlabelled_features, anchor: Anchor,
                   rule: CalibrationRule = CalibrationRule(),
                   confidence: float = DEFAULT_CONFIDENCE, seed: int = config.DEFAULT_SEED,
                   min_k: int = MIN_K, description: str = "",
                   fitted_on: FittedOn | None = None, film_names=None) -> SiteCalibration:
    """The site operating point from labelled local films (k per class, k >= ``min_k``).

    Steps (the rule is fixed in advance):

    1. refit the head on training films plus the local films (:func:`refit_head`);
    2. cross-fit: out-of-fold logits of the local films, by patient;
    3. Platt scaling on the out-of-fold logits (balanced), then shifted to the site's
       class mix, estimated by EM on the **unlabelled** local films;
    4. threshold and refer band from the rule's costs, in calibrated probability,
       written back onto the raw probability of the site head;
    5. the recall guarantee: a Clopper-Pearson bound from how many local pneumonia
       films the threshold detects out of fold.

    Args:
        features, labels, patient_ids: the labelled local films (pooled features (N, D)).
        unlabelled_features: (M, D) every local film, labels unseen (for the class mix).
        anchor: the training films and the model's head (:meth:`Anchor.build`).
        fitted_on: the model whose features these are
            (:meth:`helpers.provenance.FittedOn.of_model_file`); needed to save the result.
        film_names: the labelled films' file names (no folders), one per label, written
            to the provenance as ``labelled_films`` so a reader can check which films
            the calibration saw (e.g. that an app's sample films are not among them).
            None: not recorded (a hospital may not want its file names in the file).
    """
    labels = np.asarray(labels).astype(int)
    if film_names is not None:
        film_names = [Path(str(name)).name for name in film_names]
        if len(film_names) != len(labels):
            raise ValueError(f"film_names needs one name per labelled film: got {len(film_names)} names for "
                             f"{len(labels)} labels.")
    counts = np.bincount(labels, minlength=2)
    if counts.min() < min_k:
        raise ValueError(f"Site calibration needs at least {min_k} labelled films per class, got "
                         f"{counts[0]} NORMAL and {counts[1]} PNEUMONIA. Label more local films "
                         f"(at least {RECOMMENDED_MIN_K} per class is recommended).")
    rng = np.random.default_rng(seed)
    out_of_fold = cross_fitted_logits(rule, anchor, features, labels, patient_ids, rng)  # (N,)
    slope, balanced_intercept = fit_platt(out_of_fold, labels)
    head = _site_head(rule, anchor, features, labels)
    site_logits = head.logits(unlabelled_features)  # (M,)
    prevalence = estimate_prevalence(sigmoid(slope * site_logits + balanced_intercept), prior=0.5)
    intercept = shift_to_prevalence(balanced_intercept, 0.5, prevalence)
    # calibrated p = sigmoid(slope * logit + intercept) >= c  <=>  raw p >= sigmoid((logit(c) - intercept) / slope)
    def raw(calibrated: float) -> float:
        return float(sigmoid((logit(calibrated) - intercept) / slope))

    threshold = raw(rule.calibrated_threshold)
    detected = int(called_pneumonia(sigmoid(out_of_fold[labels == 1]), threshold).sum())  # out of fold
    guarantee = RecallGuarantee.from_counts(detected, int(counts[1]), confidence)
    low, high = rule.calibrated_band
    point = OperatingPoint(
        threshold=threshold, temperature=1.0 / slope, intercept=intercept,
        band_low=raw(low), band_high=raw(high), temperature_fitted=True,
        chosen_on=description or f"site: {counts[0]} NORMAL + {counts[1]} PNEUMONIA labelled local films",
        rule=(f"cost rule: PNEUMONIA when calibrated p >= {rule.calibrated_threshold:.3f} (a miss costs "
              f"{rule.miss_cost:g} false alarms); refer when {low:.3f} <= calibrated p < {high:.3f}"),
        provenance={
            "method": "anchored head refit + cross-fitted Platt + EM class mix" if rule.refit_head
            else "cross-fitted Platt + EM class mix",
            "k_normal": int(counts[0]), "k_pneumonia": int(counts[1]),
            "unlabelled_films": len(site_logits), "estimated_prevalence": prevalence,
            "platt_slope": slope, "rule": rule.to_dict(), "seed": seed,
            "date": datetime.date.today().isoformat(), "recall_guarantee": guarantee.statement(),
            **({} if film_names is None else {"labelled_films": sorted(film_names)}),
        },
    )
    return SiteCalibration(point, head, guarantee, fitted_on)


def with_head(model, head: LinearHead):
    """A copy of the Keras ``model`` whose ``logit`` layer is ``head``: the site model.

    Same layers and input, so the explorer, Grad-CAM and the TFLite conversion take it
    like the original; its probability is what a site operating point applies to.
    """
    import keras

    site_model = keras.models.clone_model(model)
    site_model.set_weights(model.get_weights())
    kernel, _ = site_model.get_layer(LOGIT_LAYER).get_weights()
    if kernel.shape != (len(head.weights), 1):
        raise ValueError(f"The head has {len(head.weights)} weights; the model's logit layer takes "
                         f"{kernel.shape[0]} features.")
    site_model.get_layer(LOGIT_LAYER).set_weights([head.weights.reshape(-1, 1).astype(np.float32),
                                                   np.array([head.bias], dtype=np.float32)])
    return site_model


def load_site_model(model, path: str | Path | None = None, model_path: str | Path | None = None):
    """``(site model, site operating point)`` from a site calibration file (notebook 08).

    ``model_path``: the Keras file ``model`` was loaded from (default: the artifacts'
    trained model); the calibration must have been fitted on it.
    """
    path = Path(path) if path else config.artifacts_dir() / SITE_FILE_NAME
    calibration = SiteCalibration.load(path)
    model_path = Path(model_path) if model_path else default_model_path()
    calibration.require_model(model_sha256_of(model_path), int(model.get_layer(POOL_LAYER).output.shape[-1]),
                              str(path), str(model_path))
    return with_head(model, calibration.head), calibration.point


# --------------------------------------------------------------------------- #
# A simulated site, for developing methods without touching site A
# --------------------------------------------------------------------------- #
SIMULATED_CHANGES = {
    "darker machine": "zoom out 0.85x, gamma 1.3 (darker), blurred (sharpness -1), grey noise std 6",
    "sharper machine": "zoom in 1.1x, gamma 0.8 (brighter), sharpened (sharpness +1.5), grey noise std 14",
}


def simulate_acquisition(images, change: str, seed: int = config.DEFAULT_SEED) -> np.ndarray:
    """One fixed acquisition change of :data:`SIMULATED_CHANGES`: (N, S, S, 3) 0-255 -> float32.

    The two changes push the model in opposite directions (darker and blurred films
    look less like pneumonia, sharper and noisier ones more), because the direction of
    a new site's shift is not known in advance.
    """
    settings = {"darker machine": (0.85, 1.3, -1.0, 6.0), "sharper machine": (1.1, 0.8, 1.5, 14.0)}
    if change not in settings:
        raise ValueError(f"change must be one of {list(settings)}, got {change!r}.")
    zoom, gamma, sharpness, noise = settings[change]
    rng = np.random.default_rng(seed)
    changed = augment.zoom_centre(np.asarray(images, dtype=np.float32), zoom)
    changed = (255.0 * np.power(np.clip(changed, 0, 255) / 255.0, gamma)).astype(np.float32)
    changed = augment.change_sharpness(changed, np.full(len(changed), sharpness))
    return np.clip(augment.add_grey_noise(changed, rng, np.full(len(changed), noise)), 0, 255).astype(np.float32)


def simulated_site_members(labels, patient_ids, prevalence: float = 0.5,
                           seed: int = config.DEFAULT_SEED) -> np.ndarray:
    """Indices of a site with PNEUMONIA share about ``prevalence``: every NORMAL film and
    whole PNEUMONIA patients drawn at random until the share is reached (sorted)."""
    labels = np.asarray(labels).astype(int)
    patient_ids = np.asarray(patient_ids).astype(str)
    normals = np.flatnonzero(labels == 0)
    wanted = int(round(len(normals) * prevalence / (1.0 - prevalence)))
    rng = np.random.default_rng(seed)
    positives = np.flatnonzero(labels == 1)
    chosen = []
    for patient in rng.permutation(np.unique(patient_ids[positives])):
        if len(chosen) >= wanted:
            break
        chosen.extend(positives[patient_ids[positives] == patient].tolist())
    return np.sort(np.concatenate([normals, np.asarray(chosen, dtype=np.int64)]))


CHOICE_RULE_TEXT = ("among candidate rules run on every simulated site, the highest mean accuracy at k per "
                    "class (averaged over the simulated sites) among those whose mean recall is >= min_recall "
                    "on every simulated site (none: the highest worst-site mean recall)")


def choose_rule(results: dict[str, dict[str, dict]], k: str = "20", min_recall: float = 0.96) -> str:
    """The development choice, stated before it is made: :data:`CHOICE_RULE_TEXT`.

    ``results`` maps a rule's name to ``{simulated site: run_protocol result}``; every
    result must come from a development site (``Site(..., development=True)``).
    """
    if not results:
        raise ValueError("No candidate rule results to choose from.")
    for by_site in results.values():
        require_development(by_site, "choose_rule")

    def values(name, metric):
        return [result["calibrated"][k][metric]["mean"] for result in results[name].values()]

    eligible = [name for name in results if min(values(name, "recall")) >= min_recall]
    if eligible:
        return max(eligible, key=lambda name: float(np.mean(values(name, "accuracy"))))
    return max(results, key=lambda name: min(values(name, "recall")))


# --------------------------------------------------------------------------- #
# Scoring and the protocol
# --------------------------------------------------------------------------- #
def score(point: OperatingPoint, labels, probabilities, logits) -> dict[str, float]:
    """accuracy / recall / specificity at the threshold, ECE of the shown probability, coverage."""
    labels = np.asarray(labels).astype(int)
    metrics = metrics_from_counts(**confusion_counts(labels, probabilities, point.threshold))
    shown = point.calibrated(logits)
    return {"accuracy": metrics["accuracy"], "recall": metrics["recall"],
            "specificity": metrics["specificity"], "ece": expected_calibration_error(labels, shown),
            "coverage": float(1.0 - point.referred(probabilities).mean())}


def summarize(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """{metric: {"mean", "p05", "p95"}} over draws."""
    summary = {}
    for name in METRICS:
        values = np.array([row[name] for row in rows], dtype=np.float64)
        values = values[np.isfinite(values)]
        summary[name] = ({"mean": float(values.mean()), "p05": float(np.percentile(values, 5)),
                          "p95": float(np.percentile(values, 95))} if values.size else
                         {"mean": None, "p05": None, "p95": None})
    return summary


@dataclass(frozen=True)
class Site:
    """One site's films: labels, patients, pooled features and the model's logits.

    ``label_free_logits`` are the same films through the BatchNorm-adapted model
    (None: no label-free row). ``development``: True for a site that choices are made
    on (a simulated site built from validation patients); False (the default) for a
    site whose numbers are reported, such as site A. :func:`choose_rule` and
    :func:`recommend_k` accept only results of development sites.
    """

    name: str
    labels: np.ndarray
    patient_ids: np.ndarray
    features: np.ndarray
    logits: np.ndarray
    label_free_logits: np.ndarray | None = None
    notes: dict = field(default_factory=dict)
    development: bool = False

    def __post_init__(self):
        n = len(self.labels)
        for name in ("patient_ids", "features", "logits"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Site {self.name}: {n} labels but {len(getattr(self, name))} {name}.")
        if self.label_free_logits is not None and len(self.label_free_logits) != n:
            raise ValueError(f"Site {self.name}: label_free_logits must have one value per film.")


@one_blas_thread()
def run_protocol(site: Site, validation_point: OperatingPoint, anchor: Anchor,
                 rule: CalibrationRule = CalibrationRule(),
                 k_values=K_VALUES, draws: int = DEFAULT_DRAWS, seed: int = config.DEFAULT_SEED,
                 confidence: float = DEFAULT_CONFIDENCE, progress: bool = True) -> dict:
    """The protocol of :data:`PROTOCOL_TEXT` on one site; the JSON block of ``new_site.json``.

    Returns ``{"zero_shot": summary, "label_free": summary (when the site has
    label-free logits), "calibrated": {k: summary}, "guarantee": {k: ...}, "n_rest": ...,
    "refused_draws": {k: count}, "development": bool}`` where summaries map each of
    :data:`METRICS` to mean / p05 / p95 over draws. A draw whose local films contradict
    the model (:class:`LocalFilmsContradictModel`) is refused: the site keeps the
    validation point, and it is counted. Any other error raises. The zero-shot and
    label-free rows are scored on the same rest sets as the calibrated ones, per k; the
    top-level ``zero_shot`` / ``label_free`` entries are those of the largest k run.
    """
    labels = np.asarray(site.labels).astype(int)
    rows = {"zero_shot": {}, "label_free": {}, "calibrated": {}}
    guarantees, rest_sizes, refusals = {}, {}, {}
    for k in k_values:
        per_method = {name: [] for name in rows}
        bounds, detected = [], []
        for draw_number in progress_bar(range(draws), desc=f"{site.name} k={k}", disable=not progress):
            rng = np.random.default_rng([seed, k, draw_number])
            draw, rest = draw_by_patient(labels, site.patient_ids, k, rng)
            rest_labels, rest_logits = labels[rest], site.logits[rest]
            per_method["zero_shot"].append(score(validation_point, rest_labels, sigmoid(rest_logits), rest_logits))
            if site.label_free_logits is not None:
                adapted = site.label_free_logits[rest]
                per_method["label_free"].append(score(validation_point, rest_labels, sigmoid(adapted), adapted))
            try:
                calibration = calibrate_site(site.features[draw], labels[draw], site.patient_ids[draw],
                                             site.features, anchor, rule,
                                             confidence, seed=int(rng.integers(2**31)), min_k=min(k, MIN_K))
            except LocalFilmsContradictModel:  # the site keeps the validation point; any other error is a fault
                refusals[str(k)] = refusals.get(str(k), 0) + 1
                per_method["calibrated"].append(per_method["zero_shot"][-1])
                continue
            site_logits = calibration.logits(site.features[rest])
            per_method["calibrated"].append(score(calibration.point, rest_labels, sigmoid(site_logits), site_logits))
            bounds.append(calibration.guarantee.lower_bound)
            detected.append(calibration.guarantee.detected / calibration.guarantee.positives)
        for name, method_rows in per_method.items():
            if method_rows:
                rows[name][str(k)] = summarize(method_rows)
        guarantees[str(k)] = {"lower_bound_mean": float(np.mean(bounds)) if bounds else None,
                              "lower_bound_p05": float(np.percentile(bounds, 5)) if bounds else None,
                              "share_of_draw_positives_detected_mean": float(np.mean(detected)) if detected else None,
                              "all_detected_bound": recall_lower_bound(k, k, confidence),
                              "confidence": confidence}
        rest_sizes[str(k)] = int(len(labels) - 2 * k)
    largest = str(max(k_values))
    result = {"site": site.name, "n_films": len(labels),
              "n_pneumonia": int(labels.sum()), "n_normal": int((labels == 0).sum()),
              "draws": draws, "seed": seed, "k_values": [int(k) for k in k_values],
              "zero_shot": rows["zero_shot"][largest], "zero_shot_by_k": rows["zero_shot"],
              "calibrated": rows["calibrated"], "guarantee": guarantees, "n_rest": rest_sizes,
              "refused_draws": {str(k): refusals.get(str(k), 0) for k in k_values},
              "rule": rule.to_dict(), "notes": dict(site.notes), "development": bool(site.development)}
    if rows["label_free"]:
        result["label_free"] = rows["label_free"][largest]
        result["label_free_by_k"] = rows["label_free"]
    return result


def protocol_table(result: dict, metrics=METRICS):
    """One row per method (and k), columns "<metric> mean (p05-p95)": a pandas DataFrame."""
    import pandas as pd

    def cell(entry):
        if entry["mean"] is None:
            return "-"
        return f"{entry['mean']:.3f} ({entry['p05']:.3f}-{entry['p95']:.3f})"

    table = {"zero-shot": result["zero_shot"]}
    if "label_free" in result:
        table["label-free BatchNorm"] = result["label_free"]
    for k, summary in result["calibrated"].items():
        table[f"calibrated, k = {k} per class"] = summary
    return pd.DataFrame({name: {metric: cell(summary[metric]) for metric in metrics}
                         for name, summary in table.items()}).T


def check_targets(result: dict, targets: dict) -> dict[str, bool]:
    """``targets`` like {"20": {"accuracy.mean": 0.92, "ece.mean<=": 0.06}} -> {label: met}."""
    met = {}
    for k, levels in targets.items():
        summary = result["calibrated"].get(k)
        for key, level in levels.items():
            metric, _, statistic = key.partition(".")
            upper = statistic.endswith("<=")
            statistic = statistic.rstrip("<=")
            value = None if summary is None else summary[metric][statistic]
            label = f"k={k} {metric} {statistic} {'<=' if upper else '>='} {level}"
            met[label] = value is not None and (value <= level if upper else value >= level)
    return met


def require_development(results_by_site: dict[str, dict], chooser: str) -> None:
    """Refuse (ValueError) unless every value is a :func:`run_protocol` result of a development site."""
    if not isinstance(results_by_site, dict) or not results_by_site or "calibrated" in results_by_site:
        raise ValueError(f"{chooser} takes {{development site name: run_protocol result}}, one or more "
                         "simulated sites; not a single result.")
    reported = [name for name, result in results_by_site.items() if result.get("development") is not True]
    if reported:
        raise ValueError(f"{chooser} chooses on development sites only (simulated sites built from validation "
                         f"patients: Site(..., development=True)); {reported} are sites whose numbers are "
                         "reported, and a reported site must not choose what it is then judged by. Choose on "
                         "the simulated sites, then report the site at that choice (check_at_k).")


RECOMMEND_RULE_TEXT = ("the smallest k per class at which, on every simulated site, the calibrated model's mean "
                       "accuracy and mean recall over draws reach the floors")


def recommend_k(development_results: dict[str, dict], min_accuracy: float, min_recall: float) -> dict:
    """How many local films per class to label, chosen on the development sites only.

    Args:
        development_results: ``{simulated site name: run_protocol result}``, each run on
            a ``Site(..., development=True)``. A site whose numbers are reported (site
            A) is refused: choosing k on it and then reporting it at that k would
            overstate. Report it afterwards with :func:`check_at_k`.
        min_accuracy, min_recall: floors on the mean over draws.

    Returns ``{"k": int or None, "chosen_on": [site names], "rule", "floors", "sentence"}``
    by :data:`RECOMMEND_RULE_TEXT` (None: no k tried reaches the floors everywhere).
    """
    require_development(development_results, "recommend_k")
    names = list(development_results)
    shared = set.intersection(*(set(result["calibrated"]) for result in development_results.values()))
    chosen = {"chosen_on": names, "rule": RECOMMEND_RULE_TEXT,
              "floors": {"accuracy_mean": min_accuracy, "recall_mean": min_recall}}
    for k in sorted(shared, key=int):
        summaries = [development_results[name]["calibrated"][k] for name in names]
        accuracy = min(summary["accuracy"]["mean"] for summary in summaries)
        recall = min(summary["recall"]["mean"] for summary in summaries)
        if accuracy >= min_accuracy and recall >= min_recall:
            return {**chosen, "k": int(k), "sentence": (
                f"Label at least {k} films per class: from there, on every simulated site ({', '.join(names)}), "
                f"the calibrated model reaches mean accuracy >= {accuracy:.3f} and mean recall >= {recall:.3f} "
                "on the rest of the site.")}
    return {**chosen, "k": None, "sentence": (
        f"No k tried reaches mean accuracy >= {min_accuracy:g} with mean recall >= {min_recall:g} on every "
        "simulated site: label more films, or keep the model as a second reader only.")}


def check_at_k(result: dict, k: int | None, min_accuracy: float, min_recall: float) -> dict:
    """A reported site's figures at a k chosen elsewhere (:func:`recommend_k`): a check, not a choice.

    Returns ``{"site", "k", "accuracy", "recall", "met", "sentence"}`` (mean and 5th
    percentile over draws; ``met`` None when there is no k to check).
    """
    if k is None:
        return {"site": result["site"], "k": None, "accuracy": None, "recall": None, "met": None,
                "sentence": f"No k was recommended, so there is nothing to check on {result['site']}."}
    summary = result["calibrated"].get(str(k))
    if summary is None:
        run = sorted(result["calibrated"], key=int)
        raise ValueError(f"{result['site']} was not run at k = {k} (it has k = {run}); run the protocol there "
                         "with the recommended k among k_values.")
    accuracy, recall = summary["accuracy"], summary["recall"]
    met = bool(accuracy["mean"] >= min_accuracy and recall["mean"] >= min_recall)
    return {"site": result["site"], "k": int(k),
            "accuracy": {"mean": accuracy["mean"], "p05": accuracy["p05"]},
            "recall": {"mean": recall["mean"], "p05": recall["p05"]}, "met": met,
            "sentence": (f"Check on {result['site']} at the k chosen on the simulated sites (k = {k} per class; "
                         f"this site chose nothing): mean accuracy {accuracy['mean']:.3f} (5th percentile "
                         f"{accuracy['p05']:.3f}), mean recall {recall['mean']:.3f}; floors accuracy >= "
                         f"{min_accuracy:g} and recall >= {min_recall:g} {'met' if met else 'missed'}.")}


def plot_learning_curve(result: dict, metrics=("accuracy", "recall", "specificity", "ece", "coverage")):
    """Each metric against k (log scale): calibrated mean with its 5-95% band, zero-shot and
    label-free as lines. Returns the figure."""
    import matplotlib.pyplot as plt

    ks = sorted(result["calibrated"], key=int)
    x = [int(k) for k in ks]
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0))
    for axis, metric in zip(np.atleast_1d(axes), metrics):
        mean = [result["calibrated"][k][metric]["mean"] for k in ks]
        low = [result["calibrated"][k][metric]["p05"] for k in ks]
        high = [result["calibrated"][k][metric]["p95"] for k in ks]
        axis.fill_between(x, low, high, alpha=0.25, label="calibrated, 5-95%")
        axis.plot(x, mean, marker="o", label="calibrated, mean")
        axis.axhline(result["zero_shot"][metric]["mean"], color="grey", linestyle="--", label="zero-shot")
        if "label_free" in result:
            axis.axhline(result["label_free"][metric]["mean"], color="tab:red", linestyle=":", label="label-free")
        axis.set_xscale("log")
        axis.set_xticks(x, [str(value) for value in x])
        axis.set_xlabel("labelled local films per class (k)")
        axis.set_title(metric)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    figure.suptitle(f"{result['site']}: {result['draws']} draws per k", fontsize=10)
    figure.tight_layout()
    return figure


def plot_site_comparison(distances: dict, scores: dict):
    """Histograms of feature distance and shown probability, one line per named set."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for name, values in distances.items():
        axes[0].hist(values, bins=40, histtype="step", density=True, label=name)
    for name, values in scores.items():
        axes[1].hist(values, bins=np.linspace(0, 1, 41), histtype="step", density=True, label=name)
    axes[0].set(title="feature distance to training (Mahalanobis)", xlabel="distance")
    axes[1].set(title="shown P(pneumonia), validation calibration", xlabel="probability", yscale="log")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def write_report(report: dict, path: str | Path | None = None) -> Path:
    """``<artifacts>/new_site.json`` (strict JSON, atomic)."""
    for key in ("zero_shot", "calibrated"):
        if key not in report:
            raise ValueError(f"new_site.json needs the key {key!r}.")
    return write_json(report, Path(path) if path else config.artifacts_dir() / REPORT_FILE_NAME)
