"""The project's error family: "this input or this file cannot be used".

Every entry point (web app, explorer, ``python -m helpers.screen``, dataset loaders,
model loading) catches :class:`UnusableInput` and shows its message as one line: the
message names the file and what to do, so no user interface ever shows a traceback
for a bad file. Each module keeps its own subclass (``DataError``, ``ImageRejected``,
``DicomRejected``, ``ModelFileError``, ``TFLiteModelError``, ``ScreeningModelError``)
so a caller can still tell them apart. They subclass ``ValueError``, as before.
"""

from __future__ import annotations


class UnusableInput(ValueError):
    """An input or file cannot be used; the message names it and says what to do instead."""


class MissingFile(UnusableInput, FileNotFoundError):
    """A file the project needs is not there; the message says which step writes it."""


class ModelFileError(UnusableInput):
    """A saved model file is missing, corrupt or of another architecture; says which and how to fix it."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (what a user interface shows)."""
    return " ".join(str(error).split())


def distinct_pair(value: float, limit: float, decimals: int = 0) -> tuple[str, str]:
    """``value`` and ``limit`` printed with the fewest decimals (at least ``decimals``) that tell them apart.

    For "value vs threshold" sentences: ``distinct_pair(60.6049, 60.6011, 1)`` gives
    ``("60.605", "60.601")``, not "60.6 > 60.6". Rounding keeps order, so two printed
    numbers that differ keep the order of the numbers; equal numbers print at ``decimals``.
    """
    value, limit = float(value), float(limit)
    shown = (f"{value:.{decimals}f}", f"{limit:.{decimals}f}")
    for places in range(decimals, 18):
        shown = (f"{value:.{places}f}", f"{limit:.{places}f}")
        if shown[0] != shown[1]:
            return shown
    return (f"{value:.{decimals}f}", f"{limit:.{decimals}f}") if value == limit else (repr(value), repr(limit))
