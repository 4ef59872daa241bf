"""The offline prepare step: sources -> token store (see ``store.py`` for the layout).

    from data_pipelines.prepare import prepare
    result = prepare(["s3://bucket/raw/*.jsonl.zst"], "s3://bucket/tokens/v1", tokenizer="project")

- **Idempotent.** The manifest records the sources (URI, size, filesystem key, sha256),
  the tokenizer (a hash of its full serialisation) and the parameters. A rerun with the same
  inputs finds a complete manifest and does nothing; if only the file keys changed (a copy,
  a touch) it compares content hashes before deciding.
- **Resumable.** ``progress.json`` is checkpointed at record boundaries (every
  ``checkpoint_every_s`` seconds and after each source). A rerun after a crash truncates the
  shards and index back to the checkpoint and continues from the next record.
- **Bad records.** ``on_bad_record="fail"`` (default) stops at the first one with
  ``file:line: reason``; ``"skip"`` skips it, counts it per reason and keeps the first
  examples in the manifest, per source and in total.
- **Bounded memory.** Text is read in blocks and tokenized in batches of about
  ``batch_chars`` characters; a plain-text document of any length streams through in pieces.
- **Atomic.** A folder being (re)built has no manifest: an existing one is removed before any
  shard changes, and the new one is written last. Remote outputs (``s3://``, ``memory://``...)
  are built in a local staging folder (which is what a crashed build resumes from) and uploaded
  when complete: the old remote manifest is removed first, the new one is put last, and
  ``progress.json`` is kept until the upload is done, so a failed upload resumes instead of
  rebuilding. A complete store whose files do not have the sizes its manifest implies is refused
  (or rebuilt with ``overwrite=True``).
- **One builder per folder.** The build holds ``prepare.lock`` in its folder (see
  ``build_lock.py``): when every rank prepares the same store, one builds it and the others
  wait, then find it up to date.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import fsspec
import numpy as np

from data_pipelines.errors import BadRecordError, DataConfigError, require
from data_pipelines.sources import Bad, Piece, SourceFile, content_hash, expand_sources, read_source
from data_pipelines.build_lock import build_lock
from data_pipelines.store import (INDEX, LOCK, MANIFEST, PROGRESS, STORE_FORMAT, STORE_VERSION, StoreWriter,
                                  file_sha256, token_dtype, write_json_atomic)
from data_pipelines.store_integrity import damaged, expected_files, size_problems
from data_pipelines.tokenize import describe_tokenizer, encode_chats, encode_texts, require_fast

log = logging.getLogger(__name__)
MAX_EXAMPLES = 20
DEFAULT_SHARD_TOKENS = 1 << 28  # 512 MiB of uint16 tokens


@dataclass
class PrepareResult:
    status: str  # "built", "resumed" or "up_to_date"
    out: str
    manifest: dict


def _on_checkpoint(progress: dict) -> None:
    """Called after every checkpoint; tests replace it to simulate a crash."""


def prepare(sources: Sequence[str] | str, out: str, tokenizer=None, *, field: str = "text", format: str = "auto",
            chat: bool = False, on_bad_record: str = "fail", append_eos: bool = True,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, batch_chars: int = 1 << 20, piece_chars: int = 1 << 16,
            checkpoint_every_s: float = 30.0, progress: bool = True, overwrite: bool = False,
            staging: str | None = None, storage_options: dict | None = None) -> PrepareResult:
    """Tokenize ``sources`` into a token store at ``out``. See the module docstring."""
    require(on_bad_record in ("fail", "skip"),
            f"on_bad_record={on_bad_record!r} is unknown: use 'fail' (stop at the first bad record) or 'skip' (count and skip).")
    require(isinstance(field, str) and field, f"field={field!r} must name the record field holding the text, e.g. 'text'.")
    require(isinstance(shard_tokens, int) and shard_tokens >= 1024,
            f"shard_tokens={shard_tokens!r} must be an int >= 1024 (tokens per shard file). The default is {DEFAULT_SHARD_TOKENS}.")
    require(batch_chars > 0 and piece_chars > 0, "batch_chars and piece_chars must be positive.")
    if chat and field == "text":
        field = "messages"
    tok = _resolve_tokenizer(tokenizer)
    srcs = expand_sources(sources, format, storage_options, chat=chat)
    dtype = token_dtype(len(tok))
    params = {"field": field, "format": format, "chat": chat, "append_eos": append_eos, "shard_tokens": shard_tokens,
              "on_bad_record": on_bad_record, "piece_chars": piece_chars, "dtype": dtype.str}
    tok_info = describe_tokenizer(tok)
    identities = [src.identity() for src in srcs]
    inputs_key = _inputs_key(srcs, identities, tok_info, params)

    out = str(out).rstrip("/")
    out_fs, out_root = fsspec.core.url_to_fs(out, **(storage_options or {}))
    remote = not _is_local(out_fs)
    root = Path(staging or _default_staging(inputs_key)) if remote else Path(out_root)
    require(not root.exists() or root.is_dir(),
            f"{str(root)!r} is a file, but a token store is built in a folder there: move the file or choose another --out.")
    done = _finished_store(out, out_fs, out_root, srcs, identities, tok_info, params, overwrite, quiet=True)
    if done is not None:
        return done
    ours = any((root / name).exists() for name in (MANIFEST, PROGRESS, LOCK))  # a folder prepare has built into
    if not remote and root.exists() and any(root.iterdir()) and not ours and not overwrite:
        raise DataConfigError(f"{out!r} exists and is not a token store: choose an empty or new --out folder, or pass --overwrite.")
    with build_lock(root, out):  # one builder per folder; the others wait here, then find the store up to date
        done = _finished_store(out, out_fs, out_root, srcs, identities, tok_info, params, overwrite)
        if done is not None:
            return done
        # From here until the new manifest is written, the folder is a build in progress: never "complete".
        if remote:
            (root / MANIFEST).unlink(missing_ok=True)  # a finished build whose upload failed resumes from progress.json
        elif (root / MANIFEST).exists():
            _wipe(root)  # --overwrite of a finished store (other inputs, or damaged): the manifest goes first
        state = _read_json_local(root / PROGRESS)
        status = "built"
        if state is not None and state.get("inputs_key") == inputs_key:
            status = "resumed"
            log.info("resuming an interrupted build of %s from %d tokens", out, state["num_tokens"])
        else:
            if state is not None:
                log.warning("the inputs changed since the interrupted build in %s; starting over", root)
            _wipe(root)
            state = {"inputs_key": inputs_key, "source_index": 0, "records_done": 0, "num_tokens": 0, "num_documents": 0,
                     "finished_sources": [], "current": None}
        write_json_atomic(root / PROGRESS, state)  # marks the folder as a build in progress, ours to resume or redo

        writer = StoreWriter(root, dtype, shard_tokens, with_mask=chat)
        writer.truncate(state["num_tokens"], state["num_documents"])
        builder = _Builder(tok, writer, state, root, params, batch_chars, piece_chars, checkpoint_every_s, progress, identities)
        builder.run(srcs)
        shards = writer.close()
        finished = state["finished_sources"]
        skipped: dict[str, int] = {}
        for entry in finished:
            for reason, n in entry["skipped"].items():
                skipped[reason] = skipped.get(reason, 0) + n
        manifest = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "complete": True,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "inputs_key": inputs_key,
            "tokenizer": tok_info,
            "params": params,
            "dtype": dtype.str,
            "shard_tokens": shard_tokens,
            "has_loss_mask": chat,
            "num_tokens": writer.num_tokens,
            "num_documents": writer.num_documents,
            "index": INDEX,
            "index_sha256": file_sha256(root / INDEX),
            "shards": shards,
            "sources": finished,
            "records": sum(e["records"] for e in finished),
            "skipped": skipped,
        }
        write_json_atomic(root / MANIFEST, manifest)  # last: "complete" only over finished shards
        if remote:
            _upload(root, out_fs, out_root)
        (root / PROGRESS).unlink(missing_ok=True)  # only now: a failed upload resumes from it instead of rebuilding
        return PrepareResult(status, out, manifest)


class _Builder:
    def __init__(self, tok, writer: StoreWriter, state: dict, root: Path, params: dict, batch_chars: int,
                 piece_chars: int, checkpoint_every_s: float, progress: bool, identities: list):
        self.tok, self.writer, self.state, self.root, self.params = tok, writer, state, root, params
        self.batch_chars, self.piece_chars, self.every = batch_chars, piece_chars, checkpoint_every_s
        self.identities = identities
        self.fail = params["on_bad_record"] == "fail"
        self.chat = params["chat"]
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        self.in_flight: tuple[Future, list[Piece]] | None = None
        self.progress = progress
        self.last_checkpoint = time.monotonic()
        self.doc_open = False

    def run(self, srcs: list[SourceFile]) -> None:
        bar = _progress_bar(srcs, self.identities, self.progress)
        try:
            for si in range(self.state["source_index"], len(srcs)):
                self._run_source(si, srcs[si], bar)
        finally:
            self.pool.shutdown(wait=True)
            if bar is not None:
                bar.close()

    def _run_source(self, si: int, src: SourceFile, bar) -> None:
        stats = self.state["current"] or {
            "uri": src.uri, "format": src.format, "compression": src.compression, **self.identities[si],
            "sha256": None, "records": 0, "documents": 0, "tokens": 0, "skipped": {}, "skipped_examples": [],
        }
        self.state["current"] = stats
        skip = self.state["records_done"]
        hashers: list = []
        batch: list[Piece] = []
        chars = 0
        seen_bytes = 0
        self.source_id, self.stats, self.last_line = si, stats, skip
        for event in read_source(src, self.params["field"], skip=skip, piece_chars=self.piece_chars, hasher=hashers):
            if isinstance(event, Bad):
                if self.fail:
                    raise BadRecordError(src.uri, event.line, event.reason, event.detail)
                if event.rollback:
                    self._drain(batch)
                    batch, chars = [], 0
                    self.writer.rollback_document()
                    self.doc_open = False
                stats["skipped"][event.reason] = stats["skipped"].get(event.reason, 0) + 1
                if len(stats["skipped_examples"]) < MAX_EXAMPLES:
                    stats["skipped_examples"].append({"line": event.line, "reason": event.reason, "detail": event.detail})
                stats["records"] += 1
                if event.line is not None:
                    self.last_line = max(self.last_line, event.line)
                continue
            batch.append(event)
            chars += len(event.text) if event.text is not None else sum(len(m["content"]) for m in event.messages)
            if event.last:
                stats["records"] += 1
            if chars >= self.batch_chars or len(batch) >= 8192:
                self._submit(batch)
                batch, chars = [], 0
                if bar is not None and hashers:
                    bar.update(hashers[0].bytes_read - seen_bytes)
                    seen_bytes = hashers[0].bytes_read
                    bar.set_postfix_str(f"{self.writer.num_tokens:,} tokens", refresh=False)
                if time.monotonic() - self.last_checkpoint >= self.every:
                    self._write_in_flight()  # everything read so far is now written
                    if not self.doc_open:
                        self._checkpoint(si, self.last_line)
        self._drain(batch)
        if bar is not None and hashers:
            bar.update(hashers[0].bytes_read - seen_bytes)
        stats["sha256"] = hashers[0].sha256.hexdigest() if hashers else content_hash(src)
        if src.format == "datasets" and stats["sha256"] is None:
            stats["sha256_note"] = "streamed from the Hub: no content hash"
        self.state["finished_sources"].append(stats)
        self.state["current"] = None
        self._checkpoint(si + 1, 0)

    # -- tokenize and write ------------------------------------------------------------------
    def _encode(self, batch: list[Piece]):
        dtype = self.writer.dtype
        if self.chat:
            return encode_chats(self.tok, [p.messages for p in batch], dtype)
        return [(ids, None) for ids in encode_texts(self.tok, [p.text for p in batch], dtype)]

    def _submit(self, batch: list[Piece]) -> None:
        """Tokenize ``batch`` in the background; write the previous batch meanwhile."""
        future = self.pool.submit(self._encode, batch)
        self._write_in_flight()
        self.in_flight = (future, batch)

    def _drain(self, batch: list[Piece]) -> None:
        if batch:
            self._submit(batch)
        self._write_in_flight()

    def _write_in_flight(self) -> None:
        if self.in_flight is None:
            return
        future, batch = self.in_flight
        self.in_flight = None
        eos = self.tok.eos_token_id
        for piece, (ids, mask) in zip(batch, future.result()):
            self.writer.append(ids, mask)
            self.doc_open = True
            if piece.last:
                if self.params["append_eos"] and eos is not None:
                    self.writer.append(np.asarray([eos]), np.zeros(1, np.uint8) if mask is not None else None)
                self.stats["tokens"] += self.writer.num_tokens - self.writer.document_start
                self.writer.end_document(self.source_id)
                self.stats["documents"] += 1
                self.doc_open = False
                self.last_line = max(self.last_line, piece.line)

    def _checkpoint(self, source_index: int, records_done: int) -> None:
        self._write_in_flight()
        self.writer.flush()
        self.state.update(source_index=source_index, records_done=records_done,
                          num_tokens=self.writer.num_tokens, num_documents=self.writer.num_documents)
        write_json_atomic(self.root / PROGRESS, self.state)
        self.last_checkpoint = time.monotonic()
        _on_checkpoint(self.state)


# -- helpers -------------------------------------------------------------------------------------
def _resolve_tokenizer(tokenizer):
    from data_pipelines.tokenizer import load_tokenizer

    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        try:
            tok = load_tokenizer(None if tokenizer is None else str(tokenizer))
        except (OSError, ValueError) as exc:
            raise DataConfigError(
                f"tokenizer {str(tokenizer)!r} cannot be loaded ({exc}). Pass a local tokenizer folder, a model id in the "
                "local Hugging Face cache, or 'project' for the shipped tokenizer."
            ) from None
    else:
        tok = tokenizer
    require_fast(tok)
    return tok


def _inputs_key(srcs, identities, tok_info, params) -> str:
    payload = {"sources": [[s.uri, i] for s, i in zip(srcs, identities)], "tokenizer": tok_info["fingerprint"], "params": params}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _finished_store(out: str, out_fs, out_root: str, srcs, identities, tok_info, params,
                    overwrite: bool, quiet: bool = False) -> PrepareResult | None:
    """The result for a complete, undamaged store of these inputs at ``out``, else None (build it).

    Raises when ``out`` holds a store of other inputs, or a damaged one, unless ``overwrite``."""
    existing = _read_json(out_fs, f"{out_root}/{MANIFEST}")
    if existing is None or not existing.get("complete"):
        return None
    if not _same_inputs(existing, srcs, identities, tok_info, params):
        if not overwrite:
            raise DataConfigError(
                f"{out!r} already holds a token store built from other inputs ({_difference(existing, srcs, tok_info, params)}). "
                "Write to another --out folder, or pass --overwrite to rebuild it."
            )
        return None
    problems = size_problems(out_fs, out_root, existing)
    if problems:
        if not overwrite:
            raise damaged(out, problems)
        if not quiet:
            log.warning("token store %s does not match its manifest (%s); rebuilding it", out, problems[0])
        return None
    log.info("token store %s is up to date; nothing to do", out)
    return PrepareResult("up_to_date", out, existing)


def _same_inputs(manifest: dict, srcs, identities, tok_info, params) -> bool:
    if manifest.get("tokenizer", {}).get("fingerprint") != tok_info["fingerprint"] or manifest.get("params") != params:
        return False
    recorded = manifest.get("sources", [])
    if [e["uri"] for e in recorded] != [s.uri for s in srcs]:
        return False
    for entry, src, ident in zip(recorded, srcs, identities):
        if entry.get("size") == ident["size"] and entry.get("ukey") == ident["ukey"]:
            continue
        if entry.get("sha256") is None or content_hash(src) != entry["sha256"]:
            return False
    return True


def _difference(manifest: dict, srcs, tok_info, params) -> str:
    if manifest.get("tokenizer", {}).get("fingerprint") != tok_info["fingerprint"]:
        return f"tokenizer {manifest.get('tokenizer', {}).get('name_or_path')!r} vs {tok_info['name_or_path']!r}"
    if manifest.get("params") != params:
        changed = sorted(k for k in set(params) | set(manifest.get("params", {}))
                         if params.get(k) != manifest.get("params", {}).get(k))
        return "parameters differ: " + ", ".join(changed)
    recorded = [e["uri"] for e in manifest.get("sources", [])]
    if recorded != [s.uri for s in srcs]:
        return f"sources {recorded} vs {[s.uri for s in srcs]}"
    return "source contents changed"


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _read_json(fs, path: str) -> dict | None:
    try:
        if not fs.exists(path):
            return None
        with fs.open(path, "r") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError):
        return None


def _read_json_local(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _wipe(root: Path) -> None:
    for name in (MANIFEST, PROGRESS, INDEX):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / "shards", ignore_errors=True)


def _default_staging(inputs_key: str) -> str:
    base = os.environ.get("LONGCTX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "longctx"))
    return os.path.join(base, "prepare", inputs_key[:24])


def _upload(root: Path, fs, out_root: str) -> None:
    """Copy the store built in ``root`` to ``out_root``, replacing the store there: its manifest is removed
    first (no reader takes a mix of old and new shards for a complete store), the new one is written last,
    and the old store's files that the new one does not have are removed."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in (MANIFEST, PROGRESS, LOCK)
                   and not p.name.endswith(".tmp"))
    names = {p.relative_to(root).as_posix() for p in files}
    old = _read_json(fs, f"{out_root}/{MANIFEST}")
    if fs.exists(f"{out_root}/{MANIFEST}"):
        fs.rm(f"{out_root}/{MANIFEST}")
    try:
        stale = [f.name for f in expected_files(old)] if old is not None and old.get("format") == STORE_FORMAT else []
    except (KeyError, TypeError, ValueError):  # not a manifest this version wrote: leave its files alone
        stale = []
    for name in stale:
        if name not in names and fs.exists(f"{out_root}/{name}"):
            fs.rm(f"{out_root}/{name}")
    for p in files:
        fs.makedirs(f"{out_root}/{p.parent.relative_to(root).as_posix()}".rstrip("/."), exist_ok=True)
        fs.put_file(str(p), f"{out_root}/{p.relative_to(root).as_posix()}")
    fs.put_file(str(root / MANIFEST), f"{out_root}/{MANIFEST}")


def _progress_bar(srcs, identities, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    sizes = [i["size"] for i in identities]
    total = sum(sizes) if all(isinstance(s, int) for s in sizes) else None
    return tqdm(total=total, unit="B", unit_scale=True, desc="prepare", dynamic_ncols=True)

