"""One way to write and read the project's JSON artifacts: strict and atomic.

Every artifact (``metrics.json``, ``gradcam.json``, ``ood.json``, ``new_site.json``, an
operating-point file...) is written by :func:`write_json`: NumPy numbers become plain
JSON numbers, NaN and infinity become ``null`` (strict JSON, ``allow_nan=False``), and
the file appears whole or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from helpers.errors import UnusableInput


def json_ready(value):
    """``value`` with NumPy scalars/arrays as Python numbers/lists and NaN/inf as None."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(payload, path: str | Path, sort_keys: bool = False) -> Path:
    """Write ``payload`` as strict JSON to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_ready(payload), indent=2, sort_keys=sort_keys, allow_nan=False) + "\n"
    temporary = path.with_name(path.name + ".part")
    temporary.write_text(text)
    temporary.replace(path)
    return path


def read_json_object(path: str | Path, remedy: str = "") -> dict:
    """The JSON object in ``path``; ValueError naming the file (and ``remedy``) otherwise."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnusableInput(f"{path} is not readable JSON ({error}). {remedy}".rstrip()) from error
    if not isinstance(saved, dict):
        raise UnusableInput(f"{path} holds a JSON {type(saved).__name__}, not an object. {remedy}".rstrip())
    return saved
