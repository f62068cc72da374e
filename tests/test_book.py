"""The course book (helpers/book.py, book/): the refresh's refusals, the committed copies in sync with the
notebooks, and the built HTML in a real Chromium (every page renders, no broken image, no traceback,
the provenance line on every page)."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from helpers import book
from helpers.notebooks import numbered_notebooks
from tests import browser

FULL_RUN_END = "2026-12-01T10:00:00+00:00"


# --- small fake notebooks -----------------------------------------------------------------------------

def source_notebook() -> nbformat.NotebookNode:
    """A numbered notebook as committed: markdown, imports, the parameters cell, one cell with output."""
    parameters = nbformat.v4.new_code_cell('profile = "auto"\nseed = 42', id="cell-02")
    parameters.metadata["tags"] = ["parameters"]
    solution = nbformat.v4.new_code_cell("print(seed + 1)", id="cell-05")
    solution.metadata.update({"jupyter": {"source_hidden": True, "outputs_hidden": True}, "tags": ["hide-cell"]})
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 01 · A title\n\nWhat you will learn.", id="cell-00"),
        nbformat.v4.new_code_cell("import math", id="cell-01"),
        parameters,
        nbformat.v4.new_code_cell("print(math.sqrt(seed))", id="cell-03"),
        nbformat.v4.new_markdown_cell("## Exercises\n\n**1. Add one.**", id="cell-04"),
        solution,
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def executed_notebook(source: nbformat.NotebookNode, profile: str = "full", commit: str | None = "a" * 40,
                      exception: bool = False) -> nbformat.NotebookNode:
    """What papermill (and helpers.notebooks.record_run) make of ``source``: outputs, injected parameters."""
    executed = nbformat.from_dict(nbformat.reads(nbformat.writes(source), as_version=4))
    cells, count = [], 0
    for cell in executed.cells:
        cell.metadata["papermill"] = {"status": "completed", "duration": 0.1}
        cells.append(cell)
        if cell.cell_type != "code":
            continue
        count += 1
        cell.execution_count = count
        cell.metadata["execution"] = {"iopub.status.idle": FULL_RUN_END}
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"output of {cell.id}\n")]
        if "parameters" in cell.metadata.get("tags", []):
            count += 1
            injected = nbformat.v4.new_code_cell(f'# Parameters\nprofile = "{profile}"\n', id="injected1",
                                                 execution_count=count)
            injected.metadata.update({"tags": ["injected-parameters"], "papermill": {"status": "completed"}})
            cells.append(injected)
    executed.cells = cells
    executed.metadata["papermill"] = {"parameters": {"profile": profile}, "exception": exception,
                                      "end_time": FULL_RUN_END, "duration": 1081.4}
    if commit is not None:
        executed.metadata["cxr_run"] = {"commit": commit, "dirty": False, "profile": profile,
                                        "finished_utc": "2026-12-01T10:00:00Z"}
    return executed


@pytest.fixture
def project(tmp_path):
    """notebooks/01_demo.ipynb, executed/01_demo.ipynb (a clean full run) and a reference.json, in tmp_path."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "executed").mkdir()
    source = source_notebook()
    nbformat.write(source, tmp_path / "notebooks" / "01_demo.ipynb")
    nbformat.write(executed_notebook(source), tmp_path / "executed" / "01_demo.ipynb")
    (tmp_path / "reference.json").write_text('{"profile": "full", "created_utc": "2026-12-02T08:00:00Z"}\n')
    return tmp_path


def refresh(project: Path) -> list[Path]:
    return book.refresh(project / "book", project / "executed", source_dir=project / "notebooks",
                        reference=project / "reference.json")


def rewrite_executed(project: Path, change) -> None:
    path = project / "executed" / "01_demo.ipynb"
    executed = nbformat.read(path, as_version=4)
    change(executed)
    nbformat.write(executed, path)


# --- the refresh --------------------------------------------------------------------------------------

def test_the_copy_is_the_current_notebook_with_the_runs_outputs_and_its_provenance(project):
    (written,) = refresh(project)
    copy = nbformat.read(written, as_version=4)
    source = nbformat.read(project / "notebooks" / "01_demo.ipynb", as_version=4)
    assert [cell.id for cell in copy.cells] == ["book-provenance", "cell-00", "cell-01", "cell-02", "injected1",
                                                "cell-03", "cell-04", "cell-05"]
    provenance = copy.cells[0].source
    assert provenance.startswith(f"*{book.PROVENANCE_START} 2026-12-01 in 18 min at commit {'a' * 12};")
    assert copy.metadata["cxr_book"]["run_seconds"] == 1081.4
    assert "reference.json" in provenance and "created 2026-12-02" in provenance
    assert copy.metadata["cxr_book"]["run_commit"] == "a" * 40
    assert copy.cells[4].source == '# Parameters\nprofile = "full"\n'
    assert copy.cells[4].metadata == {"tags": ["injected-parameters"]}
    by_id = {cell.id: cell for cell in copy.cells}
    for cell in source.cells:  # markdown, sources and cell metadata are the notebook's, not the run's
        assert by_id[cell.id].source == cell.source
        assert by_id[cell.id].metadata == cell.metadata
    assert by_id["cell-03"].outputs[0]["text"] == "output of cell-03\n"
    assert by_id["cell-03"].execution_count == 4
    assert "papermill" not in copy.metadata
    assert all("papermill" not in cell.metadata and "execution" not in cell.metadata for cell in copy.cells)


def png_output(image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(buffer.getvalue()).decode(),
                                                        "text/plain": "<Figure>"})


def test_a_large_png_is_kept_as_a_smaller_jpeg_and_a_small_one_as_it_is(project):
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)  # a film-like, busy image
    large = Image.fromarray(noise)
    small = Image.new("RGBA", (40, 30), (255, 0, 0, 128))

    def add_figures(executed):
        {cell.id: cell for cell in executed.cells}["cell-03"].outputs = [png_output(large), png_output(small)]
    rewrite_executed(project, add_figures)
    (written,) = refresh(project)
    outputs = {cell.id: cell for cell in nbformat.read(written, as_version=4).cells}["cell-03"].outputs
    first, second = (output["data"] for output in outputs)
    assert set(first) == {"image/jpeg", "text/plain"}
    assert len(first["image/jpeg"]) < len(png_output(large)["data"]["image/png"])
    with Image.open(io.BytesIO(base64.b64decode(first["image/jpeg"]))) as decoded:
        assert decoded.format == "JPEG" and decoded.size == (400, 400)
    assert set(second) == {"image/png", "text/plain"}
    with Image.open(io.BytesIO(base64.b64decode(second["image/png"]))) as decoded:
        assert decoded.size == (40, 30)


def test_a_copy_without_a_recorded_commit_says_so(project):
    source = nbformat.read(project / "notebooks" / "01_demo.ipynb", as_version=4)
    nbformat.write(executed_notebook(source, commit=None), project / "executed" / "01_demo.ipynb")
    (written,) = refresh(project)
    assert "(run commit not recorded)" in nbformat.read(written, as_version=4).cells[0].source


def test_a_changed_code_cell_is_refused_with_the_command_that_reruns_it(project):
    path = project / "notebooks" / "01_demo.ipynb"
    source = nbformat.read(path, as_version=4)
    source.cells[3].source = "print(math.sqrt(seed) * 2)"
    nbformat.write(source, path)
    with pytest.raises(book.BookError, match=r"Notebook 01: code cell 3 \(id cell-03.*differs.*"
                                             r"python -m helpers.notebooks --profile full --only 01"):
        refresh(project)
    assert not (project / "book").exists()  # nothing written


def test_a_markdown_edit_needs_no_rerun(project):
    path = project / "notebooks" / "01_demo.ipynb"
    source = nbformat.read(path, as_version=4)
    source.cells[0].source += "\n\nA new sentence."
    nbformat.write(source, path)
    (written,) = refresh(project)
    assert nbformat.read(written, as_version=4).cells[1].source.endswith("A new sentence.")


def test_a_missing_executed_copy_is_refused(project):
    (project / "executed" / "01_demo.ipynb").unlink()
    with pytest.raises(book.BookError, match=r"Notebook 01: no executed copy.*--profile full --only 01"):
        refresh(project)


def test_a_smoke_profile_copy_is_refused(project):
    source = nbformat.read(project / "notebooks" / "01_demo.ipynb", as_version=4)
    nbformat.write(executed_notebook(source, profile="smoke"), project / "executed" / "01_demo.ipynb")
    with pytest.raises(book.BookError, match=r"Notebook 01: .*ran in the 'smoke' profile.*--profile full --only 01"):
        refresh(project)


def test_a_copy_that_stopped_with_an_exception_is_refused(project):
    def fail(executed):
        executed.metadata["papermill"]["exception"] = True
        executed.cells[4].outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="no", traceback=[])]
        executed.cells.insert(4, nbformat.v4.new_markdown_cell("An Exception was encountered"))
        executed.cells[4].metadata["tags"] = ["papermill-error-cell-tag"]

    rewrite_executed(project, fail)
    with pytest.raises(book.BookError, match=r"Notebook 01: .*stopped with an exception in cell cell-03"):
        refresh(project)


def test_a_copy_still_running_is_refused(project):
    def unfinish(executed):
        executed.metadata["papermill"]["end_time"] = None
        executed.cells[-1].metadata["papermill"]["status"] = "pending"

    rewrite_executed(project, unfinish)
    with pytest.raises(book.BookError, match=r"Notebook 01: .*did not finish.*cell-05"):
        refresh(project)


def test_progress_bars_are_left_out_and_other_widgets_leave_a_note(project):
    def add_widgets(executed):
        widget = {"model_id": "0123", "version_major": 2, "version_minor": 0}
        executed.cells[4].outputs = [
            nbformat.v4.new_output("display_data", data={"text/plain": "decode:   0%|          | 0/10 [00:00<?, ?it/s]",
                                                         book.WIDGET_MIME: widget}),
            nbformat.v4.new_output("display_data", data={"text/plain": "VBox(children=(HTML(value='x'),))",
                                                         book.WIDGET_MIME: widget}),
        ]
        executed.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}

    rewrite_executed(project, add_widgets)
    copy = nbformat.read(refresh(project)[0], as_version=4)
    (note,) = copy.cells[5].outputs
    assert note["data"] == {"text/plain": book.WIDGET_NOTE}
    assert "widgets" not in copy.metadata


# --- the committed copies -----------------------------------------------------------------------------

def without_book_cells(cells) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in cells
            if cell.get("id") != book.PROVENANCE_CELL_ID and book.INJECTED_TAG not in cell.metadata.get("tags", [])]


@pytest.mark.parametrize("notebook", numbered_notebooks(), ids=lambda path: path.name[:2])
def test_the_committed_book_copy_is_in_sync_with_the_notebook(notebook):
    copy_path = book.BOOK_NOTEBOOKS / notebook.name
    remedy = ("run `make book` (python -m helpers.book) after a full run of the notebook, "
              f"{book.remedy(notebook.name[:2])}, and commit book/notebooks/")
    assert copy_path.is_file(), f"No book copy of {notebook.name}: {remedy}"
    copy = nbformat.read(copy_path, as_version=4)
    source = nbformat.read(notebook, as_version=4)
    code = [text for kind, text in without_book_cells(copy.cells) if kind == "code"]
    assert code == [cell.source for cell in source.cells if cell.cell_type == "code"], \
        f"book/notebooks/{notebook.name}: the code differs from the notebook's: {remedy}"
    assert without_book_cells(copy.cells) == without_book_cells(source.cells), \
        (f"book/notebooks/{notebook.name}: the markdown differs from the notebook's: run `make book` "
         "(a markdown edit needs no re-run) and commit book/notebooks/")
    assert copy.cells[0].get("id") == book.PROVENANCE_CELL_ID
    assert copy.cells[0].source.startswith(f"*{book.PROVENANCE_START} ")
    assert copy.metadata["cxr_book"]["profile"] == "full"
    assert any(cell.get("outputs") for cell in copy.cells if cell.cell_type == "code"), f"{copy_path}: no outputs"


def test_the_book_has_no_copy_of_a_notebook_that_is_gone():
    names = {path.name for path in numbered_notebooks()}
    assert sorted(path.name for path in book.BOOK_NOTEBOOKS.glob("[0-9][0-9]_*.ipynb") if path.name not in names) == []


# --- the HTML book in a browser -----------------------------------------------------------------------

# JavaScript: what a reader would see wrong on a page.
PAGE_PROBLEMS = """() => ({
    title: document.title,
    text: document.body.innerText,
    broken: [...document.images].filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.src),
    errors: document.querySelectorAll('.output.error, .output.traceback, .output.stderr').length,
})"""


@contextlib.contextmanager
def static_server(root: Path):
    """``python -m http.server`` on 127.0.0.1 and a free port, serving ``root``; yields its URL, then stops it."""
    port = browser.free_port()
    process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                "--directory", str(root)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        browser.wait_for_health(f"http://127.0.0.1:{port}/index.html", process, timeout=30, expect=None)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
        process.stdout.close()


def book_page_problems(html_dir: Path) -> dict[str, list[str]]:
    """Open every page of the built book in Chromium; {page: what is wrong} for the pages with a problem."""
    from playwright.sync_api import sync_playwright

    pages = sorted(str(path.relative_to(html_dir)) for path in html_dir.rglob("*.html")
                   if not path.relative_to(html_dir).parts[0].startswith("_"))  # _static/: theme templates
    problems = {}
    with static_server(html_dir) as url, sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser.CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = chromium.new_page(viewport={"width": 1300, "height": 900})
            # Offline, as in a hospital: anything not served by the book itself is refused.
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                       else route.abort())
            for name in pages:
                page.goto(f"{url}/{name}", wait_until="load")
                found = page.evaluate(PAGE_PROBLEMS)
                wrong = []
                if not found["title"].strip():
                    wrong.append("no title")
                wrong += [f"broken image {src}" for src in found["broken"]]
                if "Traceback" in found["text"] or found["errors"]:
                    wrong.append(f"a traceback or {found['errors']} error output block(s)")
                if "Book built at" not in found["text"]:
                    wrong.append("no provenance line")
                if re.match(r"notebooks/[0-9][0-9]_", name) and book.PROVENANCE_START not in found["text"]:
                    wrong.append("no line saying which run the outputs come from")
                if wrong:
                    problems[name] = wrong
        finally:
            chromium.close()
    assert len(pages) >= 3, pages
    return problems


def test_every_page_of_the_book_renders_in_a_browser(chromium, tmp_path):
    html_dir = book.build_html(book.BOOK_NOTEBOOKS, tmp_path / "html")
    built = {path.stem for path in (html_dir / "notebooks").glob("[0-9][0-9]_*.html")}
    assert built == {path.stem for path in numbered_notebooks()}
    assert book_page_problems(html_dir) == {}
