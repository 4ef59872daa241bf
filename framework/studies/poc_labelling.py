"""The labels stage of the PoC study (framework.studies.poc): PoC's training labels, measured on Ray, i.e. how
much of a context's uncompressed score survives compressing it.

For every context of a QA source and every compression factor f of a list (COMI: context tokens per
memory slot), the registered compressor builds the memory at f and its own decoder (the reader)
answers from it; the same decoder also answers from the raw context (``token_memory``). With scores
s_full and s_f:

    ratio r = 1 / f  (PoC's r = |compressed| / |original|; r = 1 is the uncompressed reading)
    retention(r) = min(1, s_f / s_full),  and 1 when s_full = 0 (nothing left to lose)

Scores (``score``): ``f1``, the SQuAD token F1 of the greedy answer against the gold answers
(``framework.metrics.qa_scoring``); or ``likelihood``, the per-token geometric-mean probability the
reader gives the gold answer, exp(-mean NLL) (teacher forced), a graded score for readers whose
greedy answers are all wrong, such as a tiny compressor trained for a few minutes.

    labels, reused = generate_labels(LabelJob(compressor="models:/comi-qa-tiny/1", data={...}, path=...))

The work runs as Ray tasks over shards of the contexts (on a cluster, on its workers); the result
is cached in the token-store format (``data_pipelines.poc_label_cache``) under a key of everything it
depends on, so a second call with the same key reads the cache and measures nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

SCORES = ("f1", "likelihood")


class LabelError(ValueError):
    """The labels cannot be measured as asked; the message names the cause and the fix."""


@dataclass
class LabelJob:
    """compressor: models:/<name>/<version> (pinned), runs:/<id> or a compressor directory.
    data: a QA data spec (qa_facts, qa_jsonl). factors: COMI ratios (context tokens per slot) > 1.
    score: f1 | likelihood. path: the cache folder or fsspec URL. shards: Ray tasks."""

    compressor: str
    data: dict
    path: str
    factors: list = field(default_factory=lambda: [2, 4, 8, 16, 32])
    score: str = "f1"
    batch_size: int = 16
    max_new_tokens: int = 12
    shards: int = 2
    tracking_uri: str | None = None
    storage_options: dict | None = None

    def check(self) -> None:
        if self.score not in SCORES:
            raise LabelError(f"labels.score={self.score!r} is not one of {SCORES}. Fix: --labels.score f1")
        bad = [f for f in self.factors if not isinstance(f, int) or isinstance(f, bool) or f < 2]
        if not self.factors or bad or len(set(self.factors)) != len(self.factors):
            raise LabelError(f"labels.factors={self.factors!r}: need distinct whole compression factors >= 2 (context "
                             "tokens per memory slot; r = 1/f). Fix: --labels.factors '[2, 4, 8, 16, 32]'")
        if self.data.get("kind") not in ("qa_facts", "qa_jsonl"):
            raise LabelError(f"labels.data kind={self.data.get('kind')!r}: labels are measured on question-answer "
                             "samples. Fix: {\"kind\": \"qa_facts\", ...} or {\"kind\": \"qa_jsonl\", \"path\": ...}")
        for name in ("batch_size", "max_new_tokens", "shards"):
            if getattr(self, name) < 1:
                raise LabelError(f"labels.{name}={getattr(self, name)} must be >= 1. Fix: e.g. --labels.{name} 2")

    @property
    def ratios(self) -> list[float]:
        """PoC's ratios of the label columns, ascending: 1/f for every factor, then 1.0 (uncompressed)."""
        return sorted(1.0 / f for f in self.factors) + [1.0]


def retention_from_scores(scores: np.ndarray, factors) -> np.ndarray:
    """[N, R] retention at ``ratios`` order (ascending r, then r = 1) from [N, 1 + F] scores
    (column 0 uncompressed, column 1 + j factor j)."""
    scores = np.asarray(scores, dtype=np.float64)
    full = scores[:, :1]
    with np.errstate(divide="ignore", invalid="ignore"):
        kept = np.where(full > 0, np.minimum(1.0, scores[:, 1:] / np.where(full > 0, full, 1.0)), 1.0)
    order = np.argsort([1.0 / f for f in factors])
    return np.concatenate([kept[:, order], np.ones((scores.shape[0], 1))], axis=1)


def compressor_identity(uri: str, tracking_uri: str | None) -> str:
    """What pins the compressor: models:/<name>/<version> for a registry URI, else the directory and
    the hash of its weights (an alias may move on; a pinned version does not)."""
    import os

    from data_pipelines.store import file_sha256

    if uri.startswith("models:/") and "@" in uri:
        from mlflow import MlflowClient

        from framework.job import TrackingConfig
        from framework.tracking.store import resolve_tracking_uri

        name, alias = uri[len("models:/"):].split("@", 1)
        version = MlflowClient(resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri))) \
            .get_model_version_by_alias(name, alias).version
        return f"models:/{name}/{version}"
    if uri.startswith(("models:/", "runs:/")):
        return uri
    if uri.startswith("dir:"):  # pinned before: hash the weights again (they may have changed since)
        uri = uri[len("dir:"):].rsplit("#", 1)[0]
    from framework.models.compression.skeleton import COMPRESSOR_WEIGHTS

    weights = os.path.join(uri, COMPRESSOR_WEIGHTS)
    if not os.path.isfile(weights):
        raise LabelError(f"labels.compressor={uri!r} is not a compressor directory ({COMPRESSOR_WEIGHTS} missing). "
                         "Fix: pass a RAM/COMI model: models:/<name>/<version>, runs:/<id> or its save directory")
    return f"dir:{os.path.abspath(uri)}#{file_sha256(weights)[:16]}"


def _compressor_files(uri: str, tracking_uri: str | None):
    """The compressor's local directory and its tokenizer (no weights are loaded)."""
    from transformers import AutoTokenizer

    from framework.eval.model_uri import resolve_model_dir

    if uri.startswith("dir:"):  # a pinned directory (compressor_identity): the path before the weights' hash
        uri = uri[len("dir:"):].rsplit("#", 1)[0]
    directory = resolve_model_dir(uri, tracking_uri)
    tok = AutoTokenizer.from_pretrained(directory)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return directory, tok


def _load_compressor(uri: str, tracking_uri: str | None):
    import torch

    from framework.models.compression.skeleton import CompressorForQA

    directory, tok = _compressor_files(uri, tracking_uri)
    model = CompressorForQA.from_pretrained(directory).eval()
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), tok, directory


def _answer_likelihood(model, memory, batch) -> list[float]:
    """exp(-mean NLL) of each sample's gold answer tokens after [memory ; question] (teacher forced)."""
    import torch
    import torch.nn.functional as F

    from framework.models.compression.skeleton import _right_pad, _valid

    seqs, spans = [], []
    for b, mem in enumerate(memory):
        q = _valid(batch["question_ids"][b], batch["question_mask"][b])
        a = _valid(batch["answer_ids"][b], batch["answer_mask"][b])
        seqs.append(torch.cat([mem, model.decoder_embed(q), model.decoder_embed(a)]))
        start = mem.shape[0] + q.numel()
        spans.append((start, a))
    x, mask = _right_pad(seqs)
    hidden = model.decoder.base_model(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state
    out = []
    for b, (start, a) in enumerate(spans):
        logits = model.decoder.get_output_embeddings()(hidden[b, start - 1:start - 1 + a.numel()]).float()
        out.append(math.exp(-float(F.cross_entropy(logits, a, reduction="mean"))))
    return out


def score_batch(model, tokenizer, batch: dict, factors, score: str, max_new_tokens: int) -> np.ndarray:
    """[B, 1 + F] scores of one batch: uncompressed, then every factor."""
    import torch

    from framework.metrics.qa_scoring import f1

    batch = {k: (v.to(model.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    cols = []
    with torch.no_grad():
        memories = [model.token_memory(batch["context_ids"], batch["context_mask"]).memory]
        for f in factors:
            memories.append(model.compress(batch["context_ids"], batch["context_mask"], batch["question_ids"],
                                           batch["question_mask"], ratio=f).memory)
        for memory in memories:
            if score == "likelihood":
                cols.append(_answer_likelihood(model, memory, batch))
            else:
                answers = model.answer(memory, batch["question_ids"], batch["question_mask"], max_new_tokens,
                                       tokenizer.eos_token_id)
                cols.append([f1(tokenizer.decode(a, skip_special_tokens=True), gold)
                             for a, gold in zip(answers, batch["answers"])])
    return np.asarray(cols, dtype=np.float64).T


def score_shard(job: dict, indices: list[int]) -> tuple[list[int], np.ndarray, list[np.ndarray]]:
    """The scores and context token ids of the contexts ``indices`` (what one Ray task measures)."""
    import torch

    from data_pipelines import build_source
    from data_pipelines.loader import collate

    torch.set_num_threads(1)
    job = LabelJob(**job)
    model, tok, _ = _load_compressor(job.compressor, job.tracking_uri)
    source = build_source(job.data, tok)
    rows, contexts = [], []
    for start in range(0, len(indices), job.batch_size):
        samples = [source[i] for i in indices[start:start + job.batch_size]]
        rows.append(score_batch(model, tok, collate(samples), job.factors, job.score, job.max_new_tokens))
        contexts += [s["context_ids"][s["context_mask"]].numpy().astype(np.int64) for s in samples]
    return indices, np.concatenate(rows), contexts


def label_key(job: LabelJob, compressor: str, tokenizer_fingerprint: str) -> dict:
    """What the labels depend on; its hash is the cache key."""
    from data_pipelines.factory import validate_spec

    return {"compressor": compressor, "data": validate_spec(job.data), "factors": list(job.factors),
            "ratios": job.ratios, "score": job.score, "max_new_tokens": job.max_new_tokens if job.score == "f1" else None,
            "tokenizer": tokenizer_fingerprint, "retention": "min(1, s_r / s_full); 1 when s_full = 0"}


def generate_labels(job: LabelJob, log=print):
    """The label cache of ``job``: reused when a complete one of the same key is at ``job.path``,
    else measured on Ray (tasks over shards of the contexts) and written. Returns (LabelCache, reused)."""
    import ray

    from data_pipelines import build_source
    from data_pipelines.corpus import tokenizer_fingerprint
    from data_pipelines.poc_label_cache import cache_key, cache_state, check_replaceable, open_cache, write_cache
    from framework.launch.run import connect_ray

    job.check()
    pinned = compressor_identity(job.compressor, job.tracking_uri)
    job.compressor = pinned
    _, tok = _compressor_files(pinned, job.tracking_uri)  # the driver needs the tokenizer only
    payload = label_key(job, pinned, tokenizer_fingerprint(tok))
    key = cache_key(payload)
    state = cache_state(job.path, key, job.storage_options)
    if state == "complete":
        log(f"[longctx] labels: reusing the complete cache at {job.path} (key {key[:12]}); nothing is measured")
        return open_cache(job.path, key, job.storage_options), True
    if state != "missing":
        check_replaceable(job.path, job.storage_options)
        log(f"[longctx] labels: the cache at {job.path} is {state.replace('_', ' ')}; measuring the labels again")
    n = len(build_source(job.data, tok))
    connect_ray()
    shards = [list(range(n))[i::job.shards] for i in range(min(job.shards, n))]
    log(f"[longctx] labels: {n} contexts x {len(job.factors)} factors {job.factors} + uncompressed, score "
        f"{job.score}, compressor {pinned}, in {len(shards)} Ray task(s)")
    task = ray.remote(num_cpus=1)(score_shard)
    results = ray.get([task.remote(asdict(job), s) for s in shards])
    scores = np.zeros((n, 1 + len(job.factors)))
    contexts = [None] * n
    for indices, rows, ctxs in results:
        scores[indices] = rows
        for i, c in zip(indices, ctxs):
            contexts[i] = c
    retention = retention_from_scores(scores, job.factors)
    info = {"compressor": pinned, "data": payload["data"], "factors": list(job.factors), "score": job.score,
            "retention_rule": payload["retention"], "uncompressed_zero": int((scores[:, 0] <= 0).sum()),
            "mean_uncompressed_score": float(scores[:, 0].mean())}
    cache = write_cache(job.path, key, contexts, scores, retention, job.ratios, info, tok, job.storage_options)
    log(f"[longctx] labels: wrote {n} contexts to {job.path} (key {key[:12]})")
    return cache, False


__all__ = ["LabelError", "LabelJob", "generate_labels", "retention_from_scores", "score_batch"]
