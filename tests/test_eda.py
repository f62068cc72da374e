"""Notebook 01's counts: which published copy of ChestXRay2017 the data is, for either download.

Notebook 01's checked cell (``# NBVAL_CHECK_OUTPUT``) must print the same text with the
Kaggle / Mendeley folders (5,216 training films) and with the public TFRecord pair that
``data.load_examples`` downloads without ``CXR_DATA_DIR`` (5,232: the 16 official "val"
films sit in its training split). The tests below run that cell's source on both, without
downloading anything: the public pair is simulated by adding 16 films to the training split.
"""

from __future__ import annotations

import contextlib
import io

import nbformat
import numpy as np
import pytest

from helpers import config, data, eda, notebooks

NOTEBOOK = config.PROJECT_ROOT / "notebooks" / "01_eda.ipynb"
OFFICIAL_VAL_FILMS = {"NORMAL": 8, "PNEUMONIA": 8}  # the official "val" folder, in the public pair's train split
KAGGLE_COPY = "official train and test splits (as in the Kaggle / Mendeley folders)"
PUBLIC_COPY = "keras.io public TFRecord pair (train also holds the 16 official val films)"


def examples_with(counts: dict[str, int], split: str) -> data.Examples:
    """Examples with ``counts`` films per class, one patient each (no image bytes needed for counting)."""
    paths, labels = [], []
    for label, name in enumerate(data.CLASS_NAMES):
        for index in range(counts[name]):
            stem = f"IM-{index:04d}-0001" if name == "NORMAL" else f"person{index}_bacteria_{index}"
            paths.append(f"chest_xray/{split}/{name}/{stem}.jpeg")
            labels.append(label)
    return data.Examples(np.array(paths), np.array(labels), np.empty(len(paths), dtype=object))


@pytest.mark.parametrize("copy", list(eda.PUBLISHED_COPIES))
def test_each_published_copy_is_recognised_from_its_counts(copy):
    published = eda.PUBLISHED_COPIES[copy]
    splits = {split: examples_with({name: published[(split, name)] for name in data.CLASS_NAMES}, split)
              for split in data.SPLITS}
    counts = eda.class_table(splits)
    assert eda.published_copy(counts) == copy
    assert counts.loc["test", "images"].tolist() == [234, 390]  # what notebook 01 checks, the same in both


def test_a_subset_is_no_published_copy():
    splits = {split: examples_with({"NORMAL": 10, "PNEUMONIA": 30}, split) for split in data.SPLITS}
    assert eda.published_copy(eda.class_table(splits)) is None


@pytest.mark.integration
def test_the_configured_data_is_a_published_copy(real_data_dir):
    splits = {split: data.load_examples(split, real_data_dir) for split in data.SPLITS}
    assert eda.published_copy(eda.class_table(splits)) is not None


def checked_cell():
    """Notebook 01's ``# NBVAL_CHECK_OUTPUT`` cell: (source, the committed output text)."""
    document = nbformat.read(NOTEBOOK, as_version=4)
    cells = [cell for cell in document.cells if notebooks.is_checked_cell(cell)]
    if len(cells) != 1:
        raise ValueError(f"{NOTEBOOK.name} should hold one checked cell, found {len(cells)}.")
    committed = "".join(output.get("text", "") for output in cells[0].outputs if output.output_type == "stream")
    return cells[0].source, committed


def run_checked_cell(counts) -> str:
    """What the checked cell prints for ``counts`` (an ``eda.class_table``)."""
    source, _ = checked_cell()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, str(NOTEBOOK), "exec"), {"eda": eda, "counts": counts})  # the notebook's own cell
    return printed.getvalue()


def with_extra_training_films(train: data.Examples, per_class: dict[str, int]) -> data.Examples:
    """``train`` plus ``per_class`` films named like the official val split's (no image bytes: only counted)."""
    paths, labels = list(train.paths), list(train.labels)
    for label, name in enumerate(data.CLASS_NAMES):
        for index in range(per_class[name]):
            stem = f"NORMAL2-IM-9{index:03d}-0001" if name == "NORMAL" else f"person9{index:03d}_bacteria_9{index:03d}"
            paths.append(f"chest_xray/train/{name}/{stem}.jpeg")
            labels.append(label)
    order = np.argsort(paths)
    image_bytes = np.empty(len(paths), dtype=object)
    image_bytes[: len(train)] = train.image_bytes
    return data.Examples(np.array(paths)[order], np.array(labels, dtype=np.int64)[order], image_bytes[order])


def test_the_public_download_is_the_kaggle_copy_plus_the_official_val_films():
    kaggle, public = eda.PUBLISHED_COPIES[KAGGLE_COPY], eda.PUBLISHED_COPIES[PUBLIC_COPY]
    for name in data.CLASS_NAMES:
        assert public[("train", name)] == kaggle[("train", name)] + OFFICIAL_VAL_FILMS[name]
        assert public[("test", name)] == kaggle[("test", name)]
    assert sum(public[("train", name)] for name in data.CLASS_NAMES) == 5232
    assert sum(kaggle[("train", name)] for name in data.CLASS_NAMES) == 5216


@pytest.mark.parametrize("copy", [KAGGLE_COPY, PUBLIC_COPY])
def test_the_checked_cell_says_published_and_prints_the_same_test_images_for_either_copy(copy):
    published = eda.PUBLISHED_COPIES[copy]
    splits = {split: examples_with({name: published[(split, name)] for name in data.CLASS_NAMES}, split)
              for split in data.SPLITS}
    printed = run_checked_cell(eda.class_table(splits)).splitlines()
    committed = checked_cell()[1].splitlines()
    assert printed[0] == committed[0] == "a published copy of ChestXRay2017: True"
    assert [line.split()[:2] for line in printed[3:]] == [line.split()[:2] for line in committed[3:]]  # class, images


@pytest.mark.integration
@pytest.mark.parametrize("copy", [KAGGLE_COPY, PUBLIC_COPY])
def test_the_checked_cell_prints_its_committed_output_for_either_download(real_data_dir, copy):
    splits = {split: data.load_examples(split, real_data_dir) for split in data.SPLITS}
    counts = eda.class_table(splits)
    if eda.published_copy(counts) != KAGGLE_COPY:
        pytest.skip(f"the configured data is {eda.published_copy(counts)!r}: this test adds the val films to Kaggle's")
    if copy == PUBLIC_COPY:
        splits["train"] = with_extra_training_films(splits["train"], OFFICIAL_VAL_FILMS)
        counts = eda.class_table(splits)
    assert eda.published_copy(counts) == copy
    assert run_checked_cell(counts) == checked_cell()[1], "re-run notebook 01 and `python -m helpers.notebooks --strip`"
