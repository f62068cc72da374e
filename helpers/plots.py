"""Figure helpers shared by the notebooks."""

from __future__ import annotations

from pathlib import Path

from helpers import config


def save_figure(figure, name: str, dpi: int = 110) -> Path:
    """Save ``figure`` as ``<artifacts>/figures/<name>`` (e.g. ``"01_eda/class_counts.png"``)."""
    if not name.endswith((".png", ".svg", ".pdf")):
        raise ValueError(f"Figure name needs an extension (.png, .svg or .pdf), got {name!r}.")
    path = config.artifacts_dir("figures") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
