"""The pipelined forward/backward over real gloo processes equals one process, to 1e-5 in fp32."""

import pipeline_grad_worker
from pipeline_harness import spawn


def test_pipeline_two_ranks_match_one_process():
    spawn(pipeline_grad_worker.two_ranks, 2)


def test_pipeline_four_ranks_and_2x2_mesh_match_one_process():
    spawn(pipeline_grad_worker.four_ranks, 4)
