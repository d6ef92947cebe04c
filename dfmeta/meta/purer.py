"""PURER (Hu et al., "Architecture, Dataset and Model-Scale Agnostic Data-free Meta-Learning", CVPR 2023), the
meta-training part, ECI (ePisode Curriculum Inversion), on the shared loop of :mod:`dfmeta.meta.loop`.

    pseudo data: per teacher, per_class learnable images per class, in the teacher's normalised input space
    meta-model: the parameter average of the zoo (the authors' --average), or a fresh initialisation
    for each meta-iteration:
        one Adam step on the pseudo data of every teacher (episode inversion):
            L_inv = CE(M(x~), y) + bn_weight * BN-statistics(x~) + tv_weight * TV(x~) + l2_weight * ||x~||,
            x~ = jitter(x)
            minus adv_scale * (MAML query loss of the meta-model on a pseudo episode), when the gradient switch is on
        meta_batch pseudo episodes (N classes drawn across all teachers' pseudo classes) -> one MAML step
        gradient switch (the curriculum): on once at meta-iteration adv_start, then whenever the meta-model's
        training accuracy has not improved for adv_patience meta-iterations (the pseudo episodes have been learnt,
        so the next inversion step makes them harder)
    every val_every epochs (of `iterations` meta-iterations): validate, select, checkpoint; meta-test once

A pseudo class is a (teacher, class) pair, as in :class:`dfmeta.meta.bank.MemoryBank`. ICFIL, PURER's test-time
calibration, is not implemented: meta-testing is dfmeta's plain fine-tuning, as in the TGR paper's Table 1 (the
authors' public code has an ``--efil`` flag that only changes the log name). See docs/methods/purer.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import vmap

from dfmeta.config import learning_rates, require
from dfmeta.errors import DfmetaError
from dfmeta.meta.loop import MetaTrainConfig, MetaTrainer, epoch_seed, run_training
from dfmeta.meta.maml import maml_loss
from dfmeta.nets import stack_params
from dfmeta.recover import BNStatLoss, augment, frozen_teacher, loss_terms, teacher_rng
from dfmeta.zoo.format import Teacher


@dataclass(frozen=True)
class PurerConfig(MetaTrainConfig):
    """A PURER meta-training run (defaults: the authors' CIFAR-FS Conv4 scripts, scaled to dfmeta's epochs)."""

    iterations: int = 60
    """Meta-iterations per epoch (60 x T = 1000 epochs: the authors' 60000 = 240000 episodes / 4 on CIFAR-FS)."""
    meta_batch: int = 4
    """Pseudo episodes per meta-iteration, losses summed (authors: episode_batch 4)."""
    train_queries: int = 15
    """Query images per class of a pseudo episode (authors: 15)."""
    per_class: int = 0
    """Learnable images per class per teacher (0: train_shot + train_queries, the authors' 16 for 1-shot, 20 for
    5-shot)."""
    inner_lr: float = 0.01
    """MAML inner learning rate (authors: 0.01)."""
    inner_steps: int = 1
    """MAML inner steps (authors' scripts: 1)."""
    first_order: bool = False
    """First-order MAML (authors: second order)."""
    init: Literal["average", "random"] = "average"
    """Meta-model initialisation: average (parameter mean of the zoo's teachers of the meta architecture, heads
    included: the authors' --average) or random."""
    inv_lr: float = 0.25
    """Adam learning rate of the pseudo data (authors: 0.25)."""
    bn_weight: float = 0.01
    """Weight of the BatchNorm-statistics term (authors: 0.01)."""
    tv_weight: float = 1e-4
    """Weight of the total-variation prior (authors: 1e-4)."""
    l2_weight: float = 1e-5
    """Weight of the L2-norm prior (authors: 1e-5)."""
    jitter: int = 2
    """Random shift of the pseudo images, in pixels, before the teacher (authors: 2)."""
    adv_schedule: Literal["switch", "ramp", "off"] = "switch"
    """Adversarial term: switch (ECI, the authors' gradient switch), ramp (every meta-iteration after adv_start,
    weight growing linearly to adv_scale at the end), off (plain episode inversion, the paper's EI)."""
    adv_scale: float = 10.0
    """Weight of the reversed MAML loss in the inversion step (authors' scripts: 10)."""
    adv_start: int = 4000
    """Warm-up: meta-iterations before the first adversarial inversion step (authors' scripts: 4000)."""
    adv_patience: int = 6
    """The switch turns on after this many meta-iterations in a row without a new best training accuracy
    (authors: 6)."""
    inv_chunk: int = 0
    """Teachers inverted together in one vmapped pass (0: all; lower it if GPU memory runs out)."""

    def validate(self) -> None:
        MetaTrainConfig.validate(self)
        require([
            (self.iterations >= 1, "iterations", ">= 1"),
            (self.meta_batch >= 1, "meta_batch", ">= 1"),
            (self.train_queries >= 1, "train_queries", ">= 1"),
            (self.per_class == 0 or self.per_class >= self.train_shot + self.train_queries, "per_class",
             f"0 or >= train_shot + train_queries = {self.train_shot + self.train_queries}"),
            (self.inner_steps >= 0, "inner_steps", ">= 0"),
            *learning_rates(self, "inner_lr", "inv_lr"),
            (min(self.bn_weight, self.tv_weight, self.l2_weight) >= 0, "bn_weight/tv_weight/l2_weight", ">= 0"),
            (self.jitter >= 0, "jitter", ">= 0"),
            (self.adv_scale >= 0, "adv_scale", ">= 0"),
            (self.adv_start >= 0, "adv_start", ">= 0"),
            (self.adv_patience >= 1, "adv_patience", ">= 1"),
            (self.inv_chunk >= 0, "inv_chunk", ">= 0"),
        ])

    @property
    def images_per_class(self) -> int:
        return self.per_class or self.train_shot + self.train_queries


def sample_episodes(pool: Tensor, n_tasks: int, n_way: int, k_shot: int, n_query: int,
                    generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pseudo episodes from ``pool`` ``[classes, P, C, H, W]``: each draws ``n_way`` distinct classes and ``k_shot +
    n_query`` distinct images of each. Returns xs ``[T, N*K, C, H, W]``, ys ``[T, N*K]``, xq ``[T, N*Q, C, H, W]``,
    yq ``[T, N*Q]`` (labels 0..N-1 by drawn class); differentiable with respect to ``pool``."""
    n_cls, per = pool.shape[:2]
    need = k_shot + n_query
    if n_cls < n_way or per < need:
        raise DfmetaError(f"pseudo episodes: {n_way}-way with {need} images per class need {n_way} classes of "
                          f">= {need} images, the pseudo data has {n_cls} classes of {per}")
    dev = generator.device
    cls = torch.rand(n_tasks, n_cls, generator=generator, device=dev).argsort(1)[:, :n_way]
    img = torch.rand(n_tasks, n_way, per, generator=generator, device=dev).argsort(-1)[..., :need]
    x = pool[cls.to(pool.device).unsqueeze(-1), img.to(pool.device)]                 # [T, N, K+Q, C, H, W]
    y = torch.arange(n_way, device=pool.device).view(1, n_way, 1).expand(n_tasks, n_way, need)
    return (x[:, :, :k_shot].flatten(1, 2), y[:, :, :k_shot].flatten(1),
            x[:, :, k_shot:].flatten(1, 2), y[:, :, k_shot:].flatten(1))


def total_variation(x: Tensor) -> Tensor:
    """Per leading index of ``x`` ``[k, n, C, H, W]``: the sum of the L2 norms of horizontal, vertical and both
    diagonal neighbour differences (DeepInversion's prior, as in the authors' code)."""
    diffs = (x[..., :, :-1] - x[..., :, 1:], x[..., :-1, :] - x[..., 1:, :],
             x[..., 1:, :-1] - x[..., :-1, 1:], x[..., :-1, :-1] - x[..., 1:, 1:])
    return sum(torch.linalg.vector_norm(d.flatten(1), dim=1) for d in diffs)


class PseudoData:
    """The learnable pseudo data of every teacher, ``[teachers, N * P, C, H, W]`` (rows grouped by class), with its
    Adam optimizer; the inversion loss is computed for same-architecture teachers together under ``vmap``."""

    def __init__(self, teachers: list[Teacher], cfg: PurerConfig, device: torch.device) -> None:
        t0 = teachers[0]
        self.cfg, self.n_cls, self.per = cfg, t0.num_classes, cfg.images_per_class
        shape = (self.n_cls * self.per, t0.in_channels, t0.image_size, t0.image_size)
        init = [torch.randn(shape, generator=teacher_rng(cfg.seed, i)) for i in range(len(teachers))]
        self.data = torch.stack(init).to(device).requires_grad_()
        self.opt = torch.optim.Adam([self.data], lr=cfg.inv_lr)
        self.labels = torch.arange(self.n_cls, device=device).repeat_interleave(self.per)
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(teachers):
            groups.setdefault(t.arch, []).append(i)
        self.groups: list[tuple[list[int], nn.Module, dict[str, Tensor]]] = []
        with torch.random.fork_rng(devices=[]):  # building modules must not touch the global random stream
            for members in groups.values():
                model = frozen_teacher(teachers[members[0]]).to(device)
                state = stack_params({k: v.to(device, torch.float32) if v.is_floating_point() else v.to(device)
                                      for k, v in teachers[i].state.items()} for i in members)
                self.groups.append((members, model, state))

    def pool(self, detach: bool = False) -> Tensor:
        """The pseudo classes of all teachers, ``[teachers * N, P, C, H, W]`` (teacher-major)."""
        data = self.data.detach() if detach else self.data
        return data.view(-1, self.per, *data.shape[2:])

    def inversion_loss(self, members: list[int], model: nn.Module, state: dict[str, Tensor],
                       generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(total, CE, BN term), each ``[len(members)]``, of the teachers ``members`` on their jittered pseudo data."""
        cfg, k = self.cfg, len(members)
        x = self.data[members]
        n = x.shape[1]
        shift = torch.randint(0, 2 * cfg.jitter + 1, (2, k), generator=generator, device=generator.device)
        dy, dx = (s.to(x.device).repeat_interleave(n) for s in shift)     # one shift per teacher, as the authors
        xa = augment(x.flatten(0, 1), dy, dx, torch.zeros_like(dy, dtype=torch.bool), cfg.jitter).view_as(x)
        with BNStatLoss(model) as bn:
            ce, bnl = vmap(lambda s, xx: loss_terms(model, bn, s, xx, self.labels)[:2])(state, xa)
        prior = cfg.tv_weight * total_variation(xa) + cfg.l2_weight * torch.linalg.vector_norm(xa.flatten(1), dim=1)
        return ce + cfg.bn_weight * bnl + prior, ce, bnl

    def step(self, generator: torch.Generator, adversarial: Tensor | None = None) -> dict[str, float]:
        """One Adam step on the summed inversion losses of all teachers, minus ``adversarial`` (a loss of the
        meta-model on pseudo episodes, already weighted) when given."""
        self.opt.zero_grad(set_to_none=True)
        ce_sum = bn_sum = 0.0
        for members, model, state in self.groups:
            chunk = self.cfg.inv_chunk or len(members)
            for lo in range(0, len(members), chunk):
                sl = slice(lo, lo + chunk)
                loss, ce, bnl = self.inversion_loss(members[sl], model, {k: v[sl] for k, v in state.items()},
                                                    generator)
                loss.sum().backward()
                ce_sum, bn_sum = ce_sum + float(ce.detach().sum()), bn_sum + float(bnl.detach().sum())
        if adversarial is not None:
            (-adversarial).backward()
        self.opt.step()
        n = len(self.data)
        return {"inv_ce": ce_sum / n, "inv_bn": bn_sum / n}

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data.detach().clone(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["data"].shape) != tuple(self.data.shape):
            raise DfmetaError(f"checkpoint: pseudo data {list(state['data'].shape)}, this run expects "
                              f"{list(self.data.shape)}")
        with torch.no_grad():
            self.data.copy_(state["data"].to(self.data.device))
        self.opt.load_state_dict(state["opt"])


class PurerTrainer(MetaTrainer):
    """One PURER (ECI) meta-training; see the module docstring for the algorithm."""

    method = "purer"
    cfg: PurerConfig

    def __init__(self, cfg: PurerConfig, run) -> None:
        super().__init__(cfg, run)
        self.pseudo = PseudoData(self.zoo.teachers, cfg, self.device)
        if cfg.init == "average":
            from dfmeta.baselines.average import average_states
            avg = average_states([t.state for t in self._init_teachers], list(self.params))
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(avg[k].to(self.device))
        self.switch: dict[str, Any] = {"on": cfg.adv_schedule == "switch" and cfg.adv_start == 0,
                                       "best": None, "stale": 0}

    def check(self) -> None:
        cfg = self.cfg
        if cfg.init == "average":
            from dfmeta.baselines import BaselineInput
            from dfmeta.baselines.best_model import meta_teachers
            self._init_teachers = meta_teachers(BaselineInput(cfg.arch, self.n_way, self.image_size, self.channels,
                                                              cfg.seed, self.zoo, self.device))

    def extra_state(self) -> dict[str, Any]:
        return {"pseudo": self.pseudo.state_dict(), "switch": dict(self.switch)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.pseudo.load_state_dict(state["pseudo"])
        self.switch = dict(state["switch"])

    # ------------------------------------------------------------------ ECI
    def adversarial_weight(self, it: int) -> float:
        """Weight of the reversed MAML loss at meta-iteration ``it`` (1-based, over the whole run)."""
        cfg = self.cfg
        if cfg.adv_schedule == "switch":
            return cfg.adv_scale if self.switch["on"] else 0.0
        if cfg.adv_schedule == "ramp" and it > cfg.adv_start:
            total = cfg.epochs * cfg.iterations
            return cfg.adv_scale * min(1.0, (it - cfg.adv_start) / max(1, total - cfg.adv_start))
        return 0.0

    def feedback(self, it: int, acc: float) -> None:
        """The gradient switch: on at the end of meta-iteration ``adv_start``, then whenever the training accuracy
        has not improved for ``adv_patience`` meta-iterations (the authors' rule)."""
        cfg, s = self.cfg, self.switch
        if cfg.adv_schedule != "switch":
            return
        if it == cfg.adv_start:
            s["on"] = True
        elif it > cfg.adv_start and not s["on"]:
            if s["best"] is None or acc > s["best"]:
                s["best"], s["stale"] = acc, 0
            else:
                s["stale"] += 1
                if s["stale"] >= cfg.adv_patience:
                    s.update(on=True, best=None, stale=0)

    def episode_loss(self, params: dict[str, Tensor], n_tasks: int, generator: torch.Generator,
                     detach: bool) -> tuple[Tensor, Tensor]:
        """(summed MAML query loss, mean accuracy) of ``params`` on ``n_tasks`` fresh pseudo episodes."""
        cfg = self.cfg
        xs, ys, xq, yq = sample_episodes(self.pseudo.pool(detach), n_tasks, self.n_way, cfg.train_shot,
                                         cfg.train_queries, generator)
        return maml_loss(self.model, params, xs, ys, xq, yq, cfg.inner_lr, cfg.inner_steps, cfg.first_order)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """``iterations`` meta-iterations: inversion step (adversarial when the switch is on), then a MAML step."""
        cfg = self.cfg
        g = torch.Generator(device=self.device)
        g.manual_seed(epoch_seed(cfg.seed, epoch, 0))
        log: dict[str, list[float]] = {"loss": [], "train_acc": [], "inv_ce": [], "inv_bn": [], "adv_loss": []}
        t_inv = t_meta = 0.0
        for i in range(cfg.iterations):
            it = (epoch - 1) * cfg.iterations + i + 1
            t0 = time.perf_counter()
            w = self.adversarial_weight(it)
            adv = None
            if w > 0:  # the meta-model's loss on a pseudo episode, to be maximised over the pseudo data
                adv, _ = self.episode_loss({k: v.detach() for k, v in self.params.items()}, 1, g, detach=False)
                log["adv_loss"].append(float(adv.detach()))
                self.switch["on"] = False
            for k, v in self.pseudo.step(g, None if adv is None else w * adv).items():
                log[k].append(v)
            t1 = time.perf_counter()
            loss, acc = self.episode_loss(self.params, cfg.meta_batch, g, detach=True)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            log["loss"].append(float(loss.detach()))
            log["train_acc"].append(float(acc))
            self.feedback(it, log["train_acc"][-1])
            t_inv, t_meta = t_inv + t1 - t0, t_meta + time.perf_counter() - t1
        out: dict[str, Any] = {k: float(np.mean(v)) for k, v in log.items() if v}
        return {**out, "adv_steps": len(log["adv_loss"]), "t_invert": t_inv, "t_meta": t_meta}


def train_purer(cfg: PurerConfig) -> dict[str, Any]:
    """Run (or resume) a PURER meta-training; returns the results."""
    return run_training(PurerTrainer, cfg)


__all__ = ["PseudoData", "PurerConfig", "PurerTrainer", "sample_episodes", "total_variation", "train_purer"]
