"""The job's `eval` section (framework.job.evaluation): built from YAML and overrides, checked before training,
and the old evaluation flags of the recipes as deprecated aliases of --eval.* (framework.launch.recipe_cli)."""

import pytest
import yaml

from framework.config import ConfigError, apply_overrides, from_dict
from framework.job import BaseCompareEval, EvalConfig, PasskeyEval, TrainJob, tiny_qwen3
from framework.launch import recipe_cli


def _job(**sections) -> TrainJob:
    return from_dict(TrainJob, sections)


def test_no_evaluation_by_default():
    assert TrainJob().eval.tasks == []


def test_passkey_evaluation_from_yaml_validates():
    cfg = _job(**yaml.safe_load("""
data: {seq_len: 256}
eval:
  tasks: [passkey]
  out_dir: outputs/eval/x
  passkey: {multiples: [2, 3], depths: [0, 1], trials: 2}
"""))
    assert cfg.eval.tasks == ["passkey"] and cfg.eval.passkey.depths == [0.0, 1.0]
    assert cfg.eval.passkey.resolved_lengths(cfg.data.seq_len) == [512, 768]
    cfg.eval.check_job(cfg)  # nothing to complain about


def test_eval_overrides_take_comma_lists_and_json():
    cfg = apply_overrides(TrainJob(), ["--eval.tasks", "passkey,perplexity", "--eval.passkey.lengths=[8192, 16384]",
                                       "--eval.passkey.depths", "0,0.5,1", "--eval.perplexity.docs", "2"])
    assert cfg.eval.tasks == ["passkey", "perplexity"]
    assert cfg.eval.passkey.lengths == [8192, 16384] and cfg.eval.passkey.depths == [0.0, 0.5, 1.0]
    assert cfg.eval.perplexity_lengths(cfg.data.seq_len) == [8192, 16384]  # empty: the passkey lengths
    assert apply_overrides(cfg, ["--eval.tasks", "[]"]).eval.tasks == []


@pytest.mark.parametrize("overrides, field", [
    (["--eval.tasks", "paskey"], "eval.tasks"),
    (["--eval.passkey.depths", "0,1.5"], "eval.passkey.depths"),
    (["--eval.passkey.multiples", "32,abc"], "eval.passkey.multiples"),
    (["--eval.passkey.trials", "0"], "eval.passkey.trials"),
    (["--eval.passkey.filler", "lorem"], "eval.passkey.filler"),
    (["--eval.perplexity.docs", "0"], "eval.perplexity.docs"),
    (["--eval.perplexity.lengths", "8"], "eval.perplexity.lengths"),
    (["--eval.base.max_len", "1"], "eval.base.max_len"),
])
def test_bad_eval_settings_name_the_field_and_the_fix(overrides, field):
    with pytest.raises(ConfigError) as err:
        apply_overrides(TrainJob(), overrides)
    assert field in str(err.value) and "Fix" in str(err.value)


def test_unknown_task_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean 'passkey'"):
        EvalConfig(tasks=["paskey"])


def test_job_level_rules_need_the_rest_of_the_job():
    cfg = _job(data={"seq_len": 16}, eval={"tasks": ["passkey"], "passkey": {"multiples": [1, 8]}})
    with pytest.raises(ConfigError, match=r"eval\.passkey\.multiples.*Fix"):
        cfg.eval.check_job(cfg)
    cfg = TrainJob(model=tiny_qwen3(), eval=EvalConfig(tasks=["passkey"], base=BaseCompareEval(enabled=True)))
    with pytest.raises(ConfigError, match=r"eval\.base\.enabled.*random.*Fix"):
        cfg.eval.check_job(cfg)
    assert PasskeyEval(lengths=[100], multiples=[]).resolved_lengths(256) == [100]


def test_bad_eval_settings_fail_before_training(capsys, monkeypatch):
    def never(*_a, **_k):
        raise AssertionError("training started")

    monkeypatch.setattr("framework.launch.run.run_job", never)
    presets = {"p": lambda: _job(data={"seq_len": 16}, eval={"tasks": ["passkey"]})}
    with pytest.raises(SystemExit) as exit_:
        recipe_cli.main(presets, "p", "test", argv=["--eval.passkey.multiples", "1,2"])
    assert exit_.value.code == 2
    assert "eval.passkey.multiples" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        recipe_cli.main(presets, "p", "test", argv=["--eval.passkey.depths", "2"])
    assert exit_.value.code == 2 and "eval.passkey.depths" in capsys.readouterr().err


def test_old_evaluation_flags_are_aliases_with_a_deprecation_line(capsys):
    argv = recipe_cli.translate_aliases(["--eval-trials", "2", "--eval-depths=0,1", "--no-base", "--max-steps", "3",
                                         "--no-eval"], recipe_cli.EVAL_FLAG_ALIASES)
    assert argv == ["--eval.passkey.trials", "2", "--eval.passkey.depths", "0,1", "--eval.base.enabled", "false",
                    "--max-steps", "3", "--eval.tasks", "[]"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "deprecated" in err and "--eval-trials" in err and "--eval.passkey.trials" in err
    # a recipe that still defines one of them itself keeps its own flag
    assert recipe_cli.translate_aliases(["--eval-lengths", "512"], recipe_cli.EVAL_FLAG_ALIASES,
                                        own=["--eval-lengths"]) == ["--eval-lengths", "512"]


def test_help_config_lists_the_eval_section(capsys):
    assert recipe_cli.main({"p": TrainJob}, "p", "test", argv=["--help-config", "--eval.tasks", "passkey"]) == 0
    out = capsys.readouterr().out
    assert '--eval.tasks ["passkey"]' in out and "--eval.passkey.depths [0.0, 0.25, 0.5, 0.75, 1.0]" in out


def test_a_yaml_config_sets_part_of_a_nested_eval_section(tmp_path, capsys):
    def preset():
        return TrainJob(eval=EvalConfig(tasks=["passkey"], passkey=PasskeyEval(lengths=[8192], trials=1)))
    path = tmp_path / "job.yaml"
    path.write_text("eval:\n  passkey:\n    trials: 3\n    depths: [0, 1]\n")
    assert recipe_cli.main({"p": preset}, "p", "test", argv=["--config", str(path), "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "--eval.passkey.trials 3 " in out and "--eval.passkey.lengths [8192] " in out  # the preset's, kept
    assert '--eval.tasks ["passkey"]' in out and "--eval.passkey.depths [0.0, 1.0]" in out


def test_eval_settings_do_not_block_a_resume():
    from framework.tracking.resume import config_changes

    assert config_changes({"eval.passkey.trials": "20", "data.seq_len": "256"},
                          {"eval.passkey.trials": "5", "data.seq_len": "256"}) == {}
