"""Run the numbered notebooks in order with papermill (the project's main job).

    python -m helpers.notebooks                    # full profile, all notebooks
    python -m helpers.notebooks --profile smoke    # CI's tiny, fast profile
    python -m helpers.notebooks --only 04 05       # a few, by number prefix

Executed copies go to ``<artifacts>/executed/``; the notebooks write their models,
metrics and figures under the artifacts directory (``CXR_ARTIFACTS_DIR``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from helpers import config

NOTEBOOK_DIR = config.PROJECT_ROOT / "notebooks"


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
    import papermill

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
    return output


def run_all(profile: str = "full", only: list[str] | None = None) -> dict[str, float]:
    """Run the notebooks in order; returns {notebook name: seconds}. Stops at the first failure."""
    profile = config.resolve_profile(profile)
    output_dir = config.artifacts_dir("executed")
    timings = {}
    for notebook in numbered_notebooks(only):
        start = time.perf_counter()
        print(f"[{profile}] running {notebook.name} ...", flush=True)
        run_notebook(notebook, profile, output_dir)
        timings[notebook.name] = time.perf_counter() - start
        print(f"[{profile}] {notebook.name} done in {timings[notebook.name]:.0f} s", flush=True)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="auto", help="full, smoke or auto (CXR_PROFILE)")
    parser.add_argument("--only", nargs="*", help="notebook numbers to run, e.g. 01 03")
    args = parser.parse_args(argv)
    timings = run_all(args.profile, args.only)
    total = sum(timings.values())
    print(f"ran {len(timings)} notebook(s) in {total:.0f} s; outputs in {config.artifacts_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
