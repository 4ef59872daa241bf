"""The generated Troubleshooting page lists every exception class the framework defines."""

from __future__ import annotations

import ast
import builtins
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "docs" / "hooks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _exception_classes() -> set[str]:
    """Walk the source independently of the generator: classes whose bases lead to an exception."""
    exc = {n for n, o in vars(builtins).items() if isinstance(o, type) and issubclass(o, BaseException)}
    classes = []
    for pkg in ("framework", "data_pipelines"):
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                    classes.append((node.name, bases))
    found: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name, bases in classes:
            if name not in found and bases & (exc | found):
                found.add(name)
                grew = True
    return found


def test_every_error_class_is_on_the_page():
    gen = _load("gen_troubleshooting")
    page = gen.render()
    expected = _exception_classes()
    assert len(expected) >= 20
    listed = {c.name for c in gen.collect()}
    assert listed == expected
    for name in expected:
        assert f"\n## {name}\n" in page, name


def test_messages_and_fixes_are_rendered():
    gen = _load("gen_troubleshooting")
    page = gen.render()
    by_name = {c.name: c for c in gen.collect()}
    cfg = by_name["ConfigError"]
    assert any("--help-config" in m.template for m in cfg.messages)
    assert "run the recipe with --help-config to list every field" in page
    # f-string values appear as {expr} templates
    assert any("{" in m.template for m in by_name["CoMeTConfigError"].messages)
    # messages built in __init__ (BadRecordError) and through helpers (require -> DataConfigError)
    assert by_name["BadRecordError"].messages and "on-bad-record skip" in by_name["BadRecordError"].messages[0].fix
    assert len(by_name["DataConfigError"].messages) > 5
