"""The command line every recipe shares: presets, the common flags, and dotted overrides.

    python recipes/comet_32k.py --preset tiny --num-workers 2 --data.seq_len 512 --optim.lr=1e-3
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Mapping, Sequence

from framework.config import ConfigError, apply_overrides, describe, from_dict, upgrade_keys
from framework.tracking.redact import redact_text

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Dotted overrides (`--a.b V`, `--a.b=V`) apart from the ordinary flags."""
    flags, overrides, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        key = tok[2:].split("=", 1)[0] if tok.startswith("--") else ""
        if "." in key:
            if "=" in tok or i + 1 >= len(argv):
                overrides.append(tok)
                i += 1
            else:
                overrides += [tok, argv[i + 1]]
                i += 2
        else:
            flags.append(tok)
            i += 1
    return flags, overrides


# the config field each common flag sets (the dest of the flag -> the dotted field), after the preset
FLAG_FIELDS = {"max_steps": "launch.max_steps", "num_workers": "launch.num_workers", "use_gpu": "launch.use_gpu",
               "tracking_uri": "tracking.tracking_uri", "model_name": "tracking.model_name",
               "run_name": "launch.run_name"}


# old flags of the recipes that evaluated by hand, now the job's `eval` section: old flag -> (dotted field, the
# value a flag without one sets). A recipe that still defines the flag itself (add_flags) keeps its own; a recipe
# whose old flags meant other fields passes its own to main (eval_aliases), over these.
EVAL_FLAG_ALIASES = {
    "--eval-multiples": ("eval.passkey.multiples", None), "--eval-lengths": ("eval.passkey.lengths", None),
    "--eval-depths": ("eval.passkey.depths", None), "--eval-trials": ("eval.passkey.trials", None),
    "--eval-filler": ("eval.passkey.filler", None), "--ppl-docs": ("eval.perplexity.docs", None),
    "--base-max-len": ("eval.base.max_len", None), "--no-base": ("eval.base.enabled", "false"),
    "--eval-out": ("eval.out_dir", None), "--no-eval": ("eval.tasks", "[]"),
}


def translate_aliases(argv: Sequence[str], aliases: Mapping[str, tuple[str, str | None]],
                      own: Sequence[str] = ()) -> list[str]:
    """argv with each deprecated alias (`--eval-trials 2`) as its dotted override (`--eval.passkey.trials 2`),
    one deprecation line for all; flags in `own` (the recipe's own parser options) are left alone."""
    from framework.config import deprecated

    out, used, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        flag, eq, value = tok.partition("=")
        if flag not in aliases or flag in own:
            out.append(tok)
            i += 1
            continue
        field, fixed = aliases[flag]
        if fixed is not None:
            out += [f"--{field}", fixed]
            used.append((flag, f"--{field} {fixed}"))
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"{flag} needs a value. Fix: --{field} VALUE ({flag} is its old name)")
            value, i = argv[i + 1], i + 1
        out += [f"--{field}", value]
        used.append((flag, f"--{field}"))
        i += 1
    if used:
        deprecated(f"{', '.join(o for o, _ in used)}: now the job's eval section (the old flags still work for now). "
                   f"Fix: use {', '.join(n for _, n in used)}")
    return out


def build_parser(description: str, presets: Sequence[str], default: str,
                 aliases: Mapping[str, tuple[str, str | None]] | None = None) -> argparse.ArgumentParser:
    epilog = ("Any config field can be set as --section.field VALUE; --help-config lists them.\n"
              f"Deprecated, still accepted: the old evaluation flags {', '.join(aliases or EVAL_FLAG_ALIASES)} "
              "(aliases of --eval.*).")
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=epilog)
    p.add_argument("--preset", choices=list(presets), default=default, help=f"starting config (default {default})")
    p.add_argument("--config", help="a YAML file of config sections, applied before the flags")
    p.add_argument("--max-steps", type=int, help="optimizer steps (default: the data's epochs)")
    p.add_argument("--num-workers", type=int, help="Ray Train workers")
    p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker, bf16-mixed")
    p.add_argument("--resume", help="runs:/<run_id>, models:/<name>@<alias>, auto, or a checkpoint directory")
    p.add_argument("--resume-force", action="store_true",
                   help="continue the --resume run even when its logged config differs (seed, model, data, ...)")
    p.add_argument("--tracking-uri", help="MLflow server or database (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--model-name", help="registered model name")
    p.add_argument("--run-name", help="MLflow run name (the key of --resume auto)")
    p.add_argument("--help-config", action="store_true", help="print every config field and its value, then exit")
    return p


def _deep_update(base: dict, values: dict, section) -> None:
    """Merge `values` into `base` (the dict of dataclass `section`): a nested section (eval.passkey) keeps the
    fields the YAML does not set; any other value, a dict field (data.options) too, is replaced."""
    import dataclasses

    for key, value in values.items():
        child = getattr(section, key, None)
        if isinstance(value, dict) and dataclasses.is_dataclass(child) and isinstance(base.get(key), dict):
            _deep_update(base[key], value, child)
        else:
            base[key] = value


def compose(args, overrides: list[str], presets: Mapping[str, Callable], flag_fields: Mapping[str, str] | None = None):
    cfg = presets[args.preset]()
    if args.config:
        import dataclasses

        import yaml

        try:
            with open(args.config, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{args.config}:{mark.line + 1}:{mark.column + 1}" if mark is not None else args.config
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"--config {where}: not valid YAML ({problem}). Fix: correct the YAML syntax there "
                              "(sections of fields, e.g. 'data:' then '  seq_len: 512')") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--config {args.config}: not a UTF-8 text file. Fix: pass a YAML file of config "
                              "sections") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--config {args.config}: the top level is a {type(data).__name__}, not a mapping of "
                              "config sections. Fix: e.g. 'data:' then '  seq_len: 512'")
        merged = dataclasses.asdict(cfg)
        data = upgrade_keys(type(cfg), data, where=f"--config {args.config}")  # old section names (method:)
        for section, values in data.items():
            if not isinstance(values, dict) or section not in merged:
                raise ConfigError(f"{args.config}: top-level key {section!r} is not a config section "
                                  f"({sorted(merged)}). Fix: nest fields under their section")
            _deep_update(merged[section], values, getattr(cfg, section))
        cfg = from_dict(type(cfg), merged)
    flag_overrides = {field: getattr(args, dest) for dest, field in {**FLAG_FIELDS, **(flag_fields or {})}.items()}
    tokens = []
    for key, value in flag_overrides.items():
        if value is not None:
            tokens += [f"--{key}", str(value)]
    return apply_overrides(cfg, tokens + overrides)


def main(presets: Mapping[str, Callable], default: str, description: str, argv: Sequence[str] | None = None,
         add_flags: Callable[[argparse.ArgumentParser], None] | None = None,
         check: Callable[[argparse.Namespace, object], None] | None = None,
         after: Callable[[argparse.Namespace, object, object], int] | None = None,
         flag_fields: Mapping[str, str] | None = None, run: Callable | None = None,
         eval_aliases: Mapping[str, tuple[str, str | None]] | None = None) -> int:
    """Parse, compose the config, train on Ray, register; then the job's evaluations (its `eval` section:
    checked before training, run on the registered model by framework.eval.after_training), then
    `after(args, cfg, result)` if given. Old evaluation flags (EVAL_FLAG_ALIASES, e.g. --eval-trials) still
    work as aliases of the --eval.* overrides, with a deprecation line.

    add_flags adds recipe-specific flags to the parser. check(args, cfg) vets them before anything
    starts (a ValueError is bad input: exit 2). after runs on the driver once the job has finished
    and registered a model (e.g. an evaluation of it, at ``result.pinned_model_uri``); its return
    value is the exit status. flag_fields maps the dest of a recipe flag to the config field it sets
    (e.g. {"attention": "attention.kind"}); like the common flags, it applies after the preset.
    run(cfg, resume) replaces ``run_job`` for a recipe of several jobs (framework.launch.stages); it
    returns the JobResult whose registered model the recipe reports. eval_aliases: the recipe's own old
    evaluation flags (flag -> (dotted field, fixed value or None)), over EVAL_FLAG_ALIASES (e.g. --eval-lengths
    -> eval.heldout_lm.lengths where the recipe's lengths were those).
    """
    from framework.launch.run import LaunchError, run_job
    from framework.job import BaseModelError
    from framework.tracking.checkpoints import CheckpointError
    from framework.tracking.store import TrackingError

    argv = list(sys.argv[1:] if argv is None else argv)
    aliases = {**EVAL_FLAG_ALIASES, **(eval_aliases or {})}
    parser = build_parser(description, presets, default, aliases)
    if add_flags is not None:
        add_flags(parser)
    try:
        argv = translate_aliases(argv, aliases, own=list(parser._option_string_actions))
    except ConfigError as err:
        parser.error(str(err))
    flags, overrides = split_overrides(argv)
    args = parser.parse_args(flags)
    try:
        cfg = compose(args, overrides, presets, flag_fields)
    except (ConfigError, OSError) as err:
        parser.error(redact_text(str(err)))
    if args.help_config:
        lines = describe(cfg)
        kind = getattr(getattr(cfg, "data", None), "kind", None)
        if kind is not None:  # data.options is a dict: list the keys its kind takes, with types and defaults
            from data_pipelines.factory import describe_options

            lines += describe_options(kind)
        print("\n".join(redact_text(line) for line in lines))
        return 0
    evaluations = getattr(getattr(cfg, "eval", None), "tasks", None)
    if evaluations:  # the eval section's rules that need the rest of the job: before anything starts
        from framework.eval.after_training import check_evaluation

        try:
            check_evaluation(cfg)
        except ValueError as err:
            parser.error(redact_text(str(err)))
    if check is not None:
        try:
            check(args, cfg)
        except ValueError as err:
            parser.error(redact_text(str(err)))
    if args.resume_force and (run is not None or not args.resume):
        parser.error("--resume-force continues a --resume runs:/<id> or auto run of a single-job recipe. "
                     "Fix: add --resume, or drop --resume-force (a recipe of several jobs does not take it)")
    try:
        force = {"resume_force": True} if args.resume_force else {}  # only run_job takes it
        result = (run or run_job)(cfg, resume=args.resume, **force)
    except (ConfigError, TrackingError, CheckpointError, BaseModelError) as err:
        print(f"error: {redact_text(str(err))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except LaunchError as err:
        print(f"error: {redact_text(str(err))}", file=sys.stderr)
        return EXIT_FAILED
    shown_uri = redact_text(result.tracking_uri)  # credentials belong in MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN
    print(f"[longctx] finished {result.steps} steps; MLflow run {result.run_id} in {shown_uri}")
    if result.registered_uri:
        from framework.methods.registry import method_for

        example = method_for(cfg).example_input
        print(f"[longctx] registered model: {result.registered_uri} (version {result.registered_version})")
        print("[longctx] load it with:\n"
              f"    MLFLOW_TRACKING_URI={shown_uri} python -c \"import mlflow; "
              f"m = mlflow.pyfunc.load_model('{result.registered_uri}'); print(m.predict({example}))\"\n"
              "[longctx] or serve it:\n"
              f"    MLFLOW_TRACKING_URI={shown_uri} mlflow models serve -m {result.registered_uri} "
              "--env-manager local -h 127.0.0.1 -p 5001")
    if (evaluations or after is not None) and not result.registered_uri:
        print("[longctx] no model was registered (tracking.register is off), so nothing is evaluated", file=sys.stderr)
        return 0
    if evaluations:  # the job's eval section, on the registered model
        from framework.eval.after_training import run_evaluations

        run_evaluations(cfg, result)
    if after is not None:
        return after(args, cfg, result)
    return 0
