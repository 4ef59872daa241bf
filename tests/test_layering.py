"""The layers of the code base, checked by reading every import (module level and inside functions, absolute
and relative) of every .py file under framework/ and data_pipelines/:

    framework.models                      plain PyTorch + transformers: no method, launch, tracking, strategy,
                                          eval or study code, and no data pipeline
    data_pipelines                        nothing from framework
    framework.methods, framework.tracking,
    framework.eval, framework.strategies  nothing from framework.launch (launch drives them, not the reverse)
    framework.job, framework.config       the job's sections and the config machinery: nothing from the rest of
                                          framework, and no torch, Ray or Lightning

Each violation is reported as file:line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("framework", "data_pipelines")

# (name, the modules it constrains, the imports they may not make, the imports excepted from those)
RULES = [
    ("models import no higher layer and no data pipeline", ("framework.models",),
     ("framework.methods", "framework.launch", "framework.tracking", "framework.strategies", "framework.eval",
      "framework.studies", "data_pipelines"), ()),
    ("data_pipelines import nothing from framework", ("data_pipelines",), ("framework",), ()),
    ("methods, tracking, eval and strategies import nothing from launch",
     ("framework.methods", "framework.tracking", "framework.eval", "framework.strategies"), ("framework.launch",), ()),
    ("job sections and config machinery import no other framework code, torch, Ray or Lightning",
     ("framework.job", "framework.config"), ("framework", "torch", "ray", "lightning", "pytorch_lightning"),
     ("framework.job", "framework.config")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported name) of every import in the file: `import X` gives X, `from X import a` gives X.a (a may
    be a submodule or a name in X), and relative imports are resolved against the file's package."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [(node.lineno, target if alias.name == "*" else f"{target}.{alias.name}") for alias in node.names]
    return found


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _files():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


IMPORTS = {path: _imports(path) for path in _files()}


def test_the_scan_sees_both_packages_and_resolves_relative_imports():
    names = {_module_name(p) for p in IMPORTS}
    assert {"framework.job.sections", "framework.models", "data_pipelines"} <= names
    # framework/__init__.py: `from .models import comet` -> framework.models.comet
    assert any(target == "framework.models.comet" for _, target in IMPORTS[ROOT / "framework" / "__init__.py"])


@pytest.mark.parametrize("rule", RULES, ids=[r[0] for r in RULES])
def test_layering(rule):
    _, scope, forbidden, allowed = rule
    violations = set()
    for path, imports in IMPORTS.items():
        if not _within(_module_name(path), scope):
            continue
        for line, target in imports:
            if _within(target, forbidden) and not _within(target, allowed):
                shown = target.rsplit(".", 1)[0] if _within(target.rsplit(".", 1)[0], forbidden) else target
                violations.add(f"{path.relative_to(ROOT)}:{line}: imports {shown}")
    assert not violations, f"{rule[0]}; violations:\n" + "\n".join(sorted(violations))
