"""``dfmeta group``: recover one task per teacher, embed it (Fisher), group the zoo (Eq. 5-7) and show the groups.

Writes to the run directory: ``fisher.npz`` (W, labels, embeddings; the cache a rerun with ``--run-dir`` reuses),
``groups.json``, ``W.png`` (W with teachers ordered by group, group borders in white) and ``analysis.json`` (the
paper's Fig. 4: W beside each pair's class overlap, architectures and datasets; ``dfmeta report`` plots it).
While it recovers, ``grouping-tasks/`` keeps each finished chunk of tasks: a killed call continued with
``--run-dir`` recovers only the rest (:mod:`dfmeta.task_checkpoint`).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dfmeta import task_checkpoint
from dfmeta.cli import Command
from dfmeta.errors import DfmetaError
from dfmeta.grouping import (GroupingConfig, class_overlap, group_teachers, grouping_stability, load_probe,
                             within_group_overlap)
from dfmeta.progress import bar as progress_bar
from dfmeta.recover import RecoveryConfig, by_architecture, once, recover_tasks, teachers_per_batch
from dfmeta.runs import RunDir, atomic_write, expect_directory, resolve_device, set_threads
from dfmeta.zoo.format import Zoo


@dataclass(frozen=True)
class GroupCommandConfig(RecoveryConfig, GroupingConfig):
    """Group a zoo's teachers (task recovery, Fisher embeddings, dissimilarity, spectral clustering)."""

    zoo: str = ""
    """Zoo directory (dfmeta format)."""
    out_dir: str = "runs"
    """Parent folder of the new run directory."""
    run_dir: str = ""
    """An existing run directory to reuse (its cached W skips recovery and Fisher; a killed call's saved tasks skip
    their recovery); empty: a new one."""
    device: str = "auto"
    """Torch device: auto (CUDA when available), cpu, cuda, ..."""
    chunk: int = 0
    """Teachers recovered together in one batched computation (0: as many as fit the GPU memory; 8 on CPU)."""
    threads: int = 0
    """CPU threads for torch (0: torch's default). 1 is often fastest for dfmeta's small ops on a busy machine."""
    seed: int = 42
    """Seed of task recovery, of the fallback probe's initialisation and of spectral clustering."""

    def validate(self) -> None:
        RecoveryConfig.validate(self)
        GroupingConfig.validate(self)
        resolve_device(self.device)
        expect_directory(self.run_dir or self.out_dir, "--run-dir" if self.run_dir else "--out-dir")
        if not self.zoo:
            raise DfmetaError("field 'zoo': pass --zoo DIR")
        for name in ("chunk", "threads"):
            if getattr(self, name) < 0:
                raise DfmetaError(f"field '{name}': must be non-negative (0: the default), got {getattr(self, name)}")


def _sub(cls: type, cfg: GroupCommandConfig):
    """The ``cls`` part of the command's config."""
    values = asdict(cfg)
    return cls(**{f.name: values[f.name] for f in fields(cls)})


# Viridis at 9 stops (matplotlib's colour map, sampled).
_VIRIDIS = np.array([[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                     [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], np.float64)


def heatmap_png(W: np.ndarray, labels: np.ndarray, cell: int = 0) -> bytes:
    """A PNG of W (viridis, 0 to max) with teachers ordered by group and white lines between groups (Pillow only)."""
    n = len(W)
    order = np.argsort(labels, kind="stable")
    w = W[np.ix_(order, order)]
    t = w / w.max() if w.max() > 0 else w
    pos = t * (len(_VIRIDIS) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(_VIRIDIS) - 2)
    rgb = _VIRIDIS[lo] + (pos - lo)[..., None] * (_VIRIDIS[lo + 1] - _VIRIDIS[lo])
    cell = cell or max(2, min(24, 768 // max(n, 1)))
    img = np.repeat(np.repeat(rgb.round().astype(np.uint8), cell, 0), cell, 1)
    for b in np.flatnonzero(np.diff(labels[order])) + 1:
        img[b * cell - 1: b * cell + 1, :] = 255
        img[:, b * cell - 1: b * cell + 1] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def check_group_run(path: Path) -> None:
    """Refuse a ``--run-dir`` that is not a ``dfmeta group`` run: its config and groups would be overwritten."""
    from dfmeta.report.collect import describe, load_run
    from dfmeta.runs import read_json_object
    use = "--run-dir takes a `dfmeta group` run to reuse; --out-dir makes a new one"
    if not (path / "config.json").is_file():
        raise DfmetaError(f"{path}: {'not a run directory (no config.json)' if path.is_dir() else 'not found'}; {use}")
    config = read_json_object(path / "config.json")
    if not set(config) <= {f.name for f in fields(GroupCommandConfig)}:
        raise DfmetaError(f"{path} is {describe(load_run(path, config))}, not a `dfmeta group` run; {use}")


def run_group(cfg: GroupCommandConfig) -> None:
    from dfmeta.zoo import load_zoo
    if cfg.run_dir:
        check_group_run(Path(cfg.run_dir))
    zoo = load_zoo(cfg.zoo)
    if cfg.groups > len(zoo):
        raise DfmetaError(f"field 'groups': c = {cfg.groups} is larger than the zoo ({len(zoo)} models)")
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    rcfg, gcfg = once(_sub(RecoveryConfig, cfg)), _sub(GroupingConfig, cfg)
    if gcfg.probe_weights:
        load_probe(gcfg, torch.device("cpu"))  # a bad weights file fails now, not after the recovery
    run = RunDir(cfg.run_dir) if cfg.run_dir else RunDir.new(cfg.out_dir, zoo.path.name, "group", cfg.seed)
    try:
        with run.locked():
            if cfg.run_dir:
                note_changes(run.path, cfg)
            run.write_config(cfg)
            group_into(run, cfg, zoo, device, rcfg, gcfg)
    except DfmetaError:
        if not cfg.run_dir:
            run.discard_if_unused()  # a new run that failed before any work leaves nothing behind
        raise
    except KeyboardInterrupt:
        print(f"\ncontinue with the same settings and: --run-dir {run.path} (the recovered chunks are kept)",
              flush=True)
        raise


def note_changes(path: Path, cfg: GroupCommandConfig) -> None:
    """Say which settings of a reused run directory change: its groups.json and W are then replaced."""
    from dfmeta.config import to_dict
    from dfmeta.runs import read_json_object
    stored, now = read_json_object(path / "config.json"), json.loads(json.dumps(to_dict(cfg)))
    changed = [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in now.items() if k != "run_dir" and stored.get(k) != v]
    if changed and (path / "groups.json").is_file():
        print(f"{path}: settings changed ({'; '.join(changed)}): its groups.json and W are replaced (runs that "
              "took them keep their own copy)", flush=True)


def group_into(run: RunDir, cfg: GroupCommandConfig, zoo: Zoo, device: torch.device, rcfg: RecoveryConfig,
               gcfg: GroupingConfig) -> None:
    """Recover, embed and group (W cached in the run directory), then write and show the groups."""
    run.record_environment(device)
    big = max(zoo.teachers, key=lambda t: t.image_size ** 2 * t.num_classes)
    chunk = cfg.chunk or teachers_per_batch(rcfg, big.image_size, device, big.num_classes)

    fisher_bar = None

    folder = run.path / task_checkpoint.FOLDER
    key = {"recovery": asdict(rcfg), "seed": cfg.seed, "device": device.type,
           "teachers": [t.id for t in zoo.teachers]}

    def tasks():  # called only when the run directory holds no W for these settings
        nonlocal fisher_bar
        with progress_bar(total=len(zoo) * cfg.steps, desc="recovering tasks", unit="teacher-step") as bar:
            out = task_checkpoint.recover_resumably(
                folder, key, by_architecture(zoo.teachers, list(range(len(zoo)))), chunk,
                lambda part: recover_tasks(zoo.teachers, part, rcfg, device, cfg.seed, chunk, on_step=bar.update),
                device, lambda part, loaded: bar.update(len(part) * cfg.steps) if loaded else None)
        fisher_bar = progress_bar(total=len(zoo), desc="Fisher embeddings", unit="task")
        return out

    labels, W, info = group_teachers(zoo, tasks, gcfg, device, cache=run.path,
                                     cache_extra={"recovery": asdict(rcfg), "seed": cfg.seed},
                                     on_task=lambda: fisher_bar.update(1))
    task_checkpoint.discard(folder)
    if fisher_bar is not None:
        fisher_bar.close()
    print(f"probe: {info['probe']}" + (" (cached W)" if info["cached"] else ""))
    members = []
    for g in range(cfg.groups):
        idx = np.flatnonzero(labels == g).tolist()
        members.append([{"index": i, "id": zoo[i].id, "arch": zoo[i].arch, "class_names": zoo[i].class_names}
                        for i in idx])
        print(f"group {g} ({len(idx)} teachers):")
        for m in members[-1]:
            print(f"  {m['id']:>6s} {m['arch']:<8s} {', '.join(m['class_names'])}")
    stability = grouping_stability(W, labels, cfg.mode, cfg.seed)
    print(f"stability: adjusted Rand index {stability:.2f} between these groups and those of W plus 1% noise, "
          f"mean of 5 draws (1: the same groups; near 0: W hardly determines them)")
    within = within_group_overlap(labels, class_overlap(zoo))
    if within is not None:
        print(f"class overlap within groups: {within:.2f} of that of any two teachers (below 1: the groups gather "
              f"teachers that share fewer classes than chance)")
    run.write_json("groups.json", {"mode": cfg.mode, "groups": cfg.groups, "probe": info["probe"],
                                   "fisher_labels": cfg.fisher_labels, "fisher_cosine": cfg.fisher_cosine,
                                   "labels": labels.tolist(),
                                   "teacher_ids": info["teacher_ids"], "members": members,
                                   "stability": round(stability, 4),
                                   "within_group_overlap": None if within is None else round(within, 4)})
    atomic_write(run.path / "W.png", heatmap_png(W, labels))
    off = W[~np.eye(len(W), dtype=bool)]
    if off.size:
        print(f"W: mean {off.mean():.4f}, min {off.min():.4f}, max {off.max():.4f} (off-diagonal)")
    analysis = dissimilarity_analysis(zoo, W)
    run.write_json("analysis.json", analysis)
    for line in summarise_dissimilarity(analysis):
        print(line)
    print(f"run directory: {run.path} (groups.json, W.png, fisher.npz, analysis.json)")


def dissimilarity_analysis(zoo: Zoo, W: np.ndarray) -> dict:
    """Fig. 4's data: W with each pair's class overlap, and every teacher's architecture and dataset."""
    return {"analysis": "dissimilarity", "teacher_ids": [t.id for t in zoo.teachers],
            "archs": [t.arch for t in zoo.teachers], "datasets": [t.dataset for t in zoo.teachers],
            "W": np.asarray(W, np.float64).round(6).tolist(), "overlap": class_overlap(zoo).tolist()}


def summarise_dissimilarity(a: dict) -> list[str]:
    """Mean W of teacher pairs per class overlap, and for same / different architecture and dataset pairs."""
    from dfmeta.report.analyses import pair_stats
    s = pair_stats(a, "analysis")
    lines = [f"  pairs sharing {k} classes: {p:5d}, mean W {m:.4f}" for k, p, m, _ in s["overlap"]]
    lines += [f"  {key[:-1]}: same {c['same'][1]:.4f}, different {c['different'][1]:.4f} (mean W)"
              for key, c in s["pairs"].items()]
    if s["rho"] is not None:
        lines.append(f"  Spearman's rho of W against shared classes: {s['rho']:.3f}")
    return ["W against class overlap (Fig. 4):"] + lines


COMMANDS = [Command("group", "Group a zoo's teachers by task dissimilarity (TGR Eq. 5-7); writes groups.json, W.png.",
                    GroupCommandConfig, run_group)]
