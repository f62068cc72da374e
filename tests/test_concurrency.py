"""One Screener shared by many threads (the web app serves every session with one): the same answers as alone.

A LiteRT interpreter holds one set of tensors; threads that interleave ``set_tensor`` /
``invoke`` / ``get_tensor`` on it fail or read each other's outputs. The engine gives
each call its own interpreter (:class:`helpers.tflite.InterpreterPool`); these tests
hammer one shared screener from 8 threads and compare every result with the same
film screened alone.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from helpers import screening, tflite
from tests.test_screening import classifier, film_bytes, models  # noqa: F401  (the tiny one-pass models, fixtures)

THREADS = 8
SCREENS_PER_THREAD = 50
FILMS = 40


@pytest.fixture(scope="module")
def films() -> list[tuple[str, bytes]]:
    return [(f"film_{seed:02d}.png", film_bytes(seed)) for seed in range(FILMS)]


def answer(result: screening.ScreeningResult) -> tuple:
    """What must not change between a screen alone and a screen under load."""
    return (result.name, result.accepted, result.decision, result.guard, result.probability,
            None if result.heatmap is None else result.heatmap.tobytes())


def hammer(screener: screening.Screener, films: list[tuple[str, bytes]]) -> list[tuple[int, tuple]]:
    """THREADS threads, each screening SCREENS_PER_THREAD films in its own order, all released at once."""
    start = threading.Barrier(THREADS)

    def worker(thread: int) -> list[tuple[int, tuple]]:
        order = np.random.default_rng(thread).integers(0, len(films), SCREENS_PER_THREAD)
        start.wait()
        return [(int(index), answer(screener.screen_bytes(films[index][1], films[index][0]))) for index in order]

    with ThreadPoolExecutor(THREADS) as executor:
        return [item for part in executor.map(worker, range(THREADS)) for item in part]


@pytest.mark.parametrize("variant, pool_size", [("int8", None), ("int8", 4), ("float32", 3)])
def test_eight_threads_on_one_screener_get_exactly_the_sequential_results(models, films, variant, pool_size):  # noqa: F811
    screener = screening.Screener(screening.OnePassEngine(models[variant], num_threads=1, pool_size=pool_size))
    alone = [answer(screener.screen_bytes(content, name)) for name, content in films]
    under_load = hammer(screener, films)
    assert len(under_load) == THREADS * SCREENS_PER_THREAD >= 400
    mismatches = [index for index, result in under_load if result != alone[index]]
    assert mismatches == []
    assert screener.engine.pool.created <= screener.engine.pool.size


def test_the_pool_never_lends_one_interpreter_to_two_callers(models):  # noqa: F811
    pool = tflite.InterpreterPool(models["int8"], num_threads=1, size=3)
    lent, overlaps, guard = set(), [], threading.Lock()

    def job(interpreter):
        with guard:
            if id(interpreter) in lent:
                overlaps.append(id(interpreter))
            lent.add(id(interpreter))
        threading.Event().wait(0.002)  # hold it a moment so callers overlap
        with guard:
            lent.discard(id(interpreter))
        return id(interpreter)

    with ThreadPoolExecutor(8) as executor:
        used = set(executor.map(lambda _: pool.run(job), range(64)))
    assert overlaps == [] and 1 <= len(used) <= 3 and pool.created <= 3


def test_a_pool_of_no_interpreters_is_refused(models):  # noqa: F811
    with pytest.raises(ValueError, match="at least one interpreter"):
        tflite.InterpreterPool(models["int8"], size=0)
