"""The VLM fit resumes mid-epoch on exactly the batches the uninterrupted fit trained on."""

import os

import pytest

from lightning_stream import Source, StreamingDataModule
from lightning_stream.testing import assert_resume_equivalent
from lightning_stream.vlm import ShapesData, VisionLanguageModel, VLMCollator, VLMTransform


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shapes"))
    ShapesData(out, num_rows=60, val_rows=8, image_size=32, num_shards=3)()
    return out


def test_vlm_fit_resumes_exactly(tmp_path, shapes):
    model = os.path.join(shapes, "model")

    def make_dm():
        return StreamingDataModule(
            train=Source(path="parquet", data_files=os.path.join(shapes, "train-*.parquet")),
            transform=VLMTransform(model, max_length=64),
            collate_fn=VLMCollator(model),
            batch_size=4,
            num_workers=2,
            buffer_size=32,
        )

    # 60 rows / 4 = 15 steps per epoch; the crash comes at step 20, mid epoch 1.
    report = assert_resume_equivalent(
        make_dm,
        make_model=lambda: VisionLanguageModel(model, learning_rate=1e-3),
        stop_at_step=20,
        tmp_path=str(tmp_path),
        max_epochs=2,
        precision="bf16-mixed",
    )
    assert len(report.uninterrupted) == 30 and len(report.after_resume) == 10
