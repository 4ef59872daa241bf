"""Context compression for QA at small scale (the study behind ``benchmarks/compression_qa.py``): RAM,
COMI and mean pooling against truncation, from one reader. ``run(CompressionQAStudy(...))`` runs every stage
in this process (the stages are small: a tiny Qwen3 on a CPU) and returns the result record; the benchmark
is a driver that parses flags into a study, calls ``run`` and writes the JSON and the plot.

Presets: ``FULL`` (the defaults, about 30 min on a shared 2-core CPU) and ``QUICK`` (a few steps of
everything, seconds; ``QUICK_SIZES`` are the fields it changes). Flags below are the study's fields
(``--reader-steps`` is ``reader_steps``).

Training: every stage trains through a Lightning ``Trainer`` in this process (``study.accelerator``, one
device, no Ray, no checkpoints or logger; ``framework.studies.compression_qa_training``), the batches of
each step in the curriculum's order. A compressor is the library's ``CompressionQAModule`` (its training
step: mean answer-token cross-entropy + the method's auxiliary loss; its trainable set ``set_trainable``;
its optimizer groups ``optim.param_groups`` and schedule ``optim.lr_scheduler``) at the ratio
curriculum's phase ratio of each step; the reader and the autoencoding stage are small modules of their
own losses with the same optimizer code; the norm is clipped once, by ``TokenLossModule``'s
``configure_gradient_clipping``. A Lightning Callback keeps the per-step record (loss curve, auxiliary
loss, achieved ratios, answer-segment recall, seconds per step).

Tracking: the run is one parent MLflow run (``RUN_NAME``, in ``study.tracking``'s store: by default
MLFLOW_TRACKING_URI, else ``sqlite:///<cwd>/mlflow.db``) with a child run per stage ("reader", each
compressor by its name, "evaluation"), through the stages runner (``framework.launch.stages.Stages.local``);
the parent keeps each stage's result (tag ``longctx.stage.<stage>.result``; the evaluation's, too long for
a tag, on its child run as ``stage_result.json``). ``study.resume`` (``runs:/<parent id>`` or ``auto``, with
``save_dir``) reuses the stages that finished there: a finished reader or compressor is loaded from the
directory its result names (where ``save_dir`` saved it), a finished evaluation's record is returned as it
was; a stage that did not finish runs again from its start.

What it measures (methods.md sections 1, 2 and 6), in one run with one seed, on the synthetic
key-value facts task (``qa_facts``: a context of " key: 12345." facts, a question "What is the value
of key?", the answer " 12345" + eos; the queried fact's tokens are the evidence):

1. Stage 0, the reader. The papers start from a pretrained LLM that can already read; a random tiny
   Qwen3 (hidden 128, 2 layers, 4 heads, on the project tokenizer) cannot, so it is first trained as a
   plain reader of UNCOMPRESSED contexts: the loss is the answer cross-entropy over
   ``[context tokens ; question ; answer]`` (``token_memory`` of the whole context, then
   ``answer_loss``), every decoder weight trains (AdamW, lr ``--reader-lr`` 3e-3, warmup
   ``--reader-warmup`` 50 steps, cosine), ``--reader-steps`` (1500) steps of ``--batch`` (32) samples,
   as a curriculum: equal shares of the steps at each length of ``--reader-curriculum`` (32, 64, 128)
   and then at ``--reader-seq-len`` (256). Values have ``--digits`` (2) digits. Its exact match on
   held-out uncompressed contexts of ``--reader-seq-len`` tokens is reported.
2. Stage 1, three compressors, each built on its own deep copy of that reader (the JSON records a
   hash of the reader's weights and of every compressor's decoder before its first step; they are
   equal) and trained on contexts of ``--seq-len`` (256) tokens at ``--ratio`` (8):
   - ``ram``: RAM, a 1-layer encoder, 16-token segments, Linear alignment, the keep fraction fixed at
     keep_fraction_for_ratio(8, 16) = 1/15 (1 of 16 segments read closely), the contrastive loss on
     (the batch carries evidence_mask);
   - ``comi``: COMI, a 1-layer encoder, Linear alignment, ratio 8, coarse + fine + redundancy;
   - ``mean_pool``: COMI with coarse=False, fine=False (GMSA's fixed groups of 8, mean-pooled);
     otherwise identical to ``comi``.
   The trainable set is the methods' own (``framework.methods.compression.set_trainable`` with
   RAMSettings / COMISettings: encoder, alignment, decoder="full", as the tiny recipes train a random
   base); the optimizer groups are CompressionQAModule's (weight decay only on matrices). Same data in
   the same order, ``--steps`` (400) steps of ``--batch`` samples, lr ``--lr`` (1e-3), warmup
   ``--warmup`` (10% of the steps), cosine to ``--min-lr-ratio`` (0.1) x lr, grad clip 1.0.
   Loss = mean answer-token cross-entropy + RAM's contrastive loss.
   With ``--ratio-curriculum`` (e.g. 1,2,4) the steps are split equally between those ratios and
   then ``--ratio``, lowest first, and a phase at ratio r trains on contexts of ``--seq-len`` * r /
   ``--ratio`` tokens: the memory stays at about ``--seq-len`` / ``--ratio`` slots, the length the
   reader reads, while each slot merges more tokens (at ratio 1 a COMI slot is one aligned encoder
   state; RAM reads every segment closely).
3. Evaluation on ``--eval-samples`` (128) held-out samples (qa_facts seed 12345, ``--seq-len``
   tokens), greedy answers (at most ``--max-new-tokens`` tokens, stopping at eos), exact match after
   SQuAD normalisation (``framework.metrics.qa_scoring.exact_match``), at each ratio of ``--ratios``
   (4 8 16):
   - each compressor's memory at that ratio (``compress(ratio=r)``; RAM: rho = keep_fraction_for_ratio(r, 16));
   - ``truncation``: the stage-0 reader reading the first ceil(n / r) context tokens of a sample with n
     context tokens (the same budget as a compressor at ratio r; the answer may lie anywhere). This is
     truncation to the *requested* ratio's budget; ``longctx eval qa``'s ``truncation/<r>`` keeps as many
     tokens as the compressor *achieved* on each sample instead (docs/benchmarks.md; the key is kept so
     that every result file still renders);
   - ``uncompressed``: the stage-0 reader reading the whole context (a reference; note the reader was
     trained at ``--reader-seq-len``, so at a longer ``--seq-len`` this is also a length-generalisation
     test of the reader).
   For RAM, the answer-segment recall at each ratio: the share of the segments holding evidence tokens
   that were read closely (``Compressed.kept`` vs ``Compressed.positives``), with the chance level of a
   random choice of the same number of segments (the mean kept share k/N).
   Every setting records the achieved ratio (all context tokens / all memory slots).

Claims (booleans under "claims", each with the numbers behind it in "<claim>_detail"; r = --ratio):
``ram_beats_mean_pool_at_<r>x``, ``comi_beats_mean_pool_at_<r>x``, ``ram_beats_truncation_at_<r>x``,
``comi_beats_truncation_at_<r>x`` (strictly higher exact match; the detail gives both scores, the
samples only one of the two answers right, and the binomial standard error of each score), and
``ram_recall_above_chance_at_<r>x``; ``ram_answer_segment_recall_at_<r>x`` is the recall itself (a
number) with its chance level in the detail.

Cost (one torch thread, a shared 2-core CPU at load ~3): about 0.55 s per reader step and 0.75-0.9 s
per compressor step at batch 32, evaluation about 0.16 s per sample; the defaults come to roughly
14 min (reader) + 3 x 5.5 min (compressors) + 0.5 min (evaluation), about 30 min. One torch thread
(``--threads``): on a shared 2-core machine a second thread slows small models down.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from framework.job import TrackingConfig
from framework.metrics.training_curve import summarize_curve  # noqa: F401  (the benchmark re-exports it)

MODELS = ("ram", "comi", "mean_pool")
LABELS = {
    "ram": "RAM: 1-layer encoder, 16-token segments, top-k close reading + query-weighted skimming, contrastive loss",
    "comi": "COMI: 1-layer encoder, marginal-information-gain group sizes (coarse) and merging (fine)",
    "mean_pool": "mean pooling (GMSA): COMI with coarse and fine off, fixed groups of r tokens mean-pooled",
    "truncation": "stage-0 reader on the first ceil(n/r) context tokens",
    "uncompressed": "stage-0 reader on the whole context",
}
EVAL_SEED = 12345  # held-out facts; training uses --seed (reader) and --seed + 1 (compressors)
NUM_EXAMPLES = 3
AE_PROMPT = " Repeat the context:"  # the decoder's prompt in the autoencoding stage (autoencode_steps)
TRAINING_RECORD = "benchmark_training.json"  # a saved compressor's training record, beside its weights
TRAIN_ARGS = ("reader_from", "seq_len", "steps", "batch", "lr", "warmup", "ratio", "ratio_curriculum",
              "encoder_layers", "merge_alpha", "segment_size", "seed", "autoencode_steps")


@dataclass
class CompressionQAStudy:
    """Every setting of one run (the benchmark's flags, field for field; the result's "args" record is
    ``dataclasses.asdict`` of it). ``warmup=None`` becomes 10% of ``steps``; ``ratios`` are sorted and
    deduplicated; ``check()`` raises ValueError on an impossible combination."""

    hidden: int = 128  # width of the tiny Qwen3 (2 layers, 4 heads)
    reader_seq_len: int = 256  # context tokens of stage 0's last phase (the reader)
    reader_curriculum: list = field(default_factory=lambda: [32, 64, 128])  # shorter lengths the reader trains on first
    digits: int = 2  # digits of each fact's value (the answer)
    reader_steps: int = 1500
    reader_queries: int = 1  # questions per context in the reader's training (the asked fact first, then others)
    reader_lr: float = 3e-3
    reader_warmup: int = 50
    seq_len: int = 256  # context tokens of stage 1 and of the evaluation
    steps: int = 400  # training steps of each compressor
    batch: int = 32  # samples per training step (both stages)
    lr: float = 1e-3  # compressor learning rate
    warmup: int | None = None  # compressor warmup steps (None: 10% of steps)
    min_lr_ratio: float = 0.1  # the cosine ends at this fraction of the lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ratio: int = 8  # compression ratio the compressors train at
    ratio_curriculum: list = field(default_factory=list)  # lower ratios trained first, on seq_len * r / ratio tokens
    autoencode_steps: int = 0  # COMI-family autoencoding steps before the QA training (0: skip)
    ratios: list = field(default_factory=lambda: [4, 8, 16])  # evaluation ratios (must hold ratio)
    segment_size: int = 16  # RAM's segment length
    encoder_layers: int = 1
    merge_alpha: float | None = None  # COMI's fine-step relevance weight alpha_m (None: alpha, 1.0)
    models: list = field(default_factory=lambda: list(MODELS))
    eval_samples: int = 128
    eval_batch: int = 32
    max_new_tokens: int = 10  # longest greedy answer (the gold is 6-7 tokens)
    seed: int = 0  # model seed and reader data seed (compressors: seed + 1)
    threads: int = 1  # torch threads
    log_every: int = 100  # progress line on stderr every N steps (0: never)
    quick: bool = False  # the QUICK preset's sizes (a record only)
    save_dir: str | None = None  # save the reader and every compressor under DIR/<name>
    reader_from: str | None = None  # a reader saved by save_dir (DIR/reader): skip stage 0
    compressors_from: str | None = None  # a save_dir of an earlier run: load DIR/<name> instead of training
    accelerator: str = "cpu"  # the Trainer's accelerator for the training stages (the evaluation runs on the CPU)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # the MLflow store of the parent run
    resume: str | None = None  # runs:/<parent id> or auto: skip the stages that finished in that run (needs save_dir)

    def __post_init__(self):
        if self.warmup is None:
            self.warmup = max(1, self.steps // 10)
        self.ratios = sorted(set(self.ratios))

    def check(self) -> None:
        if self.ratio not in self.ratios:
            raise ValueError(f"--ratios {self.ratios} must include the training --ratio {self.ratio}")
        if any(r < 1 or r >= self.ratio for r in self.ratio_curriculum):
            raise ValueError(f"--ratio-curriculum {self.ratio_curriculum}: each ratio must be >= 1 and below "
                             f"--ratio {self.ratio}")
        if min(self.ratios) < 1:
            raise ValueError("--ratios must be >= 1")
        for flag in ("reader_steps", "reader_queries", "steps", "batch", "eval_samples", "eval_batch",
                     "max_new_tokens"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1")
        if self.resume and not self.save_dir:
            raise ValueError("--resume needs --save-dir: a finished stage's weights are loaded from where it saved "
                             "them, and the stages still to run must save theirs")
        unknown = [m for m in self.models if m not in MODELS]
        if unknown:
            raise ValueError(f"unknown compressors {unknown}; use some of {MODELS}")


QUICK_SIZES = dict(reader_steps=3, steps=3, batch=4, eval_samples=8, seq_len=128, reader_seq_len=64,
                   reader_curriculum=[32], reader_warmup=1, warmup=1, eval_batch=8, max_new_tokens=8)
FULL = CompressionQAStudy()
QUICK = CompressionQAStudy(**QUICK_SIZES, log_every=0, quick=True)


# ---------------------------------------------------------------------------------------- helpers
def truncation_budget(context_tokens: int, ratio: float) -> int:
    """Tokens truncation keeps at `ratio`: ceil(n / r), the memory a compressor at ratio r holds."""
    return math.ceil(context_tokens / ratio)


def state_hash(module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and values), 16 hex digits."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def method_settings(name: str, study):
    """(method, the method's settings object) of one compressor; the settings build its CompressorConfig."""
    from framework.methods.comi import COMISettings
    from framework.methods.ram import RAMSettings
    from framework.models.compression.ram import keep_fraction_for_ratio

    common = dict(encoder_layers=study.encoder_layers, alignment="linear", train_encoder=True, decoder="full")
    if name == "ram":
        return "ram", RAMSettings(**common, segment_size=study.segment_size,
                                  keep_fraction=keep_fraction_for_ratio(study.ratio, study.segment_size),
                                  keep_sampling="fixed")
    if name == "comi":
        return "comi", COMISettings(**common, ratio=study.ratio, merge_alpha=study.merge_alpha)
    if name == "mean_pool":
        return "comi", COMISettings(**common, ratio=study.ratio, coarse=False, fine=False)
    raise ValueError(f"unknown compressor {name!r}; use one of {MODELS}")


def curriculum_phase(phases: list, step: int, steps: int):
    """The phase of `step` when `steps` are split equally between `phases`, in order."""
    return phases[min(len(phases) - 1, step * len(phases) // steps)]


def phase_seq_len(study, ratio: int) -> int:
    """Context tokens of a ratio-curriculum phase: the memory keeps the final phase's size, about
    --seq-len / --ratio slots, so a phase at ratio r reads --seq-len * r / --ratio tokens."""
    return max(1, round(study.seq_len * ratio / study.ratio))


def tensors(batch: dict) -> dict:
    """The tensor part of a collated batch (what the model takes)."""
    import torch

    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def make_batch(source, lo: int, hi: int) -> dict:
    from data_pipelines.loader import collate

    return collate([source[i] for i in range(lo, hi)])


def multi_query_loss(reader, batch, source, indices, queries: int):
    """Mean answer-token cross-entropy of the reader over [context ; q1 ; a1 ; ... ; qn ; an], the asked fact
    first and up to ``queries`` - 1 other facts of the same context after it (``QAFacts.qa_pairs``).
    ``batch`` holds the contexts of ``source``'s samples ``indices``."""
    import torch
    import torch.nn.functional as F

    rows, where, targets = [], [], []
    for b, i in enumerate(indices):
        parts = [batch["context_ids"][b][batch["context_mask"][b].bool()]]
        end = int(parts[0].numel())
        for question, answer in source.qa_pairs(i, queries):
            end += len(question)
            where += [(b, end - 1 + k) for k in range(len(answer))]
            end += len(answer)
            parts += [torch.from_numpy(question), torch.from_numpy(answer)]
            targets.append(torch.from_numpy(answer))
        rows.append(torch.cat(parts))
    width = max(int(r.numel()) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :r.numel()], mask[b, :r.numel()] = r, 1
    device = reader.device
    hidden = reader.decoder.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    at = torch.tensor(where, device=device)
    logits = reader.decoder.get_output_embeddings()(hidden[at[:, 0], at[:, 1]]).float()
    return F.cross_entropy(logits, torch.cat(targets).to(device))


# ---------------------------------------------------------------------------------------- evaluation
def setting_row(t, recall: bool = False) -> dict:
    """This benchmark's row of one setting's tally (framework.eval.qa.SettingTotals): exact match with its
    binomial standard error and the per-sample counts the claims need."""
    n = len(t.correct)
    em = sum(t.correct) / max(1, n)
    out = {"exact_match": round(em, 4), "correct": int(sum(t.correct)), "samples": n,
           "exact_match_stderr": round(math.sqrt(em * (1 - em) / max(1, n)), 4),
           "ratio": round(t.context_tokens / max(1, t.memory_slots), 4),
           "context_tokens_total": t.context_tokens, "memory_slots_total": t.memory_slots,
           "seconds": round(t.compress_s + t.decode_s, 2)}
    if recall:
        out["answer_segment_recall"] = round(t.recall_hits / t.recall_total, 4) if t.recall_total else None
        out["answer_segments"] = t.recall_total
        out["chance_kept_share"] = round(sum(t.kept_share) / len(t.kept_share), 4) if t.kept_share else None
    return out


def truncated_memory(reader, ctx, mask, ratio: float):
    """The reader's token memory of the first ceil(n_b / ratio) context tokens of each sample b."""
    budgets = [truncation_budget(int(n), ratio) for n in mask.sum(dim=1)]
    return reader.token_memory(ctx, mask, keep_tokens=budgets)


def answer_texts(model, comp, batch, tokenizer, max_new_tokens: int) -> list:
    ids = model.answer(comp.memory, batch["question_ids"], batch["question_mask"], max_new_tokens,
                       tokenizer.eos_token_id)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def evaluate(reader, compressors: dict, tokenizer, source, n: int, ratios, study, log=None) -> dict:
    """{setting: SettingTotals}; settings "uncompressed", ("truncation", r) and (name, r) for each compressor."""
    import torch

    from framework.eval.qa import SettingTotals

    tallies = {"uncompressed": SettingTotals()}
    for r in ratios:
        tallies["truncation", r] = SettingTotals()
        for name in compressors:
            tallies[name, r] = SettingTotals()

    def run(setting, model, build, batch):
        t0 = time.perf_counter()
        comp = build()
        t1 = time.perf_counter()
        texts = answer_texts(model, comp, batch, tokenizer, study.max_new_tokens)
        tallies[setting].compress_s += t1 - t0
        tallies[setting].decode_s += time.perf_counter() - t1
        tallies[setting].add(comp, texts, batch["answers"])
        return comp

    t_start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, n, study.eval_batch):
            batch = make_batch(source, lo, min(n, lo + study.eval_batch))
            ctx, mask = batch["context_ids"], batch["context_mask"]
            q, q_mask = batch["question_ids"], batch["question_mask"]
            run("uncompressed", reader, lambda: reader.token_memory(ctx, mask), batch)
            for r in ratios:
                run(("truncation", r), reader, lambda: truncated_memory(reader, ctx, mask, r), batch)
                for name, model in compressors.items():
                    is_ram = model.config.method == "ram"
                    evidence = batch["evidence_mask"] if is_ram else None
                    comp = run((name, r), model, lambda: model.compress(ctx, mask, q, q_mask, evidence, ratio=r),
                               batch)
                    if is_ram:
                        tallies[name, r].add_recall(comp, model.config.segment_size)
            if log:
                log(f"eval {min(n, lo + study.eval_batch)}/{n} samples ({time.perf_counter() - t_start:.0f}s)")
    return tallies


def reader_exact_match(reader, tokenizer, source, n: int, study) -> dict:
    import torch

    from framework.eval.qa import SettingTotals

    tally = SettingTotals()
    with torch.no_grad():
        for lo in range(0, n, study.eval_batch):
            batch = make_batch(source, lo, min(n, lo + study.eval_batch))
            comp = reader.token_memory(batch["context_ids"], batch["context_mask"])
            tally.add(comp, answer_texts(reader, comp, batch, tokenizer, study.max_new_tokens), batch["answers"])
    return setting_row(tally)


# ---------------------------------------------------------------------------------------- claims and plot
def claims(table: dict, ratio: int, recall: dict) -> dict:
    """The papers' claims at the trained ratio, as booleans with the numbers behind them."""
    key = str(ratio)
    out = {}
    for a, b in (("ram", "mean_pool"), ("comi", "mean_pool"), ("ram", "truncation"), ("comi", "truncation")):
        if a not in table or b not in table:
            continue
        ta, tb = table[a][key], table[b][key]
        name = f"{a}_beats_{b}_at_{ratio}x"
        ca, cb = ta["_correct"], tb["_correct"]
        out[name] = ta["exact_match"] > tb["exact_match"]
        out[name + "_detail"] = {
            f"{a}_exact_match": ta["exact_match"], f"{b}_exact_match": tb["exact_match"],
            "difference": round(ta["exact_match"] - tb["exact_match"], 4),
            f"only_{a}_right": sum(x and not y for x, y in zip(ca, cb)),
            f"only_{b}_right": sum(y and not x for x, y in zip(ca, cb)),
            "stderr": {a: ta["exact_match_stderr"], b: tb["exact_match_stderr"]}, "samples": ta["samples"],
            "achieved_ratio": {a: ta["ratio"], b: tb["ratio"]}}
    if recall is not None:
        rec, chance = recall.get("answer_segment_recall"), recall.get("chance_kept_share")
        out[f"ram_recall_above_chance_at_{ratio}x"] = rec is not None and chance is not None and rec > chance
        out[f"ram_answer_segment_recall_at_{ratio}x"] = rec
        out[f"ram_answer_segment_recall_at_{ratio}x_detail"] = {
            "recall": rec, "chance_kept_share": chance, "answer_segments": recall.get("answer_segments"),
            "keep_fraction": recall.get("keep_fraction")}
    return out


def make_plot(result: dict, path: str) -> str:
    from framework.eval.plots import ratio_plot

    series = {}
    for name in (*result["compressors"], "truncation"):
        rows = result["settings"][name]
        keys = sorted(rows, key=float)
        series[name] = ([rows[k]["ratio"] for k in keys], [rows[k]["exact_match"] for k in keys])
    a = result["args"]
    refs = {f"uncompressed ({a['seq_len']} tokens)": result["exact_match"]["uncompressed"],
            f"reader at its training length ({a['reader_seq_len']})": result["reader"]["exact_match_at_reader_seq_len"]}
    title = (f"QA facts, {a['eval_samples']} samples of {a['seq_len']} tokens; trained at {a['ratio']}x, "
             f"{a['steps']} steps")
    return ratio_plot(series, path, title=title, xlabel="achieved compression ratio (context tokens / memory slots)",
                      ylabel="exact match", references=refs, ylim=(-0.02, 1.02))



# ---------------------------------------------------------------------------------------- the study
RUN_NAME = "compression_qa"  # the MLflow parent run's name (Stages.open; --resume auto finds the newest)
# fields a resume may change: they set how fast or how loudly a stage runs, not what it learns
RESUME_FREE_FIELDS = ("threads", "log_every", "accelerator")
STAGE_EVAL = "evaluation"


def study_params(study) -> dict:
    """The parent run's params: every field but the tracking settings and --resume."""
    return {k: v for k, v in dataclasses.asdict(study).items() if k not in ("tracking", "resume")}


def load_finished(stage: str, recorded: dict):
    """The weights of a stage that finished in an earlier attempt of this parent run, from the directory its
    recorded result names (saved there with --save-dir)."""
    from framework.models.compression.skeleton import CompressorForQA

    where = recorded.get("dir")
    if not where or not os.path.isdir(where):
        raise ValueError(f"stage {stage} finished in the run being resumed, but its weights are not on disk "
                         f"({where or 'it ran without --save-dir'}). Fix: run again without --resume, or keep the "
                         "--save-dir of the first attempt")
    model = CompressorForQA.from_pretrained(where).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run(study: CompressionQAStudy, log=None) -> dict:
    """Stage 0 (the reader), stage 1 (each compressor from a copy of it), the evaluation, under one parent
    MLflow run (``Stages``; a child run per stage); the result record (everything the benchmark's JSON holds
    except "plot"). With ``study.resume`` the stages that finished in that parent run are not run again."""
    from framework.launch.stages import Stages

    study.check()
    stages = Stages.open(study.tracking, run_name=RUN_NAME, resume=study.resume, params=study_params(study),
                         free_params=RESUME_FREE_FIELDS)
    try:
        result = run_stages(study, stages, log)
    except BaseException:
        stages.fail()
        raise
    stages.finish()
    return result


def run_stages(study: CompressionQAStudy, stages, log=None) -> dict:
    """run()'s stages, each ``stages.local(stage, fn)``: "reader", one per compressor (its name), "evaluation"."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    from data_pipelines import build_source
    from data_pipelines.tokenizer import load_project_tokenizer
    from framework.job import tiny_qwen3
    from framework.methods.base_model import build_base_model
    from framework.models.compression.config import CompressorConfig
    from framework.models.compression.ram import keep_fraction_for_ratio
    from framework.models.compression.skeleton import CompressorForQA
    from framework.studies import compression_qa_training as training

    torch.set_num_threads(study.threads)
    start = time.perf_counter()
    if log is None:
        log = lambda msg: print(f"[compression_qa] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    tok = load_project_tokenizer()
    specs = {
        **{f"reader_train_{n}": {"kind": "qa_facts", "seq_len": n, "seed": study.seed,
                                  "num_samples": study.reader_steps * study.batch}
           for n in study.reader_curriculum + [study.reader_seq_len]},
        "reader_eval": {"kind": "qa_facts", "seq_len": study.reader_seq_len, "seed": EVAL_SEED,
                        "num_samples": study.eval_samples},
        **{f"compressor_train_{r}": {"kind": "qa_facts", "seq_len": phase_seq_len(study, r), "seed": study.seed + 1,
                                     "num_samples": study.steps * study.batch}
           for r in study.ratio_curriculum + [study.ratio]},
        "eval": {"kind": "qa_facts", "seq_len": study.seq_len, "seed": EVAL_SEED, "num_samples": study.eval_samples},
    }
    for spec in specs.values():
        spec["digits"] = study.digits
    sources = {k: build_source(dict(v), tok) for k, v in specs.items()}
    phases = study.reader_curriculum + [study.reader_seq_len]
    trained = {}  # stage -> the model a stage trained (or loaded) in this process

    # ---- stage 0: the reader (a CompressorForQA used only through token_memory / answer_loss / answer)
    base = build_base_model(tiny_qwen3(hidden_size=study.hidden), vocab_size=len(tok), seed=study.seed)
    torch.manual_seed(study.seed)
    reader = CompressorForQA(base, CompressorConfig(method="comi", encoder_layers=study.encoder_layers,
                                                    alignment="linear"))
    reader_init_hash = state_hash(reader.decoder)

    def reader_batch(step):  # the curriculum: an equal share of the steps at each length, shortest first
        key = f"reader_train_{curriculum_phase(phases, step, study.reader_steps)}"
        lo, hi = step * study.batch, (step + 1) * study.batch
        return {**tensors(make_batch(sources[key], lo, hi)), "_source": key, "_indices": list(range(lo, hi))}

    def reader_stage() -> dict:
        model = reader
        if study.reader_from:
            log(f"stage 0: the reader saved at {study.reader_from} (not trained again)")
            model = CompressorForQA.from_pretrained(study.reader_from).eval()
            info = {"loaded_from": os.path.abspath(study.reader_from), "train_seconds": 0.0}
        else:
            log(f"stage 0: reader, {study.reader_steps} steps of {study.batch} contexts of {phases} tokens "
                "(curriculum)")
            module = training.ReaderModule(reader, training.optim_config(study, study.reader_lr, study.reader_warmup),
                                           study.reader_steps, queries=study.reader_queries, sources=sources)
            info = training.fit(module, reader_batch, study.reader_steps, study,
                                training.StepRecord("reader", study.reader_steps, study.log_every))
        for p in model.parameters():
            p.requires_grad_(False)
        t0 = time.perf_counter()
        info["exact_match_at_reader_seq_len_detail"] = reader_exact_match(
            model, tok, sources["reader_eval"], study.eval_samples, study)
        info["exact_match_at_reader_seq_len"] = info["exact_match_at_reader_seq_len_detail"]["exact_match"]
        info["eval_seconds"] = round(time.perf_counter() - t0, 1)
        log(f"reader exact match at {study.reader_seq_len} tokens: {info['exact_match_at_reader_seq_len']:.3f}")
        saved = None
        if study.save_dir:
            saved = os.path.abspath(os.path.join(study.save_dir, "reader"))
            model.save_pretrained(saved, tokenizer=tok)
        trained["reader"] = model
        return {"dir": saved, "hash": state_hash(model.decoder),
                "parameters": sum(p.numel() for p in model.decoder.parameters()), "info": info}

    reader_record = stages.local("reader", reader_stage)
    reader_info = reader_record["info"]

    def the_reader():
        if "reader" not in trained:
            trained["reader"] = load_finished("reader", reader_record)
        return trained["reader"]

    # ---- stage 1: the compressors, each from its own copy of the reader
    ratio_phases = study.ratio_curriculum + [study.ratio]

    def compressor_batch(step):  # the ratio curriculum: equal shares of the steps, lowest ratio first
        r = curriculum_phase(ratio_phases, step, study.steps)
        return tensors(make_batch(sources[f"compressor_train_{r}"], step * study.batch, (step + 1) * study.batch))

    ae_prompt = torch.tensor(tok(AE_PROMPT, add_special_tokens=False)["input_ids"], dtype=torch.long)

    def compressor_stage(name: str) -> dict:
        saved = os.path.join(study.compressors_from, name) if study.compressors_from else None
        if saved:  # trained by an earlier run with --save-dir: load it and its training record
            log(f"stage 1: {name} saved at {saved} (not trained again)")
            trained[name] = CompressorForQA.from_pretrained(saved).eval()
            record = Path(saved) / TRAINING_RECORD
            return {"dir": os.path.abspath(saved),
                    "info": {**(json.loads(record.read_text()) if record.exists() else {}),
                             "loaded_from": os.path.abspath(saved)}}
        method, settings = method_settings(name, study)
        cfg = settings.model_config(method)
        torch.manual_seed(study.seed)
        model = CompressorForQA(copy.deepcopy(the_reader().decoder), cfg)
        info = {"method": method, "config": cfg.to_dict(), "decoder_hash_at_start": state_hash(model.decoder),
                "encoder_hash_at_start": state_hash(model.encoder)}
        optim = training.optim_config(study, study.lr, study.warmup)
        if study.autoencode_steps and method == "comi":
            log(f"stage 1a: {name} autoencodes its contexts, {study.autoencode_steps} steps at ratios {ratio_phases}")
            ae = training.AutoencodeModule(model, optim, study.autoencode_steps, settings, ratio_phases, study.steps,
                                           ae_prompt, seed=study.seed)
            info["autoencode"] = training.fit(  # the QA curriculum's batch (and ratio) of step s * steps / ae steps
                ae, lambda step: compressor_batch(ae.phase_step(step)), study.autoencode_steps, study,
                training.StepRecord(f"{name}/ae", study.autoencode_steps, study.log_every))
        log(f"stage 1: {name}, {study.steps} steps of {study.batch} contexts at ratios {ratio_phases} "
            f"({[phase_seq_len(study, r) for r in ratio_phases]} tokens)")
        module = training.CurriculumCompressionModule(model, optim, study.steps, settings, ratio_phases,
                                                      seed=study.seed)
        record = training.StepRecord(name, study.steps, study.log_every, phases=True)
        info.update(training.fit(module, compressor_batch, study.steps, study, record))
        achieved = record.achieved
        info["ratio_phases"] = [{"ratio": r, "context_tokens": phase_seq_len(study, r),
                                 "steps": len(achieved.get(r, [])),
                                 "achieved_ratio_mean": round(sum(achieved[r]) / len(achieved[r]), 4)
                                 if achieved.get(r) else None} for r in ratio_phases]
        for p in model.parameters():
            p.requires_grad_(False)
        trained[name] = model
        where = None
        if study.save_dir:
            where = os.path.abspath(os.path.join(study.save_dir, name))
            model.save_pretrained(where, tokenizer=tok)
            info["train_args"] = {k: getattr(study, k) for k in TRAIN_ARGS}
            (Path(where) / TRAINING_RECORD).write_text(json.dumps(info, indent=2) + "\n")
        return {"dir": where, "info": info}

    compressor_records = {name: stages.local(name, lambda name=name: compressor_stage(name)) for name in study.models}
    per_model = {name: rec["info"] for name, rec in compressor_records.items()}

    # ---- evaluation
    eval_source = sources["eval"]
    context_tokens = [int(eval_source[i]["context_mask"].sum()) for i in range(study.eval_samples)]

    def evaluation_stage() -> dict:
        reader = the_reader()
        compressors = {name: trained[name] if name in trained else load_finished(name, compressor_records[name])
                       for name in study.models}
        t0 = time.perf_counter()
        log(f"evaluating {study.eval_samples} samples at ratios {study.ratios}")
        tallies = evaluate(reader, compressors, tok, eval_source, study.eval_samples, study.ratios, study, log=log)
        eval_seconds = time.perf_counter() - t0

        settings_table, em = {}, {"uncompressed": setting_row(tallies["uncompressed"])["exact_match"]}
        for name in (*compressors, "truncation"):
            is_ram = name in compressors and compressors[name].config.method == "ram"
            settings_table[name] = {}
            for r in study.ratios:
                row = setting_row(tallies[name, r], recall=is_ram)
                if is_ram:
                    row["keep_fraction"] = round(keep_fraction_for_ratio(r, study.segment_size), 6)
                if name == "truncation":
                    row["budget_rule"] = "ceil(n / r) head tokens of a sample with n context tokens"
                settings_table[name][str(r)] = row
            em[name] = {str(r): settings_table[name][str(r)]["exact_match"] for r in study.ratios}
        with_correct = {name: {str(r): {**settings_table[name][str(r)], "_correct": tallies[name, r].correct}
                               for r in study.ratios} for name in settings_table}
        ram_name = next((n for n, m in compressors.items() if m.config.method == "ram"), None)
        ram_row = settings_table[ram_name][str(study.ratio)] if ram_name else None

        examples = []
        for i in range(min(NUM_EXAMPLES, study.eval_samples)):
            sample = eval_source[i]
            q = tok.decode(sample["question_ids"][sample["question_mask"]].tolist(), skip_special_tokens=True)
            preds = {"uncompressed": tallies["uncompressed"].predictions[i]}
            for name in (*compressors, "truncation"):
                preds[f"{name}/{study.ratio}"] = tallies[name, study.ratio].predictions[i]
            examples.append({"question": q, "answers": list(sample["answers"]), "predictions": preds})
        return {"exact_match": em, "settings": {**settings_table, "uncompressed": setting_row(tallies["uncompressed"])},
                "claims": claims(with_correct, study.ratio, ram_row), "examples": examples,
                "reader_hash_at_end": state_hash(reader.decoder), "eval_seconds": round(eval_seconds, 1)}

    evaluation = stages.local(STAGE_EVAL, evaluation_stage)

    args = dataclasses.asdict(study)
    if args.get("tracking", {}).get("tracking_uri"):
        from framework.tracking.redact import redact_text

        args["tracking"]["tracking_uri"] = redact_text(args["tracking"]["tracking_uri"])
    result = {
        "benchmark": "compression_qa",
        "description": "a random tiny Qwen3 trained as a reader of uncompressed qa_facts contexts, then RAM, COMI "
                       "and mean pooling trained from copies of it at one ratio; greedy exact match on held-out "
                       "samples by ratio, against truncation to the same budget and the uncompressed reader",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": study.threads,
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "python": platform.python_version(), "device": study.accelerator, "load_avg_1m_at_end": None},
        "args": args,
        "compressors": {name: LABELS[name] for name in study.models},
        "baselines": {k: LABELS[k] for k in ("truncation", "uncompressed")},
        "data": {**specs, "eval_context_tokens": context_tokens,
                 "note": "qa_facts: whole ' key: 12345.' facts fill each context up to seq_len tokens"},
        "exact_match": evaluation["exact_match"],
        "settings": evaluation["settings"],
        "reader": {"hash": reader_record["hash"], "hash_at_init": reader_init_hash,
                   "hash_at_end": evaluation["reader_hash_at_end"], "parameters": reader_record["parameters"],
                   **reader_info},
        "per_model": per_model,
        "claims": evaluation["claims"],
        "examples": evaluation["examples"],
        "timing": {"reader_train_seconds": reader_info["train_seconds"],
                   **{f"{n}_train_seconds": per_model[n].get("train_seconds") for n in per_model},
                   "eval_seconds": evaluation["eval_seconds"]},
    }
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result
