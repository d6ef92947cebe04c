"""The background recovery (dfmeta.meta.ahead): hand-over, cancellation, errors."""

from __future__ import annotations

import threading
import time

import pytest

from dfmeta.meta.ahead import Ahead


def slow(steps: int, started: threading.Event | None = None, done: list | None = None):
    """A fake recovery of ``steps`` steps of 10 ms, calling on_step after each (and counting them in ``done``)."""
    def recover(epochs, on_step):
        if started is not None:
            started.set()
        for _ in range(steps):
            time.sleep(0.01)
            if done is not None:
                done.append(1)
            on_step(1)
        return {e: [f"task of {e}"] for e in epochs}
    return recover


def test_take_waits_for_the_started_batch():
    ahead = Ahead(slow(3), "cpu")
    assert ahead.take([1]) is None  # nothing started
    ahead.start([4, 5])
    assert ahead.busy
    assert ahead.take([4, 5]) == {4: ["task of 4"], 5: ["task of 5"]}
    assert not ahead.busy and ahead.work_s >= 0.03


def test_cancel_stops_the_worker_at_its_next_step():
    started, done = threading.Event(), []
    ahead = Ahead(slow(100_000, started, done), "cpu")  # about 17 minutes unless stopped
    ahead.start([2])
    assert started.wait(5)
    ahead.cancel()
    assert len(done) < 100_000  # the worker stopped early, it did not run to the end
    assert not ahead.busy and not any(t.name == "dfmeta-recover-ahead" for t in threading.enumerate())


def test_another_batch_is_cancelled_and_not_handed_over():
    ahead = Ahead(slow(100_000), "cpu")
    ahead.start([3])
    assert ahead.take([2]) is None and not ahead.busy
    ahead.start([2])  # free for the next one
    ahead.cancel()


def test_an_error_in_the_worker_reaches_the_caller():
    def broken(epochs, on_step):
        raise ValueError("teacher file unreadable")
    ahead = Ahead(broken, "cpu")
    ahead.start([1])
    with pytest.raises(ValueError, match="unreadable"):
        ahead.take([1])
    assert not ahead.busy


def test_one_batch_at_a_time():
    ahead = Ahead(slow(100_000), "cpu")
    ahead.start([1])
    with pytest.raises(RuntimeError, match="pending"):
        ahead.start([2])
    ahead.cancel()


def test_the_worker_runs_with_the_callers_thread_count():
    import torch
    seen = []

    def recover(epochs, on_step):
        seen.append(torch.get_num_threads())
        return {}
    before = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            ahead = Ahead(recover, "cpu")
            ahead.start([1])
            ahead.take([1])
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 3]
