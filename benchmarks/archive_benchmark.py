"""Benchmark the archive screener: films/s of the plain loop and of Dask with 1 and 2 workers.

    python benchmarks/archive_benchmark.py                           # 2,000 films, 1,000,000-row manifest
    python benchmarks/archive_benchmark.py --films 200 --manifest-rows 20000 --no-dicomweb   # quick

Writes ``<artifacts>/archive_benchmark.json``, on the int8 one-pass model of the artifacts:

* ``folder``: the official test films repeated to ``--films`` files (links to them in a
  temporary folder), screened by ``loop`` -- :mod:`helpers.screen`'s loop (read, then
  :meth:`Screener.screen_bytes`, at the engine's default LiteRT threads) in this process
  -- and by ``dask_1`` / ``dask_2`` -- ``helpers.archive`` on a local cluster of 1 and 2
  single-thread workers. Each has ``films_per_s`` (films over the screening time, with
  the cluster up and each worker's screener loaded) and ``seconds``; the Dask runs add
  ``cluster_start_s`` (workers up, screeners loaded), ``first_result_s`` (cluster start
  to the first part written), the peak resident memory of each worker
  (``worker_peak_rss_mb``) and the load average before and after; every run records
  ``cores_used`` (the CPU time its screening processes got over the wall time) and
  ``films_per_cpu_second`` (what one core screens, whatever the load);
* ``stages_ms``: the loop's median per film for reading the file and for each stage of
  the pipeline (decode, model, OOD check, heat map): what limits throughput;
* ``dicomweb``: the same films as DICOM copies (grey, JPEG) in a local Orthanc, screened
  over DICOMweb by 1 and 2 workers (``tests/orthanc.py`` starts it; skipped with
  ``--no-dicomweb`` or without Orthanc);
* ``rows_equal_loop``: whether the 2-worker folder run gave the loop's rows (every
  column but the timing);
* ``without_dask``: films/s of 1 and 2 plain processes (one single-thread screener
  each, no Dask) sharing the same films: how much a second core gives on this machine;
  ``dask_allocator_default``: one such process started with Dask's default
  ``MALLOC_TRIM_THRESHOLD_`` (what the local cluster's workers are started without);
* ``manifest``: a manifest of ``--manifest-rows`` files that do not exist, screened by 2
  workers: the client's peak resident memory and whether every row is a refusal;
* ``scaling``: 2 workers over 1 worker, and over the loop; ``load_average``, the
  machine's cores and ``sched_autogroup`` (the kernel gives each session's processes
  one CPU share): on a shared machine the figures move with the other load;
* ``profile``: ``"full"`` for the defaults on a full run's model, else ``"smoke"`` or
  ``"shortened"`` (:func:`helpers.report.benchmark_profile`).
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install needed

from helpers import archive, config, screening
from helpers.jsonio import write_json
from helpers.report import benchmark_profile
from tests import orthanc as pacs

BENCHMARK_FILE_NAME = "archive_benchmark.json"
DEFAULT_FILMS = 2000
DEFAULT_MANIFEST_ROWS = 1_000_000
MANIFEST_PART_SIZE = 1000  # refusals are cheap: bigger parts keep the scheduler's share small
STAGES = ("decode", "model", "ood", "heatmap")
DASK_TRIM_VARIABLE = "MALLOC_TRIM_THRESHOLD_"  # what archive.WORKER_CONFIG unsets for the local cluster's workers
COMPARED_COLUMNS = tuple(column for column in screening.CSV_COLUMNS if column != "total_ms")


def test_films() -> list[Path]:
    root = os.environ.get("CXR_DATA_DIR")
    folder = Path(root or "data") / "chest_xray" / "test"
    films = sorted(folder.glob("*/*.jpeg"))
    if not films:
        raise SystemExit(f"No test films under {folder}: set CXR_DATA_DIR to the folder holding chest_xray/.")
    return films


def repeated_folder(films: list[Path], count: int, folder: Path) -> Path:
    """``count`` links to ``films`` (repeated in order), ``NNNNN_<name>``, in ``folder``."""
    folder.mkdir(parents=True)
    for index in range(count):
        source = films[index % len(films)]
        (folder / f"{index:05d}_{source.parent.name}_{source.name}").symlink_to(source)
    return folder


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def process_peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):  # the process has ended
        return None


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used so far, in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def autogroup_scheduling() -> bool | None:
    """Whether the kernel groups the processes of a session into one CPU share (None: not Linux, or unknown)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return None


def loop_run(folder: Path, model: Path) -> tuple[dict, list[dict]]:
    """helpers.screen's loop in this process: films/s, medians per stage, and its rows."""
    screener = screening.Screener.load("int8", model)
    files = archive.folder_entries(folder)
    reads, timings, rows = [], [], []  # rows and timings only: a result keeps its film and heat map
    load_before = os.getloadavg()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for entry in files:
        read_start = time.perf_counter()
        content = Path(entry.location).read_bytes()
        reads.append((time.perf_counter() - read_start) * 1e3)
        result = screener.screen_bytes(content, entry.file)
        timings.append(result.timings_ms)
        rows.append(result.row())
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    stages = {"read": statistics.median(reads)}
    for stage in STAGES:
        values = [timing[stage] for timing in timings if stage in timing]
        stages[stage] = statistics.median(values) if values else None
    record = {"films_per_s": len(rows) / seconds, "seconds": seconds, "cores_used": cpu / seconds,
              "films_per_cpu_second": len(rows) / cpu, "threads": screener.engine.pool.num_threads,
              "load_average": [load_before, os.getloadavg()]}
    return {**record, "stages_ms": stages}, rows


def screen_files(model: str, paths: list[str]) -> tuple[float, float]:
    """Seconds and CPU seconds one single-thread screener takes for ``paths`` (loaded and warmed first)."""
    screener = screening.Screener.load("int8", model, num_threads=1)
    screener.screen_bytes(Path(paths[0]).read_bytes(), "warm-up")
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for path in paths:
        screener.screen_bytes(Path(path).read_bytes(), path)
    return time.perf_counter() - start, cpu_seconds() - cpu_start


def spawned_screeners(model: Path, paths: list[str], processes: int) -> list[tuple[float, float]]:
    """:func:`screen_files` in ``processes`` new processes sharing ``paths``: (seconds, CPU seconds) of each."""
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return pool.starmap(screen_files, [(str(model), paths[index::processes]) for index in range(processes)])


def processes_run(folder: Path, model: Path) -> dict:
    """Films/s of 1 and 2 plain processes (no Dask) sharing the films: what the machine's cores give."""
    paths = [entry.location for entry in archive.folder_entries(folder)]
    record = {}
    for processes in (1, 2):
        timings = spawned_screeners(model, paths, processes)
        wall = max(seconds for seconds, _ in timings)
        record[f"processes_{processes}"] = len(paths) / wall
        record[f"processes_{processes}_cores_used"] = sum(cpu for _, cpu in timings) / wall
    record["2_over_1"] = record["processes_2"] / record["processes_1"]
    return record


def allocator_run(folder: Path, model: Path) -> dict:
    """Films/s of one plain process with Dask's default ``MALLOC_TRIM_THRESHOLD_``, which the local cluster unsets.

    The variable is read when a process starts, so it is set for the spawned process only.
    """
    paths = [entry.location for entry in archive.folder_entries(folder)]
    default = str(dask.config.get("distributed.nanny.pre-spawn-environ")[DASK_TRIM_VARIABLE])
    before = os.environ.get(DASK_TRIM_VARIABLE)
    os.environ[DASK_TRIM_VARIABLE] = default
    try:
        ((seconds, _),) = spawned_screeners(model, paths, 1)
    finally:
        if before is None:
            del os.environ[DASK_TRIM_VARIABLE]
        else:
            os.environ[DASK_TRIM_VARIABLE] = before
    return {"variable": f"{DASK_TRIM_VARIABLE}={default}", "films_per_s": len(paths) / seconds}


def worker_peaks(client) -> list[float]:
    return sorted(client.run(peak_rss_mb).values())


def worker_cpu_seconds(client) -> float:
    return sum(client.run(cpu_seconds).values())


def dask_run(source: archive.Source, setup: archive.WorkerSetup, workers: int, out: Path,
             part_size: int = archive.DEFAULT_PART_SIZE) -> dict:
    """``helpers.archive`` on a fresh local cluster of ``workers``: films/s, start-up, first result, memory."""
    archive.prepare_job(out, source, setup, part_size)
    load_before = os.getloadavg()
    start = time.perf_counter()
    with archive.dask_client(workers=workers) as client:
        client.wait_for_workers(workers)
        archive.warm_up(client, setup)  # each worker loads its screener: part of starting, not of screening
        started = time.perf_counter() - start
        cpu_start = worker_cpu_seconds(client)
        summary = archive.screen_job(client, out, setup, show_progress=False)
        cpu = worker_cpu_seconds(client) - cpu_start
        peaks = worker_peaks(client)
    return {"workers": workers, "films_per_s": summary.inputs / summary.seconds, "seconds": summary.seconds,
            "cores_used": cpu / summary.seconds, "films_per_cpu_second": summary.inputs / cpu,
            "cluster_start_s": started, "first_result_s": started + summary.seconds_to_first_part,
            "worker_peak_rss_mb": peaks, "refused": summary.refused, "part_size": part_size,
            "load_average": [load_before, os.getloadavg()]}


def rows_equal(loop_rows: list[dict], results: Path) -> bool:
    with open(results, newline="") as handle:
        dask_rows = {row["file"]: row for row in csv.DictReader(handle)}
    if len(dask_rows) != len(loop_rows):
        return False

    def cell(value) -> str:  # the loop's rows as csv writes them
        return "" if value is None else str(value)

    return all(tuple(cell(row[column]) for column in COMPARED_COLUMNS)
               == tuple(dask_rows[row["file"]][column] for column in COMPARED_COLUMNS) for row in loop_rows)


def dicomweb_runs(films: list[Path], count: int, model: Path, scratch: Path) -> dict:
    """Load ``count`` DICOM copies into a local Orthanc, then screen them over DICOMweb with 1 and 2 workers."""
    with pacs.orthanc_server() as base_url:
        start = time.perf_counter()
        for index in range(count):
            pacs.store(base_url, pacs.dicom_copy(films[index % len(films)], f"benchmark-{index}", compressed=True))
        loaded = time.perf_counter() - start
        url = base_url + pacs.DICOMWEB_ROOT
        setup = archive.worker_setup("int8", str(model), None, False, url)[0]
        source = archive.Source("dicomweb", url, ("DX",))
        runs = {f"dask_{workers}": dask_run(source, setup, workers, scratch / f"dicomweb-{workers}")
                for workers in (1, 2)}
    return {"instances": count, "load_seconds": loaded, **runs}


def manifest_run(rows: int, model: Path, scratch: Path) -> dict:
    """The archive command on a manifest of ``rows`` missing files: the client's peak memory, every row refused."""
    manifest = scratch / "manifest.csv"
    with open(manifest, "w") as handle:
        handle.write("path\n")
        for index in range(rows):
            handle.write(f"missing/film_{index:07d}.jpeg\n")
    out = scratch / "manifest-job"
    command = [sys.executable, "-m", "helpers.archive", str(manifest), "--out", str(out), "--model", str(model),
               "--workers", "2", "--part-size", str(MANIFEST_PART_SIZE), "--no-progress"]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=str(config.PROJECT_ROOT), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, process_peak_rss_mb(process.pid) or 0.0)
        time.sleep(0.5)
    output = process.stdout.read()
    process.stdout.close()
    seconds = time.perf_counter() - start
    with open(out / archive.RESULTS_FILE, newline="") as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    return {"rows": rows, "part_size": MANIFEST_PART_SIZE, "exit_code": process.returncode,
            "client_peak_rss_mb": peak, "seconds": seconds, "result_rows": len(statuses),
            "all_refused": statuses == ["refused"] * rows, "last_line": output.strip().splitlines()[-1][-300:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=DEFAULT_FILMS, help="films per run (test films repeated)")
    parser.add_argument("--manifest-rows", type=int, default=DEFAULT_MANIFEST_ROWS)
    parser.add_argument("--no-dicomweb", action="store_true", help="skip the Orthanc runs")
    arguments = parser.parse_args(argv)

    model = screening.find_model("int8")
    films = test_films()
    record = {"model": model.name, "model_sha256": archive.file_sha256(model), "films": arguments.films,
              "distinct_films": len(films), "cores": archive.default_workers(), "machine": platform.machine(),
              "load_average_start": os.getloadavg(), "sched_autogroup": autogroup_scheduling()}
    with tempfile.TemporaryDirectory(prefix="cxr-archive-benchmark-") as scratch_name:
        scratch = Path(scratch_name)
        folder = repeated_folder(films, arguments.films, scratch / "films")
        setup = archive.worker_setup("int8", str(model), None, False, None)[0]
        source = archive.Source("folder", str(folder))
        loop, loop_rows = loop_run(folder, model)
        record["stages_ms"] = loop.pop("stages_ms")
        record["folder"] = {"loop": loop}
        for workers in (1, 2):
            record["folder"][f"dask_{workers}"] = dask_run(source, setup, workers, scratch / f"folder-{workers}")
            print(f"folder, {workers} worker(s): {record['folder'][f'dask_{workers}']['films_per_s']:.1f} films/s",
                  flush=True)
        record["rows_equal_loop"] = rows_equal(loop_rows, scratch / "folder-2" / archive.RESULTS_FILE)
        record["without_dask"] = processes_run(folder, model)
        record["without_dask"]["dask_allocator_default"] = allocator_run(folder, model)
        reason = pacs.unavailable_reason()
        if arguments.no_dicomweb or reason:
            record["dicomweb"] = {"skipped": "--no-dicomweb" if arguments.no_dicomweb else reason}
        else:
            record["dicomweb"] = dicomweb_runs(films, arguments.films, model, scratch)
        record["manifest"] = manifest_run(arguments.manifest_rows, model, scratch)
    folder_runs = record["folder"]
    record["scaling"] = {
        "folder_2_over_1_worker": folder_runs["dask_2"]["films_per_s"] / folder_runs["dask_1"]["films_per_s"],
        "folder_2_workers_over_loop": folder_runs["dask_2"]["films_per_s"] / folder_runs["loop"]["films_per_s"]}
    if "dask_2" in record["dicomweb"]:
        record["scaling"]["dicomweb_2_over_1_worker"] = (record["dicomweb"]["dask_2"]["films_per_s"]
                                                         / record["dicomweb"]["dask_1"]["films_per_s"])
    record["load_average_end"] = os.getloadavg()
    record["profile"] = benchmark_profile(shortened=arguments.films < DEFAULT_FILMS or arguments.no_dicomweb
                                          or arguments.manifest_rows < DEFAULT_MANIFEST_ROWS)
    path = write_json(record, config.artifacts_dir() / BENCHMARK_FILE_NAME)
    print(f"{path}: loop {folder_runs['loop']['films_per_s']:.1f} films/s, 2 workers over 1: "
          f"{record['scaling']['folder_2_over_1_worker']:.2f}x, over the loop: "
          f"{record['scaling']['folder_2_workers_over_loop']:.2f}x; manifest of {arguments.manifest_rows} rows: "
          f"client peak {record['manifest']['client_peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
