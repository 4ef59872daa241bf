"""Does a token store's data match its manifest?

- :func:`check_sizes` runs every time a store is opened (``TokenStore``): each file the manifest
  lists must exist with the size it implies (tokens x dtype width, documents x 24 bytes). It costs
  one listing of the store's folders, and it turns a truncated upload, an interrupted copy or two
  builds appending to the same shards into a clear error at open time, not a crash mid-training.
- :func:`verify_store` (``longctx data verify --store URI``) also recomputes every file's sha256
  and compares it with the manifest: it finds flipped bytes that keep the size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from data_pipelines.errors import StoreIntegrityError

INDEX_ENTRY_BYTES = 24  # int64 (offset, length, source_id)
UNKNOWN_SIZE = -1  # the filesystem does not tell (an http:// server without Content-Length)


@dataclass(frozen=True)
class StoreFile:
    name: str  # relative to the store folder, e.g. "shards/tokens-00003.bin"
    size: int  # bytes, as the manifest implies
    sha256: str | None


def expected_files(manifest: dict) -> list[StoreFile]:
    """The index and every shard file the manifest lists, with their sizes and sha256s."""
    width = np.dtype(manifest["dtype"]).itemsize
    files = [StoreFile(manifest.get("index", "index.bin"), INDEX_ENTRY_BYTES * int(manifest["num_documents"]),
                       manifest.get("index_sha256"))]
    for shard in manifest["shards"]:
        n = int(shard["num_tokens"])
        files.append(StoreFile(shard["tokens"], n * width, shard.get("tokens_sha256")))
        if "mask" in shard:
            files.append(StoreFile(shard["mask"], n, shard.get("mask_sha256")))
    return files


def _actual_sizes(fs, root: str, names: list[str]) -> dict[str, int]:
    """Sizes of the store's files (absent: missing), by name relative to ``root``: one listing per folder,
    and a size query per file the listing did not show (filesystems such as http:// list poorly)."""
    sizes: dict[str, int] = {}
    for folder in sorted({n.rpartition("/")[0] for n in names}):
        try:
            entries = fs.ls(f"{root}/{folder}".rstrip("/"), detail=True)
        except (OSError, NotImplementedError):
            continue
        for entry in entries:
            if entry.get("type") == "file" and entry.get("size") is not None:
                base = entry["name"].rstrip("/").rpartition("/")[2]
                sizes[f"{folder}/{base}" if folder else base] = int(entry["size"])
    for name in names:
        if name not in sizes:
            try:
                size = fs.size(f"{root}/{name}")
            except FileNotFoundError:
                continue
            sizes[name] = UNKNOWN_SIZE if size is None else int(size)
    return sizes


def size_problems(fs, root: str, manifest: dict) -> list[str]:
    """One line per file that is missing or not the size the manifest implies; empty when all match."""
    files = expected_files(manifest)
    problems = []
    listed = sum(int(s["num_tokens"]) for s in manifest["shards"])
    if listed != int(manifest["num_tokens"]):
        problems.append(f"the manifest's shards hold {listed:,} tokens but its num_tokens is {int(manifest['num_tokens']):,}")
    sizes = _actual_sizes(fs, root, [f.name for f in files])
    for f in files:
        actual = sizes.get(f.name)
        if actual is None:
            problems.append(f"{f.name} is missing")
        elif actual != f.size and actual != UNKNOWN_SIZE:
            problems.append(f"{f.name} has {actual:,} bytes; the manifest says {f.size:,}")
    return problems


def damaged(path: str, problems: list[str]) -> StoreIntegrityError:
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    return StoreIntegrityError(
        f"token store {path!r} does not match its manifest: {shown}. Its data is damaged (an interrupted copy or "
        "upload, or two builds writing the same folder) and must not be trained on. Fix: delete "
        f"{path!r} and run `longctx data prepare` again, or rerun `longctx data prepare ... --out {path} --overwrite`. "
        f"`longctx data verify --store {path}` checks every file's sha256."
    )


def check_sizes(fs, root: str, manifest: dict, path: str) -> None:
    """Raise :class:`StoreIntegrityError` naming the store, the bad files and the fix, unless all sizes match."""
    problems = size_problems(fs, root, manifest)
    if problems:
        raise damaged(path, problems)


def _sha256(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


@dataclass
class VerifyReport:
    path: str
    checked: list[str] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)  # file name (or "manifest") -> what is wrong

    @property
    def ok(self) -> bool:
        return not self.bad


def verify_store(path: str, storage_options: dict | None = None) -> VerifyReport:
    """Recompute the sha256 of the index and of every shard and compare them with the manifest."""
    import fsspec

    from data_pipelines.store import read_manifest

    path = str(path).rstrip("/")
    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    manifest = read_manifest(fs, root, path)
    report = VerifyReport(path)
    files = expected_files(manifest)
    sizes = _actual_sizes(fs, root, [f.name for f in files])
    for problem in size_problems(fs, root, manifest):
        if problem.startswith("the manifest"):
            report.bad["manifest"] = problem
    for f in files:
        report.checked.append(f.name)
        if f.name not in sizes:
            report.bad[f.name] = "missing"
        elif f.sha256 is None:
            report.bad[f.name] = "the manifest records no sha256 for it"
        else:
            actual = _sha256(fs, f"{root}/{f.name}")
            if actual != f.sha256:
                size = "" if sizes[f.name] in (f.size, UNKNOWN_SIZE) else f", {sizes[f.name]:,} bytes instead of {f.size:,}"
                report.bad[f.name] = f"sha256 {actual[:16]}... differs from the manifest's {f.sha256[:16]}...{size}"
    return report
