"""DRO baseline: Wasserstein distributionally-robust model fusion (Wang et al., UAI 2022, "Meta-Learning without
Data via Wasserstein Distributionally-Robust Model Fusion"), on the shared loop of :mod:`dfmeta.meta.loop`.

Data-free and in parameter space: a hyper-network h fuses ("compresses") the zoo's teachers into one network.
Every teacher i has a learnable task embedding z_i; h maps an embedding to a full set of Conv4 parameters, and the
loss of teacher i at embedding z is the squared error between h(z) and its parameters theta_i (per-tensor
standardised, see :class:`ParameterSpace`). The robust objective is taken over the distribution of task embeddings:
the worst distribution in a Wasserstein ball around the empirical one, in its Lagrangian form (penalty gamma on the
squared transport cost), found by a few steps of Wasserstein gradient flow on the embeddings as particles (SVGD or
Langevin dynamics, the two flows of the authors' DRO memory evolution, Wang et al., ICML 2022)::

    for epoch = 1..T, for step = 1..S:
        worst case  z_i' = z_i moved by K flow steps ascending  l_i(h(z)) - gamma ||z - z_i||^2
        fusion      descend  mean_i l_i(h(z_i)) + beta mean_i l_i(h(z_i'))   over h and the z_i (Adam)
    meta-initialisation: h at the mean task embedding (or sampled), written into the meta-model every epoch

The loop then validates, selects, checkpoints and meta-tests that meta-initialisation like any other method's.
Details the paper's text fixes but that could not be checked here (see docs/methods/dro.md) are marked "ours".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dfmeta.config import learning_rates, require
from dfmeta.errors import DfmetaError
from dfmeta.meta.loop import MetaTrainConfig, MetaTrainer, epoch_seed, run_training
from dfmeta.nets import head_names

FLOWS = ("svgd", "sgld")


@dataclass(frozen=True)
class DROConfig(MetaTrainConfig):
    """A DRO meta-training run; the loop's ``meta_lr`` is the Adam learning rate of the hyper-network and embeddings."""

    embed_dim: int = 64
    """Dimension of a teacher's task embedding z_i (ours: not checked against the paper)."""
    hidden: int = 128
    """Hidden width of the hyper-network, an MLP embedding -> hidden -> all meta-model parameters (ours)."""
    steps_per_epoch: int = 10
    """Hyper-network updates per epoch, each over all teachers (ours)."""
    flow: Literal["svgd", "sgld"] = "svgd"
    """Wasserstein gradient flow of the worst-case embeddings: SVGD (kernelised, repulsive: spreads them) or SGLD
    (Langevin dynamics); the two flows of the authors' DRO memory evolution (ICML 2022)."""
    flow_steps: int = 5
    """K: flow steps per worst case (the authors' T_adv = 5, ICML 2022 code)."""
    flow_lr: float = 1.0
    """Step size of a flow step (ours): with gamma = 0.2 each SVGD step contracts towards the penalised maximiser by
    1 - 2 gamma lr = 0.6, so K = 5 steps nearly reach it. SGLD adds noise sqrt(2 lr) per dimension: use ~1e-3."""
    svgd_bandwidth: float = 0.05
    """SVGD kernel bandwidth as a fraction of the median trick (the authors' code: 0.05; Liu & Wang: 1)."""
    gamma: float = 0.2
    """Penalty on the squared transport cost, the Lagrangian of the Wasserstein-ball radius (authors' 0.2)."""
    beta: float = 1.0
    """Weight of the worst-case loss beside the nominal one (authors' search grid {0.1, 0.5, 1}); 0: no DRO."""
    head: Literal["fused", "zero"] = "fused"
    """Meta-initialisation head: fused by the hyper-network like every other parameter (the paper fuses whole
    models), or zero (the head is not reconstructed; as the Average and OTA baselines)."""
    meta_init: Literal["mean", "sample"] = "mean"
    """Embedding the meta-initialisation is generated from: the mean task embedding, or one sampled (seeded per
    epoch) from a Gaussian fitted to the embeddings (the paper samples; its distribution is ours)."""

    def validate(self) -> None:
        MetaTrainConfig.validate(self)
        require([
            (self.embed_dim >= 1, "embed_dim", ">= 1"),
            (self.hidden >= 1, "hidden", ">= 1"),
            (self.steps_per_epoch >= 1, "steps_per_epoch", ">= 1"),
            (self.flow_steps >= 0, "flow_steps", ">= 0"),
            *learning_rates(self, "flow_lr"),
            (self.svgd_bandwidth > 0, "svgd_bandwidth", "> 0"),
            (self.gamma >= 0, "gamma", ">= 0"),
            (self.beta >= 0, "beta", ">= 0"),
            (self.arch == "conv4", "arch", "conv4 (the hyper-network outputs every parameter; ResNets are too large)"),
        ])


class ParameterSpace:
    """The fused parameters as one vector: flatten / unflatten by name, standardised per tensor.

    A teacher's target is ``(theta_i - mean) / scale``: ``mean`` is the coordinate-wise mean over teachers (so
    h(z) = 0 is the Average baseline) and ``scale`` the spread of one tensor over teachers and elements, so that
    small tensors (BatchNorm, biases) count as much per coordinate as large ones.
    """

    def __init__(self, names: list[str], states: list[dict[str, Tensor]]) -> None:
        self.names = names
        self.shapes = [tuple(states[0][k].shape) for k in names]
        self.sizes = [math.prod(s) for s in self.shapes]
        raw = torch.stack([self.flatten(s) for s in states])
        self.mean = raw.mean(0)
        centred = raw - self.mean
        scale = torch.cat([torch.full((n,), float(part.pow(2).mean().sqrt()))
                           for n, part in zip(self.sizes, centred.split(self.sizes, 1))])
        self.scale = torch.where(scale > 1e-8, scale, torch.ones_like(scale))
        self.targets = centred / self.scale
        """``[n_teachers, dim]`` standardised teacher parameters."""

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def flatten(self, state: dict[str, Tensor]) -> Tensor:
        return torch.cat([state[k].detach().float().reshape(-1) for k in self.names])

    def unflatten(self, standardised: Tensor) -> dict[str, Tensor]:
        """Parameters by name from a standardised vector."""
        flat = self.mean.to(standardised) + self.scale.to(standardised) * standardised
        return {k: v.reshape(s) for k, v, s in zip(self.names, flat.split(self.sizes), self.shapes)}

    def to(self, device: torch.device) -> "ParameterSpace":
        self.mean, self.scale, self.targets = (t.to(device) for t in (self.mean, self.scale, self.targets))
        return self


class HyperNetwork(nn.Module):
    """The black-box fusion network: a task embedding -> hidden (ReLU) -> a standardised parameter vector."""

    def __init__(self, embed_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def reconstruction_losses(hyper: nn.Module, z: Tensor, targets: Tensor) -> Tensor:
    """``[n]``: l_i = mean squared error between h(z_i) and teacher i's standardised parameters."""
    return (hyper(z) - targets).pow(2).mean(1)


def svgd_direction(z: Tensor, grad: Tensor, bandwidth_scale: float = 0.05) -> Tensor:
    """Stein variational gradient direction of particles ``z [n, d]`` for scores ``grad [n, d]`` (Liu & Wang 2016),
    kernel-normalised: phi(z_i) = sum_j [k(z_j, z_i) grad_j + grad_{z_j} k(z_j, z_i)] / sum_j k(z_j, z_i).

    RBF kernel k = exp(-||z_i - z_j||^2 / h), h = ``bandwidth_scale`` * median squared distance / log(n + 1) (the
    median trick; the authors' code scales it by 0.05, Liu & Wang by 1). Dividing by the kernel's row sum instead of
    n keeps the step size independent of the zoo size: with a narrow kernel each particle ascends its own score and
    the second term repels it from its neighbours.
    """
    n = z.shape[0]
    if n == 1:
        return grad
    sq = torch.cdist(z, z).pow(2)
    bandwidth = bandwidth_scale * sq[~torch.eye(n, dtype=torch.bool, device=z.device)].median() / math.log(n + 1)
    if bandwidth <= 0:
        return grad
    k = torch.exp(-sq / bandwidth)
    rows = k.sum(1, keepdim=True)
    repulsion = (2 / bandwidth) * (rows * z - k @ z)  # sum_j k_ij (z_i - z_j)
    return (k @ grad + repulsion) / rows


def worst_case_embeddings(hyper: nn.Module, z: Tensor, targets: Tensor, gamma: float, steps: int, lr: float,
                          flow: str, gen: torch.Generator | None = None, bandwidth_scale: float = 0.05) -> Tensor:
    """Move each embedding z_i by ``steps`` Wasserstein-gradient-flow steps ascending
    l_i(h(z)) - gamma ||z - z_i||^2 (the Lagrangian of the Wasserstein ball around the empirical distribution).

    ``svgd``: z += lr * phi(z) (:func:`svgd_direction`); ``sgld``: z += lr * grad + sqrt(2 lr) * N(0, I) (``gen``).
    Returns the moved embeddings, detached; the hyper-network's gradients are left untouched.
    """
    if flow not in FLOWS:
        raise DfmetaError(f"DRO: flow must be one of {', '.join(FLOWS)}, got {flow!r}")
    anchor = z.detach()
    zp = anchor.clone()
    for _ in range(steps):
        zp.requires_grad_(True)
        energy = reconstruction_losses(hyper, zp, targets) - gamma * (zp - anchor).pow(2).sum(1)
        (g,) = torch.autograd.grad(energy.sum(), zp)
        with torch.no_grad():
            if flow == "svgd":
                zp = zp + lr * svgd_direction(zp, g, bandwidth_scale)
            else:
                noise = torch.randn(zp.shape, generator=gen, device=zp.device, dtype=zp.dtype)
                zp = zp + lr * g + math.sqrt(2 * lr) * noise
    return zp.detach()


class DROTrainer(MetaTrainer):
    """DRO: the hyper-network and task embeddings are the method's state; the loop's meta-model parameters are the
    fused meta-initialisation, rewritten at the end of every epoch."""

    method = "dro"
    keeps_final_state = True  # the fitted hyper-network is an artefact of the run
    cfg: DROConfig

    def __init__(self, cfg: DROConfig, run) -> None:
        super().__init__(cfg, run)
        heads = set(head_names(self.model))
        names = [k for k in self.params if cfg.head == "fused" or k not in heads]
        self.space = ParameterSpace(names, [t.state for t in self.zoo.teachers]).to(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(epoch_seed(cfg.seed, 0, 21))  # CPU only: CUDA streams untouched
            self.hyper = HyperNetwork(cfg.embed_dim, cfg.hidden, self.space.dim).to(self.device)
            z = torch.randn(len(self.zoo), cfg.embed_dim) / math.sqrt(cfg.embed_dim)
        self.embeddings = nn.Parameter(z.to(self.device))
        self.hyper_opt = torch.optim.Adam([*self.hyper.parameters(), self.embeddings], lr=cfg.meta_lr)

    def check(self) -> None:
        archs = sorted({t.arch for t in self.zoo.teachers})
        if archs != [self.cfg.arch]:
            counts = ", ".join(f"{a} x{sum(t.arch == a for t in self.zoo.teachers)}" for a in archs)
            raise DfmetaError(f"{self.zoo.path}: DRO fuses parameters, so every teacher must be a {self.cfg.arch} "
                              f"like the meta-model; the zoo has {counts} (use a single-architecture zoo)")

    def extra_state(self) -> dict[str, Any]:
        return {"hyper": {k: v.detach().cpu() for k, v in self.hyper.state_dict().items()},
                "embeddings": self.embeddings.detach().cpu(), "hyper_opt": self.hyper_opt.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.hyper.load_state_dict(state["hyper"])
        with torch.no_grad():
            self.embeddings.copy_(state["embeddings"].to(self.device))
        self.hyper_opt.load_state_dict(state["hyper_opt"])

    # ------------------------------------------------------------------ stages
    def fusion_step(self, gen: torch.Generator) -> dict[str, float]:
        """One update of the hyper-network and embeddings on the nominal plus worst-case reconstruction loss."""
        cfg, targets = self.cfg, self.space.targets
        nominal = reconstruction_losses(self.hyper, self.embeddings, targets).mean()
        loss, stats = nominal, {"loss": float(nominal.detach())}
        if cfg.beta > 0:
            zp = worst_case_embeddings(self.hyper, self.embeddings, targets, cfg.gamma, cfg.flow_steps, cfg.flow_lr,
                                       cfg.flow, gen, cfg.svgd_bandwidth)
            worst = reconstruction_losses(self.hyper, zp, targets).mean()
            loss = nominal + cfg.beta * worst
            shift = (zp - self.embeddings.detach()).norm(dim=1).mean()
            stats.update(worst_loss=float(worst.detach()), shift=float(shift))
        self.hyper_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.hyper_opt.step()
        return stats

    @torch.no_grad()
    def meta_initialisation(self, epoch: int) -> dict[str, Tensor]:
        """The fused parameters h(z) at the mean task embedding, or at one sampled from their Gaussian fit."""
        z = self.embeddings.mean(0)
        if self.cfg.meta_init == "sample":
            g = torch.Generator(device=self.device).manual_seed(epoch_seed(self.cfg.seed, epoch, 22))
            std = self.embeddings.std(0) if len(self.zoo) > 1 else torch.zeros_like(z)
            z = z + std * torch.randn(z.shape, generator=g, device=self.device)
        return self.space.unflatten(self.hyper(z))

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """``steps_per_epoch`` fusion steps, then write the meta-initialisation into the meta-model."""
        t0 = time.perf_counter()
        gen = torch.Generator(device=self.device).manual_seed(epoch_seed(self.cfg.seed, epoch, 0))
        rows = [self.fusion_step(gen) for _ in range(self.cfg.steps_per_epoch)]
        fused = self.meta_initialisation(epoch)
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(fused[k] if k in fused else torch.zeros_like(p))
        stats = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        return {**stats, "t_fuse": time.perf_counter() - t0}


def train_dro(cfg: DROConfig) -> dict[str, Any]:
    """Run (or resume) a DRO meta-training; returns the results."""
    return run_training(DROTrainer, cfg)


__all__ = ["DROConfig", "DROTrainer", "FLOWS", "HyperNetwork", "ParameterSpace", "reconstruction_losses",
           "svgd_direction", "train_dro", "worst_case_embeddings"]
