"""1,000 damaged uploads through the screening entry point: a verdict or a refusal, never an exception."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import fuzz, screening
from tests.test_screening import classifier, grey_films, models  # noqa: F401  (fixtures)


def test_mutations_are_seeded_and_cover_every_kind():
    films = [grey_films(1, seed)[0, ..., 0].astype(np.uint8) for seed in (1, 2)]
    first, second = fuzz.corpus(films, 50, seed=3), fuzz.corpus(films, 50, seed=3)
    assert [content for _, _, content in first] == [content for _, _, content in second]
    assert {kind for _, kind, _ in first} == set(fuzz.MUTATIONS)


def test_a_lying_png_header_keeps_a_valid_checksum():
    import io

    from PIL import Image

    content = fuzz.encodings(np.zeros((70, 80), np.uint8))["PNG"]
    with Image.open(io.BytesIO(fuzz._png_with_size(content, 60_000, 100))) as image:
        assert image.size == (60_000, 100)  # the header parses: only the size lies


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt TIFF tags it survives
def test_a_thousand_damaged_inputs_end_in_a_verdict_or_a_refusal(models):  # noqa: F811
    films = [grey_films(1, seed)[0, ..., 0].astype(np.uint8) for seed in (4, 5, 6)]
    inputs = fuzz.corpus(films, 1000, seed=0)
    report = fuzz.run(screening.Screener(screening.OnePassEngine(models["float32"])), inputs)
    assert report.inputs == 1000 and report.unhandled == 0, report.failures[:5]
    assert report.decided + report.refused == 1000 and report.refused > 300
    assert report.slowest_s < 2.0, report.slowest_input
