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

import pytest

from helpers import concurrency, screening, tflite
from tests.test_screening import classifier, film_bytes, models  # noqa: F401  (the tiny one-pass models, fixtures)

THREADS = 8
SCREENS_PER_THREAD = 50
FILMS = 40


@pytest.fixture(scope="module")
def films() -> list[tuple[str, bytes]]:
    return [(f"film_{seed:02d}.png", film_bytes(seed)) for seed in range(FILMS)]


@pytest.mark.parametrize("variant, pool_size", [("int8", None), ("int8", 4), ("float32", 3)])
def test_eight_threads_on_one_screener_get_exactly_the_sequential_results(models, films, variant, pool_size):  # noqa: F811
    screener = screening.Screener(screening.OnePassEngine(models[variant], num_threads=1, pool_size=pool_size))
    load = concurrency.screen_under_load(screener, films, THREADS, SCREENS_PER_THREAD)
    assert load["screens"] == THREADS * SCREENS_PER_THREAD >= 400
    assert (load["mismatches"], load["errors"]) == (0, 0), load["first_error"]
    assert 1 <= load["interpreters"] <= screener.engine.pool.size


def test_the_load_test_counts_what_differs_and_what_raises(films):
    class Flaky:  # answers differ on every other call, and one call in three raises
        calls = 0

        def screen_bytes(self, content, name):
            Flaky.calls += 1
            if Flaky.calls > len(films) and Flaky.calls % 3 == 0:
                raise RuntimeError("There is at least 1 reference to internal data in the interpreter")
            return screening.ScreeningResult(name, True, "", probability=float(Flaky.calls % 2))

    load = concurrency.screen_under_load(Flaky(), films, threads=2, screens_per_thread=30)
    assert load["errors"] > 0 and load["mismatches"] >= load["errors"] and "internal data" in load["first_error"]


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
