"""The micro-batcher: gathers concurrent items, never mixes models, survives a failing call, stops cleanly."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.deploy.batching import BatcherStopped, MicroBatcher


def test_concurrent_items_are_gathered_into_batches():
    calls = []
    batcher = MicroBatcher(lambda model, items: calls.append(len(items)) or [x * 2 for x in items],
                           max_batch=8, max_wait_ms=50, name="test-batcher")
    assert any(t.name == "test-batcher" and t.daemon for t in threading.enumerate())
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda x: batcher.submit("m", x).result(5), range(40)))
    assert results == [x * 2 for x in range(40)]
    assert max(calls) <= 8 and sum(calls) == 40 and len(calls) < 40  # some really batched
    assert batcher.stop() and not batcher.alive


def test_the_wait_is_bounded_after_the_first_item():
    batcher = MicroBatcher(lambda model, items: items, max_batch=32, max_wait_ms=20)
    started = time.perf_counter()
    assert batcher.submit("m", 1).result(5) == 1
    assert time.perf_counter() - started < 0.5
    batcher.stop()


def test_a_batch_holds_one_model_only():
    seen = []
    gate = threading.Event()

    def fn(model, items):
        gate.wait(5)
        seen.append((model, list(items)))
        return items

    batcher = MicroBatcher(fn, max_batch=16, max_wait_ms=100)
    old, new = object(), object()
    futures = [batcher.submit(old if i % 2 else new, i) for i in range(10)]
    gate.set()
    assert [f.result(5) for f in futures] == list(range(10))
    for model, items in seen:
        assert all((i % 2 == 1) == (model is old) for i in items)
    batcher.stop()


def test_a_failing_call_fails_only_its_own_items_and_the_worker_goes_on():
    def fn(model, items):
        if model == "bad":
            raise ValueError("broken model")
        return items

    batcher = MicroBatcher(fn, max_batch=4, max_wait_ms=30)
    bad, good = batcher.submit("bad", 1), batcher.submit("good", 2)
    with pytest.raises(ValueError, match="broken model"):
        bad.result(5)
    assert good.result(5) == 2
    assert batcher.submit("good", 3).result(5) == 3  # still alive
    wrong = MicroBatcher(lambda model, items: [], max_batch=2, max_wait_ms=1)
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        wrong.submit("m", 1).result(5)
    assert batcher.stop() and wrong.stop()


def test_stop_serves_what_was_submitted_and_refuses_new_items():
    started, release = threading.Event(), threading.Event()
    sizes = []

    def fn(model, items):
        started.set()
        release.wait(5)
        sizes.append(len(items))
        return items

    batcher = MicroBatcher(fn, max_batch=1, max_wait_ms=0, on_batch=lambda m, n, s: 1 / 0)  # metrics errors ignored
    first = batcher.submit("m", 1)
    started.wait(5)
    queued = batcher.submit("m", 2)
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    time.sleep(0.05)
    with pytest.raises(BatcherStopped):
        batcher.submit("m", 3)
    release.set()
    stopper.join(5)
    assert first.result(5) == 1 and queued.result(5) == 2 and not batcher.alive  # what came before stop is served


def test_on_batch_reports_each_call():
    told = []
    batcher = MicroBatcher(lambda model, items: items, max_batch=4, max_wait_ms=1,
                           on_batch=lambda model, size, seconds: told.append((model, size)))
    batcher.submit("m", 1).result(5)
    batcher.stop()
    assert told == [("m", 1)] and batcher.batches == 1
