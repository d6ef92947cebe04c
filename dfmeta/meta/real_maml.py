"""MAML on the real meta-train split: the data-based reference point of data-free meta-learning (not data-free).

The meta-model is trained exactly as TGR's cross-task replay trains it (:func:`dfmeta.meta.maml.replay`: second-order
MAML meta-batches of 16 tasks, 5 inner steps at lr 0.01, 15 queries per class, Adam), but its tasks are drawn from the
real images of the meta-train classes instead of recovered ones. Everything else is the shared loop: meta-val
selection, one meta-test. It answers two questions about a data-free run:

- how far the zoo-recovered data is from the real data it stands for, at the same training budget (a TGR epoch
  replays about 7 meta-batches: compare ``--batches-per-epoch 8`` over the same epochs);
- how fast this MAML pipeline can learn at all (its learning curve on meta-val).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dfmeta.config import learning_rates, require
from dfmeta.data.domains import load_domains
from dfmeta.meta.bank import draw_tasks, split_tasks
from dfmeta.meta.loop import MetaLoopConfig, MetaTrainer, epoch_seed, run_training


@dataclass(frozen=True)
class RealMAMLConfig(MetaLoopConfig):
    """MAML on the real meta-train split (defaults: TGR's replay settings, 8 meta-batches per epoch)."""

    batches_per_epoch: int = 8
    """MAML meta-batches per epoch (a TGR epoch replays about 7 on CIFAR-FS)."""
    meta_batch: int = 16
    """Tasks per MAML meta-batch."""
    train_queries: int = 15
    """Query images per class of a meta-training task."""
    inner_lr: float = 0.01
    """MAML inner learning rate."""
    inner_steps: int = 5
    """MAML inner steps."""
    first_order: bool = False
    """First-order MAML."""
    graph: bool = True
    """On CUDA, replay each meta-batch as a captured CUDA graph (the same computation, no launch overhead)."""

    def validate(self) -> None:
        MetaLoopConfig.validate(self)
        require([
            (self.batches_per_epoch >= 1, "batches_per_epoch", ">= 1"),
            (self.meta_batch >= 1, "meta_batch", ">= 1"),
            (self.train_queries >= 1, "train_queries", ">= 1"),
            (self.inner_steps >= 0, "inner_steps", ">= 0"),
            *learning_rates(self, "inner_lr"),
        ])


class RealTasks:
    """N-way K-shot tasks drawn from the real images of one or more splits, kept uint8 on ``device``.

    Each class keeps its own dataset's normalisation (multi-domain). Same draw as the memory bank's
    (:func:`dfmeta.meta.bank.draw_tasks`), so :func:`dfmeta.meta.maml.replay` takes either.
    """

    def __init__(self, splits: list, device: torch.device) -> None:
        self.images = torch.cat([torch.from_numpy(s.images) for s in splits]).to(device)    # [n, H, W, C] uint8
        self.counts = torch.cat([torch.from_numpy(s.counts) for s in splits])
        mean = torch.cat([torch.tensor([s.mean] * s.n_classes) for s in splits])            # [classes, C]
        std = torch.cat([torch.tensor([s.std] * s.n_classes) for s in splits])
        self.mean, self.std = (t.to(device).view(len(t), 1, -1, 1, 1) for t in (mean, std))   # [classes, 1, C, 1, 1]
        self.source = " + ".join(s.name for s in splits)

    def sample_tasks(self, n_tasks: int, n_way: int, k_shot: int, n_query: int,
                     generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """xs ``[T, N*K, C, H, W]``, ys ``[T, N*K]``, xq ``[T, N*Q, C, H, W]``, yq ``[T, N*Q]`` (inputs normalised)."""
        cls, rows = draw_tasks(self.counts, n_tasks, n_way, k_shot + n_query, generator, self.source)
        cls = cls.to(self.images.device)
        x = self.images[rows.to(self.images.device)].movedim(-1, -3).float().div_(255)   # [T, N, K+Q, C, H, W]
        x = (x - self.mean[cls]) / self.std[cls]
        return split_tasks(x, k_shot)


class RealMAMLTrainer(MetaTrainer):
    """MAML on real meta-train tasks, on the shared loop."""

    method = "maml-real"
    cfg: RealMAMLConfig

    def __init__(self, cfg: RealMAMLConfig, run) -> None:
        super().__init__(cfg, run)
        train = load_domains(cfg.dataset, "train", cfg.data_root, cfg.image_size or None, self.channels)
        self.tasks = RealTasks(train, self.device)
        draw_tasks(self.tasks.counts, 1, self.n_way, cfg.train_shot + cfg.train_queries, torch.Generator(),
                   self.tasks.source)  # fails now, not silently in every epoch, where the split cannot supply a task
        self.step = None  # the meta-batch step, graphed on CUDA (made once: fixed parameter tensors)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """``batches_per_epoch`` MAML meta-batches of real tasks."""
        from dfmeta.cuda_graph import Graphed
        from dfmeta.meta.maml import meta_gradients, replay
        cfg = self.cfg
        if self.step is None:
            self.step = Graphed(meta_gradients(self.model, self.params, cfg.inner_lr, cfg.inner_steps,
                                               cfg.first_order), self.device, cfg.graph, name="MAML meta-batch")
        t0 = time.perf_counter()
        stats = replay(self.model, self.params, self.opt, self.tasks, epoch_seed(cfg.seed, epoch, 2),
                       n_tasks=cfg.meta_batch, n_way=self.n_way, k_shot=cfg.train_shot, n_query=cfg.train_queries,
                       inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps, first_order=cfg.first_order,
                       patience=cfg.batches_per_epoch + 1, max_batches=cfg.batches_per_epoch, step=self.step)
        return {"loss": stats["replay_loss"], "train_acc_best": stats["replay_acc"], "batches": stats["replay_batches"],
                "t_train": time.perf_counter() - t0}


def train_real_maml(cfg: RealMAMLConfig) -> dict[str, Any]:
    """Run (or resume) MAML on the real meta-train split; returns the results."""
    return run_training(RealMAMLTrainer, cfg)


__all__ = ["RealMAMLConfig", "RealMAMLTrainer", "RealTasks", "train_real_maml"]
