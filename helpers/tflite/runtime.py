"""Run a ``.tflite``: one wrapper (:class:`TFLiteClassifier`) for float, uint8 and int8 input and output."""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers.progress import progress_bar
from helpers.tflite.paths import TFLITE_FILE_IDENTIFIER, TFLiteModelError


INTERPRETER_DEPRECATION_WARNING = r"\s*Warning: tf\.lite\.Interpreter is deprecated"


def interpreter_class():
    """LiteRT's interpreter; ``tf.lite.Interpreter`` only where LiteRT has no wheel."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # e.g. a platform without an ai-edge-litert wheel
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


def read_model_bytes(path: Path) -> bytes:
    """The bytes of a ``.tflite``, with a clear error when it is missing or not a TFLite flatbuffer."""
    if not path.is_file():
        raise FileNotFoundError(
            f"No TFLite model at {path}. Create it with notebooks/06_tflite_conversion.ipynb "
            "(python -m helpers.notebooks --only 06), or set CXR_ARTIFACTS_DIR to the artifacts "
            "folder that holds tflite/."
        )
    content = path.read_bytes()
    if len(content) < 8 or content[4:8] != TFLITE_FILE_IDENTIFIER:
        raise TFLiteModelError(
            f"{path} is not a TFLite model ({len(content)} bytes, no 'TFL3' flatbuffer identifier): "
            "it is empty, truncated or another kind of file. Delete it and convert again "
            "(notebooks/06_tflite_conversion.ipynb)."
        )
    return content


def load_interpreter(path: str | os.PathLike, num_threads: int | None = 1):
    path = Path(path)
    content = read_model_bytes(path)
    try:
        interpreter = interpreter_class()(model_content=content, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise TFLiteModelError(
            f"{path} could not be loaded by the LiteRT interpreter ({str(error).strip()[:300]}). "
            "The file is corrupt or was written for a newer runtime: delete it and convert again "
            "(notebooks/06_tflite_conversion.ipynb)."
        ) from error
    return interpreter


def default_pool_size(num_threads: int | None) -> int:
    """Interpreters worth keeping for concurrent calls: the CPU's cores divided by each one's threads."""
    return max(1, (os.cpu_count() or 1) // max(1, num_threads or 1))


class InterpreterPool:
    """Interpreters of one model for concurrent callers: each call has one to itself for its whole run.

    A LiteRT interpreter holds one set of input and output buffers, so two threads that
    interleave ``set_tensor`` / ``invoke`` / ``get_tensor`` on the same interpreter get
    an error ("There is at least 1 reference to internal data ...") or each other's
    results. A pool gives every call its own interpreter from ``set_tensor`` to the
    last ``get_tensor`` (:meth:`run`), creating up to ``size`` of them on demand; a call
    beyond that waits for one to come back. With ``size`` 1 this is a lock around the
    whole sequence; more interpreters only help while there are idle cores, hence
    :func:`default_pool_size`.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = 1, size: int | None = None):
        self.path = Path(path)
        self.num_threads = num_threads
        self.size = int(size) if size is not None else default_pool_size(num_threads)
        if self.size < 1:
            raise ValueError(f"An interpreter pool needs at least one interpreter, got size {size}.")
        first = load_interpreter(self.path, num_threads)  # validates the file once, up front
        self.first = first  # for tensor details, which every interpreter of the model shares
        self._idle = queue.LifoQueue()  # the most recently used interpreter first: its memory is warm
        self._idle.put(first)
        self._created = 1
        self._creating = threading.Lock()

    @property
    def created(self) -> int:
        """How many interpreters exist so far (at most :attr:`size`)."""
        return self._created

    def _take(self):
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._creating:
            if self._created < self.size:
                self._created += 1
                create = True
            else:
                create = False
        if create:
            try:
                return load_interpreter(self.path, self.num_threads)
            except BaseException:
                with self._creating:
                    self._created -= 1
                raise
        return self._idle.get()  # every interpreter is busy: wait for one

    def run(self, job):
        """``job(interpreter)`` with an interpreter no other thread touches until it returns; its result.

        ``job`` must copy what it reads (``get_tensor`` does; ``tensor()`` views do not).
        """
        interpreter = self._take()
        try:
            return job(interpreter)
        finally:
            self._idle.put(interpreter)


def quantize(values: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    """Real values -> integer tensor values: ``round(x / scale) + zero_point``, clipped."""
    info = np.iinfo(dtype)
    quantized = np.round(np.asarray(values, dtype=np.float64) / scale) + zero_point
    return np.clip(quantized, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor values -> real values: ``(q - zero_point) * scale`` as float32."""
    return ((np.asarray(values, dtype=np.float64) - zero_point) * scale).astype(np.float32)


@dataclass(frozen=True)
class TensorInfo:
    """What one input/output tensor wants: name, shape, dtype and (scale, zero point)."""

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return np.issubdtype(self.dtype, np.integer) and self.scale != 0.0

    @classmethod
    def from_details(cls, details: dict) -> "TensorInfo":
        scale, zero_point = details["quantization"]
        return cls(details["name"], int(details["index"]), tuple(int(d) for d in details["shape"]),
                   np.dtype(details["dtype"]), float(scale), int(zero_point))

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.name,
                "quantization": {"scale": self.scale, "zero_point": self.zero_point} if self.quantized else None}


def to_input_dtype(info: TensorInfo, images: np.ndarray) -> np.ndarray:
    """0-255 pixels -> what the input tensor ``info`` takes.

    Quantized inputs use their (scale, zero point); an unquantized integer input (the
    int8 variants' uint8 pixels, cast to float inside) takes the pixel values rounded
    and clipped, i.e. scale 1 and zero point 0.
    """
    if info.quantized:
        return quantize(images, info.dtype, info.scale, info.zero_point)
    if np.issubdtype(info.dtype, np.integer):
        return quantize(images, info.dtype, 1.0, 0)
    return np.asarray(images).astype(info.dtype)


def output_values(interpreter, info: TensorInfo) -> np.ndarray:
    """The output tensor ``info`` after an invocation, as float32 (dequantized if integer)."""
    raw = interpreter.get_tensor(info.index)
    if info.quantized:
        return dequantize(raw, info.scale, info.zero_point)
    return raw.astype(np.float32)


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
