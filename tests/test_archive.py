"""The archive screener on Dask (helpers.archive): the same rows as the single-process CLI, each input
exactly once through a killed worker and an interrupted client, and a real PACS (Orthanc) over DICOMweb.

One local cluster of two single-thread worker processes serves the module; the model is the tiny
one-pass classifier of test_screening in float32 (its int8 copy answers one probability for every
film, which would make row-for-row equality say little), with a threshold and refer band among its
answers so the rows hold all three decisions; the films are real official test films (CXR_DATA_DIR).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers import archive, one_pass, screen, screening
from helpers.operating_point import OperatingPoint
from tests import orthanc as pacs
from tests.conftest import require_tool
from tests.test_screening import grey_films, saved_classifier, tiny_classifier

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VARIANT = "float32"
# The tiny model's probabilities for the official test films lie around 0.51-0.55.
POINT = OperatingPoint(threshold=0.53, band_low=0.528, band_high=0.532, chosen_on="test fixture", rule="fixed")
FILMS_PER_CLASS = 12
PART_SIZE = 2  # many small parts, so faults land mid-run
# Compared row for row with the CLI; total_ms is a timing, and the UIDs and hash are the archive's own columns.
COMPARED_COLUMNS = tuple(column for column in screening.CSV_COLUMNS if column != "total_ms")
pytestmark = pytest.mark.integration  # real films (CXR_DATA_DIR)


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The tiny classifier's one-pass model in ``<tmp>/tflite/`` (no detector beside it)."""
    folder = tmp_path_factory.mktemp("archive-model") / "tflite"
    classifier = tiny_classifier()
    keras_file = saved_classifier(classifier, folder.parent)
    return one_pass.convert_one_pass(classifier, VARIANT, POINT, grey_films(16, seed=1).astype(np.uint8), folder,
                                     keras_model_path=keras_file)


@pytest.fixture(scope="module")
def film_folder(tmp_path_factory) -> Path:
    """24 official test films (12 per class) and one file that is not a film, in two sub-folders."""
    root = os.environ.get("CXR_DATA_DIR")
    test_folder = Path(root or "") / "chest_xray" / "test"
    if not root or not test_folder.is_dir():
        require_tool("The archive tests screen real films: set CXR_DATA_DIR (CI uses ../shared/data).",
                     "The archive tests")
    folder = tmp_path_factory.mktemp("archive-films")
    for class_name in ("NORMAL", "PNEUMONIA"):
        (folder / class_name).mkdir()
        for path in sorted((test_folder / class_name).glob("*.jpeg"))[:FILMS_PER_CLASS]:
            shutil.copy(path, folder / class_name / path.name)
    (folder / "NORMAL" / "notes.txt").write_text("not a film")
    return folder


@pytest.fixture(scope="module")
def client():
    with archive.dask_client(workers=2) as dask:
        yield dask


@pytest.fixture(scope="module")
def setup(model) -> archive.WorkerSetup:
    return archive.worker_setup(VARIANT, str(model), None, False, None)[0]


def screen_folder(client, setup, folder: Path, out: Path, **options) -> archive.JobSummary:
    source = archive.Source("folder", str(folder))
    archive.prepare_job(out, source, setup, PART_SIZE)
    return archive.screen_job(client, out, setup, show_progress=False, **options)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def cli_rows(folder: Path, model: Path, out: Path) -> list[dict]:
    """The single-process CLI's rows for every file under ``folder``."""
    code = screen.main([str(folder), "--out", str(out), "--engine", VARIANT, "--model", str(model), "--recursive",
                        "--no-progress"])
    assert code in (screen.EXIT_ALL_DECIDED, screen.EXIT_SOME_REFUSED)
    return read_rows(out)


def compared(rows: list[dict]) -> dict[str, tuple]:
    """{file: the compared columns} (each file once: a repeated name fails here)."""
    table = {row["file"]: tuple(row[column] for column in COMPARED_COLUMNS) for row in rows}
    assert len(table) == len(rows), "a file appears more than once"
    return table


def assert_each_input_once(out: Path, expected_files) -> list[dict]:
    rows = read_rows(out / archive.RESULTS_FILE)
    assert [row["file"] for row in rows] == [entry.file for entry in archive.read_inputs(out / archive.INPUTS_FILE)]
    assert sorted(row["file"] for row in rows) == sorted(expected_files)
    return rows


# ----------------------------------------------------------------- the folder run equals the CLI
def test_folder_on_two_workers_gives_the_cli_rows_with_the_model_hash(client, setup, model, film_folder, tmp_path):
    summary = screen_folder(client, setup, film_folder, tmp_path / "job")
    expected = cli_rows(film_folder, model, tmp_path / "cli.csv")
    rows = read_rows(summary.results)
    assert len(rows) == 2 * FILMS_PER_CLASS + 1 and compared(rows) == compared(expected)
    assert {row["model_sha256"] for row in rows} == {archive.file_sha256(model)}
    refused = [row for row in rows if row["status"] == "refused"]
    assert [row["file"] for row in refused] == ["NORMAL/notes.txt"] and summary.refused == 1
    assert summary.parts_written == summary.parts == 13 and summary.parts_skipped == 0
    assert list(rows[0])[-4:] == [*archive.UID_COLUMNS, "model_sha256"]
    assert {row["decision"] for row in rows} == {"NORMAL", "PNEUMONIA", "REFER", ""}


def test_local_workers_keep_the_allocator_default_and_the_client_environment_is_untouched(client):
    # Dask's default sets MALLOC_TRIM_THRESHOLD_ before spawning a worker, in this process too.
    environments = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert len(environments) == 2 and set(environments.values()) == {None}
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
    # the one-thread math libraries of Dask's default are kept
    assert set(client.run(lambda: os.environ.get("OPENBLAS_NUM_THREADS")).values()) == {"1"}


def test_a_rerun_of_a_finished_job_screens_nothing_again(client, setup, film_folder, tmp_path):
    first = screen_folder(client, setup, film_folder, tmp_path / "job")
    before = {path.name: path.stat().st_mtime_ns for path in (tmp_path / "job" / "parts").iterdir()}
    again = screen_folder(client, setup, film_folder, tmp_path / "job")
    assert again.parts_written == 0 and again.parts_skipped == first.parts
    assert {path.name: path.stat().st_mtime_ns for path in (tmp_path / "job" / "parts").iterdir()} == before
    assert read_rows(again.results) == read_rows(first.results)


def test_a_folder_holding_another_job_is_refused(client, setup, film_folder, tmp_path):
    screen_folder(client, setup, film_folder, tmp_path / "job")
    with pytest.raises(archive.ArchiveError, match="another screening job.*part_size.*new --out"):
        archive.prepare_job(tmp_path / "job", archive.Source("folder", str(film_folder)), setup, PART_SIZE + 1)


# ----------------------------------------------------------------- faults
def test_a_worker_killed_mid_run_loses_and_repeats_nothing(client, setup, film_folder, tmp_path):
    killed = []

    def kill_a_busy_worker(index: int) -> None:
        if killed:
            return
        busy = [address for address, keys in client.processing().items() if keys]
        pids = client.run(os.getpid)
        target = (busy or sorted(pids))[0]
        os.kill(pids[target], signal.SIGKILL)  # the worker process itself, mid-task
        killed.append(pids[target])

    summary = screen_folder(client, setup, film_folder, tmp_path / "job", on_part_written=kill_a_busy_worker)
    assert len(killed) == 1 and summary.parts_written == summary.parts
    client.wait_for_workers(2, timeout=60)  # the nanny started a new worker
    assert killed[0] not in client.run(os.getpid).values()
    expected = [path.relative_to(film_folder).as_posix() for path in film_folder.rglob("*") if path.is_file()]
    assert_each_input_once(tmp_path / "job", expected)


def test_an_interrupted_client_finishes_on_rerun_each_input_once(model, film_folder, tmp_path, capsys):
    out = tmp_path / "job"
    arguments = [str(film_folder), "--out", str(out), "--engine", VARIANT, "--model", str(model), "--workers", "2",
                 "--part-size", str(PART_SIZE), "--no-progress"]

    def interrupt_after_three_parts(index: int) -> None:
        if len(list((out / archive.PARTS_FOLDER).glob("part-*.csv"))) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        archive.run(archive.parse_arguments(arguments), on_part_written=interrupt_after_three_parts)
    assert len(list((out / archive.PARTS_FOLDER).glob("part-*.csv"))) == 3
    assert not (out / archive.RESULTS_FILE).exists()
    assert archive.main(arguments) == archive.EXIT_SOME_REFUSED  # notes.txt is refused
    printed = capsys.readouterr()
    assert "10 parts screened now, 3 done before" in printed.out and "Dask dashboard: http" in printed.err
    expected = [path.relative_to(film_folder).as_posix() for path in film_folder.rglob("*") if path.is_file()]
    assert_each_input_once(out, expected)


def test_the_command_screens_a_manifest_and_a_missing_file_is_a_refusal_row(model, film_folder, tmp_path):
    films = sorted(film_folder.glob("PNEUMONIA/*.jpeg"))[:3]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path\n" + "".join(f"{path.relative_to(film_folder)}\n" for path in films)
                        + "missing/film.jpeg\n")
    shutil.copytree(film_folder / "PNEUMONIA", tmp_path / "PNEUMONIA")  # relative paths: beside the manifest
    out = tmp_path / "job"
    completed = subprocess.run([sys.executable, "-m", "helpers.archive", str(manifest), "--out", str(out),
                                "--engine", VARIANT, "--model", str(model), "--workers", "1", "--no-progress"],
                               capture_output=True, text=True, cwd=str(PROJECT_ROOT), timeout=300, check=False)
    assert completed.returncode == archive.EXIT_SOME_REFUSED, completed.stderr[-3000:]
    assert "4 inputs:" in completed.stdout and "1 refused" in completed.stdout
    rows = read_rows(out / archive.RESULTS_FILE)
    assert [row["file"] for row in rows] == [*(f"PNEUMONIA/{path.name}" for path in films), "missing/film.jpeg"]
    assert [row["status"] for row in rows] == ["decided"] * 3 + ["refused"]
    assert "missing/film.jpeg does not exist" in rows[-1]["reason"] and "manifest" in rows[-1]["reason"]


def test_a_running_scheduler_is_reached_by_its_address(client, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", client.scheduler.address)
    with archive.dask_client() as other:  # no --scheduler: the environment variable names it
        assert other.scheduler.address == client.scheduler.address
        assert len(other.scheduler_info()["workers"]) == 2


def test_a_worker_with_another_model_file_is_refused_before_any_part(client, setup):
    other = dataclasses.replace(setup, model_sha256="0" * 64)
    with pytest.raises(archive.ArchiveError, match="not the 000000000000 the job was started with"):
        archive.warm_up(client, other)


def test_bad_arguments_are_refused_with_a_remedy(tmp_path, capsys):
    assert archive.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "job")]) == archive.EXIT_UNUSABLE
    assert "neither a folder nor a file" in capsys.readouterr().err
    assert archive.main(["--out", str(tmp_path / "job")]) == archive.EXIT_UNUSABLE
    assert "--dicomweb" in capsys.readouterr().err
    assert archive.main([str(tmp_path), "--out", str(tmp_path / "job"), "--workers", "0"]) == archive.EXIT_UNUSABLE
    assert "at least one worker" in capsys.readouterr().err


# ----------------------------------------------------------------- a real PACS: Orthanc over DICOMweb
@pytest.fixture(scope="module")
def orthanc():
    """Orthanc with the DICOMweb plugin (tests/orthanc.py); skipped locally without it, a failure in CI."""
    require_tool(pacs.unavailable_reason(), "The DICOMweb tests")
    with pacs.orthanc_server() as url:
        yield url


def test_dicomweb_from_orthanc_gives_the_folder_rows(client, model, orthanc, film_folder, tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    films = sorted(film_folder.rglob("*.jpeg"))
    for index, film in enumerate(films):
        content = pacs.dicom_copy(film, f"study-{index}")
        pacs.store(orthanc, content)
        (folder / f"{pydicom.dcmread(io.BytesIO(content)).SOPInstanceUID}.dcm").write_bytes(content)
    pacs.store(orthanc, pacs.dicom_copy(films[0], "ct-study", modality="CT"))  # a CT: not searched
    pacs.store(orthanc, pacs.dicom_copy(films[1], "old-study", study_date="20190101"))  # before the dates: not searched

    setup = archive.worker_setup(VARIANT, str(model), None, False, orthanc + pacs.DICOMWEB_ROOT)[0]
    source = archive.Source("dicomweb", orthanc + pacs.DICOMWEB_ROOT, ("DX",), "20240101-20241231")
    out = tmp_path / "job"
    archive.prepare_job(out, source, setup, PART_SIZE)
    summary = archive.screen_job(client, out, setup, show_progress=False)
    assert summary.inputs == len(films)

    rows = read_rows(summary.results)
    from_folder = cli_rows(folder, model, tmp_path / "cli.csv")
    expected = [{**row, "file": row["file"].removesuffix(".dcm")} for row in from_folder]
    assert compared(rows) == compared(expected) and all(row["status"] == "decided" for row in rows)
    assert {row["decision"] for row in rows} == {"NORMAL", "PNEUMONIA", "REFER"}
    assert all(row["sop_instance_uid"] == row["file"] and row["study_instance_uid"] and row["series_instance_uid"]
               for row in rows)
    written = "".join(path.read_text() for path in out.rglob("*") if path.is_file())
    assert "Test^Patient" not in written and "PATIENT-ID-42" not in written
