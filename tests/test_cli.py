import subprocess
import sys
from pathlib import Path

import framework
from framework import cli

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_version_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "framework.cli", "version"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert framework.__version__ in proc.stdout
    assert proc.stdout.strip() == f"longctx {framework.__version__}"


def test_info_reports_torch_version(capsys):
    import torch

    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out


def test_no_subcommand_prints_help(capsys):
    assert cli.main([]) == 0
    assert "usage: longctx" in capsys.readouterr().out
