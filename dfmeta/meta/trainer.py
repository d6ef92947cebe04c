"""The TGR trainer: Algorithm 1 of the paper, read top to bottom in :meth:`Trainer.fit`.

    group the zoo (recover one task per teacher, Fisher embeddings, dissimilarity W, spectral clustering)
    for epoch = 1..T:
        pick a group, pick m teachers from it
        recover one pseudo task per teacher (one batched computation)
        update the meta-model with the IGR gradient of the Eq. 8 losses
        store the tasks in the memory bank; cross-task replay with MAML
        every k epochs: validate on meta-val (best-model selection) and checkpoint
    meta-test the selected meta-model once

Every random choice of an epoch is drawn from generators seeded by ``(seed, epoch)``, so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dfmeta.commands.common import DataConfig, EvalFields
from dfmeta.config import make, to_dict
from dfmeta.data.registry import load_split
from dfmeta.errors import DfmetaError
from dfmeta.evaluate import Evaluator, EvalResult
from dfmeta.nets import build, params_of
from dfmeta.recover import normalise
from dfmeta.runs import RunDir, atomic_torch_save, atomic_write, resolve_device, seed_everything, set_threads


@dataclass(frozen=True)
class TrainConfig(DataConfig, EvalFields):
    """A TGR meta-training run (defaults: the paper's CIFAR-FS setting at the embedded dataset's scale)."""

    zoo: str = ""
    """Teacher zoo directory (dfmeta format; `dfmeta zoo import` converts the authors')."""
    arch: str = "conv4"
    """Meta-model architecture."""
    image_size: int = 0
    """Resize the dataset's images to this size (0: the dataset's own); must match the zoo's."""
    epochs: int = 1000
    """T: meta-training epochs."""
    teachers_per_epoch: int = 4
    """m: teachers (recovered tasks) per epoch."""
    grouping: Literal["dissimilarity", "similarity", "off"] = "dissimilarity"
    """Task grouping: dissimilarity (TGR), similarity (Table 8 ablation) or off (teachers drawn from the whole zoo)."""
    groups: int = 5
    """c: number of task groups."""
    small_groups: Literal["error", "merge"] = "error"
    """A group with fewer than m teachers: stop with an error, or merge it into the largest group."""
    probe_weights: str = ""
    """ImageNet ResNet-34 weights (torchvision format) for the Fisher probe; empty: the data-free fallback."""
    fisher_samples: int = 0
    """Images per recovered task used for its Fisher embedding (0: all)."""
    igr: Literal["first", "second", "off"] = "first"
    """Meta-model update: first (IGR, the paper's form), second (the authors' second-order form), off (ERM)."""
    beta: float = 1e-3
    """IGR step beta."""
    meta_lr: float = 1e-3
    """Adam learning rate of the meta-model (IGR step and MAML outer step)."""
    kd: bool = True
    """Use the KL(teacher || meta-model) term of Eq. 8."""
    ce: bool = True
    """Use the cross-entropy-to-task-labels term of Eq. 8."""
    kd_form: Literal["kl", "authors"] = "kl"
    """kl (a true KL divergence) or authors (their kl_div on probabilities; not a divergence)."""
    rec_steps: int = 200
    """Generator steps per recovered task."""
    rec_lr: float = 1e-3
    """Adam learning rate of the generator and latent codes."""
    rec_per_class: int = 30
    """Recovered images per class (150 for a 5-way teacher)."""
    rec_nf: int = 64
    """Generator width nf (Table 7: 64); smaller is much cheaper on a CPU."""
    rec_bn_weight: float = 1.0
    """Weight of the BatchNorm-statistics term of the recovery loss."""
    replay: bool = True
    """Cross-task replay with MAML over the memory bank."""
    bank_size: int = 20
    """Memory bank capacity (recovered tasks)."""
    train_shot: int = 1
    """K of the replay tasks and of meta-val model selection."""
    replay_queries: int = 15
    """Query images per class of a replay task."""
    meta_batch: int = 16
    """Replay tasks per MAML meta-batch."""
    replay_patience: int = 4
    """Replay meta-batches stop after this many in a row without a new best training accuracy (the authors' rule)."""
    replay_max_batches: int = 8
    """At most this many replay meta-batches per epoch."""
    inner_lr: float = 0.01
    """MAML inner learning rate."""
    inner_steps: int = 5
    """MAML inner steps."""
    first_order: bool = False
    """First-order MAML."""
    val_every: int = 20
    """Validate on meta-val and checkpoint every this many epochs."""
    val_episodes: int = 600
    """Episodes per validation."""
    stop_after: int = 0
    """Stop (with a checkpoint) after this many epochs in this call; `--resume` continues (0: run to the end)."""
    time_limit: float = 0
    """Meta-train for at most this many seconds (this call), then validate, select and meta-test as if T were the
    epochs reached (0: no limit). For the largest run that fits a time budget."""
    resume: str = ""
    """Resume this run directory from its checkpoint (its stored config is used)."""

    def validate(self) -> None:
        DataConfig.validate(self)
        checks = [
            (self.kd or self.ce, "kd/ce", "at least one loss term on"),
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.teachers_per_epoch >= 1, "teachers_per_epoch", ">= 1"),
            (self.groups >= 1, "groups", ">= 1"),
            (self.val_every >= 1, "val_every", ">= 1"),
            (self.beta >= 0, "beta", ">= 0"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise DfmetaError(f"field {name!r}: expected {expected}")
        if not self.zoo and not self.resume:
            raise DfmetaError("field 'zoo': a teacher zoo directory is required (`dfmeta zoo build` or `zoo import`)")


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A seed for one random stream of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


class Trainer:
    """Runs one TGR meta-training; see the module docstring for the algorithm."""

    def __init__(self, cfg: TrainConfig, run: RunDir) -> None:
        from dfmeta.zoo import load_zoo

        self.cfg, self.run = cfg, run
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        set_threads(cfg.threads)
        self.zoo = load_zoo(cfg.zoo)
        self._check_zoo()
        self.val_split = load_split(cfg.dataset, "val", cfg.data_root, cfg.image_size or None)
        if (self.val_split.image_size, self.val_split.channels) != (self.image_size, self.channels):
            raise DfmetaError(f"{cfg.zoo}: the zoo's teachers take {self.image_size}px {self.channels}-channel images, "
                              f"dataset {cfg.dataset} has {self.val_split.image_size}px "
                              f"{self.val_split.channels}-channel images")
        self.test_split = load_split(cfg.dataset, "test", cfg.data_root, cfg.image_size or None)
        self.model = build(cfg.arch, self.n_way, self.image_size, self.channels, bn="batch").to(self.device)
        self.params = {k: v.to(self.device).requires_grad_(True) for k, v in params_of(self.model).items()}
        self.opt = torch.optim.Adam(self.params.values(), lr=cfg.meta_lr)
        from dfmeta.meta.bank import MemoryBank
        self.bank = MemoryBank(cfg.bank_size)
        self.epoch = 0
        self.best: dict[str, Any] = {"acc": -1.0, "epoch": 0}
        self.groups: np.ndarray | None = None
        self.val = Evaluator(self.val_split, cfg.ways, cfg.train_shot, cfg.queries, cfg.val_episodes,
                             cfg.episode_seed, cfg.eval_steps, cfg.eval_lr, self.device, cfg.episode_batch or None)

    # ------------------------------------------------------------------ checks
    def _check_zoo(self) -> None:
        cfg, zoo = self.cfg, self.zoo
        t0 = zoo[0]
        self.image_size, self.channels, self.n_way = t0.image_size, t0.in_channels, t0.num_classes
        for t in zoo.teachers:
            if (t.image_size, t.in_channels, t.num_classes) != (self.image_size, self.channels, self.n_way):
                raise DfmetaError(f"model {t.id} ({zoo.path / t.file}): {t.num_classes}-way {t.image_size}px "
                                  f"{t.in_channels}-channel, but model {t0.id} is {self.n_way}-way {self.image_size}px "
                                  f"{self.channels}-channel; a zoo must share image size, channels and class count")
        if self.n_way != cfg.ways:
            raise DfmetaError(f"the zoo's teachers are {self.n_way}-way but --ways is {cfg.ways}")
        if cfg.teachers_per_epoch > len(zoo):
            raise DfmetaError(f"field 'teachers_per_epoch': m = {cfg.teachers_per_epoch} is larger than the zoo "
                              f"({len(zoo)} models)")
        if cfg.grouping != "off" and cfg.groups > len(zoo):
            raise DfmetaError(f"field 'groups': c = {cfg.groups} is larger than the zoo ({len(zoo)} models)")

    # ------------------------------------------------------------------ stages
    def recovery_config(self):
        from dfmeta.recover import RecoveryConfig
        c = self.cfg
        return RecoveryConfig(steps=c.rec_steps, lr=c.rec_lr, per_class=c.rec_per_class, nf=c.rec_nf,
                              bn_weight=c.rec_bn_weight)

    def group(self) -> np.ndarray:
        """Task grouping (Eq. 5-7), cached in the run directory."""
        cfg = self.cfg
        path = self.run.path / "groups.npz"
        if cfg.grouping == "off":
            return np.zeros(len(self.zoo), np.int64)
        if path.exists():
            with np.load(path) as z:
                return z["labels"]
        from dfmeta.grouping import GroupingConfig, group_teachers
        from dfmeta.recover import recover_tasks, teachers_per_batch
        t0 = time.perf_counter()
        tasks = []
        idx = list(range(len(self.zoo)))
        rcfg = self.recovery_config()
        chunk = teachers_per_batch(rcfg, self.image_size, self.device, self.n_way)
        for lo in range(0, len(idx), chunk):
            tasks += recover_tasks(self.zoo.teachers, idx[lo:lo + chunk], rcfg, self.device,
                                   epoch_seed(cfg.seed, 0, 7))
            print(f"  grouping: recovered tasks {min(lo + chunk, len(idx))}/{len(idx)}", flush=True)
        gcfg = GroupingConfig(groups=cfg.groups, mode=cfg.grouping, probe_weights=cfg.probe_weights,
                              fisher_samples=cfg.fisher_samples)
        labels, W, info = group_teachers(self.zoo, tasks, gcfg, self.device)
        labels = np.asarray(labels, np.int64)
        buf = io.BytesIO()
        np.savez(buf, labels=labels, W=W)
        atomic_write(path, buf.getvalue())
        sizes = np.bincount(labels, minlength=cfg.groups).tolist()
        self.run.write_json("groups.json", {"labels": labels.tolist(), "sizes": sizes,
                                            "teacher_ids": [t.id for t in self.zoo.teachers],
                                            "info": {k: v for k, v in info.items() if isinstance(v, (str, int, float))}})
        print(f"  grouping: {cfg.groups} groups of sizes {sizes} ({time.perf_counter() - t0:.1f} s)", flush=True)
        return labels

    def usable_groups(self, labels: np.ndarray) -> np.ndarray:
        """Check that every group can supply m teachers (or merge small groups into the largest, if asked)."""
        m, labels = self.cfg.teachers_per_epoch, labels.copy()
        sizes = np.bincount(labels)
        small = [g for g in np.flatnonzero(sizes) if sizes[g] < m]
        if small and self.cfg.small_groups == "error":
            raise DfmetaError(f"a task group has {sizes[small[0]]} teachers, fewer than m = {m} (group sizes "
                              f"{sizes.tolist()}); use fewer --groups, a smaller --teachers-per-epoch, or "
                              f"--small-groups merge")
        for g in small:
            labels[labels == g] = int(np.argmax(sizes))
        if small:
            print(f"  grouping: merged groups {small} (fewer than m = {m} teachers) into group "
                  f"{int(np.argmax(sizes))}", flush=True)
        return labels

    def pick_teachers(self, epoch: int) -> list[int]:
        """Pick a group, then m teachers from it (seeded by the epoch)."""
        rng = np.random.default_rng(epoch_seed(self.cfg.seed, epoch, 1))
        assert self.groups is not None
        group = rng.choice(np.unique(self.groups))
        members = np.flatnonzero(self.groups == group)
        return sorted(rng.choice(members, self.cfg.teachers_per_epoch, replace=False).tolist())

    def meta_step(self, tasks) -> dict[str, float]:
        """Update the meta-model with the IGR gradient of the m recovered tasks."""
        from dfmeta.meta.igr import igr_gradient
        cfg = self.cfg
        xs = torch.stack([normalise(t.images, self.zoo[t.teacher].mean, self.zoo[t.teacher].std) for t in tasks])
        logits = torch.stack([t.logits for t in tasks])
        labels = torch.stack([t.labels for t in tasks])
        params = {k: v.detach() for k, v in self.params.items()}
        res = igr_gradient(self.model, params, xs, logits, labels, beta=cfg.beta, mode=cfg.igr,
                           kd=cfg.kd, ce=cfg.ce, kd_form=cfg.kd_form)
        self.opt.zero_grad(set_to_none=True)
        for k, p in self.params.items():
            p.grad = res.grads[k].detach().clone()
        self.opt.step()
        return {"loss": float(res.losses.mean()), "regulariser": float(res.regulariser), "cosine": float(res.cosine)}

    def replay(self, epoch: int) -> dict[str, float]:
        """Cross-task replay: MAML meta-batches of interpolated tasks from the memory bank."""
        from dfmeta.meta.maml import maml_loss
        cfg = self.cfg
        g = torch.Generator(device=self.device)
        g.manual_seed(epoch_seed(cfg.seed, epoch, 2))
        best, stale, n, losses = -1.0, 0, 0, []
        while n < cfg.replay_max_batches and stale < cfg.replay_patience:
            try:
                xs, ys, xq, yq = self.bank.sample_tasks(cfg.meta_batch, self.n_way, cfg.train_shot,
                                                        cfg.replay_queries, g)
            except DfmetaError:
                break  # not enough stored classes yet
            loss, acc = maml_loss(self.model, self.params, xs, ys, xq, yq, cfg.inner_lr, cfg.inner_steps,
                                  cfg.first_order)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            n += 1
            losses.append(float(loss.detach()))
            acc = float(acc)
            if acc > best:
                best, stale = acc, 0
            else:
                stale += 1
        return {"replay_batches": n, "replay_loss": float(np.mean(losses)) if losses else float("nan"),
                "replay_acc": best if n else float("nan")}

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "params": {k: v.detach().cpu() for k, v in self.params.items()},
                "opt": self.opt.state_dict(), "bank": self.bank.state_dict(), "best": self.best,
                "config": to_dict(self.cfg)}

    def save_checkpoint(self) -> None:
        atomic_torch_save(self.state(), self.run.path / "checkpoint.pt")

    def load_checkpoint(self) -> bool:
        path = self.run.path / "checkpoint.pt"
        if not path.exists():
            return False
        st = torch.load(path, map_location=self.device, weights_only=False)
        with torch.no_grad():
            for k, v in st["params"].items():
                self.params[k].copy_(v.to(self.device))
        self.opt.load_state_dict(st["opt"])
        self.bank.load_state_dict(st["bank"])
        self.best, self.epoch = st["best"], st["epoch"]
        # metrics written after the checkpoint belong to epochs that will be run again
        lines = [m for m in self.run.metrics() if m.get("epoch", 0) <= self.epoch]
        atomic_write(self.run.path / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in lines))
        return True

    # ------------------------------------------------------------------ the loop
    def validate(self) -> EvalResult:
        return self.val(self.model, self.params)

    def validate_and_select(self, epoch: int, row: dict[str, Any]) -> None:
        """Meta-val accuracy of the current meta-model; keep it as ``best.pt`` if it is the best so far; checkpoint."""
        res = self.validate()
        row.update(val_acc=res.mean, val_ci95=res.ci95)
        if res.mean > self.best["acc"]:
            self.best = {"acc": res.mean, "ci95": res.ci95, "epoch": epoch}
            atomic_torch_save({k: v.detach().cpu() for k, v in self.params.items()}, self.run.path / "best.pt")
        self.run.log(**row)
        self.save_checkpoint()

    def fit(self) -> dict[str, Any]:
        """Meta-train (resuming if a checkpoint exists), then meta-test the meta-val-selected model once."""
        cfg = self.cfg
        done = self.run.path / "results.json"
        if done.exists():
            print(f"run already finished: {done}")
            return json.loads(done.read_text())
        if self.load_checkpoint():
            print(f"resumed from epoch {self.epoch}", flush=True)
        self.groups = self.usable_groups(self.group())
        from dfmeta.recover import recover_tasks
        rcfg = self.recovery_config()
        start, ran, t_start, last_val = self.epoch, 0, time.perf_counter(), None
        from tqdm import tqdm
        bar = tqdm(total=cfg.epochs, initial=start, desc="meta-train", unit="ep", dynamic_ncols=True)
        while self.epoch < cfg.epochs:
            if cfg.stop_after and ran >= cfg.stop_after:
                break
            if cfg.time_limit and ran and time.perf_counter() - t_start > cfg.time_limit:
                bar.close()
                print(f"time limit of {cfg.time_limit:.0f} s reached at epoch {self.epoch}: ending the run there")
                if last_val != self.epoch:
                    self.validate_and_select(self.epoch, {"validated_epoch": self.epoch, "time_limit_end": True})
                return self.meta_test()
            epoch = self.epoch + 1
            t = {}
            t0 = time.perf_counter()
            chosen = self.pick_teachers(epoch)
            tasks = recover_tasks(self.zoo.teachers, chosen, rcfg, self.device, epoch_seed(cfg.seed, epoch, 0))
            t1 = time.perf_counter()
            stats = self.meta_step(tasks)
            t2 = time.perf_counter()
            for task in tasks:  # stored normalised with its own teacher's statistics
                tt = self.zoo[task.teacher]
                self.bank.add(dataclasses.replace(task, images=normalise(task.images, tt.mean, tt.std)))
            if cfg.replay:
                stats.update(self.replay(epoch))
            t3 = time.perf_counter()
            t.update(t_recover=t1 - t0, t_igr=t2 - t1, t_replay=t3 - t2)
            self.epoch, ran = epoch, ran + 1
            row = {"epoch": epoch, "teachers": [self.zoo[i].id for i in chosen],
                   "rec_loss": float(np.mean([x.loss for x in tasks])), **stats, **t}
            if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
                self.validate_and_select(epoch, row)
                last_val = epoch
            else:
                self.run.log(**row)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", val=f"{self.best['acc']:.1f}")
        bar.close()
        if self.epoch < cfg.epochs:
            if self.epoch % cfg.val_every:
                self.save_checkpoint()
            print(f"stopped at epoch {self.epoch}/{cfg.epochs}; continue with: dfmeta train --resume {self.run.path}")
            return {"stopped_at": self.epoch}
        return self.meta_test()

    def meta_test(self) -> dict[str, Any]:
        """Evaluate the meta-val-selected parameters once on meta-test, at every K of ``shots``."""
        cfg = self.cfg
        best = torch.load(self.run.path / "best.pt", map_location=self.device, weights_only=True)
        out: dict[str, Any] = {"method": "tgr", "epochs_run": self.epoch, "selected_epoch": self.best["epoch"],
                               "val_acc": self.best["acc"], "test": {}}
        for k in cfg.shots:
            ev = Evaluator(self.test_split, cfg.ways, k, cfg.queries, cfg.episodes, cfg.episode_seed, cfg.eval_steps,
                           cfg.eval_lr, self.device, cfg.episode_batch or None)
            res = ev(self.model, best)
            out["test"][str(k)] = res.as_dict()
            self.run.log(final_test=True, shots=k, **res.as_dict())
            print(f"meta-test {cfg.ways}-way {k}-shot: {res} (model of epoch {self.best['epoch']}, "
                  f"meta-val {self.best['acc']:.2f})")
        self.run.write_json("results.json", out)
        return out


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a TGR meta-training; returns the results."""
    if cfg.resume:
        path = Path(cfg.resume)
        if not (path / "config.json").is_file():
            raise DfmetaError(f"{path}: not a run directory (no config.json)")
        stored = json.loads((path / "config.json").read_text())
        stored.update(resume="", stop_after=cfg.stop_after, time_limit=cfg.time_limit, device=cfg.device,
                      threads=cfg.threads)
        cfg = make(TrainConfig, stored)
        run = RunDir(path)
    else:
        from dfmeta.zoo.format import read_manifest
        read_manifest(cfg.zoo)  # a wrong zoo path fails before a run directory is made
        name = "tgr" if cfg.grouping != "off" or cfg.igr != "off" else "vanilla"
        run = RunDir.new(cfg.out_dir, cfg.dataset, name, cfg.seed, cfg)
    print(f"run directory: {run.path}", flush=True)
    return Trainer(cfg, run).fit()


__all__ = ["TrainConfig", "Trainer", "train"]
