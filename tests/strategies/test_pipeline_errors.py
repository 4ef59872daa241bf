"""Sizes the pipeline cannot run get a clear error before training (and before any communication)."""

import lightning.pytorch as pl
import pytest
import torch
from pipeline_harness import sequence, tiny_comet

from framework.strategies import LayerPipelineStrategy, PipelineConfigError, check_chunks, check_job, check_mesh
from framework.strategies.p2p import PeerLink
from framework.strategies.wavefront import pipeline_forward


def test_pipeline_mesh_must_fit_world_size():
    assert check_mesh(8, 2) == (2, 4)
    assert check_mesh(4, None) == (4, 1)
    with pytest.raises(PipelineConfigError, match=r"does not fit the world size.*pipeline_size in \[1, 2, 3, 6\]"):
        check_mesh(6, 4)
    with pytest.raises(PipelineConfigError, match="must be >= 1"):
        check_mesh(4, 0)


def test_pipeline_chunks_must_split_evenly():
    assert check_chunks(8, 4) == 2
    with pytest.raises(PipelineConfigError, match=r"5 chunks do not split evenly over 2 pipeline ranks.*multiple of 2"):
        check_chunks(5, 2, chunk_size=16)
    # 100 tokens in chunks of 16 are 7 chunks
    with pytest.raises(PipelineConfigError, match="7 chunks"):
        check_job(seq_len=100, chunk_size=16, world_size=4, pipeline_size=2)
    assert check_job(seq_len=128, chunk_size=16, world_size=4, pipeline_size=2) == (2, 2)


def test_pipeline_forward_rejects_uneven_chunks_before_communicating():
    model = tiny_comet()
    ids, labels = sequence(4 * 16)
    link = PeerLink(prev=None, next=None)  # any transfer would fail: nothing is connected
    with pytest.raises(PipelineConfigError, match="4 chunks do not split evenly over 3 pipeline ranks"):
        pipeline_forward(model, link, 0, 3, input_ids=ids, labels=labels)


def test_pipeline_single_rank_is_the_plain_model():
    model = tiny_comet().train()
    ids, labels = sequence(3 * 16)
    out = pipeline_forward(model, PeerLink(None, None), 0, 1, input_ids=ids, labels=labels)
    ref = model(input_ids=ids, labels=labels)
    assert torch.allclose(out.loss, ref.loss, atol=1e-6) and torch.allclose(out.logits, ref.logits, atol=1e-5)


def test_pipeline_strategy_rejects_bad_mesh_before_training(tmp_path):
    with pytest.raises(PipelineConfigError, match="schedule"):
        LayerPipelineStrategy(schedule="zigzag")
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy=LayerPipelineStrategy(pipeline_size=2),
                         logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.raises(PipelineConfigError, match="pipeline_size=2 does not divide 1 ranks"):
        trainer.strategy.setup_environment()
    assert not torch.distributed.is_initialized()
