"""Progress bars that work in a terminal, in JupyterLab and in papermill logs."""

from __future__ import annotations

from collections.abc import Iterable


def progress_bar(iterable: Iterable | None = None, **kwargs):
    """A ``tqdm`` progress bar (the notebook widget flavour when in Jupyter).

    ``tqdm.auto`` picks the widget bar inside a live Jupyter kernel and a text bar
    elsewhere; papermill runs get readable text in their logs.
    """
    from tqdm.auto import tqdm

    kwargs.setdefault("mininterval", 1.0)
    return tqdm(iterable, **kwargs)
