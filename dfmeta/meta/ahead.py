"""Recover the next epochs' tasks in a background thread while the current epochs train (TGR's ``rec_overlap``).

An epoch's teachers and recovery seeds do not depend on training, so a worker can recover the next batch of epochs'
tasks while the meta-model trains on the current one; the epoch that needs them waits for the worker. The tasks are
the ones the epoch would have recovered itself: the worker runs with the caller's torch thread count (on CUDA on a
stream of its own, the tasks handed over with that stream's work ordered before their use) and nothing it computes
depends on the training thread. On a 2-core CPU, recovery and replay then each take a core.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import torch

from dfmeta.recover import RecoveredTask

Batch = dict[int, list[RecoveredTask]]
"""Recovered tasks by epoch."""


class Cancelled(Exception):
    """Raised inside the worker's recovery (from its per-step callback) to stop it."""


class Ahead:
    """One background recovery at a time: :meth:`start` a batch of epochs, :meth:`take` it when the first is due.

    ``recover(epochs, on_step)`` recovers the tasks of ``epochs`` (a :data:`Batch`), calling ``on_step(k)`` after each
    generator step (:func:`dfmeta.recover.recover_tasks`' callback; raising there stops the work)."""

    def __init__(self, recover: Callable[[list[int], Callable[[int], None]], Batch], device: torch.device) -> None:
        self.recover, self.device = recover, torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.thread: threading.Thread | None = None
        self.epochs: list[int] = []
        self.stop = threading.Event()
        self.result: Batch | None = None
        self.error: BaseException | None = None
        self.work_s = 0.0
        """Seconds the last taken batch's recovery took in the worker (off the training thread's path)."""

    @property
    def busy(self) -> bool:
        """A batch has been started and not yet taken or cancelled."""
        return self.thread is not None

    def start(self, epochs: list[int]) -> None:
        """Begin recovering the tasks of ``epochs`` in the background."""
        if self.busy:
            raise RuntimeError("Ahead.start: a batch is already pending")
        self.epochs, self.result, self.error = list(epochs), None, None
        self.stop.clear()
        if self.stream is not None:  # what the training stream queued so far (e.g. the zoo's weights) comes first
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        self.thread = threading.Thread(target=self._work, args=(torch.get_num_threads(),), daemon=True,
                                       name="dfmeta-recover-ahead")
        self.thread.start()

    def _work(self, threads: int) -> None:
        torch.set_num_threads(threads)  # a new thread starts at torch's default count
        t0 = time.perf_counter()
        try:
            if self.stream is not None:
                with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
                    self.result = self.recover(self.epochs, self._check)
            else:
                self.result = self.recover(self.epochs, self._check)
        except Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the training thread by take()
            self.error = e
        self.work_s = time.perf_counter() - t0

    def _check(self, _k: int) -> None:
        if self.stop.is_set():
            raise Cancelled

    def take(self, epochs: list[int]) -> Batch | None:
        """The tasks of ``epochs`` once the worker has them (waiting for it), or None when it holds another batch
        (that one is cancelled) or none. An error in the worker is raised here."""
        if not self.busy:
            return None
        if list(epochs) != self.epochs:
            self.cancel()
            return None
        assert self.thread is not None
        self.thread.join()
        self.thread = None
        if self.error is not None:
            raise self.error
        result, self.result = self.result, None
        assert result is not None
        if self.stream is not None:  # the tasks were made on the worker's stream; the training stream uses them
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            for tasks in result.values():
                for t in tasks:
                    for x in (t.images, t.labels, t.logits):
                        x.record_stream(current)
        return result

    def cancel(self) -> None:
        """Stop a pending batch (at its next generator step) and wait for the worker."""
        if self.thread is not None:
            self.stop.set()
            self.thread.join()
            self.thread, self.result, self.error = None, None, None


__all__ = ["Ahead", "Batch", "Cancelled"]
