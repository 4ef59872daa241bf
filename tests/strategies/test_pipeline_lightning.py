"""LayerPipelineStrategy under a plain Lightning Trainer: 2 real gloo processes on CPU."""

import pipeline_lightning_worker
from pipeline_harness import spawn


def test_pipeline_trainer_matches_one_process_and_resumes(tmp_path):
    # each rank asserts its trained and resumed weights against one process (pipeline_lightning_worker.run)
    assert spawn(pipeline_lightning_worker.run, 2, str(tmp_path)) == [0, 0]
