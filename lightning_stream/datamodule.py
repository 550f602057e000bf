"""``StreamingDataModule``: Hugging Face sources streamed into a Lightning Trainer."""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .callbacks import StreamingCallback
from .dataset import StreamingDataset, _Options
from .loader import StreamingDataLoader
from .options import ErrorOptions, LoaderOptions, ReadOptions, check_callables
from .spec import Mix, Source, as_source, named_sources
from .transforms import Filter, Map, as_pipeline, preflight

log = logging.getLogger(__name__)

__all__ = ["StreamingDataModule"]

Step = Map | Filter | Callable

# Each worker makes its own, disjoint batches, so the length Lightning warns about is exact.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")


class StreamingDataModule(pl.LightningDataModule):
    """Train and validation loaders that stream a Hugging Face ``datasets`` source.

    Rows are read when a worker needs them, decoded, passed through ``filter`` and
    ``transform`` and collated; nothing is cached. The train loader's position is saved in
    Lightning checkpoints, so ``trainer.fit(..., ckpt_path=...)`` resumes on exactly the next
    batch, also mid-epoch, with shuffling and workers. Each epoch has a fresh order that depends
    only on ``seed`` and the epoch. Where the source's metadata gives the row count (arrow,
    parquet footers) the loaders have a length, so the progress bar, ``max_epochs`` and
    ``trainer.estimated_stepping_batches`` work.

    Args:
        train: the training :class:`Source` (or a path / file / hub id string), a :class:`Mix`
            of sources with probabilities, or a ``datasets`` object: ``Dataset``,
            ``IterableDataset`` (its ``map``/``filter``/column chain runs in the workers), or a
            ``DatasetDict`` / ``IterableDatasetDict`` (its ``"train"`` split).
        val: optional validation source(s), read in order, from the start at each validation
            run: one source (a ``DatasetDict`` gives its ``"validation"`` split), a list, or a
            dict ``{name: source}``; several give one loader each (Lightning's
            ``dataloader_idx``), named in :attr:`val_names`. No ``val``: no validation loader.
        test: optional test source(s), as ``val`` (a ``DatasetDict`` gives ``"test"``), for
            ``trainer.test``.
        predict: optional source(s) for ``trainer.predict``: each rank reads a contiguous run
            in order, so predictions gathered in rank order follow the source's rows.
        transform: a callable ``dict[str, list] -> dict[str, list]`` (batched ``map``), a
            :class:`Map` / :class:`Filter`, or a list of them, applied in the workers.
        eval_transform: the transform for validation, test and predict (default: ``transform``),
            e.g. without augmentation.
        eval_collate_fn: the collate function for validation, test and predict (default:
            ``collate_fn``), e.g. prompts only for generation.
        filter: a batched predicate ``dict[str, list] -> list[bool]`` applied before
            ``transform``. Filtered rows leave their batch smaller (the step count stays known).
        collate_fn: ``list[dict] -> batch``; by default numeric columns become tensors.
        batch_size: rows per batch and per rank.
        val_batch_size: defaults to ``batch_size``.
        num_workers: DataLoader worker processes; every worker works, even on a single file.
        shuffle: shuffle the training order (block order, then rows within windows).
        buffer_size: rows per shuffle window; a window of raw rows is what a worker holds.
        seed: shuffle seed; the same seed gives the same order.
        drop_last: drop the last partial batch of each epoch.
        pin_memory: copy batches to page-locked memory for fast host-to-GPU copies; default:
            when the trainer runs on CUDA (without a trainer: when CUDA is available).
        persistent_workers: keep workers alive across epochs and validation runs; default: when
            ``num_workers > 0`` (a worker start costs ~0.1 s and a validation run can be short).
        prefetch_factor: batches prefetched per worker (torch's default, 2).
        prepare: a callable run once per node in ``prepare_data()`` (e.g. to generate data).
        on_error: ``"raise"`` stops on a row that cannot be decoded or transformed, naming it;
            ``"skip"`` drops such rows and counts them (``data/rows_skipped``).
        max_skipped: with ``on_error="skip"``, the most bad rows an epoch may skip before the
            run stops: a count (``>= 1``) or a fraction of the epoch's rows (``< 1``).
        strict_resume: refuse a checkpoint written for other data, seed or shuffle settings.
        even: how every rank gets the same number of training steps when the last step has
            fewer rows than ranks: ``"drop"`` those rows (at most ``world_size - 1`` per epoch,
            logged) or ``"pad"`` the ranks without one with a copy of an early row. Validation
            never drops nor pads: each rank reads a contiguous run, in equal step counts.
        batch_format: what the transform receives: ``"python"`` lists (``Dataset.map``'s
            default) or ``"numpy"`` arrays (as after ``with_format("numpy")``: numeric columns and
            equal-length numeric lists become arrays without a Python object per value, which is
            several times faster for token ids). Decoded media columns stay lists either way.
        lanes: how many contiguous runs (*lanes*) the training order is cut into; each lane is
            read by one (rank, worker) reader, so every block is read once per epoch. Default:
            ``world_size x num_workers`` when training starts; a checkpoint keeps its lanes, so a
            resume on another topology keeps the same order. Pass a multiple of every reader
            count you may resume on (e.g. 64) to keep reads at one per block after such a resume;
            each reader then holds ``lanes / readers`` shuffle windows.
        batch_tokens: token-budget steps: each training step's rows are chosen so that their
            ``length`` sums to at most ``batch_tokens`` (per rank), planned best-fit over each
            shuffle window before the epoch starts, so ``len()`` is known and equal on every
            rank and a resume is exact. ``batch_size`` then caps the rows of a step. Pair with a
            packing collator (``VLMCollator(pack=True)``, ``PackedCollator``) for steps without
            padding. Needs a source read by index (parquet, arrow, a ``datasets.Dataset``).
        length: each raw row's tokens, known before the transform: a column (an integer count,
            or a list whose items are counted) or a function of a raw row returning its tokens
            or ``(tokens, images)``. Measured once when the train loader is built.
        max_images: with ``batch_tokens``, the most images a step may hold (``length`` must
            return ``(tokens, images)``).
        block_size: fixed token blocks for pretraining: the rows' ``tokens_column`` (as the
            transform makes it) is concatenated over the epoch and cut into blocks of
            ``block_size`` tokens; a step holds ``batch_size`` blocks (a ``[batch_size,
            block_size]`` tensor). ``length`` must count exactly the tokens the transform makes
            for a row; no filter. Pass ``block_size + 1`` for inputs and shifted targets.
        tokens_column: the transform's column that ``block_size`` cuts (``"input_ids"``).

    Example:
        >>> dm = StreamingDataModule(
        ...     train=Source(path="parquet", data_files="data/train-*.parquet"),
        ...     transform=tokenize, batch_size=32, num_workers=2,
        ... )  # doctest: +SKIP
        >>> trainer.fit(model, datamodule=dm)  # doctest: +SKIP
    """

    def __init__(
        self,
        train: Source | Mix | str | Any,
        val: Source | Mix | str | list | dict | Any | None = None,
        test: Source | Mix | str | list | dict | Any | None = None,
        predict: Source | Mix | str | list | dict | Any | None = None,
        transform: Step | list[Step] | None = None,
        filter: Step | None = None,
        collate_fn: Callable[[list[dict]], Any] | None = None,
        eval_transform: Step | list[Step] | None = None,
        eval_collate_fn: Callable[[list[dict]], Any] | None = None,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
        buffer_size: int = 10_000,
        seed: int = 0,
        drop_last: bool = False,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        prefetch_factor: int | None = None,
        prepare: Callable[[], Any] | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        max_skipped: float | None = None,
        strict_resume: bool = True,
        even: Literal["drop", "pad"] = "drop",
        batch_format: Literal["python", "numpy"] = "python",
        lanes: int | None = None,
        batch_tokens: int | None = None,
        length: str | Callable[[dict], Any] | None = None,
        max_images: int | None = None,
        block_size: int | None = None,
        tokens_column: str = "input_ids",
    ) -> None:
        super().__init__()
        given = locals()
        self.read, self.loading, self.errors = ReadOptions.of(given), LoaderOptions.of(given), ErrorOptions.of(given)
        check_callables(collate_fn=collate_fn, eval_collate_fn=eval_collate_fn, prepare=prepare)
        self.train_source = as_source(train, split="train")
        self.val_sources = named_sources(val, split="validation")
        self.test_sources = named_sources(test, split="test")
        self.predict_sources = named_sources(predict, split="test")
        if filter is not None and not isinstance(filter, Filter):
            filter = Filter(filter)
        self.pipeline = as_pipeline(filter, transform)
        self.eval_pipeline = as_pipeline(filter, eval_transform) if eval_transform is not None else self.pipeline
        self.collate_fn = collate_fn
        self.eval_collate_fn = eval_collate_fn if eval_collate_fn is not None else collate_fn
        self.prepare = prepare
        if block_size is not None and self.pipeline.filters:
            raise ValueError(
                f"StreamingDataModule(block_size={block_size}, filter=...): the blocks are planned from every row's "
                "length, so no row may be removed; select the rows beforehand (a Source of the rows to keep)"
            )
        self.train_loader: StreamingDataLoader | None = None
        self._loaders: weakref.WeakSet[StreamingDataLoader] = weakref.WeakSet()
        # Lightning asks a datamodule for a stage's loader when the method is overridden; a stage
        # with no source has none (as LightningDataModule.from_datasets does), so Lightning warns
        # of no empty loader the user never asked for.
        for stage, sources in (
            ("val", self.val_sources),
            ("test", self.test_sources),
            ("predict", self.predict_sources),
        ):
            method = f"{stage}_dataloader"
            if not sources and getattr(type(self), method) is getattr(StreamingDataModule, method):
                setattr(self, method, None)

    def __getattr__(self, name: str) -> Any:
        # ``dm.batch_size`` and the other arguments read as before: from their option group.
        for group in ("read", "loading", "errors"):
            options = self.__dict__.get(group)
            if options is not None and name in options.__dataclass_fields__:
                return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def trainer(self) -> Any:
        return self.__dict__.get("_trainer")

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        # Lightning attaches the datamodule before it calls any hook: the first moment to say
        # which import to change, instead of the old package's "ValueError: Expected a parent".
        if trainer is not None and not isinstance(trainer, pl.Trainer):
            module = type(trainer).__module__.split(".")[0]
            raise TypeError(
                f"StreamingDataModule is a lightning.pytorch datamodule, but this Trainer comes from `{module}`: "
                f"change `import {module} as pl` (or `from {module} import Trainer`) to `import lightning.pytorch as pl` "
                "(or `from lightning.pytorch import Trainer`); the two packages are the same code under two names"
            )
        self.__dict__["_trainer"] = trainer

    @property
    def val_names(self) -> list[str]:
        """The names of the validation sets, in ``dataloader_idx`` order (for metric names)."""
        return list(self.val_sources)

    @property
    def test_names(self) -> list[str]:
        """The names of the test sets, in ``dataloader_idx`` order."""
        return list(self.test_sources)

    def __getstate__(self) -> dict[str, Any]:
        # Loaders (processes, queues) stay with the process that made them, e.g. under ddp_spawn.
        return {**self.__dict__, "train_loader": None, "_loaders": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._loaders = weakref.WeakSet()

    # -- Lightning hooks --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.prepare is not None:
            self.prepare()

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        if trainer is not None and not any(isinstance(c, StreamingCallback) for c in trainer.callbacks):
            trainer.callbacks.insert(0, StreamingCallback())

    def teardown(self, stage: str) -> None:
        # Persistent workers are stopped here rather than when the loaders are garbage: a loader
        # freed by the cycle collector (the Trainer and the datamodule refer to each other) waits
        # 5 s per worker in torch's shutdown.
        for loader in list(self._loaders):
            loader.shutdown_workers()

    def _topology(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _pin_memory(self) -> bool:
        if self.loading.pin_memory is not None:
            return self.loading.pin_memory
        if self.trainer is not None:
            return self.trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def _loader(self, source: Source | Mix, *, train: bool, in_order: bool = False) -> StreamingDataLoader:
        rank, world_size = self._topology()
        windows_per_reader = self.read.windows_per_reader(self.loading.readers(world_size)) if train else 1
        options = _Options(
            batch_size=self.read.batch_size if train else self.read.eval_batch_size,
            shuffle=self.read.shuffle if train else False,
            seed=self.read.seed,
            window=self.read.buffer_size,
            drop_last=self.read.drop_last if train else False,
            pipeline=self.pipeline if train else self.eval_pipeline,
            collate_fn=self.collate_fn if train else self.eval_collate_fn,
            on_error=self.errors.on_error,
            cache_rows=2 * self.read.buffer_size * windows_per_reader,
            cache_windows=2 * windows_per_reader,
            pad=self.read.even == "pad",
            evaluation=not train,
            batch_format=self.read.batch_format,
            in_order=in_order,
            batch_tokens=self.read.batch_tokens if train else None,
            length=self.read.length if train else None,
            max_images=self.read.max_images if train else None,
            block_size=self.read.block_size if train else None,
            tokens_column=self.read.tokens_column,
        )
        options.pipeline.preflight()
        preflight(options.collate_fn)
        dataset = StreamingDataset(source, options, rank=rank, world_size=world_size)
        loader = StreamingDataLoader(
            dataset,
            num_workers=self.loading.num_workers,
            pin_memory=self._pin_memory(),
            persistent_workers=self.loading.persistent,
            prefetch_factor=self.loading.prefetch_factor,
            max_skipped=self.errors.max_skipped,
            lanes=self.read.lanes if train else None,
            strict_resume=self.errors.strict_resume,
        )
        self._report_layout(dataset, source, loader)
        self._loaders.add(loader)
        return loader

    def _report_layout(self, dataset: StreamingDataset, source: Source, loader: StreamingDataLoader) -> None:
        lanes = loader.lanes
        store, readers = dataset.store, loader.readers
        if not store.random_access and readers > 1 and lanes == 1 and not dataset.options.evaluation:
            rank_zero_warn(
                f"lightning_stream: {source.path!r} is a stream of {store.num_shards} shard(s), fewer than its {readers} readers "
                f"({dataset.world_size} ranks x {max(1, self.loading.num_workers)} workers), so each reader reads all of it and keeps "
                f"its own rows: reads grow {readers}x. Use at least {readers} files (or hub shards), or parquet / save_to_disk "
                f"data (e.g. Dataset.to_parquet), to read each byte once per epoch."
            )
        layout = dataset.layout(0, epoch=loader.current_epoch(), lanes=lanes)
        if layout is None:
            rank_zero_info(
                f"lightning_stream: the length of {source.path!r} is unknown (a stream); the progress bar has no total"
            )
            return
        if layout.num_steps == 0:
            raise ValueError(
                f"{source.path!r} has {layout.num_rows} rows: too few for one batch of {dataset.options.batch_size} "
                f"on each of {dataset.world_size} ranks"
            )
        if dataset.options.batch_tokens is not None:
            plan = layout.plan
            rank_zero_info(
                f"lightning_stream: {len(plan.tokens)} token-budget steps of at most {dataset.options.batch_tokens} tokens "
                f"in each epoch of {source.path!r}: {plan.num_rows / max(1, len(plan.tokens)):.1f} rows and "
                f"{plan.tokens.mean() / dataset.options.batch_tokens:.1%} of the budget per step on average"
            )
        if self.loading.num_workers > layout.num_steps:
            rank_zero_warn(
                f"num_workers={self.loading.num_workers} but {source.path!r} makes only {layout.num_steps} batches per rank "
                f"and epoch: {self.loading.num_workers - layout.num_steps} workers will idle"
            )
        if layout.dropped_rows or layout.padded_rows:
            what = (
                f"{layout.dropped_rows} rows are dropped"
                if layout.dropped_rows
                else f"{layout.padded_rows} rows are repeated"
            )
            rank_zero_info(
                f"lightning_stream: {what} in each epoch of {source.path!r} so that every rank takes {layout.num_steps} steps"
            )

    def train_dataloader(self) -> StreamingDataLoader:
        loader = self._loader(self.train_source, train=True)
        loader.acked_externally = self.trainer is not None
        if self.trainer is not None:
            # A loader made anew at a later epoch (reload_dataloaders_every_n_epochs) starts there;
            # from then on the callback pushes each epoch, and a checkpoint's state overrides both.
            loader.set_epoch(self.trainer.current_epoch)
            for callback in self.trainer.callbacks:
                if isinstance(callback, StreamingCallback) and (state := callback.take_restored_state()):
                    loader.load_state_dict(state)
        self.train_loader = loader
        return loader

    def val_dataloader(self) -> Any:
        return self._eval_loaders(self.val_sources)

    def test_dataloader(self) -> Any:
        return self._eval_loaders(self.test_sources)

    def predict_dataloader(self) -> Any:
        return self._eval_loaders(self.predict_sources, in_order=True)

    def _eval_loaders(self, sources: dict[str, Source | Mix], in_order: bool = False) -> Any:
        loaders = [self._loader(s, train=False, in_order=in_order) for s in sources.values()]
        return loaders[0] if len(loaders) == 1 else loaders
