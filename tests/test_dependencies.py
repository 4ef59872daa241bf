"""pyproject.toml declares what the code imports, nothing it does not, and no known-vulnerable floor."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
CODE = ("framework", "data_pipelines", "recipes", "benchmarks")
# import name -> distribution name, for the third-party packages checked here
CHECKED = {"numpy": "numpy", "tqdm": "tqdm", "tokenizers": "tokenizers", "pandas": "pandas", "torchdata": "torchdata",
           "requests": "requests", "yaml": "pyyaml", "ray": "ray", "mlflow": "mlflow"}
# the fixed release of each known flaw: ray 2.52 (unauthenticated remote code execution),
# requests 2.32.4 (.netrc credentials leak, CVE-2024-47081)
FLOORS = {"ray": "2.52", "requests": "2.32.4"}


def _requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower(): Requirement(d) for d in deps}


def _imported() -> set[str]:
    names = set()
    for folder in CODE:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return names


def test_imported_packages_are_declared_and_unused_ones_are_not():
    reqs, imported = _requirements(), _imported()
    for module, dist in CHECKED.items():
        if module in imported:
            assert dist in reqs, f"{module} is imported under {CODE} but pyproject.toml does not declare {dist}"
        else:
            assert dist not in reqs, f"pyproject.toml declares {dist}, which nothing under {CODE} imports"


def test_floors_are_past_known_flaws_and_the_installed_versions_meet_every_pin():
    reqs = _requirements()
    for dist, fixed in FLOORS.items():
        floors = [Version(s.version) for s in reqs[dist].specifier if s.operator in (">=", "==", "~=")]
        assert floors and min(floors) >= Version(fixed), f"{reqs[dist]}: require {dist}>={fixed}"
    for name, req in reqs.items():
        installed = importlib.metadata.version(name)
        assert req.specifier.contains(installed, prereleases=True), f"installed {name} {installed} breaks {req}"
