"""The `heldout_lm` task of a job's `eval` section (framework.job.evaluation.HeldoutLMEval): a registered CoMeT
model next to its own backbone on windows of held-out text, by length.

The windows come from the held-out tail of the shipped novels: the last ``eval.heldout_lm.fraction`` of their
token stream, the ``split: validation`` of the data kind ``text``, which a job training on that kind's
``split: train`` with the same ``validation_fraction`` never sees. At each length,
``framework.eval.perplexity.compare_with_base`` scores the CoMeT model streamed chunk by chunk and, with
``eval.base.enabled``, its backbone reading each chunk's window alone (``base_window``) and at full context
(``base_full``, up to ``eval.base.max_len``, default its max_position_embeddings).

Written: ``<out_dir>/<name>`` (``{"model", "base", "held_out_fraction", "lengths", "docs_per_length", "table",
"by_length"}``), logged with the metrics ``eval/lm/{comet,base_window,base_full}_ppl_<length>`` to the active
MLflow run (the file under ``eval/lm``).
"""

from __future__ import annotations

METRIC_PREFIX = "eval/lm"
COMPARED = ("comet", "base_window", "base_full")


def held_out_documents(tokenizer, seq_len: int, count: int, fraction: float) -> list:
    """`count` windows of `seq_len` tokens of the held-out end (the last `fraction`) of the shipped novels'
    token stream, as (input_ids, labels) pairs."""
    from framework.config import ConfigError
    from framework.eval.perplexity import PerplexityArgumentError, data_documents

    spec = {"kind": "text", "seq_len": seq_len, "split": "validation", "validation_fraction": fraction}
    try:
        return data_documents(spec, tokenizer, count)
    except PerplexityArgumentError:
        from data_pipelines.factory import build_source

        have = len(build_source(spec, tokenizer))
        raise ConfigError(f"eval.heldout_lm: the held-out tail (the last {fraction} of the novels) holds {have} "
                          f"window(s) of {seq_len} tokens, but eval.heldout_lm.docs={count} asked. Fix: lower "
                          "--eval.heldout_lm.docs or --eval.heldout_lm.lengths") from None


def heldout_lm_report(job, loaded, model_uri: str, out_dir: str, name: str, log=lambda _: None) -> dict:
    """Run the task on `loaded` (a framework.eval.model_uri.LoadedModel of a CoMeT model); write the summary
    to `out_dir`/`name` and log it and the metrics to the active MLflow run. Returns
    {"summary", "metrics", "file"}."""
    from framework.eval.perplexity import compare_with_base
    from framework.eval.reporting import log_to_active_run, write_summary

    ev = job.eval
    task = ev.heldout_lm
    by_length, metrics = {}, {}
    for n in task.lengths:
        docs = held_out_documents(loaded.tokenizer, n, task.docs, task.fraction)
        report = compare_with_base(loaded.model, docs, base_full_max_len=ev.base.max_len, log=log,
                                   with_base=ev.base.enabled)
        by_length[str(n)] = report
        for key in COMPARED:
            ppl = report[key].get("overall_ppl")
            if ppl is not None:
                metrics[f"{METRIC_PREFIX}/{key}_ppl_{n}"] = ppl
    summary = {"model": model_uri, "base": job.model.base, "held_out_fraction": task.fraction,
               "lengths": list(task.lengths), "docs_per_length": task.docs,
               "table": [{"length": int(n), **{f"{k}_ppl": r[k].get("overall_ppl") for k in COMPARED}}
                         for n, r in by_length.items()],
               "by_length": by_length}
    path = write_summary(summary, out_dir, name)
    log_to_active_run(metrics, [path], METRIC_PREFIX)
    return {"summary": summary, "metrics": metrics, "file": path}
