"""One on-disk cache for expensive arrays (decoded images, frozen activations, features).

Entries are ``.npy`` files under ``<artifacts>/cache/``, written under a temporary
name and renamed when complete, so an interrupted run never leaves a truncated entry.
Keys are content hashes: a different subset, image or weight file gets its own entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from helpers import config


def load_or_compute(file_name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Return the cached array ``<artifacts>/cache/<file_name>``, computing it once."""
    if not file_name.endswith(".npy"):
        raise ValueError(f"Cache file names end with .npy, got {file_name!r}.")
    cache_file = config.artifacts_dir("cache") / file_name
    if cache_file.is_file():
        return np.load(cache_file)
    array = compute()
    temporary = cache_file.with_suffix(".part.npy")
    np.save(temporary, array)
    temporary.replace(cache_file)
    return array


def weights_fingerprint(model) -> str:
    """SHA-1 (16 hex digits) of all of ``model``'s weights: changes when it is retrained."""
    digest = hashlib.sha1()
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(np.asarray(weight.numpy())).tobytes())
    return digest.hexdigest()[:16]
