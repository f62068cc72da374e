"""Screen under load: many threads on one shared screener, compared with each film screened alone.

The web app serves every browser session with one :class:`helpers.screening.Screener`
(``st.cache_resource``), so several users uploading at once means several threads in
one engine. :func:`screen_under_load` measures what they get: whether any answer
differs from the same film screened alone (it must not), the throughput, and the
latency each screen sees while the others run. ``make reliability`` records it in
``reliability.json``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def answer_of(result) -> tuple:
    """What a screen must give whatever else runs: verdict, decision, probability and heat map."""
    return (result.name, result.accepted, result.decision, result.guard, result.probability,
            None if result.heatmap is None else result.heatmap.tobytes())


def screen_under_load(screener, films: list[tuple[str, bytes]], threads: int = 8, screens_per_thread: int = 50,
                      seed: int = 0) -> dict:
    """``threads`` threads, released together, each screening ``screens_per_thread`` of ``films`` in its own order.

    Args:
        screener: anything with ``screen_bytes(content, name)`` (a shared Screener).
        films: ``(name, bytes)`` of the films to draw from.

    Returns:
        ``{"threads", "screens", "mismatches" (answers that differ from the film
        screened alone), "errors" (screens that raised), "throughput_per_s",
        "latency_p50_ms", "latency_p95_ms" (under load), "alone_p50_ms",
        "alone_p95_ms", "interpreters"}``.
    """
    if threads < 1 or screens_per_thread < 1 or not films:
        raise ValueError("screen_under_load needs at least one thread, one screen per thread and one film.")
    alone, alone_ms = [], []
    for name, content in films:
        start = time.perf_counter()
        alone.append(answer_of(screener.screen_bytes(content, name)))
        alone_ms.append((time.perf_counter() - start) * 1e3)
    barrier = threading.Barrier(threads)

    def worker(thread: int) -> list[tuple[int, tuple | None, float]]:
        order = np.random.default_rng([seed, thread]).integers(0, len(films), screens_per_thread)
        barrier.wait()
        done = []
        for index in order:
            name, content = films[index]
            start = time.perf_counter()
            try:
                answer = answer_of(screener.screen_bytes(content, name))
            except Exception as error:  # counted and reported, never hidden: the load test's finding
                answer = ("raised", type(error).__name__, str(error)[:200])
            done.append((int(index), answer, (time.perf_counter() - start) * 1e3))
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as executor:
        screens = [item for part in executor.map(worker, range(threads)) for item in part]
    elapsed = time.perf_counter() - start
    latencies = np.array([milliseconds for _, _, milliseconds in screens])
    errors = [answer for _, answer, _ in screens if answer[0] == "raised"]
    pool = getattr(getattr(screener, "engine", None), "pool", None)
    return {
        "threads": threads, "screens": len(screens), "films": len(films),
        "mismatches": sum(answer != alone[index] for index, answer, _ in screens),
        "errors": len(errors), "first_error": errors[0][2] if errors else None,
        "throughput_per_s": len(screens) / elapsed,
        "latency_p50_ms": float(np.percentile(latencies, 50)), "latency_p95_ms": float(np.percentile(latencies, 95)),
        "alone_p50_ms": float(np.percentile(alone_ms, 50)), "alone_p95_ms": float(np.percentile(alone_ms, 95)),
        "interpreters": None if pool is None else pool.created,
    }
