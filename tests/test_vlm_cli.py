"""The VLM example configs drive the real ``lightning-stream`` CLI and streaming data module."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("lightning_stream.cli")

from lightning_stream.cli import StreamingCLI  # noqa: E402
from lightning_stream.vlm.data import render_shape  # noqa: E402
from lightning_stream.vlm.predict import main as predict_main  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "vlm")


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch) -> None:
    # LightningCLI warns when pytest's own arguments sit in sys.argv next to `args=`.
    monkeypatch.setattr("sys.argv", ["lightning-stream"])


def test_tiny_yaml_fits_resumes_and_predicts(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # the config's paths are relative: data/shapes, runs/vlm-tiny
    config = os.path.join(EXAMPLES, "tiny.yaml")
    small = [
        "--config",
        config,
        "--data.prepare.init_args.num_rows=24",
        "--data.prepare.init_args.val_rows=8",
        "--data.prepare.init_args.num_shards=2",
        "--data.prepare.init_args.image_size=32",
        "--data.num_workers=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    StreamingCLI(args=["fit", *small, "--trainer.max_epochs=1"])
    last = tmp_path / "runs" / "vlm-tiny" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    # Resume from the checkpoint for one more epoch: the data module's state loads back.
    StreamingCLI(args=["fit", *small, "--trainer.max_epochs=2", f"--ckpt_path={last}"])

    render_shape("circle", "red", "large", "left", 32).save(tmp_path / "shape.png")
    capsys.readouterr()
    predict_main(
        [
            "--ckpt",
            str(last),
            "--image",
            str(tmp_path / "shape.png"),
            "--question",
            "What color is the shape?",
            "--max-new-tokens",
            "2",
        ]
    )
    # Two epochs of 3 steps teach nothing; this checks the command runs end to end.
    assert capsys.readouterr().out.endswith("\n")


def test_conversation_yaml_fits(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    StreamingCLI(
        args=[
            "fit",
            "--config",
            os.path.join(EXAMPLES, "conversation.yaml"),
            "--data.prepare.init_args.num_rows=16",
            "--data.prepare.init_args.val_rows=8",
            "--data.prepare.init_args.num_shards=1",
            "--data.prepare.init_args.image_size=32",
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    assert (tmp_path / "runs" / "vlm-chat" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(
    "name", ["tiny.yaml", "gpu.yaml", "hub.yaml", "hub-qwen2vl.yaml", "conversation.yaml", "packed.yaml"]
)
def test_example_configs_validate(name: str, capsys) -> None:
    # --print_config parses and type-checks the whole config without building anything.
    with pytest.raises(SystemExit) as info:
        StreamingCLI(args=["fit", "--config", os.path.join(EXAMPLES, name), "--print_config"])
    assert info.value.code in (0, None)
    assert "lightning_stream.vlm.VisionLanguageModel" in capsys.readouterr().out
