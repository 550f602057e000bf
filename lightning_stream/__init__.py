"""lightning_stream: stream Hugging Face datasets into PyTorch Lightning.

Exact mid-epoch resume from ``.ckpt`` files, a fresh order each epoch, every worker and every
rank busy with the same number of steps, a known length where the data tells it, and nothing
cached on disk.
"""

from .callbacks import StreamingCallback
from .collate import default_collate
from .datamodule import StreamingDataModule
from .dataset import StreamingDataset
from .empty import EmptyBatch, empty_step_loss
from .lengths import TokensAndImages
from .loader import StreamingDataLoader
from .packing_collate import PackedCollator
from .spec import DatasetSource, Mix, Remote, Source
from .state import StateMismatchError
from .stores.remote import RemoteReadError
from .tally import EmptyEpochError, RowError
from .transforms import Filter, Map, TransformError

__all__ = [
    "EmptyBatch",
    "EmptyEpochError",
    "Filter",
    "Map",
    "Mix",
    "PackedCollator",
    "Remote",
    "RemoteReadError",
    "RowError",
    "Source",
    "DatasetSource",
    "StateMismatchError",
    "StreamingCallback",
    "StreamingDataLoader",
    "StreamingDataModule",
    "StreamingDataset",
    "TokensAndImages",
    "TransformError",
    "default_collate",
    "empty_step_loss",
]

__version__ = "0.1.0.dev0"
