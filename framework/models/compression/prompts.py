"""How a question becomes decoder input, and raw (context, question) text becomes a batch.

The template must match the training data's (``data_pipelines.qa.QUESTION_TEMPLATE``; a test
checks they agree). It lives here too because the served model bundles ``framework`` only.
"""

from __future__ import annotations

import torch

QUESTION_TEMPLATE = "Question: {question}\nAnswer:"


def encode_qa_batch(tokenizer, rows, device=None) -> dict:
    """context_ids/context_mask and question_ids/question_mask (right-padded) for (context, question) rows."""
    contexts = [tokenizer(c, add_special_tokens=False)["input_ids"] for c, _ in rows]
    questions = [tokenizer(QUESTION_TEMPLATE.format(question=q.strip()), add_special_tokens=False)["input_ids"]
                 for _, q in rows]
    out = {}
    for name, seqs in (("context", contexts), ("question", questions)):
        width = max(1, max(len(s) for s in seqs))
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = True
        out[f"{name}_ids"], out[f"{name}_mask"] = ids.to(device), mask.to(device)
    return out
