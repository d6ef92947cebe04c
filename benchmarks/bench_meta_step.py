"""Time one IGR step (m tasks x n images, Conv4) per mode and one MAML meta-batch (replay) on a device.

    python benchmarks/bench_meta_step.py [--device cuda] [--repeats 3] [--image-size 32]
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace
from typing import Callable

import torch

from dfmeta.memory import keep_freed_memory
from dfmeta.meta import MemoryBank, igr_gradient, maml_loss
from dfmeta.nets import build, params_of
from dfmeta.config import plain


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float, float]:
    """(mean s, min s, peak GiB on CUDA) over ``repeats`` calls after one warm-up call; nan on out-of-memory."""
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        return float("nan"), float("nan"), float("nan")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    return sum(times) / len(times), min(times), peak


def main() -> None:
    malloc = "malloc keeps freed memory" if keep_freed_memory() else "system malloc"  # as the dfmeta CLI does
    ap = argparse.ArgumentParser(description=plain(__doc__.splitlines()[0]))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--tasks", type=int, default=4, help="m, tasks per IGR step")
    ap.add_argument("--images", type=int, default=150, help="recovered images per task")
    ap.add_argument("--meta-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev, s, n_way = torch.device(a.device), a.image_size, 5
    torch.manual_seed(0)
    model = build("conv4", n_way, s, 3, "batch").to(dev)
    params = {k: v.requires_grad_() for k, v in params_of(model).items()}
    xs = torch.randn(a.tasks, a.images, 3, s, s, device=dev)
    logits = torch.randn(a.tasks, a.images, n_way, device=dev)
    labels = torch.arange(n_way, device=dev).repeat_interleave(a.images // n_way).expand(a.tasks, -1)
    rows = []
    for mode in ("off", "first", "second"):
        t = timed(lambda: igr_gradient(model, params, xs, logits, labels, beta=1e-3, mode=mode), dev, a.repeats)
        rows.append((f"IGR {mode}", f"m={a.tasks} x {a.images} img", *t))
    bank = MemoryBank()
    for teacher in range(20):
        bank.add(SimpleNamespace(images=torch.rand(a.images, 3, s, s, device=dev), teacher=teacher,
                                 labels=torch.arange(n_way, device=dev).repeat_interleave(a.images // n_way)))
    gen = torch.Generator(dev).manual_seed(0)
    for k_shot in (1, 5):
        t = timed(lambda: bank.sample_tasks(a.meta_batch, n_way, k_shot, 15, gen), dev, a.repeats)
        rows.append(("bank sample", f"{a.meta_batch} x {n_way}w{k_shot}s15q", *t))
        batch = bank.sample_tasks(a.meta_batch, n_way, k_shot, 15, gen)
        for first_order in (False, True):
            def step() -> None:
                loss, _ = maml_loss(model, params, *batch, inner_lr=0.01, inner_steps=5, first_order=first_order)
                loss.backward()
            t = timed(step, dev, a.repeats)
            rows.append((f"MAML {'1st' if first_order else '2nd'}-order", f"{a.meta_batch} x {n_way}w{k_shot}s15q", *t))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}, Conv4 {s}px, torch {torch.__version__}, {a.repeats} repeats after 1 warm-up, {malloc}")
    print(f"{'step':<16} {'size':<22} {'mean ms':>10} {'min ms':>10} {'peak GiB':>9}")
    for r in rows:
        print(f"{r[0]:<16} {r[1]:<22} {r[2] * 1e3:>10.1f} {r[3] * 1e3:>10.1f} {r[4]:>9.2f}")


if __name__ == "__main__":
    main()
