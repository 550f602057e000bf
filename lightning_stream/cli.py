"""``lightning-stream``: ``LightningCLI`` with :class:`~lightning_stream.StreamingDataModule`.

``lightning-stream fit --config run.yaml`` trains; add ``--ckpt_path last`` (or a path) to
resume on exactly the next batch. Any ``LightningModule`` can be named under ``model:`` with
``class_path``/``init_args``.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from .datamodule import StreamingDataModule

__all__ = ["StreamingCLI", "main"]


class StreamingCLI(LightningCLI):
    """``LightningCLI`` whose datamodule is a :class:`StreamingDataModule` (or a subclass)."""

    def __init__(self, args: Optional[Any] = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            pl.LightningModule,
            StreamingDataModule,
            subclass_mode_model=True,
            args=args,
            **kwargs,
        )


def main(args: Optional[Any] = None) -> None:
    """Entry point of the ``lightning-stream`` command."""
    StreamingCLI(args=args)


if __name__ == "__main__":
    main()
