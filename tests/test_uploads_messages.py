"""Refusal messages print enough digits to show why: "60.605 > 60.601", never "60.6 > 60.6"."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import guard, ood, uploads
from helpers.errors import distinct_pair


@pytest.mark.parametrize("value, limit, decimals, expected", [
    (60.6049, 60.6011, 1, ("60.605", "60.601")),
    (60.64, 60.51, 1, ("60.6", "60.5")),  # already apart: the usual digits
    (25.3, 25.0, 0, ("25.3", "25.0")),
    (0.4999, 0.5, 2, ("0.4999", "0.5000")),
    (60.6, 60.6, 1, ("60.6", "60.6")),  # equal numbers print equal, at the usual digits
])
def test_distinct_pair_adds_decimals_until_the_numbers_differ(value, limit, decimals, expected):
    assert distinct_pair(value, limit, decimals) == expected


def test_distinct_pair_keeps_the_order_of_the_numbers():
    rng = np.random.default_rng(0)
    for value, limit in rng.uniform(0, 100, (500, 2)):
        shown = distinct_pair(value, limit, 1)
        assert (float(shown[0]) > float(shown[1])) == (value > limit) or value == limit


def _one_feature_detector(threshold: float) -> ood.OODDetector:
    """Distances are |x| (one feature, unit variance), so a feature row sets the distance exactly."""
    return ood.OODDetector(ood.FeatureDistribution(np.zeros(1), np.eye(1)), distance_threshold=threshold)


def test_the_feature_distance_sentence_shows_the_inequality():
    detector = _one_feature_detector(60.6011)
    grey = np.full((2, 8, 8, 3), 100, dtype=np.uint8)
    refused, accepted = detector.check(grey, np.array([[60.6049], [60.5990]]))
    assert "feature distance 60.605 > 60.601" in refused.message  # was "60.6 > 60.6"
    assert "feature distance 60.599 <= 60.601" in accepted.message
    far = detector.check(grey[:1], np.array([[75.0]]))[0]
    assert "feature distance 75.0 > 60.6" in far.message  # apart already: one decimal, as before


def test_the_gate_score_and_colour_sentences_show_the_inequality():
    two_classes = guard.LinearGate(guard.XRAY_CLASSES, np.zeros(1, np.float32), np.ones(1, np.float32),
                                   np.zeros((1, 2), np.float32), np.zeros(2, np.float32), 0.5021, 1)
    detector = _one_feature_detector(10.0).with_gates(two_classes, two_classes)
    xray = detector._verdict(guard.NOT_XRAY, 3.0, 1.0, xray_probability=0.5003)
    assert "X-ray score 0.500, below 0.502" in xray.message  # was "0.50, below 0.50"
    upright = detector._verdict(guard.WRONG_WAY_ROUND, 3.0, 1.0, upright_probability=0.5003, orientation="inverted")
    assert "upright score 0.500, below 0.502" in upright.message
    colour = detector._verdict(guard.NOT_XRAY, 25.3, 1.0)
    assert "colourfulness 25.3, chest X-rays are grey: at most 25.0" in colour.message  # was "25 ... at most 25"


def test_upload_size_refusals_show_the_inequality(monkeypatch):
    monkeypatch.setattr(uploads, "MAX_UPLOAD_BYTES", 10 * 2**20)
    with pytest.raises(uploads.ImageRejected, match=r"big\.png is 10\.1 MB; the limit is 10\.0 MB"):
        uploads.inspect_image_bytes(b"\0" * int(10.1 * 2**20), "big.png")
    monkeypatch.setattr(uploads, "MAX_IMAGE_PIXELS", 50_000)
    from tests.test_bombs import png_bomb

    with pytest.raises(uploads.ImageRejected, match=r"wide\.png is 251x200 pixels \(0\.0502 MP\); the limit is "
                                                    r"0\.0500 MP"):
        uploads.inspect_image_bytes(png_bomb(251, 200), "wide.png")
