"""The engines that answer a screen: the LiteRT runtime and the one-pass phone model, no TensorFlow.

An engine maps one film (224, 224, 3) 0-255 to three outputs -- P(PNEUMONIA), the
7x7 logit map and the pooled features -- and says what it is (:class:`ScreeningEngine`).
:class:`OnePassEngine` runs the one-pass ``.tflite`` (notebook 06) with LiteRT;
:class:`helpers.one_pass.KerasOnePassEngine` runs the Keras model with the same three
outputs, for the notebooks. :class:`helpers.serving.pipeline.Screener` takes either.

The LiteRT pieces here (:class:`InterpreterPool`, :class:`TensorInfo`, the metadata
reader) are the ones :mod:`helpers.tflite` re-exports for conversion and parity.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from helpers import config
from helpers.errors import UnusableInput
from helpers.operating_point import OperatingPoint
from helpers.provenance import file_sha256

TFLITE_FILE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer
METADATA_SCHEMA_VERSION = 1
REQUIRED_METADATA = ("schema_version", "model_file", "variant", "labels", "input", "output", "decision")
ONE_PASS_STEM = "pneumonia_mobilenetv2_onepass"
ONE_PASS_VARIANTS = ("int8", "float16", "float32")  # the app's default first
# The one-pass model's outputs, by role; for MobileNetV2 at 224 and one image their shapes
# are (1, 1), (1, 7, 7, 1) and (1, 1280). The metadata declares them; the engine checks.
OUTPUT_ROLES = ("probability", "logit_map", "pooled_features")


class TFLiteModelError(UnusableInput):
    """A .tflite or metadata file is corrupt, unreadable or not what the code expects."""


class ScreeningModelError(UnusableInput):
    """The screening model (or its metadata, or the OOD detector) cannot be used; says which file and why."""


class ScreeningEngine(Protocol):
    """What :class:`helpers.serving.pipeline.Screener` needs from an engine (TFLite or Keras)."""

    path: Path  # the model file that answers
    bias: float  # the head's bias: the heat map is the logit map minus it
    point: OperatingPoint  # the operating point the model was validated with
    provenance_note: str  # '' when the model is the current one, else what was (not) checked

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def keras_sha256(self) -> str | None: ...

    @property
    def feature_width(self) -> int: ...

    def run(self, pixels: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]: ...


# --------------------------------------------------------------------------- #
# LiteRT: load and run a .tflite
# --------------------------------------------------------------------------- #
def litert_interpreter_class():
    """LiteRT's interpreter class (``ai_edge_litert``, in ``app/requirements.txt``)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise ScreeningModelError("The LiteRT interpreter is not installed: pip install -r app/requirements.txt "
                                  "(ai-edge-litert).") from error
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


def load_interpreter(path: str | os.PathLike, num_threads: int | None = 1, interpreter_class=None):
    """A ready LiteRT interpreter for ``path`` (``interpreter_class``: another implementation of its API)."""
    path = Path(path)
    content = read_model_bytes(path)
    try:
        interpreter = (interpreter_class or litert_interpreter_class())(model_content=content, num_threads=num_threads)
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

    def __init__(self, path: str | os.PathLike, num_threads: int | None = 1, size: int | None = None,
                 interpreter_class=None):
        self.path = Path(path)
        self.num_threads = num_threads
        self.interpreter_class = interpreter_class
        self.size = int(size) if size is not None else default_pool_size(num_threads)
        if self.size < 1:
            raise ValueError(f"An interpreter pool needs at least one interpreter, got size {size}.")
        first = load_interpreter(self.path, num_threads, interpreter_class)  # validates the file once, up front
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
                return load_interpreter(self.path, self.num_threads, self.interpreter_class)
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
    def from_details(cls, details: dict) -> TensorInfo:
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


def metadata_path(model_path: str | os.PathLike) -> Path:
    """The metadata file beside a ``.tflite``: same folder and stem, ``.json``."""
    return Path(model_path).with_suffix(".json")


def read_metadata(path: str | os.PathLike) -> dict:
    """Read the metadata of a ``.tflite`` (pass the model or the ``.json`` path).

    Raises:
        FileNotFoundError: no metadata file (with how to write it).
        TFLiteModelError: not JSON, a different schema version, or required keys missing.
    """
    path = Path(path)
    path = metadata_path(path) if path.suffix == ".tflite" else path
    if not path.is_file():
        raise FileNotFoundError(f"No metadata file at {path}. Write it with helpers.tflite.write_metadata "
                                "(notebooks/06_tflite_conversion.ipynb does it for every variant).")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TFLiteModelError(f"{path} is not valid JSON ({error}). Delete it and re-run notebook 06.") from error
    if not isinstance(metadata, dict) or metadata.get("schema_version") != METADATA_SCHEMA_VERSION:
        version = metadata.get("schema_version") if isinstance(metadata, dict) else None
        raise TFLiteModelError(f"{path} has metadata schema version {version!r}; this code reads "
                               f"version {METADATA_SCHEMA_VERSION}. Re-run notebook 06.")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise TFLiteModelError(f"{path} lacks {missing}. Re-run notebook 06 to rewrite it.")
    return metadata


def artifacts_of(model_path: Path) -> Path:
    """The artifacts folder a ``.tflite`` in ``<artifacts>/tflite/`` belongs to
    (its detector, Keras model, site file)."""
    return Path(model_path).resolve().parent.parent


def check_provenance(metadata: dict, model_path: Path, keras_path: Path | None = None,
                     allow_stale: bool = False) -> str:
    """Does ``model_path`` come from the current Keras model? Returns a note ('' when it does).

    The Keras file is ``keras_path`` or ``model/pneumonia_mobilenetv2.keras`` of the same
    artifacts folder as the ``.tflite``; its SHA-256 must equal the
    ``model_version.keras_sha256`` the metadata recorded at conversion. A mismatch
    (a phone model left over from an earlier training run) is refused, or only noted
    with ``allow_stale`` (experts). Without a Keras file (a deployment that ships the
    phone model alone) or a recorded hash, the note says provenance was not checked.
    """
    keras_path = Path(keras_path) if keras_path else artifacts_of(model_path) / "model" / config.KERAS_MODEL_FILE_NAME
    declared = (metadata.get("model_version") or {}).get("keras_sha256")
    if not declared:
        return (f"The metadata of {model_path.name} records no Keras model hash (model_version.keras_sha256): "
                "provenance not checked.")
    if not keras_path.is_file():
        return f"No Keras model at {keras_path} to compare with: provenance not checked (a phone-only deployment)."
    actual = file_sha256(keras_path)
    if actual == declared:
        return ""
    message = (f"{model_path.name} was converted from another Keras model (sha256 {declared[:12]}) than "
               f"{keras_path} ({actual[:12]}): its decisions may differ from the notebooks'. Re-run notebook 06 "
               "(python -m helpers.notebooks --only 06) to convert the current model.")
    if allow_stale:
        return "Warning, used anyway (allow_stale): " + message
    raise ScreeningModelError(message)


# --------------------------------------------------------------------------- #
# The one-pass engine: one interpreter call, three outputs
# --------------------------------------------------------------------------- #
def _role_shape_ok(role: str, shape: tuple[int, ...]) -> bool:
    if role == "probability":
        return shape == (1, 1)
    if role == "logit_map":
        return len(shape) == 4 and shape[0] == 1 and shape[-1] == 1
    return len(shape) == 2 and shape[0] == 1 and shape[1] > 1  # pooled features


def _output_roles(output_details: list[dict], declared, path: Path) -> dict[str, dict]:
    """Match the model's outputs to the roles its metadata declares, by shape; refuse any mismatch."""
    if not isinstance(declared, dict) or set(declared) != set(OUTPUT_ROLES):
        found = sorted(declared) if isinstance(declared, dict) else declared
        raise ScreeningModelError(
            f"The metadata of {path.name} declares outputs {found!r}, not {list(OUTPUT_ROLES)}: it is not a "
            "one-pass screening model (notebook 06 writes pneumonia_mobilenetv2_onepass_<variant>.tflite). "
            "Re-run notebook 06.")
    actual = {tuple(int(d) for d in detail["shape"]): detail for detail in output_details}
    roles = {}
    for role in OUTPUT_ROLES:
        shape = tuple(int(d) for d in (declared[role] or {}).get("shape", ()))
        if not _role_shape_ok(role, shape) or shape not in actual or len(actual) != len(OUTPUT_ROLES):
            raise ScreeningModelError(
                f"{path.name} does not match its metadata: output {role!r} is declared with shape {list(shape)}, "
                f"and the model's outputs have shapes {sorted(map(list, actual))}. The file and its metadata "
                "come from different conversions: re-run notebook 06.")
        roles[role] = actual[shape]
    return roles


class OnePassEngine:
    """A one-pass ``.tflite`` with its metadata: pixels -> (probability, logit map, pooled features).

    Safe to share between threads (the web app serves every browser session with one
    engine): each :meth:`run` has an interpreter of :class:`helpers.InterpreterPool`
    to itself, so concurrent screens neither fail nor see each other's tensors.
    ``pool_size`` caps the interpreters (default: cores / ``num_threads``).

    Raises:
        ScreeningModelError: no file, a file LiteRT cannot load, missing or
            mismatched metadata (named, with the remedy).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = 2, allow_stale: bool = False,
                 keras_path: str | os.PathLike | None = None, pool_size: int | None = None):
        self.path = Path(path)
        try:
            self.pool = InterpreterPool(self.path, num_threads, pool_size)
            self.metadata = read_metadata(self.path)
        except (FileNotFoundError, ValueError) as error:  # TFLiteModelError is a ValueError
            raise ScreeningModelError(str(error)) from error
        inputs = self.pool.first.get_input_details()
        if len(inputs) != 1:
            raise ScreeningModelError(f"{self.path.name} has {len(inputs)} inputs; "
                                      "a screening model has one image input.")
        self.input = TensorInfo.from_details(inputs[0])
        self.outputs = _output_roles(self.pool.first.get_output_details(), self.metadata.get("outputs"), self.path)
        head = self.metadata.get("logit_map") or {}
        if "bias" not in head:
            raise ScreeningModelError(f"The metadata of {self.path.name} lacks logit_map.bias (the head's bias, "
                                      "needed for the heat map). Re-run notebook 06.")
        self.bias = float(head["bias"])
        self.point = OperatingPoint.from_dict(self.metadata["decision"], source=self.path.name,
                                              remedy="Re-run notebook 06 to rewrite the metadata.")
        self.provenance_note = check_provenance(self.metadata, self.path, keras_path, allow_stale)

    @property
    def variant(self) -> str:
        return str(self.metadata.get("variant", "?"))

    @property
    def version(self) -> str:
        return str((self.metadata.get("model_version") or {}).get("version") or "unknown version")

    @property
    def name(self) -> str:
        return f"TFLite {self.variant} (one pass)"

    @property
    def keras_sha256(self) -> str | None:
        """SHA-256 of the Keras model this file was converted from (what fitted files are checked against)."""
        return (self.metadata.get("model_version") or {}).get("keras_sha256") or None

    @property
    def feature_width(self) -> int:
        """Width of the pooled features the model returns (1280 for MobileNetV2)."""
        return int(self.outputs["pooled_features"]["shape"][-1])

    def run(self, pixels: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """One image (224, 224, 3) 0-255 -> (P(PNEUMONIA), logit map (7, 7), pooled features (1280,))."""
        pixels = np.asarray(pixels)
        if pixels.shape != tuple(self.input.shape[1:]):
            raise ValueError(f"Expected one image of shape {self.input.shape[1:]}, got {pixels.shape}.")
        batch = to_input_dtype(self.input, pixels[np.newaxis])

        def invoke(interpreter) -> dict:  # the whole set -> invoke -> get sequence on one interpreter
            interpreter.set_tensor(self.input.index, batch)
            interpreter.invoke()
            return {role: output_values(interpreter, TensorInfo.from_details(detail))
                    for role, detail in self.outputs.items()}

        values = self.pool.run(invoke)
        return (float(values["probability"].reshape(-1)[0]), values["logit_map"][0, ..., 0],
                values["pooled_features"].reshape(-1))
