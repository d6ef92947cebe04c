"""Benchmark: task recovery of m Conv4 teachers (150 images each, 200 generator steps: one TGR epoch's recovery) per
speed variant, against the plain float32 reference; then the tasks of several epochs recovered together; optionally
one teacher at a time and the Fisher embedding of the recovered tasks (grouping probe).

    python benchmarks/bench_recover.py [--device cuda] [--teachers 4] [--steps 200] [--variants all]
                                       [--prefetch 1 4 8 16] [--json best.json] [--one-by-one] [--draws 32]
                                       [--fisher conv4]

Variants: precision (fp32 / bf16 autocast) x step execution (eager / CUDA graph) x teacher batching (vmap / loop /
grouped, the last also in channels_last memory order, or compiled with torch.compile); CUDA-graph variants need
CUDA. A compiled variant compiles in its untimed warm-up call (that time is printed under the table). Columns:
seconds for the whole recovery (setup, all steps, final logits), ms per step, ms per teacher-step, and the gap to the
reference: relative difference of the mean best recovery loss and the largest pixel difference of the recovered images (float-order
effects grow over 200 Adam steps; the loss gap is the meaningful one). ``--json`` writes the fastest variant and
prefetch (for `dfmeta train --rec-amp/--rec-graph/--rec-batching/--rec-channels-last/--rec-compile/
--rec-prefetch`).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dfmeta.grouping import GroupingConfig, fisher_embeddings, load_probe
from dfmeta.memory import keep_freed_memory
from dfmeta.nets import build
from dfmeta.nets.generator import Generator
from dfmeta.recover import RecoveryConfig, initial_draws, recover_tasks, teacher_rng
from dfmeta.zoo.format import Teacher
from dfmeta.config import plain

VARIANTS = {  # name: (amp, graph, batching, channels_last[, compile])
    "fp32 eager vmap (reference)": ("off", "off", "vmap", "off"),
    "fp32 graph vmap": ("off", "on", "vmap", "off"),
    "bf16 eager vmap": ("bf16", "off", "vmap", "off"),
    "bf16 graph vmap": ("bf16", "on", "vmap", "off"),
    "fp32 graph loop": ("off", "on", "loop", "off"),
    "bf16 eager loop": ("bf16", "off", "loop", "off"),
    "bf16 graph loop": ("bf16", "on", "loop", "off"),
    "fp32 graph grouped": ("off", "on", "grouped", "off"),
    "bf16 eager grouped": ("bf16", "off", "grouped", "off"),
    "bf16 graph grouped": ("bf16", "on", "grouped", "off"),
    "bf16 graph grouped channels_last": ("bf16", "on", "grouped", "on"),
    "fp32 eager grouped compiled": ("off", "off", "grouped", "off", "on"),
    "bf16 eager grouped compiled": ("bf16", "off", "grouped", "off", "on"),
    "bf16 graph grouped compiled": ("bf16", "on", "grouped", "off", "on"),
    "bf16 graph grouped channels_last compiled": ("bf16", "on", "grouped", "on", "on"),
}


def variant(base: RecoveryConfig, name: str) -> RecoveryConfig:
    amp, graph, batching, cl, *comp = VARIANTS[name]
    return RecoveryConfig(**{**base.__dict__, "amp": amp, "graph": graph, "batching": batching, "channels_last": cl,
                             "compile": comp[0] if comp else "off"})


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


def gap(tasks, ref) -> tuple[float, float]:
    """(relative difference of the mean best loss, largest pixel difference) of ``tasks`` against ``ref``."""
    la = sum(t.loss for t in tasks) / len(tasks)
    lr = sum(t.loss for t in ref) / len(ref)
    px = max(float((a.images - b.images).abs().max()) for a, b in zip(tasks, ref))
    return abs(la - lr) / abs(lr), px


def profile(teachers: list[Teacher], idx: list[int], cfg: RecoveryConfig, dev: torch.device) -> None:
    """torch.profiler over one recovery; prints the top operators by self device time."""
    from torch.profiler import ProfilerActivity, profile as prof
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with prof(activities=acts) as p:
        recover_tasks(teachers, idx, cfg, dev, 0)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(f"\n## Profile: {len(idx)} teachers, {cfg.steps} steps, amp {cfg.amp}, graph {cfg.graph}, "
          f"{cfg.batching}\n")
    print(p.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))


def time_draws(counts: list[int], cfg: RecoveryConfig, size: int, n: int, dev: torch.device) -> None:
    """Times :func:`initial_draws` (a batch's up-front random draws, host side) for ``counts`` teachers, on one
    thread and on all (after one untimed call)."""
    print("\n## Up-front random draws of a batch (generator init, codes, crops and flips; host side)\n")
    print("| teachers | threads | seconds |")
    print("|---|---|---|")
    threads = torch.get_num_threads()
    for k in counts:
        for th in sorted({1, threads}):
            torch.set_num_threads(th)
            gen = Generator(size, 3, cfg.nz, cfg.nf)
            draw = lambda: initial_draws(gen, [teacher_rng(0, i) for i in range(k)], n, cfg, dev)  # noqa: E731
            draw()  # warm-up: the first call also faults its memory in
            sec, _ = timed(draw, dev)
            print(f"| {k} | {th} | {sec:.3f} |", flush=True)
    torch.set_num_threads(threads)


def main() -> None:
    malloc = "malloc keeps freed memory" if keep_freed_memory() else "system malloc"  # as the dfmeta CLI does
    ap = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--teachers", type=int, default=4, help="m, teachers per epoch")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--nf", type=int, default=64)
    ap.add_argument("--variants", nargs="+", default=["all"], help="variant names (see VARIANTS) or all")
    ap.add_argument("--prefetch", type=int, nargs="*", default=[1, 4, 8, 16],
                    help="epochs recovered together, timed with the fastest variant")
    ap.add_argument("--json", default="", help="write the fastest variant and prefetch here")
    ap.add_argument("--one-by-one", action="store_true", help="also time the teachers one after another")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--draws", type=int, nargs="*", default=[],
                    help="time the up-front random draws (host side, before the steps) of batches of these many "
                    "teachers, on one thread and on all")
    ap.add_argument("--fisher", nargs="*", default=[], help="probe architectures to time (random weights)")
    ap.add_argument("--profile", type=int, default=0, help="profile this many steps of the fastest variant and print "
                    "the operators taking the most device (or CPU) time")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as dfmeta's trainers set it on CUDA
    m = a.teachers
    teachers = [conv4_teacher(i, a.size) for i in range(m * max(a.prefetch or [1]))]
    base = RecoveryConfig(steps=a.steps, per_class=a.per_class, nf=a.nf)
    names = list(VARIANTS) if a.variants == ["all"] else a.variants
    n = 5 * a.per_class
    print(f"device: {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, image size {a.size}, nf {a.nf}, {malloc}")
    if a.draws:
        time_draws(a.draws, base, a.size, n, dev)
    print(f"\n## One epoch's recovery: {m} teachers x {n} images, {a.steps} steps\n")
    print("| variant | seconds | ms/step | ms/teacher-step | loss gap | max pixel gap |")
    print("|---|---|---|---|---|---|")
    idx, results, ref, warm = list(range(m)), {}, None, {}
    for name in names:
        cfg = variant(base, name)
        if cfg.graph == "on" and dev.type != "cuda":
            print(f"| {name} | needs CUDA | | | | |")
            continue
        try:
            warm[name], _ = timed(lambda: recover_tasks(teachers, idx, RecoveryConfig(**{**cfg.__dict__, "steps": 5}),
                                                        dev, 1), dev)  # warm-up (compiles a compiled variant)
            sec, tasks = timed(lambda: recover_tasks(teachers, idx, cfg, dev, 0), dev)
        except Exception as e:  # noqa: BLE001 - a benchmark reports a failing variant and goes on
            print(f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} | | | | |")
            continue
        ref = tasks if ref is None else ref
        lg, px = gap(tasks, ref)
        results[name] = sec
        print(f"| {name} | {sec:.2f} | {sec / a.steps * 1e3:.1f} | {sec / a.steps / m * 1e3:.2f} | {lg:.1e} | "
              f"{px:.1e} |", flush=True)
    if not results:
        return
    for name in results:
        if VARIANTS[name][4:] == ("on",):
            print(f"\n{name}: warm-up of 5 steps including compilation {warm[name]:.1f} s (once per process and "
                  f"teacher count)")
    fastest = min(results, key=results.get)
    cfg = variant(base, fastest)
    print(f"\nfastest: {fastest}, {results['fp32 eager vmap (reference)'] / results[fastest]:.1f}x the reference"
          if "fp32 eager vmap (reference)" in results else f"\nfastest: {fastest}")
    best_p, per_epoch = 1, results[fastest]
    if a.prefetch:
        print(f"\n## Several epochs recovered together ({fastest}): recovery time per epoch\n")
        print("| epochs together | teachers | seconds | seconds per epoch | peak GPU GiB |")
        print("|---|---|---|---|---|")
        for p in a.prefetch:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            ids = list(range(m * p))
            try:
                recover_tasks(teachers, ids, RecoveryConfig(**{**cfg.__dict__, "steps": 5}), dev, 1)
                sec, _ = timed(lambda: recover_tasks(teachers, ids, cfg, dev, 0), dev)
            except Exception as e:  # noqa: BLE001
                print(f"| {p} | {m * p} | failed: {type(e).__name__} | | |")
                continue
            peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
            print(f"| {p} | {m * p} | {sec:.2f} | {sec / p:.3f} | {peak:.1f} |", flush=True)
            if sec / p < per_epoch:
                best_p, per_epoch = p, sec / p
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"amp": cfg.amp, "graph": cfg.graph, "batching": cfg.batching, "channels_last": cfg.channels_last,
                       "compile": cfg.compile, "prefetch": best_p,
                       "recovery_s_per_epoch": per_epoch, "variants_s": results}, f, indent=1)
    if a.profile:
        profile(teachers, idx, RecoveryConfig(**{**cfg.__dict__, "steps": a.profile}), dev)
    if a.one_by_one:
        sec, _ = timed(lambda: [recover_tasks(teachers, [i], cfg, dev, 0) for i in idx], dev)
        print(f"\none at a time ({fastest}): {sec:.2f} s for {m} teachers; batched is {sec / results[fastest]:.2f}x "
              f"faster")
    for arch in a.fisher:
        tasks = recover_tasks(teachers, idx, RecoveryConfig(**{**cfg.__dict__, "steps": 2}), dev, 0)
        probe, _ = load_probe(GroupingConfig(fallback_probe=arch), dev, a.size)
        fisher_embeddings(tasks[:1], probe, dev)  # warm-up
        sec, _ = timed(lambda: fisher_embeddings(tasks, probe, dev), dev)
        per = sec / len(tasks)
        print(f"Fisher ({arch} probe, {n} images/task): {per:.3f} s per task -> 100 tasks in {100 * per:.0f} s")


if __name__ == "__main__":
    main()
