"""The one-pass model and the TensorFlow-free screening pipeline (web app and batch CLI).

A tiny 224x224 classifier with the project's layer names (``out_relu`` 7x7, ``global_pool``,
``logit``, ``probability``) keeps conversion to a few seconds; the real model's heat-map
agreement is measured by notebook 06 (``parity.json``, checked in test_notebooks).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import one_pass, screening
from helpers.operating_point import OperatingPoint
from helpers.provenance import FittedOn, ProvenanceMismatch
from tests.films import POINT, encode_image, film_bytes, grey_films, saved_classifier, tiny_classifier


@pytest.fixture(scope="module")
def classifier():
    return tiny_classifier()


@pytest.fixture(scope="module")
def models(classifier, tmp_path_factory):
    """{variant: path} of the float32 and int8 one-pass models, with metadata (and the Keras model's hash)."""
    directory = tmp_path_factory.mktemp("one_pass")
    calibration = grey_films(16, seed=1).astype(np.uint8)
    keras_file = saved_classifier(classifier, directory)
    return {variant: one_pass.convert_one_pass(classifier, variant, POINT, calibration, directory,
                                               keras_model_path=keras_file)
            for variant in ("float32", "int8")}


@pytest.fixture(scope="module")
def screener(models):
    return screening.Screener(screening.OnePassEngine(models["float32"]))


# ----------------------------------------------------------------- the one-pass model (Keras)
def test_logit_map_mean_is_the_logit(classifier):
    import keras

    films = grey_films(4)
    probability, logit_map, pooled = one_pass.one_pass_model(classifier).predict(films, verbose=0)
    logits = keras.Model(classifier.inputs, classifier.get_layer("logit").output).predict(films, verbose=0)[:, 0]
    assert logit_map.shape == (4, 7, 7, 1) and pooled.shape == (4, 8)
    np.testing.assert_allclose(logit_map.mean(axis=(1, 2, 3)), logits, atol=1e-5)
    np.testing.assert_allclose(probability[:, 0], classifier.predict(films, verbose=0)[:, 0], atol=1e-6)


@pytest.mark.parametrize("decided", [1, 0])
def test_heat_map_from_the_logit_map_is_grad_cam(classifier, decided):
    from helpers import gradcam

    films = grey_films(3, seed=5)
    _, logit_map, _ = one_pass.one_pass_model(classifier).predict(films, verbose=0)
    expected = gradcam.compute_gradcam(classifier, films, target=[decided] * 3)  # (3, 224, 224)
    bias = one_pass.head_bias(classifier)
    for index in range(3):
        heatmap = screening.heatmap_from_logit_map(logit_map[index, ..., 0], bias, positive=bool(decided))
        np.testing.assert_allclose(heatmap, expected[index], atol=1e-4)


def test_heat_map_keeps_only_evidence_for_the_decided_class():
    logit_map = np.zeros((7, 7))
    logit_map[0, 0], logit_map[6, 6] = 3.0, -3.0  # bias 0: one cell for, one against PNEUMONIA
    pneumonia = screening.heatmap_from_logit_map(logit_map, 0.0, positive=True)
    normal = screening.heatmap_from_logit_map(logit_map, 0.0, positive=False)
    assert pneumonia[0, 0] == pytest.approx(1.0) and pneumonia[-1, -1] == 0.0
    assert normal[-1, -1] == pytest.approx(1.0) and normal[0, 0] == 0.0


# ----------------------------------------------------------------- the engine
@pytest.mark.parametrize("variant, tolerance", [("float32", 1e-4), ("int8", 5e-2)])
def test_engine_matches_keras_in_one_call(classifier, models, variant, tolerance):
    engine = screening.OnePassEngine(models[variant])
    films = grey_films(4, seed=7)
    expected = classifier.predict(films, verbose=0)[:, 0]
    for film, keras_probability in zip(films, expected):
        probability, logit_map, features = engine.run(film)
        assert logit_map.shape == (7, 7) and features.shape == (8,)
        assert abs(probability - keras_probability) <= tolerance
    assert engine.variant == variant and engine.point.threshold == POINT.threshold
    assert engine.metadata["outputs"]["logit_map"]["shape"] == [1, 7, 7, 1]


def copy_model(path: Path, target: Path) -> Path:
    shutil.copy(path, target / path.name)
    shutil.copy(path.with_suffix(".json"), target / path.with_suffix(".json").name)
    return target / path.name


@pytest.mark.parametrize("change, message", [
    (lambda m: m["outputs"]["pooled_features"].update(shape=[1, 1280]), "does not match its metadata"),
    (lambda m: m.pop("outputs"), "not a one-pass screening model"),
    (lambda m: m.pop("logit_map"), "lacks logit_map.bias"),
])
def test_metadata_that_does_not_match_the_file_is_refused(models, tmp_path, change, message):
    path = copy_model(models["float32"], tmp_path)
    metadata = json.loads(path.with_suffix(".json").read_text())
    change(metadata)
    path.with_suffix(".json").write_text(json.dumps(metadata))
    with pytest.raises(screening.ScreeningModelError, match=message):
        screening.OnePassEngine(path)


def test_missing_model_names_the_command_that_makes_it(tmp_path, monkeypatch):
    monkeypatch.delenv(screening.MODEL_ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path))
    with pytest.raises(screening.ScreeningModelError, match="make run"):
        screening.Screener.load("int8")


def test_model_folder_from_the_environment(models, monkeypatch):
    monkeypatch.setenv(screening.MODEL_ENVIRONMENT_VARIABLE, str(models["int8"].parent))
    assert screening.find_model("int8") == models["int8"]


# ----------------------------------------------------------------- the pipeline
def test_a_grey_film_gets_a_decision_probability_and_heat_map(screener):
    result, picture = screener.screen_and_overlay(film_bytes(), "film.png")
    assert result.accepted and result.decision in ("PNEUMONIA", "NORMAL", "REFER")
    assert result.model_decision in ("PNEUMONIA", "NORMAL") and 0.0 <= result.calibrated_probability <= 1.0
    assert result.heatmap.shape == (224, 224) and result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    assert picture.startswith(b"\x89PNG")
    assert set(result.timings_ms) == {"decode", "model", "ood", "heatmap", "overlay"}
    assert result.summary().startswith("film.png: ")
    assert result.notes and "only the colour check" in result.notes[0]  # no detector in this fixture


def test_decision_follows_the_operating_point(screener):
    result = screener.screen_bytes(film_bytes(), "film.png")
    expected = ("REFER" if 0.45 <= result.probability < 0.55
                else ("PNEUMONIA" if result.probability >= 0.5 else "NORMAL"))
    assert result.decision == expected


@pytest.mark.parametrize("name, content, message", [
    ("photo.jpg", encode_image(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)), "colour"),
    ("empty.png", b"", "empty"),
    ("notes.png", b"these are my notes, not a picture", "not an image file"),
    ("half.png", film_bytes()[:2000], "truncated or damaged"),
])
def test_bad_uploads_are_refused_with_the_file_name_and_a_remedy(screener, name, content, message):
    result = screener.screen_bytes(content, name)
    assert not result.accepted and result.decision is None and result.heatmap is None
    assert name in result.message and message in result.message
    assert result.row()["status"] == "refused" and result.row()["reason"] == result.message


def test_feature_gate_refuses_what_the_detector_rejects(models):
    from helpers import ood

    engine = screening.OnePassEngine(models["float32"])
    features = np.stack([engine.run(film)[2] for film in grey_films(20, seed=11)])  # (20, 8)
    strict = ood.fit_detector(features[:10], features[10:], quantile=0.5)
    strict = ood.OODDetector(strict.distribution, distance_threshold=0.0)  # nothing is close enough
    result = screening.Screener(engine, strict).screen_bytes(film_bytes(), "film.png")
    assert not result.accepted and "does not look like the chest X-rays" in result.message


def gated_detector(features: np.ndarray, distance_threshold: float, upright: bool = True):
    """A detector on the tiny model's 8 features whose X-ray gate always passes and orientation gate is fixed."""
    from helpers import guard, ood

    dimensions = features.shape[1]
    zeros = np.zeros(dimensions, np.float32)
    xray = guard.LinearGate(guard.XRAY_CLASSES, zeros, np.ones(dimensions, np.float32),
                            np.zeros((dimensions, 2), np.float32), np.array([0.0, 20.0], np.float32), 0.5, 1)
    orientation = guard.LinearGate(guard.ORIENTATIONS, zeros, np.ones(dimensions, np.float32),
                                   np.zeros((dimensions, 4), np.float32),
                                   np.array([20.0 if upright else 0.0, 0.0 if upright else 20.0, 0.0, 0.0],
                                            np.float32), 0.5, 0)
    fitted = ood.fit_detector(features[:10], features[10:], quantile=0.5)
    return ood.OODDetector(fitted.distribution, distance_threshold=distance_threshold).with_gates(xray, orientation)


def test_an_xray_unlike_the_population_is_referred_with_the_probability_secondary(models):
    engine = screening.OnePassEngine(models["float32"])
    features = np.stack([engine.run(film)[2] for film in grey_films(20, seed=11)])  # (20, 8)
    result = screening.Screener(engine, gated_detector(features, 0.0)).screen_bytes(film_bytes(), "adult.png")
    assert result.accepted and result.guard == "unlike_population" and result.outside_population
    assert result.decision == "REFER" and result.model_decision in ("NORMAL", "PNEUMONIA")
    assert result.probability is not None and result.heatmap is not None
    assert "outside the population" in result.summary() and "for reference only" in result.summary()
    row = result.row()
    assert row["guard"] == "unlike_population" and row["referred"] is True and "Refer to a radiologist" in row["reason"]


def test_a_film_the_wrong_way_round_is_refused_naming_the_orientation(models):
    engine = screening.OnePassEngine(models["float32"])
    features = np.stack([engine.run(film)[2] for film in grey_films(20, seed=11)])
    detector = gated_detector(features, 1e9, upright=False)
    result = screening.Screener(engine, detector).screen_bytes(film_bytes(), "negative.png")
    assert not result.accepted and result.guard == "wrong_way_round" and result.decision is None
    assert "negative.png" in result.message and "inverted" in result.message and "turn it upright" in result.message
    assert result.row()["status"] == "refused" and result.row()["guard"] == "wrong_way_round"


def test_results_csv_has_one_row_per_file(screener):
    results = [screener.screen_bytes(film_bytes(seed), f"film{seed}.png") for seed in (1, 2)]
    results.append(screener.screen_bytes(b"", "empty.png"))
    lines = screening.results_csv(results).strip().splitlines()
    assert lines[0].split(",") == list(screening.CSV_COLUMNS)
    assert len(lines) == 4 and lines[3].startswith("empty.png,refused,")


@pytest.mark.integration
def test_real_test_films_are_screened(screener, real_data_dir):
    from helpers import data

    test = data.load_examples("test", real_data_dir).head(4, seed=0)
    results = [screener.screen_bytes(bytes(content), path) for path, content in zip(test.paths, test.image_bytes)]
    assert all(result.accepted for result in results), [r.message for r in results]
    assert all(result.image.shape == (224, 224, 3) for result in results)


# ----------------------------------------------------------------- no TensorFlow, and the CLI
def test_screening_runs_without_importing_tensorflow(models):
    script = ("import sys; from helpers import screening; "
              f"s = screening.Screener.load('int8', model={str(models['int8'])!r}); "
              f"r = s.screen_and_overlay({film_bytes()!r}, 'film.png')[0]; "
              "assert r.accepted, r.message; "
              "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               cwd=str(Path(__file__).resolve().parents[1]), check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().splitlines()[-1] == "[]"


def test_batch_cli_writes_a_row_per_file_and_says_when_some_failed(models, tmp_path, capsys):
    from helpers import screen

    folder = tmp_path / "films"
    folder.mkdir()
    (folder / "a.png").write_bytes(film_bytes(1))
    (folder / "b.png").write_bytes(film_bytes(2))
    (folder / "readme.txt").write_text("not a film")
    out = tmp_path / "results.csv"
    code = screen.main([str(folder), "--out", str(out), "--model", str(models["float32"]),
                        "--heatmaps", str(tmp_path / "maps"), "--no-progress"])
    assert code == screen.EXIT_SOME_REFUSED
    lines = out.read_text().strip().splitlines()
    assert len(lines) == 4 and lines[3].startswith("readme.txt,refused,")
    assert sorted(path.name for path in (tmp_path / "maps").iterdir()) == ["a.png.heatmap.png", "b.png.heatmap.png"]
    printed = capsys.readouterr().out
    assert "3 files" in printed and "1 refused" in printed and "readme.txt" in printed


def test_batch_cli_exit_codes_for_a_missing_folder_and_model(tmp_path, monkeypatch):
    from helpers import screen

    assert screen.main([str(tmp_path / "nowhere"), "--no-progress"]) == screen.EXIT_UNUSABLE
    monkeypatch.delenv(screening.MODEL_ENVIRONMENT_VARIABLE, raising=False)
    assert screen.main([str(tmp_path), "--model", str(tmp_path / "none.tflite"),
                        "--no-progress"]) == screen.EXIT_UNUSABLE


def test_a_phone_model_from_another_keras_model_is_refused(classifier, tmp_path):
    artifacts = tmp_path / "artifacts"
    keras_file = artifacts / "model" / "pneumonia_mobilenetv2.keras"
    keras_file.parent.mkdir(parents=True)
    keras_file.write_bytes(b"the Keras model this phone model was converted from")
    path = one_pass.convert_one_pass(classifier, "float32", POINT, directory=artifacts / "tflite",
                                     keras_model_path=keras_file)
    assert screening.OnePassEngine(path).provenance_note == ""  # same model: nothing to say
    keras_file.write_bytes(b"a model trained again since")
    with pytest.raises(screening.ScreeningModelError,
                       match="another Keras model.*re-run notebook 06|Re-run notebook 06"):
        screening.OnePassEngine(path)
    assert screening.OnePassEngine(path, allow_stale=True).provenance_note.startswith("Warning")
    keras_file.unlink()
    assert "provenance not checked" in screening.OnePassEngine(path).provenance_note


def test_a_site_calibration_replaces_the_head_and_the_operating_point(models, tmp_path):
    from helpers import site

    engine = screening.OnePassEngine(models["float32"])
    head = site.LinearHead(np.full(8, 0.05), -1.0)
    point = OperatingPoint(threshold=0.3, chosen_on="site: 20 NORMAL + 20 PNEUMONIA labelled local films")
    fitted_on = FittedOn(engine.keras_sha256, 8)
    calibration = site.SiteCalibration(point, head, site.RecallGuarantee.from_counts(20, 20), fitted_on)
    path = calibration.save(tmp_path / "site_calibration.json")
    screener = screening.Screener.load("float32", models["float32"], site=path)
    result = screener.screen_bytes(film_bytes(), "film.png")
    _, _, features = engine.run(result.image)
    assert result.probability == pytest.approx(float(site.sigmoid(head.logits(features[np.newaxis]))[0]), abs=1e-6)
    assert result.threshold == 0.3 and screener.point.chosen_on.startswith("site:")
    assert any("Site calibration active" in note for note in result.notes)
    with pytest.raises(screening.ScreeningModelError, match="No site calibration"):
        screening.find_site_calibration(models["float32"], tmp_path / "missing.json")


def test_a_site_calibration_or_detector_of_another_model_is_refused_with_the_remedy(models, tmp_path):
    from helpers import site

    engine = screening.OnePassEngine(models["float32"])
    other = FittedOn("f" * 64, 8)  # the same width, another model
    calibration = site.SiteCalibration(OperatingPoint(threshold=0.3), site.LinearHead(np.full(8, 0.05), -1.0),
                                       site.RecallGuarantee.from_counts(20, 20), other)
    path = calibration.save(tmp_path / "site_calibration.json")
    with pytest.raises(ProvenanceMismatch,
                       match="site_calibration.json was fitted on another model.*Calibrate the site"):
        screening.Screener.load("float32", models["float32"], site=path)
    features = np.stack([engine.run(film)[2] for film in grey_films(20, seed=11)])
    detector = dataclasses.replace(gated_detector(features, 1e9), fitted_on=other)
    detector_path = detector.save(tmp_path / "detector.npz")
    with pytest.raises(ProvenanceMismatch, match="detector.npz was fitted on another model.*Fit the detector again"):
        screening.Screener.load("float32", models["float32"], detector=detector_path)
    matching = dataclasses.replace(detector, fitted_on=FittedOn(engine.keras_sha256, 8)).save(tmp_path / "ok.npz")
    assert screening.Screener.load("float32", models["float32"], detector=matching).detector is not None
    narrow = site.SiteCalibration(OperatingPoint(threshold=0.3), site.LinearHead(np.full(4, 0.05), -1.0),
                                  site.RecallGuarantee.from_counts(20, 20), FittedOn(engine.keras_sha256, 4))
    with pytest.raises(ProvenanceMismatch, match="head of 4 weights.*gives 8 features"):
        screening.Screener.load("float32", models["float32"], site=narrow.save(tmp_path / "narrow.json"))
