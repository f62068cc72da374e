"""The course as a static HTML book that a learner reads without running anything: ``python -m helpers.book``.

    python -m helpers.book                     # make book: refresh the copies (when executed ones exist), build
    python -m helpers.book --refresh           # only refresh book/notebooks/ from the last full run
    python -m helpers.book --refresh --output /tmp/copies --only 02 05
    python -m helpers.book --build             # make book-html: only build, from the committed copies
    python -m helpers.book --build --notebooks /tmp/copies --html /tmp/html

Two steps:

1. **Refresh** writes ``book/notebooks/NN_name.ipynb`` for every numbered notebook: the
   current notebook (its markdown, cell order, ids and cell metadata) with the outputs and
   execution counts of the executed copy of the last full run
   (``<artifacts>/executed/NN_name.ipynb``), the ``injected-parameters`` cell papermill added
   (it shows ``profile = "full"``) and a first markdown cell that says where the outputs come
   from and how long the run took; large PNG figures are kept as smaller JPEGs. It refuses a
   copy whose code differs from the notebook's, one that is missing, one that stopped with an
   exception and one that did not run in the full profile, naming the notebook, the first
   differing cell and the command that makes a matching copy.
2. **Build** turns the committed copies into HTML under ``book/_build/html`` with Sphinx,
   myst-nb and sphinx-book-theme, never executing a cell (``book/conf.py``).

Why Sphinx and not Jupyter Book 2 (mystmd): mystmd downloads its site theme when it builds,
which a CI runner without internet or a locked-down hospital network cannot do; the Sphinx
stack installs from the PyPI pins in requirements.txt alone and builds offline.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from PIL import Image

from helpers import config

PROJECT_ROOT = config.PROJECT_ROOT
SOURCE_NOTEBOOKS = PROJECT_ROOT / "notebooks"
BOOK_DIR = PROJECT_ROOT / "book"
BOOK_NOTEBOOKS = BOOK_DIR / "notebooks"
HTML_DIR = BOOK_DIR / "_build" / "html"
REFERENCE = PROJECT_ROOT / "results" / "reference.json"

PROVENANCE_CELL_ID = "book-provenance"
PROVENANCE_START = "Executed in the full profile on"
INJECTED_TAG = "injected-parameters"
PARAMETERS_TAG = "parameters"
ERROR_TAG = "papermill-error-cell-tag"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# tqdm's text for a progress bar ("decode:   0%|          | 0/1000 [00:00<?, ?it/s]"): the text a
# widget-less page would show is the bar's first state, so the book leaves progress bars out.
PROGRESS_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+")
WIDGET_NOTE = "[An interactive widget: open the notebook in JupyterLab (make lab) to use it.]"
# A PNG output larger than this (base64 characters) is stored as a JPEG in the book's copy when that
# is smaller: galleries of films compress several times better that way, and the copies are committed.
PNG_LIMIT = 150_000
JPEG_QUALITY = 75


class BookError(ValueError):
    """An executed copy that cannot go into the book; the message says which, why and what to run."""


def remedy(number: str) -> str:
    """The command that makes a full-profile executed copy of notebook ``number``."""
    return f"python -m helpers.notebooks --profile full --only {number}"


# --- provenance -------------------------------------------------------------------------------------

def _git(arguments: list[str], root: Path) -> str | None:
    """The stripped output of ``git arguments`` in ``root``; None without git or outside a checkout."""
    try:
        finished = subprocess.run(["git", *arguments], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return finished.stdout.strip()


def reference_provenance(reference: Path = REFERENCE, root: Path = PROJECT_ROOT) -> dict[str, str]:
    """``{"path", "sha256", "created"}`` of the headline results file the book's figures agree with.

    ``created`` is the file's own ``created_utc`` when it records one, else the date of the last
    commit that changed it, else ``"date not recorded"``.
    """
    if not reference.is_file():
        return {"path": "results/reference.json", "sha256": "missing", "created": "date not recorded"}
    data = reference.read_bytes()
    created = str(json.loads(data).get("created_utc", ""))[:10]
    if not created:
        created = _git(["log", "-1", "--format=%cs", "--", str(reference)], root) or "date not recorded"
    try:
        shown_path = str(reference.resolve().relative_to(root.resolve()))
    except ValueError:
        shown_path = reference.name
    return {"path": shown_path, "sha256": hashlib.sha256(data).hexdigest()[:12], "created": created}


def reference_sentence(reference: dict[str, str]) -> str:
    return f"results from `{reference['path']}` {reference['sha256']}, created {reference['created']}"


def build_provenance_line(root: Path = PROJECT_ROOT, reference: Path | None = None) -> str:
    """The line every page of the book shows: the commit it was built at and the results file's hash."""
    commit = _git(["rev-parse", "--short=12", "HEAD"], root)
    if commit is None:
        commit_text = "commit not recorded (built outside a git checkout)"
    else:
        dirty = bool(_git(["status", "--porcelain"], root))
        commit_text = f"commit {commit}" + (" with uncommitted changes" if dirty else "")
    found = reference_provenance(reference or root / "results" / "reference.json", root)
    return f"Book built at {commit_text}; {reference_sentence(found)}."


def run_provenance(executed: nbformat.NotebookNode) -> dict:
    """What the executed copy records about its run: commit (or None), dirty, profile, finished date."""
    run = executed.metadata.get("cxr_run") or {}
    papermill = executed.metadata.get("papermill") or {}
    finished = run.get("finished_utc") or papermill.get("end_time") or ""
    return {
        "commit": run.get("commit") if run.get("commit") not in (None, "", "unknown") else None,
        "dirty": bool(run.get("dirty", False)),
        "profile": run.get("profile") or (papermill.get("parameters") or {}).get("profile"),
        "finished": finished[:10] or "an unrecorded date",
        "seconds": papermill.get("duration"),
    }


def duration_text(seconds: float) -> str:
    """``"16 s"`` under a minute and a half, else ``"18 min"``."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def provenance_text(run: dict, reference: dict[str, str]) -> str:
    if run["commit"] is None:
        commit_text = " (run commit not recorded)"
    else:
        commit_text = f" at commit {run['commit'][:12]}" + (" with uncommitted changes" if run["dirty"] else "")
    took = f" in {duration_text(run['seconds'])}" if run.get("seconds") is not None else ""
    return f"*{PROVENANCE_START} {run['finished']}{took}{commit_text}; {reference_sentence(reference)}.*"


# --- refresh ----------------------------------------------------------------------------------------

def _first_line(source: str) -> str:
    return (source.strip().splitlines() or [""])[0][:80]


def check_executed(number: str, executed_path: Path) -> nbformat.NotebookNode:
    """The executed copy, if it exists, finished without an exception and ran in the full profile."""
    if not executed_path.is_file():
        raise BookError(f"Notebook {number}: no executed copy at {executed_path}. Run: {remedy(number)}")
    executed = nbformat.read(executed_path, as_version=4)
    papermill = executed.metadata.get("papermill") or {}
    errors = [cell for cell in executed.cells if ERROR_TAG in cell.metadata.get("tags", [])
              or any(output.get("output_type") == "error" for output in cell.get("outputs", []))]
    if papermill.get("exception") or errors:
        where = next((f" in cell {cell.get('id')} ({_first_line(cell.source)!r})" for cell in errors
                      if cell.cell_type == "code"), "")
        raise BookError(f"Notebook {number}: the executed copy {executed_path.name} stopped with an exception"
                        f"{where}. Fix it, then run: {remedy(number)}")
    unfinished = [cell for cell in executed.cells
                  if (cell.metadata.get("papermill") or {}).get("status") in ("pending", "running")]
    if ("end_time" in papermill and not papermill["end_time"]) or unfinished:
        where = f" (cell {unfinished[0].get('id')} has not run)" if unfinished else ""
        raise BookError(f"Notebook {number}: the executed copy {executed_path.name} did not finish: it is still "
                        f"running or was stopped{where}. Wait for it, or run: {remedy(number)}")
    profile = run_provenance(executed)["profile"]
    if profile != "full":
        raise BookError(f"Notebook {number}: the executed copy {executed_path.name} ran in the {profile!r} profile, "
                        f"not 'full'. Run: {remedy(number)}")
    return executed


def _is_injected(cell) -> bool:
    return cell.cell_type == "code" and INJECTED_TAG in cell.metadata.get("tags", [])


def _compact_image(data: dict) -> None:
    """Replace a PNG over :data:`PNG_LIMIT` in ``data`` (an output's mime bundle) by a smaller JPEG, if it is."""
    encoded = data.get("image/png")
    if isinstance(encoded, list):
        encoded = "".join(encoded)
    if not encoded or len(encoded) <= PNG_LIMIT:
        return
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, "white")  # a figure's transparent background is white on the page
    flat.paste(rgba, mask=rgba.getchannel("A"))
    buffer = io.BytesIO()
    flat.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    jpeg = base64.b64encode(buffer.getvalue()).decode("ascii")
    if len(jpeg) < len(encoded):
        del data["image/png"]
        data["image/jpeg"] = jpeg


def _book_outputs(outputs: list) -> list:
    """The outputs as a static page can show them: no progress bars, a note instead of other widgets,
    large PNGs as JPEGs."""
    shown = []
    for output in outputs:
        data = output.get("data", {})
        if WIDGET_MIME not in data:
            output.get("metadata", {}).pop("papermill", None)
            _compact_image(data)
            shown.append(output)
            continue
        text = data.get("text/plain", "")
        if isinstance(text, list):
            text = "".join(text)
        if PROGRESS_BAR.search(text):
            continue
        shown.append(nbformat.v4.new_output("display_data", data={"text/plain": WIDGET_NOTE}))
    return shown


def book_copy(source_path: Path, executed_path: Path, reference: dict[str, str]) -> nbformat.NotebookNode:
    """The book's copy of one notebook (see the module docstring); raises :class:`BookError` when refused."""
    number = source_path.name[:2]
    executed = check_executed(number, executed_path)
    source = nbformat.read(source_path, as_version=4)
    executed_code = [cell for cell in executed.cells if cell.cell_type == "code"]
    injected_after = {index - 1: cell for index, cell in enumerate(executed_code) if _is_injected(cell)}
    ran = [cell for cell in executed_code if not _is_injected(cell)]
    source_code = [cell for cell in source.cells if cell.cell_type == "code"]
    for index, cell in enumerate(source_code):
        ran_source = ran[index].source if index < len(ran) else None
        if ran_source != cell.source:
            what = "is not in the executed copy" if ran_source is None else "differs from the one that ran"
            raise BookError(f"Notebook {number}: code cell {index + 1} (id {cell.get('id')}, "
                            f"{_first_line(cell.source)!r}) {what}. Run: {remedy(number)}")
    if len(ran) > len(source_code):
        extra = ran[len(source_code)]
        raise BookError(f"Notebook {number}: the executed copy has a code cell the notebook no longer has "
                        f"(id {extra.get('id')}, {_first_line(extra.source)!r}). Run: {remedy(number)}")

    run = run_provenance(executed)
    cells = [nbformat.v4.new_markdown_cell(provenance_text(run, reference), id=PROVENANCE_CELL_ID)]
    code_index = 0
    for cell in source.cells:
        cell = nbformat.from_dict(json.loads(json.dumps(cell)))
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        cells.append(cell)
        if cell.cell_type != "code":
            continue
        cell.outputs = _book_outputs(ran[code_index].outputs)
        cell.execution_count = ran[code_index].execution_count
        if code_index in injected_after:  # right after the parameters cell, as papermill put it
            injected = nbformat.from_dict(json.loads(json.dumps(injected_after[code_index])))
            injected.metadata = nbformat.from_dict({"tags": [INJECTED_TAG]})
            injected.outputs = _book_outputs(injected.outputs)
            cells.append(injected)
        code_index += 1

    copy = nbformat.v4.new_notebook(cells=cells, metadata=json.loads(json.dumps(source.metadata)))
    copy.metadata.pop("widgets", None)  # widget state only a live kernel (or a CDN script) could use
    if "language_info" in executed.metadata:
        copy.metadata["language_info"] = executed.metadata["language_info"]
    copy.metadata["cxr_book"] = {
        "executed_copy": executed_path.name,
        "run_commit": run["commit"] or "not recorded",
        "run_dirty": run["dirty"],
        "run_finished_utc": (executed.metadata.get("cxr_run") or {}).get("finished_utc")
        or (executed.metadata.get("papermill") or {}).get("end_time"),
        "profile": run["profile"],
        "run_seconds": run["seconds"],
        "reference": reference,
    }
    nbformat.validate(copy)
    return copy


def refresh(output_dir: Path = BOOK_NOTEBOOKS, executed_dir: Path | None = None, only: list[str] | None = None,
            source_dir: Path = SOURCE_NOTEBOOKS, reference: Path = REFERENCE) -> list[Path]:
    """Write the book copies of the numbered notebooks into ``output_dir``; returns their paths.

    Every notebook is checked before anything is written: one refusal writes nothing and
    raises :class:`BookError` listing every refused notebook. Without ``only``, copies of
    notebooks that no longer exist are removed.
    """
    executed_dir = executed_dir or config.artifacts_dir("executed", create=False)
    sources = sorted(source_dir.glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = set(only) - {path.name[:2] for path in sources}
        if unknown:
            raise ValueError(f"No notebook numbered {sorted(unknown)} in {source_dir}.")
        sources = [path for path in sources if path.name[:2] in only]
    found = reference_provenance(reference)
    copies, refusals = {}, []
    for path in sources:
        try:
            copies[path.name] = book_copy(path, executed_dir / path.name, found)
        except BookError as error:
            refusals.append(str(error))
    if refusals:
        raise BookError("The book was not refreshed:\n" + "\n".join(f"- {text}" for text in refusals))
    output_dir.mkdir(parents=True, exist_ok=True)
    if not only:
        for stale in output_dir.glob("[0-9][0-9]_*.ipynb"):
            if stale.name not in copies:
                stale.unlink()
    written = []
    for name, copy in copies.items():
        nbformat.write(copy, output_dir / name)
        written.append(output_dir / name)
    return written


# --- build ------------------------------------------------------------------------------------------

def stage_sources(notebooks_dir: Path, staging: Path) -> Path:
    """A copy of the book's sources (and the files they include) in ``staging`` with other notebook copies.

    The pages include the README, ``docs/`` and the notebook index by relative paths, so the
    staged tree keeps the project's layout. Returns the staged ``book/`` folder.
    """
    book = staging / "book"
    shutil.copytree(BOOK_DIR, book, ignore=shutil.ignore_patterns("_build", "[0-9][0-9]_*.ipynb"))
    for copy in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb")):
        shutil.copy2(copy, book / "notebooks" / copy.name)
    shutil.copy2(PROJECT_ROOT / "README.md", staging / "README.md")
    shutil.copytree(PROJECT_ROOT / "docs", staging / "docs")
    (staging / "notebooks").mkdir()
    shutil.copy2(SOURCE_NOTEBOOKS / "README.md", staging / "notebooks" / "README.md")
    return book


def build_html(notebooks_dir: Path = BOOK_NOTEBOOKS, html_dir: Path = HTML_DIR, jobs: int = 1,
               strict: bool = True) -> Path:
    """Build the HTML book from the copies in ``notebooks_dir`` (never executing them); returns ``html_dir``.

    ``strict`` (the default): warnings fail the build, so a broken link, a missing notebook copy
    or an include whose marker moved is an error; it reads every page afresh (``-E``), because
    Sphinx reports a page's warnings only when it reads the page, and a page unchanged since the
    last build would pass unread. ``strict=False`` builds a partial set of copies.
    """
    html_dir = Path(html_dir).resolve()
    environment = {**os.environ, "CXR_BOOK_PROJECT_ROOT": str(PROJECT_ROOT)}
    with tempfile.TemporaryDirectory(prefix="cxr-book-") as staging:
        source_dir = BOOK_DIR
        if Path(notebooks_dir).resolve() != BOOK_NOTEBOOKS.resolve():
            source_dir = stage_sources(Path(notebooks_dir), Path(staging))
        command = [sys.executable, "-m", "sphinx", "-b", "html", "-j", str(jobs), "-q",
                   *(["-W", "--keep-going", "-E"] if strict else []),
                   "-d", str(html_dir.parent / ".doctrees"), str(source_dir), str(html_dir)]
        finished = subprocess.run(command, env=environment, capture_output=True, text=True)
    if finished.returncode != 0:
        raise BookError(f"sphinx-build failed (exit {finished.returncode}):\n{finished.stdout[-4000:]}"
                        f"{finished.stderr[-6000:]}")
    return html_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refresh", action="store_true", help="only refresh the copies from the executed ones")
    parser.add_argument("--build", action="store_true", help="only build the HTML from the copies")
    parser.add_argument("--only", nargs="*", help="refresh only these notebook numbers, e.g. 01 02")
    parser.add_argument("--output", type=Path, default=BOOK_NOTEBOOKS,
                        help="where the refresh writes the copies (default book/notebooks)")
    parser.add_argument("--notebooks", type=Path, default=None,
                        help="the copies the build reads (default: --output, i.e. book/notebooks)")
    parser.add_argument("--html", type=Path, default=HTML_DIR, help="where the HTML goes (default book/_build/html)")
    args = parser.parse_args(argv)
    refresh_step = args.refresh or not args.build
    build_step = args.build or not args.refresh
    try:
        if refresh_step:
            executed_dir = config.artifacts_dir("executed", create=False)
            if args.refresh or executed_dir.is_dir():
                for path in refresh(args.output, executed_dir, args.only):
                    print(f"refreshed {path}")
            else:
                print(f"No executed notebooks in {executed_dir}: building from the committed copies.")
        if build_step:
            html = build_html(args.notebooks or args.output, args.html)
            print(f"The book is in {html} (open {html / 'index.html'}).")
    except BookError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
