"""Every command in a code block of the quick start and the recipe pages is run by a test or marked.

The tests that run them call ``shown(command, page)`` (``tests/page_commands.py``), which fails when
the page stops showing the command. This module checks, from the test sources alone, that every
unmarked page command is run by one of those tests.
"""

from __future__ import annotations

import re
import subprocess

from page_commands import PAGES, REPO, claimed, commands, covered, page_parts


def test_every_page_command_is_run_by_a_test_or_marked():
    run = claimed()
    missing = [f"docs/{page.relative_to(REPO / 'docs')}: {part}" for page in PAGES for part in page_parts(page)
               if not part.startswith("python -m pytest") and not covered(part, run)]
    assert not missing, "page commands that no test runs (run them through shown(...) or mark them):\n" + "\n".join(missing)


def test_the_ci_command_is_the_readme_one():
    quick = page_parts(REPO / "docs" / "quickstart.md")
    assert "python -m pytest -q tests" in quick and "python recipes/comet_32k.py --preset tiny" in quick
    assert "python -m pytest -q tests" in (REPO / ".ci" / "run").read_text()


def test_quick_start_shows_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    page = (REPO / "docs" / "quickstart.md").read_text()
    for cmd in re.findall(r"^python3 -m venv .*$", readme, re.M):
        assert cmd in page


def test_the_server_command_parses():
    """``mlflow ui`` is shown as a server (not started by the tests); its flags must exist."""
    servers = [cmd for page in PAGES for cmd, marker in commands(page) if marker == "# server:"]
    assert servers and all(cmd.startswith("mlflow ui ") for cmd in servers)
    res = subprocess.run(["mlflow", "ui", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in servers:
        for flag in re.findall(r"--[a-z-]+", cmd):
            assert flag in res.stdout, flag
