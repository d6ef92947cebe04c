"""Task recovery (Algorithm 1 step 1, Eq. 2-4): invert each teacher into a pseudo task with a generator.

For teacher M with N classes, a fresh generator G and one learnable latent code per image are optimised jointly
(Adam) on

    L_G = CE(M(aug(G(Z))), Y) + bn_weight * sum_l ||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2

(statistics of each BatchNorm layer's input over batch and space, biased variance; the teacher frozen in eval mode).
The lowest-loss batch over the steps is kept.

All requested teachers are recovered in one batched computation: teachers sharing an architecture (and image size,
channels, classes) are stacked and run under ``torch.func.vmap``, each with its own stacked generator and codes.
Adam is elementwise, so one Adam over the stacked tensors is exactly per-teacher Adam. The BN-statistics term is
computed by forward pre-hooks on the teacher's BatchNorm layers (:class:`BNStatLoss`): under ``functional_call`` a
layer's ``running_mean`` is the tensor passed in, so inside ``vmap`` each teacher is compared with its own
statistics. Every random draw of a teacher (generator init, Z, augmentation) comes from its own ``torch.Generator``
seeded by ``(seed, teacher index)``: recovering a teacher alone or together with others gives the same task. They are
drawn up front on the CPU, teachers in parallel threads (:func:`initial_draws`).

Fast paths (:func:`fast_settings`; the CUDA defaults, measured in docs/results/h100-2026-11-27.md): bf16 autocast of
the generator and teacher passes; ``grouped`` batching (:mod:`dfmeta.nets.grouped`: the stacked generators and Conv4
teachers as one network of grouped convolutions, what vmap computes without its reshuffling); each step replayed as a
captured CUDA graph (:class:`dfmeta.cuda_graph.Graphed`); the grouped forward pass compiled with ``torch.compile``
(:func:`compiles`, measured in docs/results/h200-2026-12-04.md; not for a one-off recovery, :func:`once`, such as
`dfmeta group`'s).
The CPU default is the plain float32 vmap path, and each fast path is tested against it.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from dfmeta.config import learning_rates, require
from dfmeta.cuda_graph import Graphed
from dfmeta.errors import DfmetaError, reason
from dfmeta.nets import grouped, stack_params
from dfmeta.nets.generator import Generator
from dfmeta.zoo.format import Teacher


@dataclass(frozen=True)
class RecoveryConfig:
    """Task recovery (Eq. 2-4)."""

    steps: int = 200
    """Generator steps per recovered task."""
    lr: float = 1e-3
    """Adam learning rate of the generator and the latent codes (betas 0.5, 0.999)."""
    per_class: int = 30
    """Recovered images per class (150 for a 5-way teacher)."""
    nz: int = 256
    """Latent code size of the generator."""
    nf: int = 64
    """Generator width (Table 7)."""
    bn_weight: float = 1.0
    """Weight of the BatchNorm-statistics term of the recovery loss."""
    augment: bool = True
    """Random crop (pad 4) and horizontal flip between generator and teacher."""
    amp: Literal["auto", "off", "bf16"] = "auto"
    """Mixed precision of the generator and teacher passes: bf16 autocast (parameters, Adam and losses stay float32),
    off (float32), auto (bf16 on CUDA, off elsewhere)."""
    channels_last: Literal["off", "on"] = "off"
    """channels_last memory order of the grouped batching's activations (measured no faster on an H100)."""
    graph: Literal["auto", "off", "on"] = "auto"
    """Capture one generator step as a CUDA graph and replay it (no per-step launch overhead): auto (on CUDA),
    on, off. Needs CUDA; ignored elsewhere and with an extra loss."""
    batching: Literal["auto", "vmap", "loop", "grouped"] = "auto"
    """How teachers are batched in a step: vmap, loop (one plain pass per teacher), grouped (one network of
    grouped convolutions, :mod:`dfmeta.nets.grouped`; for the generator and Conv4 teachers, vmap for other
    teachers and with an extra loss), auto (grouped on CUDA, vmap elsewhere)."""
    compile: Literal["auto", "off", "on"] = "auto"
    """Compile the grouped batching's forward pass (generator, augmentation, Conv4 teacher, loss) with
    ``torch.compile``, fusing its elementwise and reduction kernels: on, off, auto (on CUDA, off elsewhere and for a
    recovery run once, see :func:`once`; a TGR run's grouping recovers in its epochs' padded batch size instead, so
    that one compilation serves both). Compiling costs about 20 s per teacher count and saves about a third of a
    recovery on an H200 (docs/results/h200-2026-12-04.md). Applies only where the grouped batching runs; a failed
    compilation falls back to the eager pass."""

    def validate(self) -> None:
        for name in ("steps", "per_class", "nz", "nf"):
            if getattr(self, name) < 1:
                raise DfmetaError(f"field {name!r}: must be at least 1, got {getattr(self, name)}")
        require(learning_rates(self, "lr"))
        if self.bn_weight < 0:
            raise DfmetaError(f"field 'bn_weight': must be non-negative, got {self.bn_weight}")
        for name, allowed in (("amp", ("auto", "off", "bf16")), ("graph", ("auto", "off", "on")),
                              ("channels_last", ("off", "on")), ("compile", ("auto", "off", "on")),
                              ("batching", ("auto", "vmap", "loop", "grouped"))):
            if getattr(self, name) not in allowed:
                raise DfmetaError(f"field {name!r}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def __post_init__(self) -> None:
        self.validate()


@dataclass(frozen=True)
class FastRecoveryFields:
    """Speed settings of task recovery for a run's config (the same tasks up to float rounding; see RecoveryConfig)."""

    rec_amp: Literal["auto", "off", "bf16"] = "auto"
    """Recovery precision: bf16 autocast of the generator and teacher passes, off (float32), auto (bf16 on CUDA)."""
    rec_graph: Literal["auto", "off", "on"] = "auto"
    """Replay each recovery step as a captured CUDA graph: auto (on CUDA), on, off."""
    rec_channels_last: Literal["off", "on"] = "off"
    """channels_last activations in grouped recovery batching."""
    rec_batching: Literal["auto", "vmap", "loop", "grouped"] = "auto"
    """Teachers in a recovery step: vmap, loop (one plain pass per teacher), grouped (one network of grouped
    convolutions; generator and Conv4 teachers), auto (grouped on CUDA, vmap elsewhere)."""
    rec_compile: Literal["auto", "off", "on"] = "auto"
    """torch.compile the grouped recovery's forward pass (fused kernels): auto (on CUDA, except for the one-off
    grouping recovery), on, off."""

    def fast_recovery(self) -> dict[str, str]:
        """The RecoveryConfig fields these settings give."""
        return {"amp": self.rec_amp, "graph": self.rec_graph, "batching": self.rec_batching,
                "channels_last": self.rec_channels_last, "compile": self.rec_compile}


@dataclass
class RecoveredTask:
    """One recovered pseudo task (tensors on the recovery device)."""

    images: Tensor
    """float ``[n, C, H, W]`` in [0, 1]: the generator's output, before normalisation."""
    labels: Tensor
    """long ``[n]``: the teacher's classes 0..N-1."""
    logits: Tensor
    """The teacher's logits on the normalised images (no augmentation), ``[n, N]``."""
    teacher: int
    """Index of the teacher in the zoo."""
    loss: float
    """The best (lowest) recovery loss."""


class BNStatLoss:
    """Forward pre-hooks on a teacher's BatchNorm layers summing ``||mu - running_mean|| + ||var - running_var||``.

    Use as a context manager (hooks removed on exit). Under ``functional_call`` the layer's ``running_mean`` is the
    tensor passed in, so the term is right per teacher inside ``vmap`` too; :meth:`pop` returns and resets the sum.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.terms: list[Tensor] = []
        self.handles: list = []

    def _hook(self, bn: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        var, mu = torch.var_mean(inputs[0].float(), (0, 2, 3), correction=0)  # float32 under autocast too
        self.terms.append(torch.linalg.vector_norm(mu - bn.running_mean)
                          + torch.linalg.vector_norm(var - bn.running_var))

    def pop(self) -> Tensor:
        total = torch.stack(self.terms).sum() if self.terms else torch.zeros(())
        self.terms = []
        return total

    def __enter__(self) -> "BNStatLoss":
        self.handles = [m.register_forward_pre_hook(self._hook) for m in self.model.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.terms = [], []


class _EvalBN(nn.BatchNorm2d):
    """Eval-mode BatchNorm written out elementwise: under ``vmap`` with batched running statistics, ``F.batch_norm``
    fails on CUDA (cuDNN queries the memory format of a batched tensor)."""

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None].to(x.dtype) + shift[:, None, None].to(x.dtype)  # bf16 stays bf16


def frozen_teacher(teacher: Teacher) -> nn.Module:
    """The teacher in eval mode, its BatchNorm layers as :class:`_EvalBN` (same parameters and buffers)."""
    model = teacher.model()
    for m in model.modules():
        if type(m) is nn.BatchNorm2d and m.affine and m.track_running_stats:
            m.__class__ = _EvalBN
    return model.requires_grad_(False)


def loss_terms(model: nn.Module, bn: BNStatLoss, state: dict[str, Tensor], x: Tensor,
               y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(CE, BN-statistics term, logits) of one teacher ``model`` with ``state`` on normalised inputs ``x``."""
    logits = functional_call(model, state, (x,))
    return F.cross_entropy(logits, y), bn.pop(), logits


def recovery_loss(teacher: Teacher, images: Tensor, labels: Tensor) -> tuple[float, float]:
    """(CE, BN-statistics term) of ``teacher`` on recovered ``images`` in [0, 1] (no augmentation); diagnostics."""
    model = frozen_teacher(teacher).to(images.device)
    state = {k: v.to(images.device) for k, v in teacher.state.items()}
    with torch.no_grad(), BNStatLoss(model) as bn:
        ce, bnl, _ = loss_terms(model, bn, state, normalise(images, teacher.mean, teacher.std), labels)
    return float(ce), float(bnl)


def normalise(x: Tensor, mean: tuple[float, ...] | Tensor, std: tuple[float, ...] | Tensor) -> Tensor:
    """``(x - mean) / std`` over the channel axis (-3)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


PAD = 4  # random-crop padding (authors' code)


def augment(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, pad: int = PAD) -> Tensor:
    """Per-image random crop (zero padding ``pad``) at offsets ``dy``, ``dx``, then horizontal flip; x: [B, C, H, W].

    One ``gather`` over the padded images (its backward a scatter-add): no host synchronisation, CUDA-graph safe."""
    b, c, h, w = x.shape
    wp = w + 2 * pad
    xp = F.pad(x, (pad, pad, pad, pad)).flatten(2)
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx = (rows[:, :, None] * wp + cols[:, None, :]).flatten(1)
    return xp.gather(2, idx[:, None, :].expand(b, c, h * w)).view(b, c, h, w)


def teacher_rng(seed: int, index: int) -> torch.Generator:
    """The random stream of teacher ``index`` under ``seed`` (independent of which teachers are recovered along)."""
    state = np.random.SeedSequence([seed % 2**63, index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def teachers_per_batch(cfg: RecoveryConfig, image_size: int, device: torch.device, n_classes: int = 5) -> int:
    """How many teachers to recover together: 8 on the CPU; on CUDA what fits in 60% of the free memory, at about
    0.5 GiB per teacher for 150 images of 32 px with nf = 64 (measured on an H100), scaled by images, pixels, width."""
    device = torch.device(device)
    if device.type != "cuda":
        return 8
    per = 0.5 * 2**30 * (n_classes * cfg.per_class / 150) * (image_size / 32) ** 2 * max(cfg.nf / 64, 0.25)
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(64, int(0.6 * free / per)))


ExtraLoss = Callable[[list[int], Tensor, Tensor], Tensor]
"""``extra(teacher indices, logits [k, n, N], normalised inputs [k, n, C, H, W]) -> [k]`` of :func:`recover_tasks`."""


def _group_key(t: Teacher) -> tuple:
    return t.arch, t.image_size, t.in_channels, t.num_classes


def by_architecture(teachers: list[Teacher], indices: list[int]) -> list[int]:
    """``indices`` reordered so that teachers :func:`recover_tasks` batches together (same architecture, image size,
    channels and classes) are adjacent, in their order otherwise: chunks of it are batched whole."""
    first: dict[tuple, int] = {}
    for pos, i in enumerate(indices):
        first.setdefault(_group_key(teachers[i]), pos)
    return sorted(indices, key=lambda i: first[_group_key(teachers[i])])


def recover_tasks(teachers: list[Teacher], indices: list[int], cfg: RecoveryConfig, device: torch.device,
                  seed: int | Sequence[int], chunk: int = 0, on_step: Callable[[int], None] | None = None,
                  extra: ExtraLoss | None = None, pad: bool = False) -> list[RecoveredTask]:
    """Recover one task for each ``teachers[i]``, ``i`` in ``indices`` (results in that order).

    ``seed``: one seed for all, or one per index (the same teacher may then appear twice, e.g. the tasks of several
    epochs recovered together). Same-architecture teachers are recovered together in batches of at most ``chunk``
    (0: all at once); ``pad``: a smaller batch is filled up to ``chunk`` by repeating its own teachers, whose extra
    tasks are dropped, so that every batch has one shape (one compilation, :func:`compiles`; a teacher's task does
    not depend on its batch). ``on_step(k)`` is called after each batched step with ``k`` the number of teachers in
    that batch (padding included).
    ``extra(part, logits, x)``: a further loss per teacher, added to L_G (and to the best-batch choice), from the
    teacher indices ``part`` of the batch, their logits ``[k, n, N]`` and normalised (augmented) inputs
    ``[k, n, C, H, W]``; returns ``[k]`` (e.g. BiDf-MKD's boundary term).
    """
    device = torch.device(device)
    seeds = [seed] * len(indices) if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != len(indices):
        raise DfmetaError(f"recover_tasks: {len(seeds)} seeds for {len(indices)} teachers")
    for i in indices:
        if not 0 <= i < len(teachers):
            raise DfmetaError(f"teacher index {i} out of range (the zoo has {len(teachers)} models)")
    groups: dict[tuple, list[int]] = {}  # positions in indices, by architecture
    for pos, i in enumerate(indices):
        groups.setdefault(_group_key(teachers[i]), []).append(pos)
    done: dict[int, RecoveredTask] = {}
    for members in groups.values():
        step = chunk if chunk > 0 else len(members)
        for lo in range(0, len(members), step):
            part = members[lo:lo + step]
            batch = part + [part[j % len(part)] for j in range(step - len(part) if pad else 0)]
            tasks = _recover_batch([teachers[indices[p]] for p in batch], [indices[p] for p in batch],
                                   [seeds[p] for p in batch], cfg, device, on_step, extra)
            done.update(zip(part, tasks))  # padding's tasks dropped
    return [done[p] for p in range(len(indices))]


def _over_teachers(fn: Callable, loop: bool) -> Callable:
    """``fn`` mapped over the leading (teacher) axis of its tensor / dict-of-tensor arguments: ``vmap``, or a Python
    loop of plain per-teacher calls whose outputs are stacked (same numbers, ungrouped convolutions)."""
    if not loop:
        return vmap(fn)

    def mapped(*args):
        k = len(next(iter(args[0].values())) if isinstance(args[0], dict) else args[0])
        outs = [fn(*({n: v[j] for n, v in a.items()} if isinstance(a, dict) else a[j] for a in args))
                for j in range(k)]
        if isinstance(outs[0], tuple):
            return tuple(torch.stack(o) for o in zip(*outs))
        return torch.stack(outs)
    return mapped


def _step_loss(generate: Callable, terms: Callable, gp: dict[str, Tensor], z: Tensor, tstate: dict[str, Tensor],
               mean: Tensor, std: Tensor, aug: tuple[Tensor, ...], augmented: bool, bn_weight: float,
               amp: torch.dtype | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One recovery step's forward pass: (L_G per teacher [k], images [k, n, C, H, W] in [0, 1], logits, normalised
    inputs) from generators ``gp`` and codes ``z``, with the crops and flips ``aug``."""
    with torch.autocast(z.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None, cache_enabled=False):
        x = generate(gp, z).float()
        xa = augment(x.flatten(0, 1), *aug).view_as(x) if augmented else x
        xn = (xa - mean) / std
        ce, bnl, logits = terms(tstate, xn)
        loss = ce.float() + bn_weight * bnl.float()
    return loss, x, logits, xn


_COMPILED: dict[str, Callable] = {}


def _compiled_step_loss() -> Callable:
    """:func:`_step_loss` under ``torch.compile`` (static shapes; one compilation per shape and setting, kept for the
    process, up to 64 of them); if compiling fails, that is reported once and the eager function is used from then
    on."""
    if "fn" not in _COMPILED:
        import warnings

        import torch._dynamo.config as dynamo_config
        # Inductor's note that it split the log-softmax reduction (no online softmax): not the user's concern
        warnings.filterwarnings("ignore", message=r"\s*Online softmax is disabled", category=UserWarning)
        compiled = torch.compile(_step_loss, dynamic=False)
        limit = {"recompile_limit": 64} if hasattr(dynamo_config, "recompile_limit") else {}

        def call(*args):
            if _COMPILED["fn"] is call:
                try:
                    with dynamo_config.patch(**limit):  # teacher counts x precisions: more than the default 8
                        return compiled(*args)
                except Exception as e:  # noqa: BLE001 - a compiler failure must not stop the run
                    print(f"warning: torch.compile of the recovery step failed ({reason(e)}); running it eagerly",
                          flush=True)
                    _COMPILED["fn"] = _step_loss
            return _step_loss(*args)
        _COMPILED["fn"] = call
    return _COMPILED["fn"]


GRAPH_WARMUP = 3
"""Eager steps before a step is captured as a CUDA graph (optimizer state, cuDNN and autocast set up)."""


def fast_settings(cfg: RecoveryConfig, device: torch.device,
                  extra: bool = False) -> tuple[torch.dtype | None, bool, str]:
    """(autocast dtype or None, CUDA graph on, teacher batching) for ``cfg`` on ``device``: the measured fastest on
    an H100 (bf16, graph, grouped; docs/results/h100-2026-11-27.md) is the CUDA default, the CPU default is the plain
    float32 vmap path that every fast path is tested against."""
    cuda = torch.device(device).type == "cuda"
    amp = torch.bfloat16 if cfg.amp == "bf16" or (cfg.amp == "auto" and cuda) else None
    graph = cuda and not extra and cfg.steps > GRAPH_WARMUP and cfg.graph in ("auto", "on")
    batching = cfg.batching if cfg.batching != "auto" else ("grouped" if cuda else "vmap")
    return amp, graph, batching


def compiles(cfg: RecoveryConfig, device: torch.device) -> bool:
    """Whether ``cfg`` compiles the grouped recovery step on ``device`` (auto: on CUDA)."""
    return cfg.compile == "on" or (cfg.compile == "auto" and torch.device(device).type == "cuda")


def once(cfg: RecoveryConfig) -> RecoveryConfig:
    """``cfg`` for a recovery run once (`dfmeta group`'s): compile auto becomes off, since one compilation per teacher
    count (about 20 s on an H200) costs more than it saves over a single recovery."""
    return replace(cfg, compile="off") if cfg.compile == "auto" else cfg


def initial_draws(gen: Generator, rngs: list[torch.Generator], n: int, cfg: RecoveryConfig,
                  device: torch.device) -> tuple[dict[str, Tensor], Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Every random draw of a batch's recovery, made up front on the CPU (the same numbers on every device; no
    per-step copy or sync): for each teacher, from its own stream in this order, its generator's initialisation
    (:meth:`Generator.reset_parameters`), its codes Z [n, nz] and, with augmentation, every step's crop offsets and
    flips. Returns the stacked generator parameters and Z (leaves requiring grad) and the draws (dy, dx, flip)
    [steps, k * n] (steps 0 without augmentation), all on ``device``. Teachers are drawn in parallel threads
    (``torch.get_num_threads()``; the streams are independent, so the numbers do not depend on it), straight into
    the stacked buffers, pinned for the copy on CUDA (about 300 MB of CPU work per 32 teachers at nf 64)."""
    k, device = len(rngs), torch.device(device)
    pin = device.type == "cuda"
    gp = {name: torch.empty(k, *p.shape, pin_memory=pin) for name, p in gen.named_parameters()}
    z = torch.empty(k, n, cfg.nz, pin_memory=pin)
    steps = cfg.steps if cfg.augment else 0
    dys, dxs = (torch.empty(steps, k * n, dtype=torch.long, pin_memory=pin) for _ in range(2))
    flips = torch.empty(steps, k * n, dtype=torch.bool, pin_memory=pin)

    def draw(j: int) -> None:
        r, cols = rngs[j], slice(j * n, (j + 1) * n)
        gen.reset_parameters(r, {name: v[j] for name, v in gp.items()})
        torch.randn(n, cfg.nz, generator=r, out=z[j])
        for s in range(steps):
            torch.randint(0, 2 * PAD + 1, (n,), generator=r, out=dys[s, cols])
            torch.randint(0, 2 * PAD + 1, (n,), generator=r, out=dxs[s, cols])
            flips[s, cols] = torch.rand(n, generator=r) < 0.5

    threads = max(1, min(k, torch.get_num_threads()))
    if threads == 1:
        for j in range(k):
            draw(j)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(draw, range(k)))
    gp = {name: v.to(device, non_blocking=pin).requires_grad_() for name, v in gp.items()}
    return gp, z.to(device, non_blocking=pin).requires_grad_(), tuple(t.to(device, non_blocking=pin)
                                                                      for t in (dys, dxs, flips))


def _recover_batch(teachers: list[Teacher], indices: list[int], seeds: list[int], cfg: RecoveryConfig,
                   device: torch.device, on_step: Callable[[int], None] | None,
                   extra: ExtraLoss | None = None) -> list[RecoveredTask]:
    """Batched recovery of same-architecture teachers: stacked teachers, generators and codes.

    Every step is the same function of that step's augmentation draws, so on CUDA it is captured once as a graph and
    replayed (:class:`dfmeta.cuda_graph.Graphed`); gradients are computed with ``autograd.grad`` and copied into fixed
    ``.grad`` buffers, so eager and replayed steps do the same work."""
    t0 = teachers[0]
    n_cls, size, chans = t0.num_classes, t0.image_size, t0.in_channels
    n, k = n_cls * cfg.per_class, len(teachers)
    rngs = [teacher_rng(s, i) for s, i in zip(seeds, indices)]
    amp, use_graph, batching = fast_settings(cfg, device, extra is not None)

    with torch.random.fork_rng(devices=[]):  # building modules must not touch the global random stream
        model = frozen_teacher(t0).to(device)
        gen = Generator(size, chans, cfg.nz, cfg.nf)
    tstate = stack_params({kk: v.to(device, torch.float32) if v.is_floating_point() else v.to(device)
                           for kk, v in t.state.items()} for t in teachers)
    mean = torch.tensor([t.mean for t in teachers], device=device).view(k, 1, chans, 1, 1)
    std = torch.tensor([t.std for t in teachers], device=device).view(k, 1, chans, 1, 1)
    y = torch.arange(n_cls, device=device).repeat_interleave(cfg.per_class)

    gp, z, (dys, dxs, flips) = initial_draws(gen, rngs, n, cfg, device)
    gen = gen.to(device)
    leaves = [*gp.values(), z]
    for p in leaves:
        p.grad = torch.zeros_like(p)
    opt = torch.optim.Adam(leaves, lr=cfg.lr, betas=(0.5, 0.999),
                           **({"capturable": True, "foreach": True} if use_graph else {}))

    best_loss = torch.full((k,), math.inf, device=device)
    best = torch.zeros(k, n, chans, size, size, device=device)
    grouped_ok = batching == "grouped" and extra is None
    cl = cfg.channels_last == "on"
    if grouped_ok:
        generate = partial(grouped.generate, nf=cfg.nf, init_size=gen.init_size, channels_last=cl)
    else:
        generate = _over_teachers(lambda p, zz: functional_call(gen, p, (zz,)), batching == "loop")

    def one_step(*aug: Tensor) -> tuple[Tensor, ...]:
        bn.terms.clear()
        loss, x, logits, xn = forward(generate, terms, gp, z, tstate, mean, std, aug, cfg.augment, cfg.bn_weight, amp)
        if extra is not None:  # in float32: the caller's own models (e.g. BiDf-MKD's adapted meta-model)
            loss = loss + extra(indices, logits.float(), xn)
        with torch.no_grad():
            better = loss < best_loss  # no boolean indexing: no device sync per step
            best_loss.copy_(torch.where(better, loss, best_loss))
            best.copy_(torch.where(better.view(k, 1, 1, 1, 1), x, best))
        grads = torch.autograd.grad(loss.sum(), leaves)
        with torch.no_grad():
            for p, g in zip(leaves, grads):
                p.grad.copy_(g)
        opt.step()
        return ()

    with torch.enable_grad(), BNStatLoss(model) as bn:
        forward = _step_loss
        if grouped_ok and t0.arch == "conv4" and grouped.conv4_blocks(tstate):
            terms = partial(grouped.conv4_terms, y=y, channels_last=cl)
            if compiles(cfg, device):  # pure tensor code (no BN hooks): compilable as one graph
                forward = _compiled_step_loss()
        else:
            terms = _over_teachers(lambda s, xx: loss_terms(model, bn, s, xx, y), batching == "loop")
        run = Graphed(one_step, device, use_graph, GRAPH_WARMUP, "recovery step")
        for step in range(cfg.steps):
            run(*((dys[step], dxs[step], flips[step]) if cfg.augment else ()))
            if on_step is not None:
                on_step(k)
    with torch.no_grad():
        logits = vmap(lambda s, xx: functional_call(model, s, (xx,)))(tstate, (best - mean) / std)
    return [RecoveredTask(best[j], y.clone(), logits[j], i, float(best_loss[j])) for j, i in enumerate(indices)]
