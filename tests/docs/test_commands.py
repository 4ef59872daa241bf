"""Every command in a code block of the quick start and the recipe pages is run here or marked.

A command is accounted for when its line ends in ``# needs a cluster``, ``# server: ...`` or
``# not run by the tests: ...`` (a visible reason on the page), or when it is run below. Parsing is
fast and always runs; the runs themselves are ONE test (``test_run_page_commands``), which starts a
recipe (Ray, MLflow) per command, on the tiny preset with ``--max-steps 2``, in a scratch working
directory. It takes many minutes on a 2-core CPU, so it runs only with ``LONGCTX_DOCS_RUN=1``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "docs" / "quickstart.md"] + sorted((REPO / "docs" / "recipes").glob("*.md"))
MARKERS = ("# needs a cluster", "# server:", "# not run by the tests:")
BLOCK = re.compile(r"^```(bash|sh|shell|console)\n(.*?)^```", re.M | re.S)
# parts of a `&&` chain that set up the environment: what .ci/run does in a fresh venv
SETUP = re.compile(r"^(python3 -m venv \.venv|\. \.venv/bin/activate|bash cluster/install\.sh( --dev| --docs)*)$")


def commands(page: Path) -> list[tuple[str, str | None]]:
    """(command, marker or None) for every command line of the page's shell code blocks."""
    out = []
    for _, body in BLOCK.findall(page.read_text()):
        joined = body.replace("\\\n", " ")
        for line in joined.splitlines():
            if not line.strip():
                continue
            marker = next((m for m in MARKERS if m in line), None)
            cmd = line.split(" # ")[0].strip() if marker else line.strip()
            out.append((cmd, marker))
    return out


def runnable(cmd: str) -> list[str]:
    """The parts of a command the test runs; setup parts of a chain are covered by .ci/run."""
    parts = [p.strip() for p in cmd.split("&&")]
    return [p for p in parts if not SETUP.match(p)]


def test_every_command_is_runnable_or_marked():
    unaccounted = []
    for page in PAGES:
        for cmd, marker in commands(page):
            if marker:
                continue
            for part in runnable(cmd):
                if not (part.startswith("python recipes/") or part.startswith("longctx ")
                        or part.startswith("MLFLOW_TRACKING_URI=") or part.startswith("python -m pytest")):
                    unaccounted.append(f"{page.name}: {part}")
    assert not unaccounted, unaccounted
    assert any(c.startswith("python3 -m venv") for c, _ in commands(REPO / "docs" / "quickstart.md"))


def test_quick_start_shows_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    page = (REPO / "docs" / "quickstart.md").read_text()
    for cmd in re.findall(r"^python3 -m venv .*$", readme, re.M):
        assert cmd in page


def _recipe_argv(part: str) -> list[str]:
    argv = shlex.split(part)
    if "--preset" not in argv and "comet_passkey_tiny" not in part:
        argv += ["--preset", "tiny"]
    return [sys.executable] + [str(REPO / argv[1])] + argv[2:] + ["--max-steps", "2"]


@pytest.mark.skipif(os.environ.get("LONGCTX_DOCS_RUN") != "1", reason="long: set LONGCTX_DOCS_RUN=1 to run every page command")
@pytest.mark.timeout(3600)
def test_run_page_commands(tmp_path):
    """Runs every unmarked command, in order per page, in one scratch directory."""
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    seen, times = set(), {}
    for page in PAGES:
        for cmd, marker in commands(page):
            if marker:
                continue
            for part in runnable(cmd):
                if part in seen:
                    continue
                seen.add(part)
                t0 = time.monotonic()
                if part.startswith("python recipes/"):
                    argv = _recipe_argv(part)
                    res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
                elif part.startswith("python -m pytest"):
                    continue  # the CI command itself (.ci/run runs it)
                else:
                    res = subprocess.run(["bash", "-c", part], cwd=tmp_path, env=env, capture_output=True, text=True)
                times[part] = time.monotonic() - t0
                assert res.returncode == 0, f"{page.name}: {part}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    # the server command is not started; its command line must parse
    res = subprocess.run(["mlflow", "ui", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--backend-store-uri" in res.stdout
    print("\n".join(f"{t:7.1f}s  {c}" for c, t in times.items()))
