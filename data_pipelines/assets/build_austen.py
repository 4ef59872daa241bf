"""Rebuild ``text/austen.jsonl.gz`` from the Debian package ``r-cran-janeaustenr``.

The package stores Jane Austen's six novels (public domain, from Project Gutenberg) in an
R lazy-load database (``Rdata.rdb``): a sequence of ``[4-byte big-endian length][zlib
stream]`` objects, each an XDR-serialised R character vector with one line of a novel per
element. No R is needed to read it.

    apt-get download r-cran-janeaustenr
    dpkg -x r-cran-janeaustenr_*.deb /tmp/austen_deb
    python -m data_pipelines.assets.build_austen /tmp/austen_deb

The output is gzipped JSON Lines, one novel per line: ``{"title": ..., "text": ...}``.
Typographic characters are folded to ASCII so that any token slice decodes cleanly, and the
hard-wrapped lines of each paragraph are joined (one paragraph per line, blank line between).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import struct
import zlib
from pathlib import Path

RDB_RELATIVE = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
OUTPUT = Path(__file__).resolve().parent / "text" / "austen.jsonl.gz"

_ASCII_FOLD = {
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": "--",
    "\u2013": "-", "\u2026": "...", "\u00a0": " ", "\u00e9": "e", "\u00e8": "e",
    "\u00ea": "e", "\u00e0": "a", "\u00e2": "a", "\u00e7": "c", "\u00ef": "i",
    "\u00f4": "o", "\u00fc": "u", "\u00e6": "ae", "\u00c6": "AE", "\u00a3": "L",
}
_STRSXP = 16


def _read_character_vector(blob: bytes) -> list[str]:
    """Decode one XDR-serialised R character vector (``STRSXP``) into Python strings."""
    if blob[:2] != b"X\n":
        raise ValueError("not an XDR R serialisation (expected the 'X\\n' header)")
    (version,) = struct.unpack_from(">i", blob, 2)
    pos = 14  # header, format version, writer R version, minimal R version
    if version == 3:  # version 3 adds the native encoding name
        (name_len,) = struct.unpack_from(">i", blob, pos)
        pos += 4 + name_len
    flags, count = struct.unpack_from(">ii", blob, pos)
    pos += 8
    if flags & 0xFF != _STRSXP:
        raise ValueError(f"expected a character vector (type 16), found type {flags & 0xFF}")
    lines = []
    for _ in range(count):
        _, length = struct.unpack_from(">ii", blob, pos)  # CHARSXP flags, byte length (-1 = NA)
        pos += 8
        if length < 0:
            lines.append("")
            continue
        lines.append(blob[pos:pos + length].decode("utf-8"))
        pos += length
    return lines


def read_novels(rdb_path: Path) -> list[tuple[str, str]]:
    raw = rdb_path.read_bytes()
    novels, pos = [], 0
    while pos < len(raw):
        inflater = zlib.decompressobj()
        blob = inflater.decompress(raw[pos + 4:])
        pos = len(raw) - len(inflater.unused_data)
        lines = _read_character_vector(blob)
        novels.append((lines[0].strip(), "\n".join(lines).strip() + "\n"))
    return novels


def reflow(text: str) -> str:
    """Join the hard-wrapped lines of each paragraph; paragraphs are separated by one blank line."""
    paragraphs = [" ".join(line.strip() for line in block.splitlines()) for block in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paragraphs if p) + "\n"


def fold_to_ascii(text: str) -> str:
    text = "".join(_ASCII_FOLD.get(ch, ch) for ch in text)
    return text.encode("ascii", "ignore").decode("ascii")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("unpacked_deb", type=Path, help="folder where the .deb was unpacked with dpkg -x")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    novels = read_novels(args.unpacked_deb / RDB_RELATIVE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the gzip bytes reproducible.
    with open(args.out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as gz:
        for title, text in sorted(novels):
            gz.write((json.dumps({"title": title.title(), "text": reflow(fold_to_ascii(text))}) + "\n").encode("ascii"))
    print(f"wrote {len(novels)} novels to {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
