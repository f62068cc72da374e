"""The one JSON writer: strict (no NaN), NumPy-aware, atomic; the reader names the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import jsonio


def test_write_json_is_strict_and_converts_numpy(tmp_path):
    payload = {"nan": float("nan"), "inf": np.float32("inf"), "count": np.int64(3),
               "values": np.array([0.5, 1.5]), "nested": {1: (np.bool_(True), tmp_path)}}
    path = jsonio.write_json(payload, tmp_path / "deep" / "out.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"nan": None, "inf": None, "count": 3, "values": [0.5, 1.5],
                                "nested": {"1": [True, str(tmp_path)]}}
    assert not list(path.parent.glob("*.part"))  # the temporary file was renamed


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = jsonio.write_json({"a": 1}, tmp_path / "out.json")
    with pytest.raises(TypeError):
        jsonio.write_json({"a": object()}, path)
    assert json.loads(path.read_text()) == {"a": 1}


def test_read_json_object_names_the_file_and_the_remedy(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"x.json holds a JSON list, not an object. Run notebook 04."):
        jsonio.read_json_object(path, "Run notebook 04.")
    path.write_text("{broken")
    with pytest.raises(ValueError, match="x.json is not readable JSON"):
        jsonio.read_json_object(path)
