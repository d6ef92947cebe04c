"""Diagnostic: how much do the task groups depend on the Fisher probe? Recover one task per teacher once, then embed
the same tasks with each probe and compare the dissimilarity W and the groups it gives.

    python benchmarks/probe_study.py --zoo ZOO --probes random:42 random:0 conv4=PROBE.safetensors ...
                                     [--steps 30 --nf 16 --per-class 16] [--groups 5] [--threads 2] [--out FILE.json]

``--tasks real`` embeds, instead of recovered tasks, ``per-class`` real meta-train images of each of the teacher's
classes (its training data: an oracle, not data-free; it tells whether a weak W comes from the probe or from the
recovered tasks). A probe is ``random:SEED`` (the data-free fallback, a Conv4 with random weights from SEED) or
``ARCH=FILE`` (weights read as by ``dfmeta group --probe ARCH --probe-weights FILE``, e.g. a Conv4 trained on the
embedded procedural dataset with ``dfmeta zoo build --dataset embedded --teachers 1 --ways 160``). Recovery uses
``dfmeta group``'s seed (42) and batching. ``--fisher-labels task probe`` adds a row per probe with the Fisher's
labels taken from the probe's own predictions (``dfmeta group --fisher-labels probe``); ``--fisher-cosine whole
layers`` a row per form of Eq. 6 (``dfmeta group --fisher-cosine``: the paper's one cosine, the authors' per-layer
mean), on the same embeddings.

Columns: Spearman's rho between W and the pair's class overlap over teacher pairs (Fig. 4: negative when teachers
sharing classes are less dissimilar), mean W of pairs sharing 0 and >= 1 classes, the gap between the two in units
of the sd of W, the grouping's stability (``dfmeta.grouping.grouping_stability``), the mean class overlap of two
teachers of one group over that of all pairs (below 1: groups gather teachers that share fewer classes than chance,
what dissimilarity grouping is for; a line below gives its range for random partitions) and the adjusted Rand index
of its groups against every other probe's.
Recorded: docs/results/cpu-2026-12-02-probes.md.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from dfmeta.errors import DfmetaError
from dfmeta.grouping import (GroupingConfig, class_overlap, dissimilarity, fisher_embeddings, grouping_stability,
                             load_probe, overlap_by_chance, spectral_groups, within_group_overlap)
from dfmeta.memory import keep_freed_memory
from dfmeta.recover import RecoveredTask, RecoveryConfig, recover_tasks, teachers_per_batch
from dfmeta.report.analyses import pair_stats
from dfmeta.runs import resolve_device, set_threads
from dfmeta.zoo import load_zoo
from dfmeta.config import plain


def probe_config(spec: str, labels: str = "task") -> GroupingConfig:
    """``random:SEED`` or ``ARCH=FILE`` as a grouping config, with Fisher labels ``labels``."""
    seed = spec.removeprefix("random:")
    if spec.startswith("random:") and seed.isdigit():
        return GroupingConfig(seed=int(seed), fisher_labels=labels)  # type: ignore[arg-type]
    arch, _, path = spec.partition("=")
    if not path:
        raise DfmetaError(f"probe '{spec}': expected random:SEED or ARCH=FILE")
    return GroupingConfig(probe=arch, probe_weights=path, fisher_labels=labels)  # type: ignore[arg-type]


def overlap_stats(W: np.ndarray, overlap: np.ndarray) -> dict[str, float]:
    """Spearman's rho of W against class overlap (Fig. 4's report), and the shared / unshared gap over pairs i < j."""
    iu = np.triu_indices(len(W), 1)
    w, o = W[iu], overlap[iu]
    gap = (w[o == 0].mean() - w[o > 0].mean()) / w.std()
    return {"rho": pair_stats({"W": W, "overlap": overlap}, "probe study")["rho"], "mean_w_0": float(w[o == 0].mean()),
            "mean_w_shared": float(w[o > 0].mean()), "gap_sd": float(gap)}


def real_tasks(zoo, per_class: int, data_root: str | None) -> list[RecoveredTask]:
    """Each teacher's task from its own meta-train images: the first ``per_class`` of each of its classes."""
    from dfmeta.data.registry import load_split
    splits = {d: load_split(d, "train", data_root) for d in {t.dataset for t in zoo.teachers}}
    tasks = []
    for i, t in enumerate(zoo.teachers):
        split = splits[t.dataset]
        missing = [c for c in t.class_names if c not in split.class_names]
        if missing:
            raise DfmetaError(f"teacher {t.id}: class {missing[0]!r} is not in {t.dataset}'s meta-train split")
        idx = [split.class_names.index(c) for c in t.class_names]
        x = np.concatenate([split.class_images(c)[:per_class] for c in idx])
        images = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
        labels = torch.arange(len(idx)).repeat_interleave(per_class)
        tasks.append(RecoveredTask(images, labels, torch.zeros(len(labels), len(idx)), i, 0.0))
    return tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--probes", nargs="+", default=["random:42", "random:0", "random:1"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--nf", type=int, default=16)
    ap.add_argument("--per-class", type=int, default=16)
    ap.add_argument("--no-augment", dest="augment", action="store_false",
                    help="recover without the authors' crop and flip (RecoveryConfig.augment)")
    ap.add_argument("--groups", type=int, default=5)
    ap.add_argument("--tasks", choices=["recovered", "real"], default="recovered")
    ap.add_argument("--fisher-labels", nargs="+", choices=["task", "probe"], default=["task"],
                    help="a row per probe and Fisher label choice (dfmeta group --fisher-labels)")
    ap.add_argument("--fisher-cosine", nargs="+", choices=["whole", "layers"], default=["whole"],
                    help="a row per form of Eq. 6 (dfmeta group --fisher-cosine), on the same embeddings")
    ap.add_argument("--data-root", default=None, help="for --tasks real (default: $DFMETA_DATA, else ../shared/data)")
    ap.add_argument("--seed", type=int, default=42, help="recovery and clustering seed (dfmeta group's default)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto (CUDA when available)")
    ap.add_argument("--out", default="", help="write W, groups and the table's numbers to this JSON file")
    a = ap.parse_args()
    keep_freed_memory()
    set_threads(a.threads)
    configs = {spec + ("" if lab == "task" else f" [{lab}]"): probe_config(spec, lab)
               for spec in a.probes for lab in a.fisher_labels}
    device = resolve_device(a.device)
    zoo = load_zoo(a.zoo)
    size = zoo.teachers[0].image_size
    for cfg in configs.values():  # a bad weights file fails before the recovery
        load_probe(cfg, device, size)
    overlap = class_overlap(zoo)
    if len(np.unique(overlap[np.triu_indices(len(zoo), 1)] > 0)) < 2:
        raise DfmetaError(f"{a.zoo}: its teacher pairs all share classes or none do: W cannot be set against overlap")
    rcfg = RecoveryConfig(steps=a.steps, nf=a.nf, per_class=a.per_class, augment=a.augment)
    t0 = time.perf_counter()
    if a.tasks == "real":
        tasks = real_tasks(zoo, a.per_class, a.data_root)
    else:
        chunk = teachers_per_batch(rcfg, size, device, zoo.teachers[0].num_classes)
        tasks = recover_tasks(zoo.teachers, list(range(len(zoo))), rcfg, device, a.seed, chunk)
    print(f"{a.tasks} tasks: {len(tasks)} in {time.perf_counter() - t0:.0f} s")
    rows: dict[str, dict] = {}
    for spec, cfg in configs.items():
        t0 = time.perf_counter()
        probe, desc = load_probe(cfg, device, size)
        embeddings = fisher_embeddings(tasks, probe, device, labels=cfg.fisher_labels)
        for cosine in a.fisher_cosine:
            W = dissimilarity(embeddings, device, cosine)
            labels = spectral_groups(W, a.groups, seed=a.seed)
            name = spec + ("" if cosine == "whole" else f" [{cosine}]")
            rows[name] = {"probe": desc, "W": W.round(6).tolist(), "labels": labels.tolist(),
                          "stability": grouping_stability(W, labels, seed=a.seed),
                          "within_overlap": within_group_overlap(labels, overlap), **overlap_stats(W, overlap)}
        print(f"{spec}: {time.perf_counter() - t0:.0f} s ({desc})")
    from sklearn.metrics import adjusted_rand_score
    specs = list(rows)
    print("\n| probe | rho(W, overlap) | mean W, 0 shared | mean W, >= 1 shared | gap / sd(W) | stability | "
          "within-group overlap | " + " | ".join(f"ARI vs {s}" for s in specs) + " |")
    print("|---" * (7 + len(specs)) + "|")
    for s, r in rows.items():
        ari = [adjusted_rand_score(r["labels"], rows[t]["labels"]) for t in specs]
        r["ari"] = dict(zip(specs, ari))
        print(f"| {s} | {r['rho']:.3f} | {r['mean_w_0']:.4f} | {r['mean_w_shared']:.4f} | {r['gap_sd']:.2f} | "
              f"{r['stability']:.2f} | {r['within_overlap']:.2f} | " + " | ".join(f"{x:.2f}" for x in ari) + " |")
    first = np.asarray(rows[specs[0]]["labels"])
    lo, hi = overlap_by_chance(first, overlap, a.seed)
    print(f"\nwithin-group overlap of 1000 random partitions into {specs[0]}'s group sizes "
          f"{np.bincount(first).tolist()}: 95% between {lo:.2f} and {hi:.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"settings": vars(a), "rows": rows}, f)


if __name__ == "__main__":
    try:
        main()
    except DfmetaError as e:
        raise SystemExit(f"probe_study: {e}") from None
