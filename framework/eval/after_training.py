"""The evaluations of a job's `eval` section (framework.job.evaluation), run on the driver once the job has
trained and registered its model; ``framework.launch.recipe_cli.main`` calls `run_evaluations` then.

The registered model (``result.pinned_model_uri``, ``models:/<name>/<version>``) is loaded once; the
metrics and files are logged to the training run (``result.run_id``); the JSON summary is written under
``eval.out_dir`` and printed as the last line of stdout.

* ``tasks: [passkey]`` alone: ``passkey_report`` writes ``<out_dir>/passkey.json`` and the heat-map, logs
  ``eval/passkey/*``; the printed summary adds ``train_len`` and ``multiples`` (lengths / data.seq_len).
* with ``perplexity`` or ``base.enabled``: the passkey report goes to ``<out_dir>/<method>/``, the base model
  (full attention) to ``<out_dir>/base/``, and one summary side by side, by length, to
  ``<out_dir>/<summary_file>`` (metrics ``eval/<method>/ppl_<n>``, ``eval/base/ppl_<n>``,
  ``eval/base/passkey/acc_<n>``).
* ``heldout_lm`` (``framework.eval.heldout_lm``, a CoMeT job): the model next to its own backbone on held-out
  windows of the novels, metrics ``eval/lm/{comet,base_window,base_full}_ppl_<n>``; alone, its summary is
  ``<out_dir>/<summary_file>`` and the printed one ``{"model", "mlflow_run_id", "table", "file"}``; with other
  tasks it writes ``<out_dir>/heldout_lm.json`` and the printed summary holds it under ``heldout_lm``.
"""

from __future__ import annotations

import os


def check_evaluation(job) -> None:
    """Everything about `job.eval` that can fail before training: the rules needing the rest of the job and a
    filler file that cannot be read. Raises ValueError (a ConfigError) naming the field and the fix."""
    from framework.config import ConfigError

    job.eval.check_job(job)
    if "heldout_lm" in job.eval.tasks and getattr(job, "METHOD", None) != "comet":
        raise ConfigError(f"eval.tasks={job.eval.tasks}: heldout_lm compares a CoMeT model with its own backbone, "
                          f"and this job trains a {getattr(job, 'METHOD', None) or type(job).__name__} model. "
                          "Fix: --eval.tasks perplexity (or drop heldout_lm)")
    filler = job.eval.passkey.filler
    if "passkey" in job.eval.tasks and filler.startswith("@"):
        from framework.eval.passkey import resolve_filler

        try:
            resolve_filler(filler)
        except ValueError as err:
            raise ConfigError(f"eval.passkey.filler: {err}".replace("--filler", "--eval.passkey.filler")) from None


def _digits(job) -> int:
    digits = job.eval.passkey.digits
    return digits if digits is not None else int((job.data.options or {}).get("digits", 5))


def _title(job) -> str:
    return f"{job.launch.run_name}: trained at {job.data.seq_len} tokens"


def base_evaluation(job, lengths, ppl_lengths, filler, device) -> dict:
    """The base model (job.model.base) with full attention at every length up to eval.base.max_len; the rest
    marked, with the reason. Returns {"summary": ..., "files": [...]}."""
    import torch
    from transformers import AutoModelForCausalLM

    from framework.eval.efficiency import is_oom
    from framework.eval.passkey import evaluate_passkey_full_attention, summarize, write_heatmap
    from framework.eval.perplexity import text_perplexity
    from framework.eval.reporting import progress, write_summary
    from framework.methods.base_model import load_tokenizer

    ev, pk = job.eval, job.eval.passkey
    run_passkey, run_ppl = "passkey" in ev.tasks, "perplexity" in ev.tasks
    every = sorted(set((lengths if run_passkey else []) + (ppl_lengths if run_ppl else [])))
    progress(f"loading the base model {job.model.base}")
    model = AutoModelForCausalLM.from_pretrained(job.model.base, attn_implementation="sdpa").to(device).eval()
    tokenizer = load_tokenizer(job.model)
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    max_len = ev.base.max_len
    if max_len is None:
        max_len = max(every) if device.type == "cuda" else (limit or max(every))
    cells, status, ppl = [], {}, {}
    for n in every:
        if n > max_len:
            status[str(n)] = (f"not run: beyond --base-max-len {max_len}"
                              + (f" and the model's max_position_embeddings {limit}" if limit and n > limit else ""))
            continue
        try:
            if run_passkey and n in lengths:
                cells += evaluate_passkey_full_attention(model, tokenizer, [n], pk.depths, pk.trials, seed=pk.seed,
                                                         digits=_digits(job), filler=filler, log=progress)
            if run_ppl and n in ppl_lengths:
                ppl[str(n)] = text_perplexity(model, tokenizer, n, ev.perplexity.docs, full_attention=True,
                                              log=progress)["overall_ppl"]
            status[str(n)] = "ok" if not limit or n <= limit else f"ran beyond max_position_embeddings {limit}"
        except (RuntimeError, MemoryError) as err:
            if not is_oom(err):
                raise
            cells = [c for c in cells if c.length != n]
            ppl.pop(str(n), None)
            status[str(n)] = "out of memory"
            progress(f"base model at {n} tokens: out of memory")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary = {"model": job.model.base, "max_position_embeddings": limit, "max_len": max_len, "status": status,
               "perplexity": ppl}
    files = []
    if cells:
        out = os.path.join(ev.out_dir, "base")
        summary["passkey"] = summarize(cells, _digits(job))
        summary["passkey"]["heatmap"] = write_heatmap(summary["passkey"], os.path.join(out, "passkey_heatmap.png"),
                                                      f"base model, full attention (trained to {limit})")
        files = [summary["passkey"]["heatmap"], write_summary(summary, out, "passkey.json")]
    del model
    return {"summary": summary, "files": files}


def run_evaluations(job, result) -> dict:
    """Run job.eval.tasks on the registered model of `result` (a JobResult); returns the printed summary."""
    import mlflow

    from framework.eval.model_uri import load_model
    from framework.eval.passkey import passkey_report, resolve_filler
    from framework.eval.perplexity import text_perplexity
    from framework.eval.reporting import log_to_active_run, print_summary, progress, write_summary

    ev, pk, seq_len = job.eval, job.eval.passkey, job.data.seq_len
    run_passkey, run_ppl = "passkey" in ev.tasks, "perplexity" in ev.tasks
    run_heldout = "heldout_lm" in ev.tasks
    lengths = pk.resolved_lengths(seq_len)
    ppl_lengths = ev.perplexity_lengths(seq_len)
    filler = resolve_filler(pk.filler)  # vetted by check_evaluation before training
    method = getattr(job, "METHOD", "") or "model"
    uri = result.pinned_model_uri
    loaded = load_model(uri, tracking_uri=result.tracking_uri)
    mlflow.set_tracking_uri(result.tracking_uri)
    with mlflow.start_run(run_id=result.run_id):
        heldout = None
        if run_heldout:
            from framework.eval.heldout_lm import heldout_lm_report

            alone = not (run_passkey or run_ppl)
            report = heldout_lm_report(job, loaded, uri, ev.out_dir, ev.summary_file if alone else "heldout_lm.json",
                                       log=progress)
            heldout = {"model": uri, "mlflow_run_id": result.run_id, "table": report["summary"]["table"],
                       "file": report["file"]}
            if alone:
                print_summary(heldout)
                return heldout
        if run_passkey and not run_ppl and not ev.base.enabled:  # the passkey report alone
            summary = passkey_report(loaded, lengths, pk.depths, pk.trials, seed=pk.seed, out_dir=ev.out_dir,
                                     filler=filler, digits=_digits(job), batch_size=pk.batch_size, title=_title(job))
            summary["train_len"] = seq_len
            summary["multiples"] = [n // seq_len for n in lengths]
            if heldout:
                summary["heldout_lm"] = heldout
            print_summary(summary)
            return summary
        device = next(loaded.model.parameters()).device
        own_pk = (passkey_report(loaded, lengths, pk.depths, pk.trials, seed=pk.seed,
                                 out_dir=os.path.join(ev.out_dir, method), filler=filler, digits=_digits(job),
                                 batch_size=pk.batch_size, title=_title(job)) if run_passkey else None)
        own_ppl = ({str(n): text_perplexity(loaded.model, loaded.tokenizer, n, ev.perplexity.docs,
                                            log=progress)["overall_ppl"] for n in ppl_lengths} if run_ppl else None)
        del loaded
        base = base_evaluation(job, lengths, ppl_lengths, filler, device) if ev.base.enabled else None
        base_summary = base["summary"] if base else None
        base_pk = (base_summary or {}).get("passkey", {})
        table = []
        for n in sorted(set((lengths if run_passkey else []) + (ppl_lengths if run_ppl else []))):
            key = str(n)
            table.append({
                "length": n,
                f"{method}_passkey": (own_pk or {}).get("accuracy", {}).get(key),
                f"{method}_ppl": (own_ppl or {}).get(key),
                "base_passkey": base_pk.get("accuracy", {}).get(key),
                "base_ppl": (base_summary or {}).get("perplexity", {}).get(key),
                "base_status": (base_summary or {}).get("status", {}).get(key, "not run: --no-base"),
            })
        summary = {
            "model": uri, "train_len": seq_len, "lengths": lengths, "depths": pk.depths, "trials": pk.trials,
            "ppl_docs": ev.perplexity.docs, "filler": pk.filler, "seed": pk.seed, "table": table,
            method: {"passkey": own_pk, "perplexity": own_ppl},
            "base": base_summary,
        }
        if heldout:
            summary["heldout_lm"] = heldout
        path = write_summary(summary, ev.out_dir, ev.summary_file)
        metrics = {f"eval/{method}/ppl_{n}": v for n, v in (own_ppl or {}).items() if v is not None}
        if base_summary:
            metrics.update({f"eval/base/ppl_{n}": v for n, v in base_summary["perplexity"].items() if v is not None})
            metrics.update({f"eval/base/passkey/acc_{n}": v for n, v in base_pk.get("accuracy", {}).items()})
        log_to_active_run(metrics, [path] + (base["files"] if base else []), "eval/summary")
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    print_summary(summary)
    return summary
