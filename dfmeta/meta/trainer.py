"""TGR: Algorithm 1 of the paper, on the shared loop of :mod:`dfmeta.meta.loop`.

    group the zoo (recover one task per teacher, Fisher embeddings, dissimilarity W, spectral clustering)
    for epoch = 1..T:
        pick a group, pick m teachers from it
        recover one pseudo task per teacher (one batched computation)
        update the meta-model with the IGR gradient of the Eq. 8 losses
        store the tasks in the memory bank; cross-task replay with MAML
        every k epochs: validate on meta-val (best-model selection) and checkpoint
    meta-test the selected meta-model once
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from dfmeta.config import learning_rates, require
from dfmeta.errors import DfmetaError
from dfmeta import task_checkpoint
from dfmeta.grouping import GroupingConfig
from dfmeta.meta.ahead import Ahead
from dfmeta.meta.bank import MemoryBank, ReplayMix
from dfmeta.meta.loop import MetaTrainConfig, MetaTrainer, epoch_seed, run_training
from dfmeta.nets import ARCHITECTURES
from dfmeta.recover import (FastRecoveryFields, RecoveredTask, RecoveryConfig, compiles, fast_settings, normalise,
                            recover_tasks, teachers_per_batch)
from dfmeta.runs import atomic_write


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class TrainConfig(FastRecoveryFields, MetaTrainConfig):
    """A TGR meta-training run (defaults: the paper's CIFAR-FS setting at the embedded dataset's scale)."""

    teachers_per_epoch: int = 4
    """m: teachers (recovered tasks) per epoch."""
    grouping: Literal["dissimilarity", "similarity", "off"] = "dissimilarity"
    """Task grouping: dissimilarity (TGR), similarity (Table 8 ablation) or off (teachers drawn from the whole zoo)."""
    groups: int = 5
    """c: number of task groups."""
    small_groups: Literal["error", "merge", "fewer"] = "error"
    """A group with fewer than m teachers: stop with an error, merge it into the largest group, or cluster W again
    into the most groups (at most c) that each have m teachers (a small zoo, e.g. Fig. 6's)."""
    groups_from: str = ""
    """Take the task groups from this `dfmeta group` run directory instead of computing them (group once, train
    many runs): its groups.json when it grouped the same teachers with this mode and c, else its cached W clustered
    again for this run's teachers (a --zoo-size subset), mode and c."""
    probe: str = "resnet34"
    """Architecture of the Fisher probe loaded from --probe-weights (resnet34: the paper's; conv4: a dfmeta Conv4)."""
    probe_weights: str = ""
    """ImageNet ResNet-34 weights (torchvision format) for the Fisher probe; empty: the data-free fallback."""
    fisher_samples: int = 0
    """Images per recovered task used for its Fisher embedding (0: all)."""
    fisher_labels: Literal["task", "probe"] = "task"
    """Labels of the Fisher: task (the teacher's class index on the probe's head, the authors') or probe (the probe's
    own prediction; not in the paper)."""
    fisher_cosine: Literal["whole", "layers"] = "whole"
    """Eq. 6's cosine: whole (over the whole Fisher embedding, the paper) or layers (per probe parameter tensor, then
    the mean: the authors' code)."""
    igr: Literal["first", "second", "off"] = "first"
    """Meta-model update: first (IGR, the paper's form), second (the authors' second-order form), off (ERM)."""
    beta: float = 1e-3
    """IGR step beta."""
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
    rec_augment: bool = True
    """Random crop (zero padding 4) and flip between generator and teacher during recovery (the authors' code; the
    paper states none). The generator then matches the BN statistics of the padded crops, not of the stored images."""
    rec_prefetch: int = 0
    """Recover the tasks of this many epochs in one batched computation (the same tasks: an epoch's teachers and
    seeds do not depend on training); 0: auto (8 on CUDA, 1 elsewhere)."""
    rec_overlap: Literal["auto", "on", "off"] = "auto"
    """Recover the next epochs' tasks in a background thread while the current ones train (the same tasks; on a CPU
    the worker takes as many torch threads as the run): on, off, auto (on for a CPU run on one torch thread, e.g.
    --threads 1, with a second core free to it, where recovery and training then take a core each; off on CUDA, not
    yet timed there, for several CPU threads, where it oversubscribes the cores, and with one usable core). Runs side
    by side that already fill the cores gain nothing from it."""
    replay: bool = True
    """Cross-task replay with MAML over the memory bank."""
    bank_size: int = 20
    """Memory bank capacity (recovered tasks)."""
    replay_mix: ReplayMix = "across"
    """Replay tasks recombine classes across the stored tasks (the paper's interpolated tasks; a class is one
    teacher's class), take all their classes from one teacher (within: an ablation, no task holds images of two
    teachers' generators), or recombine dataset classes (pooled, the authors' code: a class holds the images every
    stored teacher of that dataset class recovered), or recombine across without drawing one dataset class twice into
    a task (distinct: an ablation), or draw dataset classes as pooled does, each shown by one stored teacher's copy
    (one-copy: an ablation, pooled without mixing generators' images in a class), or draw as distinct and show each
    class by the pooled images of its dataset class (distinct-pooled: an ablation, the mixing without pooled's draw)."""
    replay_cue: float = 0.0
    """Add to each class of a replay task a colour cast (a per-channel offset drawn per task and class from
    N(0, cue^2), on the normalised images): an ablation that gives replay tasks a shortcut that is not the classes'
    content, as images of different generators offer under the across mix (0: off, the paper)."""
    replay_cue_scope: Literal["class", "task", "stored"] = "class"
    """What one colour cast of --replay-cue covers: each class of a task (the cue), a whole task (the control: the
    same shift of the images, nothing that tells a task's classes apart), or a stored class for the whole run (the
    same cast in every task that draws it, as a generator's style stays with its classes)."""
    replay_cue_kind: Literal["colour", "pattern"] = "colour"
    """What one cast of --replay-cue is: a per-channel offset (colour), or a smooth spatial pattern per channel (a
    4 x 4 grid of N(0, cue^2) values bilinearly upsampled to the image: the spatial part of a generator's style)."""
    replay_queries: int = 15
    """Query images per class of a replay task."""
    meta_batch: int = 16
    """Replay tasks per MAML meta-batch."""
    replay_patience: int = 4
    """Replay meta-batches stop after this many in a row without a new best training accuracy (the authors' rule)."""
    replay_max_batches: int = 0
    """At most this many replay meta-batches per epoch (0: no cap, the authors' patience rule alone)."""
    inner_lr: float = 0.01
    """MAML inner learning rate."""
    inner_steps: int = 5
    """MAML inner steps."""
    first_order: bool = False
    """First-order MAML."""
    replay_graph: bool = True
    """On CUDA, replay each MAML meta-batch as a captured CUDA graph (the same computation, no launch overhead)."""

    def validate(self) -> None:
        MetaTrainConfig.validate(self)
        require([
            (self.kd or self.ce, "kd/ce", "at least one loss term on"),
            (self.teachers_per_epoch >= 1, "teachers_per_epoch", ">= 1"),
            (self.groups >= 1, "groups", ">= 1"),
            (self.probe in ARCHITECTURES, "probe", f"one of: {', '.join(ARCHITECTURES)}"),
            (self.beta >= 0, "beta", ">= 0"),
            *learning_rates(self, "rec_lr", "inner_lr"),
            (self.rec_prefetch >= 0, "rec_prefetch", ">= 0"),
            (self.replay_max_batches >= 0, "replay_max_batches", ">= 0 (0: no cap)"),
            (self.replay_patience >= 1, "replay_patience", ">= 1"),
            (self.replay_cue >= 0, "replay_cue", ">= 0 (0: off)"),
            (not self.replay or self.rec_per_class >= self.train_shot + self.replay_queries, "rec_per_class",
             f">= train_shot + replay_queries = {self.train_shot + self.replay_queries} (a replay task takes that many "
             f"images of a recovered class; or lower --replay-queries)"),
            (not (self.groups_from and self.grouping == "off"), "groups_from",
             "no --groups-from with --grouping off (the groups would not be used)"),
        ])
        if not self.replay:  # replay settings would be silently ignored
            unused = [f.name for f in dataclasses.fields(self) if f.name.startswith(("replay_mix", "replay_cue"))
                      and getattr(self, f.name) != f.default]
            if unused:
                raise DfmetaError(f"field {unused[0]!r}: set, but replay is off (--no-replay); leave it out")


class Trainer(MetaTrainer):
    """One TGR meta-training; see the module docstring for the algorithm."""

    method = "tgr"
    cfg: TrainConfig

    def __init__(self, cfg: TrainConfig, run) -> None:
        super().__init__(cfg, run)
        self.bank = MemoryBank(cfg.bank_size, cfg.replay_mix, cfg.replay_cue, cfg.replay_cue_scope, cfg.replay_cue_kind)
        self.groups: np.ndarray | None = None
        self.group_W: np.ndarray | None = None  # W of the grouped teachers, when known (for small_groups="fewer")
        self.group_seed = GroupingConfig.seed
        self.prefetched: dict[int, list] = {}  # epoch -> its recovered tasks (see rec_prefetch)
        self.next_batch = 1  # the first epoch after the batches taken so far
        self.ahead: Ahead | None = None  # the background recovery of the next batch (rec_overlap)
        self.bg_recover = 0.0  # seconds the worker took for the batch taken this epoch (logged once)
        self.replay_step = None  # the MAML meta-batch step, graphed on CUDA (made once: fixed parameter tensors)

    def check(self) -> None:
        cfg, zoo = self.cfg, self.zoo
        if cfg.teachers_per_epoch > len(zoo):
            raise DfmetaError(f"field 'teachers_per_epoch': m = {cfg.teachers_per_epoch} is larger than the zoo "
                              f"({len(zoo)} models)")
        if cfg.grouping != "off" and cfg.groups > len(zoo):
            raise DfmetaError(f"field 'groups': c = {cfg.groups} is larger than the zoo ({len(zoo)} models)")

    def setup(self) -> None:
        cfg = self.cfg
        rcfg = self.recovery_config()
        amp, graph, batching = fast_settings(rcfg, self.device)
        ahead = self.epochs_per_recovery()
        graphed = self.device.type == "cuda" and cfg.replay_graph
        compiled = ", compiled" if compiles(rcfg, self.device) and batching == "grouped" else ""
        print(f"  speed: recovery in {'bf16' if amp else 'float32'}, {batching} batching{compiled}, "
              f"{'CUDA-graph' if graph else 'eager'} steps, {ahead} epoch(s) per recovery"
              f"{', the next recovered in the background' if self.overlaps() else ''}; replay "
              f"{'CUDA-graph' if graphed else 'eager'}", flush=True)
        labels = self.group()
        self.groups = self.usable_groups(labels)
        if not np.array_equal(self.groups, labels):
            g = json.loads((self.run.path / "groups.json").read_text())
            self.run.write_json("groups.json", {**g, "small_groups": self.cfg.small_groups,
                                                "used_labels": self.groups.tolist(),
                                                "used_sizes": np.bincount(self.groups).tolist()})

    def extra_state(self) -> dict[str, Any]:
        return {"bank": self.bank.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.bank.load_state_dict(state["bank"])

    # ------------------------------------------------------------------ stages
    def recovery_config(self) -> RecoveryConfig:
        c = self.cfg
        return RecoveryConfig(steps=c.rec_steps, lr=c.rec_lr, per_class=c.rec_per_class, nf=c.rec_nf,
                              bn_weight=c.rec_bn_weight, augment=c.rec_augment, **c.fast_recovery())

    def group(self) -> np.ndarray:
        """Task grouping (Eq. 5-7), cached in the run directory (with W and the clustering seed, for
        ``small_groups="fewer"``)."""
        cfg = self.cfg
        path = self.run.path / "groups.npz"
        if cfg.grouping == "off":
            return np.zeros(len(self.zoo), np.int64)
        m = cfg.teachers_per_epoch
        if cfg.small_groups == "error" and len(self.zoo) < cfg.groups * m:  # a group of fewer than m is certain
            raise DfmetaError(f"{len(self.zoo)} teachers cannot fill c = {cfg.groups} groups of m = {m}; use fewer "
                              f"--groups, a smaller --teachers-per-epoch, or --small-groups merge or fewer")
        if path.exists():
            with np.load(path) as z:
                self.group_W = z["W"] if "W" in z else None
                self.group_seed = int(z["seed"]) if "seed" in z else GroupingConfig.seed
                return z["labels"]
        if cfg.groups_from:
            return self.groups_of_run(cfg.groups_from)
        from dfmeta.grouping import group_teachers, grouping_stability, load_probe
        gcfg = GroupingConfig(groups=cfg.groups, mode=cfg.grouping, probe=cfg.probe, probe_weights=cfg.probe_weights,
                              fisher_samples=cfg.fisher_samples, fisher_labels=cfg.fisher_labels,
                              fisher_cosine=cfg.fisher_cosine)
        if gcfg.probe_weights:
            load_probe(gcfg, torch.device("cpu"), self.image_size)  # a bad weights file fails before the recovery
        t0 = time.perf_counter()
        idx = list(range(len(self.zoo)))
        rcfg = self.recovery_config()
        pad = (compiles(rcfg, self.device) and fast_settings(rcfg, self.device)[2] == "grouped"
               and all(t.arch == "conv4" for t in self.zoo.teachers))
        if pad:  # in the epochs' batch size, the last batch padded: the epochs' one compilation serves the grouping
            chunk = cfg.teachers_per_epoch * self.epochs_per_recovery()
        else:
            chunk = teachers_per_batch(rcfg, self.image_size, self.device, self.n_way)
        seed, done = epoch_seed(cfg.seed, 0, 7), [0]

        def recover(part: list[int]) -> list[RecoveredTask]:
            return recover_tasks(self.zoo.teachers, part, rcfg, self.device, seed, chunk=chunk, pad=pad)

        def shown(part: list[int], loaded: bool) -> None:
            done[0] += len(part)
            how = f"read from {task_checkpoint.FOLDER}/ (recovered before a stop)" if loaded else "recovered"
            print(f"  grouping: tasks {done[0]}/{len(idx)} {how}", flush=True)
        folder = self.run.path / task_checkpoint.FOLDER
        key = {"recovery": dataclasses.asdict(rcfg), "seed": seed, "pad": pad, "device": self.device.type,
               "teachers": [t.id for t in self.zoo.teachers]}
        tasks = task_checkpoint.recover_resumably(folder, key, idx, chunk, recover, self.device, shown)
        labels, W, info = group_teachers(self.zoo, tasks, gcfg, self.device)
        labels = np.asarray(labels, np.int64)
        self.save_groups(labels, W, gcfg.seed)
        task_checkpoint.discard(folder)
        sizes = np.bincount(labels, minlength=cfg.groups).tolist()
        self.run.write_json("groups.json", {"labels": labels.tolist(), "sizes": sizes,
                                            "stability": round(grouping_stability(W, labels, cfg.grouping,
                                                                                  gcfg.seed), 4),
                                            "teacher_ids": [t.id for t in self.zoo.teachers],
                                            "within_group_overlap": self.within_group_overlap(labels),
                                            "info": {k: v for k, v in info.items() if isinstance(v, (str, int, float))}})
        print(f"  grouping: {cfg.groups} groups of sizes {sizes} ({time.perf_counter() - t0:.1f} s)", flush=True)
        return labels

    def groups_of_run(self, run_dir: str) -> np.ndarray:
        """The labels of a `dfmeta group` run, cached here: taken as they are when the run grouped these teachers
        with this mode and c, else clustered again from its W (:func:`dfmeta.grouping.regroup`)."""
        cfg, path = self.cfg, Path(run_dir) / "groups.json"
        if not path.is_file():
            raise DfmetaError(f"field 'groups_from': {path} not found (a `dfmeta group` run directory expected)")
        g = json.loads(path.read_text())
        for name, before in (("fisher_labels", "task"), ("fisher_cosine", "layers")):  # before: runs without it
            used = g.get(name, before)
            if used != getattr(cfg, name):
                raise DfmetaError(f"field {name!r}: {getattr(cfg, name)!r}, but {path} was grouped with {used!r} "
                                  f"(pass --{name.replace('_', '-')} {used})")
        ids = [t.id for t in self.zoo.teachers]
        same = (g.get("teacher_ids"), g.get("mode"), g.get("groups")) == (ids, cfg.grouping, cfg.groups)
        from dfmeta.grouping import CACHE_FILE, cached_dissimilarity, spectral_groups
        W, seed = None, GroupingConfig.seed
        if not same or (Path(run_dir) / CACHE_FILE).is_file():
            W, seed = cached_dissimilarity(run_dir, ids)
        labels = np.asarray(g["labels"], np.int64) if same else spectral_groups(W, cfg.groups, cfg.grouping, seed)
        self.save_groups(labels, W, seed)
        self.run.write_json("groups.json", {"labels": labels.tolist(), "teacher_ids": ids,
                                            "sizes": np.bincount(labels, minlength=cfg.groups).tolist(),
                                            "from": str(path), "regrouped": not same,
                                            "within_group_overlap": self.within_group_overlap(labels)})
        how = "taken from" if same else f"{cfg.grouping} into {cfg.groups}, {len(ids)} teachers, from the W of"
        print(f"  grouping: {how} {path}", flush=True)
        return labels

    def within_group_overlap(self, labels: np.ndarray) -> float | None:
        """:func:`dfmeta.grouping.within_group_overlap` of these groups of the run's teachers (rounded)."""
        from dfmeta.grouping import class_overlap, within_group_overlap
        within = within_group_overlap(labels, class_overlap(self.zoo))
        return None if within is None else round(within, 4)

    def save_groups(self, labels: np.ndarray, W: np.ndarray | None, seed: int) -> None:
        """Cache the labels, W (when known) and the clustering seed in the run's ``groups.npz``."""
        self.group_W, self.group_seed = W, seed
        buf = io.BytesIO()
        np.savez(buf, labels=labels, seed=seed, **({} if W is None else {"W": W}))
        atomic_write(self.run.path / "groups.npz", buf.getvalue())

    def usable_groups(self, labels: np.ndarray) -> np.ndarray:
        """Check that every group can supply m teachers; else, if asked, merge the small groups into the largest, or
        cluster W again into fewer groups (:func:`dfmeta.grouping.fewer_groups`)."""
        m, labels = self.cfg.teachers_per_epoch, labels.copy()
        sizes = np.bincount(labels)
        small = [int(g) for g in np.flatnonzero(sizes) if sizes[g] < m]
        if small and self.cfg.small_groups == "error":
            raise DfmetaError(f"a task group has {sizes[small[0]]} teachers, fewer than m = {m} (group sizes "
                              f"{sizes.tolist()}); go on with these groups by `dfmeta train --resume "
                              f"{self.run.path} --small-groups merge` (or fewer), or start again with fewer "
                              f"--groups or a smaller --teachers-per-epoch")
        if small and self.cfg.small_groups == "fewer":
            from dfmeta.grouping import fewer_groups
            if self.group_W is None:
                raise DfmetaError(f"--small-groups fewer needs W, but the groups came without it (group sizes "
                                  f"{sizes.tolist()}; a group run without fisher.npz); use --small-groups merge")
            labels = fewer_groups(self.group_W, self.cfg.groups, m, self.cfg.grouping, self.group_seed)
            print(f"  grouping: c = {self.cfg.groups} left a group with fewer than m = {m} teachers (sizes "
                  f"{sizes.tolist()}); clustered again into {labels.max() + 1} groups of sizes "
                  f"{np.bincount(labels).tolist()}", flush=True)
            return labels
        for g in small:
            labels[labels == g] = int(np.argmax(sizes))
        if small:
            print(f"  grouping: merged groups {small} (fewer than m = {m} teachers) into group "
                  f"{int(np.argmax(sizes))}", flush=True)
        return labels

    def pick_teachers(self, epoch: int) -> list[int]:
        """Pick a group, then m teachers from it (seeded by the epoch)."""
        from dfmeta.grouping import pick_from_groups
        assert self.groups is not None
        return pick_from_groups(self.groups, self.cfg.teachers_per_epoch,
                                np.random.default_rng(epoch_seed(self.cfg.seed, epoch, 1)))

    def meta_step(self, tasks: list[RecoveredTask]) -> dict[str, float]:
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
        from dfmeta.cuda_graph import Graphed
        from dfmeta.meta.maml import meta_gradients, replay
        cfg = self.cfg
        if self.replay_step is None:
            self.replay_step = Graphed(meta_gradients(self.model, self.params, cfg.inner_lr, cfg.inner_steps,
                                                      cfg.first_order), self.device, cfg.replay_graph,
                                       name="replay meta-batch")
        return replay(self.model, self.params, self.opt, self.bank, epoch_seed(cfg.seed, epoch, 2),
                      n_tasks=cfg.meta_batch, n_way=self.n_way, k_shot=cfg.train_shot, n_query=cfg.replay_queries,
                      inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps, first_order=cfg.first_order,
                      patience=cfg.replay_patience, max_batches=cfg.replay_max_batches, step=self.replay_step)

    def epochs_per_recovery(self) -> int:
        """rec_prefetch, with 0 meaning 8 on CUDA and 1 elsewhere."""
        return self.cfg.rec_prefetch or (8 if self.device.type == "cuda" else 1)

    def overlaps(self) -> bool:
        """Whether the next epochs' tasks are recovered in the background (rec_overlap; auto: a one-thread CPU run
        with two usable cores or more)."""
        if self.cfg.rec_overlap != "auto":
            return self.cfg.rec_overlap == "on"
        return self.device.type == "cpu" and torch.get_num_threads() == 1 and usable_cores() >= 2

    def batch_from(self, epoch: int) -> list[int]:
        """The epochs recovered together with ``epoch`` when it is the first of its batch (rec_prefetch)."""
        return list(range(epoch, min(epoch + self.epochs_per_recovery(), self.cfg.epochs + 1)))

    def recover_epochs(self, epochs: list[int], on_step: Callable[[int], None] | None = None) -> dict[int, list]:
        """Recover the tasks of ``epochs`` together: each epoch's m teachers, seed ``epoch_seed(seed, epoch, 0)``."""
        cfg, m = self.cfg, self.cfg.teachers_per_epoch
        picks = [self.pick_teachers(e) for e in epochs]
        seeds = [epoch_seed(cfg.seed, e, 0) for e, p in zip(epochs, picks) for _ in p]
        tasks = recover_tasks(self.zoo.teachers, [i for p in picks for i in p], self.recovery_config(), self.device,
                              seeds, on_step=on_step)
        return {e: tasks[j * m:(j + 1) * m] for j, e in enumerate(epochs)}

    def epoch_tasks(self, epoch: int) -> list:
        """The recovered tasks of ``epoch``. With rec_prefetch P > 1 the tasks of epochs epoch..epoch+P-1 are
        recovered together and kept until their epoch comes; with rec_overlap the next such batch is recovered in
        the background meanwhile."""
        if epoch not in self.prefetched:
            epochs = self.batch_from(epoch)
            got = self.ahead.take(epochs) if self.ahead is not None else None
            self.bg_recover = self.ahead.work_s if got is not None and self.ahead is not None else 0.0
            self.prefetched = got if got is not None else self.recover_epochs(epochs)
            self.next_batch = epochs[-1] + 1
            self.recover_ahead()
        return self.prefetched.pop(epoch)

    def recover_ahead(self) -> None:
        """Start recovering the next batch in the background, if rec_overlap and none is pending. On CUDA only once
        the replay's CUDA graph is captured: the worker's own captures then never meet one of this thread."""
        if not self.overlaps() or self.next_batch > self.cfg.epochs:
            return
        if self.device.type == "cuda" and self.cfg.replay and self.cfg.replay_graph and (
                self.replay_step is None or self.replay_step.graph is None and self.replay_step.enabled):
            return
        if self.ahead is None:
            self.ahead = Ahead(self.recover_epochs, self.device)
        if not self.ahead.busy:
            self.ahead.start(self.batch_from(self.next_batch))

    def end_training(self) -> None:
        if self.ahead is not None:
            self.ahead.cancel()

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Pick m teachers, recover their tasks, take the IGR step, store the tasks, replay."""
        cfg = self.cfg
        t0 = time.perf_counter()
        tasks = self.epoch_tasks(epoch)
        t1 = time.perf_counter()
        stats = self.meta_step(tasks)
        t2 = time.perf_counter()
        for task in tasks:  # stored normalised with its own teacher's statistics
            tt = self.zoo[task.teacher]
            self.bank.add(dataclasses.replace(task, images=normalise(task.images, tt.mean, tt.std)),
                          tt.class_ids)
        if cfg.replay:
            stats.update(self.replay(epoch))
            self.recover_ahead()  # on CUDA, the first epoch's replay captures its graph before the worker starts
        t3 = time.perf_counter()
        if self.bg_recover:  # the batch taken this epoch was recovered in the background, in this many seconds
            stats["bg_recover"], self.bg_recover = self.bg_recover, 0.0
        return {"teachers": [self.zoo[t.teacher].id for t in tasks],
                "rec_loss": float(np.mean([x.loss for x in tasks])), **stats,
                "t_recover": t1 - t0, "t_igr": t2 - t1, "t_replay": t3 - t2}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a TGR meta-training; returns the results."""
    return run_training(Trainer, cfg, "tgr" if cfg.grouping != "off" or cfg.igr != "off" else "vanilla")


__all__ = ["TrainConfig", "Trainer", "train"]
