"""The screening pipeline under its first address: the names of :mod:`helpers.serving`, re-exported.

The pipeline lives in the TensorFlow-free package :mod:`helpers.serving`
(:mod:`~helpers.serving.pipeline`: the screener, its results and finding the files;
:mod:`~helpers.serving.engine`: the engines; :mod:`~helpers.serving.guard` and
:mod:`~helpers.serving.site`: what notebooks 07 and 08 fitted, applied). This module
keeps ``from helpers import screening; screening.Screener.load()`` working for the
phone export, the archive job and the benchmarks; the web app and the CLI import
:mod:`helpers.serving` directly, so their import closure stays small.
"""

from __future__ import annotations

from helpers import imaging  # noqa: F401  (re-exported: callers read screening.imaging.IMAGE_SIZE)
from helpers.serving.engine import (  # noqa: F401  (re-exported)
    ONE_PASS_STEM,
    ONE_PASS_VARIANTS,
    OUTPUT_ROLES,
    OnePassEngine,
    ScreeningEngine,
    ScreeningModelError,
    artifacts_of,
    check_provenance,
)
from helpers.serving.pipeline import (  # noqa: F401  (re-exported)
    CSV_COLUMNS,
    DETECTOR_ENVIRONMENT_VARIABLE,
    MODEL_ENVIRONMENT_VARIABLE,
    NOT_A_MEDICAL_DEVICE,
    PRODUCE_COMMAND,
    SITE_ENVIRONMENT_VARIABLE,
    ResultCache,
    Screener,
    ScreeningResult,
    find_detector,
    find_model,
    find_site_calibration,
    heatmap_from_logit_map,
    one_pass_path,
    results_csv,
    sample_films,
)
