"""Diagnostic: how good are recovered tasks? For each setting, recover tasks from real teachers and measure the stored
images (as the memory bank keeps them: no augmentation) with their own teacher.

    python benchmarks/recovery_quality.py --zoo ZOO [--teachers 0 1] [--steps 200] [--nf 64] [--per-class 30]
                                          [--settings default no-augment no-bn] [--threads 2]

Columns: the best recovery loss during optimisation (on augmented images when augmentation is on), the teacher's
cross-entropy and BN-statistics term on the stored images, the teacher's accuracy on them against their labels, its
mean confidence, and the pixel mean / std. Recorded: docs/results/cpu-2026-11-27.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from dfmeta.recover import RecoveryConfig, recover_tasks, recovery_loss
from dfmeta.zoo import load_zoo
from dfmeta.config import plain

SETTINGS = {  # name: RecoveryConfig fields over the chosen size
    "default": {},
    "no-augment": {"augment": False},
    "no-bn": {"bn_weight": 0.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--teachers", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--nf", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    zoo = load_zoo(a.zoo)
    dev = torch.device(a.device)
    print(f"zoo {a.zoo}, teachers {a.teachers}, {a.steps} steps, nf {a.nf}, {a.per_class} images per class\n")
    print("| setting | teacher | best loss | CE (stored) | BN term (stored) | teacher acc | confidence | pixel mean / std "
          "| seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in a.settings:
        cfg = RecoveryConfig(steps=a.steps, nf=a.nf, per_class=a.per_class, **SETTINGS[name])
        t0 = time.perf_counter()
        tasks = recover_tasks(zoo.teachers, a.teachers, cfg, dev, a.seed)
        sec = time.perf_counter() - t0
        for task in tasks:
            ce, bn = recovery_loss(zoo.teachers[task.teacher], task.images, task.labels)
            probs = task.logits.softmax(-1)
            acc = float((probs.argmax(-1) == task.labels).float().mean())
            print(f"| {name} | {zoo.teachers[task.teacher].id} | {task.loss:.2f} | {ce:.3f} | {bn:.2f} | {acc:.2f} | "
                  f"{float(probs.max(-1).values.mean()):.2f} | {float(task.images.mean()):.3f} / "
                  f"{float(task.images.std()):.3f} | {sec:.0f} |", flush=True)


if __name__ == "__main__":
    main()
