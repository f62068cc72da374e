"""The test-set ledger: every scoring of the official test set, appended to a committed file.

A test set answers one question honestly only while nothing was chosen by looking at
it. The project chooses on validation; it still *scores* the test set, to report. The
ledger makes each scoring visible: ``results/test_ledger.csv`` gets one row per
scoring of a full-profile run (date, commit, what was scored, why, how many films),
and the README shows how many there have been. A smoke run (CI, tests) scores a
handful of test films to check the code runs; it is not a report, and is not written.
"""

from __future__ import annotations

import csv
import datetime
import os
import subprocess
from pathlib import Path

from helpers import config

LEDGER = config.PROJECT_ROOT / "results" / "test_ledger.csv"
COLUMNS = ("date_utc", "commit", "what", "why", "films")
LEDGER_ENVIRONMENT_VARIABLE = "CXR_TEST_LEDGER"  # another ledger file (the tests use their own)


def ledger_path() -> Path:
    """``$CXR_TEST_LEDGER`` or ``results/test_ledger.csv`` of the repository."""
    return Path(os.environ.get(LEDGER_ENVIRONMENT_VARIABLE) or LEDGER)


def current_commit() -> str:
    """The checkout's commit (short), ``+changes`` when files differ from it; ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=config.PROJECT_ROOT,
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=config.PROJECT_ROOT,
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+changes" if changed else "")


def record_test_scoring(what: str, why: str, films: int, profile: str) -> bool:
    """Append one scoring of the official test set; only full-profile runs are recorded.

    Args:
        what: what was scored ("Keras model: metrics with intervals at the validation threshold").
        why: why it was scored ("report", "parity of the phone models", ...).
        films: how many test films were scored.
        profile: the run's profile (``config.resolve_profile``); "smoke" writes nothing.

    Returns:
        True when a row was written.
    """
    if not what or not why:
        raise ValueError("A test-set scoring needs both what was scored and why.")
    if profile != "full":
        return False
    path = ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if new:
            writer.writerow(COLUMNS)
        writer.writerow((datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                         current_commit(), what, why, int(films)))
    return True


def read_ledger(path: str | os.PathLike | None = None) -> list[dict]:
    """The ledger's rows (dicts of :data:`COLUMNS`); [] when there is none yet."""
    path = Path(path) if path else ledger_path()
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and tuple(rows[0]) != COLUMNS:
        raise ValueError(f"{path} has columns {tuple(rows[0])}, not {COLUMNS}: it is not the test-set ledger.")
    return rows
