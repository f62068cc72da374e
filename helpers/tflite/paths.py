"""Where the phone models live, their names, and the error a bad model file raises."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import config
from helpers.provenance import file_sha256  # noqa: F401  (re-exported: the phone models' hash)
from helpers.serving.engine import (  # noqa: F401  (re-exported: what the screening runtime reads too)
    METADATA_SCHEMA_VERSION,
    TFLITE_FILE_IDENTIFIER,
    TFLiteModelError,
    metadata_path,
)

VARIANTS = ("float32", "float16", "dynamic_range", "int8")
TFLITE_SUBDIR = "tflite"
MODEL_STEM = "pneumonia_mobilenetv2"
# Stated tolerances (max |probability difference| vs Keras) used by the tests on a
# tiny model and reported by the notebook for MobileNetV2.
PROBABILITY_TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "dynamic_range": 3e-2, "int8": 5e-2}


DATASET_PROVENANCE = {
    "name": "Chest X-Ray Images (Pneumonia), paediatric, Guangzhou Women and Children's Medical Center",
    "citation": ("Kermany, Zhang, Goldbaum et al., Identifying Medical Diagnoses and Treatable "
                 "Diseases by Image-Based Deep Learning, Cell 172(5):1122-1131, 2018"),
    "doi": "10.1016/j.cell.2018.02.010",
    "data_doi": "10.17632/rscbjbr9sj.2",
    "license": "CC BY 4.0",
    "splits": ("train: official train split minus 20% of patients held out for validation "
               "(helpers.data.load_splits, seed 42); test: official test split (624 images)"),
}


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"Unknown TFLite variant {variant!r}: use one of {VARIANTS}.")


def tflite_dir(create: bool = True) -> Path:
    """``<artifacts>/tflite``."""
    return config.artifacts_dir(TFLITE_SUBDIR, create=create)


def tflite_path(variant: str, directory: str | os.PathLike | None = None) -> Path:
    """``<directory or artifacts/tflite>/pneumonia_mobilenetv2_<variant>.tflite``."""
    check_variant(variant)
    directory = Path(directory) if directory is not None else tflite_dir()
    return directory / f"{MODEL_STEM}_{variant}.tflite"
