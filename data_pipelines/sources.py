"""Input sources: fsspec URIs, formats, compression, and lazy record reading.

A *source* is one input file (or one Hugging Face dataset). Reading it yields a stream of
events, never the whole file:

- :class:`Piece`: text of one document (or the whole of it; long plain-text documents come
  in pieces of about ``piece_chars`` characters, cut after a newline that precedes a
  non-space character, so byte-level BPE tokenization of the pieces equals that of the
  whole), or one chat conversation (``messages``);
- :class:`Bad`: a record that cannot be used, with its line (or row) and reason.

Supported: any fsspec URI (local paths, ``file://``, ``memory://``, ``s3://``, ``gs://``,
``http(s)://``, ``hf://``...), globs and directories; JSON Lines, Parquet and plain text;
``.gz``, ``.zst``, ``.bz2`` and ``.xz`` compression (detected from the name); and
``datasets:PATH_OR_NAME[#split]`` for a ``Dataset.save_to_disk`` folder or, where the Hub is
reachable, a streamed Hub dataset.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import hashlib
import json
import lzma
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import fsspec

from data_pipelines.errors import DataConfigError

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text",
           ".text": "text", ".md": "text"}
FORMAT_NAMES = ("auto", "jsonl", "parquet", "text")
DATASETS_PREFIX = "datasets:"
READ_BLOCK = 1 << 20


@dataclass
class Piece:
    line: int  # 1-based line (JSONL), row (Parquet, datasets) or 1 (a text file)
    text: str | None = None
    messages: list | None = None
    first: bool = True
    last: bool = True


@dataclass
class Bad:
    line: int | None
    reason: str
    detail: str = ""
    rollback: bool = False  # pieces of this record were already emitted and must be undone


@dataclass
class SourceFile:
    uri: str  # as shown to users and recorded in the manifest
    format: str  # jsonl | parquet | text | datasets
    compression: str | None = None
    fs: Any = field(default=None, repr=False)
    path: str = ""
    split: str | None = None
    chat: bool = False  # records hold ChatML conversations ({"messages": [...]}) instead of text

    def identity(self) -> dict:
        """Cheap identity (size and the filesystem's key); content hashes come from reading."""
        if self.format == "datasets":
            return {"size": None, "ukey": None}
        info = self.fs.info(self.path)
        try:
            ukey = self.fs.ukey(self.path)
        except Exception:  # noqa: BLE001 - some filesystems cannot; size alone then
            ukey = None
        return {"size": info.get("size"), "ukey": ukey}


# -- discovery ---------------------------------------------------------------------------------
def _split_suffixes(name: str) -> tuple[str | None, str | None]:
    lower = name.lower()
    compression = None
    for suffix, comp in COMPRESSIONS.items():
        if lower.endswith(suffix):
            compression, lower = comp, lower[: -len(suffix)]
            break
    for suffix, fmt in FORMATS.items():
        if lower.endswith(suffix):
            return fmt, compression
    return None, compression


def _protocol_uri(fs, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def expand_sources(uris, fmt: str = "auto", storage_options: dict | None = None, chat: bool = False) -> list[SourceFile]:
    """Resolve URIs, globs and folders into source files in a stable order.

    ``chat=True`` reads conversations (a list of ``{"role", "content"}`` messages per record)
    from JSONL, Parquet or datasets sources.
    """
    if isinstance(uris, str):
        uris = [uris]
    if fmt not in FORMAT_NAMES:
        raise DataConfigError(f"format={fmt!r} is unknown: use one of {', '.join(FORMAT_NAMES)}.")
    if not uris:
        raise DataConfigError("no sources given: pass at least one file, folder, glob or URI.")
    out: list[SourceFile] = []
    for uri in uris:
        uri = str(uri)
        if uri.startswith(DATASETS_PREFIX):
            name, _, split = uri[len(DATASETS_PREFIX):].partition("#")
            out.append(SourceFile(uri=uri, format="datasets", path=name, split=split or None, chat=chat))
            continue
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        if any(ch in path for ch in "*?["):
            paths = sorted(fs.glob(path))
            if not paths:
                raise DataConfigError(f"source {uri!r} matches no files: check the pattern, or list the files explicitly.")
        elif fs.isdir(path):
            if fs.exists(path.rstrip("/") + "/state.json") and fs.exists(path.rstrip("/") + "/dataset_info.json"):
                out.append(SourceFile(uri=DATASETS_PREFIX + uri, format="datasets", path=uri, chat=chat))
                continue
            paths = sorted(p for p in fs.find(path) if _split_suffixes(p.rsplit("/", 1)[-1])[0] or fmt != "auto")
            if not paths:
                raise DataConfigError(
                    f"source folder {uri!r} holds no .jsonl/.json/.parquet/.txt files (optionally .gz/.zst/.bz2/.xz): "
                    "point at the files, or pass --format."
                )
        elif fs.exists(path):
            paths = [path]
        else:
            raise DataConfigError(f"source {uri!r} does not exist: check the path or URI (and credentials for cloud stores).")
        for p in paths:
            detected, compression = _split_suffixes(p.rsplit("/", 1)[-1])
            chosen = detected if fmt == "auto" else fmt
            if chosen is None:
                raise DataConfigError(
                    f"cannot tell the format of {p!r} from its name: known endings are "
                    f"{', '.join(FORMATS)} (plus {', '.join(COMPRESSIONS)}). Rename it or pass --format jsonl|parquet|text."
                )
            if chosen == "parquet" and compression:
                raise DataConfigError(f"{p!r}: Parquet compresses internally; an outer {compression} layer is not supported. Decompress it.")
            if chat and chosen == "text":
                raise DataConfigError(f"{p!r} is plain text, but chat data needs records with a messages field: use JSONL or Parquet.")
            shown = uri if len(paths) == 1 and not fs.isdir(path) else _protocol_uri(fs, p)
            out.append(SourceFile(uri=shown, format=chosen, compression=compression, fs=fs, path=p, chat=chat))
    return out


# -- byte streams ------------------------------------------------------------------------------
class HashingReader:
    """Wraps a binary file, hashing (sha256) and counting the raw bytes read through it."""

    def __init__(self, raw):
        self.raw, self.sha256, self.bytes_read = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.bytes_read += len(data)
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read to the end so the hash covers the whole file."""
        while self.read(READ_BLOCK):
            pass


class ZstdReader:
    """Streaming zstd decompression across frames that, unlike ``stream_reader``, reports truncation."""

    def __init__(self, raw):
        import zstandard

        self._raw, self._dctx = raw, zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._fed = False

    def read(self, n: int = -1) -> bytes:
        while True:
            chunk = self._raw.read(READ_BLOCK)
            if not chunk:
                if self._fed and not self._obj.eof:
                    raise EOFError("zstd stream ended before the end of its frame")
                return b""
            out = []
            while chunk:
                out.append(self._obj.decompress(chunk))
                self._fed = True
                if self._obj.eof:
                    chunk = self._obj.unused_data
                    self._obj, self._fed = self._dctx.decompressobj(), False
                else:
                    chunk = b""
            data = b"".join(out)
            if data:
                return data


def _decompressed(raw, compression: str | None):
    if compression is None:
        return raw
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "zstd":
        return ZstdReader(raw)
    if compression == "bz2":
        return bz2.BZ2File(raw, mode="rb")
    if compression == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    raise AssertionError(compression)


_TRUNCATION_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError, OSError)


class Truncated(Exception):
    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


def _read_block(stream) -> bytes:
    # read1 returns what one raw read yields, so data before a truncation point is not lost
    # inside a read that tries to fill the whole block.
    read = getattr(stream, "read1", None) or stream.read
    try:
        return read(READ_BLOCK)
    except _TRUNCATION_ERRORS as exc:
        raise Truncated(f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # zstandard.ZstdError and friends
        if type(exc).__name__.startswith("Zstd"):
            raise Truncated(f"{type(exc).__name__}: {exc}") from None
        raise


MAX_LINE_BYTES_ENV = "LONGCTX_MAX_LINE_BYTES"
DEFAULT_MAX_LINE_BYTES = 64 << 20  # one JSON Lines record; a longer line is a bad record (line_too_long)


def max_line_bytes() -> int:
    """The longest line read as one record: ``$LONGCTX_MAX_LINE_BYTES``, else 64 MiB."""
    import os

    text = os.environ.get(MAX_LINE_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_LINE_BYTES
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise DataConfigError(f"{MAX_LINE_BYTES_ENV}={text!r} must be a positive number of bytes. Fix: unset it "
                              f"(default {DEFAULT_MAX_LINE_BYTES} = 64 MiB) or e.g. {MAX_LINE_BYTES_ENV}=134217728")
    return value


@dataclass(frozen=True)
class LongLine:
    """What :func:`iter_lines` yields in place of a line longer than its limit (never held in memory)."""

    size: int
    limit: int

    @property
    def detail(self) -> str:
        return (f"the line is over {self.limit:,} bytes (read {self.size:,} before giving up); split the record, "
                f"or raise the limit with {MAX_LINE_BYTES_ENV}=<bytes>")


def iter_lines(stream, limit: int | None = None) -> Iterator[bytes | LongLine]:
    """Complete lines (without the newline) of a decompressed stream; a final line without a
    newline is yielded only once the stream ended cleanly. Raises :class:`Truncated`.

    A line longer than ``limit`` bytes (default :func:`max_line_bytes`) is not kept in memory: a
    :class:`LongLine` stands in for it, so the caller reports it as a bad record at its line."""
    limit = max_line_bytes() if limit is None else limit
    pending: list[bytes] = []
    size, over = 0, False
    while True:
        block = _read_block(stream)
        if not block:
            break
        parts = block.split(b"\n")
        if len(parts) == 1:
            size += len(block)
            if size > limit:
                over, pending = True, []
            elif not over:
                pending.append(block)
            continue
        size += len(parts[0])
        if over or size > limit:
            yield LongLine(size, limit)
        else:
            pending.append(parts[0])
            yield b"".join(pending)
        for part in parts[1:-1]:
            yield part if len(part) <= limit else LongLine(len(part), limit)
        last = parts[-1]
        size, over = len(last), len(last) > limit
        pending = [last] if last and not over else []
    if over:
        yield LongLine(size, limit)
    elif pending:
        yield b"".join(pending)


# -- readers -----------------------------------------------------------------------------------
def read_source(src: SourceFile, field: str = "text", skip: int = 0, piece_chars: int = 1 << 16,
                hasher: list | None = None) -> Iterator[Piece | Bad]:
    """Events of one source; the first ``skip`` records are read but not emitted (for resume).

    ``hasher`` (a list) receives the :class:`HashingReader` so the caller can watch progress
    and read the content hash once the generator is exhausted.
    """
    if src.format == "jsonl":
        yield from _read_jsonl(src, field, skip, hasher, piece_chars)
    elif src.format == "text":
        yield from _read_text(src, skip, piece_chars, hasher)
    elif src.format == "parquet":
        yield from _read_parquet(src, field, skip, hasher, piece_chars)
    elif src.format == "datasets":
        yield from _read_datasets(src, field, skip, piece_chars)
    else:
        raise AssertionError(src.format)


def _open_hashed(src: SourceFile, hasher: list | None):
    raw = HashingReader(src.fs.open(src.path, "rb"))
    if hasher is not None:
        hasher.append(raw)
    return raw


def _pieces(event: Piece | Bad, piece_chars: int) -> Iterator[Piece | Bad]:
    if isinstance(event, Bad) or event.text is None or len(event.text) <= piece_chars:
        yield event
        return
    parts = split_text(event.text, piece_chars)
    for k, part in enumerate(parts):
        yield Piece(event.line, text=part, first=k == 0, last=k == len(parts) - 1)


def _check_text(value: Any, field: str, line: int) -> Piece | Bad:
    if value is None:
        return Bad(line, "missing_field", f"field {field!r} is null")
    if not isinstance(value, str):
        return Bad(line, "not_text", f"field {field!r} is a {type(value).__name__}, not a string")
    if not value.strip():
        return Bad(line, "empty_document", f"field {field!r} is empty or whitespace only")
    return Piece(line, text=value)


def _check_messages(value: Any, field: str, line: int) -> Piece | Bad:
    if value is None:
        return Bad(line, "missing_field", f"field {field!r} is null")
    if not isinstance(value, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                              and isinstance(m.get("content"), str) for m in value):
        return Bad(line, "not_text", f"field {field!r} must be a list of {{'role': str, 'content': str}} messages")
    if not value or not any(m["role"] == "assistant" and m["content"].strip() for m in value):
        return Bad(line, "empty_document", "the conversation has no non-empty assistant message, so nothing to learn")
    return Piece(line, messages=value)


def _read_jsonl(src: SourceFile, field: str, skip: int, hasher, piece_chars: int) -> Iterator[Piece | Bad]:
    chat = src.chat
    raw = _open_hashed(src, hasher)
    try:
        stream = _decompressed(raw, src.compression)
        line_no = 0
        try:
            for line in iter_lines(stream):
                line_no += 1
                if isinstance(line, LongLine):
                    if line_no > skip:
                        yield Bad(line_no, "line_too_long", line.detail)
                    continue
                if line_no <= skip or not line.strip():
                    continue
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield Bad(line_no, "not_utf8", f"byte {exc.start}: {exc.reason}")
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield Bad(line_no, "malformed_json", f"{exc.msg} at column {exc.colno}")
                    continue
                if not isinstance(record, dict):
                    yield Bad(line_no, "malformed_json", f"a record must be a JSON object, not a {type(record).__name__}")
                    continue
                if field not in record:
                    keys = ", ".join(sorted(record)[:8]) or "none"
                    yield Bad(line_no, "missing_field", f"no field {field!r} (fields: {keys}); choose it with --field")
                    continue
                yield from _pieces((_check_messages if chat else _check_text)(record[field], field, line_no), piece_chars)
        except Truncated as exc:
            yield Bad(line_no + 1, "truncated_compressed_file", exc.detail)
        raw.drain()
    finally:
        raw.raw.close()


def _read_text(src: SourceFile, skip: int, piece_chars: int, hasher) -> Iterator[Piece | Bad]:
    """A plain-text file is one document, emitted in pieces of about ``piece_chars`` characters."""
    raw = _open_hashed(src, hasher)
    try:
        if skip:
            raw.drain()
            return
        stream = _decompressed(raw, src.compression)
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        buffer, lines_before, emitted = "", 0, False
        while True:
            try:
                block = _read_block(stream)
                buffer += decoder.decode(block, final=not block)
            except Truncated as exc:
                yield Bad(lines_before + buffer.count("\n") + 1, "truncated_compressed_file", exc.detail, rollback=emitted)
                raw.drain()
                return
            except UnicodeDecodeError as exc:
                line = lines_before + buffer.count("\n") + block[: max(exc.start, 0)].count(b"\n") + 1
                yield Bad(line, "not_utf8", f"{exc.reason} at byte {exc.start} of a {len(block)}-byte block", rollback=emitted)
                raw.drain()
                return
            while len(buffer) >= piece_chars:
                cut = _piece_cut(buffer, piece_chars)
                if cut is None:
                    if len(buffer) < 64 * piece_chars:
                        break  # no safe place to cut yet: read more
                    cut = len(buffer) - 1  # a huge run without spaces: cut anyway, bounded memory first
                piece = buffer[:cut]
                if not emitted and not piece.strip():
                    break  # only leading whitespace so far
                buffer = buffer[cut:]
                lines_before += piece.count("\n")
                yield Piece(1, text=piece, first=not emitted, last=False)
                emitted = True
            if not block:
                break
        if not emitted and not buffer.strip():
            yield Bad(1, "empty_document", "the file holds no text (empty or whitespace only)")
        else:
            yield Piece(1, text=buffer, first=not emitted, last=True)
    finally:
        raw.raw.close()


def _piece_cut(text: str, target: int, start: int = 0) -> int | None:
    """A cut position at or after ``start + target`` where splitting does not change byte-level
    BPE pre-tokenization: after a newline (or at a space) between two non-space characters.
    Looks in a growing window, so a cut costs a few KB of scanning."""
    n = len(text)
    begin = max(start + target - 1, start + 1)
    window = 4096
    while True:
        stop = min(n - 1, begin + window)
        for sep, offset in (("\n", 1), (" ", 0)):
            i = begin
            while True:
                j = text.find(sep, i, stop)
                if j < 0:
                    break
                if not text[j - 1].isspace() and not text[j + 1].isspace():
                    return j + offset
                i = j + 1
        if stop >= n - 1:
            return None
        window *= 8


def split_text(text: str, piece_chars: int) -> list[str]:
    """Split a long text into pieces of about ``piece_chars`` at safe places (see :func:`_piece_cut`)."""
    pieces, pos = [], 0
    while len(text) - pos > piece_chars:
        cut = _piece_cut(text, piece_chars, pos)
        if cut is None:
            break
        pieces.append(text[pos:cut])
        pos = cut
    pieces.append(text[pos:])
    return pieces


def _read_parquet(src: SourceFile, field: str, skip: int, hasher, piece_chars: int) -> Iterator[Piece | Bad]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    chat = src.chat
    raw = _open_hashed(src, hasher)  # hashed in one extra sequential pass: Parquet is read by ranges
    raw.drain()
    raw.raw.close()
    with src.fs.open(src.path, "rb") as fh:
        try:
            pf = pq.ParquetFile(fh)
        except (pa.ArrowInvalid, OSError) as exc:
            yield Bad(None, "unreadable_file", f"not a readable Parquet file ({exc}); it may be truncated")
            return
        names = pf.schema_arrow.names
        if field not in names:
            yield Bad(None, "missing_field", f"no column {field!r} (columns: {', '.join(names[:8])}); choose it with --field")
            return
        is_binary = pa.types.is_binary(pf.schema_arrow.field(field).type) or pa.types.is_large_binary(pf.schema_arrow.field(field).type)
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=1024, columns=[field]):
                for value in batch.column(0).to_pylist():
                    row += 1
                    if row <= skip:
                        continue
                    if is_binary and value is not None:
                        try:
                            value = value.decode("utf-8")
                        except UnicodeDecodeError as exc:
                            yield Bad(row, "not_utf8", f"byte {exc.start}: {exc.reason}")
                            continue
                    yield from _pieces((_check_messages if chat else _check_text)(value, field, row), piece_chars)
        except (pa.ArrowInvalid, OSError) as exc:
            yield Bad(row + 1, "unreadable_file", f"cannot read row group ({exc}); the file may be truncated")


def _read_datasets(src: SourceFile, field: str, skip: int, piece_chars: int) -> Iterator[Piece | Bad]:
    import datasets

    chat = src.chat
    path = src.path
    fs, local = fsspec.core.url_to_fs(path)
    if fs.isdir(local):
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            if not src.split or src.split not in ds:
                raise DataConfigError(f"{src.uri!r} is a DatasetDict with splits {list(ds)}: name one as {DATASETS_PREFIX}{path}#SPLIT.")
            ds = ds[src.split]
        if field not in ds.column_names:
            yield Bad(None, "missing_field", f"no column {field!r} (columns: {', '.join(ds.column_names[:8])}); choose it with --field")
            return
        ds = ds.select_columns([field])
        if skip:
            ds = ds.select(range(min(skip, len(ds)), len(ds)))
    else:  # a Hub dataset, streamed
        ds = datasets.load_dataset(path, split=src.split or "train", streaming=True)
        if skip:
            ds = ds.skip(skip)
    row = skip
    for batch in ds.iter(batch_size=1024):
        values = batch.get(field)
        if values is None:
            yield Bad(row + 1, "missing_field", f"no column {field!r}; choose it with --field")
            return
        for value in values:
            row += 1
            yield from _pieces((_check_messages if chat else _check_text)(value, field, row), piece_chars)


def content_hash(src: SourceFile) -> str | None:
    """sha256 of a source's bytes (of its files, for a saved dataset folder); None for streams."""
    if src.format != "datasets":
        raw = HashingReader(src.fs.open(src.path, "rb"))
        try:
            raw.drain()
        finally:
            raw.raw.close()
        return raw.sha256.hexdigest()
    fs, local = fsspec.core.url_to_fs(src.path)
    if not fs.isdir(local):
        return None
    h = hashlib.sha256()
    for p in sorted(fs.find(local)):
        h.update(p[len(local):].encode())
        with fs.open(p, "rb") as fh:
            while block := fh.read(READ_BLOCK):
                h.update(block)
    return h.hexdigest()
