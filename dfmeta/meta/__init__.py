"""Meta-training pieces: the Eq. 8 task loss, IGR over task groups, the replay memory bank and MAML."""

from dfmeta.meta.bank import MemoryBank
from dfmeta.meta.igr import IGR_MODES, IGRResult, gradient_stats, igr_gradient, task_gradients
from dfmeta.meta.loss import KD_FORMS, kd_loss, task_loss
from dfmeta.meta.maml import adapt, maml_loss

__all__ = ["IGR_MODES", "IGRResult", "KD_FORMS", "MemoryBank", "adapt", "gradient_stats", "igr_gradient",
           "kd_loss", "maml_loss", "task_gradients", "task_loss"]
