"""The shell commands that the quick start and the recipe pages show, for the tests that run them.

A test runs a page command through :func:`shown`, which fails when the page no longer shows that
command, so the page and the test cannot drift apart. The test appends only test-speed flags
(``--max-steps``, ``--num-workers``, evaluation sizes, ...). ``tests/docs/test_commands.py`` scans
the test sources for ``shown(...)`` calls and fails when a page command is run by no test and is
not marked on the page (``# needs a cluster``, ``# server: ...``, ``# needs the optional ...``).
A command also counts as run when a test runs a longer page command that starts with it (the
same command with more flags of its own).
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "docs" / "quickstart.md", REPO / "docs" / "your_model.md", REPO / "docs" / "write_a_method.md"] + sorted((REPO / "docs" / "recipes").glob("*.md"))
MARKERS = ("# needs a cluster", "# server:", "# needs the optional")
BLOCK = re.compile(r"^```(bash|sh|shell|console)\n(.*?)^```", re.M | re.S)
# parts of a `&&` chain that set up the environment: what .ci/run does in a fresh venv
SETUP = re.compile(r"^(python3 -m venv \.venv|\. \.venv/bin/activate|bash cluster/install\.sh( --dev| --docs)*)$")


def commands(page: Path) -> list[tuple[str, str | None]]:
    """(command, marker or None) for every command line of the page's shell code blocks."""
    out = []
    for _, body in BLOCK.findall(page.read_text()):
        for line in body.replace("\\\n", " ").splitlines():
            if not line.strip():
                continue
            marker = next((m for m in MARKERS if m in line), None)
            out.append((line.split(" # ")[0].strip() if marker else line.strip(), marker))
    return out


def runnable(cmd: str) -> list[str]:
    """The parts of a command that a test runs; the set-up parts of a chain are what .ci/run does."""
    return [p for p in (part.strip() for part in cmd.split("&&")) if not SETUP.match(p)]


def page_parts(page: Path) -> list[str]:
    """The unmarked runnable commands of one page."""
    return [part for cmd, marker in commands(page) if not marker for part in runnable(cmd)]


def shown(command: str, page: str) -> list[str]:
    """The argv of ``command`` as ``docs/<page>`` shows it (``python`` is this interpreter and a
    recipe path is absolute). Fails when the page does not show it unmarked."""
    parts = page_parts(REPO / "docs" / page)
    assert command in parts, f"docs/{page} no longer shows {command!r}; it shows {parts}"
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
        if len(argv) > 1 and argv[1].startswith("recipes/"):
            argv[1] = str(REPO / argv[1])
    return argv


def claimed(root: Path = REPO / "tests") -> set[str]:
    """Every command that some test passes to ``shown("...", "...")`` with literal strings."""
    out = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "shown" and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                out.add(node.args[0].value)
    return out


def covered(part: str, run: set[str]) -> bool:
    """True when a test runs ``part`` itself, or a page command that is ``part`` plus more flags."""
    words = shlex.split(part)
    return any(shlex.split(c)[:len(words)] == words for c in run)
