"""Run a ``.tflite``: one wrapper (:class:`TFLiteClassifier`) for float, uint8 and int8 input and output.

The interpreter pool, tensor descriptions and (de)quantization are the screening
runtime's (:mod:`helpers.serving.engine`), re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from helpers.progress import progress_bar
from helpers.serving import engine as serving_engine
from helpers.serving.engine import (  # noqa: F401  (re-exported: the LiteRT runtime the screening pipeline uses)
    InterpreterPool,
    TensorInfo,
    default_pool_size,
    dequantize,
    output_values,
    quantize,
    read_model_bytes,
    to_input_dtype,
)
from helpers.tflite.paths import TFLiteModelError

INTERPRETER_DEPRECATION_WARNING = r"\s*Warning: tf\.lite\.Interpreter is deprecated"


def interpreter_class():
    """LiteRT's interpreter; ``tf.lite.Interpreter`` only where LiteRT has no wheel."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # e.g. a platform without an ai-edge-litert wheel
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


def load_interpreter(path: str | os.PathLike, num_threads: int | None = 1):
    """A ready interpreter for ``path``: LiteRT's, or TensorFlow's where LiteRT has no wheel."""
    return serving_engine.load_interpreter(path, num_threads, interpreter_class())


def check_classifier_shapes(path: Path, input_shape, output_shape) -> None:
    """Raise :class:`TFLiteModelError` unless the tensors are (B, S, S, 3) pixels in and (B, 1) probability out."""
    input_shape, output_shape = tuple(int(n) for n in input_shape), tuple(int(n) for n in output_shape)
    image_ok = len(input_shape) == 4 and input_shape[3] == 3 and input_shape[1] == input_shape[2] > 0
    if not image_ok or len(output_shape) != 2 or output_shape[1] != 1:
        raise TFLiteModelError(
            f"{path.name} takes input {list(input_shape)} and returns {list(output_shape)}; a pneumonia classifier "
            "takes (batch, size, size, 3) pixels and returns (batch, 1) probabilities. It is another model: "
            "re-run notebook 06 to convert this project's model.")


class TFLiteClassifier:
    """Run a single-input, single-output classifier ``.tflite`` on raw 0-255 pixels.

    Handles float, uint8 and int8 input and output: float pixels are quantized with
    the input tensor's (scale, zero point), integer outputs dequantized with the
    output's, so :meth:`predict` always takes (N, S, S, 3) 0-255 pixels and returns
    (N,) float32 probabilities whatever the variant.

    Raises:
        FileNotFoundError: no file at ``path`` (with how to create it).
        TFLiteModelError: the file is empty, truncated, corrupt or has more than one
            input or output.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = 1):
        self.path = Path(path)
        self.num_threads = num_threads
        self.interpreter = load_interpreter(self.path, num_threads)
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise TFLiteModelError(f"{self.path.name} has {len(inputs)} inputs and {len(outputs)} outputs; "
                                   "TFLiteClassifier expects one image input and one probability output.")
        self.input = TensorInfo.from_details(inputs[0])
        self.output = TensorInfo.from_details(outputs[0])
        check_classifier_shapes(self.path, self.input.shape, self.output.shape)
        self._batch_size = self.input.shape[0] if self.input.shape[0] > 0 else 1

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    @property
    def image_size(self) -> int:
        return self.input.shape[1]

    def __repr__(self) -> str:
        return (f"TFLiteClassifier({self.path.name}, input {self.input.dtype.name}{list(self.input.shape)}, "
                f"output {self.output.dtype.name}{list(self.output.shape)}, threads={self.num_threads})")

    def prepare_input(self, images: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) 0-255 pixels -> the input tensor's dtype (:func:`to_input_dtype`)."""
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input.shape[1:]:
            raise ValueError(f"Expected images of shape (N, {', '.join(map(str, self.input.shape[1:]))}) "
                             f"(raw 0-255 RGB from helpers.data), got {images.shape}.")
        return to_input_dtype(self.input, images)

    def read_output(self) -> np.ndarray:
        """The output tensor of the last invocation as float32 (dequantized if integer)."""
        return output_values(self.interpreter, self.output)

    def set_input(self, batch: np.ndarray) -> None:
        """Place one already-prepared batch (from :meth:`prepare_input`) in the input tensor."""
        self.interpreter.set_tensor(self.input.index, batch)

    def invoke(self) -> None:
        self.interpreter.invoke()

    def predict(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """Probabilities for (N, S, S, 3) raw 0-255 pixels -> (N,) float32."""
        prepared = self.prepare_input(images)  # (N, S, S, 3) input dtype
        probabilities = np.empty(len(prepared), dtype=np.float32)
        starts = range(0, len(prepared), self._batch_size)
        for start in progress_bar(starts, desc=self.path.stem, disable=not progress):
            batch = prepared[start:start + self._batch_size]
            if len(batch) < self._batch_size:  # only with a fixed batch > 1: pad the tail
                batch = np.concatenate([batch, np.repeat(batch[-1:], self._batch_size - len(batch), 0)])
            self.set_input(batch)
            self.invoke()
            output = self.read_output().reshape(self._batch_size, -1)[:, 0]  # (B,) P(PNEUMONIA)
            stop = min(start + self._batch_size, len(prepared))
            probabilities[start:stop] = output[: stop - start]
        return probabilities
