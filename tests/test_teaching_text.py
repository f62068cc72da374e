"""The teaching text: words a learner should not meet, and the layout every numbered notebook follows.

A learner reads every word of the notebooks and the documents, so they speak about the
model and the data, never about how the project itself is organised. Every numbered
notebook opens with its objectives, time and prerequisites and closes the same way
(take-aways, one exercises section with collapsed solutions, the next notebook, further
reading), as CONTRIBUTING.md and notebooks/README.md describe. Reads JSON and Markdown
only: no TensorFlow, no notebook runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NUMBERED = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", NOTEBOOK_DIR / "README.md",
                    *(ROOT / "docs").glob("*.md")])

# Words about how the project is developed, or "bar" for a target: whole words, any case.
INTERNAL_WORDS = re.compile(
    r"\b(issues?|tickets?|spikes?|work[ -]sessions?|sprints?|backlogs?|todo|fixme|bars?)\b", re.IGNORECASE)
# Where "bar" is a bar of a figure or a widget, it stays.
ALLOWED_PHRASES = re.compile(
    r"\b(error[ -]bars?|progress[ -]bars?|bar[ -](charts?|plots?|graphs?)|colou?r[ -]?bars?|histogram[ -]bars?)\b"
    r"|\.barh?\(",  # matplotlib / pandas calls: axis.bar(...), frame.plot.bar(...)
    re.IGNORECASE)

EXERCISES, TAKE_AWAYS, NEXT, FURTHER_READING = "## Exercises", "## Take-aways", "## Next", "## Further reading"
HIDDEN_TAG = "hide-cell"


def internal_words(text: str) -> list[str]:
    """The project-internal words in ``text``, except those inside an allowed phrase."""
    allowed = [match.span() for match in ALLOWED_PHRASES.finditer(text)]
    return [match.group() for match in INTERNAL_WORDS.finditer(text)
            if not any(start <= match.start() and match.end() <= end for start, end in allowed)]


def cells_of(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def headings(cells: list[dict], heading: str) -> list[int]:
    """Indices of the markdown cells holding the line ``heading`` (exactly, trailing spaces aside)."""
    return [index for index, cell in enumerate(cells) if cell["cell_type"] == "markdown"
            and any(line.rstrip() == heading for line in source(cell).splitlines())]


def where(path: Path, index: int, cell: dict) -> str:
    return f"{path.relative_to(ROOT)} cell {index} (id {cell.get('id')!r}, {cell['cell_type']})"


# --------------------------------------------------------------------------- #
# Words
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("text, expected", [
    ("Targets of the new-site issue", ["issue"]),
    ("a spike and two TICKETS", ["spike", "TICKETS"]),
    ("after the work session", ["work session"]),
    ("beside the agreement bar a two-sided bar", ["bar", "bar"]),
    ("the bars are met", ["bars"]),
    ("error bars, a progress bar, a bar chart, a colour bar, a color bar, histogram bars", []),
    ("axis.bar(names, values); frame.plot.bar(ax=axis); axis.barh(y, x)", []),
    ("a barrier, the sidebar, tissues, crowbar", []),
])
def test_the_word_check_finds_internal_words_and_spares_figures(text, expected):
    assert internal_words(text) == expected


@pytest.mark.parametrize("path", NUMBERED + sorted(set(NOTEBOOK_DIR.glob("*.ipynb")) - set(NUMBERED)),
                         ids=lambda p: p.name)
def test_notebooks_use_no_project_internal_words(path):
    found = [f"{where(path, index, cell)}: {word!r}" for index, cell in enumerate(cells_of(path))
             for word in internal_words(source(cell))]
    assert not found, "words about how the project is made, not about the model:\n" + "\n".join(found)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_use_no_project_internal_words(path):
    found = [f"{path.relative_to(ROOT)} line {number}: {word!r}"
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             for word in internal_words(line)]
    assert not found, "words about how the project is made, not about the model:\n" + "\n".join(found)


# --------------------------------------------------------------------------- #
# Notebook layout
# --------------------------------------------------------------------------- #
def test_there_are_numbered_notebooks():
    assert len(NUMBERED) >= 9, [path.name for path in NUMBERED]


@pytest.mark.parametrize("path", NUMBERED, ids=lambda p: p.name)
def test_first_cell_states_objectives_time_and_prerequisites(path):
    first = cells_of(path)[0]
    assert first["cell_type"] == "markdown", f"{path.name}: the first cell is the markdown header"
    lines = source(first).splitlines()
    assert lines[0].startswith(f"# {path.name[:2]} · "), f"{path.name}: the first line is '# {path.name[:2]} · Title'"
    starts = {}
    for label in ("**Objectives**", "**Time**", "**Prerequisites**"):
        found = [number for number, line in enumerate(lines) if line.startswith(label)]
        assert len(found) == 1, f"{path.name}: the first cell needs one line starting with {label}"
        starts[label] = found[0]
    assert starts["**Objectives**"] < starts["**Time**"] < starts["**Prerequisites**"], \
        f"{path.name}: Objectives, then Time, then Prerequisites"
    after_objectives = [line for line in lines[starts["**Objectives**"] + 1:starts["**Time**"]] if line.strip()]
    assert after_objectives and all(line.lstrip().startswith(("* ", "- ")) for line in after_objectives[:1]), \
        f"{path.name}: **Objectives** is followed by a bullet list"
    time_line = lines[starts["**Time**"]]
    assert "smoke" in time_line and "full" in time_line, f"{path.name}: **Time** gives the smoke and the full profile"


@pytest.mark.parametrize("path", NUMBERED, ids=lambda p: p.name)
def test_notebook_closes_with_take_aways_exercises_next_and_further_reading(path):
    cells = cells_of(path)
    positions = {heading: headings(cells, heading) for heading in (TAKE_AWAYS, EXERCISES, NEXT, FURTHER_READING)}
    for heading, found in positions.items():
        assert len(found) == 1, f"{path.name}: exactly one '{heading}' heading, found {len(found)}"
    take_aways, exercises, next_, reading = (positions[h][0] for h in (TAKE_AWAYS, EXERCISES, NEXT, FURTHER_READING))
    assert take_aways < exercises < next_ < reading, \
        f"{path.name}: '{TAKE_AWAYS}', '{EXERCISES}', '{NEXT}', '{FURTHER_READING}' in that order"

    later = NUMBERED[NUMBERED.index(path) + 1:]
    target = later[0].name if later else "README.md"
    next_text = "\n".join(source(cell) for cell in cells[next_:reading] if cell["cell_type"] == "markdown")
    assert re.search(rf"\]\({re.escape(target)}\)", next_text), f"{path.name}: '{NEXT}' links to {target}"

    reading_text = "\n".join(source(cell) for cell in cells[reading:] if cell["cell_type"] == "markdown")
    assert re.search(r"https?://\S+", reading_text), f"{path.name}: '{FURTHER_READING}' gives at least one link"


@pytest.mark.parametrize("path", NUMBERED, ids=lambda p: p.name)
def test_every_solution_cell_is_collapsed_with_its_output(path):
    cells = cells_of(path)
    exercises, next_ = headings(cells, EXERCISES), headings(cells, NEXT)
    assert exercises and next_, f"{path.name}: needs '{EXERCISES}' and '{NEXT}'"
    solutions = [(index, cell) for index, cell in enumerate(cells[exercises[0]:next_[0]], start=exercises[0])
                 if cell["cell_type"] == "code"]
    assert solutions, f"{path.name}: every exercise has its solution in a code cell"
    problems = []
    for index, cell in solutions:
        metadata = cell.get("metadata", {})
        jupyter = metadata.get("jupyter", {})
        if jupyter.get("source_hidden") is not True or jupyter.get("outputs_hidden") is not True:
            problems.append(f"{where(path, index, cell)}: jupyter.source_hidden and outputs_hidden must be true")
        if HIDDEN_TAG not in metadata.get("tags", []):
            problems.append(f"{where(path, index, cell)}: needs the {HIDDEN_TAG!r} tag")
    assert not problems, "\n".join(problems)
