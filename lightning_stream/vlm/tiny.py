"""A tiny LLaVA-style VLM (config and processor, no weights) that learns the shapes data on a CPU.

Example:
    >>> build_tiny_vlm("data/shapes/model")  # doctest: +SKIP
    'data/shapes/model'
    >>> from transformers import AutoConfig, AutoProcessor
    >>> AutoProcessor.from_pretrained("data/shapes/model")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from lightning_stream.vlm.shapes import corpus

log = logging.getLogger(__name__)

__all__ = ["build_tiny_vlm", "train_tokenizer", "CHAT_TEMPLATE", "SPECIAL_TOKENS"]

_FORMAT_VERSION = 1

# Per-channel statistics of the shapes images. Normalising with them puts the background
# near zero, so a background patch embeds to little more than its position embedding and
# the position of the shape is visible to the model from the first step; with the usual
# (0.5, 0.5) the light background's content swamps the small random position embeddings.
SHAPES_MEAN = (0.918, 0.905, 0.899)
SHAPES_STD = (0.131, 0.156, 0.181)

SPECIAL_TOKENS = ["<pad>", "<s>", "<|end|>", "<image>", "<|system|>", "<|user|>", "<|assistant|>"]
# Each turn is "<|role|>\n ... <|end|>\n"; the image sits where the user turn puts it.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_vlm(
    out_dir: str,
    image_size: int = 64,
    patch_size: int = 16,
    vision_hidden_size: int = 64,
    vision_layers: int = 2,
    hidden_size: int = 128,
    text_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 512,
    max_position_embeddings: int = 512,
    image_mean: tuple[float, float, float] = SHAPES_MEAN,
    image_std: tuple[float, float, float] = SHAPES_STD,
    vision_feature_select_strategy: str = "default",
) -> str:
    """Save config and processor of a tiny LLaVA-style VLM (no weights) to ``out_dir``.

    A byte-level BPE tokenizer is trained on the shapes questions and answers; the vision
    tower is a small CLIP ViT, the language model a small Llama. The default has ~0.58M
    parameters and ``(image_size / patch_size)**2`` = 16 image tokens. ``AutoConfig`` and
    ``AutoProcessor`` load the result offline; :class:`VisionLanguageModel` initialises
    weights from the config. A no-op if ``out_dir`` already holds the same build.

    Example:
        >>> from transformers import AutoProcessor
        >>> build_tiny_vlm("data/shapes/model")  # doctest: +SKIP
        >>> AutoProcessor.from_pretrained("data/shapes/model")  # doctest: +SKIP
    """
    params = dict(
        version=_FORMAT_VERSION,
        image_size=image_size,
        patch_size=patch_size,
        vision_hidden_size=vision_hidden_size,
        vision_layers=vision_layers,
        hidden_size=hidden_size,
        text_layers=text_layers,
        num_heads=num_heads,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        image_mean=list(image_mean),
        image_std=list(image_std),
        vision_feature_select_strategy=vision_feature_select_strategy,
    )
    manifest = os.path.join(out_dir, "tiny_vlm.json")
    if os.path.isfile(manifest) and os.path.isfile(os.path.join(out_dir, "config.json")):
        with open(manifest) as f:
            if json.load(f) == params:
                return out_dir
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")

    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor

    from lightning_stream._compat import pil_image_processing_module

    try:  # transformers 5 names the PIL backend; it needs no torchvision
        SiglipImageProcessor = pil_image_processing_module("siglip").SiglipImageProcessorPil
    except (ImportError, AttributeError):  # transformers 4
        from transformers import SiglipImageProcessor

    tokenizer = train_tokenizer(
        corpus(),
        SPECIAL_TOKENS,
        vocab_size,
        bos_token="<s>",
        eos_token="<|end|>",  # end of turn: generation stops where the answer ends
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_position_embeddings,
    )
    # Plain resize to a square (no crop): odd aspect ratios keep all their content.
    image_processor = SiglipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=list(image_mean),
        image_std=list(image_std),
    )
    num_image_tokens = (image_size // patch_size) ** 2 + (vision_feature_select_strategy == "full")
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=vision_hidden_size * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=max(1, vision_hidden_size // 32),
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=text_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=num_image_tokens,
        vision_feature_layer=-1,  # the last layer: a 2-layer tower has little to choose from
        vision_feature_select_strategy=vision_feature_select_strategy,
    )
    os.makedirs(out_dir, exist_ok=True)
    processor.save_pretrained(out_dir)
    config.save_pretrained(out_dir)
    with open(manifest, "w") as f:
        json.dump(params, f, indent=2)
    log.info("tiny VLM config and processor saved to %s", out_dir)
    return out_dir


def train_tokenizer(texts: Iterable[str], special_tokens: list[str], vocab_size: int, **kwargs: Any) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``, offline, in a second.

    Byte-level, so any text (a long question, an odd character) still tokenizes. The
    ``special_tokens`` come first in the vocabulary and are never split; ``kwargs`` go to
    ``PreTrainedTokenizerFast`` (``bos_token``, ``chat_template``, ...).

    Example:
        >>> tok = train_tokenizer(["red circle"], ["<pad>"], 300, pad_token="<pad>")
        >>> tok.decode(tok("red circle")["input_ids"])
        'red circle'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
