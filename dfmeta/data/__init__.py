"""Datasets (one reader per source format) and the episode sampler."""

from dfmeta.data.dataset import FewShotSplit
from dfmeta.data.episodes import Episodes, sample_episodes
from dfmeta.data.registry import DATASETS, load_split

__all__ = ["DATASETS", "Episodes", "FewShotSplit", "load_split", "sample_episodes"]
