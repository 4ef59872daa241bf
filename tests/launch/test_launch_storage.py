"""Where Ray keeps checkpoints: local paths become absolute; URIs pass through; memory:// is refused."""

from pathlib import Path

import pytest

from framework.config import ConfigError, apply_overrides
from framework.launch.run import _storage
from framework.methods.comet import CoMeTJob


def test_default_and_relative_paths_are_absolute_under_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, fs = _storage(CoMeTJob())
    assert path == str(tmp_path.resolve() / "outputs" / "ray") and fs is None
    path, fs = _storage(apply_overrides(CoMeTJob(), ["--launch.storage_path", "runs"]))
    assert Path(path) == tmp_path.resolve() / "runs"


def test_file_uri_goes_to_pyarrow_as_is(tmp_path):
    uri = (tmp_path / "store").as_uri()
    path, fs = _storage(apply_overrides(CoMeTJob(), ["--launch.storage_path", uri]))
    assert path == uri and fs is None


def test_memory_filesystem_is_refused_because_workers_cannot_share_it():
    with pytest.raises(ConfigError, match="not shared between Ray workers"):
        _storage(apply_overrides(CoMeTJob(), ["--launch.storage_path", "memory://runs"]))
