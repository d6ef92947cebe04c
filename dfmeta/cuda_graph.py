"""Replay a fixed-shape step as a captured CUDA graph: no per-kernel launch cost (the steps here are thousands of
small kernels).

:class:`Graphed` wraps ``fn(*tensors) -> tuple of tensors``. Its first ``warmup`` calls run ``fn`` eagerly (on a side
stream, PyTorch's rule before a capture); the next call captures ``fn`` on fixed input buffers and every call from then
on copies its inputs into those buffers and replays the graph. Every call is a real step (the warm-up ones too), so a
graphed loop computes what the eager loop computes. Anything ``fn`` changes in place (parameters, optimizer state)
must keep its storage, and a replay's outputs are overwritten by the next call. A capture restricts only its own
thread (``thread_local``): another thread, e.g. TGR's background recovery, may go on synchronising meanwhile. Off the GPU, when disabled, or when a
capture fails (reported once; the step then runs eagerly) it is a plain call.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from dfmeta.errors import reason


class Graphed:
    """``fn`` replayed as a CUDA graph after ``warmup`` eager calls (see the module docstring)."""

    def __init__(self, fn: Callable[..., Sequence[Tensor]], device: torch.device, enabled: bool = True,
                 warmup: int = 3, name: str = "step") -> None:
        self.fn, self.warmup, self.name = fn, warmup, name
        self.enabled = enabled and torch.device(device).type == "cuda"
        self.device = torch.device(device)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[Tensor] = []
        self.outputs: Sequence[Tensor] = ()

    def __call__(self, *inputs: Tensor) -> Sequence[Tensor]:
        if not self.enabled:
            return self.fn(*inputs)
        if self.graph is None and self.calls < self.warmup:
            self.calls += 1
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                out = self.fn(*inputs)
            current.wait_stream(side)
            return out
        if self.graph is None:
            self.inputs = [x.clone() for x in inputs]
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self.outputs = self.fn(*self.inputs)
            except Exception as e:  # noqa: BLE001 - an uncapturable step still runs, eagerly
                print(f"warning: CUDA-graph capture of the {self.name} failed ({reason(e)}); running it eagerly",
                      flush=True)
                self.enabled, self.inputs, self.outputs = False, [], ()
                return self.fn(*inputs)
            self.graph = graph
        elif [x.shape for x in inputs] != [x.shape for x in self.inputs]:
            return self.fn(*inputs)  # another shape than the captured one: eager
        for buf, x in zip(self.inputs, inputs):
            buf.copy_(x)
        self.graph.replay()
        return self.outputs


__all__ = ["Graphed"]
