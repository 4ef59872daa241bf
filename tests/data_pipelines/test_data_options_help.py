"""--help-config lists the keys of the job's data kind, with defaults and types."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from data_pipelines.factory import KINDS, describe_options

ROOT = Path(__file__).resolve().parents[2]


def test_every_kind_lists_each_of_its_keys_with_a_type():
    for kind, schema in KINDS.items():
        lines = describe_options(kind)
        listed = {line.split()[1] for line in lines[1:] if line.startswith("#   ")}
        assert set(schema) - {"seq_len"} <= listed, kind
        assert all("(" in line and line.endswith(")") for line in lines[1:-1]), lines
    assert "REQUIRED" in "\n".join(describe_options("chat"))


def test_help_config_shows_the_options_of_the_chosen_kind():
    out = subprocess.run([sys.executable, "recipes/comet_32k.py", "--help-config", "--data.kind", "text"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "# data.options of data.kind='text'" in out.stdout
    assert "#   validation_fraction 0.05  (float)" in out.stdout
    assert "#   storage_options null  (dict | None)" in out.stdout
