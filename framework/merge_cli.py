"""``longctx merge``: merge fine-tunes of one base model, to a folder or to the MLflow model registry.

    longctx merge --base models:/base@champion models:/math@champion ./code-ft --method ties --density 0.5 \\
        --out models:/merged-math-code
    longctx merge --base ./base ./a ./b --method nan+task_arithmetic --out ./merged
    longctx merge --base ./base ./a ./b --method hi_merging --calibration calib.jsonl --out ./merged

Inputs are save_pretrained folders or registry URIs (models:/<name>@<alias>, models:/<name>/<version>,
runs:/<run_id>), resolved as ``--model`` is everywhere else (framework.eval.model_uri). ``--out`` is a new
folder (the merged safetensors, the base's config and tokenizer, merge_report.json) or models:/<name>: a
new registered version of <name> with ``--alias`` moved to it, logged in an MLflow run whose params are the
method, the inputs and the coefficients. Registry URIs use ``--tracking-uri``, else MLFLOW_TRACKING_URI,
else ``sqlite:///<cwd>/mlflow.db``. Bad input exits with status 2 and one line naming the cause and the fix;
progress goes to stderr, the JSON summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

from framework.merging.methods import METHODS, NAN_NORMS, NAN_SCOPES
from framework.merging.task_vectors import RESCALES

MODELS_PREFIX = "models:/"
_DEFAULT_DENSITY = 0.5  # of ties, dare and dare_ties when --density is not given


def _weights(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers (e.g. 0.6,0.4)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="the fine-tuned models: folders or models:/<name>@<alias> URIs")
    parser.add_argument("--base", required=True, help="the base model they were fine-tuned from (folder or URI)")
    parser.add_argument("--method", required=True, choices=METHODS, help="the merging method")
    parser.add_argument("--density", type=float, default=None,
                        help=f"fraction of each task vector kept by ties/dare (default {_DEFAULT_DENSITY}; "
                             "dare's drop rate is 1 - density)")
    parser.add_argument("--lambda", dest="lam", type=float, default=1.0, help="scale of the merged task vector")
    parser.add_argument("--seed", type=int, default=0, help="seed of dare's drop masks")
    parser.add_argument("--dare-rescale", choices=RESCALES, default="density",
                        help="dare: divide the kept entries by density (the paper), or match the L1 norm (mergekit)")
    parser.add_argument("--weights", type=_weights, default=None,
                        help="one weight per model, comma-separated (default 1 each; not with nan+ methods)")
    parser.add_argument("--nan-scope", choices=NAN_SCOPES, default="global",
                        help="NAN: one coefficient per model (global) or per model and tensor")
    parser.add_argument("--nan-norm", choices=NAN_NORMS, default="task_vector",
                        help="NAN: invert the norm of the task vector (default) or of the fine-tuned weights")
    parser.add_argument("--calibration", default=None, help="hi_merging: JSONL file of {\"text\": ...} records")
    parser.add_argument("--hi-iterations", type=int, default=3, help="hi_merging: at most this many rounds")
    parser.add_argument("--out", required=True, help="a new folder, or models:/<name> to register a new version")
    parser.add_argument("--alias", default="champion", help="alias moved to the new registered version")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for models:/ inputs and outputs")


def _plain_causal_lm_dir(directory: str, label: str) -> str:
    from framework.merging.errors import MergeError
    from framework.models.loading import (is_autoencoder_dir, is_comet_dir, is_compressor_dir, is_hf_dir,
                                          is_poc_dir)

    for check, kind in ((is_comet_dir, "a CoMeT model"), (is_compressor_dir, "a RAM/COMI compressor"),
                        (is_autoencoder_dir, "a context autoencoder"), (is_poc_dir, "a PoC predictor")):
        if check(directory):
            raise MergeError(f"{label} is {kind}; longctx merge merges plain Hugging Face causal LMs. Fix: pass "
                             "save_pretrained folders (or registered versions) of fine-tunes of one causal LM")
    if not is_hf_dir(directory):
        raise MergeError(f"{label} holds no Hugging Face model (config.json with model.safetensors). Fix: pass a "
                         "save_pretrained folder")
    return directory


def _resolve(uri: str, role: str, tracking_uri: str | None, scratch: str) -> str:
    from framework.eval.model_uri import ModelURIError, resolve_model_dir
    from framework.merging.errors import MergeError

    try:
        directory = resolve_model_dir(uri, tracking_uri, scratch=tempfile.mkdtemp(dir=scratch))
    except ModelURIError as err:
        message = str(err).replace("--model ", "", 1)
        raise MergeError(f"{role} {message}") from None
    return _plain_causal_lm_dir(directory, f"{role} {uri}")


def _registered_name(out: str) -> str | None:
    from framework.merging.errors import MergeError

    if not out.startswith(MODELS_PREFIX):
        return None
    name = out[len(MODELS_PREFIX):]
    if not name or not re.fullmatch(r"[\w.\-]+", name):
        raise MergeError(f"--out {out}: a registered output is models:/<name> (letters, digits, '.', '_', '-'; no "
                         "alias or version: the new version gets --alias). Fix: pass e.g. --out models:/merged-qa")
    return name


def _register(out_dir: str, name: str, report, args) -> dict:
    import mlflow

    from framework.tracking.redact import redact_params, redact_text
    from framework.tracking.registry import log_and_register
    from framework.tracking.store import open_store_for_command

    experiment_id = open_store_for_command(args.tracking_uri)
    with mlflow.start_run(run_name=f"merge-{name}", experiment_id=experiment_id) as run:
        mlflow.log_params(redact_params(report.params()))  # model URIs may carry credentials
        mlflow.log_text(report.to_json(), "merge_report.json")
        registered = log_and_register(out_dir, registered_model_name=name, alias=args.alias, run_id=run.info.run_id)
    print(f"[longctx] registered model: {registered.uri} (version {registered.version})", file=sys.stderr)
    return {"registered": registered.uri, "version": registered.version, "run_id": run.info.run_id,
            "tracking_uri": redact_text(mlflow.get_tracking_uri())}


def run(args: argparse.Namespace) -> int:
    from framework.merging import MergeSpec, merge_folders

    name = _registered_name(args.out)
    density = args.density
    if density is None:
        density = 1.0 if args.method.endswith(("task_arithmetic", "hi_merging")) else _DEFAULT_DENSITY
    spec = MergeSpec(method=args.method, density=density, lam=args.lam, seed=args.seed, weights=args.weights,
                     nan_scope=args.nan_scope, nan_norm=args.nan_norm, dare_rescale=args.dare_rescale,
                     extra={"iterations": args.hi_iterations})
    spec.validate(len(args.models))

    def say(message: str) -> None:
        print(f"[longctx] {message}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="longctx-merge-") as scratch:
        base = _resolve(args.base, "--base", args.tracking_uri, scratch)
        models = [_resolve(uri, f"model {i}", args.tracking_uri, scratch) for i, uri in enumerate(args.models)]
        out_dir = os.path.join(scratch, "merged") if name else args.out
        say(f"merging {len(models)} model(s) into {args.out} with {args.method}")
        report = merge_folders(base, models, out_dir, spec, labels=list(args.models), calibration=args.calibration,
                               progress=say)
        report.base = args.base
        summary = {"method": report.method, "base": args.base, "models": list(args.models), "density": report.density,
                   "lambda": report.lam, "seed": report.seed, "weights": report.weights, "tensors": report.tensors}
        with open(os.path.join(out_dir, "merge_report.json"), "w") as fh:  # with the inputs as given
            fh.write(report.to_json())
        if name:
            summary.update(_register(out_dir, name, report, args))
        else:
            summary["out"] = os.path.abspath(out_dir)
            say(f"merged model written to {args.out}")
    print(json.dumps(summary))
    return 0


def _run_with_errors(args: argparse.Namespace) -> int:
    from framework.eval.model_uri import ModelURIError
    from framework.merging.errors import MergeError
    from framework.tracking.registry import RegistryError
    from framework.tracking.store import TrackingError

    try:
        return run(args)
    except (MergeError, ModelURIError, TrackingError, RegistryError) as err:
        print(f"longctx: error: {err}", file=sys.stderr)
        return 2


def add_merge_subcommand(sub) -> None:
    parser = sub.add_parser("merge", help="merge fine-tunes of one base model (task arithmetic, TIES, DARE, NAN, "
                                          "Hi-Merging) into a folder or a registered model",
                            description=__doc__.strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=_run_with_errors)
