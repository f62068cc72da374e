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
    files = [path for folder in ("helpers", "app", "benchmarks") for path in sorted((ROOT / folder).rglob("*.py"))
             if path.name not in ("operating_point.py", "guard.py")]  # guard.py: LinearGate.fires_at, the gates' one rule
    assert [line for path in files for line in _threshold_comparisons(path)] == []


def test_the_scan_finds_a_comparison(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def decide(probability, threshold):\n    return probability >= threshold\n")
    assert [line.split("/", 1)[1] for line in _threshold_comparisons(sample)] == ["sample.py:2: probability >= threshold"]


# Function-level imports, and why each kind may be one (everything else is imported at the top):
LAZY_EVERYWHERE = {"tensorflow", "keras"}  # seconds to import; the web app and the CLI never need them
# ...and, in the modules the TensorFlow-free web app and CLI import, the libraries only some
# functions need, so the app starts fast (benchmarks/app_latency.py measures its cold start).
LAZY_ON_THE_APP_PATH = {"PIL", "ai_edge_litert", "flatbuffers", "matplotlib", "pandas", "pydicom", "scipy",
                        "sklearn", "tqdm"}
APP_ENTRY_MODULES = ("helpers.screening", "helpers.screen")


def _modules_the_app_imports() -> set[str]:
    script = (f"import importlib, sys; [importlib.import_module(m) for m in {APP_ENTRY_MODULES!r}]; "
              "print(' '.join(sorted(m for m in sys.modules if m.startswith('helpers'))))")
    finished = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return set(finished.stdout.split())


def _function_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import inside a function of ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(inner.lineno, alias.name.split(".")[0]) for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    found.append((inner.lineno, (inner.module or "").split(".")[0]))
    return found


def test_function_level_imports_are_only_the_lazy_ones():
    on_app_path = _modules_the_app_imports()
    assert {"helpers.screening", "helpers.ood", "helpers.tflite.runtime"} <= on_app_path
    misplaced = []
    for path in sorted((ROOT / "helpers").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        allowed = LAZY_EVERYWHERE | (LAZY_ON_THE_APP_PATH if module in on_app_path else set())
        misplaced += [f"{module}:{line} imports {package} inside a function"
                      for line, package in _function_level_imports(path) if package not in allowed]
    assert misplaced == []


def test_the_import_scan_sees_a_function_level_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    import keras\n    from helpers import data\n    return os\n")
    assert _function_level_imports(sample) == [(4, "keras"), (5, "helpers")]
