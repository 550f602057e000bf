"""The dependency window: every family's processor loads back with and without torchvision, on
whatever transformers is installed (CI runs this file on the newest releases, on the declared
floors, and beside torchvision); bf16 autocast reaches every family's forward; what cannot be
loaded is named as that before any row is read; the old ``pytorch_lightning`` namespace is told
which import to change.
"""

from __future__ import annotations

import importlib.util
import json
import os

import datasets
import lightning.pytorch as pl
import pytest
import torch

from lightning_stream import StreamingDataModule, TransformError
from lightning_stream.vlm import VisionLanguageModel, VLMCollator, VLMTransform
from lightning_stream.vlm.errors import ModelLoadError, ProcessorLoadError
from lightning_stream.vlm.processor import load_processor
from lightning_stream.vlm.zoo import FAMILIES, build_family

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("window")
    return {name: build_family(name, str(root / name)) for name in FAMILIES}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_processor_loads_back(family_dirs, family) -> None:
    processor = load_processor(family_dirs[family])
    image = processor.image_processor
    assert processor.tokenizer is not None and image is not None
    if not HAS_TORCHVISION:
        assert type(image).__name__.endswith("Pil"), type(image).__name__
        assert getattr(processor, "video_processor", None) is None
    # It still saves and loads back (the processor a user's checkpoint folder keeps).
    again = os.path.join(family_dirs[family], "again")
    processor.save_pretrained(again)
    assert type(load_processor(again)).__name__ == type(processor).__name__


def test_smolvlm_encodes_images_where_torchvision_is_missing_or_present(family_dirs) -> None:
    from PIL import Image

    processor = load_processor(family_dirs["smolvlm"])
    out = processor(images=[[Image.new("RGB", (40, 30), (200, 20, 20))]], text=["<image>What?"], return_tensors="pt")
    assert out["pixel_values"].ndim == 5 and out["pixel_values"].shape[0] == 1
    assert (out["input_ids"] == processor.image_token_id).sum() > 0


def _batch(family_dirs, family: str) -> dict[str, torch.Tensor]:
    from PIL import Image

    turn = lambda role, text, n=0: {"role": role, "content": [{"type": "image"}] * n + [{"type": "text", "text": text}]}  # noqa: E731
    messages = [[turn("user", "What color?", 1), turn("assistant", "red")]]
    transform = VLMTransform(family_dirs[family], max_length=256)
    out = transform({"messages": messages, "images": [[Image.new("RGB", (40, 30), (220, 30, 30))]]})
    return VLMCollator(family_dirs[family])([{k: v[0] for k, v in out.items()}])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_forward_under_bf16_autocast(family_dirs, family) -> None:
    """What ``bf16-mixed`` does on a GPU, on the CPU: autocast makes the vision projector return
    bfloat16 while the text embeddings stay float32. The projector's linear layers are also
    cast to bfloat16 outright (their output is then bfloat16 whatever autocast's op lists say),
    so the merge into the embeddings must meet both dtypes."""
    batch = _batch(family_dirs, family)
    torch.manual_seed(0)
    module = VisionLanguageModel(family_dirs[family])
    module.configure_model()
    for name, sub in module.model.named_modules():
        if isinstance(sub, torch.nn.Linear) and any(k in name for k in ("connector", "projector", "visual.merger")):
            sub.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()


def test_smolvlm_merger_cast_is_what_makes_bf16_work(family_dirs) -> None:
    """The module-level fix itself: with image features in bfloat16 and embeddings in float32,
    SmolVLM's merge works once our cast is in place (transformers releases before the upstream
    cast raise "Index put requires the source and destination dtypes match" without it)."""
    from lightning_stream._compat import merge_images_in_embedding_dtype

    module = VisionLanguageModel(family_dirs["smolvlm"])
    module.configure_model()
    merger_owner = next((m for m in module.model.modules() if hasattr(type(m), "inputs_merger")), None)
    if merger_owner is None:
        pytest.skip("this transformers merges SmolVLM's images without an inputs_merger (the floor job runs it)")
    assert getattr(merger_owner, "_lightning_stream_cast", False)
    assert merge_images_in_embedding_dtype(module.model) == 0  # once is enough: no double wrap
    ids = torch.tensor([[1, 2]])
    embeds = torch.zeros(1, 2, 8)
    image_id = module.model.config.image_token_id
    ids[0, 1] = image_id
    patch = torch.ones(1, 1, 8, dtype=torch.bfloat16)
    merged = merger_owner.inputs_merger(input_ids=ids, inputs_embeds=embeds, image_hidden_states=patch)
    assert merged.dtype == torch.float32 and merged[0, 1].tolist() == [1.0] * 8


def _fit(dm: StreamingDataModule, tmp_path, module: pl.LightningModule | None = None) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module or _Tiny(), datamodule=dm)


def _tiny_module_class(base: type) -> type:
    """A one-parameter module on ``base`` (``lightning.pytorch``'s or ``pytorch_lightning``'s)."""

    class Tiny(base):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return self.w.sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Tiny


_Tiny = _tiny_module_class(pl.LightningModule)


class _CountingRows:
    """A filter that counts the rows it sees (in the main process: num_workers=0)."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, batch: dict) -> list[bool]:
        self.rows += len(next(iter(batch.values())))
        return [True] * len(next(iter(batch.values())))


def _broken_processor(family_dirs, tmp_path) -> str:
    """A SmolVLM folder whose image processor names a class no transformers release has."""
    import shutil

    broken = str(tmp_path / "broken")
    shutil.copytree(family_dirs["smolvlm"], broken)
    path = os.path.join(broken, "processor_config.json")
    with open(path) as f:
        config = json.load(f)
    config["image_processor"]["image_processor_type"] = "NoSuchImageProcessor"
    with open(path, "w") as f:
        json.dump(config, f)
    return broken


@pytest.mark.parametrize("num_workers", [0, 2])
def test_processor_that_cannot_load_is_named_before_any_row_is_read(family_dirs, tmp_path, num_workers) -> None:
    broken = _broken_processor(family_dirs, tmp_path)
    counter = _CountingRows()
    rows = datasets.Dataset.from_dict({"messages": [[{"role": "user", "content": "hi"}]] * 8})
    dm = StreamingDataModule(
        train=rows,
        filter=counter,
        transform=VLMTransform(broken),
        batch_size=4,
        num_workers=num_workers,
    )
    with pytest.raises(ProcessorLoadError) as caught:
        _fit(dm, tmp_path)
    message = str(caught.value)
    assert broken in message and "SmolVLMProcessor" in message and "Fix:" in message
    assert "bad row" not in message and "row " not in message.split("Fix:")[0].replace(broken, "")
    assert isinstance(caught.value, TransformError)  # never skipped as a bad row (on_error="skip")
    assert counter.rows == 0


def test_missing_processor_folder_names_the_path(tmp_path) -> None:
    with pytest.raises(ProcessorLoadError, match="no-such-folder"):
        VLMCollator(str(tmp_path / "no-such-folder")).preflight()


def test_model_that_cannot_load_names_path_and_fix(tmp_path) -> None:
    os.makedirs(tmp_path / "empty")
    module = VisionLanguageModel(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError) as caught:
        module.configure_model()
    assert str(tmp_path / "empty") in str(caught.value) and "Fix:" in str(caught.value)


@pytest.mark.skipif(importlib.util.find_spec("pytorch_lightning") is None, reason="pytorch-lightning not installed")
def test_old_pytorch_lightning_namespace_is_told_which_import_to_change(tmp_path) -> None:
    import pytorch_lightning as old

    dm = StreamingDataModule(train=datasets.Dataset.from_dict({"x": [1.0] * 8}), batch_size=4)
    trainer = old.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )

    with pytest.raises(TypeError, match="import lightning.pytorch as pl"):
        trainer.fit(_tiny_module_class(old.LightningModule)(), datamodule=dm)


def test_lightning_pytorch_trainer_is_accepted(tmp_path) -> None:
    dm = StreamingDataModule(train=datasets.Dataset.from_dict({"x": [1.0] * 8}), batch_size=4)
    _fit(dm, tmp_path)
    assert dm.trainer is not None


def test_source_of_the_window_is_the_declared_one() -> None:
    """pyproject's floors are the floor job's constraints: one list, not two that drift."""
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["vlm"]
    floors = {}
    with open(os.path.join(root, "requirements", "floor.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                name, version = line.split("==")
                floors[name.lower()] = version
    for requirement in declared:
        name, _, version = requirement.partition(">=")
        name = name.split("[")[0].strip().lower()
        if name == "torch":  # installed first, from the machine's own wheel (README): see .ci/run
            continue
        assert floors.get(name) == version.strip(), f"{name}: pyproject says >={version}, floor.txt {floors.get(name)}"
