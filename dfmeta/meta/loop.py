"""The meta-training loop every method shares (TGR, the inversion and fusion baselines, MAML on real data).

A method subclasses :class:`MetaTrainer` and writes :meth:`MetaTrainer.train_epoch` (and, if it keeps state
beyond the meta-model and its optimizer, :meth:`extra_state` / :meth:`load_extra_state`). The loop gives it:

- the zoo (checked: one image format and class count), a seeded teacher subset (``zoo_size``, the paper's Fig. 6);
- meta-val / meta-test data, several datasets at once for the multi-domain scenario;
- the meta-model (BatchNorm on batch statistics) as a parameter dict with one Adam optimizer;
- validation on fixed meta-val episodes every ``val_every`` epochs with best-model selection (``best.pt``);
- an exact checkpoint at each validation and on ``stop_after``; ``--resume`` continues a killed run;
- ``time_limit``: end early and honestly (validate, select, meta-test as if T were the epochs reached); ``--resume``
  continues such a run to its configured epochs (the early meta-test kept as ``results_epoch{N}.json``);
- ``defer_test``: meta-train without loading meta-test (a time limit then only stops with a checkpoint); a later
  ``--resume`` meta-tests the finished run. A finished run's checkpoint drops training buffers (memory banks, pseudo
  data), so the last call carries little more than ``best.pt``;
- one meta-test of the selected model at every K of ``shots``, written to ``results.json``;
- ``calls.jsonl``: each call that continued the run from a checkpoint, with the epoch, the seconds of training
  before it (``train_seconds`` of the checkpoint: wall clock of the training loops, validations included, over all
  calls; a time limit counts per call) and the settings it gave (:data:`CALL_SETTINGS`; ``config.json`` keeps the
  first call's);
- ``env.jsonl``: each call's machine and software (:func:`dfmeta.environment.environment`).

Every random choice of an epoch should come from :func:`epoch_seed` ``(seed, epoch, stream)``, so that a resumed
run continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from dfmeta.commands.common import DataConfig, EvalFields
from dfmeta.config import as_stored, given, learning_rates, make, require, to_dict
from dfmeta.data.domains import dataset_names, load_domains
from dfmeta.errors import DfmetaError
from dfmeta.evaluate import EvalResult
from dfmeta.nets import build, params_of
from dfmeta.runs import (RunDir, atomic_torch_save, atomic_write, is_torch_file, read_json_object, resolve_device,
                         seed_everything, set_threads)
from dfmeta.zoo.format import check_zoo_of_resume, record_zoo

CALL_SETTINGS = ("stop_after", "time_limit", "defer_test", "device", "threads")
"""Settings a ``--resume`` call gives anew (the rest comes from the run's ``config.json``). ``threads`` left at 0
keeps the run's own count: CPU numbers depend on it, so a resumed run continues as the uninterrupted one would."""
CALL_PATHS = ("data_root", "zoo")
"""Where a resumed call finds what the run reads, taken from the call only where it gives them (a run continued on
another machine, e.g. meta-tested where the test split is). A zoo given anew must hold the run's teachers, checked
by their checksums against the run's ``zoo.json`` (:func:`dfmeta.zoo.format.check_zoo_of_resume`)."""


@dataclass(frozen=True)
class MetaLoopConfig(DataConfig, EvalFields):
    """Fields of every meta-training run on the shared loop (a zoo-based method adds the zoo: MetaTrainConfig)."""

    arch: str = "conv4"
    """Meta-model architecture."""
    image_size: int = 0
    """Resize the dataset's images to this size (0: the dataset's own); must match the zoo's."""
    epochs: int = 1000
    """T: meta-training epochs."""
    meta_lr: float = 1e-3
    """Adam learning rate of the meta-model."""
    train_shot: int = 1
    """K of the meta-training tasks and of meta-val model selection."""
    val_every: int = 20
    """Validate on meta-val and checkpoint every this many epochs."""
    val_episodes: int = 600
    """Episodes per validation (of each dataset of a multi-domain one; 0: as many as --episodes)."""
    stop_after: int = 0
    """Stop (with a checkpoint) after this many epochs in this call; `--resume` continues (0: run to the end)."""
    time_limit: float = 0
    """Meta-train for at most this many seconds (this call), then validate, select and meta-test as if T were the
    epochs reached (0: no limit). For the largest run that fits a time budget; `--resume` continues it."""
    defer_test: bool = False
    """Meta-train without the meta-test split (for a machine that cannot hold it): a time limit then stops with a
    checkpoint instead of meta-testing, and a finished run is meta-tested by a later `--resume` without this flag."""
    resume: str = ""
    """Resume this run directory from its checkpoint (its stored config is used)."""

    def validate(self) -> None:
        DataConfig.validate(self)
        EvalFields.validate(self)
        require([
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.val_every >= 1, "val_every", ">= 1"),
            (self.train_shot >= 1, "train_shot", ">= 1"),
            (self.val_episodes >= 0, "val_episodes", f">= 0 (0: as many as --episodes), got {self.val_episodes}"),
            *learning_rates(self, "meta_lr"),
            (self.stop_after >= 0, "stop_after", f">= 0 (0: run to the end), got {self.stop_after}"),
            (math.isfinite(self.time_limit) and self.time_limit >= 0, "time_limit",
             f"seconds >= 0 (0: no limit), got {self.time_limit}"),
        ])
        if self.resume:  # a run's files cut short by a kill: a clear error now, not a traceback from the loop
            run = Path(self.resume)
            if (run / "config.json").is_file():
                read_json_object(run / "config.json")
            if (run / "checkpoint.pt").is_file() and not is_torch_file(run / "checkpoint.pt"):
                raise DfmetaError(f"{run / 'checkpoint.pt'}: not a readable checkpoint (truncated or corrupt)")


@dataclass(frozen=True)
class MetaTrainConfig(MetaLoopConfig):
    """Fields every zoo-based meta-training method shares."""

    zoo: str = ""
    """Teacher zoo directory (dfmeta format; `dfmeta zoo import` converts the authors')."""
    zoo_size: int = 0
    """Use a seeded random subset of this many teachers (0: the whole zoo; the paper's Fig. 6)."""

    def validate(self) -> None:
        MetaLoopConfig.validate(self)
        require([(self.zoo_size >= 0, "zoo_size", ">= 0")])
        if not self.zoo and not self.resume:
            raise DfmetaError("field 'zoo': a teacher zoo directory is required (`dfmeta zoo build` or `zoo import`)")


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A seed for one random stream of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


class MetaTrainer:
    """Shared loop of a zoo-based meta-training method; subclasses write :meth:`train_epoch`."""

    method: ClassVar[str] = "meta"
    keeps_final_state: ClassVar[bool] = False
    """Whether a finished run's checkpoint keeps :meth:`extra_state` (an artefact, e.g. DRO's hyper-network) or drops
    it (training buffers: memory banks, pseudo data; a finished run then moves between machines cheaply)."""

    def __init__(self, cfg: MetaLoopConfig, run: RunDir) -> None:
        self.cfg, self.run = cfg, run
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions once
        seed_everything(cfg.seed)
        set_threads(cfg.threads)
        size = cfg.image_size or None
        if isinstance(cfg, MetaTrainConfig):
            self._load_zoo(cfg)
            self.val_splits = load_domains(cfg.dataset, "val", cfg.data_root, size, self.channels)
            for s in self.val_splits:
                if s.image_size != self.image_size:
                    raise DfmetaError(f"{cfg.zoo}: the zoo's teachers take {self.image_size}px images, dataset "
                                      f"{s.name} has {s.image_size}px images (set --image-size {self.image_size})")
        else:  # a data-based method: the image format comes from the data (one size), the way count from --ways
            self.zoo = None
            self.val_splits = load_domains(cfg.dataset, "val", cfg.data_root, size)
            self.image_size, self.channels, self.n_way = self.val_splits[0].image_size, self.val_splits[0].channels, \
                cfg.ways
            self.check()
        self.test_splits = [] if cfg.defer_test else load_domains(cfg.dataset, "test", cfg.data_root, size,
                                                                  self.channels)
        cfg.check_episodes(self.test_splits)  # the meta-test's shots fail now, not after the training
        self.model = build(cfg.arch, self.n_way, self.image_size, self.channels, bn="batch").to(self.device)
        self.params = {k: v.to(self.device).requires_grad_(True) for k, v in params_of(self.model).items()}
        self.opt = torch.optim.Adam(self.params.values(), lr=cfg.meta_lr)
        self.epoch = 0
        self.best: dict[str, Any] = {"acc": -1.0, "epoch": 0}
        self.seconds_before = 0.0  # training seconds before this call's loop (the checkpoint's); all, once it ended
        self.call_start: float | None = None  # when this call's training loop started
        self.val = cfg.evaluator(self.val_splits, cfg.train_shot, self.device, cfg.val_episodes)

    # ------------------------------------------------------------------ what a method writes
    def check(self) -> None:
        """Method-specific checks of the config against the zoo (before any compute)."""

    def setup(self) -> None:
        """Work before the first epoch (after a resume too), e.g. grouping the zoo."""

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One meta-training epoch; returns the metrics to log (timings as ``t_*`` seconds)."""
        raise NotImplementedError

    def end_training(self) -> None:
        """Stop background work when meta-training ends (done, stopped, at a time limit or on an error)."""

    def extra_state(self) -> dict[str, Any]:
        """Method state beyond the meta-model and its optimizer, for the checkpoint."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""

    # ------------------------------------------------------------------ checks
    def _load_zoo(self, cfg: MetaTrainConfig) -> None:
        """Load the zoo (or its seeded ``zoo_size`` subset), check it, then the method's checks."""
        from dfmeta.zoo import load_zoo
        self.zoo = load_zoo(cfg.zoo)
        record_zoo(self.run.path, cfg.zoo)  # what a resume that names the zoo anew is checked against
        if cfg.zoo_size:
            if cfg.zoo_size > len(self.zoo):
                raise DfmetaError(f"field 'zoo_size': {cfg.zoo_size} teachers asked, the zoo has {len(self.zoo)}")
            keep = np.random.default_rng([cfg.seed, 11]).choice(len(self.zoo), cfg.zoo_size, replace=False)
            self.zoo.teachers = [self.zoo.teachers[i] for i in sorted(keep.tolist())]
        self._check_zoo()
        self.zoo.check_defaulted_dataset(cfg)
        self.check()
        if warning := self.zoo.dataset_warning(dataset_names(cfg.dataset)):
            print(warning, flush=True)

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

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """The checkpoint; a finished run's leaves out the method state unless ``keeps_final_state``."""
        keep = self.epoch < self.cfg.epochs or self.keeps_final_state
        return {"epoch": self.epoch, "params": {k: v.detach().cpu() for k, v in self.params.items()},
                "opt": self.opt.state_dict(), "best": self.best, "config": to_dict(self.cfg),
                "extra": self.extra_state() if keep else {}, "train_seconds": self.train_seconds()}

    def train_seconds(self) -> float:
        """Wall-clock seconds of training (validations included) over all calls, up to now."""
        return self.seconds_before + (time.perf_counter() - self.call_start if self.call_start is not None else 0.0)

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
        self.best, self.epoch = st["best"], st["epoch"]
        self.seconds_before = float(st.get("train_seconds", 0.0))  # absent in checkpoints written before it was kept
        if st["extra"]:  # a finished run's may have been left out
            self.load_extra_state(st["extra"])
        return True

    def drop_metrics_after_checkpoint(self) -> None:
        """Drop the metrics lines a killed call wrote after the checkpoint (of epoch 0 where there is none): its
        later epochs, a time limit's last validation and an unfinished meta-test (a ``final_test`` line without
        ``results.json``), which this call writes again. The log then equals an uninterrupted run's."""
        rows = self.run.metrics()
        keep = [m for m in rows if not m.get("final_test")
                and max(m.get("epoch", 0), m.get("validated_epoch", 0)) <= self.epoch]
        if len(keep) < len(rows):
            self.run.rewrite_metrics(keep)

    # ------------------------------------------------------------------ the loop
    def validate(self) -> EvalResult:
        return self.val(self.model, self.params)

    def validate_and_select(self, epoch: int, row: dict[str, Any]) -> None:
        """Meta-val accuracy of the current meta-model; keep it as ``best.pt`` if it is the best so far; checkpoint."""
        t0 = time.perf_counter()
        res = self.validate()
        row.update(val_acc=res.mean, val_ci95=res.ci95, t_val=time.perf_counter() - t0)
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
            res = json.loads(done.read_text())
            if res.get("epochs_run", cfg.epochs) >= cfg.epochs:
                print(f"run already finished: {done}")
                return res
            self.reopen(res)
        self.run.record_environment(self.device)
        resumed = self.load_checkpoint()
        self.drop_metrics_after_checkpoint()
        if resumed:
            before = f" after {self.seconds_before:.0f} s of training" if self.seconds_before else ""
            on = f", {torch.get_num_threads()} torch thread(s)" if self.device.type == "cpu" else ""
            print(f"resumed from epoch {self.epoch}{before}{on}", flush=True)
            self.run.log_call(from_epoch=self.epoch, train_seconds_before=round(self.seconds_before, 1),
                              **{k: getattr(cfg, k) for k in (*CALL_SETTINGS, *CALL_PATHS) if hasattr(cfg, k)})
        if self.epoch < cfg.epochs:
            self.setup()
        try:
            ended = self.train_epochs()
        finally:
            self.seconds_before, self.call_start = self.train_seconds(), None  # the clock stops with training
            self.end_training()
        if ended == "time limit":
            return self.meta_test()
        if self.epoch < cfg.epochs:
            if self.epoch % cfg.val_every:
                self.save_checkpoint()
            print(f"stopped at epoch {self.epoch}/{cfg.epochs}; continue with: {self.resume_command()}")
            return {"stopped_at": self.epoch}
        if cfg.defer_test:
            print(f"meta-training finished; meta-test it with the test split present: {self.resume_command()}")
            return {"stopped_at": self.epoch, "meta_test": "deferred"}
        return self.meta_test()

    def train_epochs(self) -> str:
        """The epochs up to T, ``stop_after`` or the time limit; returns "time limit" when that ended the run (a
        deferred test's time limit only stops it), else ""."""
        cfg = self.cfg
        start, ran, t_start, last_val = self.epoch, 0, time.perf_counter(), None
        self.call_start = t_start
        from dfmeta.progress import bar as progress_bar
        if self.device.type == "cpu" and start < cfg.epochs:  # a frozen-looking bar would read as a hang
            print(f"meta-training {cfg.epochs - start} epoch(s); the bar moves once per epoch, which can take minutes "
                  f"on a CPU at the paper's sizes", flush=True)
        bar = progress_bar(total=cfg.epochs, initial=start, desc=f"meta-train {self.method}", unit="ep",
                           dynamic_ncols=True)
        while self.epoch < cfg.epochs:
            if cfg.stop_after and ran >= cfg.stop_after:
                break
            if cfg.time_limit and ran and time.perf_counter() - t_start > cfg.time_limit:
                bar.close()
                if cfg.defer_test:
                    print(f"time limit of {cfg.time_limit:g} s reached at epoch {self.epoch}")
                    return ""
                print(f"time limit of {cfg.time_limit:g} s reached at epoch {self.epoch}: ending the run there")
                if last_val != self.epoch:
                    self.validate_and_select(self.epoch, {"validated_epoch": self.epoch, "time_limit_end": True})
                return "time limit"
            epoch = self.epoch + 1
            stats = self.train_epoch(epoch)
            self.check_finite(epoch, stats)
            self.epoch, ran = epoch, ran + 1
            row = {"epoch": epoch, **stats}
            if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
                self.validate_and_select(epoch, row)
                last_val = epoch
            else:
                self.run.log(**row)
            bar.update(1)
            shown = {k: f"{v:.3f}" for k, v in stats.items() if k == "loss" and isinstance(v, float)}
            if self.best["epoch"]:  # the best meta-val so far, once there is one
                shown["best_val"] = f"{self.best['acc']:.1f}"
            bar.set_postfix(**shown)
        bar.close()
        return ""

    def check_finite(self, epoch: int, stats: dict[str, Any]) -> None:
        """Stop a diverged run (a NaN or infinite loss or meta-parameter) before it is validated or tested: its
        numbers would be chance level, not a result. The last checkpoint stays."""
        # only the main objective: a part that did not run this epoch logs nan by design (replay_loss without replay)
        bad = [k for k in ("loss",) if isinstance(stats.get(k), float) and not math.isfinite(stats[k])]
        if not bad:
            bad = [k for k, v in self.params.items() if not bool(torch.isfinite(v).all())][:1]
        if bad:
            rates = ", ".join(f"--{n.replace('_', '-')} {getattr(self.cfg, n):g}"
                              for n in ("meta_lr", "inner_lr", "beta") if isinstance(getattr(self.cfg, n, None), float))
            raise DfmetaError(f"meta-training diverged at epoch {epoch}: {bad[0]} is not finite; lower the step sizes "
                              f"({rates}); {self.run.path} keeps its last checkpoint")

    def resume_command(self) -> str:
        """The command line that continues this run."""
        return f"{command_of(self.method)} --resume {self.run.path}"

    def reopen(self, res: dict[str, Any]) -> None:
        """Continue a run that a time limit ended: its meta-test result then (of the model selected on meta-val so far;
        nothing was selected on it) is kept as ``results_epoch{N}.json`` and its metrics rows as ``interim_test``."""
        n = res.get("epochs_run", 0)
        interim = self.run.path / f"results_epoch{n}.json"
        (self.run.path / "results.json").replace(interim)
        self.run.rewrite_metrics([{**{k: v for k, v in m.items() if k != "final_test"}, "interim_test": True}
                                  if m.get("final_test") else m for m in self.run.metrics()])
        print(f"continuing a run a time limit ended at epoch {n}/{self.cfg.epochs} (its meta-test then: "
              f"{interim.name})", flush=True)

    def meta_test(self) -> dict[str, Any]:
        """Evaluate the meta-val-selected parameters once on meta-test, at every K of ``shots``."""
        cfg = self.cfg
        best = torch.load(self.run.path / "best.pt", map_location=self.device, weights_only=True)
        out: dict[str, Any] = {"method": self.method, "dataset": cfg.dataset, "epochs_run": self.epoch,
                               "selected_epoch": self.best["epoch"], "val_acc": self.best["acc"],
                               "splits": {"val": [s.name for s in self.val_splits],
                                          "test": [s.name for s in self.test_splits]}, "test": {}}
        if self.zoo is not None:  # the teachers this run used: its report needs no copy of the zoo
            out["zoo_archs"] = [t.arch for t in self.zoo.teachers]
        for k in cfg.shots:
            res = cfg.evaluator(self.test_splits, k, self.device)(self.model, best, progress=f"meta-test {k}-shot")
            out["test"][str(k)] = res.as_dict()
            self.run.log(final_test=True, shots=k, **res.as_dict())
            per = "".join(f"; {n} {r}" for n, r in res.parts.items())
            print(f"meta-test {cfg.ways}-way {k}-shot: {res}{per} (model of epoch {self.best['epoch']}, "
                  f"meta-val {self.best['acc']:.2f})")
        self.run.write_json("results.json", out)
        return out


def command_of(method: str) -> str:
    """The command that trains (and continues) a run of ``method``."""
    return "dfmeta train" if method in ("tgr", "vanilla") else f"dfmeta baseline {method}"


def resumed_config(cfg: MetaLoopConfig, method: str) -> MetaLoopConfig:
    """The config a ``--resume`` call of ``method``'s command continues with: the run's ``config.json`` with the call's
    :data:`CALL_SETTINGS`. Refuses, before anything is written, a run another command trains and a setting the run
    fixes that the call gives another value (by a flag or a preset)."""
    from dfmeta.report.collect import describe, load_run
    path = Path(cfg.resume)
    if not (path / "config.json").is_file():
        raise DfmetaError(f"{path}: not a run directory (no config.json)")
    stored = read_json_object(path / "config.json")
    run = load_run(path, stored)
    stored = as_stored(type(cfg), stored)  # a run older than a field goes on as it began
    if run.kind != "train":
        raise DfmetaError(f"{path} is {describe(run)}, not a meta-training run: there is nothing to resume")
    if run.method != "?" and command_of(run.method) != command_of(method):
        raise DfmetaError(f"{path} is a {run.method} run; resume it with the command that started it "
                          f"({command_of(run.method)} --resume {path})")
    defaults, now = to_dict(type(cfg)()), to_dict(cfg)
    from_call = given(cfg)
    if from_call is None:  # built in code: the fields it set away from the defaults
        from_call = {k: "flag" for k in now if now[k] != defaults[k]}
    # a run that stopped on a group smaller than m trained no epoch: it may go on with another small_groups rule
    open_now = ("small_groups",) if stored.get("small_groups") == "error" else ()
    fixed = [k for k in from_call
             if k not in (*CALL_SETTINGS, *CALL_PATHS, *open_now, "resume") and now[k] != stored.get(k, defaults[k])]
    if fixed:
        flags = lambda ks: ", ".join("--" + k.replace("_", "-") for k in ks)  # noqa: E731
        preset = " (from --preset)" if any(from_call[k] == "preset" for k in fixed) else ""
        raise DfmetaError(f"{path}: {flags(fixed)}{preset} given with --resume, but the run's config.json fixes "
                          f"{(it := 'it' if len(fixed) == 1 else 'them')} (start a new run to change {it}); a resume call "
                          f"takes only {flags((*CALL_SETTINGS, *CALL_PATHS))}")
    given_now = [k for k in (*CALL_PATHS, *open_now) if k in from_call]
    check_zoo_of_resume(path, stored.get("zoo", ""), now["zoo"] if "zoo" in given_now else "")
    settings = {k: getattr(cfg, k) for k in (*CALL_SETTINGS, *given_now)}
    settings["threads"] = cfg.threads or stored.get("threads", 0)
    return make(type(cfg), {**stored, "resume": "", **settings})


def keep_small_groups_rule(run: RunDir, cfg: MetaLoopConfig) -> None:
    """Record in ``config.json`` a small-groups rule a resume call gave a run that had stopped on a small group (the
    one setting besides :data:`CALL_SETTINGS` such a call may change, see :func:`resumed_config`)."""
    stored = json.loads((run.path / "config.json").read_text())
    rule = getattr(cfg, "small_groups", None)
    if stored.get("small_groups") == "error" and rule not in (None, "error"):
        atomic_write(run.path / "config.json", json.dumps({**stored, "small_groups": rule}, indent=2) + "\n")


def run_training(trainer_cls: type[MetaTrainer], cfg: MetaLoopConfig, name: str | None = None) -> dict[str, Any]:
    """Run (or, with ``cfg.resume``, continue) one meta-training with ``trainer_cls``; returns the results. The run
    directory is locked while this call trains it; a new run that fails on bad input before any work is removed."""
    resuming = bool(cfg.resume)
    if resuming:
        path = cfg.resume
        cfg = resumed_config(cfg, trainer_cls.method)
        run = RunDir(path)
    else:
        if isinstance(cfg, MetaTrainConfig):
            from dfmeta.zoo.format import read_manifest
            read_manifest(cfg.zoo)  # a wrong zoo path fails before a run directory is made
        run = RunDir.new(cfg.out_dir, cfg.dataset, name or trainer_cls.method, cfg.seed, cfg)
    print(f"run directory: {run.path}", flush=True)
    try:
        with run.locked():
            if resuming:
                keep_small_groups_rule(run, cfg)
            return trainer_cls(cfg, run).fit()
    except KeyboardInterrupt:
        print(f"\n{interrupted_note(run.path)}; continue with: {command_of(trainer_cls.method)} --resume {run.path}",
              flush=True)
        raise
    except Exception:  # bad input, memory, ...: a new run that failed before any work leaves nothing behind
        if not resuming:
            run.discard_if_unused()
        raise


def interrupted_note(path: Path) -> str:
    """What an interrupted meta-training keeps: its last checkpoint's epoch (the epochs after it are trained again)."""
    ckpt = path / "checkpoint.pt"
    if not is_torch_file(ckpt):
        return (f"interrupted before its first checkpoint (one is written at each meta-validation, every --val-every "
                f"epochs): a resume starts at epoch 0")
    epoch = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True).get("epoch", "?")  # lazy: quick
    return f"interrupted; the run keeps its checkpoint of epoch {epoch} (later epochs are trained again)"


__all__ = ["MetaLoopConfig", "MetaTrainConfig", "MetaTrainer", "epoch_seed", "run_training"]
