"""Benchmark: few-shot evaluation (Conv4, 5-way, 15 queries, 10 fine-tuning steps) on this machine.

    python benchmarks/bench_evaluate.py [--device cuda] [--episodes 600] [--shots 1 5] [--episode-batch 0]

Prints one table row per setting: episodes, seconds, episodes per second. Target on one H100: 600 five-way
5-shot episodes in at most 2 s (the authors' code needs about 30 s).
"""

from __future__ import annotations

import argparse
import time

import torch

from dfmeta.data.embedded import embedded_split
from dfmeta.evaluate import Evaluator
from dfmeta.memory import keep_freed_memory
from dfmeta.nets import build, params_of
from dfmeta.config import plain


def main() -> None:
    malloc = "malloc keeps freed memory" if keep_freed_memory() else "system malloc"  # as the dfmeta CLI does
    ap = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--shots", type=int, nargs="+", default=[5, 1])
    ap.add_argument("--episode-batch", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    dev = torch.device(a.device)
    split = embedded_split("test", per_class=600)  # CIFAR-FS-sized: 32 px, 600 images per class
    torch.manual_seed(0)
    model = build("conv4", 5, 32, 3, "batch")
    params = params_of(model)
    print(f"device: {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, {malloc}")
    print(f"| shots | episodes | episode batch | seconds (best of {a.repeats}) | episodes/s |")
    print("|---|---|---|---|---|")
    for k in a.shots:
        ev = Evaluator(split, 5, k, 15, a.episodes, 0, 10, 0.01, dev, a.episode_batch or None)
        ev(model, params)  # warm-up (kernels, allocator)
        best = float("inf")
        for _ in range(a.repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            ev(model, params)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        print(f"| {k} | {a.episodes} | {ev.episode_batch} | {best:.2f} | {a.episodes / best:.1f} |")


if __name__ == "__main__":
    main()
