"""Shared fixtures: tiny synthetic datasets in every layout, and the real data gate."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from helpers import data
from tests import browser

# In CI (the CI environment variable set, as .ci/run does) a skipped test fails, unless this file
# lists it, with a reason: a missing dependency or data folder must not turn into a green run.
ALLOWED_SKIPS_FILE = Path(__file__).with_name("allowed_skips.txt")


def allowed_skips(path: Path | None = None) -> dict[str, str]:
    """{test node id: reason} from ``allowed_skips.txt``: one ``<node id>  # <reason>`` a line."""
    path = path or ALLOWED_SKIPS_FILE
    allowed = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        node_id, _, reason = line.partition("#")
        if not node_id.strip() or not reason.strip():
            raise ValueError(f"{path}:{number}: write '<test node id>  # <why it may skip in CI>', got {line!r}.")
        allowed[node_id.strip()] = reason.strip()
    return allowed


def _fail_unlisted_skip(report, node_id: str) -> None:
    """In CI, turn a skip report of ``node_id`` into a failure unless the allowed list names it."""
    if not (os.environ.get("CI") and report.skipped) or hasattr(report, "wasxfail"):
        return
    if node_id in allowed_skips():
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"Skipped in CI ({reason}): a skip in CI is a failure. Make what it needs available "
                       f"in CI, or list {node_id!r} with a reason in {ALLOWED_SKIPS_FILE.name}.")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_unlisted_skip(report, item.nodeid)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield  # a module skipped as a whole (pytest.skip(allow_module_level=True)) is skipped here
    _fail_unlisted_skip(report, collector.nodeid)
    return report


def pytest_configure(config):
    # Tests never write into the user's artifacts folder and always use the smoke profile.
    os.environ.setdefault("CXR_PROFILE", "smoke")
    if "CXR_ARTIFACTS_DIR" not in os.environ:
        os.environ["CXR_ARTIFACTS_DIR"] = str(Path(__file__).resolve().parents[1] / "artifacts-test")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def encode_image(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    """Encode a uint8 (H, W) or (H, W, C) array as JPEG/PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


# Three NORMAL patients and four PNEUMONIA patients, some with several images.
SYNTHETIC_FILES = {
    "NORMAL": ["IM-0001-0001.jpeg", "IM-0001-0002.jpeg", "NORMAL2-IM-0002-0001.jpeg",
               "IM-0003-0001-0001.jpeg", "IM-0004-0001.jpeg", "NORMAL2-IM-0005-0001-0002.jpeg"],
    "PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_bacteria_2.jpeg", "person2_virus_3.jpeg",
                  "person3_bacteria_4.jpeg", "person4_virus_5.jpeg", "person5_virus_6_1.jpeg",
                  "person6_bacteria_7.jpeg", "person7_virus_8.jpeg"],
}


def synthetic_image(seed: int, size: int = 64) -> np.ndarray:  # 64: the smallest film the upload rules take
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size, size), dtype=np.uint8)  # grayscale, like X-rays


def tiny_examples(count: int = 6, size: int = 40) -> data.Examples:
    """``count`` random grey JPEGs, NORMAL and PNEUMONIA alternating (labels 0, 1, 0, ...)."""
    rng = np.random.default_rng(0)
    paths = np.array([f"chest_xray/train/{data.CLASS_NAMES[index % 2]}/IM-{index:04d}-0001.jpeg"
                      for index in range(count)])
    image_bytes = np.empty(count, dtype=object)
    image_bytes[:] = [encode_image(rng.integers(0, 256, (size, size), dtype=np.uint8)) for _ in range(count)]
    return data.Examples(paths, np.arange(count) % 2, image_bytes)


def tiny_training_setup(head_epochs: int, finetune_epochs: int, count: int):
    """A random-weight 32x32 classifier cut at ``block_15_expand`` and ``count`` images whose
    brightness gives the label away (labels 0, 1, 1, 1, ...): ``(config, model, images, labels)``."""
    import keras

    from helpers import training

    keras.utils.set_random_seed(0)
    cfg = training.TrainingConfig(head_epochs=head_epochs, finetune_epochs=finetune_epochs,
                                  unfreeze_from="block_15_expand", batch_size=4, patience=5)
    model = training.build_and_compile(cfg, weights=None, image_size=32)
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 1, 1] * (count // 4))
    images = (rng.uniform(0, 100, (len(labels), 32, 32, 3)) + 150 * labels[:, None, None, None]).astype(np.float32)
    return cfg, model, images, labels


@pytest.fixture
def synthetic_folder(tmp_path) -> Path:
    """A Kaggle-layout ``chest_xray/{train,test}/{NORMAL,PNEUMONIA}`` tree of tiny images."""
    seed = 0
    for split in ("train", "test"):
        for class_name, names in SYNTHETIC_FILES.items():
            folder = tmp_path / "chest_xray" / split / class_name
            folder.mkdir(parents=True)
            for name in names:
                seed += 1
                (folder / name).write_bytes(encode_image(synthetic_image(seed)))
    return tmp_path


def write_tfrecord_pair(split_dir: Path, examples: data.Examples, order=None) -> None:
    import tensorflow as tf

    split_dir.mkdir(parents=True, exist_ok=True)
    order = range(len(examples)) if order is None else order
    with tf.io.TFRecordWriter(str(split_dir / "images.tfrec")) as images, \
            tf.io.TFRecordWriter(str(split_dir / "paths.tfrec")) as paths:
        for i in order:
            images.write(examples.image_bytes[i])
            paths.write(examples.paths[i].encode())


@pytest.fixture
def real_data_dir() -> Path:
    """``CXR_DATA_DIR`` for integration tests: skip locally without it, fail in CI."""
    value = os.environ.get("CXR_DATA_DIR")
    if value and Path(value).is_dir():
        return Path(value)
    require_tool("Integration tests need the real data: set CXR_DATA_DIR to a folder holding "
                 "ChestXRay2017/ and chest_xray/ (CI uses ../shared/data).", "Integration tests")


def require_tool(reason: str | None, what: str) -> None:
    """A test's tool is missing (``reason``): skip locally, saying what to install; in CI, fail."""
    if reason and os.environ.get("CI"):
        pytest.fail(f"{what} must run in CI: {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture
def chromium():
    """Skip without a browser that can run (the reason says what to install); in CI, fail."""
    require_tool(browser.unavailable_reason(), "Browser tests")


@pytest.fixture(scope="session")
def smoke_chain():
    """Run all numbered notebooks in order (smoke profile) once per session; {name: exception or None}.

    Used by the tests in ``tests/test_notebooks.py`` only, so ``pytest -n 2 --dist loadfile``
    (``make test``) runs the chain once, on one worker, while the other takes every other file.
    """
    from helpers import config, notebooks

    results = {}
    output_dir = config.artifacts_dir("executed")
    for path in notebooks.numbered_notebooks():
        try:
            notebooks.run_notebook(path, "smoke", output_dir)
            results[path.name] = None
        except Exception as error:  # reported by the test of that notebook
            results[path.name] = error
    return results
