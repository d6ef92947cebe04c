"""Task grouping (Algorithm 1 steps 2-4, Eq. 5-7): Fisher task embeddings, dissimilarity W, spectral clustering.

Task embedding (Eq. 5): the diagonal empirical Fisher of a shared frozen probe phi on a recovered task,
F = mean over the task's images of (grad_phi log p_phi(y|x))^2, one tensor per probe parameter ("layer").

* Probe: ResNet-34 with its 1000-way head and torchvision-format ImageNet weights (``probe_weights``); the task
  label y indexes the head. Without weights, a data-free fallback: a ``fallback_probe`` (default Conv4, 1000-way
  head) randomly initialised with ``seed``; it is announced wherever the grouping is reported.
* BatchNorm normalises with each task's own batch statistics (the authors leave the probe in train mode); the
  statistics are held fixed when differentiating, so every image's gradient is exactly its own.
* Inputs: recovered images in [0, 1], resized to ``probe_size`` (default: the largest task image size, so native
  for a single-dataset zoo; no upsampling to 224), grey images repeated to 3 channels, ImageNet normalisation.
* Per-sample squared gradients without per-sample backward passes: one batched backward gives every layer's output
  gradient per image; linear layers then need only (delta^2)^T (a^2), convolutions a batched matmul of the output
  gradient with the shifted input per kernel offset, BatchNorm a spatial sum.

Dissimilarity (Eq. 6): W_ij = 1 - cos(F_i / (F_i + F_j), F_j / (F_i + F_j)), one cosine over the whole embedding (the
paper's Eq. 6, ``fisher_cosine="whole"``) or one per probe parameter tensor ("layer"), then their mean (the authors'
code, ``"layers"``); entries where both Fishers vanish are left out, as Task2Vec's epsilon does.
Grouping (Eq. 7): spectral clustering with W as the precomputed affinity, so dissimilar models land together
(``mode="similarity"``, the Table 8 ablation, uses S = 1 - W instead).
"""

from __future__ import annotations

import io
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfmeta.errors import DfmetaError
from dfmeta.nets import ARCHITECTURES, build
from dfmeta.recover import RecoveredTask, normalise
from dfmeta.zoo.format import Zoo
from dfmeta.runs import atomic_write

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = ("dissimilarity", "similarity")
FISHER_LABELS = ("task", "probe")
FISHER_COSINES = ("whole", "layers")
CACHE_FILE = "fisher.npz"
MAX_SAVED_EMBEDDINGS = 1 << 30  # bytes; larger Fisher embeddings (ResNet-34 zoos) are not written to the cache


@dataclass(frozen=True)
class GroupingConfig:
    """Task grouping (Eq. 5-7)."""

    groups: int = 5
    """c: number of task groups."""
    mode: Literal["dissimilarity", "similarity"] = "dissimilarity"
    """dissimilarity (TGR: dissimilar models grouped together) or similarity (Table 8 ablation)."""
    probe: str = "resnet34"
    """Architecture of the Fisher probe loaded from --probe-weights."""
    probe_weights: str = ""
    """torchvision-format ImageNet ResNet-34 weights (.pth state dict or .safetensors); empty: data-free fallback."""
    fallback_probe: str = "conv4"
    """Architecture of the data-free fallback probe (randomly initialised with --seed, 1000-way head)."""
    probe_size: int = 0
    """Probe input size (images resized to it); 0: the largest recovered image size."""
    fisher_samples: int = 0
    """Images per task used for its Fisher embedding (0: all)."""
    fisher_labels: Literal["task", "probe"] = "task"
    """Labels y of log p(y|x) in the Fisher: task (the teacher's class index 0..N-1 on the probe's head, as the
    authors) or probe (the probe's own prediction: W no longer depends on the order of a teacher's classes)."""
    fisher_cosine: Literal["whole", "layers"] = "whole"
    """Eq. 6's cosine: whole (one over the whole embedding, the paper) or layers (one per probe parameter tensor, then
    their mean: the authors' code; every dfmeta grouping before 2026-12-07 used it)."""
    seed: int = 42
    """Random state of spectral clustering (and of the fallback probe's initialisation)."""

    def validate(self) -> None:
        if self.groups < 1:
            raise DfmetaError(f"field 'groups': must be at least 1, got {self.groups}")
        if self.mode not in MODES:
            raise DfmetaError(f"field 'mode': expected one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("probe", "fallback_probe"):
            if getattr(self, name) not in ARCHITECTURES:
                raise DfmetaError(f"field {name!r}: unknown architecture {getattr(self, name)!r}; "
                                  f"expected one of: {', '.join(ARCHITECTURES)}")
        if self.fisher_labels not in FISHER_LABELS:
            raise DfmetaError(f"field 'fisher_labels': expected one of {', '.join(FISHER_LABELS)}, "
                              f"got {self.fisher_labels!r}")
        if self.fisher_cosine not in FISHER_COSINES:
            raise DfmetaError(f"field 'fisher_cosine': expected one of {', '.join(FISHER_COSINES)}, "
                              f"got {self.fisher_cosine!r}")
        if self.fisher_samples < 0 or self.probe_size < 0:
            raise DfmetaError("fields 'fisher_samples' and 'probe_size' must be non-negative")

    def __post_init__(self) -> None:
        self.validate()


# ---------------------------------------------------------------------------------------------------------- probe
def read_weights(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a ``.pth``/``.pt`` (torch.save, optionally under ``state_dict``/``model``) or safetensors."""
    path = Path(path)
    if not path.is_file():
        raise DfmetaError(f"{path}: probe weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling and safetensors raise many types
        raise DfmetaError(f"{path}: not a readable weights file ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DfmetaError(f"{path}: expected a state dict of tensors (torchvision format)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_probe(cfg: GroupingConfig, device: torch.device, image_size: int = 32) -> tuple[nn.Module, str]:
    """The frozen Fisher probe and a one-line description (which announces the data-free fallback)."""
    if not cfg.probe_weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            probe = build(cfg.fallback_probe, 1000, image_size, 3, "running")
        desc = (f"data-free fallback probe: {cfg.fallback_probe} randomly initialised (seed {cfg.seed}), 1000-way head "
                f"(the paper uses ImageNet ResNet-34 weights: pass --probe-weights FILE)")
        return probe.to(device).eval().requires_grad_(False), desc
    state = read_weights(cfg.probe_weights)
    head = next((k for k in ("fc.weight", "head.weight") if k in state), None)  # ResNet / Conv4 classifier
    classes = state[head].shape[0] if head else 1000
    probe = build(cfg.probe, classes, image_size, 3, "running")
    ref = probe.state_dict()
    optional = {k for k in ref if k.endswith("num_batches_tracked")}
    missing = sorted(set(ref) - set(state) - optional)
    extra = sorted(set(state) - set(ref))
    if missing or extra:
        raise DfmetaError(f"{cfg.probe_weights}: keys do not match {cfg.probe} (torchvision names "
                          f"for a ResNet, dfmeta's for conv4): "
                          f"missing {missing[:3]}, unexpected {extra[:3]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(ref[k].shape):
            raise DfmetaError(f"{cfg.probe_weights}: {k} has shape {tuple(v.shape)}, {cfg.probe} expects "
                              f"{tuple(ref[k].shape)}")
    probe.load_state_dict(state, strict=False)
    desc = f"{cfg.probe} probe, weights {cfg.probe_weights} ({classes}-way head)"
    return probe.to(device).eval().requires_grad_(False), desc


# ---------------------------------------------------------------------------------------------------------- Fisher
_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def _probe_input(images: Tensor, size: int, device: torch.device) -> Tensor:
    x = images.to(device, torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return normalise(x, IMAGENET_MEAN, IMAGENET_STD)


@torch.no_grad()
def _batch_stats(probe: nn.Module, x: Tensor) -> tuple[dict[nn.Module, tuple[Tensor, Tensor]], Tensor]:
    """Each BatchNorm layer's input mean and biased variance on ``x``, layers normalised with them (train mode), and
    the probe's logits under them."""
    stats: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def hook(bn: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor:
        v = inputs[0]
        mu, var = v.mean((0, 2, 3)), v.var((0, 2, 3), unbiased=False)
        stats[bn] = (mu, var)
        return F.batch_norm(v, mu, var, bn.weight, bn.bias, False, 0.0, bn.eps)

    handles = [m.register_forward_hook(hook) for m in probe.modules()
               if isinstance(m, nn.BatchNorm2d)]
    try:
        logits = probe(x)
    finally:
        for h in handles:
            h.remove()
    return stats, logits


def _conv_weight_squares(m: nn.Conv2d, a: Tensor, d: Tensor) -> Tensor:
    """Sum over the batch of squared per-sample weight gradients of a convolution: one batched matmul of the output
    gradient with the input shifted by each kernel offset (faster than ``unfold`` on CPU)."""
    if m.groups != 1 or isinstance(m.padding, str) or m.padding_mode != "zeros":
        raise ValueError("Fisher probe: only zero-padded, ungrouped convolutions are supported")
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = m.kernel_size, m.stride, m.dilation, m.padding
    a = F.pad(a, (pw, pw, ph, ph))
    b, o, ho, wo = d.shape
    dd = d.flatten(2)  # [B, Cout, P]
    g = a.new_empty(b, o, a.shape[1], kh, kw)
    for ky in range(kh):
        for kx in range(kw):
            sl = a[:, :, ky * dh: ky * dh + sh * (ho - 1) + 1: sh, kx * dw: kx * dw + sw * (wo - 1) + 1: sw]
            g[..., ky, kx] = torch.bmm(dd, sl.flatten(2).transpose(1, 2))
    return g.pow(2).sum(0)


def _squared_grads(m: nn.Module, a: Tensor, d: Tensor, stats: dict) -> list[Tensor]:
    """Sum over the batch of each parameter's squared per-sample gradient, from input ``a`` and output grad ``d``."""
    if isinstance(m, nn.Linear):
        if a.dim() != 2:
            raise ValueError("Fisher probe: linear layers must see [batch, features] inputs")
        a2, d2 = a.pow(2), d.pow(2)
        out = [d2.T @ a2]
        return out + [d2.sum(0)] if m.bias is not None else out
    if isinstance(m, nn.Conv2d):
        out = [_conv_weight_squares(m, a, d)]
        return out + [d.sum((2, 3)).pow(2).sum(0)] if m.bias is not None else out
    mu, var = stats[m]
    xhat = (a - mu[:, None, None]) / torch.sqrt(var[:, None, None] + m.eps)
    return [(d * xhat).sum((2, 3)).pow(2).sum(0), d.sum((2, 3)).pow(2).sum(0)]


def _fisher_sums(probe: nn.Module, x: Tensor, y: Tensor, stats: dict) -> dict[nn.Module, list[Tensor]]:
    """Per layer, the sums over ``x`` of squared per-sample gradients of log p(y|x) (BN statistics fixed)."""
    io_: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def fwd(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
        if isinstance(m, nn.BatchNorm2d):
            mu, var = stats[m]
            out = F.batch_norm(inputs[0], mu, var, m.weight, m.bias, False, 0.0, m.eps)
        io_[m] = (inputs[0].detach(), out)
        return out

    layers = [m for m in probe.modules() if isinstance(m, _LAYERS)]
    unknown = [type(m).__name__ for m in probe.modules()
               if not isinstance(m, _LAYERS) and any(True for _ in m.parameters(recurse=False))]
    if unknown:
        raise ValueError(f"Fisher probe: layers of type {unknown[0]} are not supported")
    handles = [m.register_forward_hook(fwd) for m in layers]
    try:
        with torch.enable_grad():
            logp = -F.cross_entropy(probe(x.detach().requires_grad_()), y, reduction="sum")
            outs = [io_[m][1] for m in layers]
            grads = torch.autograd.grad(logp, outs, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return {m: _squared_grads(m, io_[m][0], g if g is not None else torch.zeros_like(o), stats)
            for m, o, g in zip(layers, outs, grads)}


def subsample(n: int, samples: int) -> Tensor:
    """Indices of ``samples`` images spread evenly over a task of ``n`` (labels are sorted by class); all if 0."""
    if samples <= 0 or samples >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, samples).round().long()


def fisher_embeddings(tasks: list[RecoveredTask], probe: nn.Module, device: torch.device, samples: int = 0,
                      image_size: int = 0, chunk: int = 64, on_task: Callable[[], None] | None = None,
                      labels: str = "task") -> list[list[Tensor]]:
    """Eq. 5 for every task: per probe parameter ("layer"), the diagonal empirical Fisher (CPU float32).

    ``samples``: images per task (0: all); ``image_size``: probe input size (0: the largest task image size);
    ``labels``: ``task`` (the task's labels index the probe's head) or ``probe`` (the probe's own predictions).
    """
    device = torch.device(device)
    size = image_size or max(t.images.shape[-1] for t in tasks)
    probe = probe.to(device)
    heads = [m for m in probe.modules() if isinstance(m, nn.Linear)]
    classes = heads[-1].out_features if heads else math.inf
    out = []
    for task in tasks:
        if labels == "task" and int(task.labels.max()) >= classes:
            raise DfmetaError(f"task of teacher {task.teacher}: label {int(task.labels.max())} does not index the "
                              f"probe's {classes}-way head")
        x = _probe_input(task.images, size, device)
        stats, logits = _batch_stats(probe, x)
        y = logits.argmax(1) if labels == "probe" else task.labels.to(device)
        idx = subsample(len(x), samples).to(device)
        xs, ys = x[idx], y[idx]
        total: dict[nn.Module, list[Tensor]] = {}
        for lo in range(0, len(xs), chunk):
            part = _fisher_sums(probe, xs[lo:lo + chunk], ys[lo:lo + chunk], stats)
            total = part if not total else {m: [a + b for a, b in zip(total[m], part[m])] for m in part}
        out.append([(f / len(xs)).float().cpu() for m in total for f in total[m]])
        if on_task is not None:
            on_task()
    return out


# ---------------------------------------------------------------------------------------------------------- Eq. 6-7
def dissimilarity(embeddings: list[list[Tensor]], device: torch.device | str = "cpu",
                  cosine: str = "whole") -> np.ndarray:
    """Eq. 6: W_ij = 1 - cos(F_i / (F_i + F_j), F_j / (F_i + F_j)), the cosine over the whole embedding (``whole``,
    the paper) or the mean over layers of each layer's cosine (``layers``, the authors' code).

    As in Task2Vec, entries where both Fishers are 0 are left out; what is 0 for both counts as identical.
    """
    if cosine not in FISHER_COSINES:
        raise DfmetaError(f"dissimilarity: cosine must be one of {', '.join(FISHER_COSINES)}, got {cosine!r}")
    n = len(embeddings)
    layers = len(embeddings[0])
    cos = torch.zeros(n, n, dtype=torch.float64)
    sums = torch.zeros(3, n, n, dtype=torch.float64)  # whole: a.b, |a|^2, |b|^2 summed over the layers
    for layer in range(layers):
        f = torch.stack([e[layer].flatten() for e in embeddings]).to(device, torch.float32)
        for i in range(n - 1):
            s = f[i] + f[i + 1:]
            on = s > 0
            a = torch.where(on, f[i] / s, 0.0)
            b = torch.where(on, 1 - a, 0.0)
            dot = (a * b).sum(1, dtype=torch.float64)
            na, nb = a.pow(2).sum(1, dtype=torch.float64), b.pow(2).sum(1, dtype=torch.float64)
            if cosine == "whole":
                sums[:, i, i + 1:] += torch.stack([dot, na, nb]).cpu()
                continue
            c = torch.where(on.any(1), dot / (na.sqrt() * nb.sqrt()).clamp_min(1e-300), 1.0)
            cos[i, i + 1:] += c.cpu()
    if cosine == "whole":
        dot, na, nb = sums
        cos = torch.where(na > 0, dot / (na.sqrt() * nb.sqrt()).clamp_min(1e-300), 1.0).triu(1)
    else:
        cos = cos / layers
    w = 1 - (cos + cos.T)
    w.fill_diagonal_(0)
    return w.clamp_(0, 1).numpy()


def spectral_groups(W: np.ndarray, groups: int, mode: str = "dissimilarity", seed: int = 42) -> np.ndarray:
    """Eq. 7: spectral clustering on the precomputed affinity W (``similarity``: 1 - W); labels numbered by first
    appearance."""
    W = np.asarray(W, dtype=np.float64)
    n = len(W)
    if W.ndim != 2 or W.shape != (n, n) or not np.allclose(W, W.T):
        raise DfmetaError(f"dissimilarity matrix must be square and symmetric, got shape {W.shape}")
    if not 1 <= groups <= n:
        raise DfmetaError(f"field 'groups': c = {groups} must be between 1 and the number of models ({n})")
    if mode not in MODES:
        raise DfmetaError(f"field 'mode': expected one of {', '.join(MODES)}, got {mode!r}")
    if groups == 1:
        return np.zeros(n, np.int64)
    from sklearn.cluster import SpectralClustering
    affinity = W if mode == "dissimilarity" else 1 - W
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "graph is not fully connected"
        raw = SpectralClustering(n_clusters=groups, affinity="precomputed", n_init=30,
                                 random_state=seed).fit_predict(affinity)
    order = {c: k for k, c in enumerate(dict.fromkeys(raw.tolist()))}
    return np.array([order[c] for c in raw.tolist()], np.int64)


def grouping_stability(W: np.ndarray, labels: np.ndarray, mode: str = "dissimilarity", seed: int = 42,
                       scale: float = 0.01, tries: int = 5) -> float:
    """How firmly W determines the groups: the mean adjusted Rand index between ``labels`` and the groups of W plus
    symmetric Gaussian noise of ``scale`` times the spread (sd) of W's off-diagonal entries, over ``tries`` draws
    (1: the same groups every time; near 0: chance). Float rounding on another CPU or another recovery seed moves W
    too, so groups with a low value may not be reproduced on another machine.
    """
    from sklearn.metrics import adjusted_rand_score
    W, labels = np.asarray(W, np.float64), np.asarray(labels)
    c = int(labels.max()) + 1 if len(labels) else 1
    if c <= 1 or len(W) < 3:
        return 1.0
    spread = W[~np.eye(len(W), dtype=bool)].std()
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(tries):
        noise = rng.standard_normal(W.shape) * scale * spread
        noise = (noise + noise.T) / 2
        np.fill_diagonal(noise, 0)
        scores.append(adjusted_rand_score(labels, spectral_groups(np.clip(W + noise, 0, 1), c, mode, seed)))
    return float(np.mean(scores))


def class_overlap(zoo: Zoo) -> np.ndarray:
    """Number of classes (dataset and name) each pair of teachers shares."""
    sets = [{(t.dataset, c) for c in t.class_names} for t in zoo.teachers]
    return np.array([[len(a & b) for b in sets] for a in sets], np.int64)


def within_group_overlap(labels: np.ndarray, overlap: np.ndarray) -> float | None:
    """Mean classes shared by two teachers of one group over that of all pairs (``overlap``: classes shared per pair):
    below 1, groups gather teachers that share fewer classes than chance (what dissimilarity grouping is for). None
    where no pair shares a class or no group holds two teachers."""
    labels = np.asarray(labels)
    iu = np.triu_indices(len(labels), 1)
    same = (labels[:, None] == labels[None, :])[iu]
    ov = np.asarray(overlap, np.float64)[iu]
    if not same.any() or ov.mean() == 0:
        return None
    return float(ov[same].mean() / ov.mean())


def overlap_by_chance(labels: np.ndarray, overlap: np.ndarray, seed: int = 0, draws: int = 1000) -> tuple[float, float]:
    """The 2.5% and 97.5% points of :func:`within_group_overlap` over seeded random partitions with the group sizes
    of ``labels``: the range a grouping blind to class overlap falls in."""
    rng = np.random.default_rng(seed)
    values = [within_group_overlap(rng.permutation(labels), overlap) for _ in range(draws)]
    kept = [v for v in values if v is not None]
    if not kept:
        raise DfmetaError("within-group overlap is undefined for these groups (no group of two, or no shared class)")
    lo, hi = np.percentile(kept, [2.5, 97.5])
    return float(lo), float(hi)


def cached_dissimilarity(run_dir: str | Path, ids: list[str]) -> tuple[np.ndarray, int]:
    """A `dfmeta group` run's cached W restricted to the teachers ``ids`` (its rows and columns, in that order), and
    the run's clustering seed. Each W_ij depends only on teachers i and j, so this is the W of those teachers' tasks.
    """
    path = Path(run_dir) / CACHE_FILE
    if not path.is_file():
        raise DfmetaError(f"{path}: not found; regrouping (another c, mode or teacher subset than the group run's, or "
                          f"--small-groups fewer) needs the run's cached W")
    with np.load(path) as z:
        W, cached = z["W"], [str(i) for i in z["teacher_ids"]]
    where = {t: k for k, t in enumerate(cached)}
    missing = [t for t in ids if t not in where]
    if missing:
        raise DfmetaError(f"{path}: W has no row for teacher {missing[0]} ({len(missing)} of this run's {len(ids)} "
                          f"teachers missing; the group run used another zoo)")
    config = Path(run_dir) / "config.json"
    seed = json.loads(config.read_text()).get("seed", 42) if config.is_file() else 42
    idx = [where[t] for t in ids]
    return W[np.ix_(idx, idx)], int(seed)


def pick_from_groups(labels: np.ndarray, m: int, rng: np.random.Generator) -> list[int]:
    """One group drawn uniformly, then ``m`` of its teachers (their indices, sorted): TGR's draw of an epoch's tasks."""
    group = rng.choice(np.unique(labels))
    members = np.flatnonzero(labels == group)
    return sorted(rng.choice(members, m, replace=False).tolist())


def labels_of_group_run(run_dir: str | Path, ids: list[str]) -> np.ndarray:
    """The labels a `dfmeta group` run gave the teachers ``ids`` (by id, in that order)."""
    path = Path(run_dir) / "groups.json"
    if not path.is_file():
        raise DfmetaError(f"{path}: not found (a `dfmeta group` run directory expected)")
    g = json.loads(path.read_text())
    labels = dict(zip(map(str, g.get("teacher_ids") or []), g.get("labels") or []))
    missing = [t for t in ids if t not in labels]
    if missing:
        raise DfmetaError(f"{path}: no group for teacher {missing[0]} ({len(missing)} of {len(ids)} missing; the "
                          "group run used another zoo)")
    return np.asarray([labels[t] for t in ids], np.int64)


def regroup(run_dir: str | Path, ids: list[str], groups: int, mode: str) -> np.ndarray:
    """Labels for the teachers ``ids`` from a `dfmeta group` run's cached W (:func:`cached_dissimilarity`), clustered
    again into ``groups`` by ``mode`` with the run's seed.

    So one grouping of the whole zoo serves a seeded subset (``--zoo-size``, Fig. 6), another c (Table 6) or the
    similarity mode (Table 8) without recovering a task again.
    """
    W, seed = cached_dissimilarity(run_dir, ids)
    return spectral_groups(W, groups, mode, seed)


def fewer_groups(W: np.ndarray, groups: int, size: int, mode: str = "dissimilarity", seed: int = 42) -> np.ndarray:
    """Spectral groups of W with the largest c <= ``groups`` whose every group has at least ``size`` members (c = 1
    at worst): what a zoo too small for c groups of m teachers is grouped into."""
    for c in range(min(groups, len(W)), 0, -1):
        labels = spectral_groups(W, c, mode, seed)
        if np.bincount(labels).min() >= size:
            return labels
    return np.zeros(len(W), np.int64)


# ---------------------------------------------------------------------------------------------------------- all
def cache_key(cfg: GroupingConfig, ids: list[str], extra: dict | None = None) -> str:
    """What W depends on: the probe settings, the teachers and ``extra`` (e.g. the recovery settings)."""
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("groups", "mode")}
    if cfg.fisher_labels == "task":  # the default: caches written before the field existed stay valid
        del keep["fisher_labels"]
    if cfg.fisher_cosine == "layers":  # what caches written before the field existed computed: they stay valid
        del keep["fisher_cosine"]
    if cfg.probe_weights:
        keep["fallback_probe"] = keep["seed"] = None
    return json.dumps({"grouping": keep, "teachers": ids, "extra": extra or {}}, sort_keys=True, default=str)


def load_cached(cache: str | Path, key: str) -> tuple[np.ndarray, str] | None:
    """(W, probe description) from ``cache/fisher.npz`` when it was computed under ``key``."""
    path = Path(cache) / CACHE_FILE
    if not path.is_file():
        return None
    with np.load(path) as z:
        if str(z["key"]) != key:
            return None
        return z["W"], str(z["probe"])


def save_cache(cache: str | Path, key: str, ids: list[str], W: np.ndarray, labels: np.ndarray, probe: str,
               embeddings: list[list[Tensor]] | None = None) -> bool:
    """Write W, labels and (when under 1 GiB) the flattened embeddings atomically; True if embeddings were kept."""
    arrays = {"key": np.array(key), "W": W, "labels": labels, "probe": np.array(probe),
              "teacher_ids": np.array(ids)}
    kept = False
    if embeddings is not None:
        flat = np.stack([torch.cat([f.flatten() for f in e]).numpy() for e in embeddings])
        if flat.nbytes <= MAX_SAVED_EMBEDDINGS:
            arrays["fisher"] = flat
            arrays["layer_sizes"] = np.array([f.numel() for f in embeddings[0]])
            kept = True
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(Path(cache) / CACHE_FILE, buf.getvalue())
    return kept


def group_teachers(zoo: Zoo, tasks: list[RecoveredTask] | Callable[[], list[RecoveredTask]], cfg: GroupingConfig,
                   device: torch.device, cache: str | Path | None = None, cache_extra: dict | None = None,
                   on_task: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Group the zoo's teachers from one recovered task each (in zoo order): (labels ``[n]``, W ``[n, n]``, info).

    ``cache``: a run directory keeping W (and embeddings) in ``fisher.npz``; ``tasks`` may be a function, called only
    when the cache holds no W for these settings, teachers and ``cache_extra`` (say, the recovery settings).
    ``on_task`` is called after each task's Fisher embedding.
    """
    n = len(zoo)
    if cfg.groups > n:
        raise DfmetaError(f"field 'groups': c = {cfg.groups} is larger than the zoo ({n} models)")
    ids = [t.id for t in zoo.teachers]
    t0 = time.perf_counter()
    key = cache_key(cfg, ids, cache_extra)
    hit = load_cached(cache, key) if cache is not None else None
    embeddings = None
    if hit is not None:
        W, desc = hit
    else:
        tasks = tasks() if callable(tasks) else tasks
        if sorted(t.teacher for t in tasks) != list(range(n)):
            raise DfmetaError(f"grouping needs one recovered task per teacher of the zoo ({n}), got {len(tasks)}")
        tasks = sorted(tasks, key=lambda t: t.teacher)
        size = cfg.probe_size or max(t.images.shape[-1] for t in tasks)
        probe, desc = load_probe(cfg, device, size)
        embeddings = fisher_embeddings(tasks, probe, device, cfg.fisher_samples, size, on_task=on_task,
                                       labels=cfg.fisher_labels)
        W = dissimilarity(embeddings, device, cfg.fisher_cosine)
    labels = spectral_groups(W, cfg.groups, cfg.mode, cfg.seed)
    info = {"probe": desc, "cached": hit is not None, "seconds": round(time.perf_counter() - t0, 3),
            "teacher_ids": ids, "sizes": np.bincount(labels, minlength=cfg.groups).tolist()}
    if cache is not None:
        info["embeddings_saved"] = save_cache(cache, key, ids, W, labels, desc, embeddings) if hit is None else None
    return labels, W, info
