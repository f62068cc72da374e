"""Test films and tiny one-pass models for the screening tests, importable with the web app's dependencies alone.

Nothing here imports TensorFlow at module level: ``tests/test_app.py`` runs in a virtual
environment built from ``app/requirements.txt`` only (``.ci/run``). The tiny models are
built with Keras (:func:`one_pass_models`) in the full environment, or read from the
folder ``$CXR_TEST_MODELS`` names, written beforehand by ``python -m tests.films FOLDER``.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.operating_point import OperatingPoint
from helpers.serving.engine import ONE_PASS_VARIANTS

MODELS_ENVIRONMENT_VARIABLE = "CXR_TEST_MODELS"  # a folder from `python -m tests.films FOLDER`
POINT = OperatingPoint(threshold=0.5, band_low=0.45, band_high=0.55, chosen_on="test fixture", rule="fixed")


def encode_image(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    """Encode a uint8 (H, W) or (H, W, C) array as JPEG/PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def grey_films(count: int, seed: int = 0) -> np.ndarray:
    """(count, 224, 224, 3) float32 grey pictures with structure (a bright blob at a random place)."""
    rng = np.random.default_rng(seed)
    films = []
    rows, columns = np.mgrid[0:224, 0:224]
    for _ in range(count):
        centre = rng.uniform(40, 184, 2)
        blob = 200 * np.exp(-((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2) / (2 * 30.0 ** 2))
        grey = np.clip(blob + rng.normal(40, 10, (224, 224)), 0, 255)
        films.append(np.repeat(grey[..., np.newaxis], 3, axis=-1))
    return np.stack(films).astype(np.float32)


def film_bytes(seed: int = 3) -> bytes:
    return encode_image(grey_films(1, seed)[0, ..., 0].astype(np.uint8), "PNG")


def tiny_classifier(seed: int = 0, features: int = 8, bias: float = 0.3, name: str = "tiny_screening"):
    """Raw 0-255 (B, 224, 224, 3) in, P(PNEUMONIA) (B, 1) out, with the layer names one_pass needs."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(224, 224, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_plus1")(inputs)
    x = keras.layers.Conv2D(features, 32, strides=32, activation="relu6", name="out_relu")(x)  # (B, 7, 7, features)
    pooled = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)  # (B, features)
    logit = keras.layers.Dense(1, name="logit", bias_initializer=keras.initializers.Constant(bias))(pooled)
    probability = keras.layers.Activation("sigmoid", name="probability")(logit)
    return keras.Model(inputs, probability, name=name)


def saved_classifier(classifier, directory: Path) -> Path:
    """The tiny classifier as a ``.keras`` file: what the phone models' metadata records the hash of."""
    path = Path(directory) / "tiny_classifier.keras"
    if not path.is_file():
        classifier.save(path)
    return path


def one_pass_models(folder: Path) -> Path:
    """``folder/tflite/`` with the three one-pass variants of the tiny classifier (built here, or copied).

    With ``$CXR_TEST_MODELS`` set (the web app's own environment has no Keras) the
    models are that folder's; otherwise they are converted with Keras.
    """
    prebuilt = os.environ.get(MODELS_ENVIRONMENT_VARIABLE)
    if prebuilt:
        folder = Path(prebuilt) / "tflite"
        missing = [variant for variant in ONE_PASS_VARIANTS
                   if not (folder / f"pneumonia_mobilenetv2_onepass_{variant}.tflite").is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks the one-pass models {missing}: write them with "
                                    f"python -m tests.films {prebuilt} (in the full environment).")
        return folder
    from helpers import one_pass

    target = Path(folder) / "tflite"
    classifier = tiny_classifier()
    calibration = grey_films(16, seed=1).astype(np.uint8)
    keras_file = saved_classifier(classifier, folder)
    for variant in ONE_PASS_VARIANTS:
        one_pass.convert_one_pass(classifier, variant, POINT, calibration, target, keras_model_path=keras_file)
    return target


if __name__ == "__main__":  # python -m tests.films FOLDER: the models for a run without Keras
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.films FOLDER")
    os.environ.pop(MODELS_ENVIRONMENT_VARIABLE, None)
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    print(one_pass_models(Path(sys.argv[1])))
