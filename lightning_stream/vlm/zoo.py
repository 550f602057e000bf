"""Tiny random-weight members of the VLM families people fine-tune, built offline.

Each builder writes a directory that ``AutoConfig`` and ``AutoProcessor`` load like a hub
checkpoint (config, tokenizer, image processor, chat template; no weights), with the real
model and processor classes of its family at toy size: a byte-level tokenizer trained here,
hidden sizes of 32, one or two layers, images of a few patches. They exist to test the
data path against each family's real processor and forward, and to smoke-test a pipeline
without a download.

Video processors need torchvision; they are left out (see
:func:`lightning_stream.vlm.processor.load_processor`).

Example:
    >>> path = build_family("qwen2_vl", "/tmp/tiny-qwen2-vl")  # doctest: +SKIP
    >>> VisionLanguageModel(path)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

from lightning_stream._compat import pil_image_processing_module
from lightning_stream.vlm.processor import without_video
from lightning_stream.vlm.shapes import corpus
from lightning_stream.vlm.shapes_chat import CHAT_TEXTS
from lightning_stream.vlm.tiny import train_tokenizer

log = logging.getLogger(__name__)

__all__ = ["FAMILIES", "build_family"]

_HIDDEN = 32
_VOCAB = 400

# Chat templates written out: hub checkpoints ship theirs; these follow the real ones in
# shape (role markers, where images go, how a turn ends) at a fraction of the length.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ image_placeholder }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOLVLM = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
GEMMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _chatml(image_placeholder: str) -> str:
    return CHATML.replace("{{ image_placeholder }}", image_placeholder)


def _texts() -> list[str]:
    return corpus() + CHAT_TEXTS + ["Compare the two images.", "Both show a shape.", "Describe the picture."]


def _cls(module: str, name: str) -> Any:
    return getattr(importlib.import_module(f"transformers.models.{module}"), name)


def _pil(module: str, name: str) -> Any:
    # The PIL image processors need no torchvision (transformers 5 names them ``*Pil``).
    return getattr(pil_image_processing_module(module), name)


def _text(config_cls: Any, tokenizer: Any, **extra: Any) -> Any:
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=_HIDDEN,
        intermediate_size=2 * _HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    kwargs.update(extra)
    return config_cls(**kwargs)


def _siglip(image_size: int, patch_size: int) -> Any:
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=_HIDDEN,
        intermediate_size=2 * _HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )


def _qwen(version: str) -> tuple[Any, Any]:
    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tokenizer = train_tokenizer(
        _texts(),
        special,
        _VOCAB,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=_chatml("<|vision_start|><|image_pad|><|vision_end|>"),
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special}
    patch = 16 if version == "qwen3_vl" else 14
    image_processor = _pil("qwen2_vl", "Qwen2VLImageProcessorPil")(
        min_pixels=(2 * patch) ** 2,
        max_pixels=(4 * patch) ** 2,
        patch_size=patch,
        merge_size=2,
    )
    names = {
        "qwen2_vl": ("qwen2_vl", "Qwen2VL"),
        "qwen2_5_vl": ("qwen2_5_vl", "Qwen2_5_VL"),
        "qwen3_vl": ("qwen3_vl", "Qwen3VL"),
    }
    module, prefix = names[version]
    processor = without_video(_cls(module, f"{prefix}Processor"))(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    vision: dict[str, Any] = dict(depth=1, num_heads=2, patch_size=patch, spatial_merge_size=2)
    head_dim = _HIDDEN // 2
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3] if head_dim == 16 else None}
    if version == "qwen2_vl":
        vision.update(embed_dim=_HIDDEN, hidden_size=_HIDDEN, mlp_ratio=2)
    elif version == "qwen2_5_vl":
        vision.update(
            hidden_size=_HIDDEN,
            intermediate_size=2 * _HIDDEN,
            out_hidden_size=_HIDDEN,
            window_size=2 * patch * 2,
            fullatt_block_indexes=[0],
        )
    else:
        vision.update(
            hidden_size=_HIDDEN,
            intermediate_size=2 * _HIDDEN,
            out_hidden_size=_HIDDEN,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0],
        )
        rope["mrope_interleaved"] = True
    text = _text(_cls(module, f"{prefix}TextConfig"), tokenizer, rope_parameters=rope, head_dim=head_dim)
    config = _cls(module, f"{prefix}Config")(
        text_config=text.to_dict(),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return config, processor


def _idefics3(smolvlm: bool) -> tuple[Any, Any]:
    rows_cols = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<end_of_utterance>",
        "<fake_token_around_image>",
        "<image>",
        "<global-img>",
        *rows_cols,
    ]
    tokenizer = train_tokenizer(
        _texts(),
        special,
        _VOCAB,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        chat_template=SMOLVLM,
    )
    module = "smolvlm" if smolvlm else "idefics3"
    prefix = "SmolVLM" if smolvlm else "Idefics3"
    size, patch, scale = 32, 8, 2
    image_processor = _pil(module, f"{prefix}ImageProcessorPil")(
        size={"longest_edge": 2 * size},
        max_image_size={"longest_edge": size},
        do_image_splitting=True,
    )
    seq_len = (size // patch) ** 2 // scale**2
    processor_cls = _cls(module, f"{prefix}Processor")
    processor = without_video(processor_cls)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=seq_len,
        chat_template=SMOLVLM,
        **({"video_processor": None} if smolvlm else {}),
    )
    vision = dict(
        hidden_size=_HIDDEN,
        intermediate_size=2 * _HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=size,
        patch_size=patch,
    )
    from transformers import LlamaConfig

    text = _text(LlamaConfig, tokenizer)
    config = _cls(module, f"{prefix}Config")(
        vision_config=vision,
        text_config=text.to_dict(),
        scale_factor=scale,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    return config, processor


def _paligemma() -> tuple[Any, Any]:
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaProcessor

    special = ["<pad>", "<eos>", "<bos>", "<image>"]
    tokenizer = train_tokenizer(
        _texts(),
        special,
        _VOCAB,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    size, patch = 32, 8
    image_processor = _pil("siglip", "SiglipImageProcessorPil")(size={"height": size, "width": size})
    image_processor.image_seq_length = (size // patch) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = _text(GemmaConfig, tokenizer, head_dim=16)
    config = PaliGemmaConfig(
        vision_config=_siglip(size, patch).to_dict(),
        text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=_HIDDEN,
    )
    config.vision_config.projection_dim = _HIDDEN
    return config, processor


def _gemma3() -> tuple[Any, Any]:
    from transformers import Gemma3Config, Gemma3Processor, Gemma3TextConfig

    special = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    ]
    tokenizer = train_tokenizer(
        _texts(),
        special,
        _VOCAB,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
        chat_template=GEMMA3,
    )
    size, patch, tokens = 32, 8, 4
    image_processor = _pil("gemma3", "Gemma3ImageProcessorPil")(size={"height": size, "width": size})
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=tokens,
        chat_template=GEMMA3,
    )
    text = _text(Gemma3TextConfig, tokenizer, head_dim=16, sliding_window=64)
    config = Gemma3Config(
        text_config=text.to_dict(),
        vision_config=_siglip(size, patch).to_dict(),
        mm_tokens_per_image=tokens,
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
    )
    return config, processor


def _llava_next(onevision: bool) -> tuple[Any, Any]:
    from transformers import LlamaConfig, Qwen2Config

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tokenizer = train_tokenizer(
        _texts(),
        special,
        _VOCAB,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
        chat_template=_chatml("<image>"),
    )
    size, patch = 16, 8
    pinpoints = [[size, size], [size, 2 * size], [2 * size, size]]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    if onevision:
        from transformers import LlavaOnevisionConfig, LlavaOnevisionProcessor

        image_processor = _pil("llava_onevision", "LlavaOnevisionImageProcessorPil")(
            size={"height": size, "width": size}, image_grid_pinpoints=pinpoints
        )
        processor = without_video(LlavaOnevisionProcessor)(
            image_processor=image_processor,
            tokenizer=tokenizer,
            num_image_tokens=(size // patch) ** 2,
            vision_feature_select_strategy="full",
            chat_template=tokenizer.chat_template,
            vision_aspect_ratio="anyres_max_9",
        )
        config = LlavaOnevisionConfig(
            vision_config=_siglip(size, patch).to_dict(),
            text_config=_text(Qwen2Config, tokenizer).to_dict(),
            image_token_index=image_id,
            video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=pinpoints,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
        )
        return config, processor
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextProcessor

    image_processor = _pil("llava_next", "LlavaNextImageProcessorPil")(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    vision = CLIPVisionConfig(
        hidden_size=_HIDDEN,
        intermediate_size=2 * _HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=size,
        patch_size=patch,
        projection_dim=_HIDDEN,
    )
    config = LlavaNextConfig(
        vision_config=vision.to_dict(),
        text_config=_text(LlamaConfig, tokenizer).to_dict(),
        image_token_index=image_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=(size // patch) ** 2,
    )
    return config, processor


def _llava() -> tuple[Any, Any]:
    import tempfile

    from transformers import AutoConfig, AutoProcessor

    from lightning_stream.vlm.tiny import build_tiny_vlm

    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_vlm(
            tmp,
            image_size=32,
            patch_size=8,
            hidden_size=_HIDDEN,
            vision_hidden_size=_HIDDEN,
            text_layers=1,
            vision_layers=1,
            num_heads=2,
        )
        return AutoConfig.from_pretrained(tmp), AutoProcessor.from_pretrained(tmp)


# family name -> builder of (config, processor)
FAMILIES: dict[str, Callable[[], tuple[Any, Any]]] = {
    "llava": _llava,
    "llava_next": lambda: _llava_next(onevision=False),
    "llava_onevision": lambda: _llava_next(onevision=True),
    "qwen2_vl": lambda: _qwen("qwen2_vl"),
    "qwen2_5_vl": lambda: _qwen("qwen2_5_vl"),
    "qwen3_vl": lambda: _qwen("qwen3_vl"),
    "idefics3": lambda: _idefics3(smolvlm=False),
    "smolvlm": lambda: _idefics3(smolvlm=True),
    "paligemma": _paligemma,
    "gemma3": _gemma3,
}


def build_family(family: str, out_dir: str) -> str:
    """Write a tiny ``family`` VLM's config and processor (no weights) to ``out_dir``.

    Raises:
        ValueError: ``family`` is not one of :data:`FAMILIES`.

    Example:
        >>> build_family("paligemma", "/tmp/tiny-paligemma")  # doctest: +SKIP
        '/tmp/tiny-paligemma'
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
    config, processor = FAMILIES[family]()
    os.makedirs(out_dir, exist_ok=True)
    processor.save_pretrained(out_dir)
    config.save_pretrained(out_dir)
    log.info("tiny %s config and processor saved to %s", family, out_dir)
    return out_dir
