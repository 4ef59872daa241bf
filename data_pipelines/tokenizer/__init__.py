"""The project's own tokenizer: a small byte-level BPE that ships with the package.

    from data_pipelines.tokenizer import load_project_tokenizer
    tok = load_project_tokenizer()          # or AutoTokenizer.from_pretrained(project_tokenizer_dir())

8192 tokens trained on the shipped public-domain novels (``build.py`` shows how), digits
split one per token, ``<|endoftext|>`` as eos and pad, ``<|im_start|>``/``<|im_end|>`` and
a ChatML chat template. It needs no download, so tiny runs and tests work offline.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_TOKENIZER_NAME = "longctx-bpe-8k"
_PROJECT_DIR = Path(__file__).resolve().parent / "project"


def project_tokenizer_dir() -> str:
    """Directory holding ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja``."""
    return str(_PROJECT_DIR)


def load_project_tokenizer():
    """The project tokenizer as a ``transformers.PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(_PROJECT_DIR))


def load_tokenizer(name_or_path: str | None = None):
    """Load a fast tokenizer by Hub name or local path; ``None`` or the project name gives the project one."""
    if name_or_path in (None, "", "project", PROJECT_TOKENIZER_NAME):
        return load_project_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
