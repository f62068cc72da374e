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
