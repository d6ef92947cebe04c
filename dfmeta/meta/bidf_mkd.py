"""BiDf-MKD (Hu et al., "Learning to Learn from APIs: Black-Box Data-Free Meta-Learning", ICML 2023), white-box
variant (the one TGR's Table 1 runs), on the shared loop of :mod:`dfmeta.meta.loop`.

    for epoch = 1..T:
        pick m teachers
        support set recovery: a fresh generator per teacher inverts it into S_i (label-conditional CE)
        inner level: adapt the meta-model to each S_i by distilling the teacher's outputs (KD)  -> theta_i
        boundary query set recovery: Q_i from a fresh generator, with CE minus the KL(teacher || theta_i) of
            the images on which the adapted model still agrees with the teacher (queries pushed to its boundary)
        outer level: KL(teacher(Q_i) || f(Q_i; theta_i)) summed over the m tasks, gradient to theta (MAML-style)
        task memory replay: store S_i and Q_i; MAML with CE on interpolated tasks drawn across the stored classes
        every k epochs: validate on meta-val (best-model selection) and checkpoint
    meta-test the selected meta-model once

White-box: the generator's gradient flows through the teacher (batched recovery of :mod:`dfmeta.recover`), not the
paper's zero-order estimate. Defaults, their sources and every deviation: ``docs/methods/bidf-mkd.md``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap

from dfmeta.config import learning_rates, require
from dfmeta.errors import DfmetaError
from dfmeta.meta.bank import MemoryBank, ReplayMix
from dfmeta.meta.loop import MetaTrainConfig, MetaTrainer, epoch_seed, run_training
from dfmeta.meta.loss import kd_loss, second_order_model
from dfmeta.meta.maml import Params, adapt, replay
from dfmeta.nets import fcall
from dfmeta.recover import ExtraLoss, FastRecoveryFields, RecoveredTask, RecoveryConfig, normalise, recover_tasks


@dataclass(frozen=True)
class BiDfMKDConfig(FastRecoveryFields, MetaTrainConfig):
    """A BiDf-MKD meta-training run (defaults: the authors' CIFAR-FS script, white-box, mapped onto epochs)."""

    teachers_per_epoch: int = 4
    """m: teachers (pseudo tasks) per epoch, one bi-level KD meta-batch (the authors' meta-batch: 4 tasks)."""
    support_per_class: int = 30
    """Recovered support images per class (authors: num_sup_kd 30)."""
    query_per_class: int = 30
    """Recovered query images per class (authors: num_qur_kd 30)."""
    rec_steps: int = 200
    """Generator steps per recovered set (authors: generate_iterations 200)."""
    rec_lr: float = 1e-3
    """Adam learning rate of the generator and latent codes (authors: Glr 0.001, betas 0.5, 0.999)."""
    rec_nf: int = 64
    """Generator width nf (authors: ngf 64); smaller is much cheaper on a CPU."""
    rec_bn_weight: float = 0.0
    """Weight of a BatchNorm-statistics term in recovery (0: the paper's label-conditional CE only)."""
    boundary: bool = True
    """Boundary query set recovery (off: the query set is recovered like the support set)."""
    boundary_weight: float = 1.0
    """lambda of the boundary term (authors: adv 1)."""
    boundary_warmup: float = 4000 / 60000
    """Fraction of the T epochs whose query sets are recovered without the boundary term (authors' scripts: from
    meta-iteration 4000 of 60000; 0: from the start)."""
    inner_loss: Literal["kd", "ce"] = "kd"
    """Inner-level loss on the support set: kd (distil the teacher's outputs, the paper) or ce (recovered labels)."""
    kd_form: Literal["kl", "authors"] = "kl"
    """kl (a true KL divergence) or authors (their kl_div on probabilities; not a divergence), for every KD term."""
    kd_inner_steps: int = 10
    """Inner-level KD steps on the support set (authors: inner_update_num_kd 10)."""
    inner_lr: float = 0.01
    """Inner learning rate of the KD and replay inner loops (authors: inner_lr 0.01)."""
    first_order: bool = False
    """First-order meta-gradients (authors: second order unless --approx)."""
    replay: bool = True
    """Task memory replay with MAML over interpolated tasks."""
    bank_size: int = 100
    """Memory of recovered tasks (support and query set of one teacher each), FIFO."""
    replay_mix: ReplayMix = "across"
    """How replay tasks draw their classes (see ``dfmeta train``'s replay_mix); pooled is closest to the authors'
    memory, which keeps images per dataset class id."""
    meta_batch: int = 4
    """Replay tasks per MAML meta-batch (authors: episode_batch 4)."""
    inner_steps: int = 5
    """Replay MAML inner steps (authors: inner_update_num 5)."""
    replay_queries: int = 15
    """Query images per class of a replay task (authors: num_qur_train 15)."""
    replay_patience: int = 200
    """Replay stops after this many meta-batches in a row without a new best training accuracy (authors:
    generate_interval 200)."""
    replay_max_batches: int = 60
    """At most this many replay meta-batches per epoch (the authors' 60000 meta-batches over T = 1000 epochs;
    0: no cap)."""

    def validate(self) -> None:
        MetaTrainConfig.validate(self)
        require([
            (self.teachers_per_epoch >= 1, "teachers_per_epoch", ">= 1"),
            (self.support_per_class >= 1, "support_per_class", ">= 1"),
            (self.query_per_class >= 1, "query_per_class", ">= 1"),
            (self.rec_steps >= 1, "rec_steps", ">= 1"),
            *learning_rates(self, "rec_lr", "inner_lr"),
            (self.rec_nf >= 1, "rec_nf", ">= 1"),
            (self.rec_bn_weight >= 0, "rec_bn_weight", ">= 0"),
            (self.boundary_weight >= 0, "boundary_weight", ">= 0"),
            (0 <= self.boundary_warmup <= 1, "boundary_warmup", "a fraction in [0, 1]"),
            (self.kd_inner_steps >= 0, "kd_inner_steps", ">= 0"),
            (self.inner_steps >= 0, "inner_steps", ">= 0"),
            (self.bank_size >= 1, "bank_size", ">= 1"),
            (self.meta_batch >= 1, "meta_batch", ">= 1"),
            (self.replay_queries >= 1, "replay_queries", ">= 1"),
            (self.replay_patience >= 1, "replay_patience", ">= 1"),
            (self.replay_max_batches >= 0, "replay_max_batches", ">= 0"),
            (not self.replay or self.support_per_class + self.query_per_class >= self.train_shot + self.replay_queries,
             "support_per_class", f"support_per_class + query_per_class >= train_shot + replay_queries "
                                  f"({self.train_shot + self.replay_queries}) images per stored class for replay"),
        ])


# ---------------------------------------------------------------------- the bi-level KD pieces
def boundary_loss(teacher_logits: Tensor, student_logits: Tensor, kd_form: str = "kl") -> Tensor:
    """The boundary term of query recovery: ``-mean_j 1[argmax t_j = argmax s_j] D(t_j, s_j)`` over the last-but-one
    axis (``[..., n, N] -> [...]``). Minimised with the CE, it moves the images on which the adapted meta-model still
    agrees with the teacher towards the meta-model's decision boundary. The gradient flows through the teacher only.

    ``kl``: D = KL(teacher || student). ``authors``: D = sum_c p_s (log p_s - p_t), their
    ``F.kl_div(softmax(teacher), softmax(student))`` summed over classes (not a divergence; kept for fidelity).
    """
    s = student_logits.detach()
    agree = (teacher_logits.argmax(-1) == s.argmax(-1)).to(teacher_logits.dtype)
    if kd_form == "kl":
        log_t = F.log_softmax(teacher_logits, -1)
        d = (log_t.exp() * (log_t - F.log_softmax(s, -1))).sum(-1)
    else:
        p_s = F.softmax(s, -1)
        d = (torch.special.xlogy(p_s, p_s) - p_s * F.softmax(teacher_logits, -1)).sum(-1)
    return -(agree * d).mean(-1)


def _differentiable(model: nn.Module, first_order: bool) -> nn.Module:
    """The meta-model for meta-gradients: second-order ones need the decomposed BatchNorm."""
    return model if first_order else second_order_model(model)


def kd_adapt(model: nn.Module, params: Params, xs: Tensor, ys: Tensor, ts: Tensor, inner_lr: float, steps: int,
             first_order: bool = False, inner_loss: str = "kd", kd_form: str = "kl") -> Params:
    """Inner level, all T tasks at once: adapt ``params`` to each support set ``xs`` ``[T, n, C, H, W]`` (normalised)
    by ``steps`` gradient steps on the KD loss to the teacher logits ``ts`` ``[T, n, N]`` (``inner_loss`` kd) or the
    CE to ``ys`` ``[T, n]`` (ce). Returns the adapted parameters stacked over tasks, differentiable in ``params``."""
    if xs.ndim != 5 or ys.shape != xs.shape[:2] or ts.shape[:2] != xs.shape[:2]:
        raise DfmetaError(f"bi-level KD: expected xs [T, n, C, H, W], ys [T, n], ts [T, n, N]; got "
                          f"{list(xs.shape)}, {list(ys.shape)}, {list(ts.shape)}")
    model = _differentiable(model, first_order)

    def one(x: Tensor, y: Tensor, t: Tensor) -> Params:
        return adapt(model, params, x, y, inner_lr, steps, first_order,
                     teacher_logits=t if inner_loss == "kd" else None, kd_form=kd_form)

    return vmap(one)(xs, ys, ts)


def outer_kd(model: nn.Module, fast: Params, xq: Tensor, yq: Tensor, tq: Tensor, first_order: bool = False,
             kd_form: str = "kl") -> tuple[Tensor, Tensor, Tensor]:
    """Outer level: (sum over tasks of KL(teacher(Q_i) || f(Q_i; theta_i)), mean accuracy to the recovered labels,
    mean agreement with the teacher's argmax) for stacked adapted parameters ``fast`` and query sets ``xq``
    ``[T, n, C, H, W]`` (normalised), labels ``yq`` ``[T, n]``, teacher logits ``tq`` ``[T, n, N]``."""
    model = _differentiable(model, first_order)

    def one(p: Params, x: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = fcall(model, p, x)
        pred = logits.argmax(-1)
        return kd_loss(logits, t, kd_form), (pred == y).to(x.dtype).mean(), (pred == t.argmax(-1)).to(x.dtype).mean()

    losses, accs, agree = vmap(one)(fast, xq, yq, tq)
    return losses.sum(), accs.mean().detach(), agree.mean().detach()


# ---------------------------------------------------------------------- the trainer
class BiDfMKDTrainer(MetaTrainer):
    """One BiDf-MKD meta-training (white-box); see the module docstring for the algorithm."""

    method = "bidf-mkd"
    cfg: BiDfMKDConfig

    def __init__(self, cfg: BiDfMKDConfig, run) -> None:
        super().__init__(cfg, run)
        self.bank = MemoryBank(cfg.bank_size, cfg.replay_mix)

    def check(self) -> None:
        if self.cfg.teachers_per_epoch > len(self.zoo):
            raise DfmetaError(f"field 'teachers_per_epoch': m = {self.cfg.teachers_per_epoch} is larger than the zoo "
                              f"({len(self.zoo)} models)")

    def extra_state(self) -> dict[str, Any]:
        return {"bank": self.bank.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.bank.load_state_dict(state["bank"])

    # ------------------------------------------------------------------ stages
    def recovery_config(self, per_class: int) -> RecoveryConfig:
        c = self.cfg
        return RecoveryConfig(steps=c.rec_steps, lr=c.rec_lr, per_class=per_class, nf=c.rec_nf,
                              bn_weight=c.rec_bn_weight, **c.fast_recovery())

    def pick_teachers(self, epoch: int) -> list[int]:
        """m distinct teachers drawn uniformly from the zoo (seeded by the epoch)."""
        rng = np.random.default_rng(epoch_seed(self.cfg.seed, epoch, 1))
        return sorted(rng.choice(len(self.zoo), self.cfg.teachers_per_epoch, replace=False).tolist())

    def boundary_on(self, epoch: int) -> bool:
        cfg = self.cfg
        return cfg.boundary and cfg.boundary_weight > 0 and epoch > cfg.boundary_warmup * cfg.epochs

    def stacked(self, tasks: list[RecoveredTask]) -> tuple[Tensor, Tensor, Tensor]:
        """(images normalised with each task's teacher statistics, labels, teacher logits), stacked over tasks."""
        xs = torch.stack([normalise(t.images, self.zoo[t.teacher].mean, self.zoo[t.teacher].std) for t in tasks])
        return xs, torch.stack([t.labels for t in tasks]), torch.stack([t.logits for t in tasks])

    def boundary_term(self, chosen: list[int], adapted: Params) -> ExtraLoss:
        """The recovery's extra loss: lambda * :func:`boundary_loss` against each teacher's adapted meta-model."""
        pos = {i: j for j, i in enumerate(chosen)}
        model, weight, form = self.model, self.cfg.boundary_weight, self.cfg.kd_form

        def extra(part: list[int], logits: Tensor, x: Tensor) -> Tensor:
            sel = torch.tensor([pos[i] for i in part], device=x.device)
            with torch.no_grad():
                student = vmap(lambda p, xx: fcall(model, p, xx))({k: v[sel] for k, v in adapted.items()}, x)
            return weight * boundary_loss(logits, student, form)

        return extra

    def store(self, support: list[RecoveredTask], query: list[RecoveredTask]) -> None:
        """Task memory: each teacher's support and query images (normalised) as one stored task."""
        for s, q in zip(support, query):
            tt = self.zoo[s.teacher]
            images = normalise(torch.cat([s.images, q.images]), tt.mean, tt.std)
            self.bank.add(dataclasses.replace(s, images=images, labels=torch.cat([s.labels, q.labels])), tt.class_ids)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Recover support sets, adapt by KD, recover boundary query sets, distil on them, store, replay."""
        cfg = self.cfg
        t0 = time.perf_counter()
        chosen = self.pick_teachers(epoch)
        support = recover_tasks(self.zoo.teachers, chosen, self.recovery_config(cfg.support_per_class), self.device,
                                epoch_seed(cfg.seed, epoch, 0))
        t1 = time.perf_counter()
        xs, ys, ts = self.stacked(support)
        fast = kd_adapt(self.model, self.params, xs, ys, ts, cfg.inner_lr, cfg.kd_inner_steps, cfg.first_order,
                        cfg.inner_loss, cfg.kd_form)
        t2 = time.perf_counter()
        boundary = self.boundary_on(epoch)
        extra = self.boundary_term(chosen, {k: v.detach() for k, v in fast.items()}) if boundary else None
        query = recover_tasks(self.zoo.teachers, chosen, self.recovery_config(cfg.query_per_class), self.device,
                              epoch_seed(cfg.seed, epoch, 3), extra=extra)
        t3 = time.perf_counter()
        xq, yq, tq = self.stacked(query)
        loss, acc, agree = outer_kd(self.model, fast, xq, yq, tq, cfg.first_order, cfg.kd_form)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        t4 = time.perf_counter()
        self.store(support, query)
        stats: dict[str, Any] = {}
        if cfg.replay:  # task memory replay: MAML (CE) on interpolated tasks
            stats = replay(self.model, self.params, self.opt, self.bank, epoch_seed(cfg.seed, epoch, 2),
                           n_tasks=cfg.meta_batch, n_way=self.n_way, k_shot=cfg.train_shot, n_query=cfg.replay_queries,
                           inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps, first_order=cfg.first_order,
                           patience=cfg.replay_patience, max_batches=cfg.replay_max_batches)
        t5 = time.perf_counter()
        return {"teachers": [self.zoo[i].id for i in chosen], "boundary": boundary,
                "rec_loss_support": float(np.mean([t.loss for t in support])),
                "rec_loss_query": float(np.mean([t.loss for t in query])),
                "loss": float(loss.detach()), "kd_acc": float(acc), "query_agree": float(agree), **stats,
                "t_recover": (t1 - t0) + (t3 - t2), "t_kd": (t2 - t1) + (t4 - t3), "t_replay": t5 - t4}


def train_bidf_mkd(cfg: BiDfMKDConfig) -> dict[str, Any]:
    """Run (or resume) a BiDf-MKD meta-training; returns the results."""
    return run_training(BiDfMKDTrainer, cfg)


__all__ = ["BiDfMKDConfig", "BiDfMKDTrainer", "boundary_loss", "kd_adapt", "outer_kd", "train_bidf_mkd"]
