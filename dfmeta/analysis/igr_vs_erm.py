"""Fig. 5: the gradient regulariser and the gradient cosine over training, IGR against ERM on the same tasks.

Two copies of the meta-model start from the same initialisation. Every epoch m teachers are drawn (seeded, from the
whole zoo, or with ``--groups-from`` from one group of a `dfmeta group` run, as TGR draws them) and their tasks
recovered once; each copy then takes its own step on those same tasks: IGR (the paper's
first-order form, beta) or ERM (the plain averaged gradient). Both log, at their own parameters before the step,
the regulariser (1/2m) sum_i ||grad L_i - grad Lbar||^2, the mean pairwise cosine of the task gradients and the
mean task loss. No replay and no grouping, so the update rule is the only difference. A checkpoint after every
epoch lets a killed run continue exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from dfmeta.config import learning_rates, require, to_dict
from dfmeta.errors import DfmetaError
from dfmeta.meta.igr import igr_gradient
from dfmeta.meta.loop import epoch_seed
from dfmeta.nets import build, params_of
from dfmeta.recover import RecoveryConfig, normalise, recover_tasks
from dfmeta.runs import (RunDir, atomic_torch_save, expect_directory, is_torch_file, read_json_object, resolve_device,
                         seed_everything, set_threads)
from dfmeta.zoo.format import Zoo

VARIANTS = {"igr": "first", "erm": "off"}


@dataclass(frozen=True)
class IGRvsERMConfig(RecoveryConfig):
    """IGR against ERM on one sequence of recovered tasks (the paper's Fig. 5)."""

    zoo: str = ""
    """Teacher zoo directory."""
    arch: str = "conv4"
    """Meta-model architecture."""
    epochs: int = 200
    """Epochs (one task group each)."""
    teachers_per_epoch: int = 4
    """m: tasks per step."""
    beta: float = 1e-3
    """IGR step beta."""
    meta_lr: float = 1e-3
    """Adam learning rate of both copies."""
    seed: int = 0
    """Seed of the initialisation, the teacher draws and the recovery."""
    device: str = "auto"
    """Torch device."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    out_dir: str = "runs"
    """Parent folder of the run directory."""
    run_dir: str = ""
    """Continue this run directory (after a kill) instead of starting a new one."""
    kd_form: Literal["kl", "authors"] = "kl"
    """KD term of Eq. 8: a true KL divergence, or the authors' form."""
    groups_from: str = ""
    """A `dfmeta group` run directory: draw each epoch's m teachers from one of its groups (groups of fewer than m
    teachers left out), as TGR does, instead of from the whole zoo."""

    def validate(self) -> None:
        RecoveryConfig.validate(self)
        if not self.zoo and not self.run_dir:
            raise DfmetaError("field 'zoo': pass --zoo DIR")
        if self.epochs < 1 or self.teachers_per_epoch < 2:
            raise DfmetaError("fields 'epochs' >= 1 and 'teachers_per_epoch' >= 2 expected (a cosine needs 2 tasks)")
        require(learning_rates(self, "meta_lr"))
        resolve_device(self.device)
        expect_directory(self.run_dir or self.out_dir, "--run-dir" if self.run_dir else "--out-dir")
        if self.groups_from and not (Path(self.groups_from) / "groups.json").is_file():
            raise DfmetaError(f"--groups-from {self.groups_from}: no groups.json there (a `dfmeta group` run "
                              "directory expected)")
        if self.run_dir and not Path(self.run_dir).is_dir():
            raise DfmetaError(f"--run-dir {self.run_dir}: not found (it continues a run `dfmeta analyse igr` wrote; "
                              "leave it out for a new run under --out-dir)")
        if self.run_dir and (Path(self.run_dir) / "config.json").is_file():
            stored = read_json_object(Path(self.run_dir) / "config.json")
            if not set(stored) <= {f.name for f in fields(self)}:
                raise DfmetaError(f"--run-dir {self.run_dir}: not an `analyse igr` run (its config.json is another "
                                  "command's); give one that `dfmeta analyse igr` wrote, or none for a new run")
            ckpt = Path(self.run_dir) / "checkpoint.pt"
            if ckpt.is_file() and not is_torch_file(ckpt):
                raise DfmetaError(f"{ckpt}: not a readable checkpoint (truncated or corrupt)")


def run_igr_vs_erm(cfg: IGRvsERMConfig) -> dict[str, Any]:
    """Run (or continue) the comparison; writes ``analysis.json`` and returns it."""
    from dfmeta.zoo import load_zoo
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    zoo = load_zoo(cfg.zoo)
    if cfg.teachers_per_epoch > len(zoo):
        raise DfmetaError(f"field 'teachers_per_epoch': m = {cfg.teachers_per_epoch} is larger than the zoo "
                          f"({len(zoo)} models)")
    draw = drawing(cfg, zoo)
    run = RunDir(cfg.run_dir) if cfg.run_dir else RunDir.new(cfg.out_dir, zoo.path.name, "igr-vs-erm", cfg.seed, cfg)
    with run.locked():
        return compare(run, cfg, zoo, device, draw)


def drawing(cfg: IGRvsERMConfig, zoo: Zoo) -> Callable[[np.random.Generator], list[int]]:
    """How an epoch's m teachers are drawn: from the whole zoo, or from one group of ``cfg.groups_from``."""
    m = cfg.teachers_per_epoch
    if not cfg.groups_from:
        return lambda rng: sorted(rng.choice(len(zoo), m, replace=False).tolist())
    from dfmeta.grouping import labels_of_group_run, pick_from_groups
    labels = labels_of_group_run(cfg.groups_from, [t.id for t in zoo.teachers])
    sizes = np.bincount(labels)
    usable = np.flatnonzero(np.isin(labels, np.flatnonzero(sizes >= m)))
    if not len(usable):
        raise DfmetaError(f"--groups-from {cfg.groups_from}: no group has m = {m} teachers (sizes "
                          f"{sizes.tolist()}); pass a smaller --teachers-per-epoch")
    print(f"teachers drawn from one group of {cfg.groups_from} per epoch (sizes {sizes.tolist()}; groups of fewer "
          f"than {m} left out)", flush=True)
    return lambda rng: sorted(usable[pick_from_groups(labels[usable], m, rng)].tolist())


def compare(run: RunDir, cfg: IGRvsERMConfig, zoo: Zoo, device: torch.device,
            draw: Callable[[np.random.Generator], list[int]]) -> dict[str, Any]:
    """The comparison in ``run`` (continued from its checkpoint, if any)."""
    t0 = zoo[0]
    run.record_environment(device)
    model = build(cfg.arch, t0.num_classes, t0.image_size, t0.in_channels, bn="batch").to(device)
    init = {k: v.to(device) for k, v in params_of(model).items()}
    params = {v: {k: p.clone().requires_grad_(True) for k, p in init.items()} for v in VARIANTS}
    opts = {v: torch.optim.Adam(params[v].values(), lr=cfg.meta_lr) for v in VARIANTS}
    logs: dict[str, dict[str, list[float]]] = {v: {"loss": [], "regulariser": [], "cosine": []} for v in VARIANTS}
    epoch, ckpt = 0, run.path / "checkpoint.pt"
    if ckpt.exists():
        st = torch.load(ckpt, map_location=device, weights_only=False)
        epoch, logs = st["epoch"], st["logs"]
        for v in VARIANTS:
            with torch.no_grad():
                for k, p in st["params"][v].items():
                    params[v][k].copy_(p)
            opts[v].load_state_dict(st["opt"][v])
        print(f"continuing from epoch {epoch}")
    rows = run.metrics()  # a killed call's epochs after the checkpoint are run (and logged) again
    if any(m.get("epoch", 0) > epoch for m in rows):
        run.rewrite_metrics([m for m in rows if m.get("epoch", 0) <= epoch])
    from dfmeta.progress import bar
    for e in bar(iterable=range(epoch + 1, cfg.epochs + 1), initial=epoch, total=cfg.epochs, desc="IGR vs ERM",
                 unit="ep"):
        rng = np.random.default_rng(epoch_seed(cfg.seed, e, 1))
        chosen = draw(rng)
        tasks = recover_tasks(zoo.teachers, chosen, cfg, device, epoch_seed(cfg.seed, e, 0))
        xs = torch.stack([normalise(t.images, zoo[t.teacher].mean, zoo[t.teacher].std) for t in tasks])
        logits = torch.stack([t.logits for t in tasks])
        labels = torch.stack([t.labels for t in tasks])
        for v, mode in VARIANTS.items():
            res = igr_gradient(model, {k: p.detach() for k, p in params[v].items()}, xs, logits, labels,
                               beta=cfg.beta, mode=mode, kd_form=cfg.kd_form)
            opts[v].zero_grad(set_to_none=True)
            for k, p in params[v].items():
                p.grad = res.grads[k].clone()
            opts[v].step()
            for name, value in (("loss", float(res.losses.mean())), ("regulariser", res.regulariser),
                                ("cosine", res.cosine)):
                logs[v][name].append(value)
        run.log(epoch=e, teachers=[zoo[i].id for i in chosen],
                **{f"{v}_{name}": vals[-1] for v in VARIANTS for name, vals in logs[v].items()})
        atomic_torch_save({"epoch": e, "logs": logs, "config": to_dict(cfg),
                           "params": {v: {k: p.detach().cpu() for k, p in params[v].items()} for v in VARIANTS},
                           "opt": {v: opts[v].state_dict() for v in VARIANTS}}, ckpt)
    out = {"analysis": "igr-vs-erm", "beta": cfg.beta, "teachers_per_epoch": cfg.teachers_per_epoch,
           "groups_from": cfg.groups_from,
           "epochs": list(range(1, cfg.epochs + 1)), "runs": logs}
    run.write_json("analysis.json", out)
    half = max(1, cfg.epochs // 2)
    for v in VARIANTS:
        r = logs[v]
        print(f"{v.upper():>4s}: regulariser {np.mean(r['regulariser'][-half:]):.4g}, cosine "
              f"{np.nanmean(r['cosine'][-half:]):.4f}, loss {np.mean(r['loss'][-half:]):.4f} "
              f"(mean of the last {half} epochs)")
    print(f"run directory: {run.path} (analysis.json; `dfmeta report {Path(run.path)}` plots it)")
    return out
