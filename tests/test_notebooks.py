"""The numbered notebooks: committed clean, and executed end to end (smoke) with papermill.

The papermill chain runs every notebook once, in order, in the smoke profile, into the
test artifacts folder (``CXR_ARTIFACTS_DIR``, set by conftest), then checks that each one
left the artifacts later notebooks rely on, and that every ``# NBVAL_CHECK_OUTPUT`` cell
printed exactly what the committed notebook shows (what ``nbval --nbval-lax`` compares,
without running every notebook a second time; ``pytest --nbval-lax notebooks`` still
works by hand).
"""

from __future__ import annotations

import ast
import json
import shutil

import nbformat
import pytest

from helpers import config, notebooks
from tests import browser

NOTEBOOKS = notebooks.numbered_notebooks()
EXPECTED_NOTEBOOKS = [
    "01_eda.ipynb",
    "02_class_imbalance.ipynb",
    "03_finetune_mobilenetv2.ipynb",
    "04_evaluation.ipynb",
    "05_gradcam.ipynb",
    "06_tflite_conversion.ipynb",
    "07_prediction_explorer.ipynb",
    "08_new_site.ipynb",
    "09_phone_web_app.ipynb",
    "10_why_mobilenet.ipynb",
]
METRIC_NAMES = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc")


def test_the_numbered_notebooks_are_all_there():
    assert [p.name for p in NOTEBOOKS] == EXPECTED_NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean_with_one_parameters_cell(path):
    document = nbformat.read(path, as_version=4)
    assert document.metadata["kernelspec"]["name"] == "python3"
    parameter_cells = [c for c in document.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameter_cells) == 1, "exactly one cell tagged 'parameters'"
    tree = ast.parse(parameter_cells[0].source)
    names = set()
    for statement in tree.body:
        assert isinstance(statement, ast.Assign), "the parameters cell holds assignments only"
        ast.literal_eval(statement.value)  # plain literals only (raises otherwise)
        names.update(target.id for target in statement.targets)
    assert {"profile", "seed"} <= names
    for cell in document.cells:
        if cell.cell_type == "code" and not notebooks.is_checked_cell(cell):
            assert cell.outputs == [], f"stray output in {path.name}: {cell.source[:60]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_ends_with_exercises_whose_solutions_are_hidden_code(path):
    document = nbformat.read(path, as_version=4)
    headings = [index for index, cell in enumerate(document.cells)
                if cell.cell_type == "markdown" and cell.source.startswith("## Exercises")]
    assert len(headings) == 1, "one '## Exercises' section"
    solutions = [cell for cell in document.cells[headings[0]:] if "solution" in cell.metadata.get("tags", [])]
    assert len(solutions) >= 2, "at least two exercises, each with a solution cell"
    for cell in solutions:
        assert cell.cell_type == "code", "solutions are code, so every run (and CI) executes them"
        assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, "a solution is collapsed until revealed"


def _artifact(relative: str):
    path = config.artifacts_dir() / relative
    assert path.exists(), f"missing artifact {path}"
    return path


def _json(relative: str) -> dict:
    return json.loads(_artifact(relative).read_text())


ARTIFACT_CHECKS = {
    "01_eda.ipynb": lambda: [_artifact(f"figures/01_eda/{name}.png") for name in
                             ("class_counts", "images_per_patient", "intensity_histograms", "sample_grid")],
    "02_class_imbalance.ipynb": lambda: _json("imbalance/comparison.json"),
    "03_finetune_mobilenetv2.ipynb": lambda: (_artifact("model/pneumonia_mobilenetv2.keras"),
                                              _json("model/training_record.json")),
    "04_evaluation.ipynb": lambda: _check_metrics(_json("metrics.json")),
    "05_gradcam.ipynb": lambda: _check_keys(_json("gradcam.json"), (
        "randomization_rank_correlation", "deletion_auc_gradcam", "deletion_auc_random", "n_images")),
    "06_tflite_conversion.ipynb": lambda: _check_tflite(),
    "07_prediction_explorer.ipynb": lambda: _check_keys(_json("ood.json"), (
        "false_rejection_rate_test", "rejection_rate_non_xray", "n_non_xray")),
    "08_new_site.ipynb": lambda: (_check_new_site(_json("new_site.json")), _json("site_calibration.json")),
    "09_phone_web_app.ipynb": lambda: (_json("phone/public/bundle.json"), _artifact("phone/site/index.html"),
                                       _artifact("figures/09_phone_web_app/phone_page.png")),
    "10_why_mobilenet.ipynb": lambda: (_check_keys(_json("architectures/comparison.json"), (
        "rows", "pneumonia_head", "ratios_to_reference", "claim", "top1_source")),
        _artifact("figures/10_why_mobilenet/size_vs_latency_float32.png")),
}


def _check_keys(record: dict, keys) -> None:
    missing = set(keys) - set(record)
    assert not missing, f"missing keys {missing}"


def _check_metrics(metrics: dict) -> None:
    _check_keys(metrics, ("threshold", "temperature", "band", "ece_before", "ece_after", "test", "validation"))
    _check_keys(metrics["band"], ("low", "high", "coverage", "accuracy_outside", "recall_outside"))
    for split in ("test", "validation"):
        for name in METRIC_NAMES:
            entry = metrics[split][name]
            _check_keys(entry, ("value", "ci_low", "ci_high"))
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    assert 0.0 < metrics["threshold"] < 1.0 and metrics["temperature"] > 0.0


def _check_new_site(report: dict) -> None:
    _check_keys(report, ("zero_shot", "label_free", "calibrated", "protocol", "shift_reports",
                         "label_free_depth_control"))
    assert set(report["calibrated"]) == {"5", "10"}  # the smoke profile's k values, as strings
    for entry in (report["zero_shot"], report["label_free"], *report["calibrated"].values()):
        _check_keys(entry, ("accuracy", "recall", "specificity", "ece", "coverage"))
        for summary in entry.values():
            _check_keys(summary, ("mean", "p05", "p95"))


def _check_tflite() -> None:
    models = sorted(p.stem for p in _artifact("tflite").glob("*.tflite"))
    assert len(models) == 7, f"expected four TFLite variants and three one-pass models, found {models}"
    one_pass = _json("tflite/parity.json")["one_pass"]
    _check_keys(one_pass, [f"heatmap_spearman_{variant}" for variant in ("float32", "float16", "int8")])
    assert one_pass["heatmap_spearman_float32"] > 0.99  # Grad-CAM = the logit map, whatever the weights


@pytest.mark.notebooks
@pytest.mark.parametrize("name", EXPECTED_NOTEBOOKS)
def test_notebook_runs_in_smoke_profile_and_leaves_its_artifacts(smoke_chain, name):
    if name not in smoke_chain:
        pytest.fail(f"{name} is missing")
    if smoke_chain[name] is not None:
        raise smoke_chain[name]
    ARTIFACT_CHECKS[name]()
    for cell_id, committed, executed in checked_outputs(name):
        assert executed == committed, f"{name}, cell {cell_id}: the output changed from the committed one"


def _printed(outputs) -> str:
    """The text a cell printed or returned (streams and text/plain results), as nbval compares it."""
    parts = []
    for output in outputs:
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif output.get("output_type") == "execute_result":
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def checked_outputs(name: str) -> list[tuple[str, str, str]]:
    """(cell id, committed text, executed text) of each checked cell of notebook ``name``."""
    committed = nbformat.read(notebooks.NOTEBOOK_DIR / name, as_version=4)
    executed = {cell.get("id"): cell for cell in nbformat.read(_artifact(f"executed/{name}"), as_version=4).cells}
    return [(cell.get("id"), _printed(cell.outputs), _printed(executed[cell.get("id")].outputs))
            for cell in committed.cells if notebooks.is_checked_cell(cell)]


def test_checked_cells_compare_what_was_printed():
    import nbformat.v4 as builder

    outputs = [builder.new_output("stream", name="stdout", text="a\n"),
               builder.new_output("execute_result", data={"text/plain": "42"}, execution_count=1),
               builder.new_output("display_data", data={"image/png": "..."})]
    assert _printed(outputs) == "a\n42"


@pytest.mark.notebooks
def test_explorer_widgets_render_in_jupyterlab(chromium, smoke_chain, tmp_path):
    """Notebook 07 run in a live JupyterLab (a copy, so autosave cannot touch the committed file)."""
    name = "07_prediction_explorer.ipynb"
    if smoke_chain.get(name) is not None:
        pytest.fail(f"{name} failed in the smoke chain, so its artifacts are missing: {smoke_chain[name]}")
    shutil.copy(config.PROJECT_ROOT / "notebooks" / name, tmp_path / name)
    screenshot = config.artifacts_dir("figures/app") / "explorer_in_jupyterlab.png"
    with browser.jupyterlab_server(tmp_path, {"CXR_PROFILE": "smoke"}) as (url, token):
        result = browser.notebook_widgets_render(url, token, name, screenshot)
    assert result["errors"] == 0, "Error displaying widget"
    assert result["tracebacks"] == 0 and result["unrun"] == 0, result["text"][-2000:]
    assert result["widgets"] >= 1 and "Threshold" in result["text"]
