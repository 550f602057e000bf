"""A LightningModule that fine-tunes (or trains from scratch) any HF image-text-to-text model.

The model is built in :meth:`VisionLanguageModel.configure_model`, not in ``__init__``:
LightningCLI instantiates the module before ``prepare_data`` has had a chance to create a
local model directory, and strategies such as FSDP want to build the model themselves.

Example:
    >>> import lightning.pytorch as pl
    >>> model = VisionLanguageModel("data/shapes/model", learning_rate=1e-3)
    >>> pl.Trainer(max_epochs=3).fit(model, datamodule=dm)  # doctest: +SKIP
    >>> model.generate_answer("circle.png", "What color is the shape?")  # doctest: +SKIP
    'red'
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from lightning_stream._compat import attached_trainer, fsdp_unwrapped, merge_images_in_embedding_dtype
from lightning_stream.empty import EmptyBatch, empty_step_loss
from lightning_stream.packing_collate import packed_rows
from lightning_stream.schedules import warmup_cosine
from lightning_stream.vlm.errors import ModelLoadError
from lightning_stream.vlm.images import load_image
from lightning_stream.vlm.packing import model_inputs as packed_model_inputs
from lightning_stream.vlm.processor import LazyProcessor, render_prompt
from lightning_stream.vlm.transform import IGNORE_INDEX

log = logging.getLogger(__name__)

__all__ = ["VisionLanguageModel"]

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Where HF image-text-to-text models keep their vision encoder.
_VISION_TOWERS = (
    "model.vision_tower",
    "vision_tower",
    "model.vision_model",
    "vision_model",
    "model.visual",
    "visual",
)


class VisionLanguageModel(pl.LightningModule):
    """Train a Hugging Face image-text-to-text model on answer-only labels.

    Args:
        model_name_or_path: hub id, or a local directory with a config (and processor).
        from_scratch: ``True`` initialises random weights from the config; ``False`` loads
            pretrained weights; ``None`` (default) loads weights if the local directory has
            any, else initialises from the config (hub ids always load weights).
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay, not applied to biases, norms and embeddings.
        warmup_ratio: fraction of all optimizer steps spent warming up linearly; a cosine
            decay to ``min_lr_ratio * learning_rate`` follows. Sized from
            ``trainer.estimated_stepping_batches``.
        min_lr_ratio: where the cosine ends, as a fraction of the peak.
        freeze_vision_tower: keep the vision encoder's weights fixed.
        gradient_checkpointing: recompute activations in backward to save memory.
        processor: processor path for :meth:`generate_answer`; defaults to
            ``model_name_or_path``.
        system_prompt: system turn used by :meth:`generate_answer`; use the same as the
            training transform's.
        processor_kwargs: extra ``AutoProcessor.from_pretrained`` arguments for
            :meth:`generate_answer`; use the same as the training transform's.
        attn_implementation: passed to ``transformers`` (``"sdpa"``, ``"eager"``, ...).

    Logged: ``train/loss`` every step; ``val/loss`` (mean over answer tokens),
    ``val/ppl`` and ``val/answer_acc`` (next-token accuracy on answer tokens) per
    validation epoch, reduced across ranks by torchmetrics.

    Example (YAML)::

        model:
          class_path: lightning_stream.vlm.VisionLanguageModel
          init_args: {model_name_or_path: data/shapes/model, learning_rate: 1.0e-3}
    """

    def __init__(
        self,
        model_name_or_path: str,
        from_scratch: bool | None = None,
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.0,
        freeze_vision_tower: bool = False,
        gradient_checkpointing: bool = False,
        processor: str | None = None,
        system_prompt: str | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.save_hyperparameters()
        self.model: Any = None
        self._lazy = LazyProcessor(processor or model_name_or_path, processor_kwargs)
        self._forward_keys: set[str] | None = None
        self.val_loss = MeanMetric()
        self.val_answer_acc = MeanMetric()

    # ---------------------------------------------------------------- model
    def configure_model(self) -> None:
        """Build the HF model once; later calls (fit after fit, FSDP) are no-ops."""
        if self.model is not None:
            return
        from transformers import AutoConfig, AutoModelForImageTextToText

        hp = self.hparams
        path = hp.model_name_or_path
        kwargs: dict[str, Any] = {}
        if hp.attn_implementation:
            kwargs["attn_implementation"] = hp.attn_implementation
        try:
            if self._random_init():
                log.info("initialising %s from its config (random weights)", path)
                config = AutoConfig.from_pretrained(path)
                model = AutoModelForImageTextToText.from_config(config, **kwargs)
            else:
                log.info("loading pretrained weights from %s", path)
                model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        except Exception as err:
            raise ModelLoadError.of(path, err) from err
        merge_images_in_embedding_dtype(model)  # bf16-mixed: see _compat
        model.config.use_cache = False  # a KV cache only costs memory when training
        if hp.freeze_vision_tower:
            _vision_tower(model).requires_grad_(False)
        if hp.gradient_checkpointing:
            _enable_checkpointing(model)
        self.model = model

    def _random_init(self) -> bool:
        hp = self.hparams
        if hp.from_scratch is not None:
            return bool(hp.from_scratch)
        path = hp.model_name_or_path
        if not os.path.isdir(path):
            return False  # a hub id: fine-tune its weights
        has_weights = any(os.path.isfile(os.path.join(path, f)) for f in _WEIGHT_FILES)
        if not has_weights:
            log.warning("no weights in %s: initialising from the config", path)
        return not has_weights

    def _inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch entries the model's forward accepts (labels excluded: we do the loss).

        A packed batch (``VLMCollator(pack=True)``) also passes its FlashAttention varlen
        arguments, which the forward takes through ``**kwargs``, and gets mRoPE positions
        from the model itself (see :mod:`~lightning_stream.vlm.packing`).
        """
        model = fsdp_unwrapped(self.model)  # FSDP's wrapper hides the signature behind (*args, **kwargs)
        if self._forward_keys is None:
            params = inspect.signature(model.forward).parameters.values()
            self._forward_keys = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        keys = self._forward_keys or batch.keys()  # no signature to go by: trust the collator
        inputs = {k: v for k, v in batch.items() if k in keys and k != "labels"}
        if packed_rows(batch) is not None:
            inputs = packed_model_inputs(model, batch, inputs)
        return inputs

    def forward(self, **inputs: torch.Tensor) -> Any:
        return self.model(**inputs)

    # ---------------------------------------------------------------- steps
    def _answer_logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at positions that predict an answer token, and those tokens.

        Only those positions go through the LM head when the model supports
        ``logits_to_keep``: with a 50k vocabulary the full logits would dominate memory.
        """
        labels = batch["labels"]
        targets = labels[:, 1:]
        inputs = {**self._inputs(batch), "use_cache": False}
        columns = (targets != IGNORE_INDEX).any(dim=0).nonzero().flatten()
        if "logits_to_keep" in self._forward_keys and len(columns):
            logits = self.model(**inputs, logits_to_keep=columns).logits
            targets = targets[:, columns]
        else:
            logits = self.model(**inputs).logits[:, :-1]
        mask = targets != IGNORE_INDEX
        return logits[mask].float(), targets[mask]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if isinstance(batch, EmptyBatch):  # a filter removed every row of this step
            return empty_step_loss(self)
        logits, targets = self._answer_logits(batch)
        if targets.numel() == 0:
            self._no_supervised_tokens(batch)
        # The sum over zero tokens keeps the graph (and DDP's gradient sync) intact for a
        # later batch whose answers were all truncated away.
        loss = F.cross_entropy(logits, targets, reduction="sum") / max(1, targets.numel())
        if attached_trainer(self) is not None:  # also callable by hand, e.g. in a notebook
            # A packed batch is one sequence of several rows: count the rows.
            rows = packed_rows(batch) or batch["input_ids"].shape[0]
            self.log("train/loss", loss, prog_bar=True, batch_size=rows)
        return loss

    def _no_supervised_tokens(self, batch: dict[str, torch.Tensor]) -> None:
        """A first batch with nothing to learn is a data bug, not bad luck: say so, loudly."""
        self._empty_batches = getattr(self, "_empty_batches", 0) + 1
        first = attached_trainer(self) is None or self.trainer.global_step == 0
        if first:
            raise ValueError(
                "no supervised token in the batch: every label is -100, so the loss would be "
                "0.0 and nothing would train. Likely causes: the rows' labels do not come "
                "from VLMTransform (a processor's own labels, e.g. PaliGemma's without "
                "`suffix`, are all -100), max_length cuts every answer away (the images "
                "alone fill it), or the answers are empty"
            )
        log.warning("batch without supervised tokens skipped (%d so far)", self._empty_batches)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits, targets = self._answer_logits(batch)
        count = targets.numel()
        if count == 0:
            return
        loss = F.cross_entropy(logits, targets)
        correct = (logits.argmax(dim=-1) == targets).float().mean()
        # Weighted by answer tokens, so the epoch value is the per-token mean over the
        # whole validation set, not a mean of batch means.
        self.val_loss.update(loss.detach(), weight=count)
        self.val_answer_acc.update(correct, weight=count)

    def on_validation_epoch_end(self) -> None:
        # compute() all-reduces the metric states, so every rank holds the global values;
        # it must run on every rank, even one that saw no answer tokens, or DDP would hang.
        loss = self.val_loss.compute()
        acc = self.val_answer_acc.compute()
        # reset() clones fresh states; under inference mode (Trainer.validate) they would be
        # inference tensors, which a later fit's validation may not update in place.
        with torch.inference_mode(False):
            self.val_loss.reset()
            self.val_answer_acc.reset()
        # The values are equal on all ranks already; sync_dist=True averages equal numbers,
        # which costs one tiny all-reduce and keeps Lightning's epoch-level check quiet.
        self.log_dict(
            {"val/loss": loss, "val/ppl": torch.exp(loss), "val/answer_acc": acc},
            prog_bar=True,
            sync_dist=True,
        )

    # ---------------------------------------------------------------- optim
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            if param.ndim < 2 or "embed" in name or "norm" in name:
                no_decay.append(param)
            else:
                decay.append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": hp.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=hp.learning_rate,
        )
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            log.warning("unknown number of steps: constant learning rate, no warmup")
            return optimizer
        total = max(1, int(total))
        warmup = int(hp.warmup_ratio * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- predict
    @torch.no_grad()
    def generate_answer(self, image: Any, question: str, max_new_tokens: int = 32) -> str:
        """Greedy answer to ``question`` about ``image`` (a path, PIL image, bytes, ...).

        Example:
            >>> model.generate_answer("shape.png", "What shape is it?")  # doctest: +SKIP
            'circle'
        """
        self.configure_model()
        proc = self._lazy.processor
        tokenizer = self._lazy.tokenizer
        prompt = render_prompt(proc, question, None, self.hparams.system_prompt)
        inputs = proc(images=[load_image(image)], text=prompt, add_special_tokens=False, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        inputs = {k: v.to(self.device, dtype=dtype if v.is_floating_point() else None) for k, v in inputs.items()}
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        finally:
            self.model.train(was_training)
        new_tokens = out[0, inputs["input_ids"].shape[1] :]
        return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def _enable_checkpointing(model: Any) -> None:
    # Non-reentrant: works with frozen inputs (a frozen vision tower) and under FSDP.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _vision_tower(model: Any) -> torch.nn.Module:
    for dotted in _VISION_TOWERS:
        module: Any = model
        for part in dotted.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, torch.nn.Module):
            return module
    children = [name for name, _ in model.named_children()]
    raise ValueError(
        f"cannot find the vision tower of {type(model).__name__} (tried {_VISION_TOWERS}); its children are {children}"
    )
