"""A resume on another world size or accumulation keeps the run's schedule, counted in samples."""

import torch

from framework.job import DataConfig, OptimConfig
from framework.launch.data import attempt_plan
from framework.methods.optim import SampleSchedule, lr_scheduler, warmup_cosine


def _manifest(step, samples, global_batch, schedule=None, world=2):
    return {"step": step, "data": {"samples_consumed": samples, "global_batch": global_batch, "seed": 0},
            "world_size": world, "schedule": schedule}


def test_a_fresh_start_plans_the_epochs_in_steps_of_its_global_batch():
    plan = attempt_plan(DataConfig(epochs=2), None, num_samples=10, global_batch=4, manifest=None)
    assert (plan.plan_steps, plan.plan_batch, plan.max_steps) == (5, 4, 5)
    assert not plan.batch_changed and plan.lr_steps() == 5


def test_the_same_world_size_resumes_to_the_same_last_step():
    plan = attempt_plan(DataConfig(epochs=1), None, 16, 2, _manifest(3, 6, 2, {"plan_steps": 8, "plan_batch": 2}))
    assert (plan.start_step, plan.max_steps, plan.lr_steps()) == (3, 8, 8)


def test_two_workers_to_one_trains_the_remaining_samples_in_more_steps():
    # 16 samples, one epoch: 8 steps of 2; the checkpoint at step 3 consumed 6, so 10 are left at 1 a step
    plan = attempt_plan(DataConfig(epochs=1), None, 16, 1, _manifest(3, 6, 2, {"plan_steps": 8, "plan_batch": 2}))
    assert (plan.plan_steps, plan.plan_batch, plan.max_steps) == (8, 2, 13)
    assert plan.batch_changed
    sched = plan.lr_steps()
    assert isinstance(sched, SampleSchedule)
    assert sched.position(3) == 3.0 and sched.position(13) == 8.0 and sched.position(4) == 3.5


def test_max_steps_counts_steps_of_the_first_global_batch():
    # launch.max_steps=10 planned with 4 samples a step (40 samples); at step 5 (20 samples) accumulation
    # is turned on for a global batch of 8: 20 samples are left, 3 steps (the last one partly past the plan)
    plan = attempt_plan(DataConfig(), 10, None, 8, _manifest(5, 20, 4, {"plan_steps": 10, "plan_batch": 4}))
    assert (plan.plan_steps, plan.max_steps) == (10, 8)


def test_a_manifest_without_a_schedule_plans_with_its_own_global_batch():
    plan = attempt_plan(DataConfig(epochs=1), None, 16, 4, _manifest(2, 4, 2, None))
    assert (plan.plan_batch, plan.plan_steps, plan.max_steps) == (2, 8, 5)


def test_the_lr_after_a_change_of_global_batch_follows_the_samples_consumed():
    cfg = OptimConfig(lr=1.0, warmup_steps=2, min_lr_ratio=0.0)
    param = torch.nn.Parameter(torch.zeros(2, 2))
    schedule = SampleSchedule(plan_steps=8, plan_batch=2, start_step=3, start_samples=6, step_batch=1)
    opt = torch.optim.SGD([param], lr=cfg.lr)
    sched = lr_scheduler(opt, cfg, schedule)
    lrs = {}
    for step in range(14):
        lrs[step] = sched.lr_lambdas[0](step)
    # at step 5 of the resumed attempt 8 samples were consumed: step 4 of the plan
    assert lrs[5] == warmup_cosine(4, 2, 8, 0.0)
    assert lrs[13] == warmup_cosine(8, 2, 8, 0.0) == 0.0
    # unchanged batch: the int schedule and the sample schedule agree at every step
    same = SampleSchedule(plan_steps=8, plan_batch=2)
    assert all(warmup_cosine(same.position(s), 2, 8, 0.0) == warmup_cosine(s, 2, 8, 0.0) for s in range(10))
