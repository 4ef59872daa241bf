"""A method defined outside the package (the toy of docs/write_a_method.md), found through a real
``longctx.methods`` entry point: discovery and its errors, build, training step, save/load, the
registry's recognition of its directory, registering and serving it, and a whole run of the page's
command on a local Ray cluster, whose model loads back through MLflow pyfunc."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from page_commands import REPO, shown

PAGE = "write_a_method.md"
pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("one_torch_thread")]


def page_file(title: str) -> str:
    """The code block of the page titled `title` (```python title="toy_method.py")."""
    text = (REPO / "docs" / PAGE).read_text()
    match = re.search(r'^```\w+ title="' + re.escape(title) + r'"\n(.*?)^```', text, re.M | re.S)
    assert match, f"docs/{PAGE} no longer shows {title}"
    return match.group(1)


def install_toy(root: Path, name: str = "toy", value: str = "toy_method", dist: str = "toy_method") -> Path:
    """toy_method.py in root/project and a dist-info declaring its entry point in root/site, as
    `pip install` of the page's pyproject leaves them; returns root."""
    project, site = root / "project", root / "site"
    project.mkdir(parents=True, exist_ok=True)
    (project / "toy_method.py").write_text(page_file("toy_method.py"))
    (project / "train_toy.py").write_text(page_file("train_toy.py"))
    info = site / f"{dist}-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[longctx.methods]\n{name} = {value}\n")
    return root


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy method installed (module and entry point on sys.path); forgotten afterwards."""
    from framework.methods import registry

    root = install_toy(tmp_path)
    monkeypatch.syspath_prepend(str(root / "project"))
    monkeypatch.syspath_prepend(str(root / "site"))
    yield root
    registry.unregister_method("toy")
    sys.modules.pop("toy_method", None)


def test_the_entry_point_is_discovered_and_declares_the_whole_method(toy):
    from framework.methods.registry import all_methods, get_method, method_for

    spec = get_method("toy")
    import toy_method

    assert spec is toy_method.METHOD and spec.job is toy_method.ToyJob
    assert "toy" in [s.name for s in all_methods()]
    assert method_for(toy_method.ToyJob()) is spec
    assert spec.strategies == ("ddp", "fsdp") and not spec.pipeline
    assert spec.example_input == "['Once upon a time']"


def test_an_unknown_method_names_the_ways_to_define_one():
    from framework.methods.registry import UnknownMethodError, get_method

    with pytest.raises(UnknownMethodError, match=r"unknown method 'nope'.*'comet'.*longctx\.methods.*register_method"):
        get_method("nope")


def test_duplicate_names_are_refused_with_the_fix(toy, tmp_path, monkeypatch):
    import dataclasses

    from framework.methods.registry import (MethodRegistrationError, MethodSpec, get_method, register_method,
                                            unregister_method)

    spec = get_method("toy")
    assert register_method(spec) is spec  # the same spec again: nothing happens
    with pytest.raises(MethodRegistrationError, match=r"built-in method 'comet'.*Fix: give the MethodSpec"):
        register_method(dataclasses.replace(spec, name="comet"))
    with pytest.raises(MethodRegistrationError, match=r"registered before.*Fix"):
        register_method(dataclasses.replace(spec, build_model=lambda cfg, tok: None))
    with pytest.raises(MethodRegistrationError, match=r"METHOD = 'toy'.*Fix: set METHOD"):
        register_method(dataclasses.replace(spec, name="toy2"))
    with pytest.raises(MethodRegistrationError, match="takes a MethodSpec, not str"):
        register_method("toy")
    assert isinstance(spec, MethodSpec)

    # a second distribution declaring "toy": both are named, and how to resolve it
    unregister_method("toy")
    other = install_toy(tmp_path / "other", dist="other_toy")
    monkeypatch.syspath_prepend(str(other / "site"))
    with pytest.raises(MethodRegistrationError, match=r"declared by 2 entry points.*other-toy.*Fix: uninstall"):
        get_method("toy")


def test_an_entry_point_named_like_a_builtin_or_not_giving_a_spec_is_refused(tmp_path, monkeypatch):
    from framework.methods.registry import MethodRegistrationError, get_method

    root = install_toy(tmp_path, name="bad_toy", value="toy_method:ToyJob", dist="bad_toy")
    monkeypatch.syspath_prepend(str(root / "project"))
    monkeypatch.syspath_prepend(str(root / "site"))
    try:
        with pytest.raises(MethodRegistrationError, match=r"gives type, not a MethodSpec.*Fix: point the entry point"):
            get_method("bad_toy")
    finally:
        sys.modules.pop("toy_method", None)


def test_the_strategies_a_spec_lists_are_the_ones_a_job_may_use(toy):
    import dataclasses

    from framework.config import ConfigError
    from framework.job import LaunchConfig
    from framework.launch.run import validate
    from framework.methods.registry import MethodRegistrationError, get_method

    spec = get_method("toy")
    import toy_method

    with pytest.raises(ConfigError, match=r"the 'toy' method has no chunks to split. Fix: --launch.strategy ddp"):
        validate(toy_method.ToyJob(launch=LaunchConfig(strategy="pipeline", num_workers=2)))
    with pytest.raises(MethodRegistrationError, match=r"lists the pipeline strategy but gives no pipeline_chunk"):
        dataclasses.replace(spec, strategies=("ddp", "pipeline"))
    assert get_method("comet").pipeline and get_method("comet").pipeline_chunk(get_method("comet").job()) > 0


def test_build_train_step_save_and_load_through_the_registry(toy, tmp_path):
    import torch

    from data_pipelines.tokenizer import load_project_tokenizer
    from framework.job import DataConfig
    from framework.launch.data import build_source
    from framework.methods.registry import find_model_dir, get_method, load_saved_model, method_of_dir

    spec = get_method("toy")
    import toy_method

    tok = load_project_tokenizer()
    cfg = toy_method.ToyJob(data=DataConfig(kind="text", seq_len=32, batch_size=2))
    model = spec.build_model(cfg, tok)
    module = spec.lightning_module(model, cfg, 4)
    source = build_source(cfg.data, tok)
    batch = {k: torch.stack([source[0][k], source[1][k]]) for k in ("input_ids", "labels", "document_ids")}
    loss, tokens = module.loss_sum(batch)
    assert tokens > 0 and torch.isfinite(loss)
    loss.backward()
    assert model.embed.weight.grad is not None

    saved = tmp_path / "artifacts" / "final"
    spec.save_model(model, str(saved), tok)
    assert method_of_dir(saved) is spec
    assert find_model_dir(str(tmp_path / "artifacts")) == str(saved)
    loaded = load_saved_model(str(saved))
    assert isinstance(loaded, toy_method.BigramLM)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def _env(root: Path) -> dict:
    """The page's command as a user with the toy project installed runs it: the module and the entry point on
    PYTHONPATH (which the local Ray cluster's workers inherit), a fresh local Ray and MLflow store."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    paths = [str(root / "project"), str(root / "site"), str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_DEDUP_LOGS"] = "0"
    # test speed only (documented Ray Train settings), as tests/e2e/recipe_runs.py sets them
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
    env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    env["RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION"] = "0"
    return env


def test_the_page_trains_the_toy_on_ray_and_the_registered_model_serves(tmp_path):
    import mlflow

    root = install_toy(tmp_path)
    cwd = root / "project"
    proc = subprocess.run(shown("python train_toy.py", PAGE) + ["--max-steps", "2", "--data.seq_len", "32"], cwd=cwd,
                          env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "registered model: models:/toy-lm@champion" in proc.stdout, proc.stdout[-3000:]
    assert "m.predict(['Once upon a time'])" in proc.stdout  # the hint shows the method's example input

    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version_by_alias("toy-lm", "champion")
    model_id = version.model_id or version.source.rsplit("/", 1)[-1]  # source: models:/<model_id>
    assert client.get_logged_model(model_id).model_type == "toy-bigram"  # the toy's MLflowModel.name
    sys_path = list(sys.path)
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model("models:/toy-lm@champion")
        out = model.predict(["Once upon a time", "The house"], params={"max_new_tokens": 3})
    finally:
        mlflow.set_tracking_uri(None)
        sys.path[:] = sys_path
        sys.modules.pop("toy_method", None)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
