"""User-chosen text in Markdown and in CSV cells: shown as written, never run."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt

from helpers.escaping import markdown_literal, spreadsheet_cell

HOSTILE = [
    "**bold** and _italic_.png",
    "[click](http://evil.example).png",
    "![pixel](http://evil.example/track.png)",
    "<img src=x onerror=alert(1)>.png",
    "# heading.png",
    "1. list.png",
    "- item.png",
    "`code`.png",
    "back\\slash\\*.png",
    "pipe | table | row.png",
    ":red[coloured] $x^2$.png",
    "two\nlines.png",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_markdown_literal_renders_as_the_same_characters_and_nothing_else(name):
    html = MarkdownIt("commonmark").enable("table").render(markdown_literal(name)).strip()
    one_line = " ".join(name.splitlines())
    expected = one_line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    assert html == f"<p>{expected}</p>"


@pytest.mark.parametrize("value, cell", [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-2.png", "'-2.png"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1", "'\t=1"), ("\r=1", "'\r=1"), ("film.png", "film.png"), ("a=b", "a=b"), ("", ""),
    (-2.5, -2.5), (0, 0), (True, True), (None, None),
])
def test_spreadsheet_cells_that_start_like_a_formula_become_text(value, cell):
    assert spreadsheet_cell(value) == cell
