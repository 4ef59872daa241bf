"""Generate the Troubleshooting page from the source, so that it cannot drift from the code.

It walks ``framework/`` and ``data_pipelines/`` with :mod:`ast` (nothing is imported), finds every
exception class they define (a class whose bases lead, directly or through other project classes, to
a built-in exception), and every message constructed with one of them (``raise X(...)`` and any
other ``X(...)`` call): the string literal, f-string or concatenation passed as the first argument,
shown as a template in which ``{...}`` marks a value filled in at run time. The fix is the part of
the message from ``Fix:`` on, which the framework's messages carry by convention.

As an mkdocs hook (``hooks:`` in ``mkdocs.yml``), ``on_files`` adds the generated
``troubleshooting.md`` to the site in memory on every build; nothing is written into ``docs/``.
From the command line, ``python docs/hooks/gen_troubleshooting.py`` prints the page.
"""

from __future__ import annotations

import ast
import builtins
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("framework", "data_pipelines")
PAGE = "troubleshooting.md"
BUILTIN_EXCEPTIONS = {name for name, obj in vars(builtins).items()
                      if isinstance(obj, type) and issubclass(obj, BaseException)}
FIX = re.compile(r"\b[Ff]ix:\s*")
CONTINUE = re.compile(r"\bTo continue,\s*")
_VERBS = ("use|pass|add|set|remove|check|choose|pick|build|convert|leave|run|install|give|make|point|"
          "drop|call|save|write|keep|start|try|lower|raise|increase|reduce|rename|delete|wrap|load|"
          "prepare|register|create|select|split|group|put|provide|train|list|copy|move|nest|fill|use")
REMEDY = re.compile(r"(?:[:;.]|, or|, and)\s+((?:" + _VERBS + r")\b.*)$", re.IGNORECASE | re.DOTALL)
EXAMPLE = re.compile(r",?\s+(e\.g\.\s.*)$", re.DOTALL)
SENTENCE = re.compile(r"(?<=[.;!?])\s+(?=[A-Z(])")


@dataclass
class Message:
    template: str            # the message, with {expr} where a value is filled in at run time
    path: str                # repository-relative source file
    line: int

    @property
    def fix(self) -> str:
        """The remedy the message names: from ``Fix:`` (or ``To continue,``) on, else its last sentence."""
        m = FIX.search(self.template) or CONTINUE.search(self.template)
        if m:
            return self.template[m.end():].strip()
        m = REMEDY.search(self.template) or EXAMPLE.search(self.template)
        if m:
            return m.group(1).strip()
        sentences = [s for s in SENTENCE.split(self.template.strip()) if s]
        if len(sentences) > 1:
            return sentences[-1].strip()
        return ""


@dataclass
class ErrorClass:
    name: str
    module: str              # dotted module name, e.g. framework.config
    path: str
    line: int
    bases: list[str]
    doc: str
    messages: list[Message] = field(default_factory=list)

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ast.unparse(node)


def source_files(root: Path = REPO) -> list[Path]:
    files: list[Path] = []
    for pkg in PACKAGES:
        files += sorted(p for p in (root / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def _template(node: ast.expr) -> str | None:
    """The message template of a string expression; None when it is not built from literals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        out = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                out.append(str(part.value))
            elif isinstance(part, ast.FormattedValue):
                out.append("{" + ast.unparse(part.value) + "}")
        return "".join(out)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left), _template(node.right)
        if left is None and right is None:
            return None
        return (left if left is not None else "{" + ast.unparse(node.left) + "}") + \
               (right if right is not None else "{" + ast.unparse(node.right) + "}")
    if isinstance(node, ast.IfExp):
        a, b = _template(node.body), _template(node.orelse)
        if a is not None or b is not None:
            return "{" + ast.unparse(node) + "}"
    return None


def _enclosing_is_helper(tree: ast.AST, call: ast.Call, helpers: dict) -> bool:
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name in helpers:
            if any(sub is call for sub in ast.walk(fn)):
                return True
    return False


def collect(root: Path = REPO) -> list[ErrorClass]:
    """Every exception class defined under PACKAGES, with the messages constructed with it."""
    trees = {p: ast.parse(p.read_text(encoding="utf-8"), filename=str(p)) for p in source_files(root)}
    candidates: list[ErrorClass] = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.bases:
                candidates.append(ErrorClass(
                    name=node.name, module=_module_name(path, root), path=str(path.relative_to(root)),
                    line=node.lineno, bases=[_base_name(b) for b in node.bases],
                    doc=ast.get_docstring(node) or ""))
    # a class is an exception when one of its bases is a built-in exception or a project exception
    known = set(BUILTIN_EXCEPTIONS)
    found: dict[str, ErrorClass] = {}
    changed = True
    while changed:
        changed = False
        for c in candidates:
            if c.qualname not in found and any(b in known for b in c.bases):
                found[c.qualname] = c
                known.add(c.name)
                changed = True
    by_name: dict[str, list[ErrorClass]] = {}
    for c in found.values():
        by_name.setdefault(c.name, []).append(c)
    # a class that builds its own message in __init__ (super().__init__(<template>))
    init_template: dict[str, str] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in by_name:
                for sub in ast.walk(node):
                    if (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute)
                            and sub.func.attr == "__init__" and sub.args):
                        t = _template(sub.args[0])
                        if t is not None:
                            # inline local names bound to string literals (e.g. a hint)
                            for a in ast.walk(node):
                                if (isinstance(a, ast.Assign) and len(a.targets) == 1
                                        and isinstance(a.targets[0], ast.Name)):
                                    v = _template(a.value)
                                    if v is not None and isinstance(a.value, (ast.Constant, ast.JoinedStr)):
                                        t = t.replace("{" + a.targets[0].id + "}", v)
                            init_template[node.name] = t
    # helpers such as ``def require(cond, message): raise DataConfigError(message)``
    helpers: dict[str, tuple[str, int]] = {}
    for path, tree in trees.items():
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            params = [a.arg for a in fn.args.args]
            for sub in ast.walk(fn):
                if (isinstance(sub, ast.Raise) and isinstance(sub.exc, ast.Call)
                        and _base_name(sub.exc.func) in by_name and sub.exc.args
                        and isinstance(sub.exc.args[0], ast.Name) and sub.exc.args[0].id in params):
                    helpers[fn.name] = (_base_name(sub.exc.func), params.index(sub.exc.args[0].id))
    for path, tree in trees.items():
        rel = str(path.relative_to(root))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _base_name(node.func)
            argpos = 0
            if name in helpers and name not in by_name:
                name, argpos = helpers[name]
                if len(node.args) <= argpos:
                    continue
            elif name not in by_name:
                continue
            targets = by_name[name]
            if len(targets) > 1:   # the same name defined twice: prefer the one in this module
                targets = [t for t in targets if t.path == rel] or targets
            args = list(node.args)[argpos:] + [k.value for k in node.keywords if k.arg in ("msg", "message")]
            if argpos == 0 and name in init_template:
                template = init_template[name]
            else:
                template = _template(args[0]) if args else None
                if template is None:
                    if args and isinstance(args[0], ast.Name) and any(
                            h[0] == name and isinstance(args[0], ast.Name) for h in helpers.values()) \
                            and _enclosing_is_helper(tree, node, helpers):
                        continue   # the raise inside a helper: its callers' messages are listed
                    template = "{" + ast.unparse(args[0]) + "}" if args else ""
            targets[0].messages.append(Message(template=template, path=rel, line=node.lineno))
    out = sorted(found.values(), key=lambda c: (c.module, c.name))
    for c in out:
        c.messages.sort(key=lambda m: (m.path, m.line))
    return out


def _code(text: str) -> str:
    """Inline code that survives any backticks inside."""
    text = " ".join(text.split())
    ticks = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(root: Path = REPO) -> str:
    classes = collect(root)
    n_msgs = sum(len(c.messages) for c in classes)
    lines = [
        "# Troubleshooting",
        "",
        "<!-- generated by docs/hooks/gen_troubleshooting.py from the source: do not edit -->",
        "",
        f"Every exception class that `framework/` and `data_pipelines/` define ({len(classes)} classes), "
        f"and the {n_msgs} messages raised with them. The page is generated from the source code on every "
        "`mkdocs build` (`docs/hooks/gen_troubleshooting.py`), so it lists what the code raises today.",
        "",
        "How to read a message: `{...}` marks a value filled in at run time (the field, the value you "
        "passed, the valid choices); the **Fix** column is the remedy the message itself names (from "
        "`Fix:` or `To continue,` on; otherwise the instruction after its last colon or its last "
        "sentence). A recipe that gets bad input prints the message and exits with status 2 before "
        "training starts; run a recipe with `--help-config` to list every config field and its current "
        "value.",
        "",
        "| exception | base | defined in |",
        "|---|---|---|",
    ]
    for c in classes:
        lines.append(f"| [`{c.name}`](#{c.name.lower()}) | {', '.join(f'`{b}`' for b in c.bases)} | "
                     f"`{c.path}` |")
    for c in classes:
        lines += ["", f"## {c.name}", "", f"`{c.qualname}` ({', '.join(c.bases)}), `{c.path}:{c.line}`.", ""]
        if c.doc:
            lines += [c.doc, ""]
        if not c.messages:
            lines += ["No message is constructed with it directly (it is raised through a subclass or "
                      "re-raised).", ""]
            continue
        lines += ["| message | fix | where |", "|---|---|---|"]
        for m in c.messages:
            fix = _cell(_code(m.fix)) if m.fix else "the message states the rule"
            lines.append(f"| {_cell(_code(m.template)) if m.template else '(no message)'} | {fix} | "
                         f"`{m.path}:{m.line}` |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---- mkdocs hook ----------------------------------------------------------------------------------

def on_files(files, config):
    from mkdocs.structure.files import File

    existing = files.get_file_from_path(PAGE)
    if existing is not None:
        files.remove(existing)
    files.append(File.generated(config, PAGE, content=render()))
    return files


if __name__ == "__main__":
    print(render(), end="")
