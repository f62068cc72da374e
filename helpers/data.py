"""The data layer: read ChestXRay2017 from any of its three layouts into one form.

Three layouts are understood (all give the same :class:`Examples`):

1. ``tfrecord`` -- the keras.io TFRecord pair ``ChestXRay2017/<split>/images.tfrec``
   + ``paths.tfrec`` (one raw JPEG per record, label from the parallel path record);
2. ``folder``   -- the Kaggle/Mendeley layout ``chest_xray/<split>/{NORMAL,PNEUMONIA}/``;
3. ``shards``   -- the project's own sharded ``tf.train.Example`` files, written by
   :func:`write_shards` from either of the above (image bytes, label, file name,
   patient id), found in ``<dir>/<split>/*.tfrecord``.

Examples are sorted by path, so every layout yields the same order. Label 1 is
PNEUMONIA, 0 is NORMAL. Images stay encoded in memory (a small fraction of their decoded size)
and are decoded by :func:`decode_and_resize`, the one image-loading function that
training, evaluation, Grad-CAM, TFLite parity and the explorer all use.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers import config
from helpers.cache import load_or_compute
from helpers.dicom import is_dicom
from helpers.download import download_public_tfrecords
from helpers.errors import UnusableInput
from helpers.progress import progress_bar
from helpers.uploads import ImageRejected, dataset_film_bytes, refuse_oversized_image

CLASS_NAMES = config.CLASS_NAMES  # ("NORMAL", "PNEUMONIA"), index = label
IMAGE_SIZE = 224
SPLITS = ("train", "test")
SOURCES = ("auto", "shards", "tfrecord", "folder")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".dcm")


class DataError(UnusableInput):
    """Raised when data is missing, malformed or inconsistent. Says what to do."""


# --------------------------------------------------------------------------- #
# Patient ids
# --------------------------------------------------------------------------- #
_PATIENT_PATTERNS = (
    # person1234_bacteria_5678.jpeg, person1234_virus_5678_1.jpeg
    re.compile(r"^(?P<patient>person\d+)_(?:bacteria|virus)_\d+(?:_\d+)?$"),
    # NORMAL2-IM-0173-0001.jpeg, NORMAL2-IM-0173-0001-0002.jpeg
    re.compile(r"^(?P<patient>NORMAL\d+-IM-\d+)-\d+(?:-\d+)?$"),
    # IM-0115-0001.jpeg, IM-0115-0001-0002.jpeg
    re.compile(r"^(?P<patient>IM-\d+)-\d+(?:-\d+)?$"),
)


def patient_id(file_name: str) -> str:
    """Patient id encoded in a ChestXRay2017 file name.

    >>> patient_id("person1234_bacteria_5678.jpeg")
    'person1234'
    >>> patient_id("NORMAL2-IM-0173-0001-0002.jpeg")
    'NORMAL2-IM-0173'
    >>> patient_id("IM-0115-0001.jpeg")
    'IM-0115'
    """
    stem = Path(str(file_name)).stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group("patient")
    raise DataError(
        f"Cannot read a patient id from the file name {file_name!r}. Expected names "
        "like 'person1234_bacteria_5678.jpeg', 'IM-0115-0001.jpeg' or "
        "'NORMAL2-IM-0173-0001-0002.jpeg' (ChestXRay2017 naming); rename the file "
        "or add its pattern to helpers.data._PATIENT_PATTERNS."
    )


def label_from_path(path: str) -> int:
    """Label from a ``.../<CLASS>/<file>`` path: 1 for PNEUMONIA, 0 for NORMAL."""
    parts = str(path).replace("\\", "/").split("/")
    class_name = parts[-2] if len(parts) >= 2 else ""
    if class_name not in CLASS_NAMES:
        raise DataError(
            f"The path {path!r} names no class: its folder part must be one of "
            f"{CLASS_NAMES} (like 'chest_xray/train/NORMAL/IM-0115-0001.jpeg'). "
            "Check that the paths file belongs to this images file."
        )
    return CLASS_NAMES.index(class_name)


# --------------------------------------------------------------------------- #
# The in-memory form shared by every layout
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Examples:
    """Encoded images with their labels, sorted by path.

    Attributes:
        paths: (N,) str, ``chest_xray/<split>/<CLASS>/<file>``.
        labels: (N,) int64, 1 = PNEUMONIA.
        image_bytes: (N,) object array of the raw encoded files (JPEG/PNG bytes).
    """

    paths: np.ndarray
    labels: np.ndarray
    image_bytes: np.ndarray

    def __post_init__(self):
        if not (len(self.paths) == len(self.labels) == len(self.image_bytes)):
            raise DataError(
                f"Examples need as many paths ({len(self.paths)}) as labels "
                f"({len(self.labels)}) and images ({len(self.image_bytes)})."
            )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def file_names(self) -> np.ndarray:
        """(N,) str, the bare file names."""
        return np.array([p.rsplit("/", 1)[-1] for p in self.paths])

    @property
    def patient_ids(self) -> np.ndarray:
        """(N,) str, one patient id per image."""
        return np.array([patient_id(name) for name in self.file_names])

    @property
    def class_names(self) -> np.ndarray:
        return np.array([CLASS_NAMES[label] for label in self.labels])

    def subset(self, indices: Sequence[int] | np.ndarray) -> Examples:
        """A new Examples holding only ``indices`` (in the given order)."""
        indices = np.asarray(indices, dtype=np.int64)
        return Examples(self.paths[indices], self.labels[indices], self.image_bytes[indices])

    def content_hashes(self) -> np.ndarray:
        """(N,) str, SHA-1 of each encoded file: equal hashes = byte-identical images."""
        return np.array([hashlib.sha1(data).hexdigest() for data in self.image_bytes])

    def head(self, count: int | None, seed: int = config.DEFAULT_SEED) -> Examples:
        """A seeded, class-stratified random subset of ``count`` images (all if None).

        Used by the smoke profile to shrink a split while keeping both classes.
        """
        if count is None or count >= len(self):
            return self
        if count < 2:
            raise ValueError(f"count must be at least 2 to keep both classes, got {count}.")
        rng = np.random.default_rng(seed)
        chosen = []
        positive_share = float(np.mean(self.labels))
        for label in (0, 1):
            members = np.flatnonzero(self.labels == label)
            share = positive_share if label == 1 else 1.0 - positive_share
            take = min(len(members), max(1, int(round(count * share))))
            chosen.append(rng.choice(members, size=take, replace=False))
        return self.subset(np.sort(np.concatenate(chosen)))


def _make_examples(paths: list[str], image_bytes: list[bytes]) -> Examples:
    labels = [label_from_path(path) for path in paths]
    order = np.argsort(np.array(paths, dtype=object), kind="stable")
    bytes_array = np.empty(len(image_bytes), dtype=object)
    bytes_array[:] = image_bytes
    return Examples(
        paths=np.array(paths, dtype=str)[order] if paths else np.array([], dtype=str),
        labels=np.array(labels, dtype=np.int64)[order],
        image_bytes=bytes_array[order],
    )


# --------------------------------------------------------------------------- #
# Layout 1: the keras.io TFRecord pair
# --------------------------------------------------------------------------- #
def _read_tfrecord_strings(path: Path) -> list[bytes]:
    import tensorflow as tf

    if not path.is_file():
        raise DataError(f"Missing TFRecord file {path}. Point CXR_DATA_DIR at a folder "
                        "holding ChestXRay2017/<split>/{images,paths}.tfrec, or unset it "
                        "to download the public copy.")
    if path.stat().st_size == 0:
        raise DataError(f"The TFRecord file {path} is empty (0 bytes). Delete it and "
                        "download it again (unset CXR_DATA_DIR to use the download).")
    try:
        records = [record.numpy() for record in tf.data.TFRecordDataset(str(path))]
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        raise DataError(
            f"The TFRecord file {path} is truncated or corrupt ({error.message.strip()}). "
            "Delete it and download or convert it again."
        ) from error
    if not records:
        raise DataError(f"The TFRecord file {path} holds no records. Delete it and "
                        "download or convert it again.")
    return records


def read_tfrecord_pair(split_dir: str | os.PathLike) -> Examples:
    """Read ``images.tfrec`` + ``paths.tfrec`` from one split folder."""
    split_dir = Path(split_dir)
    images = _read_tfrecord_strings(split_dir / "images.tfrec")
    paths = [record.decode("utf-8") for record in _read_tfrecord_strings(split_dir / "paths.tfrec")]
    if len(images) != len(paths):
        raise DataError(
            f"{split_dir}: images.tfrec holds {len(images)} records but paths.tfrec "
            f"holds {len(paths)}; they must be parallel. Re-download both files."
        )
    return _make_examples(paths, images)


# --------------------------------------------------------------------------- #
# Layout 2: the Kaggle folder layout
# --------------------------------------------------------------------------- #
def read_folder(split_dir: str | os.PathLike) -> Examples:
    """Read ``<split_dir>/{NORMAL,PNEUMONIA}/*`` (JPEG, PNG, DICOM ``.dcm``, 16-bit PNG/TIFF...).

    Every file is checked up front by the upload rules (:func:`helpers.uploads.dataset_film_bytes`):
    a DICOM or 16-bit film becomes an 8-bit PNG exactly as an upload of it would, and
    an unreadable file stops the read with a :class:`DataError` that names *every* bad
    file and why, so one run finds them all. Paths are reported as
    ``chest_xray/<split>/<CLASS>/<file>`` like the TFRecord pair.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"Missing folder {split_dir}. Point CXR_DATA_DIR at the folder "
                        "that holds chest_xray/{train,test}/{NORMAL,PNEUMONIA}/.")
    class_dirs = [split_dir / name for name in CLASS_NAMES]
    missing = [d.name for d in class_dirs if not d.is_dir()]
    if missing:
        found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        raise DataError(
            f"{split_dir} has no class sub-folder(s) {missing} (found {found or 'none'}). "
            f"Each split needs one folder per class: {list(CLASS_NAMES)}."
        )
    paths, images, ignored, bad = [], [], [], []
    for class_dir in class_dirs:
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
                ignored.append(file.name)
                continue
            try:
                images.append(dataset_film_bytes(file.read_bytes(), str(file)))
            except ImageRejected as rejection:
                bad.append(str(rejection))
                continue
            except OSError as error:
                bad.append(f"{file} could not be read ({error.strerror}).")
                continue
            paths.append(f"chest_xray/{split_dir.name}/{class_dir.name}/{file.name}")
    if bad:
        raise DataError(f"{len(bad)} file(s) in {split_dir} cannot be used; replace or delete each one "
                        "(re-export or re-download it), then run again:\n  " + "\n  ".join(bad))
    if ignored:
        # Not an error (e.g. .DS_Store), but never silent.
        print(f"read_folder: ignored {len(ignored)} non-image file(s) in {split_dir}, "
              f"e.g. {ignored[:3]}")
    if not paths:
        raise DataError(f"{split_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return _make_examples(paths, images)


# --------------------------------------------------------------------------- #
# Layout 3: the project's own tf.train.Example shards
# --------------------------------------------------------------------------- #
_SHARD_FEATURES = {
    "image": "bytes",
    "label": "int64",
    "path": "bytes",
    "file_name": "bytes",
    "patient_id": "bytes",
}


def write_shards(examples: Examples, out_dir: str | os.PathLike, num_shards: int = 4) -> list[Path]:
    """Write ``examples`` as ``num_shards`` ``tf.train.Example`` TFRecord files.

    Each record holds ``image`` (encoded bytes), ``label``, ``path``, ``file_name``
    and ``patient_id``. Returns the written paths (``shard-00000-of-00004.tfrecord``...).
    Convert a Kaggle download once, then train from the shards.
    """
    import tensorflow as tf

    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
    if len(examples) == 0:
        raise ValueError("There are no examples to write.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    patients = examples.patient_ids
    names = examples.file_names
    for shard in range(num_shards):
        target = out_dir / f"shard-{shard:05d}-of-{num_shards:05d}.tfrecord"
        temporary = target.with_suffix(".tfrecord.part")
        with tf.io.TFRecordWriter(str(temporary)) as writer:
            for i in range(shard, len(examples), num_shards):
                feature = {
                    "image": _bytes_feature(examples.image_bytes[i]),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(examples.labels[i])])),
                    "path": _bytes_feature(examples.paths[i].encode()),
                    "file_name": _bytes_feature(names[i].encode()),
                    "patient_id": _bytes_feature(patients[i].encode()),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        temporary.replace(target)  # never leave a half-written shard under the real name
        written.append(target)
    return written


def _bytes_feature(value: bytes):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def read_shards(shard_dir: str | os.PathLike) -> Examples:
    """Read the ``*.tfrecord`` shards written by :func:`write_shards`."""
    import tensorflow as tf

    shard_dir = Path(shard_dir)
    files = sorted(shard_dir.glob("*.tfrecord")) if shard_dir.is_dir() else []
    if not files:
        raise DataError(f"No *.tfrecord shards in {shard_dir}. Write them first with "
                        "helpers.data.write_shards(examples, out_dir).")
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "path": tf.io.FixedLenFeature([], tf.string),
    }
    paths, images = [], []
    for file in files:
        for record in _read_tfrecord_strings(file):
            try:
                parsed = tf.io.parse_single_example(record, spec)
            except tf.errors.InvalidArgumentError as error:
                raise DataError(
                    f"{file} holds a record that is not a project tf.train.Example "
                    f"({error.message.strip()}). Was it written by write_shards?"
                ) from error
            paths.append(parsed["path"].numpy().decode("utf-8"))
            images.append(parsed["image"].numpy())
    examples = _make_examples(paths, images)
    return examples


# --------------------------------------------------------------------------- #
# Finding the data
# --------------------------------------------------------------------------- #
def resolve_data_dir(data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Folder to read from: ``data_dir``, else ``CXR_DATA_DIR``, else a download.

    With neither an argument nor ``CXR_DATA_DIR``, the public keras.io TFRecord pair
    is downloaded (once, cached and size-checked) into the project's ``data/`` folder.
    """
    chosen = data_dir or os.environ.get("CXR_DATA_DIR")
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_dir():
            source = "the data_dir argument" if data_dir else "CXR_DATA_DIR"
            raise DataError(f"{source} points at {path}, which is not a folder. Set it to "
                            "a folder holding ChestXRay2017/ or chest_xray/, or unset it "
                            "to download the public copy.")
        return path
    if not download:
        raise DataError("No data configured: set CXR_DATA_DIR (or pass data_dir).")
    return download_public_tfrecords(config.project_data_dir())


def find_layout(data_dir: Path, split: str) -> tuple[str, Path]:
    """Which layout ``data_dir`` holds for ``split``: (source, split folder)."""
    candidates = (
        ("shards", data_dir / "shards" / split),
        ("tfrecord", data_dir / "ChestXRay2017" / split),
        ("tfrecord", data_dir / split) if (data_dir / split / "images.tfrec").exists() else None,
        ("folder", data_dir / "chest_xray" / split),
        ("folder", data_dir / split) if (data_dir / split / CLASS_NAMES[0]).exists() else None,
    )
    for candidate in candidates:
        if candidate and candidate[1].is_dir():
            return candidate
    raise DataError(
        f"{data_dir} holds no '{split}' split in a known layout. Expected one of "
        f"ChestXRay2017/{split}/{{images,paths}}.tfrec, chest_xray/{split}/{{NORMAL,PNEUMONIA}}/ "
        f"or shards/{split}/*.tfrecord."
    )


def load_examples(split: str, data_dir: str | os.PathLike | None = None, source: str = "auto") -> Examples:
    """Load one official split (``"train"`` or ``"test"``) from the configured data.

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: folder with the data; default ``CXR_DATA_DIR`` or a download.
        source: ``"auto"`` (shards, then TFRecord pair, then folders), or force one
            of ``"shards"``, ``"tfrecord"``, ``"folder"``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
    root = resolve_data_dir(data_dir)
    if source == "auto":
        source, split_dir = find_layout(root, split)
    else:
        split_dir = {
            "shards": root / "shards" / split,
            "tfrecord": root / "ChestXRay2017" / split,
            "folder": root / "chest_xray" / split,
        }[source]
    reader = {"shards": read_shards, "tfrecord": read_tfrecord_pair, "folder": read_folder}[source]
    return reader(split_dir)


# --------------------------------------------------------------------------- #
# Decoding: the one image-loading function
# --------------------------------------------------------------------------- #
def decode_and_resize(image_bytes, image_size: int = IMAGE_SIZE):
    """TF op: encoded JPEG/PNG/BMP/GIF bytes -> float32 (size, size, 3) in [0, 255].

    Grayscale is repeated to RGB, an alpha channel is dropped, any size is resized
    (bilinear, antialiased) to ``image_size``. Pixels stay raw 0-255: the model
    normalizes inside, so every consumer feeds the same pixels.
    """
    import tensorflow as tf

    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)  # (H, W, 3) uint8
    image = tf.image.resize(image, (image_size, image_size), antialias=True)  # float32
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape((image_size, image_size, 3))
    return image


def load_image(source: str | os.PathLike | bytes, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Load one image file (path or bytes; JPEG, PNG, ... or DICOM) as float32 (image_size, image_size, 3) 0-255.

    Raises:
        FileNotFoundError: the path does not exist.
        DataError: the bytes are empty, truncated or not an image, or the header declares
            more than the upload limit of pixels (refused before TensorFlow decodes them).
    """
    import tensorflow as tf

    name = "the uploaded bytes"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"No image file at {path}.")
        name, source = str(path), path.read_bytes()
    if not isinstance(source, (bytes, bytearray)):
        raise TypeError(f"Expected a path or bytes, got {type(source).__name__}.")
    if len(source) == 0:
        raise DataError(f"{name} is empty (0 bytes): choose a JPEG or PNG image file.")
    if is_dicom(bytes(source)):  # windowed and MONOCHROME1-inverted as an upload is (helpers.dicom)
        try:
            source = dataset_film_bytes(bytes(source), name)
        except ImageRejected as rejection:
            raise DataError(str(rejection)) from rejection
    try:
        refuse_oversized_image(bytes(source), name)  # a decompression bomb, from its header, before decoding
    except ImageRejected as rejection:
        raise DataError(str(rejection)) from rejection
    try:
        image = decode_and_resize(tf.constant(bytes(source)), image_size)
    except tf.errors.InvalidArgumentError as error:
        raise DataError(
            f"{name} could not be decoded as an image ({_short_tf_message(error)}). "
            "It may be truncated or not an image: use a complete JPEG or PNG file."
        ) from error
    return image.numpy()


def _short_tf_message(error) -> str:
    message = getattr(error, "message", str(error))
    return message.split("}}")[-1].split("[Op:")[0].strip()


def decode_images(examples: Examples, image_size: int = IMAGE_SIZE, progress: bool = True) -> np.ndarray:
    """Decode every image once: uint8 (N, image_size, image_size, 3).

    uint8 keeps the cache small (5,216 train images = 785 MB). A file that cannot
    be decoded stops the run with its name, after all files were checked, so one
    run reports every bad file.
    """
    import tensorflow as tf

    images = np.empty((len(examples), image_size, image_size, 3), dtype=np.uint8)
    bad = []
    for i in progress_bar(range(len(examples)), desc="decode", disable=not progress):
        try:
            image = decode_and_resize(tf.constant(examples.image_bytes[i]), image_size)
        except tf.errors.InvalidArgumentError as error:
            bad.append(f"{examples.paths[i]} ({_short_tf_message(error)})")
            continue
        images[i] = np.round(image.numpy()).astype(np.uint8)
    if bad:
        raise DataError(
            f"{len(bad)} of {len(examples)} images could not be decoded: "
            + "; ".join(bad[:10]) + ("; ..." if len(bad) > 10 else "")
            + ". Replace or delete these files (re-download or re-convert the data)."
        )
    return images


def make_dataset(
    examples: Examples,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = config.DEFAULT_SEED,
    image_size: int = IMAGE_SIZE,
):
    """tf.data pipeline of (image float32 (B, S, S, 3) 0-255, label float32 (B,)).

    Decoding runs in parallel; shuffling (train only) is seeded and reshuffles
    each epoch.
    """
    import tensorflow as tf

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.array(list(examples.image_bytes), dtype=object), examples.labels.astype(np.float32))
    )
    if shuffle:
        dataset = dataset.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(
        lambda data, label: (decode_and_resize(data, image_size), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def array_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int = 32,
                  shuffle: bool = False, seed: int = config.DEFAULT_SEED):
    """tf.data pipeline over already-decoded images (uint8 or float, (N, S, S, 3)).

    Yields (float32 images 0-255, float32 labels), like :func:`make_dataset`.
    """
    import tensorflow as tf

    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32)))
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    return dataset.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- #
# Duplicates and the patient-level split
# --------------------------------------------------------------------------- #
def find_duplicate_groups(examples: Examples) -> list[list[int]]:
    """Groups (of >= 2 indices) of byte-identical images."""
    by_hash: dict[str, list[int]] = {}
    for index, digest in enumerate(examples.content_hashes()):
        by_hash.setdefault(digest, []).append(index)
    return [indices for indices in by_hash.values() if len(indices) > 1]


def split_groups(examples: Examples) -> np.ndarray:
    """(N,) int group id: images of one patient, or byte-identical images, share a group.

    Patients linked by a duplicate image (the data has some under two patient ids)
    are merged, so duplicates can never straddle a split.
    """
    patients = examples.patient_ids
    parent = {p: p for p in patients}

    def find(p):
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for group in find_duplicate_groups(examples):
        root = find(patients[group[0]])
        for index in group[1:]:
            parent[find(patients[index])] = root
    roots = [find(p) for p in patients]
    _, group_ids = np.unique(roots, return_inverse=True)
    return group_ids


def split_by_patient(
    examples: Examples,
    validation_fraction: float = 0.2,
    seed: int = config.DEFAULT_SEED,
) -> tuple[Examples, Examples]:
    """Patient-level, class-stratified, seeded (train, validation) split.

    No patient -- and no byte-identical image -- appears on both sides.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0.0 < validation_fraction < 0.5:
        raise ValueError(f"validation_fraction must be in (0, 0.5), got {validation_fraction}.")
    n_splits = int(round(1.0 / validation_fraction))
    groups = split_groups(examples)
    if len(np.unique(groups)) < n_splits:
        raise DataError(f"Only {len(np.unique(groups))} patients: too few to hold out "
                        f"{validation_fraction:.0%} of them.")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_index, validation_index = next(splitter.split(np.zeros(len(examples)), examples.labels, groups))
    return examples.subset(np.sort(train_index)), examples.subset(np.sort(validation_index))


def class_counts(examples: Examples) -> dict[str, int]:
    """{"NORMAL": n0, "PNEUMONIA": n1}."""
    counts = Counter(int(label) for label in examples.labels)
    return {name: counts.get(index, 0) for index, name in enumerate(CLASS_NAMES)}


def load_splits(
    data_dir: str | os.PathLike | None = None,
    validation_fraction: float = 0.2,
    seed: int = config.DEFAULT_SEED,
) -> dict[str, Examples]:
    """The three splits every notebook uses: ``train``, ``validation`` (carved from the
    official train split by patient) and the official ``test``."""
    train, validation = split_by_patient(load_examples("train", data_dir), validation_fraction, seed)
    return {"train": train, "validation": validation, "test": load_examples("test", data_dir)}


def decode_images_cached(examples: Examples, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """:func:`decode_images`, cached as ``.npy`` under ``<artifacts>/cache/``.

    The cache key is the SHA-1 of the images' content hashes and the size, so a
    different subset or a changed file gets its own entry.
    """
    key = hashlib.sha1(("".join(examples.content_hashes()) + f"|{image_size}").encode()).hexdigest()[:16]
    return load_or_compute(f"images-{len(examples)}-{key}.npy",
                           lambda: decode_images(examples, image_size))
