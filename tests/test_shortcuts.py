"""Shortcut checks: masks, median fills, changed decisions, heat inside the thorax box."""

import numpy as np
import pytest

from helpers import shortcuts


def films(count=4, size=50, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size, 3)).astype(np.uint8)


def test_border_mask_marks_only_the_outer_band():
    mask = shortcuts.border_mask(100, 100, border=0.1)
    assert mask[:10].all() and mask[-10:].all() and mask[:, :10].all() and mask[:, -10:].all()
    assert not mask[10:90, 10:90].any()
    with pytest.raises(ValueError, match="border"):
        shortcuts.border_mask(100, 100, border=0.5)


def test_blank_border_and_keep_border_only_are_complementary():
    images = films().astype(np.float32)
    blanked = shortcuts.blank_border(images, border=0.2)
    kept = shortcuts.keep_border_only(images, border=0.2)
    mask = shortcuts.border_mask(50, 50, border=0.2)
    medians = np.median(images.reshape(len(images), -1).astype(np.float32), axis=1)
    np.testing.assert_array_equal(blanked[:, ~mask], images[:, ~mask].astype(np.float32))
    np.testing.assert_array_equal(blanked[:, mask], np.broadcast_to(medians[:, None, None], blanked[:, mask].shape))
    np.testing.assert_array_equal(kept[:, mask], images[:, mask])
    assert not np.array_equal(blanked, images)  # the originals are untouched (copies were filled)
    eight_bit = films()
    kept_eight_bit = shortcuts.keep_border_only(eight_bit, border=0.2)
    assert kept_eight_bit.dtype == np.uint8 and np.array_equal(kept_eight_bit[:, mask], eight_bit[:, mask])


def test_marker_mask_covers_the_left_edge_where_the_r_sits():
    mask = shortcuts.marker_mask(100, 100)
    assert mask[5:55, :10].all()  # left edge, top to past mid-height
    assert not mask[40:60, 40:60].any()  # never the lungs
    with pytest.raises(ValueError, match="box"):
        shortcuts.box_mask(10, 10, (0.5, 0.0, 0.4, 1.0))


def test_decisions_changed_counts_flips_in_both_directions():
    images = films(count=4).astype(np.float32)
    labels = np.array([0, 0, 1, 1])
    before = np.array([0.2, 0.8, 0.9, 0.9])

    def predict(batch):  # P(pneumonia) of the films as they are; 1 - that once "changed" (negative pixels)
        return 1.0 - before if batch.min() < 0 else before

    unchanged = shortcuts.decisions_changed(predict, images, labels, threshold=0.5, change=lambda batch: batch)
    assert unchanged["changed"] == 0
    assert unchanged["specificity_before"] == unchanged["specificity_after"] == 0.5
    assert unchanged["recall_before"] == 1.0

    flipped = shortcuts.decisions_changed(predict, images, labels, threshold=0.5,
                                          change=lambda batch: batch - 1000.0)
    assert flipped["changed"] == 4 and flipped["changed_share"] == 1.0
    assert flipped["normal_to_pneumonia"] == 1  # the first normal crosses up
    assert flipped["pneumonia_to_normal"] == 3  # the second normal and both pneumonias cross down
    assert flipped["specificity_after"] == 0.5 and flipped["recall_after"] == 0.0

    known = shortcuts.decisions_changed(predict, images, labels, 0.5, change=lambda batch: batch - 1000.0,
                                        probabilities=before)
    assert known == flipped


def test_heat_inside_box_compares_with_the_area_share():
    heat = np.zeros((3, 100, 100))
    heat[0, 40:60, 40:60] = 1.0  # all inside the thorax
    heat[1, :5, :5] = 1.0  # all in a corner
    result = shortcuts.heat_inside_box(heat, np.array(["TP", "FP", "TN"]))
    assert result["TP"]["heat_inside"] == 1.0 and result["FP"]["heat_inside"] == 0.0
    assert np.isnan(result["TN"]["heat_inside"])  # an all-zero map has no share
    assert result["FN"]["films"] == 0 and np.isnan(result["FN"]["heat_inside"])
    assert 0.6 < result["box_area"] < 0.7


def test_border_only_auc_finds_a_border_that_carries_the_label():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    informative = rng.normal(size=(120, 8)) + labels[:, None] * 2.0
    noise = rng.normal(size=(120, 8))
    strong = shortcuts.border_only_auc(informative[::2], labels[::2], informative[1::2], labels[1::2], bootstrap=50)
    weak = shortcuts.border_only_auc(noise[::2], labels[::2], noise[1::2], labels[1::2], bootstrap=50)
    assert strong["auc"] > 0.95 and strong["ci_low"] > 0.85
    assert 0.2 < weak["auc"] < 0.8
    with pytest.raises(ValueError, match="both classes"):
        shortcuts.border_only_auc(noise, np.zeros(120), noise, labels)
