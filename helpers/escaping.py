"""Text a user chose (file names, and messages that quote them) shown safely: in Markdown and in spreadsheets.

A file name is the user's text. Put unescaped into Markdown it can format the page
(``**``, headings), draw a link or fetch an image from another server
(``![](https://...)``); put unescaped into a CSV cell that begins with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return, a spreadsheet runs it as a formula (CSV
injection). Every user interface passes such text through :func:`markdown_literal`
or :func:`spreadsheet_cell` first.
"""

from __future__ import annotations

import re

# Every character CommonMark lets a backslash escape (ASCII punctuation); escaping all of them
# keeps emphasis, links, images, headings, tables, HTML and Streamlit's :colour[...] directives inert.
_MARKDOWN_SPECIAL = re.compile(r"([!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])")
# OWASP "CSV injection": cells starting with these are formulas (or become one) in spreadsheet programs.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def markdown_literal(text: object) -> str:
    """``text`` as Markdown that shows exactly these characters, on one line.

    Every ASCII punctuation character is backslash-escaped and line breaks become
    spaces, so no markup in ``text`` takes effect (``**x**`` shows the stars).
    """
    one_line = " ".join(str(text).splitlines())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", one_line)


def spreadsheet_cell(value):
    """A CSV cell value a spreadsheet shows as text: strings starting like a formula get a leading ``'``.

    Numbers, booleans and None pass unchanged (a negative number is a number, not a
    formula); so do strings that cannot start a formula.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
