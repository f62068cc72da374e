"""Notebook 01's counts: which published copy of ChestXRay2017 the data is, for either download."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import data, eda


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
