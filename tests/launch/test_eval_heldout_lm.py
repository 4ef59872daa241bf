"""The `heldout_lm` task of the job's `eval` section (framework.job.evaluation.HeldoutLMEval): validated when the
config is built and before training, and recipes/comet_smollm2_lm.py's old evaluation flags as its aliases."""

import runpy
from pathlib import Path

import pytest

from framework.config import ConfigError, apply_overrides
from framework.job import BaseCompareEval, DataConfig, EvalConfig, HeldoutLMEval, TrainJob, tiny_qwen3
from framework.launch import recipe_cli
from framework.methods.comet import CoMeTJob

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "comet_smollm2_lm.py"


def test_heldout_lm_is_a_task_with_its_defaults():
    cfg = apply_overrides(CoMeTJob(), ["--eval.tasks", "heldout_lm", "--eval.heldout_lm.lengths", "512,1024",
                                       "--eval.heldout_lm.docs", "2"])
    assert cfg.eval.tasks == ["heldout_lm"]
    assert cfg.eval.heldout_lm == HeldoutLMEval(lengths=[512, 1024], docs=2, fraction=0.2)
    assert HeldoutLMEval().lengths == [8192, 16384]


@pytest.mark.parametrize("overrides, field", [
    (["--eval.heldout_lm.lengths", "512,8"], "eval.heldout_lm.lengths"),
    (["--eval.heldout_lm.lengths", "[]"], "eval.heldout_lm.lengths"),
    (["--eval.heldout_lm.lengths", "512,abc"], "eval.heldout_lm.lengths"),
    (["--eval.heldout_lm.docs", "0"], "eval.heldout_lm.docs"),
    (["--eval.heldout_lm.fraction", "0"], "eval.heldout_lm.fraction"),
    (["--eval.heldout_lm.fraction", "1"], "eval.heldout_lm.fraction"),
    (["--eval.heldout_lm.fraction", "-0.2"], "eval.heldout_lm.fraction"),
    (["--eval.tasks", "heldout"], "eval.tasks"),
])
def test_bad_heldout_lm_settings_name_the_field_and_the_fix(overrides, field):
    with pytest.raises(ConfigError) as err:
        apply_overrides(TrainJob(), overrides)
    assert field in str(err.value) and "Fix" in str(err.value)
    if field != "eval.tasks":
        assert f"--{field}" in str(err.value)  # the fix is the flag to pass


def test_unknown_task_suggests_heldout_lm():
    with pytest.raises(ConfigError, match="did you mean 'heldout_lm'"):
        EvalConfig(tasks=["heldout_ln"])


def test_a_random_base_is_compared_through_the_models_own_backbone():
    job = CoMeTJob(model=tiny_qwen3(), eval=EvalConfig(tasks=["heldout_lm"], base=BaseCompareEval(enabled=True)))
    job.eval.check_job(job)  # heldout_lm compares with the CoMeT model's backbone: a random base is fine
    job.eval.tasks = ["heldout_lm", "perplexity"]  # perplexity loads model.base itself
    with pytest.raises(ConfigError, match=r"eval\.base\.enabled.*random.*perplexity.*Fix"):
        job.eval.check_job(job)


def test_the_held_out_tail_must_not_reach_into_the_training_split():
    job = CoMeTJob(data=DataConfig(kind="text", options={"validation_fraction": 0.1}),
                   eval=EvalConfig(tasks=["heldout_lm"], heldout_lm=HeldoutLMEval(fraction=0.2)))
    with pytest.raises(ConfigError, match=r"eval\.heldout_lm\.fraction=0\.2.*validation_fraction=0\.1.*"
                                          r"Fix: --eval\.heldout_lm\.fraction 0\.1"):
        job.eval.check_job(job)
    job.eval.heldout_lm.fraction = 0.1
    job.eval.check_job(job)


def test_heldout_lm_needs_a_comet_job():
    from framework.eval.after_training import check_evaluation

    check_evaluation(CoMeTJob(eval=EvalConfig(tasks=["heldout_lm"])))
    with pytest.raises(ConfigError, match=r"heldout_lm.*CoMeT.*Fix"):
        check_evaluation(TrainJob(eval=EvalConfig(tasks=["heldout_lm"])))


def _recipe():
    return runpy.run_path(str(RECIPE))  # the module's top level: the presets and the aliases


def test_the_lm_recipe_evaluates_from_its_eval_section():
    recipe = _recipe()
    for name, preset in recipe["PRESETS"].items():
        ev = preset().eval
        assert ev.tasks == ["heldout_lm"] and ev.base.enabled, name
        assert ev.out_dir == "outputs/eval/comet_smollm2_lm" and ev.summary_file == "smollm2_lm.json"
        assert ev.heldout_lm.fraction == preset().data.options["validation_fraction"]
    assert recipe["PRESETS"]["tiny"]().eval.heldout_lm.lengths == [512, 1024]
    assert not {"add_eval_flags", "check_flags", "held_out_documents", "evaluate"} & set(recipe)


def test_the_lm_recipes_old_flags_are_aliases_of_its_eval_section(capsys, monkeypatch):
    def never(*_a, **_k):
        raise AssertionError("training started")

    monkeypatch.setattr("framework.launch.run.run_job", never)
    recipe = _recipe()
    argv = ["--preset", "tiny", "--help-config", "--eval-lengths", "600,1200", "--eval-docs=2", "--eval-out", "/x",
            "--no-eval"]
    assert recipe_cli.main(recipe["PRESETS"], "tiny", "test", argv=argv, eval_aliases=recipe["EVAL_ALIASES"]) == 0
    captured = capsys.readouterr()
    assert "--eval.heldout_lm.lengths [600, 1200] " in captured.out and "--eval.heldout_lm.docs 2 " in captured.out
    assert '--eval.out_dir "/x"' in captured.out and "--eval.tasks [] " in captured.out
    assert "--eval.passkey.lengths [] " in captured.out  # the shared alias of --eval-lengths is overridden
    assert captured.err.count("deprecated") == 1 and "--eval.heldout_lm.lengths" in captured.err


def test_help_config_lists_the_heldout_lm_keys(capsys):
    recipe = _recipe()
    assert recipe_cli.main(recipe["PRESETS"], "cpu", "test", argv=["--help-config"],
                           eval_aliases=recipe["EVAL_ALIASES"]) == 0
    out = capsys.readouterr().out
    for line in ('--eval.tasks ["heldout_lm"]', "--eval.heldout_lm.lengths [8192, 16384]",
                 "--eval.heldout_lm.docs 1", "--eval.heldout_lm.fraction 0.2", "--eval.base.enabled true"):
        assert line in out
