"""``dfmeta zoo build``: train a zoo of N-way teachers on a dataset's meta-train split, many at once.

Teacher ``i``'s classes, architecture, initial weights and batch order are fixed by ``(seed, i)`` alone. Teachers
train in blocks (same architecture and image counts, ``teachers_at_once`` at most, in index order) as one wide
network (:class:`StackedModel`): every convolution becomes a grouped convolution with one group per teacher,
every BatchNorm one BatchNorm over all teachers' channels (so batch statistics and running buffers stay per
teacher), every head a batched matmul. Teacher ``i``'s gradient is that of its own mean loss; Adam and SGD are
elementwise, so one optimizer over the stacked tensors keeps every teacher's state independent; the gradient norm
is clipped per teacher. (``torch.func.vmap`` over ``functional_call`` computes the same with the same grouped
convolutions underneath; on one CPU thread its step for 8 Conv4 teachers took 5.6 s against 3.4 s for this one and
1.8 s for 8 plain steps.) On a CPU, which is compute-bound, batching does not pay, so the CPU default is one
teacher per block; batching is for GPUs, where small models leave the device idle (the CUDA default of 64 is not
measured yet). Blocks depend only on the settings, so shards and reruns train identical blocks and, with the same
``teachers_at_once`` on the same kind of device, bitwise identical teachers (the float result of a grouped step
depends on how many teachers share it).

On disk: each finished teacher is ``model_{id}.safetensors`` plus a ``model_{id}.json`` sidecar (its manifest
entry), both written atomically; ``manifest.json`` is rebuilt from the sidecars, so shards never overwrite each
other's teachers and a rerun skips finished ones. ``build.json`` records the settings a resume must match.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfmeta.config import learning_rates, require
from dfmeta.data.dataset import FewShotSplit
from dfmeta.data.episodes import to_input
from dfmeta.errors import DfmetaError
from dfmeta.nets import ARCHITECTURES, build
from dfmeta.runs import atomic_write
from dfmeta.zoo.format import MANIFEST, Teacher, save_teacher, sha256, teacher_file, write_manifest

BUILD_INFO = "build.json"


@dataclass(frozen=True)
class ZooRecipe:
    """What the zoo holds and how each teacher is trained (defaults: the TGR authors' recipe)."""

    teachers: int = 100
    """Number of teachers n (ids 0..n-1)."""
    ways: int = 5
    """Classes per teacher N, drawn (seeded per teacher) from the meta-train split."""
    archs: tuple[str, ...] = ("conv4",)
    """Teacher architecture, or several to draw from per teacher (e.g. conv4 resnet10 resnet18)."""
    epochs: int = 60
    """Training epochs per teacher; the epoch with the best held-out accuracy is kept."""
    batch_size: int = 128
    """Images per training step."""
    lr: float = 0.01
    """Learning rate (of Adam, or of SGD where the optimizer is SGD)."""
    grad_clip: float = 50.0
    """Gradient-norm clip per teacher (0: none)."""
    heldout_fraction: float = 0.2
    """Last fraction of each class's images held out for model selection (CIFAR-FS: last 120 of 600)."""
    optimizer: Literal["adam", "auto", "sgd"] = "adam"
    """adam (the paper: Adam, lr 0.01, for every teacher), auto (the authors' code: Adam for conv4, SGD with momentum,
    weight decay and milestones for ResNets) or sgd."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """SGD weight decay."""
    milestones: tuple[int, ...] = (30, 50)
    """SGD epochs at which the learning rate is multiplied by gamma."""
    gamma: float = 0.2
    """SGD learning-rate decay factor."""

    def validate(self) -> None:
        bad = [a for a in self.archs if a not in ARCHITECTURES]
        if bad or not self.archs:
            raise DfmetaError(f"field 'archs': unknown architecture {bad[0] if bad else None!r}; "
                              f"expected some of: {', '.join(ARCHITECTURES)}")
        for name, least in (("teachers", 1), ("ways", 2), ("epochs", 1), ("batch_size", 1)):
            if getattr(self, name) < least:
                raise DfmetaError(f"field {name!r}: must be at least {least}, got {getattr(self, name)}"
                                  + (" (a teacher of one class learns nothing)" if name == "ways" else ""))
        require(learning_rates(self, "lr"))
        if not 0 <= self.heldout_fraction < 1:
            raise DfmetaError(f"field 'heldout_fraction': expected 0 <= f < 1, got {self.heldout_fraction}")

    def optimizer_for(self, arch: str) -> str:
        """The optimizer teachers of ``arch`` train with."""
        return optimizer_for(self.optimizer, arch)


def optimizer_for(optimizer: str, arch: str) -> str:
    """The optimizer teachers of ``arch`` train with under the recipe's ``optimizer`` setting."""
    if optimizer != "auto":
        return optimizer
    return "adam" if arch == "conv4" else "sgd"


@dataclass(frozen=True)
class TeacherPlan:
    """One teacher to train: index in the zoo, architecture and class indices of the split."""

    index: int
    arch: str
    classes: tuple[int, ...]


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def plan_zoo(n_classes: int, recipe: ZooRecipe, seed: int) -> list[TeacherPlan]:
    """Every teacher's classes and architecture; teacher ``i`` depends only on ``(seed, i)``."""
    if recipe.ways > n_classes:
        raise DfmetaError(f"field 'ways': {recipe.ways} classes per teacher, the split has only {n_classes}")
    plans = []
    for i in range(recipe.teachers):
        rng = _rng(seed, i, 0)
        classes = tuple(int(c) for c in rng.choice(n_classes, recipe.ways, replace=False))
        arch = recipe.archs[int(rng.integers(len(recipe.archs)))] if len(recipe.archs) > 1 else recipe.archs[0]
        plans.append(TeacherPlan(i, arch, classes))
    return plans


def split_rows(split: FewShotSplit, classes: tuple[int, ...], heldout_fraction: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Global image rows and labels (position in ``classes``) of the training part (first images of each class)
    and of the held-out part (the last ``heldout_fraction``)."""
    tr, trl, ho, hol = [], [], [], []
    for label, c in enumerate(classes):
        n = int(split.counts[c])
        n_ho = int(round(n * heldout_fraction))
        rows = split.starts[c] + np.arange(n)
        tr.append(rows[: n - n_ho])
        ho.append(rows[n - n_ho:])
        trl.append(np.full(n - n_ho, label))
        hol.append(np.full(n_ho, label))
    return np.concatenate(tr), np.concatenate(trl), np.concatenate(ho), np.concatenate(hol)


def initial_state(arch: str, num_classes: int, image_size: int, in_channels: int, seed: int,
                  index: int) -> dict[str, torch.Tensor]:
    """Teacher ``index``'s initial parameters and BN buffers (PyTorch's default init under a derived seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(_rng(seed, index, 1).integers(2**62)))
        return {k: v.detach().clone() for k, v in build(arch, num_classes, image_size, in_channels,
                                                          "running").state_dict().items()}


def epoch_order(seed: int, index: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled order of teacher ``index``'s ``n`` training images in ``epoch``."""
    return _rng(seed, index, 2, epoch).permutation(n)


@dataclass
class Trained:
    """One trained teacher: its kept state, held-out accuracy (%; None without held-out data) and kept epoch."""

    plan: TeacherPlan
    state: dict[str, torch.Tensor]
    heldout_acc: float | None
    best_epoch: int


class _GroupedConv(nn.Module):
    """T convolutions as one grouped convolution; weight ``[T, O, I, k, k]``, input channels teacher-major."""

    def __init__(self, conv: nn.Conv2d, t: int) -> None:
        super().__init__()
        self.t, self.stride, self.padding, self.dilation, self.groups = (t, conv.stride, conv.padding, conv.dilation,
                                                                         conv.groups)
        self.weight = nn.Parameter(conv.weight.detach().expand(t, *conv.weight.shape).clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().expand(t, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.flatten(0, 1), None if self.bias is None else self.bias.flatten(),
                        self.stride, self.padding, self.dilation, self.groups * self.t)


class _WideBN(nn.Module):
    """T BatchNorms as one over ``T * C`` channels: per teacher-channel batch statistics and running buffers."""

    def __init__(self, bn: nn.BatchNorm2d, t: int) -> None:
        super().__init__()
        self.momentum, self.eps = bn.momentum, bn.eps
        self.weight = nn.Parameter(bn.weight.detach().expand(t, -1).clone())
        self.bias = nn.Parameter(bn.bias.detach().expand(t, -1).clone())
        self.register_buffer("running_mean", torch.zeros(t, bn.num_features))
        self.register_buffer("running_var", torch.ones(t, bn.num_features))
        self.register_buffer("num_batches_tracked", torch.zeros(t, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1), self.weight.flatten(),
                            self.bias.flatten(), self.training, self.momentum, self.eps)


class _StackedLinear(nn.Module):
    """T linear heads: input ``[B, T * F]`` (teacher-major) to ``[B, T, N]``."""

    def __init__(self, lin: nn.Linear, t: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(lin.weight.detach().expand(t, -1, -1).clone())
        self.bias = nn.Parameter(lin.bias.detach().expand(t, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], self.weight.shape[0], -1)
        return torch.einsum("btf,tnf->btn", x, self.weight) + self.bias


class StackedModel(nn.Module):
    """T same-architecture teachers as one wide network (see the module docstring).

    Every parameter and buffer has the teachers' names with a leading teacher axis, so :meth:`load` and
    :meth:`teacher_state` map directly to per-teacher state dicts. Works for the registry's backbones, whose forward
    uses only per-channel operations between convolutions and a channel-major flatten or pooling before the head.
    """

    _WIDE = {nn.Conv2d: _GroupedConv, nn.BatchNorm2d: _WideBN, nn.Linear: _StackedLinear}

    def __init__(self, arch: str, num_classes: int, image_size: int, in_channels: int, t: int) -> None:
        super().__init__()
        self.t = t
        self.net = build(arch, num_classes, image_size, in_channels, "running")
        for name, mod in list(self.net.named_modules()):
            wide = self._WIDE.get(type(mod))
            if wide is not None:
                parent, _, leaf = name.rpartition(".")
                setattr(self.net.get_submodule(parent) if parent else self.net, leaf, wide(mod, t))

    def load(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Set teacher ``i``'s parameters and buffers from ``states[i]``."""
        with torch.no_grad():
            for k, v in self.net.state_dict().items():
                v.copy_(torch.stack([s[k] for s in states]))

    def teacher_state(self, i: int) -> dict[str, torch.Tensor]:
        """Teacher ``i``'s state dict (copies on the CPU)."""
        return {k: v[i].detach().cpu().clone() for k, v in self.net.state_dict().items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs ``[T, B, C, H, W]`` (teacher ``i`` sees ``x[i]``) to logits ``[T, B, N]``."""
        t, b = x.shape[:2]
        return self.net(x.transpose(0, 1).reshape(b, t * x.shape[2], *x.shape[3:])).transpose(0, 1)

    def clip_grad_norm_(self, max_norm: float) -> None:
        """Scale each teacher's gradient to norm at most ``max_norm`` (as ``clip_grad_norm_`` per teacher)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 500) -> torch.Tensor:
        """Per-teacher accuracy (%) in eval mode on ``x`` ``[T, M, C, H, W]``, labels ``[T, M]``."""
        was = self.training
        self.eval()
        hits = torch.zeros(x.shape[0], device=x.device)
        for lo in range(0, x.shape[1], chunk):
            hits += (self(x[:, lo: lo + chunk]).argmax(-1) == y[:, lo: lo + chunk]).sum(1)
        self.train(was)
        return hits * 100 / x.shape[1]


def _optimizer(tensors: list[torch.Tensor], recipe: ZooRecipe, arch: str
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    if recipe.optimizer_for(arch) == "adam":
        return torch.optim.Adam(tensors, lr=recipe.lr), None
    opt = torch.optim.SGD(tensors, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, list(recipe.milestones), recipe.gamma)


def train_group(plans: list[TeacherPlan], split: FewShotSplit, recipe: ZooRecipe, seed: int,
                device: torch.device | str = "cpu", images: torch.Tensor | None = None,
                progress: bool = False, label: str = "") -> list[Trained]:
    """Train teachers of one architecture together; every teacher keeps its best held-out epoch (a copy)."""
    device = torch.device(device)
    arch = plans[0].arch
    if any(p.arch != arch for p in plans):
        raise ValueError("train_group needs teachers of one architecture")
    images = torch.from_numpy(split.images).to(device) if images is None else images
    rows = [split_rows(split, p.classes, recipe.heldout_fraction) for p in plans]
    if len({len(r[0]) for r in rows}) > 1 or len({len(r[2]) for r in rows}) > 1:
        raise ValueError("train_group needs teachers with equally many images (group them by size)")
    n_train, n_held = len(rows[0][0]), len(rows[0][2])
    model = StackedModel(arch, recipe.ways, split.image_size, split.channels, len(plans)).to(device).train()
    model.load([initial_state(arch, recipe.ways, split.image_size, split.channels, seed, p.index) for p in plans])
    opt, sched = _optimizer(list(model.parameters()), recipe, arch)
    live = model.net.state_dict()
    best = {k: v.clone() for k, v in live.items()}
    best_acc = torch.full((len(plans),), -1.0, device=device)
    best_epoch = torch.zeros(len(plans), dtype=torch.long, device=device)

    def inputs(idx: np.ndarray) -> torch.Tensor:
        return to_input(images[torch.from_numpy(idx).to(device)], split.mean, split.std)

    train_rows = np.stack([r[0] for r in rows])
    train_y = torch.from_numpy(np.stack([r[1] for r in rows])).to(device)
    if n_held:
        held_x = inputs(np.stack([r[2] for r in rows]))
        held_y = torch.from_numpy(np.stack([r[3] for r in rows])).to(device)
    bar = _bar(recipe.epochs, f"{label} {arch} x{len(plans)}".strip(), progress)
    for epoch in range(recipe.epochs):
        order = np.stack([epoch_order(seed, p.index, epoch, n_train) for p in plans])
        for lo in range(0, n_train, recipe.batch_size):
            sel = order[:, lo: lo + recipe.batch_size]
            x = inputs(np.take_along_axis(train_rows, sel, 1))
            y = torch.gather(train_y, 1, torch.from_numpy(sel).to(device))
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none")
            opt.zero_grad(set_to_none=True)
            loss.view(y.shape).mean(1).sum().backward()  # teacher i's gradient is that of its own mean loss
            if recipe.grad_clip > 0:
                model.clip_grad_norm_(recipe.grad_clip)
            opt.step()
        if sched is not None:
            sched.step()
        if n_held:
            acc = model.accuracy(held_x, held_y)
            better = acc > best_acc
            for k in best:
                best[k][better] = live[k][better]
            best_acc = torch.where(better, acc, best_acc)
            best_epoch = torch.where(better, torch.full_like(best_epoch, epoch), best_epoch)
            bar.set_postfix(heldout=f"{acc.mean().item():.1f}%")
        else:
            best = {k: v.clone() for k, v in live.items()}
            best_epoch.fill_(epoch)
        bar.update(1)
    bar.close()
    return [Trained(p, {k: v[i].detach().cpu().clone() for k, v in best.items()},
                    round(float(best_acc[i]), 2) if n_held else None, int(best_epoch[i]))
            for i, p in enumerate(plans)]


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="epoch", disable=None if enabled else True, leave=False)


# ------------------------------------------------------------------ on disk

def sidecar(zoo_dir: Path, teacher_id: str) -> Path:
    """The finished-teacher marker and manifest entry of ``teacher_id``."""
    return zoo_dir / f"model_{teacher_id}.json"


def finished(zoo_dir: Path, teacher_id: str) -> bool:
    """Whether ``teacher_id`` is on disk complete: sidecar present and the weights match its checksum."""
    side = sidecar(zoo_dir, teacher_id)
    if not side.is_file():
        return False
    try:
        entry = json.loads(side.read_text())
        return sha256((zoo_dir / entry["file"]).read_bytes()) == entry["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def rebuild_manifest(zoo_dir: str | os.PathLike) -> int:
    """Rewrite ``manifest.json`` from the teachers' sidecars (ids in numeric order); returns the count."""
    zoo_dir = Path(zoo_dir)
    entries = []
    for side in zoo_dir.glob("model_*.json"):
        try:
            entries.append(json.loads(side.read_text()))
        except ValueError:
            raise DfmetaError(f"{side}: unreadable sidecar (delete it to retrain that teacher)") from None
    entries.sort(key=lambda e: (0, int(e["id"])) if str(e["id"]).isdigit() else (1, str(e["id"])))
    info_path = zoo_dir / BUILD_INFO
    extra = {"source": "dfmeta zoo build"}
    if info_path.is_file():
        extra.update(json.loads(info_path.read_text()))
    write_manifest(zoo_dir, entries, extra)
    return len(entries)


def _check_build_info(zoo_dir: Path, info: dict[str, Any]) -> None:
    path = zoo_dir / BUILD_INFO
    if path.is_file():
        old = json.loads(path.read_text())
        for key in ("dataset", "seed", "image_size", "channels"):
            if old.get(key, info[key] if key == "channels" else None) != info[key]:
                raise DfmetaError(f"{path}: the zoo was built with {key}={old.get(key)!r}, now {info[key]!r}; "
                                  "use another directory or the same settings to resume")
        archs = info["recipe"]["archs"]
        for key, value in info["recipe"].items():
            before = old.get("recipe", {}).get(key)
            if key == "optimizer" and before is not None:  # what teachers of this zoo's architectures trained with
                before, value = ([optimizer_for(o, a) for a in archs] for o in (before, value))
            if key != "teachers" and before != value:
                raise DfmetaError(f"{path}: the zoo was built with {key}={old['recipe'].get(key)!r}, now "
                                  f"{info['recipe'][key]!r}; use another directory or the same settings to resume")
    elif (zoo_dir / MANIFEST).is_file():
        raise DfmetaError(f"{zoo_dir}: holds a zoo not made by `dfmeta zoo build` (no {BUILD_INFO}); "
                          "choose an empty directory")
    atomic_write(path, json.dumps(info, indent=1) + "\n")


@dataclass
class BuildReport:
    """Which teachers this call trained and which were already on disk."""

    trained: list[str]
    skipped: list[str]
    total: int


def parse_shard(shard: str) -> tuple[int, int]:
    """``"i/n"`` (or, when empty, torchrun's ``RANK``/``WORLD_SIZE``) to ``(i, n)``."""
    if not shard:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = (int(s) for s in shard.split("/"))
    except ValueError:
        raise DfmetaError(f"field 'shard': expected i/n such as 0/4, got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise DfmetaError(f"field 'shard': expected 0 <= i < n, got {shard!r}")
    return i, n


def plan_blocks(split: FewShotSplit, recipe: ZooRecipe, seed: int, block_size: int) -> list[list[TeacherPlan]]:
    """All teachers in blocks that train together: same architecture and image counts, ``block_size`` at most,
    in index order. Blocks depend only on the settings, so shards and reruns train identical blocks (the numerics
    of a batched step depend on how many teachers share it)."""
    groups: dict[tuple, list[TeacherPlan]] = {}
    for p in plan_zoo(split.n_classes, recipe, seed):
        n_tr, _, n_ho, _ = (len(a) for a in split_rows(split, p.classes, recipe.heldout_fraction))
        groups.setdefault((p.arch, n_tr, n_ho), []).append(p)
    blocks = [g[lo: lo + block_size] for g in groups.values() for lo in range(0, len(g), block_size)]
    return sorted(blocks, key=lambda b: b[0].index)


def default_teachers_at_once(device: torch.device) -> int:
    """Teachers per block when not given: many on CUDA, one on a CPU (see the module docstring)."""
    return 64 if device.type == "cuda" else 1


def build_zoo(zoo_dir: str | os.PathLike, split: FewShotSplit, dataset: str, recipe: ZooRecipe = ZooRecipe(),
              seed: int = 0, device: torch.device | str = "cpu", shard: tuple[int, int] = (0, 1),
              teachers_at_once: int = 0, progress: bool = True) -> BuildReport:
    """Train this shard's blocks (block ``j`` with ``j % n == i``) that hold unfinished teachers into ``zoo_dir``,
    writing each finished teacher as soon as its block ends; the manifest is rebuilt from all sidecars."""
    recipe.validate()
    if teachers_at_once < 0:
        raise DfmetaError(f"field 'teachers_at_once': must be 0 (auto) or more, got {teachers_at_once}")
    zoo_dir = Path(zoo_dir)
    zoo_dir.mkdir(parents=True, exist_ok=True)
    _check_build_info(zoo_dir, {"dataset": dataset, "seed": seed, "image_size": split.image_size,
                                "channels": split.channels, "recipe": json.loads(json.dumps(asdict(recipe)))})
    device = torch.device(device)
    at_once = teachers_at_once or default_teachers_at_once(device)
    every = plan_blocks(split, recipe, seed, at_once)
    blocks = [b for j, b in enumerate(every) if j % shard[1] == shard[0]]
    if not blocks:
        raise DfmetaError(f"shard {shard[0]}/{shard[1]}: no teachers to train: {recipe.teachers} teachers in blocks "
                          f"of at most {at_once} (--teachers-at-once) make {len(every)} block(s), dealt to shards in "
                          f"turn; use at most {len(every)} shards or a smaller --teachers-at-once")
    done = {p.index for b in blocks for p in b if finished(zoo_dir, str(p.index))}
    todo = [b for b in blocks if any(p.index not in done for p in b)]
    images = torch.from_numpy(split.images).to(device) if todo else None
    trained: list[str] = []
    n_todo = sum(p.index not in done for b in todo for p in b)
    if progress and done:
        print(f"{zoo_dir}: {len(done)} teachers of this shard already done, {n_todo} to train", file=sys.stderr,
              flush=True)
    t0 = time.perf_counter()
    for j, block in enumerate(todo):
        for t in train_group(block, split, recipe, seed, device, images, progress, f"block {j + 1}/{len(todo)}"):
            if t.plan.index not in done:
                _save(zoo_dir, t, split, dataset, recipe, seed, {"teachers_at_once": at_once, "device": device.type})
                trained.append(str(t.plan.index))
                if progress:  # one line per teacher, also where the bar is off (not a terminal: a log file)
                    held = "no held-out images" if t.heldout_acc is None else f"held-out {t.heldout_acc:.1f}%"
                    print(f"teacher {t.plan.index} ({t.plan.arch}): {held}, epoch {t.best_epoch + 1} of "
                          f"{recipe.epochs} kept [{len(trained)}/{n_todo}, {time.perf_counter() - t0:.0f} s]",
                          file=sys.stderr, flush=True)
        rebuild_manifest(zoo_dir)
    rebuild_manifest(zoo_dir)
    return BuildReport(trained, sorted(map(str, done), key=int), sum(len(b) for b in blocks))


def _save(zoo_dir: Path, t: Trained, split: FewShotSplit, dataset: str, recipe: ZooRecipe, seed: int,
          how: dict[str, Any]) -> None:
    tid = str(t.plan.index)
    info = {"optimizer": recipe.optimizer_for(t.plan.arch), "epochs": recipe.epochs, "best_epoch": t.best_epoch,
            "seed": seed, "heldout_fraction": recipe.heldout_fraction, "source": "dfmeta zoo build", **how}
    teacher = Teacher(tid, t.plan.arch, split.image_size, split.channels, split.mean, split.std, dataset,
                      [split.class_names[c] for c in t.plan.classes], t.state, t.heldout_acc, info,
                      teacher_file(tid))
    entry = save_teacher(zoo_dir, teacher)
    atomic_write(sidecar(zoo_dir, tid), json.dumps(entry, indent=1) + "\n")
