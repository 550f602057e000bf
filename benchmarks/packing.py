"""Padding vs packing: the same rows as fixed padded batches and as token-budget packed steps, in one run.

Workloads (rows built here, in a temp dir):
  vlm:  the varied shapes conversations (`VariedChatData`: 1-3 images of 16 tokens a row, 1-4
        exchanges, answers from one word to a sentence per image; 37-255 tokens a row) through
        `VLMTransform`, the tiny LLaVA-style VLM (LM width 128, 0.58M parameters; and 512, 6.1M);
        `length` is the stored `num_tokens` column (counted with the same processor when the data
        were written) and the row's image count (`TokensAndImages`), `max_images=24`.
  text: generated rows of lognormal token lengths (median ~100, 8-512), a 2-layer `LlamaForCausalLM`
        from a config (width 128 and 512); `length="input_ids"` (a list column: its items are counted).
Paths, over the same parquet rows and seed:
  padded: `batch_size=B` + a collator that pads to the longest row (`VLMCollator()`; for text a
          pad-to-longest collate with an attention mask);
  packed: `batch_tokens=B * mean row length` (so both hold about the same real tokens a step),
          `batch_size` as a cap only, + `VLMCollator(pack=True)` / `PackedCollator()`.
Per path, from one full epoch of the data module's train loader: pad share (tokens equal to the
pad id / all input tokens, counted in the batches), real tokens a step and their fill of the token
budget, steps per epoch; then the model step (forward + backward, no optimizer step) on the
epoch's first batches, tokens/s counted in real (non-pad) tokens, repeats interleaved, median.

    python benchmarks/packing.py [--quick] [--workloads vlm text] [--batch-size 8] [--steps 12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lightning_stream import PackedCollator, Source, StreamingDataModule  # noqa: E402
from lightning_stream.vlm import VisionLanguageModel, VLMCollator, VLMTransform, build_tiny_vlm  # noqa: E402
from lightning_stream.vlm.shapes_chat import TokensAndImages, VariedChatData  # noqa: E402

TEXT_PAD = 0
TEXT_VOCAB = 1024
MAX_LENGTH = 256  # the VLM transform's: no row of the varied data is cut


class PadCollator:
    """Text rows padded to the longest of the batch (pad id 0, labels -100 at the pads)."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), TEXT_PAD, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.as_tensor(r["input_ids"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


# ----------------------------------------------------------------------------------- data
def make_text(root: str, rows: int) -> str:
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(4.6, 0.6, rows), 8, 512).astype(np.int64)
    ids = [rng.integers(1, TEXT_VOCAB, n).tolist() for n in lengths]
    path = os.path.join(root, "text.parquet")
    pq.write_table(pa.table({"id": np.arange(rows), "input_ids": ids}), path, row_group_size=500)
    return path


def make_vlm(root: str, rows: int) -> tuple[str, str]:
    model_dir = os.path.join(root, "model")
    out = os.path.join(root, "varied")
    VariedChatData(out, model_dir, num_rows=rows, val_rows=0, max_length=MAX_LENGTH)()
    return os.path.join(out, "train-00000-of-00001.parquet"), model_dir


def row_lengths(path: str, column: str) -> np.ndarray:
    col = pq.read_table(path, columns=[column]).column(column)
    if pa.types.is_list(col.type):
        return np.asarray(pa.compute.list_value_length(col), dtype=np.int64)
    return np.asarray(col, dtype=np.int64)


# ----------------------------------------------------------------------------------- loaders
def epoch_stats(dm: StreamingDataModule, pad_id: int, keep: int, budget: int) -> dict[str, Any]:
    """One epoch of the train loader: pad share, real tokens a step, steps, rows; the first
    ``keep`` batches kept for the model step."""
    start = time.perf_counter()
    loader = dm.train_dataloader()  # with batch_tokens: measures every row's length, plans the epoch
    steps, rows, inputs, pads, real, shares, kept = 0, 0, 0, 0, [], [], []
    try:
        for batch in loader:
            ids = batch["input_ids"]
            n_pad = int((ids == pad_id).sum())
            cu = batch.get("cu_seq_lens_q")
            n_real = int(cu[-1]) if cu is not None else int(batch["attention_mask"].sum())
            steps += 1
            rows = rows + (len(cu) - 1 if cu is not None else ids.shape[0])
            inputs += ids.numel()
            pads += n_pad
            real.append(n_real)
            shares.append(n_pad / ids.numel())
            if len(kept) < keep:
                kept.append(batch)
        wall = time.perf_counter() - start
        assert steps == len(loader), (steps, len(loader))  # the planned length is the epoch's
    finally:
        loader.shutdown_workers()
    return {
        "steps": steps,
        "rows": rows,
        "pad_share": pads / inputs,
        "step_pad_share": float(np.mean(shares)),
        "real_per_step": float(np.mean(real)),
        "input_per_step": inputs / steps,
        "fill": float(np.mean(real)) / budget,
        "loader_s": wall,
        "batches": kept,
        "real": real,
    }


# ----------------------------------------------------------------------------------- model step
def vlm_step(module: VisionLanguageModel):
    def step(batch: dict[str, Any]) -> None:
        loss = module.training_step(batch, 0)
        loss.backward()
        module.model.zero_grad(set_to_none=True)

    return step


def text_model(hidden: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=TEXT_VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        pad_token_id=TEXT_PAD,
    )
    return LlamaForCausalLM(config)


def text_step(model):
    def step(batch: dict[str, Any]) -> None:
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def params(model: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"


def tokens_per_s(step, batches: list[dict[str, Any]], real: list[int], warmup: int) -> float:
    for batch in batches[:warmup]:
        step(batch)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    return sum(real[warmup : len(batches)]) / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------- run
def run(name: str, a: argparse.Namespace, root: str) -> dict[str, dict[str, Any]]:
    keep = a.warmup + a.steps
    common = dict(buffer_size=a.buffer_size, seed=0, num_workers=a.workers, shuffle=True)
    if name == "vlm":
        path, model_dir = make_vlm(root, a.vlm_rows)
        lengths = row_lengths(path, "num_tokens")
        budget = int(round(a.batch_size * lengths.mean() / 8)) * 8
        transform = VLMTransform(model_dir, max_length=MAX_LENGTH)
        pad_id = VLMCollator(model_dir)._pad_id()
        padded = StreamingDataModule(
            train=Source(path="parquet", data_files=path),
            transform=transform,
            collate_fn=VLMCollator(model_dir),
            batch_size=a.batch_size,
            **common,
        )
        packed = StreamingDataModule(
            train=Source(path="parquet", data_files=path),
            transform=transform,
            collate_fn=VLMCollator(model_dir, pack=True),
            batch_tokens=budget,
            length=TokensAndImages(),
            max_images=3 * a.batch_size,
            batch_size=8 * a.batch_size,
            **common,
        )
        models = {}
        for hidden in a.vlm_widths:  # the same processor (tokenizer, 16 tokens an image), a wider language model
            where = build_tiny_vlm(os.path.join(root, f"model-{hidden}"), image_size=64, hidden_size=hidden)
            torch.manual_seed(0)
            module = VisionLanguageModel(where)
            module.configure_model()
            models[f"VLM d={hidden}, {params(module.model)}"] = vlm_step(module)
    else:
        path = make_text(root, a.text_rows)
        lengths = row_lengths(path, "input_ids")
        budget = int(round(a.batch_size * lengths.mean() / 8)) * 8
        pad_id = TEXT_PAD
        padded = StreamingDataModule(
            train=Source(path="parquet", data_files=path), collate_fn=PadCollator(), batch_size=a.batch_size, **common
        )
        packed = StreamingDataModule(
            train=Source(path="parquet", data_files=path),
            collate_fn=PackedCollator(),
            batch_tokens=budget,
            length="input_ids",
            batch_size=8 * a.batch_size,
            **common,
        )
        models = {}
        for hidden in a.text_widths:
            torch.manual_seed(0)
            model = text_model(hidden)
            models[f"Llama d={hidden}, {params(model)}"] = text_step(model)
    out = {"padded": epoch_stats(padded, pad_id, keep, budget), "packed": epoch_stats(packed, pad_id, keep, budget)}
    for label, step in models.items():
        rates: dict[str, list[float]] = {"padded": [], "packed": []}
        for _ in range(a.repeats):  # interleaved: a busy moment of the shared machine hits both paths
            for path_name, stats in out.items():
                rates[path_name].append(tokens_per_s(step, stats["batches"], stats["real"], a.warmup))
        for path_name, stats in out.items():
            stats.setdefault("tokens_s", {})[label] = statistics.median(rates[path_name])
    for stats in out.values():
        stats["rows_total"] = len(lengths)
        stats["total_tokens"] = int(lengths.sum())
        stats["mean_len"] = float(lengths.mean())
        stats["budget"] = budget
    return out


def report(name: str, res: dict[str, dict[str, Any]], batch_size: int) -> None:
    pad, pk = res["padded"], res["packed"]
    print(
        f"\n{name}: {pad['rows_total']} rows, mean {pad['mean_len']:.1f} tokens a row; "
        f"padded batch_size={batch_size}, packed batch_tokens={pk['budget']}"
    )
    models = list(pad["tokens_s"])
    print(
        "| path | pad share | pad share per step (mean) | real tokens / step | input tokens / step | fill of batch_tokens "
        "| steps / epoch | rows / epoch | loader epoch (s) | " + " | ".join(f"tokens/s, {m}" for m in models) + " |"
    )
    print("|---" * (9 + len(models)) + "|")
    for label, s in (("padded", pad), ("packed", pk)):
        print(
            f"| {label} | {s['pad_share']:.1%} | {s['step_pad_share']:.1%} | {s['real_per_step']:.0f} "
            f"| {s['input_per_step']:.0f} | {s['fill']:.1%} | {s['steps']} | {s['rows']} | {s['loader_s']:.1f} | "
            + " | ".join(f"{s['tokens_s'][m]:,.0f}" for m in models)
            + " |"
        )
    print(
        f"| packed / padded | {pk['pad_share'] / max(pad['pad_share'], 1e-12):.3f}x | "
        f"| {pk['real_per_step'] / pad['real_per_step']:.2f}x | {pk['input_per_step'] / pad['input_per_step']:.2f}x "
        f"| | {pk['steps'] / pad['steps']:.2f}x | | {pk['loader_s'] / pad['loader_s']:.2f}x | "
        + " | ".join(f"{pk['tokens_s'][m] / pad['tokens_s'][m]:.2f}x" for m in models)
        + " |"
    )
    least = -(-pk["total_tokens"] // pk["budget"])
    print(
        f"packed steps {pk['steps']} vs the least that can hold the epoch's {pk['total_tokens']:,} tokens, "
        f"{least} (the rest: each shuffle window's last, part-empty steps and the planner's margin)"
    )
    ok = pk["pad_share"] <= 0.05
    print(f"target: packed pad share <= 5%: {'met' if ok else 'NOT met'} ({pk['pad_share']:.2%})")
    sys.stdout.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rows, steps and repeats (~30 s)")
    p.add_argument("--workloads", nargs="+", default=["vlm", "text"], choices=["vlm", "text"])
    p.add_argument("--vlm-rows", type=int, default=1000)
    p.add_argument("--text-rows", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--buffer-size", type=int, default=500)
    p.add_argument("--steps", type=int, default=12, help="timed model steps per path and repeat")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="loader workers")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the model step")
    p.add_argument("--vlm-widths", type=int, nargs="+", default=[128, 512], help="hidden sizes of the VLMs' LM")
    p.add_argument("--text-widths", type=int, nargs="+", default=[128, 512], help="hidden sizes of the text models")
    a = p.parse_args()
    if a.quick:
        a.vlm_rows, a.text_rows, a.steps, a.repeats = 400, 1000, 8, 2
        a.vlm_widths, a.text_widths = [128], [128]
    torch.set_num_threads(a.threads)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    import datasets

    datasets.disable_progress_bars()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        for name in a.workloads:
            report(name, run(name, a, root), a.batch_size)
    print(f"\nwall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
