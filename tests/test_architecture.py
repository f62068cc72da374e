"""The package's dependency direction (.importlinter) and where the decision rule may live."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import config

ROOT = config.PROJECT_ROOT


def test_import_contract_is_kept():
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if command is None:
        pytest.fail("lint-imports is not installed: pip install -r requirements.txt (import-linter).")
    finished = subprocess.run([command, "--config", str(ROOT / ".importlinter")], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-2000:]
    assert "1 kept, 0 broken" in finished.stdout


def _threshold_comparisons(path: Path) -> list[str]:
    """Comparisons (<, <=, >, >=) in ``path`` with a probability or score on one side and a threshold or band on the other."""
    text = path.read_text()
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)) for op in node.ops):
            source = (ast.get_source_segment(text, node) or "").lower()
            if ("prob" in source or "score" in source) and ("threshold" in source or "band" in source):
                found.append(f"{path.parent.name}/{path.name}:{node.lineno}: {source[:80]}")
    return found


def test_the_decision_rule_lives_in_the_operating_point_module_only():
    files = [path for folder in ("helpers", "app", "benchmarks") for path in sorted((ROOT / folder).glob("*.py"))
             if path.name not in ("operating_point.py", "guard.py")]  # guard.py: LinearGate.fires_at, the gates' one rule
    assert [line for path in files for line in _threshold_comparisons(path)] == []


def test_the_scan_finds_a_comparison(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def decide(probability, threshold):\n    return probability >= threshold\n")
    assert [line.split("/", 1)[1] for line in _threshold_comparisons(sample)] == ["sample.py:2: probability >= threshold"]
