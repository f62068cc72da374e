"""TensorFlow Lite (LiteRT): convert, run, check parity, and describe the phone models.

Four variants of the saved Keras classifier are written to ``<artifacts>/tflite/``:

==================  ===========================================================  ==========
variant             what is quantized                                            input
==================  ===========================================================  ==========
``float32``         nothing (reference conversion)                               float32
``float16``         weights stored as float16, computed in float32 on CPU        float32
``dynamic_range``   weights int8, activations quantized on the fly               float32
``int8``            weights and activations int8, calibrated on training         uint8
                    images, except the float stem (see below); output float32
==================  ===========================================================  ==========

The first three go through Keras 3's own exporter, ``model.export(path,
format="litert", **converter_kwargs)``: on the TensorFlow backend it writes a
SavedModel and hands every keyword to ``tf.lite.TFLiteConverter``. Keras' default
``supported_ops`` include ``SELECT_TF_OPS`` (Flex); we override it with builtin ops
only, so an op the phone runtime lacks fails the conversion instead of the app.

The int8 model is built the same way by hand (:func:`quantize_int8`): a SavedModel
from ``keras.export.ExportArchive``, ``tf.lite.TFLiteConverter.from_saved_model``
with the same int8 settings (:func:`converter_options`), then the public
``tf.lite.experimental.QuantizationDebugger``, which measures each op's int8 error
on training images and quantizes the model with a chosen set of ops kept in float
(*selective quantization*). What stays float, and why, is in :func:`float_stem_layers`:
the input rescaling and MobileNetV2's first inverted-residual block, where the
debugger finds by far the largest int8 error.

Every model keeps the Keras contract: raw RGB pixels 0-255 at 224x224 in (the model
rescales inside), P(PNEUMONIA) out. The int8 model takes **uint8** pixels: a phone
app passes its bitmap bytes straight in, and the input tensor is 4x smaller than
float. Its SavedModel takes uint8 and casts to float first, so inside the model the
pixel values are exact (as with scale 1, zero point 0); the input tensor is a plain
uint8 tensor (no quantization parameters; :func:`convert` checks it).
Its output is float32, so every variant is read the same way. Int8 errors push the
logit by a roughly constant amount through MobileNetV2; :func:`estimate_logit_shift`
measures it on training images and :func:`with_logit_bias_shift` removes it before
the final conversion (bias correction).

Beside each ``.tflite`` a JSON file (same stem) holds what an app needs: labels,
input size and range, the operating point (threshold, temperature, abstention band)
from ``<artifacts>/metrics.json``, model version and data provenance. The same JSON
is also embedded in the model file itself, in the flatbuffer's ``metadata`` table
under :data:`EMBEDDED_METADATA_NAME` (:func:`publish_metadata`), so a model copied
without its JSON still carries its threshold and labels.

The package has one module per job: :mod:`~helpers.tflite.paths` (file names, the
error type), :mod:`~helpers.tflite.exporting` (converter settings, calibration data,
atomic writes), :mod:`~helpers.tflite.convert` (the four variants),
:mod:`~helpers.tflite.int8` (selective quantization and bias correction),
:mod:`~helpers.tflite.runtime` (running a model), :mod:`~helpers.tflite.parity`
(agreement with Keras) and :mod:`~helpers.tflite.metadata`. CPU description and
latency measurement live with the benchmarks (``benchmarks/timing.py``). The names
below are re-exported, so ``from helpers import tflite; tflite.convert(...)`` works.
"""

from __future__ import annotations

from helpers.tflite.convert import (
    convert,
    convert_all,
)
from helpers.tflite.exporting import (
    QUANTIZER_NOISE_LINE,
    check_uint8_input_is_raw_pixels,
    converter_options,
    evenly_spaced,
    input_name,
    model_target,
    quiet_quantizer,
    representative_dataset,
    set_converter_options,
    write_model_bytes,
)
from helpers.tflite.int8 import (
    DEBUG_IMAGES,
    FLOAT_STEM_END_LAYER,
    INT8_CONVERTER_PATH,
    SUSPECT_RMSE_OVER_SCALE,
    Int8Quantization,
    estimate_logit_shift,
    float_stem_layers,
    quantize_int8,
    tflite_pooled_features,
    with_logit_bias_shift,
)
from helpers.tflite.metadata import (
    EMBEDDED_METADATA_NAME,
    FILE_IDENTITY_KEYS,
    build_metadata,
    decision_block,
    embed_metadata,
    interpret,
    model_version,
    publish_metadata,
    read_embedded_metadata,
    read_metadata,
    write_metadata,
)
from helpers.tflite.parity import (  # noqa: F401  (re-exported)
    PARITY_FILE_NAME,
    PhoneModelTargets,
    compare_models,
    decision_metrics,
    finite_or_none,
    parity,
    parity_table,
    read_parity,
    target_table,
    write_parity,
)
from helpers.tflite.paths import (
    DATASET_PROVENANCE,
    METADATA_SCHEMA_VERSION,
    MODEL_STEM,
    PROBABILITY_TOLERANCE,
    TFLITE_FILE_IDENTIFIER,
    TFLITE_SUBDIR,
    VARIANTS,
    TFLiteModelError,
    check_variant,
    file_sha256,
    metadata_path,
    tflite_dir,
    tflite_path,
)
from helpers.tflite.runtime import (
    INTERPRETER_DEPRECATION_WARNING,
    InterpreterPool,
    TensorInfo,
    TFLiteClassifier,
    check_classifier_shapes,
    dequantize,
    interpreter_class,
    load_interpreter,
    output_values,
    quantize,
    read_model_bytes,
    to_input_dtype,
)

__all__ = [
    "DATASET_PROVENANCE",
    "DEBUG_IMAGES",
    "EMBEDDED_METADATA_NAME",
    "FILE_IDENTITY_KEYS",
    "FLOAT_STEM_END_LAYER",
    "INT8_CONVERTER_PATH",
    "INTERPRETER_DEPRECATION_WARNING",
    "METADATA_SCHEMA_VERSION",
    "MODEL_STEM",
    "PARITY_FILE_NAME",
    "PROBABILITY_TOLERANCE",
    "QUANTIZER_NOISE_LINE",
    "SUSPECT_RMSE_OVER_SCALE",
    "TFLITE_FILE_IDENTIFIER",
    "TFLITE_SUBDIR",
    "VARIANTS",
    "Int8Quantization",
    "InterpreterPool",
    "TFLiteClassifier",
    "TFLiteModelError",
    "TensorInfo",
    "build_metadata",
    "check_classifier_shapes",
    "check_uint8_input_is_raw_pixels",
    "check_variant",
    "compare_models",
    "convert",
    "convert_all",
    "converter_options",
    "decision_block",
    "decision_metrics",
    "dequantize",
    "embed_metadata",
    "estimate_logit_shift",
    "evenly_spaced",
    "file_sha256",
    "finite_or_none",
    "float_stem_layers",
    "input_name",
    "interpret",
    "interpreter_class",
    "load_interpreter",
    "metadata_path",
    "model_target",
    "model_version",
    "output_values",
    "parity",
    "parity_table",
    "publish_metadata",
    "quantize",
    "quantize_int8",
    "quiet_quantizer",
    "read_embedded_metadata",
    "read_metadata",
    "read_model_bytes",
    "read_parity",
    "representative_dataset",
    "set_converter_options",
    "tflite_dir",
    "tflite_path",
    "tflite_pooled_features",
    "to_input_dtype",
    "with_logit_bias_shift",
    "write_metadata",
    "write_model_bytes",
    "write_parity",
]
