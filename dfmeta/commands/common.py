"""Config fields shared by the commands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from dfmeta.config import learning_rates, require
from dfmeta.data.domains import check_dataset_spec
from dfmeta.data.registry import default_data_root
from dfmeta.errors import DfmetaError
from dfmeta.runs import expect_directory, resolve_device

if TYPE_CHECKING:
    import torch

    from dfmeta.data.dataset import FewShotSplit
    from dfmeta.evaluate import DomainEvaluator


@dataclass(frozen=True)
class DataConfig:
    """Where data comes from and where results go."""

    dataset: str = "embedded"
    """Dataset name: embedded (no files), cifar-fs, fc100, omniglot, miniimagenet, cub; several joined by '+'
    (cifar-fs+omniglot) for the multi-domain scenario."""
    data_root: str = str(default_data_root())
    """Root folder of the real datasets (env DFMETA_DATA sets the default)."""
    seed: int = 0
    """Seed for zoo picks and training (the evaluation episodes come from --episode-seed)."""
    device: str = "auto"
    """Torch device: auto (CUDA when available), cpu, cuda, cuda:1, ..."""
    threads: int = 0
    """CPU threads for torch (0: torch's default). 1 is often fastest for dfmeta's small ops on a busy machine."""
    out_dir: str = "runs"
    """Parent folder of run directories."""

    def validate(self) -> None:
        check_dataset_spec(self.dataset)
        resolve_device(self.device)  # a device this machine lacks fails before any run or zoo directory is made
        expect_directory(self.out_dir, "--out-dir")
        if self.threads < 0:
            raise DfmetaError(f"field 'threads': must be non-negative (0: torch's default), got {self.threads}")
        image_size = getattr(self, "image_size", 0)  # a field of most commands that load data
        require([(image_size >= 0, "image_size", f">= 0 (0: the dataset's own), got {image_size}")])


@dataclass(frozen=True)
class EvalFields:
    """The few-shot evaluation protocol."""

    ways: int = 5
    """N: classes per episode."""
    shots: tuple[int, ...] = (1, 5)
    """K values to evaluate (support images per class)."""
    queries: int = 15
    """Query images per class."""
    episodes: int = 600
    """Episodes per evaluation (of each dataset of a multi-domain one, as the paper's 1800 over three)."""
    eval_steps: int = 10
    """Fine-tuning steps (plain gradient descent) on the support set."""
    eval_lr: float = 0.01
    """Fine-tuning learning rate."""
    episode_batch: int = 0
    """Episodes fine-tuned together (0: 600 on CUDA, 50 on CPU)."""
    episode_seed: int = 0
    """Seed of the fixed evaluation episodes (the same for every method, so results are comparable)."""

    def validate(self) -> None:
        require([
            (self.ways >= 2, "ways", f">= 2 (classes per episode), got {self.ways}"),
            (len(self.shots) >= 1 and min(self.shots) >= 1, "shots", f"K values >= 1, got {list(self.shots)}"),
            (len(set(self.shots)) == len(self.shots), "shots", f"each K once, got {list(self.shots)}"),
            (self.queries >= 1, "queries", f">= 1 (query images per class), got {self.queries}"),
            (self.episodes >= 1, "episodes", f">= 1, got {self.episodes}"),
            (self.eval_steps >= 0, "eval_steps", f">= 0, got {self.eval_steps}"),
            *learning_rates(self, "eval_lr"),
            (self.episode_batch >= 0, "episode_batch", f">= 0 (0: 600 on CUDA, 50 on CPU), got {self.episode_batch}"),
        ])

    def check_episodes(self, splits: "Sequence[FewShotSplit]") -> None:
        """Raise now, before any work, if some K of ``shots`` cannot be evaluated on ``splits``."""
        from dfmeta.data.episodes import check_episodes
        for split in splits:
            for k in self.shots:
                check_episodes(split, self.ways, k, self.queries)

    def evaluator(self, splits: "Sequence[FewShotSplit]", k_shot: int, device: "torch.device",
                  episodes: int = 0) -> "DomainEvaluator":
        """The fixed, seeded episodes of this protocol on each of ``splits`` (several datasets: multi-domain)."""
        from dfmeta.evaluate import DomainEvaluator
        return DomainEvaluator(splits, self.ways, k_shot, self.queries, episodes or self.episodes, self.episode_seed,
                               self.eval_steps, self.eval_lr, device, self.episode_batch or None)
