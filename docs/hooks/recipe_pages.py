"""Markdown for the recipe pages (``docs/recipes/*.md``), computed from the code so the pages cannot drift.

The functions are placeholders of the ``gen_benchmarks`` hook (``{{ shared_flags_table("ram_qa") }}``):

* ``shared_flags_table(recipe)``: the table of the flags every recipe shares, from the real parser
  (``framework.launch.recipe_cli.build_parser``) and the config field each one sets (``FLAG_FIELDS``);
* ``recipe_flags(recipe)``: the ``--help`` text of the recipe's own flags (its ``add_flags``), or "";
* ``help_config(recipe, preset)``: what ``python recipes/<recipe>.py --preset <preset> --help-config``
  prints, built in this process the way ``recipe_cli.main`` builds it;
* ``presets_line(recipe)``: the preset names and the default;
* ``recipe_doc(recipe)``: the recipe's docstring after its first paragraph, without the command examples;
* ``recipe_time(command)``: the measured wall clock of one command of ``benchmarks/recipe_times.py``, from
  ``benchmarks/results/recipe_times.json``, or "not measured yet" while the file or its entry is missing.

A recipe is read by running its file as ``__main__`` with ``recipe_cli.main`` replaced by a recorder:
only the module's top level runs (imports and preset functions), and the recorder keeps the arguments
the recipe passes to ``main`` (presets, default, description, add_flags, flag_fields). Nothing trains,
and no subprocess starts.
"""

from __future__ import annotations

import argparse
import functools
import html
import importlib.util
import inspect
import json
import runpy
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
TIMES = REPO / "benchmarks" / "results" / "recipe_times.json"
TIMES_SCRIPT = REPO / "benchmarks" / "recipe_times.py"
# argparse wraps --help at the terminal width - 2; 80 columns, as when stdout is not a terminal
HELP_WIDTH = 78
NOT_MEASURED = ("not measured yet (run `python benchmarks/recipe_times.py > benchmarks/results/recipe_times.json`)")

# the "sets" column of the flags that set no single config field (the others: recipe_cli.FLAG_FIELDS)
OTHER_SETS = {"preset": "the starting config", "config": "any section"}
# links appended to a flag's help text (pages under docs/recipes/)
LINKS = {"resume": "[Training](../training.md#resume)"}


def _recipe_cli():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from framework.launch import recipe_cli

    return recipe_cli


def recipe_call(recipe: str) -> dict[str, Any]:
    """The arguments ``recipes/<recipe>.py`` passes to ``recipe_cli.main``, by name (see the module doc)."""
    path = RECIPES / f"{recipe}.py"
    if not path.is_file():
        raise ValueError(f"no recipe {path.relative_to(REPO)}")
    return _recipe_call(path, path.stat().st_mtime_ns)  # read again once the file changes (mkdocs serve)


@functools.lru_cache(maxsize=None)
def _recipe_call(path: Path, mtime_ns: int) -> dict[str, Any]:
    cli = _recipe_cli()
    real_main, signature, seen = cli.main, inspect.signature(cli.main), {}

    def record(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        seen.update(bound.arguments)
        return 0

    cli.main = record
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit:
        pass
    finally:
        cli.main = real_main
    if not seen:
        raise ValueError(f"{path.relative_to(REPO)} does not call framework.launch.recipe_cli.main under __main__")
    return seen


def _parser(recipe: str, own_flags: bool = True) -> argparse.ArgumentParser:
    call = recipe_call(recipe)
    parser = _recipe_cli().build_parser(call["description"], call["presets"], call["default"])
    if own_flags and call["add_flags"] is not None:
        call["add_flags"](parser)
    return parser


def _cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|")


def _invocation(action: argparse.Action) -> str:
    """How --help names the flag: ``--max-steps MAX_STEPS``, ``--preset {paper,tiny}``, ``--use-gpu``."""
    return argparse.HelpFormatter("")._format_action_invocation(action)


def shared_flags_table(recipe: str | None = None) -> str:
    """The flags every recipe shares, one row each, from ``recipe_cli.build_parser``; with ``recipe``,
    its presets and default in the ``--preset`` row."""
    cli = _recipe_cli()
    if recipe is None:
        parser = cli.build_parser("", ["NAME"], "NAME")
    else:
        parser = _parser(recipe, own_flags=False)
    rows = []
    for action in parser._actions:
        sets = cli.FLAG_FIELDS.get(action.dest)
        sets = f"`{sets}`" if sets else OTHER_SETS.get(action.dest, "")
        flag = "`--preset NAME`" if recipe is None and action.dest == "preset" else f"`{_invocation(action)}`"
        if recipe is None and action.dest == "preset":
            meaning = "one of the recipe's presets"
        else:  # the help text as --help prints it (argparse expands %(default)s and the like)
            meaning = parser._get_formatter()._expand_help(action) if action.help else ""
        meaning = _cell(meaning)
        if action.dest in LINKS:
            meaning += f" ({LINKS[action.dest]})"
        rows.append(f"| {flag} | {sets} | {meaning} |")
    # dotted overrides are split off before argparse (recipe_cli.split_overrides) and applied last (compose)
    rows.append("| `--SECTION.FIELD VALUE` or `--SECTION.FIELD=VALUE` | that field | any config field (the list "
                "below); applied after the preset and the flags above |")
    return "\n".join(["| flag | sets | meaning |", "|---|---|---|", *rows])


def recipe_flags(recipe: str) -> str:
    """The ``--help`` text of the flags the recipe adds to the shared ones ("" when it adds none)."""
    parser = _parser(recipe)
    shared = {a.dest for a in _parser(recipe, own_flags=False)._actions}
    parts = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.dest not in shared]
        if not actions:
            continue
        formatter = parser.formatter_class(prog=parser.prog, width=HELP_WIDTH)
        # the options of the main group are listed without its heading ("options:")
        formatter.start_section(None if group is parser._optionals else group.title)
        formatter.add_arguments(actions)
        formatter.end_section()
        parts.append(formatter.format_help().strip("\n"))
    return "\n\n".join(parts)


def help_config(recipe: str, preset: str | None = None) -> str:
    """What ``python recipes/<recipe>.py [--preset <preset>] --help-config`` prints (without the last newline)."""
    from framework.config import describe

    cli, call = _recipe_cli(), recipe_call(recipe)
    if preset is not None and preset not in call["presets"]:
        raise ValueError(f"recipes/{recipe}.py has no preset {preset!r} ({sorted(call['presets'])})")
    flags, overrides = cli.split_overrides(["--help-config"] + (["--preset", preset] if preset else []))
    args = _parser(recipe).parse_args(flags)
    cfg = cli.compose(args, overrides, call["presets"], call["flag_fields"])
    return "\n".join(describe(cfg))


def recipe_doc(recipe: str) -> str:
    """The recipe's docstring without its first paragraph (the page's lead) and without its indented
    command examples (the page's "Run it" block shows the commands that the tests run)."""
    doc = recipe_call(recipe)["description"] or ""
    paragraphs = [p for p in doc.strip().split("\n\n")[1:]
                  if not all(line.startswith("    ") for line in p.splitlines() if line.strip())]
    return "\n\n".join(p.strip("\n") for p in paragraphs)


def presets_line(recipe: str) -> str:
    """```paper``, ``tiny`` (default ``paper``)``."""
    call = recipe_call(recipe)
    return ", ".join(f"`{name}`" for name in call["presets"]) + f" (default `{call['default']}`)"


@functools.lru_cache(maxsize=None)
def timed_commands() -> tuple[str, ...]:
    """The commands ``benchmarks/recipe_times.py`` times (its ``COMMANDS``)."""
    spec = importlib.util.spec_from_file_location("longctx_bench_recipe_times", TIMES_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.COMMANDS.values())


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _machine(m: dict, run: dict) -> str:
    parts = [f"{m['cpus']} CPU cores" if m.get("cpus") else None,
             f"torch {m['torch']}" if m.get("torch") else None,
             f"Python {m['python']}" if m.get("python") else None,
             f"platform `{m['platform']}`" if m.get("platform") else None]
    start, end = run.get("load_avg_1m_at_start"), run.get("load_avg_1m_at_end")
    if start is not None and end is not None:
        parts.append(f"1-minute load average {start} at the start and {end} at the end")
    return ", ".join(p for p in parts if p)


def recipe_time(command: str, data: dict | None = None) -> str:
    """The measured wall clock of ``command`` (one of ``benchmarks/recipe_times.py``'s), from ``data`` (the
    parsed ``recipe_times.json``; read from ``benchmarks/results/`` when None), or "not measured yet"."""
    if command not in timed_commands():
        raise ValueError(f"{command!r} is not one of the commands of benchmarks/recipe_times.py: {timed_commands()}")
    if data is None:
        data = json.loads(TIMES.read_text()) if TIMES.is_file() else {}
    run = next((r for r in data.get("runs", []) if r.get("command") == command), None)
    if run is None:
        return NOT_MEASURED
    source = f"{_machine(data.get('machine', {}), run)}, {data.get('date', 'undated')}; " \
             "`benchmarks/results/recipe_times.json`"
    if run.get("returncode") != 0:
        return (f"not measured: the last run of `{command}` exited with status {run.get('returncode')} after "
                f"{_duration(run['wall_seconds'])} ({source})")
    steps = f"{run['steps']:,} steps; " if run.get("steps") is not None else ""
    return f"{_duration(run['wall_seconds'])} of wall clock for `{command}` ({steps}{source})"


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "ram_qa"
    print(presets_line(name), shared_flags_table(name), recipe_flags(name), help_config(name, *sys.argv[2:3]),
          sep="\n\n")
