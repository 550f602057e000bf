"""``lightning-stream``: ``LightningCLI`` with :class:`~lightning_stream.StreamingDataModule`.

``lightning-stream fit --config run.yaml`` trains; add ``--ckpt_path last`` (or a path) to
resume on exactly the next batch. Any ``LightningModule`` can be named under ``model:`` with
``class_path``/``init_args``; ``data:`` takes the datamodule's arguments directly, or a subclass
as ``class_path: my.DataModule`` with ``init_args``.

Arguments that model and data both take are given once: ``batch_size`` flows from data to model,
and a ``tokenizer`` / ``processor`` (a path or hub id) given on either side reaches the other when
it has that argument and left it unset. Conflicting values are an error naming both.
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from .datamodule import StreamingDataModule

__all__ = ["StreamingCLI", "main"]

# Arguments linked between model and data when both classes take them: (name, the side that owns it).
LINKED = (("batch_size", "data"), ("tokenizer", None), ("processor", None))


class StreamingCLI(LightningCLI):
    """``LightningCLI`` whose datamodule is a :class:`StreamingDataModule` or a subclass of it."""

    def __init__(self, args: Any | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            pl.LightningModule,
            StreamingDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            **kwargs,
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        link_arguments(config)


def link_arguments(config: Any) -> None:
    """Give ``model`` and ``data`` the same ``batch_size`` / ``tokenizer`` / ``processor``."""
    model, data = config.get("model"), config.get("data")
    if model is None or data is None or "class_path" not in model or "class_path" not in data:
        return
    sides = {"model": model, "data": data}
    params = {side: _parameters(cfg["class_path"]) for side, cfg in sides.items()}
    for name, owner in LINKED:
        if not all(name in p for p in params.values()):
            continue
        values = {
            side: cfg["init_args"].get(name) if cfg.get("init_args") is not None else None
            for side, cfg in sides.items()
        }
        given = {side: v for side, v in values.items() if v is not None and v != params[side][name].default}
        if len(set(map(str, given.values()))) > 1:
            raise ValueError(
                f"model.{name}={values['model']!r} but data.{name}={values['data']!r}: give {name} once "
                f"(under {owner or 'either'}); lightning-stream passes it to the other"
            )
        source = owner if owner is not None else next(iter(given), None)
        if source is None or values[source] is None:
            continue
        for side, cfg in sides.items():
            if side != source:
                cfg["init_args"][name] = values[source]


def _parameters(class_path: str) -> dict[str, inspect.Parameter]:
    module, _, name = class_path.rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    params: dict[str, inspect.Parameter] = {}
    for klass in reversed(cls.__mro__):  # a subclass's **kwargs reach its parents' arguments
        init = klass.__dict__.get("__init__")
        if init is not None:
            params.update(
                {
                    k: v
                    for k, v in inspect.signature(init).parameters.items()
                    if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)
                }
            )
    return params


def main(args: Any | None = None) -> None:
    """Entry point of the ``lightning-stream`` command."""
    StreamingCLI(args=args)


if __name__ == "__main__":
    main()
