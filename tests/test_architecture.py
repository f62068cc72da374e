"""The package's shape: dependency direction and the serving contract (.importlinter), no import circle,
no module above 700 lines, the web app's small import closure, and where the decision rule may live."""

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
    assert "2 kept, 0 broken" in finished.stdout  # the layers, and the TensorFlow-free serving core


MAX_MODULE_LINES = 700  # above it a module holds more than one job: split it by job (see CONTRIBUTING)
MAX_APP_HELPER_MODULES = 15  # the web app's helpers closure: the serving core and the pure modules under it


def test_no_module_is_above_the_line_limit():
    long = {str(path.relative_to(ROOT)): count for path in sorted((ROOT / "helpers").rglob("*.py"))
            if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components with more than one module (each is an import circle)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle():
    import grimp

    graph = grimp.build_graph("helpers")
    imports = {module: {imported for imported in graph.find_modules_directly_imported_by(module)
                        if not module.startswith(imported + ".")}  # a module importing its own package is no circle
               for module in graph.modules}
    assert _strongly_connected(imports) == []


def test_the_circle_finder_finds_a_circle():
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def _helper_modules_the_app_names() -> list[str]:
    """The ``helpers`` modules ``app/streamlit_app.py`` imports
    (``from helpers import x`` and ``from helpers.x import``)."""
    tree = ast.parse((ROOT / "app" / "streamlit_app.py").read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helpers"):
            if node.module in ("helpers", "helpers.serving"):
                modules |= {f"{node.module}.{alias.name}" for alias in node.names}
            else:
                modules.add(node.module)
    return sorted(modules)


def test_the_web_apps_import_closure_is_small_and_tensorflow_free():
    named = _helper_modules_the_app_names()
    assert "helpers.serving.pipeline" in named
    script = (f"import importlib, sys; [importlib.import_module(m) for m in {named!r}]; "
              "print(' '.join(sorted(m for m in sys.modules if m == 'helpers' or m.startswith('helpers.')))); "
              "print(' '.join(sorted(m for m in ('tensorflow', 'keras', 'sklearn', 'scipy', 'matplotlib') "
              "if m in sys.modules)))")
    finished = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    helper_line, heavy_line = (finished.stdout.splitlines() + ["", ""])[:2]
    helpers_loaded = helper_line.split()
    assert len(helpers_loaded) <= MAX_APP_HELPER_MODULES, helpers_loaded
    assert heavy_line.split() == []


def _threshold_comparisons(path: Path) -> list[str]:
    """Comparisons (<, <=, >, >=) in ``path`` with a probability or score on one side
    and a threshold or band on the other."""
    text = path.read_text()
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)) for op in node.ops):
            source = (ast.get_source_segment(text, node) or "").lower()
            if ("prob" in source or "score" in source) and ("threshold" in source or "band" in source):
                found.append(f"{path.parent.name}/{path.name}:{node.lineno}: {source[:80]}")
    return found


def test_the_decision_rule_lives_in_the_operating_point_module_only():
    # guard.py: LinearGate.fires_at, the gates' one rule
    files = [path for folder in ("helpers", "app", "benchmarks") for path in sorted((ROOT / folder).rglob("*.py"))
             if path.name not in ("operating_point.py", "guard.py")]
    assert [line for path in files for line in _threshold_comparisons(path)] == []


def test_the_scan_finds_a_comparison(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def decide(probability, threshold):\n    return probability >= threshold\n")
    assert ([line.split("/", 1)[1] for line in _threshold_comparisons(sample)]
            == ["sample.py:2: probability >= threshold"])


# Function-level imports, and why each kind may be one (everything else is imported at the top):
LAZY_EVERYWHERE = {"tensorflow", "keras"}  # seconds to import; the web app and the CLI never need them
# ...and the libraries only some functions need, in any module: the serving core's, so the web app
# and the CLI start fast (benchmarks/app_latency.py measures the cold start), and the fitting
# modules', so the phone export, the archive job and a notebook import only what they use.
LAZY_WHERE_USED = {"PIL", "ai_edge_litert", "flatbuffers", "matplotlib", "pandas", "pydicom", "scipy",
                   "sklearn", "tqdm"}
APP_ENTRY_MODULES = ("helpers.screening", "helpers.screen", "helpers.serving.pipeline")


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
    assert {"helpers.screening", "helpers.serving.engine", "helpers.serving.guard"} <= on_app_path
    assert not {"helpers.ood", "helpers.site", "helpers.model"} & on_app_path  # fitting stays off the app's path
    misplaced = []
    for path in sorted((ROOT / "helpers").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        allowed = LAZY_EVERYWHERE | LAZY_WHERE_USED
        misplaced += [f"{module}:{line} imports {package} inside a function"
                      for line, package in _function_level_imports(path) if package not in allowed]
    assert misplaced == []


def test_the_import_scan_sees_a_function_level_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    import keras\n    from helpers import data\n    return os\n")
    assert _function_level_imports(sample) == [(4, "keras"), (5, "helpers")]
