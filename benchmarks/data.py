"""Data pipeline benchmark: prepare vs a Hugging Face `datasets` map + group-texts baseline,
loader throughput from the token store, and peak memory against document length.

    python benchmarks/data.py [--copies 4] [--long-docs 1000000,10000000] [--out benchmarks/results/data.json]

Prints one JSON object. The corpus is the shipped Austen novels cut into ~2,000-character
records (JSON Lines), repeated ``--copies`` times; both pipelines tokenize the same file
with the same (project) tokenizer in the same run. Memory figures come from fresh
processes (``ru_maxrss``), one per document length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_corpus(path: Path, copies: int) -> dict:
    from data_pipelines.corpus import shipped_documents

    records = []
    for doc in shipped_documents():
        buf = ""
        for para in doc["text"].split("\n\n"):
            buf = f"{buf}\n\n{para}" if buf else para
            if len(buf) >= 2000:
                records.append(buf)
                buf = ""
        if buf:
            records.append(buf)
    with open(path, "w", encoding="utf-8") as fh:
        for c in range(copies):
            for i, r in enumerate(records):
                fh.write(json.dumps({"id": f"{c}-{i}", "text": r}) + "\n")
    return {"records": len(records) * copies, "bytes": path.stat().st_size}


def bench_prepare(corpus: Path, work: Path) -> dict:
    from data_pipelines.prepare import prepare

    t0 = time.perf_counter()
    m = prepare([str(corpus)], str(work / "store"), "project", progress=False).manifest
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    again = prepare([str(corpus)], str(work / "store"), "project", progress=False)
    rerun = time.perf_counter() - t1
    return {"seconds": round(dt, 3), "tokens": m["num_tokens"], "tokens_per_s": round(m["num_tokens"] / dt),
            "rerun_status": again.status, "rerun_seconds": round(rerun, 3)}


def bench_baseline(corpus: Path, work: Path, block_size: int) -> dict:
    """The usual Hugging Face recipe: load_dataset('json') -> map(tokenize) -> map(group_texts)."""
    import datasets
    from itertools import chain

    from data_pipelines.tokenizer import load_project_tokenizer

    datasets.disable_progress_bars()
    tok = load_project_tokenizer()
    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(work / "hf_cache"))

    def tokenize(batch):
        out = tok(batch["text"])
        out["input_ids"] = [ids + [tok.eos_token_id] for ids in out["input_ids"]]
        return {"input_ids": out["input_ids"]}

    def group_texts(batch):
        concatenated = list(chain(*batch["input_ids"]))
        total = (len(concatenated) // block_size) * block_size
        return {"input_ids": [concatenated[i:i + block_size] for i in range(0, total, block_size)]}

    tokenized = ds.map(tokenize, batched=True, remove_columns=ds.column_names)
    t_tok = time.perf_counter()
    grouped = tokenized.map(group_texts, batched=True)
    dt = time.perf_counter() - t0
    tokens = sum(len(x) for x in tokenized["input_ids"])  # counted outside the timing
    return {"seconds": round(dt, 3), "tokens": tokens, "tokens_per_s": round(tokens / dt),
            "tokenize_map_seconds": round(t_tok - t0, 3), "blocks": len(grouped), "block_size": block_size}


def bench_loader(store: Path, seq_len: int, batch_size: int, min_seconds: float = 2.0) -> dict:
    from data_pipelines.loader import RankBatches
    from data_pipelines.windows import StoreWindows

    ws = StoreWindows(str(store), seq_len)
    it = iter(RankBatches(ws, batch_size=batch_size, seed=0))
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        next(it)
        n += 1
    dt = time.perf_counter() - t0
    return {"seq_len": seq_len, "batch_size": batch_size, "windows": len(ws), "batches": n,
            "tokens_per_s": round(n * batch_size * seq_len / dt)}


MEMORY_PROBE = r"""
import json, resource, sys, time

def peak_rss_mb():
    # VmHWM: this process's own high-water mark (ru_maxrss would include the parent's RSS at fork).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

from data_pipelines.prepare import prepare
from data_pipelines.windows import StoreWindows
from data_pipelines.loader import RankBatches
src, out, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
m = prepare([src], out, "project", progress=False).manifest
prep = time.perf_counter() - t0
after_prepare = peak_rss_mb()
it = iter(RankBatches(StoreWindows(out, seq_len), batch_size=1, seed=0))
for _ in range(3):
    next(it)
print(json.dumps({"tokens": m["num_tokens"], "documents": m["num_documents"], "prepare_seconds": round(prep, 2),
                  "peak_rss_mb_prepare": round(after_prepare, 1),
                  "peak_rss_mb_with_loading": round(peak_rss_mb(), 1),
                  "load_seq_len": seq_len}))
"""


def write_long_doc(path: Path, target_tokens: int, as_jsonl: bool) -> None:
    """One document of about ``target_tokens`` project tokens (the novels repeated)."""
    from data_pipelines.corpus import shipped_text

    text = shipped_text()
    per_copy = 918_757  # project tokens in one pass over the novels
    copies, frac = divmod(target_tokens / per_copy, 1)
    copies = int(copies)
    with open(path, "w", encoding="utf-8") as fh:
        if as_jsonl:
            fh.write('{"text": ')
            body = (text + "\n\n") * copies + text[: int(len(text) * frac)]
            fh.write(json.dumps(body))
            fh.write("}\n")
        else:
            for _ in range(copies):
                fh.write(text + "\n\n")
            fh.write(text[: int(len(text) * frac)])


def bench_memory(work: Path, lengths: list[int], seq_len: int) -> list[dict]:
    rows = []
    for n in lengths:
        for fmt in ("text", "jsonl"):
            src = work / f"doc-{n}.{'txt' if fmt == 'text' else 'jsonl'}"
            write_long_doc(src, n, fmt == "jsonl")
            proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(src), str(work / f"mem-{n}-{fmt}"), str(seq_len)],
                                  capture_output=True, text=True, cwd=str(REPO))
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row.update(target_tokens=n, format=fmt, file_mb=round(src.stat().st_size / 2**20, 1))
            rows.append(row)
            src.unlink()
    return rows


def bench_passkey(seq_len: int) -> dict:
    from data_pipelines.synthetic import PasskeyTask
    from data_pipelines.tokenizer import load_project_tokenizer

    task = PasskeyTask(load_project_tokenizer(), seq_len=seq_len, num_samples=100)
    task[0]
    t0 = time.perf_counter()
    for i in range(1, 6):
        task[i]
    return {"seq_len": seq_len, "ms_per_sample": round((time.perf_counter() - t0) / 5 * 1000, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4, help="repeats of the novels in the prepare corpus")
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--long-docs", default="1000000,10000000", help="document lengths (tokens) for the memory rows")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = work / "corpus.jsonl"
        info = make_corpus(corpus, args.copies)
        ours = bench_prepare(corpus, work)
        baseline = bench_baseline(corpus, work, args.block_size)
        loader = [bench_loader(work / "store", s, b) for s, b in ((4096, 8), (32768, 1), (1_000_000, 1))
                  if s <= ours["tokens"]]
        memory = bench_memory(work, [int(x) for x in args.long_docs.split(",") if x], 4096)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "corpus": {"copies_of_austen": args.copies, **info, "tokens": ours["tokens"]},
        "prepare": ours,
        "baseline_hf_datasets_map_group_texts": baseline,
        "prepare_speedup_vs_baseline": round(ours["tokens_per_s"] / baseline["tokens_per_s"], 2),
        "loader": loader,
        "memory_vs_document_length": memory,
        "passkey": [bench_passkey(n) for n in (32_768, 1_000_000)],
        "peak_rss_mb_this_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
