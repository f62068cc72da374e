"""``metrics.json``: the one source of truth for the operating point and the reported metrics."""

from __future__ import annotations

from pathlib import Path

from helpers.evaluation.splits import METRIC_NAMES
from helpers.jsonio import read_json_object, write_json
from helpers.operating_point import RERUN_NOTEBOOK_04, default_metrics_path

REQUIRED_KEYS = ("threshold", "temperature", "band", "ece_before", "ece_after", "test", "validation")
BAND_KEYS = ("low", "high", "coverage", "accuracy_outside", "recall_outside")


def validate_metrics(report: dict) -> dict:
    """Check the metrics.json schema; returns ``report`` or raises ValueError saying what is missing."""
    problems = [f"missing key {key!r}" for key in REQUIRED_KEYS if key not in report]
    band = report.get("band", {})
    problems += [f"band lacks {key!r}" for key in BAND_KEYS if key not in band]
    for split in ("test", "validation"):
        for name in METRIC_NAMES:
            entry = report.get(split, {}).get(name)
            if not isinstance(entry, dict) or not {"value", "ci_low", "ci_high"} <= set(entry):
                problems.append(f"{split}.{name} needs value, ci_low, ci_high")
    if problems:
        raise ValueError("metrics.json does not follow the schema: " + "; ".join(problems[:8])
                         + ". Re-run notebooks/04_evaluation.ipynb to rewrite it.")
    return report


def write_metrics(report: dict, path: str | Path | None = None) -> Path:
    """Validate and write ``report`` as strict JSON (NaN -> null), atomically."""
    validate_metrics(report)
    return write_json(report, Path(path) if path else default_metrics_path())


def load_metrics(path: str | Path | None = None) -> dict:
    """Read ``<artifacts>/metrics.json`` (threshold, temperature, band, metrics with CIs).

    Raises:
        FileNotFoundError: with the notebook that writes it.
    """
    path = Path(path) if path else default_metrics_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"No metrics at {path}. Run notebooks/04_evaluation.ipynb first (it chooses the "
            "threshold, temperature and referral band on validation and writes this file), "
            "e.g. `python -m helpers.notebooks --only 04`, or set CXR_ARTIFACTS_DIR to the "
            "artifacts folder that holds metrics.json."
        )
    return validate_metrics(read_json_object(path, RERUN_NOTEBOOK_04))
