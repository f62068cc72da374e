"""Where things live: data, Keras weights cache, artifacts, and the run profile.

Everything is configured through the environment (or an explicit argument), so the
same notebooks run on a laptop, in CI and on a workstation:

* ``CXR_DATA_DIR``      folder holding ``ChestXRay2017/`` (TFRecord pair) and/or
                        ``chest_xray/`` (Kaggle folders). Unset: the public TFRecord
                        pair is downloaded into the project's ``data/`` folder.
* ``KERAS_HOME``        Keras cache holding ``models/mobilenet_v2_*.h5``. Unset: Keras
                        downloads the ImageNet weights into ``~/.keras`` as usual.
* ``CXR_ARTIFACTS_DIR`` where models, metrics, figures and caches are written
                        (default ``artifacts/`` in the project root).
* ``CXR_PROFILE``       ``full`` (default) or ``smoke`` (tiny subset, one epoch: CI).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("full", "smoke")
DEFAULT_SEED = 42
CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # index = label
KERAS_MODEL_FILE_NAME = "pneumonia_mobilenetv2.keras"  # in <artifacts>/model/


def project_data_dir() -> Path:
    """The project's own ``data/`` folder, where downloads are cached."""
    return PROJECT_ROOT / "data"


def artifacts_dir(subdir: str | None = None, create: bool = True) -> Path:
    """Return the artifacts directory (``CXR_ARTIFACTS_DIR`` or ``artifacts/``).

    Args:
        subdir: optional sub-folder, e.g. ``"figures/01_eda"``.
        create: create the folder if it does not exist.
    """
    root = os.environ.get("CXR_ARTIFACTS_DIR") or str(PROJECT_ROOT / "artifacts")
    path = Path(root).expanduser().resolve()
    if subdir:
        path = path / subdir
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_profile(profile: str = "auto") -> str:
    """Turn a notebook's ``profile`` parameter into ``"full"`` or ``"smoke"``.

    ``"auto"`` reads ``CXR_PROFILE`` and defaults to ``"full"``, so a learner who
    opens a notebook gets the full-quality run while CI selects the smoke profile
    from outside (``CXR_PROFILE=smoke`` or ``papermill -p profile smoke``).
    """
    if profile == "auto":
        profile = os.environ.get("CXR_PROFILE", "full") or "full"
    if profile not in PROFILES:
        raise ValueError(
            f"Unknown profile {profile!r}: use one of {PROFILES} "
            "(or 'auto' to read the CXR_PROFILE environment variable)."
        )
    return profile


def set_seeds(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy and TensorFlow (Keras) random generators.

    Remaining non-determinism: multi-threaded CPU kernels (oneDNN reductions) and
    ``tf.data`` parallel maps may reorder floating-point sums, so weights can differ
    in the last bits between runs; call ``enable_op_determinism()`` to trade speed
    for bitwise reproducibility.
    """
    import keras  # imported here: importing helpers.config must stay cheap

    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)  # also seeds TensorFlow's global generator


def enable_op_determinism() -> None:
    """Make TensorFlow ops deterministic (slower; for exact reproductions)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
