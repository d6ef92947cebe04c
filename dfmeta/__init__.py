"""dfmeta: data-free meta-learning from a zoo of pre-trained classifiers (TGR, ICML 2024, and baselines)."""

from dfmeta.errors import DfmetaError

__version__ = "0.1.0"
__all__ = ["DfmetaError", "__version__"]
