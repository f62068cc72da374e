"""One pipeline: the notebook explorer, the web app and the CLI give the same verdicts and messages.

The same films -- official test films and the refusal cases (a colour photo, text
renamed .png, a truncated file, an empty file, a film upside down, a thumbnail) --
go through the three front ends on one tiny one-pass model (int8, the app's and the
CLI's default) with a guard beside it, as ``make run`` lays the artifacts out. Each
front end's table row (status, guard, decision, calibrated probability, reason)
must be the same, and every refusal's message must be what the explorer shows.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import mimetypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import config, explorer, ood
from helpers.provenance import FittedOn
from helpers.serving import engine as serving_engine
from helpers.serving import pipeline
from tests.films import POINT, grey_films, tiny_classifier
from tests.test_app import APP, shown
from tests.test_explorer import colour_photo
from tests.test_screening import gated_detector

COMPARED = ("file", "status", "guard", "decision", "calibrated_probability", "reason")


def encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """``<artifacts>/`` with model/, tflite/ (the int8 one-pass model) and ood/detector.npz, as make run writes them."""
    from helpers import one_pass

    folder = tmp_path_factory.mktemp("one_pipeline")
    classifier = tiny_classifier()
    keras_file = folder / "model" / config.KERAS_MODEL_FILE_NAME
    keras_file.parent.mkdir()
    classifier.save(keras_file)
    model_path = one_pass.convert_one_pass(classifier, "int8", POINT, grey_films(16, seed=1).astype(np.uint8),
                                           folder / "tflite", keras_model_path=keras_file)
    engine = serving_engine.OnePassEngine(model_path)
    features = np.stack([engine.run(film)[2] for film in grey_films(20, seed=11)])  # (20, 8)
    detector = gated_detector(features, distance_threshold=float(np.median(
        ood.FeatureDistribution.fit(features).distances(features))) * 3)
    detector = dataclasses.replace(detector, fitted_on=FittedOn(engine.keras_sha256, engine.feature_width))
    detector.save(folder / "ood" / ood.DETECTOR_FILE_NAME)
    return folder


@pytest.fixture
def films(real_data_dir) -> dict[str, bytes]:
    """Two official test films per class and the refusal cases, by file name."""
    samples = pipeline.sample_films(per_class=2, data_dir=real_data_dir)
    if len(samples) < 4:
        pytest.fail(f"{real_data_dir} has no chest_xray/test/{{NORMAL,PNEUMONIA}}/ films (the Kaggle layout).")
    chosen = {path.name: path.read_bytes() for path in samples}
    with Image.open(samples[0]) as opened:
        grey = np.asarray(opened.convert("L"))
    whole = encoded(grey, "JPEG", quality=90)
    chosen.update({
        "upside_down.png": encoded(np.ascontiguousarray(grey[::-1]), "PNG"),
        "holiday_photo.jpg": encoded(colour_photo(), "JPEG", quality=90),
        "notes_renamed.png": b"Patient notes: cough for 3 days, fever. Not an image.\n",
        "download_interrupted.jpg": whole[: len(whole) // 3],
        "empty.png": b"",
        "thumbnail_48px.png": encoded(np.asarray(Image.fromarray(grey).resize((48, 48))), "PNG"),
    })
    return chosen


def comparable(row: dict) -> tuple:
    """The columns every front end must agree on, as text (a CSV gives text)."""
    values = []
    for column in COMPARED:
        value = row[column]
        if column == "calibrated_probability":
            missing = value in (None, "") or (isinstance(value, float) and np.isnan(value))
            value = "" if missing else f"{float(value):.4f}"
        values.append("" if value is None else str(value))
    return tuple(values)


def through_the_explorer(artifacts: Path, films: dict[str, bytes]) -> tuple[dict, dict]:
    """{file: row} and {file: the message the explorer shows} from the notebook explorer's engines."""
    engines, notes = explorer.discover_engines(tflite_directory=artifacts / "tflite")
    assert list(engines) == ["TFLite int8 (one pass)"], notes
    chosen = engines["TFLite int8 (one pass)"]
    explainer = explorer.Explainer(None, chosen.point, ood.OODDetector.load(artifacts / "ood" / ood.DETECTOR_FILE_NAME),
                                   engines)
    explanations = [explainer.explain_bytes(content, name) for name, content in films.items()]
    table = explorer.upload_results_table(explanations)
    shown_messages = dict(zip(table["file"], table["message"]))
    return {item.name: comparable(item.result.row()) for item in explanations}, shown_messages


def through_the_app(artifacts: Path, films: dict[str, bytes], monkeypatch) -> tuple[dict, list[str]]:
    """{file: row} from the page's results table, and the refusal boxes' text."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(pipeline.MODEL_ENVIRONMENT_VARIABLE, str(artifacts / "tflite"))
    monkeypatch.delenv("CXR_DATA_DIR", raising=False)
    st.cache_resource.clear()
    test = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not test.exception
    test.file_uploader[0].set_value([(name, content, mimetypes.guess_type(name)[0] or "application/octet-stream")
                                     for name, content in films.items()])
    test.run()
    assert not test.exception, test.exception
    table = test.dataframe[0].value
    rows = {record["file"]: comparable(record) for record in table.to_dict("records")}
    return rows, [shown(error) for error in test.error]


def through_the_cli(artifacts: Path, films: dict[str, bytes], folder: Path) -> dict:
    """{file: row} from ``python -m helpers.screen FOLDER --out results.csv``."""
    for name, content in films.items():
        (folder / name).write_bytes(content)
    out = folder.parent / "results.csv"
    environment = {**os.environ, pipeline.MODEL_ENVIRONMENT_VARIABLE: str(artifacts / "tflite")}
    finished = subprocess.run([sys.executable, "-m", "helpers.screen", str(folder), "--out", str(out), "--no-progress"],
                              cwd=config.PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 1, finished.stderr[-2000:]  # 1: some files refused, as they must be
    return {row["file"]: comparable(row) for row in csv.DictReader(io.StringIO(out.read_text()))}


@pytest.mark.integration
def test_explorer_app_and_cli_give_identical_verdicts_and_messages(artifacts, films, tmp_path, monkeypatch):
    explored, explorer_messages = through_the_explorer(artifacts, films)
    served, app_errors = through_the_app(artifacts, films, monkeypatch)
    folder = tmp_path / "films"
    folder.mkdir()
    batched = through_the_cli(artifacts, films, folder)

    assert set(explored) == set(films)
    assert served == explored
    assert batched == explored

    refused = {name: row for name, row in explored.items() if row[1] == "refused"}
    expected_refusals = {"holiday_photo.jpg", "notes_renamed.png", "download_interrupted.jpg", "empty.png",
                         "thumbnail_48px.png"}
    assert expected_refusals <= set(refused), sorted(refused)
    decided = [name for name, row in explored.items() if row[1] == "decided"]
    assert len(decided) >= 4, explored  # the official test films get an answer
    for name, row in refused.items():
        message = row[-1]
        assert message.startswith(name) and explorer_messages[name] == message
        assert message in app_errors, (message, app_errors)
