"""Batched predictions of the classifier, and the predictions tables in the artifacts.

``predict(model, examples)`` returns one row per image, in the order of ``examples``:

    path         chest_xray/<split>/<CLASS>/<file>
    label        1 = PNEUMONIA, 0 = NORMAL
    probability  raw model output P(PNEUMONIA) = sigmoid(logit)
    logit        the pre-sigmoid score (layer ``logit``), for temperature scaling

Notebook 04 writes the validation and test tables to
``<artifacts>/predictions/{validation,test}.csv``; notebooks 05-07 read them back
with :func:`read_predictions` instead of predicting again.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from helpers import config
from helpers.data import make_dataset
from helpers.evaluation import ScoredSplit
from helpers.model import logit_model
from helpers.operating_point import sigmoid
from helpers.progress import progress_bar

PREDICTION_COLUMNS = ("path", "label", "probability", "logit")
PREDICTION_SPLITS = ("validation", "test")


def predict(model, examples, batch_size: int = 64, progress: bool = True):
    """Predict every image of ``examples`` in batches, with a progress bar.

    Args:
        model: the classifier (:func:`helpers.model.build_model` / ``load_model``).
        examples: :class:`helpers.data.Examples` (encoded images, labels, paths).
        batch_size: images per forward pass.
        progress: show a progress bar (tqdm; text in papermill logs).

    Returns:
        DataFrame with columns path, label, probability, logit; one row per image,
        same order as ``examples``.
    """
    if len(examples) == 0:
        raise ValueError("There are no examples to predict.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    image_size = int(model.input_shape[1])
    scorer = logit_model(model)  # (B, 224, 224, 3) float 0-255 -> (B, 1) logit
    dataset = make_dataset(examples, batch_size=batch_size, shuffle=False, image_size=image_size)
    batches = progress_bar(dataset, total=math.ceil(len(examples) / batch_size),
                           desc="predict", unit="batch", disable=not progress)
    logits = [np.asarray(scorer.predict_on_batch(images)).reshape(-1) for images, _ in batches]
    logits = np.concatenate(logits).astype(np.float64)  # (N,)
    if len(logits) != len(examples):
        raise RuntimeError(f"Got {len(logits)} predictions for {len(examples)} images.")
    return pd.DataFrame({
        "path": np.asarray(examples.paths, dtype=str),
        "label": np.asarray(examples.labels, dtype=np.int64),
        "probability": sigmoid(logits),
        "logit": logits,
    })


def predictions_path(split: str) -> Path:
    """``<artifacts>/predictions/<split>.csv``."""
    if split not in PREDICTION_SPLITS:
        raise ValueError(f"split must be one of {PREDICTION_SPLITS}, got {split!r}.")
    return config.artifacts_dir("predictions", create=False) / f"{split}.csv"


def _check_columns(frame, source: str) -> None:
    missing = [column for column in PREDICTION_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{source} lacks column(s) {missing}; expected {list(PREDICTION_COLUMNS)} "
                         "as written by helpers.predict.predict.")


def write_predictions(frame, split: str) -> Path:
    """Write a :func:`predict` table to ``<artifacts>/predictions/<split>.csv`` (atomically).

    Floats are written with 17 significant digits, so reading back gives the same
    numbers and the threshold in metrics.json classifies the rows exactly as in 04.
    """
    _check_columns(frame, "The predictions table")
    path = predictions_path(split)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".csv.part")
    frame.loc[:, list(PREDICTION_COLUMNS)].to_csv(temporary, index=False, float_format="%.17g")
    temporary.replace(path)
    return path


def read_predictions(split: str):
    """Read ``<artifacts>/predictions/<split>.csv`` written by notebook 04.

    Raises:
        FileNotFoundError: with the notebook that writes it.
    """
    path = predictions_path(split)
    if not path.is_file():
        raise FileNotFoundError(
            f"No {split} predictions at {path}. Run notebooks/04_evaluation.ipynb first "
            "(`python -m helpers.notebooks --only 04`), or set CXR_ARTIFACTS_DIR to the "
            "artifacts folder that holds predictions/."
        )
    frame = pd.read_csv(path, dtype={"path": str, "label": np.int64,
                                     "probability": np.float64, "logit": np.float64})
    _check_columns(frame, str(path))
    return frame


def read_predictions_for(paths, split: str = "test"):
    """The saved rows of ``split`` for ``paths``, in the order of ``paths``.

    Returns a :func:`predict`-format DataFrame (index 0..N-1), or None when
    ``<artifacts>/predictions/<split>.csv`` does not exist or lacks some of the paths
    (e.g. it was written for another subset): the caller then predicts itself.
    """
    if not predictions_path(split).is_file():
        return None
    saved = read_predictions(split).drop_duplicates("path").set_index("path")
    wanted = pd.Index(np.asarray(paths, dtype=str))
    if not wanted.isin(saved.index).all():
        return None
    return saved.loc[wanted].reset_index()


def read_scored_split(split: str):
    """The saved predictions of ``split`` as a :class:`helpers.evaluation.ScoredSplit`.

    The split's name comes from the file, so the test table can only become a split
    named "test", which the decision functions refuse.
    """
    return ScoredSplit.from_frame(split, read_predictions(split))
