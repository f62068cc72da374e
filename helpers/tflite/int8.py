"""Full-integer int8: selective quantization (the QuantizationDebugger keeps the float stem) and bias
correction of the int8 logit."""

from __future__ import annotations

import csv
import io
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers.model import LOGIT_LAYER, POOL_LAYER
from helpers.tflite.exporting import (
    check_uint8_input_is_raw_pixels,
    converter_options,
    evenly_spaced,
    input_name,
    quiet_quantizer,
    representative_dataset,
    set_converter_options,
    write_model_bytes,
)
from helpers.tflite.paths import TFLiteModelError
from helpers.tflite.runtime import TFLiteClassifier, dequantize

FLOAT_STEM_END_LAYER = "expanded_conv_project_BN"  # last layer of MobileNetV2's first block
# The Quantization Debugger guide flags an op when rmse/scale of its int8 output (vs
# float, same input) exceeds 0.7; pure rounding noise gives 1/sqrt(12) = 0.29.
SUSPECT_RMSE_OVER_SCALE = 0.7
DEBUG_IMAGES = 100  # training images the debugger measures per-op errors on
INT8_CONVERTER_PATH = ("keras.export.ExportArchive (uint8 input) -> tf.lite.TFLiteConverter.from_saved_model "
                       "-> tf.lite.experimental.QuantizationDebugger.get_nondebug_quantized_model (float stem)")


def float_stem_layers(model, end_layer: str = FLOAT_STEM_END_LAYER) -> tuple[str, ...]:
    """Keras layers the int8 variant keeps in float: every layer from the input through ``end_layer``.

    For MobileNetV2 that is the *stem*: the ``to_minus1_plus1`` rescaling, ``Conv1``
    (+ batch norm, ReLU6) and the first inverted-residual block ``expanded_conv``
    (depthwise + projection), the 112x112 layers before the first stride-2 block.
    Everything after it (blocks 1-16, the last conv, pooling and the logit) is int8.

    Why (notebook 06 measures it on the current model; ``docs/design_decisions.md``
    keeps the dated runs that chose this rule):

    * The Quantization Debugger finds the largest int8 error of the whole network in
      ``expanded_conv_depthwise``, the only conv above the
      :data:`SUSPECT_RMSE_OVER_SCALE` flag. This is a known
      MobileNetV2 trait: its first depthwise layer, batch norm folded in, has
      per-channel ranges spread over orders of magnitude (Nagel et al. 2019,
      "Data-Free Quantization"). Keeping only that layer float is not enough, since it
      still amplifies the int8 noise of ``Conv1``'s output, so the whole prefix from
      the input stays float (the input rescaling then costs nothing either).
    * The float part ends on the block's 16-channel output, the smallest tensor there
      is to quantize, and holds a tiny share of the weights (``ops_kept_float`` and the
      size in notebook 06 show what it costs).
    * These are ImageNet weights that training never changes (fine-tuning unfreezes
      from ``block_11_expand``, see ``helpers.training``), so the rule carries over to
      a retrained model; notebook 06 re-measures every op and lists any other op above
      the flag (:meth:`Int8Quantization.suspects`) before a model ships.

    On validation the float stem disagreed with Keras less often than a fully int8
    model, with three different calibration sets, at the same size; its speed ratio
    to float32 depends on the CPU (``benchmarks/tflite_benchmark.py`` measures it).

    Returns ``()`` (fully int8) for a model without ``end_layer``.
    """
    names = [layer.name for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if end_layer not in names:
        return ()
    return tuple(names[: names.index(end_layer) + 1])


def _mentions_layer(tensor_name: str, layer: str) -> bool:
    """Whether a (possibly fused, ``;``-joined) TFLite tensor name comes from Keras layer ``layer``.

    Keras 3 names a layer's ops ``<model>_1/<layer>_1/<op>``: a path component equal
    to the layer name, optionally with a ``_<n>`` suffix.
    """
    pattern = re.compile(re.escape(layer) + r"(_\d+)?")
    return any(pattern.fullmatch(component)
               for part in tensor_name.split(";") for component in part.split("/"))


def _short_tensor_name(tensor_name: str) -> str:
    """``model_1/Conv1_relu_1/Relu6;...`` -> ``Conv1_relu_1/Relu6`` (first fused name, no model scope)."""
    first = tensor_name.split(";")[0]
    return first.split("/", 1)[1] if "/" in first else first


@dataclass(frozen=True)
class Int8Quantization:
    """The int8 model from :func:`quantize_int8` and what the debugger measured.

    Attributes:
        content: the ``.tflite`` flatbuffer.
        float_layers: Keras layers asked to stay float.
        float_nodes: the TFLite op outputs denylisted for them (kept float).
        layer_errors: one dict per quantizable op of the *fully* int8 model, in graph
            order: ``op``, ``tensor`` (short name), ``rmse_over_scale`` (rmse of the
            int8 output against the float op on the same input, in quantization
            steps), ``max_abs_error``, ``mean_error``, ``scale``, ``float`` (kept float
            here), measured on training images.
        debug_images: how many training images the errors were measured on.
        all_int8_content: the same calibration with nothing kept float, for comparison.
    """

    content: bytes
    float_layers: tuple[str, ...]
    float_nodes: tuple[str, ...]
    layer_errors: list[dict]
    debug_images: int
    all_int8_content: bytes

    def suspects(self, threshold: float = SUSPECT_RMSE_OVER_SCALE) -> list[dict]:
        """The int8 ops (not kept float) whose rmse/scale exceeds ``threshold``, worst first."""
        found = [e for e in self.layer_errors if not e["float"] and e["rmse_over_scale"] > threshold]
        return sorted(found, key=lambda e: -e["rmse_over_scale"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model (atomically) and check its uint8 input takes raw pixels."""
        path = write_model_bytes(path, self.content)
        check_uint8_input_is_raw_pixels(path)
        return path

    def summary(self) -> dict:
        """JSON-ready facts for the model's metadata."""
        return {"method": "selective int8 (tf.lite.experimental.QuantizationDebugger)",
                "float_layers": list(self.float_layers), "float_ops": len(self.float_nodes),
                "debug_images": self.debug_images,
                "suspects_above_0.7": [e["tensor"] for e in self.suspects()]}


def quantize_int8(
    model,
    calibration_images: np.ndarray,
    float_layers: Sequence[str] | None = None,
    debug_images: int = DEBUG_IMAGES,
) -> Int8Quantization:
    """Full-integer int8 with a few layers kept in float (selective quantization), public APIs only.

    1. ``keras.export.ExportArchive`` writes a SavedModel whose input is **uint8**
       pixels, cast to float32 before the model (exact: raw pixels, as scale 1 and
       zero point 0 would give).
    2. ``tf.lite.TFLiteConverter.from_saved_model`` with :func:`converter_options`
       ``("int8")``: the settings Keras' exporter would get, builtin ops only,
       calibrated on ``calibration_images``.
    3. ``tf.lite.experimental.QuantizationDebugger`` calibrates, measures every op's
       int8 error on ``debug_images`` of them, and
       ``get_nondebug_quantized_model()`` quantizes everything except the ops of
       ``float_layers`` (``QuantizationDebugOptions(denylisted_nodes=...)``). The
       output is float32 (a dequantize op at the end).

    Args:
        model: the Keras classifier (input (B, S, S, 3) raw 0-255, output (B, 1)).
        calibration_images: (N, S, S, 3) raw 0-255 **training** images.
        float_layers: Keras layer names kept in float; default
            :func:`float_stem_layers`, ``()`` for a fully int8 model.
        debug_images: how many of the calibration images (:func:`evenly_spaced`) the
            per-op errors are measured on.

    Raises:
        ValueError: no calibration images, an unknown layer name, or float layers
            that match no TFLite op.
    """
    import tensorflow as tf

    options = converter_options("int8", calibration_images)  # validates the images
    images = np.asarray(calibration_images)  # (N, S, S, 3) 0-255
    layer_names = {layer.name for layer in model.layers}
    float_layers = float_stem_layers(model) if float_layers is None else tuple(float_layers)
    unknown = [name for name in float_layers if name not in layer_names]
    if unknown:
        raise ValueError(f"float_layers {unknown} are not layers of {model.name!r}: use names from "
                         "model.layers, e.g. tflite.float_stem_layers(model).")
    if debug_images < 1:
        raise ValueError(f"debug_images must be >= 1, got {debug_images}.")
    debug_set = evenly_spaced(images, debug_images)  # (D, S, S, 3)

    with tempfile.TemporaryDirectory(prefix="cxr-int8-") as saved_model_dir:
        _write_uint8_saved_model(model, saved_model_dir)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.experimental_enable_resource_variables = True  # as Keras' exporter
        set_converter_options(converter, options)
        converter.representative_dataset = representative_dataset(images, dtype=np.uint8)
        with quiet_quantizer():
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=representative_dataset(debug_set, dtype=np.uint8))
            debugger.run()  # per-op errors of the fully int8 model
            statistics = io.StringIO()
            debugger.layer_statistics_dump(statistics)
            rows = list(csv.DictReader(io.StringIO(statistics.getvalue())))
            float_nodes = tuple(row["tensor_name"] for row in rows
                                if any(_mentions_layer(row["tensor_name"], layer) for layer in float_layers))
            if float_layers and not float_nodes:
                raise ValueError(f"float_layers {list(float_layers)} match no TFLite op of {model.name!r} "
                                 "(were they fused away?): choose other layers.")
            all_int8_content = debugger.get_nondebug_quantized_model()  # nothing denylisted yet
            content = all_int8_content
            if float_nodes:
                debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(float_nodes))
                content = debugger.get_nondebug_quantized_model()

    layer_errors = []
    for row in rows:
        scale = float(row["scale"])
        layer_errors.append({
            "op": row["op_name"], "tensor": _short_tensor_name(row["tensor_name"]),
            "rmse_over_scale": math.sqrt(float(row["mean_squared_error"])) / scale if scale else float("nan"),
            "max_abs_error": float(row["max_abs_error"]), "mean_error": float(row["mean_error"]),
            "scale": scale, "float": row["tensor_name"] in float_nodes})
    return Int8Quantization(bytes(content), float_layers, float_nodes, layer_errors, len(debug_set),
                            bytes(all_int8_content))


def _write_uint8_saved_model(model, directory: str | os.PathLike) -> None:
    """SavedModel of ``model`` taking (1, S, S, 3) uint8 pixels, cast to float32 first."""
    import keras
    import tensorflow as tf

    _, height, width, channels = model.input_shape

    def serve(image):  # (1, S, S, 3) uint8 raw pixels
        return model(tf.cast(image, tf.float32), training=False)  # (1, 1) P(PNEUMONIA)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=[
        tf.TensorSpec((1, height, width, channels), tf.uint8, name=input_name(model))])
    archive.write_out(str(directory), verbose=False)


def tflite_pooled_features(path: str | os.PathLike, images: np.ndarray, pool_layer: str = "global_pool") -> np.ndarray:
    """Pooled features (N, F) float32 inside a ``.tflite``, dequantized.

    Runs without the XNNPACK delegate and with intermediate tensors kept (many times
    slower than the shipped engine): a diagnostic and bias-correction tool, not an
    inference path.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    classifier = TFLiteClassifier(path)  # validates the file
    interpreter = Interpreter(
        model_path=str(path), num_threads=2, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    matches = [t for t in interpreter.get_tensor_details()
               if pool_layer in t["name"] and len(t["shape"]) == 2 and t["shape"][0] == 1 and t["shape"][1] > 1]
    if not matches:
        raise TFLiteModelError(f"{Path(path).name} has no (1, F) tensor named like {pool_layer!r}.")
    pooled = matches[-1]
    scale, zero_point = pooled["quantization"]
    features = []
    for image in classifier.prepare_input(images):  # (S, S, 3) input dtype
        interpreter.set_tensor(classifier.input.index, image[np.newaxis])
        interpreter.invoke()
        raw = interpreter.get_tensor(pooled["index"])  # (1, F)
        features.append(dequantize(raw, scale, zero_point) if scale else raw.astype(np.float32))
    return np.concatenate(features)  # (N, F)


def estimate_logit_shift(model, int8_path: str | os.PathLike, images: np.ndarray) -> dict[str, float]:
    """How far int8 quantization moves the logit, on average, on ``images``.

    The logit is linear in the pooled features, so the shift of one image is
    ``w . (f_int8 - f_keras)``. Quantization errors do not average out to zero
    through MobileNetV2 (rounding and clipping have a sign), so the mean shift is a
    systematic bias that :func:`with_logit_bias_shift` can remove ("bias correction",
    Nagel et al. 2019). Use training images only, like the calibration set, with
    both classes in their usual mix (:func:`evenly_spaced`, not the first N of a
    class-sorted array: the shift differs by class, so a one-class slice gives the
    wrong correction).

    Returns:
        ``{"mean", "std", "n_images"}`` of the per-image logit shift.
    """
    import keras

    feature_model = keras.Model(model.inputs, model.get_layer(POOL_LAYER).output)
    keras_features = feature_model.predict(np.asarray(images, dtype=np.float32), batch_size=32, verbose=0)  # (N, F)
    lite_features = tflite_pooled_features(int8_path, images, POOL_LAYER)  # (N, F)
    weights = model.get_layer(LOGIT_LAYER).get_weights()[0][:, 0]  # (F,)
    shifts = (lite_features - keras_features) @ weights  # (N,)
    return {"mean": float(shifts.mean()), "std": float(shifts.std()), "n_images": len(shifts)}


def with_logit_bias_shift(model, shift: float):
    """A copy of ``model`` whose ``logit`` bias is lowered by ``shift`` (the original is untouched)."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    kernel, bias = copy.get_layer(LOGIT_LAYER).get_weights()
    copy.get_layer(LOGIT_LAYER).set_weights([kernel, bias - np.float32(shift)])
    return copy
