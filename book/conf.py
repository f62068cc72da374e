"""Sphinx configuration of the course book: ``python -m helpers.book`` (``make book``, ``make book-html``).

The pages are the committed copies in ``notebooks/`` (outputs of the last full run, written by
``python -m helpers.book --refresh``); nothing is executed here (``nb_execution_mode = "off"``).

Sphinx + myst-nb + sphinx-book-theme rather than Jupyter Book 2 (mystmd): mystmd downloads its
site theme when it builds, which a CI runner without internet or a locked-down hospital network
cannot do; this stack installs from the PyPI pins in requirements.txt alone and builds offline.
"""

import html
import os
import re
import sys
from pathlib import Path

# The project (for helpers.book and the provenance); helpers.book points here when it builds a staged copy.
PROJECT_ROOT = Path(os.environ.get("CXR_BOOK_PROJECT_ROOT") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(PROJECT_ROOT))

from helpers.book import build_provenance_line  # noqa: E402

PROVENANCE = build_provenance_line(PROJECT_ROOT)

project = "Pneumonia detection on chest X-rays"
author = "The cxr-pneumonia authors"
copyright = "the cxr-pneumonia authors, Apache-2.0"
html_title = "Pneumonia detection on chest X-rays"

extensions = ["myst_nb"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# Notebooks: show the outputs they were committed with, never execute.
nb_execution_mode = "off"
# The kernels' log lines on stderr (TensorFlow start-up, LiteRT delegates) are not part of the lesson.
nb_output_stderr = "remove"
# A static page has no kernel: interactive widgets cannot run (helpers.book replaces their outputs with a note).
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]

myst_enable_extensions = ["substitution", "dollarmath", "amsmath"]
myst_heading_anchors = 3
myst_substitutions = {"book_provenance": PROVENANCE}

html_theme = "sphinx_book_theme"
html_static_path = ["_static"]
html_css_files = ["book.css"]
html_theme_options = {
    "extra_footer": "<p>{}</p>".format(html.escape(PROVENANCE).replace("`", "")),
    "show_toc_level": 2,
    "home_page_in_toc": True,
}
html_show_sourcelink = False


def _notebook_links_from_the_index(app, relative_path, parent_docname, content):
    """The notebook index links its notebooks by file name: from the course page they are in notebooks/."""
    if parent_docname == "index" and Path(relative_path).name == "README.md":
        content[0] = re.sub(r"\]\(([0-9][0-9]_[^)]*\.ipynb)\)", r"](notebooks/\1)", content[0])


def _notebook_index_link(app, docname, source):
    """A notebook's "back to the index" link (README.md beside it) leads to the course page."""
    if docname.startswith("notebooks/"):
        source[0] = source[0].replace("](README.md)", "](../index.md)")


def setup(app):
    app.connect("include-read", _notebook_links_from_the_index)
    app.connect("source-read", _notebook_index_link)
