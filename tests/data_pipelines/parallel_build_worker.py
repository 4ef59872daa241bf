"""What each process of the parallel chat-store build test runs (imported by name in spawned processes)."""

from __future__ import annotations

import hashlib
import logging
import os
import traceback


def sample_digest(source) -> str:
    """A sha256 over every sample's input_ids and labels: equal digests mean equal training data."""
    h = hashlib.sha256()
    for i in range(len(source)):
        sample = source[i]
        h.update(sample["input_ids"].numpy().tobytes())
        h.update(sample["labels"].numpy().tobytes())
    return h.hexdigest()


def build_chat(rank: int, path: str, cache: str, seq_len: int, barrier, results) -> None:
    """Build the chat source of ``path`` like a training rank does, all ranks at once; report what happened."""
    try:
        os.environ["LONGCTX_CACHE"] = cache
        messages: list[str] = []

        class Collect(logging.Handler):
            def emit(self, record):
                messages.append(record.getMessage())

        logger = logging.getLogger("data_pipelines")
        logger.setLevel(logging.INFO)
        logger.addHandler(Collect())
        import data_pipelines.chat  # noqa: F401 - imported before the barrier, so the builds start together
        from data_pipelines import build_source
        from data_pipelines.tokenizer import load_project_tokenizer

        tok = load_project_tokenizer()
        barrier.wait(timeout=180)
        source = build_source({"kind": "chat", "path": path, "seq_len": seq_len}, tok)
        results.put((rank, {"store": source.store.path, "logs": messages, "digest": sample_digest(source)}))
    except BaseException:  # noqa: BLE001 - the parent shows the child's traceback
        results.put((rank, {"error": traceback.format_exc()}))
