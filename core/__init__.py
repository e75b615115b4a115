"""attnbench: compare attention mechanisms with each other and with RNN baselines.

Plugin authors need ``hookimpl`` and the base classes re-exported here.
"""

from .attention import Attention, NoOptions, capture_attention_maps
from .hookspecs import hookimpl
from .models import ModelDims, ModelFamily, TaskIO
from .tasks import Batch, Evaluation, Task

__version__ = "0.1.0"
__all__ = [
    "Attention", "Batch", "Evaluation", "ModelDims", "ModelFamily", "NoOptions", "Task", "TaskIO",
    "capture_attention_maps", "hookimpl", "__version__",
]
