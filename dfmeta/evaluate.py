"""Few-shot evaluation: fine-tune all parameters on each episode's support set, score its queries, report a 95% CI.

Episodes are fine-tuned together: the parameters get a leading episode axis and ``torch.func.vmap`` runs the
plain gradient-descent steps of every episode in one batched computation. BatchNorm uses batch statistics
(the paper's protocol); ``model`` must therefore be built with ``bn="batch"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from dfmeta.data.dataset import FewShotSplit
from dfmeta.data.episodes import Episodes, sample_episodes, to_input
from dfmeta.errors import DfmetaError
from dfmeta.nets import fcall, head_names

HeadMode = Literal["keep", "zero", "random"]


@dataclass
class EvalResult:
    """Mean accuracy (%) and its 95% confidence interval over episodes."""

    mean: float
    ci95: float
    accs: np.ndarray
    parts: dict[str, "EvalResult"] = field(default_factory=dict)
    """Per-domain results of a multi-domain evaluation (empty for one dataset)."""

    @staticmethod
    def of(accs: np.ndarray) -> "EvalResult":
        """From per-episode accuracies in [0, 1]."""
        accs = np.asarray(accs, dtype=np.float64) * 100
        ci = 1.96 * accs.std() / math.sqrt(len(accs)) if len(accs) > 1 else float("nan")
        return EvalResult(float(accs.mean()), float(ci), accs)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"acc": round(self.mean, 4), "ci95": round(self.ci95, 4), "episodes": int(len(self.accs))}
        if self.parts:
            out["domains"] = {k: v.as_dict() for k, v in self.parts.items()}
        return out

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.ci95:.2f}"


def prepare_head(model: nn.Module, params: dict[str, torch.Tensor], n_way: int, head: HeadMode,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """Parameters with an ``n_way`` head: kept as is, zeroed, or freshly initialised (seeded)."""
    names = head_names(model)
    w_name = next(n for n in names if n.endswith("weight"))
    b_name = next(n for n in names if n.endswith("bias"))
    out = dict(params)
    if head == "keep":
        if params[w_name].shape[0] != n_way:
            raise DfmetaError(f"the model's head has {params[w_name].shape[0]} outputs, episodes are {n_way}-way; "
                              "use head 'zero' or 'random'")
        return out
    feat = params[w_name].shape[1]
    ref = params[w_name]
    if head == "zero":
        out[w_name] = torch.zeros(n_way, feat, dtype=ref.dtype, device=ref.device)
    else:
        g = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(feat)
        out[w_name] = (torch.rand(n_way, feat, generator=g) * 2 - 1).mul_(bound).to(ref)
    out[b_name] = torch.zeros(n_way, dtype=ref.dtype, device=ref.device)
    return out


def finetune_episodes(model: nn.Module, params: dict[str, torch.Tensor], xs: torch.Tensor, ys: torch.Tensor,
                      steps: int, lr: float) -> dict[str, torch.Tensor]:
    """Plain gradient descent on each episode's support set, all episodes at once.

    ``xs`` ``[E, S, C, H, W]``, ``ys`` ``[E, S]``; returns parameters with a leading episode axis.
    """
    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(fcall(model, p, x), y)

    e = xs.shape[0]
    p = {k: v.detach().unsqueeze(0).expand(e, *v.shape).contiguous() for k, v in params.items()}
    step = vmap(grad(loss))
    for _ in range(steps):
        g = step(p, xs, ys)
        p = {k: p[k] - lr * g[k] for k in p}
    return p


@torch.no_grad()
def score_episodes(model: nn.Module, p: dict[str, torch.Tensor], xq: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
    """Query accuracy of each episode's fine-tuned parameters (``[E]``)."""
    logits = vmap(lambda pp, x: fcall(model, pp, x))(p, xq)
    return (logits.argmax(-1) == yq).float().mean(-1)


class Evaluator:
    """A fixed, seeded set of episodes over one split, kept on the device, scored for any initialisation."""

    def __init__(self, split: FewShotSplit, n_way: int = 5, k_shot: int = 1, n_query: int = 15,
                 n_episodes: int = 600, seed: int = 0, steps: int = 10, lr: float = 0.01,
                 device: torch.device | str = "cpu", episode_batch: int | None = None) -> None:
        self.split = split
        self.episodes: Episodes = sample_episodes(split, n_way, k_shot, n_query, n_episodes, seed)
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.steps, self.lr = steps, lr
        self.device = torch.device(device)
        self.episode_batch = episode_batch or (600 if self.device.type == "cuda" else 50)
        self.images = torch.from_numpy(split.images).to(self.device)

    def _batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        e, n, k = rows.shape
        idx = torch.from_numpy(rows.reshape(e, n * k)).to(self.device)
        x = to_input(self.images[idx], self.split.mean, self.split.std)
        y = torch.arange(n, device=self.device).repeat_interleave(k).expand(e, -1)
        return x, y

    def __call__(self, model: nn.Module, params: dict[str, torch.Tensor], head: HeadMode = "keep",
                 head_seed: int = 0, progress: str = "") -> EvalResult:
        """Fine-tune ``params`` on every episode's support set and return query accuracy with its 95% CI;
        ``progress``: show a bar of the episodes with this label (none when empty)."""
        from dfmeta.progress import bar as progress_bar
        params = {k: v.detach().to(self.device, torch.float32) for k, v in params.items()}
        params = prepare_head(model, params, self.n_way, head, head_seed)
        model = model.to(self.device)
        accs = []
        bar = progress_bar(total=len(self.episodes), desc=progress, unit="ep", leave=False, disable=not progress,
                   dynamic_ncols=True)
        for lo in range(0, len(self.episodes), self.episode_batch):
            sl = slice(lo, lo + self.episode_batch)
            xs, ys = self._batch(self.episodes.support[sl])
            xq, yq = self._batch(self.episodes.query[sl])
            with torch.enable_grad():
                p = finetune_episodes(model, params, xs, ys, self.steps, self.lr)
            accs.append(score_episodes(model, p, xq, yq).cpu())
            bar.update(len(accs[-1]))
        bar.close()
        return EvalResult.of(torch.cat(accs).numpy())


class DomainEvaluator:
    """``n_episodes`` episodes of each of several datasets (the multi-domain scenario: the paper's 1800 test episodes
    spread evenly over three datasets), the i-th dataset's seeded with ``seed + i``; one pooled mean and CI (the
    paper's formula over all episodes: conservative, as it counts the spread between the datasets' means), and each
    dataset's own result in ``parts``. With one dataset it is exactly :class:`Evaluator`."""

    def __init__(self, splits: Sequence[FewShotSplit], n_way: int = 5, k_shot: int = 1, n_query: int = 15,
                 n_episodes: int = 600, seed: int = 0, steps: int = 10, lr: float = 0.01,
                 device: torch.device | str = "cpu", episode_batch: int | None = None) -> None:
        if not splits:
            raise DfmetaError("evaluation needs at least one dataset")
        self.evaluators = [Evaluator(s, n_way, k_shot, n_query, n_episodes, seed + i, steps, lr, device,
                                     episode_batch) for i, s in enumerate(splits)]

    def __call__(self, model: nn.Module, params: dict[str, torch.Tensor], head: HeadMode = "keep",
                 head_seed: int = 0, progress: str = "") -> EvalResult:
        if len(self.evaluators) == 1:
            return self.evaluators[0](model, params, head, head_seed, progress)
        parts = {ev.split.name: ev(model, params, head, head_seed, progress and f"{progress} {ev.split.name}")
                 for ev in self.evaluators}
        pooled = EvalResult.of(np.concatenate([r.accs for r in parts.values()]) / 100)
        pooled.parts = parts
        return pooled
