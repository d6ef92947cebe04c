"""Benchmark: task recovery of m Conv4 teachers (150 images each), batched (one vmapped computation) vs one by one;
and the Fisher embedding of the recovered tasks (grouping probe).

    python benchmarks/bench_recover.py [--device cuda] [--teachers 4] [--steps 10] [--size 32] [--threads 2]
                                       [--fisher conv4 resnet34]

Prints a table: mode, teachers, images per teacher, steps, seconds, ms per step, ms per teacher-step.
"""

from __future__ import annotations

import argparse
import time

import torch

from dfmeta.grouping import GroupingConfig, fisher_embeddings, load_probe
from dfmeta.nets import build
from dfmeta.recover import RecoveryConfig, recover_tasks
from dfmeta.zoo.format import Teacher


def conv4_teacher(i: int, size: int, n_cls: int = 5) -> Teacher:
    """A random Conv4 teacher with running statistics from a few train-mode passes."""
    torch.manual_seed(i)
    m = build("conv4", n_cls, size, 3, "running").train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.rand(32, 3, size, size))
    return Teacher(str(i), "conv4", size, 3, (0.5,) * 3, (0.25,) * 3, "bench", [f"c{j}" for j in range(n_cls)],
                   {k: v.clone() for k, v in m.state_dict().items()})


def timed(fn, dev: torch.device) -> tuple[float, object]:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t = time.perf_counter()
    out = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--teachers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--fisher", nargs="*", default=["conv4"], help="probe architectures to time (random weights)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    teachers = [conv4_teacher(i, a.size) for i in range(a.teachers)]
    idx = list(range(a.teachers))
    cfg = RecoveryConfig(steps=a.steps, per_class=a.per_class)
    n = 5 * a.per_class
    recover_tasks(teachers, idx[:1], RecoveryConfig(steps=1, per_class=a.per_class), dev, 0)  # warm-up
    print(f"device: {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, image size {a.size}")
    print("| mode | teachers | images/teacher | steps | seconds | ms/step | ms/teacher-step |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rows["batched"], tasks = timed(lambda: recover_tasks(teachers, idx, cfg, dev, 0), dev)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    rows["one by one"], _ = timed(lambda: [recover_tasks(teachers, [i], cfg, dev, 0) for i in idx], dev)
    for mode, sec in rows.items():
        print(f"| {mode} | {a.teachers} | {n} | {a.steps} | {sec:.2f} | {sec / a.steps * 1e3:.1f} | "
              f"{sec / a.steps / a.teachers * 1e3:.1f} |")
    print(f"batched speed-up: {rows['one by one'] / rows['batched']:.2f}x; peak GPU memory (batched): {peak:.2f} GiB")
    for arch in a.fisher:
        probe, _ = load_probe(GroupingConfig(fallback_probe=arch), dev, a.size)
        fisher_embeddings(tasks[:1], probe, dev)  # warm-up
        sec, _ = timed(lambda: fisher_embeddings(tasks, probe, dev), dev)
        per = sec / len(tasks)
        print(f"Fisher ({arch} probe, {n} images/task): {per:.3f} s per task -> 100 tasks in {100 * per:.0f} s")


if __name__ == "__main__":
    main()
