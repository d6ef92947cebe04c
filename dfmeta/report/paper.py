"""The paper's own numbers (5-way accuracy %, 600 episodes), shown beside ours for reference, never mixed with them.

Source: Wei, Hu, Shen, Wang, Li, Yuan, Tao, "Task Groupings Regularization: Data-Free Meta-Learning with
Heterogeneous Pre-trained Models", ICML 2024, as transcribed in ``docs/method.md`` of the shared docs (means
only: the confidence intervals are not transcribed). Keys are dfmeta dataset names and K (shots).
"""

from __future__ import annotations

CITATION = "Wei et al., ICML 2024"

_DATASETS = ("cifar-fs", "miniimagenet", "cub")


def _row(*accs: float) -> dict[tuple[str, int], float]:
    """Six numbers in Table 1's column order (CIFAR-FS, miniImageNet, CUB; 1-shot then 5-shot each)."""
    keys = [(d, k) for d in _DATASETS for k in (1, 5)]
    return dict(zip(keys, accs))


# Table 1: method -> {(dataset, K): accuracy}.
TABLE1: dict[str, dict[tuple[str, int], float]] = {
    "Finetune": _row(28.59, 34.77, 25.06, 28.10, 26.26, 29.89),
    "Best-Model": _row(21.68, 25.05, 22.86, 26.26, 24.16, 29.16),
    "Average": _row(23.96, 27.04, 23.79, 27.49, 24.53, 28.00),
    "OTA": _row(29.10, 34.33, 24.22, 27.22, 24.23, 25.42),
    "DRO": _row(30.43, 36.21, 27.56, 30.19, 28.33, 31.24),
    "PURER": _row(38.66, 51.95, 31.14, 40.86, 30.08, 40.93),
    "BiDf-MKD": _row(37.66, 51.16, 30.66, 42.30, 31.62, 44.32),
    "TGR": _row(43.58, 57.49, 36.20, 49.00, 33.87, 47.37),
}

# The scenarios: TGR only, K -> accuracy over all test episodes.
MULTI_DOMAIN_DOMAINS = "CIFAR-FS+miniImageNet+CUB"
MULTI_DOMAIN_DATASETS = frozenset({"cifar-fs", "miniimagenet", "cub"})
MULTI_DOMAIN: dict[str, dict[int, float]] = {"TGR": {1: 32.04, 5: 44.88}}
MULTI_ARCH_ARCHS = "Conv4/ResNet-10/ResNet-18, CIFAR-FS"
MULTI_ARCH_MIX = ("cifar-fs", frozenset({"conv4", "resnet10", "resnet18"}))
MULTI_ARCH: dict[str, dict[int, float]] = {"TGR": {1: 44.18, 5: 57.15}}

# Table 4 (CIFAR-FS): the vanilla row; the full TGR row is Table 1's.
ABLATION: dict[str, dict[tuple[str, int], float]] = {
    "vanilla": {("cifar-fs", 1): 41.84, ("cifar-fs", 5): 55.01},
    "TGR": {k: v for k, v in TABLE1["TGR"].items() if k[0] == "cifar-fs"},
}

# Table 6: number of groups c -> accuracy, miniImageNet 5-shot.
GROUPS: dict[tuple[str, int], dict[int, float]] = {
    ("miniimagenet", 5): dict(zip(range(1, 10), (48.11, 48.79, 48.20, 48.75, 49.00, 49.37, 49.31, 49.24, 48.02))),
}

METHOD_ORDER = tuple(TABLE1)
