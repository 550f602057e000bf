"""Every function of ``lightning_stream._compat`` against the installed libraries, on real objects.

Each reads something another library does not promise to keep; a release that moves it fails
here, by name. No library is mocked.
"""

from __future__ import annotations

import inspect
import os
import warnings

import datasets
import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pytest
import torch

from lightning_stream import StreamingDataModule
from lightning_stream._compat import (
    arrow_table,
    attached_trainer,
    builder_extensions,
    checkpoint_fit_loop,
    datasets_streaming_retries,
    fsdp_unwrapped,
    gather_rows,
    is_packaged_builder,
    merge_images_in_embedding_dtype,
    needs_decoding,
    pil_image_processing_module,
    pil_image_processor_class,
    processor_class_for_config,
    resolve_data_files,
    select_table_columns,
)
from lightning_stream.testing import IdModel

# ---------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def table(data_dir) -> datasets.table.Table:
    """The memory-mapped table of a save_to_disk folder of 3 files (rows ``id`` 0..999, ``text``)."""
    ds = datasets.load_from_disk(os.path.join(data_dir, "disk"))
    assert len(ds.cache_files) == 3
    return ds.data


def test_needs_decoding_reads_which_features_datasets_decodes() -> None:
    assert needs_decoding(datasets.Image())
    assert needs_decoding(datasets.Audio())
    assert needs_decoding(datasets.Sequence(datasets.Image()))
    assert needs_decoding({"picture": datasets.Image(), "caption": datasets.Value("string")})
    assert not needs_decoding(datasets.Value("int64"))
    assert not needs_decoding(datasets.Sequence(datasets.Value("string")))
    assert not needs_decoding(datasets.Image(decode=False))


def test_gather_rows_of_a_memory_mapped_table_in_any_order(table) -> None:
    rows = np.array([999, 0, 400, 0, 333])  # across the 3 files, a repeat, out of order
    got = gather_rows(table, rows)
    assert isinstance(got, pa.Table)
    assert got.column("id").to_pylist() == rows.tolist()
    assert got.column("text").to_pylist() == [f"row {i}" for i in rows]


def test_arrow_table_is_the_wrapped_arrow_table_without_a_copy(table) -> None:
    inner = arrow_table(table)
    assert isinstance(inner, pa.Table) and not isinstance(inner, datasets.table.Table)
    assert inner.num_rows == 1000 and inner.column_names == ["id", "text"]
    # The same buffers (the memory map), not a copy of them.
    ours = inner.column("id").chunks[0].buffers()[1]
    theirs = table.column("id").chunks[0].buffers()[1]
    assert ours.address == theirs.address


def test_select_table_columns_keeps_a_datasets_table_that_gathers(table) -> None:
    rest = select_table_columns(table, ["text"])
    assert isinstance(rest, datasets.table.Table)
    assert rest.column_names == ["text"]
    assert gather_rows(rest, np.array([7, 3])).to_pydict() == {"text": ["row 7", "row 3"]}


def test_resolve_data_files_matches_as_datasets_reads(tmp_path) -> None:
    for name in ("a.parquet", "b.parquet", ".hidden.parquet", "c.json"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.parquet").write_bytes(b"")
    found = resolve_data_files("*.parquet", str(tmp_path))
    assert sorted(os.path.basename(f) for f in found) == ["a.parquet", "b.parquet"]  # hidden skipped
    assert all(os.path.isabs(f) for f in found)
    assert sorted(os.path.basename(f) for f in resolve_data_files("**/*.parquet", str(tmp_path))) == [
        "a.parquet",
        "b.parquet",
        "d.parquet",
    ]
    with pytest.raises(FileNotFoundError):  # what stores/resolve.py catches to name the source
        resolve_data_files("*.arrow", str(tmp_path))


def test_builder_extensions_maps_builders_to_the_extensions_they_read() -> None:
    extensions = builder_extensions()
    assert isinstance(extensions, dict)
    assert ".parquet" in extensions["parquet"] and ".arrow" in extensions["arrow"]
    assert {".json", ".jsonl"} <= set(extensions["json"]) and ".csv" in extensions["csv"]
    assert all(isinstance(e, str) and e.startswith(".") for exts in extensions.values() for e in exts)


def test_is_packaged_builder_knows_datasets_own_builders() -> None:
    for name in ("parquet", "arrow", "json", "csv", "text", "imagefolder", "webdataset"):
        assert is_packaged_builder(name), name
    assert not is_packaged_builder("someone/some-dataset")
    assert not is_packaged_builder("./parquet")


_STREAMING = (
    "STREAMING_READ_MAX_RETRIES",
    "STREAMING_OPEN_MAX_RETRIES",
    "STREAMING_READ_RETRY_INTERVAL",
    "STREAMING_OPEN_RETRY_INTERVAL",
)


def test_datasets_streaming_retries_set_and_restore_what_datasets_reads() -> None:
    import datasets.config as config
    import datasets.utils.file_utils as file_utils

    # datasets reads the constants from its config module at each retry: setting them takes effect.
    source = inspect.getsource(file_utils)
    for name in _STREAMING:
        assert f"config.{name}" in source, name
    before = {name: getattr(config, name) for name in _STREAMING}
    with datasets_streaming_retries(3, 0.25):
        assert config.STREAMING_READ_MAX_RETRIES == config.STREAMING_OPEN_MAX_RETRIES == 3
        assert config.STREAMING_READ_RETRY_INTERVAL == config.STREAMING_OPEN_RETRY_INTERVAL == 0.25
    assert {name: getattr(config, name) for name in _STREAMING} == before
    with pytest.raises(RuntimeError), datasets_streaming_retries(1, 0.0):
        raise RuntimeError("a read that failed")
    assert {name: getattr(config, name) for name in _STREAMING} == before


# ---------------------------------------------------------------- lightning, torch


class _Seen(IdModel):
    """IdModel that notes, at each step, what :func:`attached_trainer` returns."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []

    def training_step(self, batch, batch_idx):
        self.seen.append(attached_trainer(self) is self.trainer)
        return super().training_step(batch, batch_idx)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, data_dir) -> tuple[_Seen, dict]:
    """A module after 2 steps of an epoch of 63 (batches of 16 of 1000 rows), and the checkpoint
    saved then: mid-epoch, with the loader's position."""
    root = tmp_path_factory.mktemp("fit")
    model = _Seen()
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        max_steps=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(root),
    )
    trainer.fit(model, datamodule=StreamingDataModule(train=os.path.join(data_dir, "disk"), batch_size=16))
    path = os.path.join(str(root), "mid.ckpt")
    trainer.save_checkpoint(path)
    return model, torch.load(path, weights_only=True)


def test_checkpoint_fit_loop_reads_the_loader_state_and_the_batch_progress(fitted) -> None:
    _, checkpoint = fitted
    states, progress = checkpoint_fit_loop(checkpoint)
    (state,) = states
    assert state["position"] == 32 and state["steps"] == 2 and "version" in state
    assert progress["current"]["processed"] == 2 and progress["is_last_batch"] is False
    assert checkpoint_fit_loop({}) == ([], {})  # a checkpoint without loops: nothing, no error
    assert checkpoint_fit_loop({"loops": {"fit_loop": {"state_dict": {}}}}) == ([], {})


def test_attached_trainer_is_none_where_the_public_property_raises(fitted) -> None:
    model, _ = fitted
    assert model.seen == [True, True]
    alone = IdModel()
    assert attached_trainer(alone) is None
    with pytest.raises(RuntimeError, match="not attached"):
        alone.trainer  # noqa: B018 - the public property refuses: why the private is read


def test_fsdp_unwrapped_reads_the_model_a_real_fsdp_wrapper_holds(tmp_path) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel

    inner = torch.nn.Bilinear(2, 2, 1)
    assert fsdp_unwrapped(inner) is inner  # not wrapped: itself
    if dist.is_initialized():
        pytest.skip("a process group is already set up in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "switching to NO_SHARD": one process
            wrapped = FullyShardedDataParallel(inner, device_id=torch.device("cpu"))
        assert fsdp_unwrapped(wrapped) is inner
        # Why it is read: the wrapper's forward hides the model's parameters.
        assert set(inspect.signature(wrapped.forward).parameters) == {"args", "kwargs"}
        assert set(inspect.signature(fsdp_unwrapped(wrapped).forward).parameters) == {"input1", "input2"}
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- transformers


def test_processor_class_for_config_maps_a_config_to_its_processor() -> None:
    import transformers

    assert processor_class_for_config(transformers.LlavaConfig()) is transformers.LlavaProcessor
    assert processor_class_for_config(transformers.Qwen2VLConfig()) is transformers.Qwen2VLProcessor
    assert processor_class_for_config(transformers.LlamaConfig()) is None  # text only: no processor


# The modules lightning_stream.vlm.zoo and .tiny build image processors from.
_PIL_MODULES = {
    "siglip": "SiglipImageProcessorPil",
    "qwen2_vl": "Qwen2VLImageProcessorPil",
    "idefics3": "Idefics3ImageProcessorPil",
    "smolvlm": "SmolVLMImageProcessorPil",
    "gemma3": "Gemma3ImageProcessorPil",
    "llava_onevision": "LlavaOnevisionImageProcessorPil",
    "llava_next": "LlavaNextImageProcessorPil",
}


def test_pil_image_processing_module_holds_the_pil_classes() -> None:
    from transformers.image_processing_utils import BaseImageProcessor

    for module, name in _PIL_MODULES.items():
        cls = getattr(pil_image_processing_module(module), name)
        assert isinstance(cls, type) and issubclass(cls, BaseImageProcessor), name
    processor = pil_image_processing_module("siglip").SiglipImageProcessorPil(size={"height": 8, "width": 8})
    assert processor.size == {"height": 8, "width": 8}  # built, torchvision or not
    with pytest.raises(ImportError):  # what tiny.py falls back on (transformers 4 has no such module)
        pil_image_processing_module("llama")


def test_pil_image_processor_class_finds_the_pil_class_of_any_backend_name() -> None:
    pil = pil_image_processing_module("idefics3").Idefics3ImageProcessorPil
    for name in ("Idefics3ImageProcessor", "Idefics3ImageProcessorFast", "Idefics3ImageProcessorPil"):
        assert pil_image_processor_class(name) is pil, name
    assert pil_image_processor_class("NoSuchImageProcessor") is None


def test_merge_images_in_embedding_dtype_casts_the_images_of_a_real_merger() -> None:
    """On Idefics3's model, whose merger has the signature SmolVLM's had (those releases are pinned
    by tests/test_versions.py): wrapped once, and bfloat16 images meet float32 embeddings."""
    from transformers import Idefics3Config, Idefics3Model, LlamaConfig

    text = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 8,
        "patch_size": 4,
    }
    model = Idefics3Model(Idefics3Config(text_config=text, vision_config=vision, image_token_id=5, scale_factor=1))
    if not hasattr(type(model), "inputs_merger"):
        pytest.skip("this transformers' Idefics3 has no inputs_merger")
    assert merge_images_in_embedding_dtype(model) == 1
    assert merge_images_in_embedding_dtype(model) == 0  # no double wrap
    ids = torch.tensor([[1, 5]])
    merged = model.inputs_merger(ids, torch.zeros(1, 2, 16), torch.ones(1, 1, 16, dtype=torch.bfloat16))
    assert merged.dtype == torch.float32 and merged[0, 1].tolist() == [1.0] * 16
