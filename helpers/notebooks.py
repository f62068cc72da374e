"""Run the numbered notebooks in order with papermill (the project's main job).

    python -m helpers.notebooks                    # full profile, all notebooks
    python -m helpers.notebooks --profile smoke    # CI's tiny, fast profile
    python -m helpers.notebooks --only 04 05       # a few, by number prefix
    python -m helpers.notebooks --strip            # maintainers: strip outputs before a commit,
                                                   # refreshing `# NBVAL_CHECK_OUTPUT` cells
                                                   # from the last executed copies

Executed copies go to ``<artifacts>/executed/``; the notebooks write their models,
metrics and figures under the artifacts directory (``CXR_ARTIFACTS_DIR``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import papermill

from helpers import config

NOTEBOOK_DIR = config.PROJECT_ROOT / "notebooks"
CHECKED_OUTPUT_MARK = "# NBVAL_CHECK_OUTPUT"


def numbered_notebooks(only: list[str] | None = None) -> list[Path]:
    """The ``NN_*.ipynb`` notebooks in order, optionally only those whose number is in ``only``."""
    notebooks = sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = set(only) - {p.name[:2] for p in notebooks}
        if unknown:
            raise ValueError(f"No notebook numbered {sorted(unknown)} in {NOTEBOOK_DIR}.")
        notebooks = [p for p in notebooks if p.name[:2] in only]
    return notebooks


def run_notebook(notebook: Path, profile: str, output_dir: Path, timeout_s: int = 3600) -> Path:
    """Execute one notebook with ``profile`` injected; returns the executed copy's path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / notebook.name
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters={"profile": profile},
        cwd=str(notebook.parent),
        kernel_name="python3",
        execution_timeout=timeout_s,
        progress_bar=False,
        log_output=False,
    )
    record_run(output, profile)
    return output


def git_state() -> tuple[str, bool]:
    """The checkout's commit and whether it has uncommitted changes (``("unknown", False)`` without git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.PROJECT_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        changes = subprocess.run(["git", "status", "--porcelain"], cwd=config.PROJECT_ROOT, capture_output=True,
                                 text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, bool(changes)


def record_run(executed: Path, profile: str) -> None:
    """Write into the executed copy's metadata (``cxr_run``) the commit and profile it ran with."""
    document = nbformat.read(executed, as_version=4)
    commit, dirty = git_state()
    document.metadata["cxr_run"] = {
        "commit": commit,
        "dirty": dirty,
        "profile": profile,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    nbformat.write(document, executed)


def run_all(profile: str = "full", only: list[str] | None = None) -> dict[str, float]:
    """Run the notebooks in order; returns {notebook name: seconds}. Stops at the first failure."""
    profile = config.resolve_profile(profile)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # inherited by the kernels: quieter logs
    output_dir = config.artifacts_dir("executed")
    timings = {}
    for notebook in numbered_notebooks(only):
        start = time.perf_counter()
        print(f"[{profile}] running {notebook.name} ...", flush=True)
        run_notebook(notebook, profile, output_dir)
        timings[notebook.name] = time.perf_counter() - start
        print(f"[{profile}] {notebook.name} done in {timings[notebook.name]:.0f} s", flush=True)
    return timings


def is_checked_cell(cell) -> bool:
    """A code cell whose output is a deterministic fact that nbval compares."""
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECKED_OUTPUT_MARK)


def strip_outputs(notebook: Path, executed: Path | None = None) -> None:
    """Remove outputs in place, keeping (or refreshing from ``executed``) checked cells.

    Only ``# NBVAL_CHECK_OUTPUT`` cells keep outputs in git; their outputs are taken
    from the executed copy, matched by cell id, when it is given.
    """
    document = nbformat.read(notebook, as_version=4)
    executed_cells = {}
    if executed is not None and executed.is_file():
        executed_cells = {cell.get("id"): cell for cell in nbformat.read(executed, as_version=4).cells}
    for cell in document.cells:
        if cell.cell_type != "code":
            continue
        if is_checked_cell(cell):
            source_cell = executed_cells.get(cell.get("id"))
            if source_cell is not None:
                cell.outputs = [o for o in source_cell.outputs if o.get("output_type") != "display_data"]
            # nbval only compares cells that were run: number the checked ones.
            cell.execution_count = (source_cell or cell).get("execution_count") or 1
        else:
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    document.metadata.pop("papermill", None)
    nbformat.write(document, notebook)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="auto", help="full, smoke or auto (CXR_PROFILE)")
    parser.add_argument("--only", nargs="*", help="notebook numbers to run, e.g. 01 03")
    parser.add_argument("--strip", action="store_true",
                        help="strip outputs (keeping checked cells, refreshed from executed copies)")
    args = parser.parse_args(argv)
    if args.strip:
        executed_dir = config.artifacts_dir("executed", create=False)
        for notebook in numbered_notebooks(args.only):
            strip_outputs(notebook, executed_dir / notebook.name)
            print(f"stripped {notebook.name}")
        return 0
    timings = run_all(args.profile, args.only)
    total = sum(timings.values())
    print(f"ran {len(timings)} notebook(s) in {total:.0f} s; outputs in {config.artifacts_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
