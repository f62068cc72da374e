"""A new site: draws by patient, recall guarantee, class-mix estimate, site calibration,
the protocol, relative BatchNorm statistics and the site model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import data, screening, site, site_adaptation
from helpers.operating_point import OperatingPoint, sigmoid
from helpers.provenance import FittedOn, ProvenanceMismatch

DIMENSIONS = 12


def gaussian_films(rng, normals: int, pneumonias: int, normal_shift: float = 0.0):
    """Pooled-feature stand-ins: PNEUMONIA films sit +1 along every dimension."""
    labels = np.array([0] * normals + [1] * pneumonias)
    features = rng.normal(size=(len(labels), DIMENSIONS)) + labels[:, None] * 1.0
    features[labels == 0] += normal_shift  # the site's normals look different
    return features, labels


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    training_features, training_labels = gaussian_films(rng, 300, 800)
    head = site.LinearHead(np.full(DIMENSIONS, 1.2), -0.6 * DIMENSIONS)  # the "model": sum of features
    anchor = site.Anchor.build(head, training_features, training_labels, dims=4)
    site_features, site_labels = gaussian_films(rng, 150, 250, normal_shift=0.45)
    # patients with one film and patients with two
    patients = np.array([("q" if label else "") + (f"p{index // 2}" if index % 4 < 2 else f"s{index}")
                         for index, label in enumerate(site_labels)])
    return {"training_features": training_features, "training_labels": training_labels, "head": head,
            "anchor": anchor, "space": anchor.space, "features": site_features, "labels": site_labels,
            "patients": patients}


# --------------------------------------------------------------------------- #
# Draws
# --------------------------------------------------------------------------- #
def test_draws_take_k_films_per_class_by_whole_patients(world):
    draw, rest = site.draw_by_patient(world["labels"], world["patients"], 10, np.random.default_rng(1))
    assert np.bincount(world["labels"][draw]).tolist() == [10, 10]
    assert not set(world["patients"][draw]) & set(world["patients"][rest])
    assert len(draw) + len(rest) == len(world["labels"])
    again, _ = site.draw_by_patient(world["labels"], world["patients"], 10, np.random.default_rng(1))
    assert again.tolist() == draw.tolist()  # seeded


def test_draw_refuses_what_the_site_cannot_give():
    with pytest.raises(ValueError, match="has 2 films of class 0"):
        site.draw_by_patient([0, 0, 1, 1, 1], ["a", "b", "c", "d", "e"], 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="exactly 1 films of class 0 by whole patients"):
        site.draw_by_patient([0, 0, 1], ["a", "a", "c"], 1, np.random.default_rng(0))


def test_excluded_patients_are_never_drawn_and_stay_in_the_rest(world):
    kept_out = sorted(set(world["patients"][world["labels"] == 1]))[:40]
    seen_without_exclusion = False
    for seed in range(20):
        draw, rest = site.draw_by_patient(world["labels"], world["patients"], 20, np.random.default_rng(seed),
                                          exclude_patients=kept_out)
        assert not set(world["patients"][draw]) & set(kept_out)
        assert set(kept_out) <= set(world["patients"][rest])
        assert np.bincount(world["labels"][draw]).tolist() == [20, 20]
        plain, _ = site.draw_by_patient(world["labels"], world["patients"], 20, np.random.default_rng(seed))
        seen_without_exclusion |= bool(set(world["patients"][plain]) & set(kept_out))
    assert seen_without_exclusion  # the exclusion, not luck, keeps them out
    with pytest.raises(ValueError, match="1 films of class 0 to draw from \\(1 more belong to excluded patients\\)"):
        site.draw_by_patient([0, 0, 1, 1], ["a", "b", "c", "d"], 2, np.random.default_rng(0), exclude_patients=["a"])


def test_patient_folds_keep_patients_together():
    patients = np.array(["a", "a", "b", "c", "c", "d", "e"])
    folds = site.split_patients(patients, 3, np.random.default_rng(0))
    for patient in np.unique(patients):
        assert len(set(folds[patients == patient])) == 1
    assert set(folds) == {0, 1, 2}


# --------------------------------------------------------------------------- #
# The guarantee
# --------------------------------------------------------------------------- #
def test_clopper_pearson_bound_known_values():
    assert site.recall_lower_bound(20, 20) == pytest.approx(0.05 ** (1 / 20))  # 0.861
    assert round(site.recall_lower_bound(20, 20), 3) == 0.861
    assert site.recall_lower_bound(0, 5) == 0.0
    assert site.recall_lower_bound(19, 20) < site.recall_lower_bound(20, 20)
    assert site.positives_needed(0.95) == 59 and site.positives_needed(0.86) == 20
    with pytest.raises(ValueError, match="detected <= positives"):
        site.recall_lower_bound(6, 5)


def test_the_guarantee_refuses_to_claim_what_k_cannot_support():
    guarantee = site.RecallGuarantee.from_counts(20, 20)
    assert guarantee.claim(0.85).startswith("Supported: With 20 local pneumonia films")
    refusal = guarantee.claim(0.95)
    assert refusal.startswith("Not supported") and "at least 59" in refusal and "recall >= 0.86" in refusal


# --------------------------------------------------------------------------- #
# Calibration pieces
# --------------------------------------------------------------------------- #
def test_em_recovers_a_known_class_mix():
    rng = np.random.default_rng(3)
    labels = (rng.random(4000) < 0.3).astype(int)
    logits = rng.normal(loc=np.where(labels == 1, 1.5, -1.5))  # calibrated for a 50/50 mix
    probabilities = sigmoid(3.0 * logits)  # exact posterior at prior 0.5: the log-likelihood ratio is 3x
    assert site.estimate_prevalence(probabilities, prior=0.5) == pytest.approx(0.3, abs=0.03)
    assert site.shift_to_prevalence(0.2, 0.5, 0.5) == pytest.approx(0.2)
    assert site.shift_to_prevalence(0.0, 0.5, 0.75) == pytest.approx(np.log(3))


def test_weighted_logistic_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(6)
    x = rng.normal(size=(300, 4)) * [1.0, 10.0, 0.1, 1.0]  # badly scaled columns on purpose
    y = (x @ [1.0, 0.2, 5.0, 0.0] + rng.normal(size=300) > 0).astype(int)
    weights = rng.uniform(0.5, 2.0, size=300)
    coefficients, intercept = site.weighted_logistic(x, y, weights, regularization=0.5)
    reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(x, y, sample_weight=weights)
    np.testing.assert_allclose(coefficients, reference.coef_[0], rtol=1e-4, atol=1e-5)
    assert intercept == pytest.approx(reference.intercept_[0], abs=1e-5)


def test_platt_refuses_a_reversed_ranking_with_its_own_error():
    with pytest.raises(site.LocalFilmsContradictModel, match="ranks NORMAL above PNEUMONIA"):
        site.fit_platt([3.0, 2.0, -2.0, -3.0], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="films of both classes") as one_class:
        site.fit_platt([1.0, 2.0], [1, 1])
    assert not isinstance(one_class.value, site.LocalFilmsContradictModel)  # not a finding about the site
    slope, _ = site.fit_platt([-3.0, -2.0, 2.0, 3.0, -1.0, 1.0], [0, 0, 1, 1, 1, 0])
    assert slope > 0


def test_anchored_space_writes_the_refit_back_as_a_head(world):
    space = world["space"]
    coefficients, intercept = np.array([0.7, 0.3, -0.2, 0.1, 0.05]), 0.4
    expected = space.transform(world["features"]) @ coefficients + intercept
    head = space.to_head(coefficients, intercept)
    np.testing.assert_allclose(head.logits(world["features"]), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(space.transform(world["features"])[:, 0], world["head"].logits(world["features"]))


def test_site_calibration_sets_a_band_around_the_threshold_and_round_trips(world, tmp_path):
    draw, _rest = site.draw_by_patient(world["labels"], world["patients"], 20, np.random.default_rng(4))
    fitted_on = FittedOn("d" * 64, world["features"].shape[1])
    calibration = site.calibrate_site(world["features"][draw], world["labels"][draw], world["patients"][draw],
                                      world["features"], world["anchor"], fitted_on=fitted_on)
    point = calibration.point
    assert point.band_low < point.threshold < point.band_high and point.temperature_fitted
    # the cost rule: the threshold is where the shown probability is 1 / (1 + miss_cost) = 0.25
    np.testing.assert_allclose(point.calibrated_from_probability(point.threshold), 0.25, rtol=1e-6)
    assert point.provenance["k_normal"] == 20 and 0.4 < point.provenance["estimated_prevalence"] < 0.8
    assert calibration.guarantee.positives == 20 and "recall >=" in point.provenance["recall_guarantee"]
    path = calibration.save(tmp_path / "site_calibration.json")
    loaded = site.SiteCalibration.load(path)
    assert loaded.point.to_dict() == point.to_dict()
    np.testing.assert_allclose(loaded.logits(world["features"]), calibration.logits(world["features"]))
    assert json.loads(path.read_text())["guarantee"]["lower_bound"] == calibration.guarantee.lower_bound
    assert loaded.fitted_on == fitted_on
    saved = json.loads(path.read_text())
    del saved["fitted_on"]
    (tmp_path / "anonymous.json").write_text(json.dumps(saved))
    with pytest.raises(ProvenanceMismatch, match="anonymous.json does not record which model.*notebook 08"):
        site.SiteCalibration.load(tmp_path / "anonymous.json")


def test_the_app_sample_films_are_not_in_a_calibration_drawn_without_their_patients(world, tmp_path):
    """The deployment draw of notebook 08: the app's sample films' patients are kept out, and the
    saved calibration records its films so that anyone can check it."""
    labels = world["labels"]
    names = np.array([f"person{index // 2}_bacteria_{index}.jpeg" if label
                      else f"IM-{index // 2:04d}-000{index % 2 + 1}.jpeg" for index, label in enumerate(labels)])
    for name, label in zip(names, labels):  # the Kaggle folder layout the app reads its samples from
        folder = tmp_path / "chest_xray" / "test" / ("PNEUMONIA" if label else "NORMAL")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    samples = screening.sample_films(data_dir=tmp_path)
    assert len(samples) == 6
    sample_patients = {data.patient_id(path.name) for path in samples}
    patients = np.array([data.patient_id(name) for name in names])
    draw, _ = site.draw_by_patient(labels, patients, 20, np.random.default_rng(0), exclude_patients=sample_patients)
    calibration = site.calibrate_site(world["features"][draw], labels[draw], patients[draw], world["features"],
                                      world["anchor"], film_names=[f"chest_xray/test/x/{name}" for name in names[draw]],
                                      fitted_on=FittedOn("e" * 64, world["features"].shape[1]))
    path = calibration.save(tmp_path / "site_calibration.json")
    recorded = site.SiteCalibration.load(path).point.provenance["labelled_films"]
    assert sorted(recorded) == sorted(names[draw].tolist())  # names only, no folders
    assert not {data.patient_id(name) for name in recorded} & sample_patients
    with pytest.raises(ValueError, match="one name per labelled film"):
        site.calibrate_site(world["features"][draw], labels[draw], patients[draw], world["features"],
                            world["anchor"], film_names=names[:3])


def test_site_calibration_needs_enough_films_and_a_real_file(world, tmp_path):
    features, labels = world["features"][:8], np.array([0, 0, 0, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="at least 5 labelled films per class, got 4 NORMAL"):
        site.calibrate_site(features, labels, np.arange(8).astype(str), features, world["anchor"])
    with pytest.raises(FileNotFoundError, match="notebook 08"):
        site.SiteCalibration.load(tmp_path / "missing.json")
    OperatingPoint().save(tmp_path / "point.json")
    with pytest.raises(ValueError, match="not a site calibration file"):
        site.SiteCalibration.load(tmp_path / "point.json")


def test_the_protocol_reports_every_row_and_calibration_beats_zero_shot_on_a_shifted_site(world):
    logits = world["head"].logits(world["features"])
    shifted = site.Site("synthetic", world["labels"], world["patients"], world["features"], logits,
                        label_free_logits=logits - 0.5)
    validation_point = OperatingPoint(threshold=0.5, temperature=1.0, band_low=0.3, band_high=0.8)
    result = site.run_protocol(shifted, validation_point, world["anchor"], k_values=(5, 20), draws=4,
                               progress=False)
    assert {"zero_shot", "label_free", "calibrated"} <= set(result)
    assert result["development"] is False and result["refused_draws"] == {"5": 0, "20": 0}
    assert set(result["calibrated"]) == {"5", "20"}
    for entry in (result["zero_shot"], result["label_free"], *result["calibrated"].values()):
        assert set(entry) == set(site.METRICS)
        assert all(set(value) == {"mean", "p05", "p95"} for value in entry.values())
        assert entry["accuracy"]["p05"] <= entry["accuracy"]["mean"] <= entry["accuracy"]["p95"]
    # shifted normals: the validation calibration is off; 20 local films per class recalibrate it
    assert result["calibrated"]["20"]["ece"]["mean"] < result["zero_shot"]["ece"]["mean"]
    assert result["guarantee"]["20"]["all_detected_bound"] == pytest.approx(0.05 ** (1 / 20))
    table = site.protocol_table(result)
    assert list(table.index) == ["zero-shot", "label-free BatchNorm", "calibrated, k = 5 per class",
                                 "calibrated, k = 20 per class"]
    met = site.check_targets(result, {"20": {"accuracy.mean": 0.0, "ece.mean<=": -1.0}})
    assert list(met.values()) == [True, False]


def test_a_draw_whose_films_contradict_the_model_is_counted_as_refused(world):
    rng = np.random.default_rng(7)
    features, labels = gaussian_films(rng, 60, 60)
    features[labels == 1] -= 2.0  # this site's pneumonias sit where the model expects normals
    reversed_site = site.Site("reversed", labels, np.array([f"r{index}" for index in range(len(labels))]),
                              features, world["head"].logits(features))
    validation_point = OperatingPoint(threshold=0.5, temperature=1.0, band_low=0.3, band_high=0.8)
    result = site.run_protocol(reversed_site, validation_point, world["anchor"], site.CalibrationRule(refit_head=False),
                               k_values=(5, 10), draws=3, progress=False)
    assert result["refused_draws"] == {"5": 3, "10": 3}
    for k in ("5", "10"):  # a refused draw keeps the validation point
        assert result["calibrated"][k] == result["zero_shot_by_k"][k]
        assert result["guarantee"][k]["lower_bound_mean"] is None


@pytest.mark.parametrize("error", [ValueError("a bug in the class-mix estimate"), KeyError("a bug")])
def test_any_other_error_inside_calibrate_site_propagates_out_of_the_protocol(world, monkeypatch, error):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(site, "estimate_prevalence", broken)
    logits = world["head"].logits(world["features"])
    plain = site.Site("synthetic", world["labels"], world["patients"], world["features"], logits)
    with pytest.raises(type(error), match="a bug"):
        site.run_protocol(plain, OperatingPoint(), world["anchor"], k_values=(5,), draws=2, progress=False)


def protocol_result(accuracy, recall, k="20", development=True, name="s"):
    """The part of a run_protocol result that choose_rule / recommend_k / check_at_k read."""
    return {"site": name, "development": development,
            "calibrated": {k: {"accuracy": {"mean": accuracy, "p05": accuracy - 0.02},
                               "recall": {"mean": recall, "p05": recall - 0.02}}}}


def test_choose_rule_prefers_accuracy_among_rules_that_keep_recall_on_every_simulated_site():
    def result(accuracy, recall):
        return protocol_result(accuracy, recall)
    rules = {"a": {"s1": result(0.95, 0.90), "s2": result(0.95, 0.99)},
             "b": {"s1": result(0.92, 0.97), "s2": result(0.90, 0.97)},
             "c": {"s1": result(0.91, 0.99), "s2": result(0.90, 0.99)}}
    assert site.choose_rule(rules) == "b"  # a misses recall on s1; b beats c on mean accuracy
    assert site.choose_rule({"a": rules["a"], "d": {"s1": result(0.9, 0.93), "s2": result(0.9, 0.93)}}) == "d"
    with pytest.raises(ValueError, match="development sites only"):
        site.choose_rule({"a": {"site A": protocol_result(0.95, 0.99, development=False)}})


def test_recommend_k_chooses_on_the_simulated_sites_and_site_a_is_only_checked():
    def result(by_k, development=True, name="s"):
        entries = [protocol_result(accuracy, recall, k, development, name) for k, (accuracy, recall) in by_k.items()]
        return {**entries[0], "calibrated": {k: entry["calibrated"][k] for k, entry in zip(by_k, entries)}}

    simulated = {"darker": result({"5": (0.90, 0.97), "10": (0.93, 0.97), "20": (0.95, 0.98)}),
                 "sharper": result({"5": (0.95, 0.90), "10": (0.94, 0.95), "20": (0.96, 0.97)})}
    recommendation = site.recommend_k(simulated, min_accuracy=0.92, min_recall=0.96)
    assert recommendation["k"] == 20  # k = 10 misses recall on the sharper site
    assert recommendation["chosen_on"] == ["darker", "sharper"]
    assert "every simulated site" in recommendation["sentence"]
    assert site.recommend_k(simulated, min_accuracy=0.99, min_recall=0.5)["k"] is None

    # on its own results site A would pick k = 10; it is only checked, at the simulated sites' k
    site_a = result({"5": (0.80, 0.90), "10": (0.99, 0.99), "20": (0.91, 0.97)}, development=False, name="site A")
    with pytest.raises(ValueError, match=r"development sites only.*\['site A'\]"):
        site.recommend_k({"site A": site_a}, min_accuracy=0.92, min_recall=0.96)
    with pytest.raises(ValueError, match="not a single result"):
        site.recommend_k(site_a, min_accuracy=0.92, min_recall=0.96)
    check = site.check_at_k(site_a, recommendation["k"], min_accuracy=0.92, min_recall=0.96)
    assert check["k"] == 20 and check["met"] is False and check["accuracy"]["mean"] == 0.91
    assert "this site chose nothing" in check["sentence"] and check["sentence"].endswith("missed.")
    assert site.check_at_k(site_a, None, 0.92, 0.96)["met"] is None
    with pytest.raises(ValueError, match="not run at k = 50"):
        site.check_at_k(site_a, 50, 0.92, 0.96)


def test_protocol_text_states_its_history_not_a_claim_of_blindness():
    text = site.PROTOCOL_TEXT
    assert "before any number" not in text
    assert "2 December 2026" in text and "exploratory study" in text and "recommend_k" in text
    assert not {"issue", "ticket", "spike", "session"} & set(text.lower().replace(",", " ").split())


def test_simulated_site_members_reach_the_class_mix_by_whole_patients():
    labels = np.array([0] * 10 + [1] * 40)
    patients = np.array([f"n{i}" for i in range(10)] + [f"p{i // 2}" for i in range(40)])
    members = site.simulated_site_members(labels, patients, prevalence=0.5)
    assert (labels[members] == 0).sum() == 10 and (labels[members] == 1).sum() == 10
    flat = np.full((2, 32, 32, 3), 128, np.float32)
    for change in site.SIMULATED_CHANGES:
        changed = site.simulate_acquisition(flat, change)
        assert changed.shape == (2, 32, 32, 3) and changed.dtype == np.float32 and changed.min() >= 0
        assert changed.max() <= 255
    darker, brighter = (site.simulate_acquisition(flat, change).mean() for change in site.SIMULATED_CHANGES)
    assert darker < 128 < brighter
    with pytest.raises(ValueError, match="change must be one of"):
        site.simulate_acquisition(flat, "x-ray machine from 1950")


# --------------------------------------------------------------------------- #
# Label-free adaptation and the site model (tiny Keras model)
# --------------------------------------------------------------------------- #
def test_relative_statistics_map_target_moments_onto_source_moments():
    rng = np.random.default_rng(5)
    epsilon, mean, variance = 1e-3, np.array([0.2, -0.1]), np.array([1.5, 0.7])
    source = rng.normal([1.0, 2.0], [2.0, 0.5], size=(5000, 2))
    target = rng.normal([3.0, 1.0], [1.0, 1.5], size=(5000, 2))

    def layer(x, m, v):
        return (x - m) / np.sqrt(v + epsilon)

    new_mean, new_variance = site.relative_statistics(
        mean, variance, epsilon, (source.mean(0), source.var(0)), (target.mean(0), target.var(0)))
    np.testing.assert_allclose(layer(target, new_mean, new_variance).mean(0), layer(source, mean, variance).mean(0),
                               atol=1e-9)
    np.testing.assert_allclose(layer(target, new_mean, new_variance).std(0), layer(source, mean, variance).std(0),
                               rtol=1e-9)


def test_channel_moments_of_outputs_with_different_spatial_sizes():
    import keras

    inputs = keras.Input(shape=(8, 8, 3))
    big = keras.layers.Conv2D(2, 1, name="big")(inputs)  # (B, 8, 8, 2)
    small = keras.layers.Conv2D(5, 2, strides=2, name="small")(inputs)  # (B, 4, 4, 5)
    extractor = keras.Model(inputs, [big, small])
    images = np.random.default_rng(0).uniform(0, 255, size=(7, 8, 8, 3)).astype(np.float32)
    moments = site.channel_moments(extractor, images, batch_size=3)
    for (mean, variance), output in zip(moments, extractor.predict(images, verbose=0)):
        values = output.reshape(-1, output.shape[-1]).astype(np.float64)
        np.testing.assert_allclose(mean, values.mean(0), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(variance, values.var(0), rtol=1e-4, atol=1e-3)


def test_adapt_batchnorm_and_with_head_on_a_tiny_model(tmp_path):
    from helpers import model as model_lib
    from helpers.ood import compute_features, feature_model

    model = model_lib.build_model(weights=None, image_size=32)
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 255, size=(8, 32, 32, 3)).astype(np.float32)
    target = np.clip(source * 0.5 + 60, 0, 255)  # a darker, low-contrast machine
    adapted = site.adapt_batchnorm(model, source, target, layers_per_pass=20, batch_size=4, progress=False)
    assert [layer.name for layer in adapted.layers] == [layer.name for layer in model.layers]
    first = site.batchnorm_layers(model)[0].name
    moved = adapted.get_layer(first).moving_mean.numpy()
    assert not np.allclose(moved, model.get_layer(first).moving_mean.numpy())
    # after adaptation the first BatchNorm layer outputs on target what the original did on source
    import keras
    original_out = keras.Model(model.inputs, model.get_layer(first).output).predict(source, verbose=0)
    adapted_out = keras.Model(adapted.inputs, adapted.get_layer(first).output).predict(target, verbose=0)
    np.testing.assert_allclose(adapted_out.mean((0, 1, 2)), original_out.mean((0, 1, 2)), atol=2e-3)
    # the same films on both sides: every layer, deep ones included, keeps its statistics
    unchanged = site.adapt_batchnorm(model, source, source, layers_per_pass=4, batch_size=4, progress=False)
    for layer in site.batchnorm_layers(model):
        np.testing.assert_allclose(unchanged.get_layer(layer.name).moving_mean.numpy(),
                                   layer.moving_mean.numpy(), atol=1e-3)
        np.testing.assert_allclose(unchanged.get_layer(layer.name).moving_variance.numpy(),
                                   layer.moving_variance.numpy(), rtol=1e-3, atol=1e-3)

    # the adapted model is an ordinary Keras model: it converts to TFLite and agrees with itself there
    from helpers import tflite
    path = tflite.convert(adapted, "float32", tmp_path / "adapted_float32.tflite")
    np.testing.assert_allclose(tflite.TFLiteClassifier(path).predict(target),
                               adapted.predict(target, verbose=0)[:, 0], atol=1e-4)

    head = site.LinearHead(np.linspace(-1, 1, 1280), 0.25)
    site_model = site.with_head(model, head)
    features = compute_features(feature_model(model), source)  # (8, 1280)
    np.testing.assert_allclose(site_model.predict(source, verbose=0)[:, 0], sigmoid(head.logits(features)),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="takes 1280 features"):
        site.with_head(model, site.LinearHead(np.ones(3), 0.0))


def test_first_layers_adapts_only_the_early_batchnorm_layers():
    from helpers import model as model_lib

    model = model_lib.build_model(weights=None, image_size=32)
    rng = np.random.default_rng(1)
    source = rng.uniform(0, 255, size=(6, 32, 32, 3)).astype(np.float32)
    target = np.clip(source * 0.5 + 60, 0, 255)
    adapted = site.adapt_batchnorm(model, source, target, layers_per_pass=100, batch_size=3, progress=False,
                                   first_layers=3)
    layers = site.batchnorm_layers(model)
    changed = [not np.allclose(adapted.get_layer(layer.name).moving_mean.numpy(), layer.moving_mean.numpy())
               for layer in layers]
    assert changed[:3] == [True, True, True] and not any(changed[3:])
    with pytest.raises(ValueError, match="no BatchNormalization layer"):
        site.adapt_batchnorm(model, source, target, progress=False, first_layers=0)


def test_disjoint_training_samples_share_no_film_and_keep_the_mix():
    labels = np.array([1] * 60 + [0] * 40)
    first, second = site.disjoint_training_samples(labels, 0.5, 20, seed=3)
    assert len(first) == len(second) == 20 and not set(first) & set(second)
    assert labels[first].mean() == labels[second].mean() == 0.5


def test_depth_control_picks_the_deepest_depth_that_stays_quiet(monkeypatch):
    shifts = {3: 0.01, 10: -0.2, 20: -0.4, None: 4.3}  # as measured on the real model, 400 films a side

    class Head:
        def logits(self, features):
            return np.zeros(len(features))

    monkeypatch.setattr(site.LinearHead, "from_model", classmethod(lambda cls, model: Head()))
    monkeypatch.setattr(site_adaptation, "features_and_moments",
                        lambda model, images, batch_size=32: (images[:, 0], None))
    monkeypatch.setattr(site_adaptation, "label_free_logits",
                        lambda model, source, target, *args, first_layers=None, **kw: (
                            np.full(len(target), shifts[first_layers]), None))
    images = np.zeros((100, 2))
    labels = np.array([1, 0] * 50)
    result = site.depth_control(None, images, labels, 0.5, 20, [3, 10, 20, None])
    assert result["shifts"] == pytest.approx({"3": 0.01, "10": -0.2, "20": -0.4, "all": 4.3})
    assert result["chosen"] == 10
    result = site.depth_control(None, images, labels, 0.5, 20, [20, None], tolerance=0.1)
    assert result["chosen"] == 0  # nothing passes: do not adapt


def test_features_and_moments_measure_in_one_cached_pass(tmp_path, monkeypatch):
    import keras

    from helpers import model as model_lib
    from helpers.ood import compute_features, feature_model

    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path))
    model = model_lib.build_model(weights=None, image_size=32)
    images = np.random.default_rng(2).uniform(0, 255, size=(7, 32, 32, 3)).astype(np.float32)
    features, moments = site.features_and_moments(model, images, batch_size=3)
    np.testing.assert_allclose(features, compute_features(feature_model(model), images), rtol=1e-5, atol=1e-5)
    layers = site.batchnorm_layers(model)
    extractor = keras.Model(model.inputs, [layer.input for layer in layers])
    assert len(moments) == len(layers)
    for (mean, variance), (expected_mean, expected_variance) in zip(moments, site.channel_moments(extractor, images)):
        np.testing.assert_allclose(mean, expected_mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(variance, expected_variance, rtol=1e-4, atol=1e-4)
    # the second time nothing goes through the network
    monkeypatch.setattr(site_adaptation, "_measure", lambda *args: pytest.fail("measured twice"))
    again_features, again_moments = site.features_and_moments(model, images, batch_size=3)
    np.testing.assert_array_equal(again_features, features)
    np.testing.assert_array_equal(again_moments[-1][1], moments[-1][1])


def test_one_pass_adaptation_uses_moments_through_the_original_model(tmp_path, monkeypatch):
    import keras

    from helpers import model as model_lib

    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path))
    model = model_lib.build_model(weights=None, image_size=32)
    rng = np.random.default_rng(3)
    source = rng.uniform(0, 255, size=(6, 32, 32, 3)).astype(np.float32)
    target = np.clip(source[::-1] * 0.6 + 50, 0, 255)
    layers = site.batchnorm_layers(model)
    extractor = keras.Model(model.inputs, [layer.input for layer in layers])
    expected = [site.relative_statistics(layer.moving_mean.numpy(), layer.moving_variance.numpy(), float(layer.epsilon),
                                         source_moments, target_moments)
                for layer, source_moments, target_moments in zip(layers, site.channel_moments(extractor, source),
                                                                 site.channel_moments(extractor, target))]
    adapted = site.adapt_batchnorm(model, source, target, layers_per_pass=100, batch_size=4, progress=False)
    for layer, (mean, variance) in zip(layers, expected):
        np.testing.assert_allclose(adapted.get_layer(layer.name).moving_mean.numpy(), mean, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(adapted.get_layer(layer.name).moving_variance.numpy(), variance, rtol=1e-3,
                                   atol=1e-3)


def test_the_label_free_row_is_one_seeded_call(tmp_path, monkeypatch):
    from helpers import model as model_lib
    from helpers.ood import compute_features, feature_model

    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path))
    rng = np.random.default_rng(4)
    model = site.with_head(model_lib.build_model(weights=None, image_size=32),
                           site.LinearHead(rng.normal(size=1280), 0.1))  # a head that reads the features
    training = rng.uniform(0, 255, size=(24, 32, 32, 3)).astype(np.uint8)
    labels = np.array([0, 1, 1] * 8)
    films = np.clip(rng.uniform(0, 255, size=(5, 32, 32, 3)) * 0.7 + 40, 0, 255).astype(np.float32)

    def row(depth, seed=7, share=0.5):
        return site.label_free_site_logits(model, training, labels, films, share, 8, depth, batch_size=4, seed=seed)

    first = row(3)
    np.testing.assert_array_equal(row(3), first)  # the same arguments give the same row
    source = training[site.source_sample_for(labels, 0.5, 8, 7)]  # what the call adapts from
    expected, _ = site.label_free_logits(model, source, films, layers_per_pass=100, batch_size=4, first_layers=3)
    np.testing.assert_allclose(first, expected, rtol=1e-6, atol=0)
    sources = []
    adapt = site_adaptation.label_free_logits
    monkeypatch.setattr(site_adaptation, "label_free_logits",
                        lambda model, source, *args, **kwargs: (sources.append(source), adapt(model, source, *args,
                                                                                             **kwargs))[1])
    row(3, seed=8, share=0.25)
    np.testing.assert_array_equal(sources[-1], training[site.source_sample_for(labels, 0.25, 8, 8)])
    assert labels[site.source_sample_for(labels, 0.25, 8, 8)].mean() == 0.25  # the site's class mix
    original = site.LinearHead.from_model(model).logits(compute_features(feature_model(model), films))
    np.testing.assert_allclose(row(0), original, rtol=1e-5, atol=0)  # depth 0: no adaptation
    assert len(sources) == 1


def test_the_small_fits_run_on_one_blas_thread():
    from threadpoolctl import threadpool_info

    with site.one_blas_thread():
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and set(blas) == {1}
