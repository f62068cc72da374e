"""Screen a hospital archive on Dask: ``python -m helpers.archive ARCHIVE --out DIR``.

The batch screener of :mod:`helpers.screen` for archives that outgrow one process:
the same pipeline (:class:`helpers.screening.Screener`, the same row per film), run
by the workers of a Dask cluster -- a ``LocalCluster`` on this machine by default
(``--workers N``, one thread each), or any running cluster (``--scheduler ADDRESS``
or ``$DASK_SCHEDULER_ADDRESS``).

Inputs:

* a **folder** tree (every regular file under it, hidden ones too: a refusal beats a
  silent skip);
* a **manifest**: a CSV or text file with one path or URL a line (an optional header
  ``path``); relative paths are relative to the manifest's folder, and URLs such as
  ``s3://`` are read with ``fsspec`` where its filesystem package is installed;
* a **DICOMweb** server (``--dicomweb URL``): the client searches with QIDO-RS
  (``--modality``, ``--study-dates``) and the workers fetch each instance with
  WADO-RS (``dicomweb-client``). Rows carry the Study, Series and SOP Instance UIDs;
  no patient name or ID is kept anywhere.

The output folder ``DIR`` holds the job:

* ``job.json``: what is screened and with which model (its SHA-256);
* ``inputs.csv``: the inputs, listed once when the job starts (a rerun never lists
  the archive again, so the job's inputs cannot change under it);
* ``parts/part-NNNNNN.csv``: the rows of inputs ``N x part size`` onwards, each
  written whole or not at all (written beside, then renamed);
* ``results.csv``: every part in input order, once all exist.

**Resumable, each input exactly once.** A rerun with the same ``--out`` skips the
parts that exist and screens the others, so after a worker dies (Dask retries its
tasks on the others, and the local cluster starts a new worker) or the client is
interrupted, running the same command again completes the job; ``results.csv`` is
checked against ``inputs.csv`` name by name. The client submits a bounded window
of parts and streams ``inputs.csv``, so its memory does not grow with the archive.

**One screener per worker process**, loaded on its first task from the model's path
and checked against the model's SHA-256 (never pickled: a LiteRT interpreter cannot
be); the model hash is in every row. An unreadable film is a row with a refusal; a
PACS that fails (a server error, no connection) fails the task, which Dask retries,
and stops the job if it keeps failing, so the rerun screens it instead of
recording a refusal that is not the film's.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dask
import fsspec
import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from distributed import Client, LocalCluster, as_completed

from helpers import screening
from helpers.errors import UnusableInput, one_line
from helpers.escaping import spreadsheet_cell
from helpers.jsonio import read_json_object, write_json
from helpers.progress import progress_bar
from helpers.provenance import file_sha256

EXIT_ALL_DECIDED, EXIT_SOME_REFUSED, EXIT_UNUSABLE, EXIT_INTERRUPTED = 0, 1, 2, 130
UID_COLUMNS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid")
ARCHIVE_COLUMNS = (*screening.CSV_COLUMNS, *UID_COLUMNS, "model_sha256")
INPUT_COLUMNS = ("file", "location", *UID_COLUMNS)
JOB_FILE, INPUTS_FILE, PARTS_FOLDER, RESULTS_FILE = "job.json", "inputs.csv", "parts", "results.csv"
DEFAULT_PART_SIZE = 64  # films per task and per part file
DEFAULT_MODALITIES = ("CR", "DX")
QIDO_PAGE_SIZE = 500  # instances per QIDO-RS search request
MANIFEST_HEADERS = ("path", "url", "location", "file")
# A PACS answer that means the instance is not there (a row with a refusal), not that the PACS failed (retry).
GONE_STATUSES = (404, 410)
TASK_RETRIES = 2  # a task that raises (the PACS failed) is tried this many more times before the job stops
# The local scheduler, in the client's process, keeps its last messages to each worker for debugging, and a
# message holds a part's inputs: a short log keeps the client's memory flat whatever the archive's size.
SCHEDULER_MESSAGE_LOG = 10
# Dask's nanny starts each worker with MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory back to the system).
# Setting it turns off glibc's adaptive mmap threshold, so every film's multi-megabyte buffers are mapped and
# unmapped afresh, with many more page faults and fewer films per second (the cost is measured by
# benchmarks/archive_benchmark.py). The screener's memory per film is bounded, so its workers keep glibc's policy.
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
# The keys of job.json a rerun must match: the same inputs, model and parts.
JOB_IDENTITY = ("source", "engine", "model_sha256", "detector", "site", "part_size")


class ArchiveError(UnusableInput):
    """The archive, its output folder or the cluster cannot be used; says which and what to do."""


@dataclass(frozen=True)
class Entry:
    """One input: its name in the rows, where a worker reads it, and its DICOM UIDs (DICOMweb only)."""

    file: str
    location: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""


@dataclass(frozen=True)
class Source:
    """What is screened: ``kind`` is ``folder``, ``manifest`` or ``dicomweb``."""

    kind: str
    location: str
    modalities: tuple[str, ...] = ()
    study_dates: str = ""

    def describe(self) -> str:
        if self.kind == "dicomweb":
            dates = f", study dates {self.study_dates}" if self.study_dates else ""
            return f"DICOMweb {self.location} (modality {', '.join(self.modalities)}{dates})"
        return f"{self.kind} {self.location}"


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to build its screener and read the inputs: paths and hashes, nothing pickled."""

    variant: str
    model: str
    model_sha256: str
    detector: str | None = None
    site: str | None = None
    allow_stale: bool = False
    dicomweb_url: str | None = None


@dataclass
class JobSummary:
    """How a run went: parts written now and found done, rows by outcome (after the merge)."""

    out: Path
    inputs: int
    parts: int
    parts_written: int = 0
    parts_skipped: int = 0
    decisions: Counter = field(default_factory=Counter)
    refused: int = 0
    seconds: float = 0.0
    seconds_to_first_part: float | None = None

    @property
    def results(self) -> Path:
        return self.out / RESULTS_FILE


# --------------------------------------------------------------------------- #
# Listing the inputs (the client, once per job)
# --------------------------------------------------------------------------- #
def folder_entries(root: Path) -> Iterator[Entry]:
    """Every regular file under ``root``, folder by folder in name order (no list of the whole tree is built)."""
    root = Path(root)
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_file():
                yield Entry(path.relative_to(root).as_posix(), str(path))


def is_url(value: str) -> bool:
    return "://" in value


def manifest_entries(manifest: str) -> Iterator[Entry]:
    """One entry per non-empty line of the manifest's first column; a first cell ``path`` (or ``url``) is a header."""
    base = "" if is_url(manifest) else str(Path(manifest).resolve().parent)
    try:
        with fsspec.open(manifest, "rt", newline="") as handle:
            for number, cells in enumerate(csv.reader(handle), start=1):
                value = cells[0].strip() if cells else ""
                if not value or (number == 1 and value.lower() in MANIFEST_HEADERS):
                    continue
                location = value if is_url(value) or os.path.isabs(value) or not base else os.path.join(base, value)
                yield Entry(value, location)
    except (OSError, UnicodeDecodeError, csv.Error, ImportError, ValueError) as error:
        raise ArchiveError(f"The manifest {manifest} cannot be read ({one_line(error)}). Give a CSV or text file "
                           "with one path or URL a line.") from error


def _uid(found: dict, tag: str) -> str:
    values = (found.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def dicomweb_entries(url: str, modalities: Iterable[str], study_dates: str = "",
                     page_size: int = QIDO_PAGE_SIZE) -> Iterator[Entry]:
    """The instances a QIDO-RS search finds, modality by modality, page by page; each instance once.

    Only the three UIDs are kept from the answers (a PACS also returns patient
    attributes: they are dropped here and never written).
    """
    client = DICOMwebClient(url)
    seen = set()
    for modality in modalities:
        filters = {"Modality": modality, **({"StudyDate": study_dates} if study_dates else {})}
        offset = 0
        while True:
            try:
                page = client.search_for_instances(search_filters=filters, limit=page_size, offset=offset,
                                                   fields=["StudyInstanceUID", "SeriesInstanceUID"])
            except (requests.RequestException, ValueError) as error:
                raise ArchiveError(f"The DICOMweb server {url} did not answer the search for modality {modality} "
                                   f"({one_line(error)}). Check the URL (it ends with the DICOMweb root, e.g. "
                                   "/dicom-web) and that the server is up.") from error
            for found in page:
                sop = _uid(found, "00080018")
                if sop and sop not in seen:
                    seen.add(sop)
                    yield Entry(sop, "", _uid(found, "0020000D"), _uid(found, "0020000E"), sop)
            if len(page) < page_size:
                break
            offset += len(page)


def source_entries(source: Source) -> Iterator[Entry]:
    if source.kind == "folder":
        return folder_entries(Path(source.location))
    if source.kind == "manifest":
        return manifest_entries(source.location)
    if source.kind == "dicomweb":
        return dicomweb_entries(source.location, source.modalities, source.study_dates)
    raise ValueError(f"Unknown archive kind {source.kind!r}; choose folder, manifest or dicomweb.")


def freeze_inputs(entries: Iterable[Entry], path: Path) -> int:
    """Write ``entries`` to ``path`` (``inputs.csv``) atomically, streaming; returns how many."""
    temporary = path.with_name(path.name + ".tmp")
    count = 0
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(INPUT_COLUMNS)
        for entry in entries:
            writer.writerow([getattr(entry, column) for column in INPUT_COLUMNS])
            count += 1
    temporary.replace(path)
    return count


def read_inputs(path: Path) -> Iterator[Entry]:
    """The entries of ``inputs.csv``, streamed."""
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            yield Entry(**{column: row[column] for column in INPUT_COLUMNS})


def chunks(entries: Iterable[Entry], size: int) -> Iterator[list[Entry]]:
    chunk = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------- #
# The job folder
# --------------------------------------------------------------------------- #
def part_path(out: Path, index: int) -> Path:
    return Path(out) / PARTS_FOLDER / f"part-{index:06d}.csv"


def part_count(inputs: int, part_size: int) -> int:
    return -(-inputs // part_size)


def job_record(source: Source, setup: WorkerSetup, part_size: int) -> dict:
    return {"source": asdict(source), "engine": setup.variant, "model": setup.model,
            "model_sha256": setup.model_sha256, "detector": setup.detector, "site": setup.site,
            "part_size": part_size}


def prepare_job(out: Path, source: Source, setup: WorkerSetup, part_size: int) -> dict:
    """The job in ``out``: the one already there (it must be this job), or a new one with its inputs listed.

    Raises :class:`ArchiveError` when ``out`` holds another job (other inputs, model
    or part size): its rows would mix with this one's.
    """
    if part_size < 1:
        raise ArchiveError(f"A part holds at least one film, got --part-size {part_size}. Give 1 or more.")
    out = Path(out)
    wanted = job_record(source, setup, part_size)
    job_file = out / JOB_FILE
    if job_file.is_file():
        existing = read_json_object(job_file, f"Delete {out} to start the job again.")
        differing = [key for key in JOB_IDENTITY if existing.get(key) != json_like(wanted[key])]
        if differing:
            shown = "; ".join(f"{key}: {existing.get(key)!r} there, {json_like(wanted[key])!r} now"
                              for key in differing)
            raise ArchiveError(f"{out} holds another screening job ({shown}). Finish it with the same arguments, "
                               "or give a new --out folder.")
        return existing
    (out / PARTS_FOLDER).mkdir(parents=True, exist_ok=True)
    wanted["inputs"] = freeze_inputs(source_entries(source), out / INPUTS_FILE)
    write_json(wanted, job_file)  # last: a job.json means inputs.csv is complete
    return wanted


def json_like(value):
    """``value`` as it reads back from JSON (tuples become lists)."""
    if isinstance(value, dict):
        return {key: json_like(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_like(item) for item in value]
    return value


def pending_parts(out: Path, part_size: int) -> Iterator[tuple[int, list[Entry] | int]]:
    """``(index, entries)`` for each part still to screen, ``(index, rows)`` for each part done, in order."""
    for index, entries in enumerate(chunks(read_inputs(Path(out) / INPUTS_FILE), part_size)):
        yield (index, len(entries)) if part_path(out, index).is_file() else (index, entries)


def write_part(out: Path, index: int, entries: list[Entry], rows: list[dict]) -> Path:
    """The rows of part ``index`` as CSV, whole or not at all; they must be its entries', in order."""
    names = [row["file"] for row in rows]
    if names != [entry.file for entry in entries]:
        raise ArchiveError(f"Part {index} came back with rows for {len(names)} inputs, not its {len(entries)}: "
                           "the worker's code differs from the client's. Install the same version everywhere.")
    path = part_path(out, index)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ARCHIVE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: spreadsheet_cell(row.get(column)) for column in ARCHIVE_COLUMNS})
    temporary.replace(path)
    return path


def merge_parts(out: Path, part_size: int, summary: JobSummary) -> Path:
    """``results.csv``: every part in order, checked name by name against ``inputs.csv``; tallies ``summary``."""
    out = Path(out)
    temporary = out / f".{RESULTS_FILE}.tmp"
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ARCHIVE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for index, entries in enumerate(chunks(read_inputs(out / INPUTS_FILE), part_size)):
            path = part_path(out, index)
            with open(path, newline="") as part:
                rows = list(csv.DictReader(part))
            expected = [entry.file for entry in entries]
            # a value starting like a formula was quoted for spreadsheets (see write_part)
            if [row["file"] for row in rows] != [spreadsheet_cell(name) for name in expected]:
                raise ArchiveError(f"{path} does not hold the rows of its inputs (lines {index * part_size + 2} "
                                   f"onwards of {out / INPUTS_FILE}). Delete it and run the same command again.")
            for row in rows:
                writer.writerow(row)
                if row["status"] == "decided":
                    summary.decisions[row["decision"]] += 1
                else:
                    summary.refused += 1
    temporary.replace(out / RESULTS_FILE)
    return out / RESULTS_FILE


# --------------------------------------------------------------------------- #
# The workers: one screener per process, one row per input
# --------------------------------------------------------------------------- #
_WORKER_SCREENERS: dict[WorkerSetup, screening.Screener] = {}
_WORKER_PACS: dict[str, DICOMwebClient] = {}
_WORKER_LOCK = threading.Lock()


class Unreadable(Exception):
    """An input that cannot be read: its refusal message (a row, never a crash)."""


def worker_screener(setup: WorkerSetup) -> screening.Screener:
    """This process's screener for ``setup``, loaded on first use (one LiteRT thread) after checking the model hash."""
    with _WORKER_LOCK:
        if setup not in _WORKER_SCREENERS:
            actual = file_sha256(setup.model)
            if actual != setup.model_sha256:
                raise ArchiveError(f"The model {setup.model} on this worker has SHA-256 {actual[:12]}, not the "
                                   f"{setup.model_sha256[:12]} the job was started with. Give every worker the same "
                                   "model file.")
            screener = screening.Screener.load(setup.variant, setup.model, detector=setup.detector, num_threads=1,
                                               allow_stale=setup.allow_stale, site=setup.site)
            if (screener.detector is None) != (setup.detector is None):
                raise ArchiveError(f"The worker found {'no' if screener.detector is None else 'an'} OOD detector for "
                                   f"{setup.model}, the client {setup.detector or 'none'}. Give every worker the same "
                                   "artifacts folder.")
            _WORKER_SCREENERS[setup] = screener
        return _WORKER_SCREENERS[setup]


def worker_pacs(url: str) -> DICOMwebClient:
    with _WORKER_LOCK:
        if url not in _WORKER_PACS:
            _WORKER_PACS[url] = DICOMwebClient(url)
        return _WORKER_PACS[url]


def read_file(entry: Entry) -> bytes:
    """The bytes of a local file or an fsspec URL; :class:`Unreadable` with the reason otherwise."""
    try:
        if is_url(entry.location):
            with fsspec.open(entry.location, "rb") as handle:
                return handle.read()
        return Path(entry.location).read_bytes()
    except FileNotFoundError as error:
        raise Unreadable(f"{entry.file} does not exist ({error.strerror or 'not found'}). Check the path in the "
                         "manifest.") from error
    except OSError as error:  # the words helpers.screen uses for a file it cannot read
        raise Unreadable(f"{entry.file} could not be read ({error.strerror or one_line(error)}). "
                         "Check its permissions.") from error
    except (ImportError, ValueError) as error:  # no filesystem package for the URL's protocol, a malformed URL
        raise Unreadable(f"{entry.file} could not be opened ({one_line(error)}). Install the filesystem package "
                         "for its protocol on every worker, or check the URL.") from error


def fetch_instance(url: str, entry: Entry) -> bytes:
    """One instance over WADO-RS, as Part 10 bytes; an instance the PACS no longer has is :class:`Unreadable`.

    Any other failure (a server error, no connection) is raised: the task fails and
    is retried, and the job stops if it keeps failing, so no row records it.
    """
    try:
        dataset = worker_pacs(url).retrieve_instance(entry.study_instance_uid, entry.series_instance_uid,
                                                     entry.sop_instance_uid)
    except requests.HTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in GONE_STATUSES:
            raise Unreadable(f"{entry.file} is no longer in the PACS (HTTP {status}). Search the PACS again, or "
                             "screen the films it still has in a new job.") from error
        raise
    except pydicom.errors.InvalidDicomError as error:
        raise Unreadable(f"{entry.file}: the PACS sent something that is not a DICOM instance ({one_line(error)}). "
                         "Export the film again from the PACS.") from error
    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    except Exception as error:  # pydicom raises many kinds for a dataset it cannot write
        raise Unreadable(f"{entry.file}: the instance the PACS sent cannot be written as a DICOM file "
                         f"({type(error).__name__}). Export the film again from the PACS.") from error
    return buffer.getvalue()


def archive_row(result: screening.ScreeningResult, entry: Entry, model_sha256: str) -> dict:
    """The CLI's row (:meth:`ScreeningResult.row`) with the input's UIDs and the model file's hash."""
    return {**result.row(), **{column: getattr(entry, column) for column in UID_COLUMNS},
            "model_sha256": model_sha256}


def screen_entry(screener: screening.Screener, setup: WorkerSetup, entry: Entry) -> dict:
    try:
        content = fetch_instance(setup.dicomweb_url, entry) if setup.dicomweb_url else read_file(entry)
    except Unreadable as refusal:
        result = screening.ScreeningResult(entry.file, False, str(refusal), screener.engine.name)
    else:
        result = screener.screen_bytes(content, entry.file)
    return archive_row(result, entry, setup.model_sha256)


def prepare_worker(setup: WorkerSetup) -> str:
    """Load this worker's screener now (what :func:`warm_up` runs on each worker); returns the model's version."""
    return worker_screener(setup).engine.version


def warm_up(client: Client, setup: WorkerSetup) -> int:
    """Load the screener on every worker of ``client`` at once; returns how many workers.

    A worker that cannot load it (another model file, no detector) raises here, before
    any part is submitted; workers that join later load it on their first task.
    """
    return len(client.run(prepare_worker, setup))


def screen_part(setup: WorkerSetup, entries: list[Entry]) -> list[dict]:
    """The Dask task: one row per entry, in order, with this worker's screener."""
    screener = worker_screener(setup)
    return [screen_entry(screener, setup, entry) for entry in entries]


# --------------------------------------------------------------------------- #
# The client: bounded submission, parts as they come, the merge
# --------------------------------------------------------------------------- #
def window_size(client: Client) -> int:
    """Parts in flight: two per worker (one running, one queued), at least two."""
    workers = len(client.scheduler_info().get("workers", {}))
    return max(2, 2 * workers)


def screen_job(client: Client, out: Path, setup: WorkerSetup, window: int | None = None, show_progress: bool = True,
               on_part_written: Callable[[int], None] | None = None) -> JobSummary:
    """Screen each part of the job in ``out`` (:func:`prepare_job`) not written yet, then merge into ``results.csv``.

    At most ``window`` parts are submitted at a time; each part is written as soon as
    it comes back (``on_part_written(index)`` is called after). Interrupting this
    function loses at most the parts in flight, which a rerun screens.
    """
    out = Path(out)
    job = read_json_object(out / JOB_FILE, f"Delete {out} and run the command again.")
    part_size = int(job["part_size"])
    summary = JobSummary(out, int(job["inputs"]), part_count(int(job["inputs"]), part_size))
    window = window or window_size(client)
    warm_up(client, setup)
    start = time.perf_counter()
    parts = pending_parts(out, part_size)
    bar = progress_bar(total=summary.inputs, desc="screen", unit="film", disable=not show_progress)
    in_flight = {}  # future -> (index, entries)
    queue = as_completed()
    run_token = uuid.uuid4().hex[:8]

    def submit_next() -> bool:
        for index, entries in parts:
            if isinstance(entries, int):  # written by an earlier run
                summary.parts_skipped += 1
                bar.update(entries)
                continue
            future = client.submit(screen_part, setup, entries, key=f"archive-part-{index}-{run_token}",
                                   pure=False, retries=TASK_RETRIES)
            in_flight[future] = (index, entries)
            queue.add(future)
            return True
        return False

    try:
        for _ in range(window):
            if not submit_next():
                break
        for future in queue:
            index, entries = in_flight.pop(future)
            write_part(out, index, entries, future.result())
            summary.parts_written += 1
            if summary.seconds_to_first_part is None:
                summary.seconds_to_first_part = time.perf_counter() - start
            bar.update(len(entries))
            if on_part_written is not None:
                on_part_written(index)
            submit_next()
    finally:
        bar.close()
        if in_flight:  # stopped early (interrupted, or a part failed): nothing left running for this job
            client.cancel(list(in_flight))
    merge_parts(out, part_size, summary)
    summary.seconds = time.perf_counter() - start
    return summary


def default_workers() -> int:
    """One worker per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Client]:
    """A client of the cluster at ``scheduler`` (or ``$DASK_SCHEDULER_ADDRESS``), else of a new ``LocalCluster``.

    The local cluster has ``workers`` worker processes (default: one per core) of one
    thread each, and its dashboard on a free local port.
    """
    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            client = Client(address, timeout="30s")
        except (OSError, TimeoutError) as error:
            raise ArchiveError(f"No Dask scheduler answers at {address} ({one_line(error)}). Start one "
                               "(dask scheduler), or leave out --scheduler to use this machine.") from error
        with client:
            yield client
        return
    count = workers if workers is not None else default_workers()
    if count < 1:
        raise ArchiveError(f"A local cluster needs at least one worker, got --workers {count}. Give 1 or more.")
    with dask.config.set({"distributed.admin.low-level-log-length": SCHEDULER_MESSAGE_LOG, **WORKER_CONFIG}), \
            LocalCluster(n_workers=count, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                         silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def worker_setup(variant: str, model: str | None, site: str | None, allow_stale: bool,
                 dicomweb_url: str | None) -> tuple[WorkerSetup, str]:
    """The paths and hash the workers load from, after loading the screener here once (its errors come first).

    Returns the setup and the provenance note ('' when there is none).
    """
    path = screening.find_model(variant, model).resolve()
    detector = screening.find_detector(path)
    screener = screening.Screener.load(variant, path, detector=detector, num_threads=1, allow_stale=allow_stale,
                                       site=site)
    setup = WorkerSetup(variant, str(path), file_sha256(path), str(Path(detector).resolve()) if detector else None,
                        str(Path(site).resolve()) if site else None, allow_stale, dicomweb_url)
    return setup, screener.engine.provenance_note


def archive_source(arguments: argparse.Namespace) -> Source:
    if arguments.dicomweb:
        if arguments.archive is not None:
            raise ArchiveError(f"Give either a folder or manifest ({arguments.archive}) or --dicomweb, not both.")
        return Source("dicomweb", arguments.dicomweb.rstrip("/"), tuple(arguments.modality),
                      arguments.study_dates or "")
    if arguments.archive is None:
        raise ArchiveError("Give the archive: a folder of films, a manifest of paths or URLs, or --dicomweb URL.")
    given = str(arguments.archive)
    if not is_url(given) and Path(given).is_dir():
        return Source("folder", str(Path(given).resolve()))
    if is_url(given) or Path(given).is_file():
        return Source("manifest", given if is_url(given) else str(Path(given).resolve()))
    raise ArchiveError(f"{given} is neither a folder nor a file. Give the folder that holds the films, or a "
                       "manifest (one path or URL a line).")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.archive", description=__doc__.splitlines()[0])
    parser.add_argument("archive", nargs="?", default=None,
                        help="a folder of films, or a manifest (CSV / text, one path or URL a line)")
    parser.add_argument("--out", type=Path, required=True,
                        help="the job's folder: parts, results.csv; the same folder resumes the job")
    parser.add_argument("--engine", choices=screening.ONE_PASS_VARIANTS, default="int8")
    parser.add_argument("--model", default=None,
                        help=f"a one-pass .tflite (default: ${screening.MODEL_ENVIRONMENT_VARIABLE} or "
                             "artifacts/tflite/)")
    parser.add_argument("--site", default=None, help="a site_calibration.json (notebook 08)")
    parser.add_argument("--allow-stale", action="store_true",
                        help="use a model converted from another Keras model than the current one")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", default=None,
                         help="address of a running Dask scheduler (default: $DASK_SCHEDULER_ADDRESS, else a local "
                              "cluster)")
    cluster.add_argument("--workers", type=int, default=None, help="worker processes of the local cluster "
                                                                   "(default: one per core)")
    parser.add_argument("--dicomweb", default=None, help="screen the instances of this DICOMweb server (its root URL)")
    parser.add_argument("--modality", nargs="+", default=list(DEFAULT_MODALITIES),
                        help="QIDO-RS modality filter (default: CR DX)")
    parser.add_argument("--study-dates", default=None, help="QIDO-RS study date range, e.g. 20240101-20241231")
    parser.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE, help="films per task and per part file")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def report(summary: JobSummary) -> str:
    decided = ", ".join(f"{count} {decision}" for decision, count in sorted(summary.decisions.items()))
    return (f"{summary.inputs} inputs: {decided}{', ' if decided else ''}{summary.refused} refused -> "
            f"{summary.results} ({summary.parts_written} parts screened now, {summary.parts_skipped} done before)")


def run(arguments: argparse.Namespace, on_part_written: Callable[[int], None] | None = None) -> JobSummary:
    """The whole command: the job folder, the cluster, the parts, the merge."""
    if arguments.workers is not None and arguments.workers < 1:
        raise ArchiveError(f"A local cluster needs at least one worker, got --workers {arguments.workers}. "
                           "Give 1 or more.")
    source = archive_source(arguments)
    setup, note = worker_setup(arguments.engine, arguments.model, arguments.site, arguments.allow_stale,
                               source.location if source.kind == "dicomweb" else None)
    if note:
        print(note, file=sys.stderr)
    job = prepare_job(arguments.out, source, setup, arguments.part_size)
    print(f"{source.describe()}: {job['inputs']} inputs -> {arguments.out}", file=sys.stderr)
    with dask_client(arguments.scheduler, arguments.workers) as client:
        print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr)
        return screen_job(client, arguments.out, setup, show_progress=not arguments.no_progress,
                          on_part_written=on_part_written)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        summary = run(arguments)
    except UnusableInput as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print(f"Interrupted: the parts written so far are kept in {arguments.out / PARTS_FOLDER}. Run the same "
              "command again to screen the rest.", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(report(summary))
    return EXIT_SOME_REFUSED if summary.refused else EXIT_ALL_DECIDED


if __name__ == "__main__":
    # Run the importable module's main: the tasks it submits then refer to helpers.archive.screen_part, which
    # each worker imports by name (a function of __main__ would have to be pickled by value, with its globals).
    from helpers import archive as importable

    sys.exit(importable.main())
