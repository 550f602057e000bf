"""Padding-free packed batches (``VLMCollator(pack=True)``, ``PackedCollator``) on real models.

The core claim: a packed batch of rows trains exactly what the rows train one at a time.
Each family's real model class, with random weights, takes a packed batch of four rows
(0, 1 or 2 images, different lengths) through ``VisionLanguageModel``'s own loss, with
``sdpa`` and ``eager`` attention; the packed loss summed over its supervised tokens must equal
the sum of the rows' unpacked losses. The random weights are drawn wider than the models'
initialisation (which leaves attention almost uniform, so a token that saw another row would
move the loss by ~1e-5 only): a leak across rows then moves it by percents, far above the
tolerance, which the leak control below checks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import cpu_trainer
from test_vlm_families import picture, rows, turn

from lightning_stream import PackedCollator
from lightning_stream.packing_collate import IGNORE_INDEX, VARLEN_KEYS, pack_rows
from lightning_stream.vlm import VisionLanguageModel, VLMCollator, VLMTransform
from lightning_stream.vlm.packing import check_packable, mrope_position_ids
from lightning_stream.vlm.zoo import FAMILIES, build_family

REQUIRED = ("qwen2_vl", "llava_next", "smolvlm")  # issue #23; the other families are checked too
SHARP = 0.3  # std of the random weights: see the module docstring
RTOL = 1e-4


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("packed")
    return {name: build_family(name, str(root / name)) for name in FAMILIES}


def four_rows(family_dirs, family: str) -> list[dict]:
    """Rows with 2, 1, 0 and 1 images, of different lengths, as the transform makes them."""
    batch, _ = rows(family)
    batch["messages"].append([turn("user", "What color is the shape?", 1), turn("assistant", "blue circle")])
    batch["images"].append([picture((30, 60, 220), (30, 60))])
    out = VLMTransform(family_dirs[family], max_length=512)(batch)
    encoded = [{k: v[i] for k, v in out.items()} for i in range(4)]
    assert len({len(r["input_ids"]) for r in encoded}) > 1
    return encoded


def sharp_module(model_dir: str | None = None, model: torch.nn.Module | None = None, attn: str = "sdpa"):
    """A ``VisionLanguageModel`` in eval mode, fp32, with wide random weights."""
    torch.manual_seed(0)
    module = VisionLanguageModel(model_dir or "unused", attn_implementation=attn)
    if model is not None:
        module.model = model
    module.configure_model()
    with torch.no_grad():
        for param in module.model.parameters():
            if param.ndim >= 2:
                param.normal_(0.0, SHARP)
    return module.float().eval()


def summed_loss(module: VisionLanguageModel, batch: dict) -> tuple[float, int]:
    """The module's training loss times its supervised tokens, and their count."""
    count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    with torch.no_grad():
        loss = module.training_step(batch, 0)
    return float(loss) * count, count


def relative_gap(packed: float, unpacked: float) -> float:
    return abs(packed - unpacked) / abs(unpacked)


# ------------------------------------------------------------------------- layout
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_packed_batch_holds_exactly_the_rows_tokens(family_dirs, family) -> None:
    encoded = four_rows(family_dirs, family)
    batch = VLMCollator(family_dirs[family], pack=True)(encoded)
    lengths = [len(r["input_ids"]) for r in encoded]
    total = sum(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (1, total)
    assert batch["input_ids"][0].tolist() == [t for r in encoded for t in r["input_ids"]]  # no pad id anywhere
    assert "attention_mask" not in batch
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [*starts, total]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == max(lengths)
    assert batch["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]
    labels = batch["labels"][0]
    assert all(labels[s] == IGNORE_INDEX for s in starts)
    for start, row in zip(starts, encoded):  # the rest of each row's labels is untouched
        assert labels[start + 1 : start + len(row["labels"])].tolist() == list(row["labels"][1:])


@pytest.mark.parametrize("family", ["smolvlm", "qwen2_vl", "llava_next", "llava_onevision"])
def test_images_are_concatenated_in_row_order(family_dirs, family) -> None:
    encoded = four_rows(family_dirs, family)
    packed = VLMCollator(family_dirs[family], pack=True)(encoded)
    padded = VLMCollator(family_dirs[family])(encoded)
    if family == "smolvlm":  # one row holding every image; the padded batch has a slot per row
        pixels = padded["pixel_values"]
        real = pixels.flatten(2).abs().sum(-1) > 0
        assert packed["pixel_values"].shape[:2] == (1, int(real.sum()))
        torch.testing.assert_close(packed["pixel_values"][0], pixels[real], rtol=0, atol=0)
        assert packed["pixel_attention_mask"].shape[:2] == (1, int(real.sum()))
    else:
        for key in ("pixel_values", "image_grid_thw", "image_sizes"):
            if key in padded:
                torch.testing.assert_close(packed[key], padded[key], rtol=0, atol=0)
    if family == "llava_onevision":  # read as one flag per image: stays per row
        assert packed["batch_num_images"].tolist() == [2, 1, 0, 1]


# ---------------------------------------------------------------- equivalence
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_loss_is_the_sum_of_the_rows_losses(family_dirs, family, attn) -> None:
    encoded = four_rows(family_dirs, family)
    module = sharp_module(family_dirs[family], attn=attn)
    assert module.model.config._attn_implementation == attn
    packed, count = summed_loss(module, VLMCollator(family_dirs[family], pack=True)(encoded))
    one_by_one = [summed_loss(module, VLMCollator(family_dirs[family])([row])) for row in encoded]
    assert count == sum(n for _, n in one_by_one) > 0
    gap = relative_gap(packed, sum(loss for loss, _ in one_by_one))
    print(f"{family} {attn}: relative gap {gap:.2e}")
    assert gap < RTOL


@pytest.mark.parametrize("family", REQUIRED)
def test_a_leak_across_rows_would_show(family_dirs, family) -> None:
    """The control: without the row boundaries (no position ids) the same batch differs."""
    encoded = four_rows(family_dirs, family)
    module = sharp_module(family_dirs[family])
    batch = VLMCollator(family_dirs[family], pack=True)(encoded)
    unpacked = sum(summed_loss(module, VLMCollator(family_dirs[family])([row]))[0] for row in encoded)
    inputs = module._inputs(batch)
    del inputs["position_ids"]
    with torch.no_grad():
        logits = module.model(**inputs).logits[0, :-1]
    targets = batch["labels"][0, 1:]
    leaked = float(F.cross_entropy(logits, targets, reduction="sum"))
    assert relative_gap(leaked, unpacked) > 100 * RTOL


def test_the_packed_loss_is_also_the_models_own(family_dirs) -> None:
    """HF's loss (``labels=``) shifts like ours: the -100 at each row start serves it too."""
    family = "qwen2_vl"
    batch = VLMCollator(family_dirs[family], pack=True)(four_rows(family_dirs, family))
    module = sharp_module(family_dirs[family])
    ours = module.training_step(batch, 0)
    theirs = module.model(**module._inputs(batch), labels=batch["labels"]).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours.backward()
    assert module.model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0


# ------------------------------------------------------- what attention receives
@pytest.fixture
def recording_attention():
    """An attention implementation that records the varlen arguments each layer gets, then runs sdpa."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    seen: list[tuple[torch.nn.Module, set[str]]] = []

    def record(module, query, key, value, attention_mask, **kwargs):
        seen.append((module, {k for k in kwargs if k in VARLEN_KEYS and kwargs[k] is not None}))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("recording", record)
    AttentionMaskInterface.register("recording", sdpa_mask)
    return seen


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_vision_tower_receives_the_texts_varlen_arguments(family_dirs, family, recording_attention) -> None:
    """Under FlashAttention they would cut image patches at the text's row offsets."""
    from lightning_stream.vlm.module import _vision_tower

    encoded = four_rows(family_dirs, family)
    module = sharp_module(family_dirs[family], attn="recording")
    vision = {id(m) for m in _vision_tower(module.model).modules()}
    text_only = [r for r in encoded if r.get("pixel_values") is None]
    for rows_, varlen in ((encoded, set()), (text_only * 2, set(VARLEN_KEYS))):
        recording_attention.clear()
        with torch.no_grad():
            module.training_step(VLMCollator(family_dirs[family], pack=True)(rows_), 0)
        text = [keys for m, keys in recording_attention if id(m) not in vision]
        assert text and all(keys == varlen for keys in text)
        assert all(not keys for m, keys in recording_attention if id(m) in vision)


# ----------------------------------------------------------------------- mRoPE
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_mrope_positions_are_the_models_own_per_row(family_dirs, family) -> None:
    encoded = four_rows(family_dirs, family)
    batch = VLMCollator(family_dirs[family], pack=True)(encoded)
    module = sharp_module(family_dirs[family])
    positions = module._inputs(batch)["position_ids"]
    assert positions.shape == (4, 1, batch["input_ids"].shape[1])
    assert torch.equal(positions[0], batch["position_ids"])  # the text row: boundaries for the mask
    assert "cu_seq_lens_q" not in module._inputs(batch)  # see lightning_stream.vlm.packing
    bounds = batch["cu_seq_lens_q"].tolist()
    for row, start, end in zip(encoded, bounds, bounds[1:]):
        single = VLMCollator(family_dirs[family])([row])
        grids = {"image_grid_thw": single["image_grid_thw"]} if "image_grid_thw" in single else {}
        types = single.get("mm_token_type_ids", torch.zeros_like(single["input_ids"]))
        expected, _ = module.model.model.get_rope_index(single["input_ids"], mm_token_type_ids=types, **grids)
        assert torch.equal(positions[1:, 0, start:end], expected[:, 0])
    assert not torch.equal(positions[1], positions[0])  # the images' tokens are not 1-D


def test_mrope_of_a_batch_without_images_still_marks_the_rows(family_dirs) -> None:
    family = "qwen2_vl"
    text_rows = [r for r in four_rows(family_dirs, family) if r.get("pixel_values") is None]
    batch = VLMCollator(family_dirs[family], pack=True)(text_rows * 2)
    module = sharp_module(family_dirs[family])
    positions = mrope_position_ids(module.model.model.get_rope_index, batch)
    assert positions.shape[0] == 4  # a 1-D text row on top, or the model would see one long row
    assert torch.equal(positions[1:], batch["position_ids"][None].expand(3, -1, -1))


# ------------------------------------------------------------------- refusals
def test_a_family_that_cannot_pack_is_named(family_dirs, tmp_path) -> None:
    from transformers import MllamaProcessor

    from lightning_stream._compat import pil_image_processing_module
    from lightning_stream.vlm.tiny import train_tokenizer

    tokenizer = train_tokenizer(
        ["a red circle"], ["<pad>", "<|begin_of_text|>", "<|eot_id|>", "<|image|>"], 300, pad_token="<pad>"
    )
    image_processor = pil_image_processing_module("mllama").MllamaImageProcessorPil(max_image_tiles=1)
    MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp_path)
    collate = VLMCollator(str(tmp_path), pack=True)
    with pytest.raises(ValueError, match=r"MllamaProcessor cannot be packed.*pack=False"):
        collate.preflight()
    with pytest.raises(ValueError, match="MllamaProcessor"):
        collate([{"input_ids": [1, 2], "labels": [1, 2]}])
    VLMCollator(str(tmp_path), pack=False).preflight()  # padding still works
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        VLMCollator(pad_token_id=0, pack=True, pad_to_multiple_of=8)
    for family in FAMILIES:  # every family of the zoo packs
        VLMCollator(family_dirs[family], pack=True).preflight()
    with pytest.raises(ValueError, match="use VLMCollator"):
        check_packable("MllamaProcessor")


# ------------------------------------------------------------------------- text
def tiny_lm(kind: str, attn: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[kind]
    config = config_cls(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    config._attn_implementation = attn
    torch.manual_seed(0)
    return model_cls(config)


def text_rows() -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    lengths = [7, 19, 3, 12]
    out = [{"input_ids": torch.randint(3, 97, (n,), generator=generator).tolist()} for n in lengths]
    # One row with a prompt that is not supervised, as in instruction tuning.
    out[1]["labels"] = [IGNORE_INDEX] * 8 + out[1]["input_ids"][8:]
    return out


def test_pack_rows_layout() -> None:
    batch = PackedCollator()(text_rows())
    assert batch["input_ids"].shape == (1, 41)
    assert batch["cu_seq_lens_q"].tolist() == [0, 7, 26, 29, 41]
    assert batch["max_length_q"] == batch["max_length_k"] == 19
    assert batch["position_ids"][0, [0, 6, 7, 25, 26, 29, 40]].tolist() == [0, 6, 0, 18, 0, 0, 11]
    labels = batch["labels"][0]
    assert labels[[0, 7, 26, 29]].tolist() == [IGNORE_INDEX] * 4
    assert labels[1:7].tolist() == batch["input_ids"][0, 1:7].tolist()  # causal LM without labels
    assert (labels[7:15] == IGNORE_INDEX).all() and labels[15:26].tolist() == text_rows()[1]["labels"][8:]
    silent = pack_rows([{"input_ids": [4, 5]}], labels_from_input_ids=False)
    assert silent["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX]]
    with pytest.raises(ValueError, match="row 1: 'labels' has 1"):
        pack_rows([{"input_ids": [4, 5]}, {"input_ids": [4, 5], "labels": [4]}])
    with pytest.raises(ValueError, match="row 0 has no tokens"):
        pack_rows([{"input_ids": []}])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_packed_text_loss_is_the_sum_of_the_rows_losses(kind, attn) -> None:
    module = sharp_module(model=tiny_lm(kind, attn), attn=attn)
    rows_ = text_rows()
    packed, count = summed_loss(module, PackedCollator()(rows_))
    one_by_one = []
    for row in rows_:
        ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor([row.get("labels", row["input_ids"])])
        one_by_one.append(summed_loss(module, {"input_ids": ids, "labels": labels}))
    assert count == sum(n for _, n in one_by_one)
    gap = relative_gap(packed, sum(loss for loss, _ in one_by_one))
    print(f"{kind} {attn}: relative gap {gap:.2e}")
    assert gap < RTOL
    # The control: one long row (no restarts) is a different loss.
    batch = PackedCollator()(rows_)
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
    del batch["cu_seq_lens_q"], batch["cu_seq_lens_k"], batch["max_length_q"], batch["max_length_k"]
    assert relative_gap(summed_loss(module, batch)[0], packed) > 100 * RTOL


# ------------------------------------------------------------------------- fit
def test_a_fit_on_packed_batches_through_the_data_module_logs_rows(family_dirs, tmp_path) -> None:
    """Packed batches cross a DataLoader worker and Lightning's device transfer; the logged
    batch size is the number of rows, not 1."""
    import lightning.pytorch as pl

    from lightning_stream import Source, StreamingDataModule
    from lightning_stream.vlm.shapes_chat import make_shape_chats

    family = "smolvlm"
    data = make_shape_chats(str(tmp_path / "chat"), num_rows=8, val_rows=0, image_size=32)
    dm = StreamingDataModule(
        train=Source(path="parquet", data_files=data["train"]),
        transform=VLMTransform(family_dirs[family], max_length=256),
        collate_fn=VLMCollator(family_dirs[family], pack=True),
        batch_size=4,
        num_workers=1,
        buffer_size=8,
    )
    sizes: list[int] = []
    losses: list[float] = []

    class Recorded(VisionLanguageModel):
        def log(self, name, value, *args, batch_size=None, **kwargs) -> None:
            if name == "train/loss":
                sizes.append(batch_size)
            super().log(name, value, *args, batch_size=batch_size, **kwargs)

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            assert batch["input_ids"].shape[0] == 1 and len(batch["cu_seq_lens_q"]) == 5
            losses.append(float(outputs["loss"]))

    torch.manual_seed(0)
    module = Recorded(family_dirs[family], learning_rate=3e-3, warmup_ratio=0.0)
    cpu_trainer(max_epochs=1, callbacks=[Record()], default_root_dir=tmp_path).fit(module, datamodule=dm)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert sizes == [4, 4]
