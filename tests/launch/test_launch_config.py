"""Config composition: presets, dotted overrides, YAML, and the errors a user sees."""

import subprocess
import sys
from pathlib import Path

import pytest

from framework.config import ConfigError, apply_overrides, from_dict
from framework.launch.recipe_cli import split_overrides
from framework.methods.comet import CoMeTJob

ROOT = Path(__file__).resolve().parents[2]


def test_dotted_overrides_are_coerced_to_field_types():
    cfg = apply_overrides(CoMeTJob(), ["--data.seq_len", "4_096", "--launch.use_gpu=true", "--optim.lr", "1e-3",
                                        "--data.options", '{"digits": 7}', "--launch.max_steps", "none"])
    assert cfg.data.seq_len == 4096 and cfg.launch.use_gpu is True and cfg.optim.lr == 1e-3
    assert cfg.data.options == {"digits": 7} and cfg.launch.max_steps is None


@pytest.mark.parametrize("tokens, expected", [
    (["--data.seq_lenx", "5"], "unknown config field 'data.seq_lenx'"),
    (["--data.seq_len", "many"], "data.seq_len='many': expected int"),
    (["--launch.use_gpu", "maybe"], "expected bool"),
    (["--launch.strategy", "zero3"], "is not one of ('ddp', 'fsdp')"),
    (["--comet.temp_budget", "30"], "must be a multiple of temp_stride"),
    (["--optim.lr", "-1"], "optim.lr=-1.0 is out of range"),
    (["--data.seq_len"], "needs a value"),
])
def test_bad_overrides_name_the_field_and_the_fix(tokens, expected):
    with pytest.raises(ConfigError) as err:
        apply_overrides(CoMeTJob(), tokens)
    assert expected in str(err.value)
    assert "Fix" in str(err.value) or "fix" in str(err.value) or "must" in str(err.value)


def test_from_dict_rejects_unknown_sections():
    with pytest.raises(ConfigError, match="unknown field"):
        from_dict(CoMeTJob, {"optimiser": {}})


def test_split_overrides_keeps_flags_and_dotted_apart():
    flags, overrides = split_overrides(["--preset", "tiny", "--data.seq_len", "512", "--use-gpu", "--a.b=c"])
    assert flags == ["--preset", "tiny", "--use-gpu"]
    assert overrides == ["--data.seq_len", "512", "--a.b=c"]


def _recipe(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "comet_32k.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_recipe_help_config_lists_every_section(tmp_path):
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text("data:\n  seq_len: 1024\noptim:\n  lr: 0.01\n")
    out = _recipe("--preset", "tiny", "--config", str(yaml_file), "--num-workers", "3", "--help-config", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for line in ("--data.seq_len 1024", "--optim.lr 0.01", "--launch.num_workers 3", "--comet.chunk_size 64"):
        assert line in out.stdout


def test_old_method_section_still_works_with_a_deprecation_line(tmp_path):
    """Configs from before `method:` was renamed `optim:`: the YAML key and --method.<field> still set optim,
    and stderr says, in one line each, what to write now."""
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text("data:\n  seq_len: 1024\nmethod:\n  lr: 0.01\n")
    out = _recipe("--preset", "tiny", "--config", str(yaml_file), "--method.warmup_steps", "3",
                  "--method.grad_clip=2.0", "--help-config", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for line in ("--optim.lr 0.01", "--optim.warmup_steps 3", "--optim.grad_clip 2.0", "--data.seq_len 1024"):
        assert line in out.stdout
    assert "--method." not in out.stdout
    deprecations = [line for line in out.stderr.splitlines() if "deprecated" in line]
    assert len(deprecations) == 2, out.stderr
    assert "'method' is now 'optim'" in deprecations[0] and str(yaml_file) in deprecations[0]
    assert "--method.warmup_steps, --method.grad_clip" in deprecations[1]
    assert "Fix: use --optim.warmup_steps, --optim.grad_clip" in deprecations[1]


def test_old_method_key_in_dicts_and_overrides(capsys):
    from framework.launch.config import JobConfig

    assert JobConfig is CoMeTJob  # the old name, kept for old recipes
    cfg = from_dict(CoMeTJob, {"method": {"lr": 0.01}, "data": {"seq_len": 1024}})
    assert cfg.optim.lr == 0.01 and cfg.data.seq_len == 1024
    assert "config key 'method' is now 'optim'" in capsys.readouterr().err
    cfg = apply_overrides(cfg, ["--method.lr", "1e-4"])
    assert cfg.optim.lr == 1e-4
    assert "--method.lr: 'method' is now 'optim'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="optim.lr=-1.0 is out of range"):
        apply_overrides(cfg, ["--method.lr", "-1"])
    with pytest.raises(ConfigError, match="both 'method' and 'optim' are set"):
        from_dict(CoMeTJob, {"method": {"lr": 0.01}, "optim": {"lr": 0.02}})
    assert cfg.method is cfg.optim  # old recipes' cfg.method
    assert "cfg.optim" in capsys.readouterr().err


def test_old_method_key_of_a_nested_job():
    """A job inside a recipe's config (e.g. poc_predictor's compressor) is renamed at its own depth."""
    from framework.studies.poc import PoCRecipe

    cfg = apply_overrides(PoCRecipe(), ["--compressor.method.lr", "0.25"])
    assert cfg.compressor.optim.lr == 0.25
    assert from_dict(PoCRecipe, {"compressor": {"method": {"lr": 0.5}}}).compressor.optim.lr == 0.5


@pytest.mark.parametrize("args, expected", [
    (["--max-steps", "0"], "launch.max_steps=0 must be a positive number"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--data.kind", "passkey", "--data.seq_len", "32"], "fits in one chunk"),
    (["--data.seq_len", "128"], "the global-memory gate first acts on the third chunk"),
    (["--preset", "paper"], "data spec kind='chat' needs 'path'"),
    (["--data.options", '{"digitz": 5}'], "unknown key 'digitz'. Did you mean 'digits'?"),
    (["--data.options", '{"chunking": {"strategy": "random", "chunk_size": 128}}'],
     "chunking.chunk_size=128 exceeds comet.chunk_size=64"),
    (["--data.options", '{"chunking": {"strategy": "random", "chunk_size": 64}}', "--launch.strategy", "pipeline"],
     "not supported by the layer pipeline"),
])
def test_recipe_rejects_bad_flags_before_starting_anything(tmp_path, args, expected):
    out = _recipe("--preset", "tiny", *args, cwd=tmp_path)
    assert out.returncode == 2
    assert expected in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "outputs").exists()
