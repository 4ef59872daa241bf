"""Keyword names that changed across transformers versions, decided once per callable.

transformers 5.x renamed the KV-cache keyword of models, decoder layers and attention modules from
``past_key_values`` to ``cache`` (the old name is deprecated, to be removed in 5.40). Code that calls
those modules passes the cache under :func:`cache_keyword`, so it runs on both sides of the rename.
"""

from __future__ import annotations

import functools
import inspect


@functools.lru_cache(maxsize=None)
def _keyword(forward) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_keyword(module) -> str:
    """``"cache"`` when ``module.forward`` takes that keyword, else ``"past_key_values"``."""
    return _keyword(type(module).forward)
