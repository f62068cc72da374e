"""Which model a fitted file belongs to: the model's hash is written when the file is fitted
and checked when it is loaded.

The out-of-distribution detector (notebook 07) and a site calibration (notebook 08)
are fitted on the pooled features of one trained model. Another model of the same
architecture gives features of the same width but different meaning, so a file
fitted on it would be applied silently and wrongly. Each fitted file therefore
records a :class:`FittedOn`: the SHA-256 of the Keras model file whose features it
was fitted on, and the feature width. Loading it beside a model checks both and
refuses a mismatch with the remedy (fit the file again, or use the matching model).

The phone models record the same hash (``model_version.keras_sha256`` in their
metadata, :mod:`helpers.tflite.metadata`), so a TFLite engine can be checked against
a fitted file without the Keras model at hand.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from helpers.errors import UnusableInput

FITTED_ON_KEY = "fitted_on"  # the key of the record in every fitted file


class ProvenanceMismatch(UnusableInput):
    """A fitted file belongs to another model than the one it is used with; the message gives the remedy."""


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FittedOn:
    """The model a file was fitted on: the Keras model file's SHA-256 and the feature width it gave."""

    model_sha256: str
    feature_width: int

    def __post_init__(self):
        if not isinstance(self.model_sha256, str) or len(self.model_sha256) != 64:
            raise ValueError(f"model_sha256 must be a 64-character hex SHA-256, got {self.model_sha256!r}.")
        if int(self.feature_width) < 1:
            raise ValueError(f"feature_width must be positive, got {self.feature_width}.")

    @classmethod
    def of_model_file(cls, path: str | os.PathLike, feature_width: int) -> FittedOn:
        """The record for features of the Keras model saved at ``path``."""
        return cls(file_sha256(path), int(feature_width))

    def to_dict(self) -> dict:
        return {"model_sha256": self.model_sha256, "feature_width": int(self.feature_width)}

    @classmethod
    def from_dict(cls, saved, source: str, remedy: str) -> FittedOn:
        """Read the record a fitted file holds; a file without one is refused with ``remedy``."""
        if not isinstance(saved, dict) or not saved.get("model_sha256") or not saved.get("feature_width"):
            raise ProvenanceMismatch(f"{source} does not record which model it was fitted on (no "
                                     f"'{FITTED_ON_KEY}' with model_sha256 and feature_width), so it cannot be "
                                     f"checked against the model it would be used with. {remedy}")
        try:
            return cls(str(saved["model_sha256"]), int(saved["feature_width"]))
        except (TypeError, ValueError) as error:
            raise ProvenanceMismatch(
                f"{source}: its '{FITTED_ON_KEY}' record is damaged ({error}). {remedy}") from error

    def require(self, model_sha256: str | None, feature_width: int | None, source: str, model_name: str,
                remedy: str) -> None:
        """Refuse (:class:`ProvenanceMismatch`) unless the model in use is the one this file was fitted on.

        Args:
            model_sha256: SHA-256 of the Keras model in use (a phone model's recorded
                ``keras_sha256``); None when nobody recorded it, which is refused too.
            feature_width: width of the model's pooled features; None to skip that check.
            source: the fitted file, for the message.
            model_name: the model in use, for the message.
        """
        if feature_width is not None and int(feature_width) != self.feature_width:
            raise ProvenanceMismatch(f"{source} was fitted on {self.feature_width} features per film, but "
                                     f"{model_name} gives {feature_width}. {remedy}")
        if not model_sha256:
            raise ProvenanceMismatch(f"{model_name} records no model hash, so {source} (fitted on model "
                                     f"{self.model_sha256[:12]}) cannot be checked against it. {remedy}")
        if model_sha256 != self.model_sha256:
            raise ProvenanceMismatch(f"{source} was fitted on another model (sha256 {self.model_sha256[:12]}) "
                                     f"than {model_name} (sha256 {model_sha256[:12]}): its numbers do not apply "
                                     f"to this model. {remedy}")


def model_sha256_of(path: str | Path) -> str:
    """SHA-256 of a model file; a missing file is a :class:`ProvenanceMismatch` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ProvenanceMismatch(f"No model file at {path} to check a fitted file against.")
    return file_sha256(path)
