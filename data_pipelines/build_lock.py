"""One builder at a time per store folder.

    with build_lock(root, out):
        ...  # check whether another process finished the store meanwhile, else build it

The lock is ``prepare.lock`` inside the folder that is built (the output folder, or the local
staging folder of a remote output), held with ``flock`` through ``filelock``: the operating system
releases it when its holder dies, so a crashed build never blocks the next one. Every training
rank may call ``prepare`` for the same store: the first one builds it, the others wait here and
then find it up to date.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from data_pipelines.store import LOCK

log = logging.getLogger(__name__)


@contextmanager
def build_lock(root: Path, out: str) -> Iterator[None]:
    from filelock import FileLock, Timeout

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is building the token store %s; waiting for it to finish", out)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
