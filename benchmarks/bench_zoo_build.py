"""Benchmark: training zoo teachers (Conv4, the authors' recipe) all at once vs one after another.

    python benchmarks/bench_zoo_build.py [--device cuda] [--teachers 8 32] [--epochs 2] [--modes batched single plain]

Data: the embedded dataset at CIFAR-FS size (32 px, 600 images per class: 480 train / 120 held out per class).
Modes: ``batched`` trains every teacher in one stacked step (``dfmeta zoo build``'s grouped-convolution trainer);
``single`` the same trainer one teacher at a time; ``plain`` an ordinary nn.Module / torch.optim loop, one teacher
at a time. Each epoch includes the held-out evaluation. Prints one table row per zoo size and mode: seconds,
teacher-epochs per second, speed-up over plain.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from dfmeta.data.embedded import embedded_split
from dfmeta.data.episodes import to_input
from dfmeta.memory import keep_freed_memory
from dfmeta.nets import build
from dfmeta.zoo.build import ZooRecipe, epoch_order, initial_state, plan_zoo, split_rows, train_group
from dfmeta.config import plain as plain_text


def plain(plans, split, recipe, seed, device) -> None:
    """One teacher after another, the ordinary way (Adam, clip_grad_norm_, BN in train mode)."""
    images = torch.from_numpy(split.images).to(device)
    for p in plans:
        m = build(p.arch, recipe.ways, split.image_size, split.channels, "running").to(device)
        m.load_state_dict(initial_state(p.arch, recipe.ways, split.image_size, split.channels, seed, p.index))
        opt = torch.optim.Adam(m.parameters(), lr=recipe.lr)
        rows = split_rows(split, p.classes, recipe.heldout_fraction)
        tr, trl, ho, hol = (torch.from_numpy(a).to(device) for a in rows)
        best = -1.0
        for epoch in range(recipe.epochs):
            m.train()
            order = torch.from_numpy(epoch_order(seed, p.index, epoch, len(tr))).to(device)
            for lo in range(0, len(tr), recipe.batch_size):
                s = order[lo: lo + recipe.batch_size]
                loss = F.cross_entropy(m(to_input(images[tr[s]], split.mean, split.std)), trl[s])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), recipe.grad_clip)
                opt.step()
            m.eval()
            with torch.no_grad():
                acc = (m(to_input(images[ho], split.mean, split.std)).argmax(-1) == hol).float().mean().item()
            if acc > best:  # keep a copy of the best epoch, as the library does
                best, kept = acc, {k: v.clone() for k, v in m.state_dict().items()}
        del kept


def main() -> None:
    malloc = "malloc keeps freed memory" if keep_freed_memory() else "system malloc"  # as the dfmeta CLI does
    ap = argparse.ArgumentParser(description=plain_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--teachers", type=int, nargs="+", default=[8], help="zoo sizes to time")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["batched", "single", "plain"])
    ap.add_argument("--max-sequential", type=int, default=8, help="one-at-a-time modes only up to this many teachers")
    a = ap.parse_args()
    dev = torch.device(a.device)
    split = embedded_split("train", per_class=600)
    images = torch.from_numpy(split.images).to(dev)
    warm = ZooRecipe(teachers=2, epochs=1)
    train_group(plan_zoo(split.n_classes, warm, 1), split, warm, 1, dev, images)  # kernels, allocator
    print(f"device: {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; conv4 teachers x {a.epochs} epochs, 2400 training images each "
          f"(embedded, 32 px), batch 128, held-out evaluation every epoch, {malloc}")
    print("| teachers | mode | seconds | teacher-epochs/s | speed-up vs plain |")
    print("|---|---|---|---|---|")
    for n in a.teachers:
        recipe = ZooRecipe(teachers=n, epochs=a.epochs)
        plans = plan_zoo(split.n_classes, recipe, 0)
        runs = {"batched": lambda: train_group(plans, split, recipe, 0, dev, images),
                "single": lambda: [train_group([p], split, recipe, 0, dev, images) for p in plans],
                "plain": lambda: plain(plans, split, recipe, 0, dev)}
        secs = {}
        for mode in a.modes:
            if mode != "batched" and n > a.max_sequential:
                continue
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            runs[mode]()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            secs[mode] = time.perf_counter() - t
        for mode, sec in secs.items():
            up = f"{secs['plain'] / sec:.2f}x" if "plain" in secs else "-"
            print(f"| {n} | {mode} | {sec:.1f} | {n * a.epochs / sec:.2f} | {up} |", flush=True)


if __name__ == "__main__":
    main()
