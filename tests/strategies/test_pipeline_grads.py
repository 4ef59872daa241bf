"""The pipelined forward/backward over real gloo processes equals one process, to 1e-5 in fp32."""

import pipeline_grad_worker
from pipeline_harness import spawn


def test_pipeline_two_ranks_match_one_process():
    # each rank asserts loss and every gradient against a single-process run (pipeline_grad_worker._compare)
    assert spawn(pipeline_grad_worker.two_ranks, 2) == [0, 0]


def test_pipeline_four_ranks_and_2x2_mesh_match_one_process():
    assert spawn(pipeline_grad_worker.four_ranks, 4) == [0, 0, 0, 0]
