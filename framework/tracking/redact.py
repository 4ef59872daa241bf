"""Credentials out of everything longctx logs to MLflow or prints.

    redact({"path": "s3://b/x", "storage_options": {"key": "AKIA...", "secret": "..."}})
        -> {"path": "s3://b/x", "storage_options": {"key": "[REDACTED]", "secret": "[REDACTED]"}}
    redact_text("https://user:pass@host:5000/?token=abc&x=1")
        -> "https://[REDACTED]@host:5000/?token=[REDACTED]&x=1"

A value is secret when its key names a credential (key, secret, token, password, access_key,
account_key, sas_token, connection_string, authorization, ...; not tokenizer or max_tokens), and
in any string, the user:password of a URL and the credential-named query parameters are. The
values used to run the job are not changed: only what is logged or printed is redacted. Better
still, take credentials from the environment (MLFLOW_TRACKING_USERNAME/PASSWORD or
MLFLOW_TRACKING_TOKEN, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ...), so they reach no config.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"

# a key is secret when one of its words is one of these ...
_SECRET_WORDS = {"secret", "secrets", "password", "passwd", "pwd", "passphrase", "token", "credential",
                 "credentials", "apikey", "authorization", "auth", "sig", "signature", "cookie", "sas"}
# ... or it is "key", or ends in "key"/"key_id" after one of these (access_key, account_key, api_key, ...)
_KEY_QUALIFIERS = {"access", "account", "api", "private", "secret", "client", "master", "signing", "encryption",
                   "sas", "storage", "shared", "session", "subscription", "auth"}
_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://)([^\s'\"<>]+)")
_ASSIGNMENT = re.compile(r"(?<![\w.\-])([A-Za-z][\w.\-]*)=([^&\s'\",;]+)")
# "name": "value" (JSON) and 'name': 'value' (a Python repr)
_QUOTED_PAIR = re.compile(r"""(["'])([^"'\\]+)\1(\s*:\s*)(["'])((?:[^"'\\]|\\.)*)\4""")


def _words(key: str) -> list[str]:
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key))  # camelCase -> camel_Case
    return [w for w in re.split(r"[^a-z0-9]+", key.lower()) if w]


def is_secret_key(key: Any) -> bool:
    """True when a mapping key or parameter name names a credential."""
    if not isinstance(key, str):
        return False
    words = _words(key)
    if not words:
        return False
    if words[-1] in ("id", "ids") and len(words) > 1 and words[-2] in ("token", "tokens"):
        return False  # pad_token_id, eos_token_id: a vocabulary index
    if _SECRET_WORDS.intersection(words):
        return True
    joined = "_".join(words)
    if joined in ("key", "connection_string", "conn_str"):
        return True
    for i, word in enumerate(words):
        if word == "key" and i > 0 and words[i - 1] in _KEY_QUALIFIERS:
            return True
    return False


def _redact_url(scheme: str, rest: str) -> str:
    netloc_end = len(rest)
    for stop in ("/", "?", "#"):
        at = rest.find(stop)
        if at != -1:
            netloc_end = min(netloc_end, at)
    netloc, after = rest[:netloc_end], rest[netloc_end:]
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    if "?" in after:
        path, _, query = after.partition("?")
        query, hash_sep, fragment = query.partition("#")
        parts = []
        for item in query.split("&"):
            name, eq, value = item.partition("=")
            parts.append(f"{name}={REDACTED}" if eq and value and is_secret_key(name) else item)
        after = path + "?" + "&".join(parts) + hash_sep + fragment
    return scheme + netloc + after


def redact_text(text: str) -> str:
    """`text` with the credentials of every URL in it, and of every `secret_name=value`, replaced."""
    if not isinstance(text, str) or not text:
        return text
    out = _URL.sub(lambda m: _redact_url(m.group(1), m.group(2)), text)
    out = _QUOTED_PAIR.sub(lambda m: m.group(0) if not (is_secret_key(m.group(2)) and m.group(5)) else
                           f"{m.group(1)}{m.group(2)}{m.group(1)}{m.group(3)}{m.group(4)}{REDACTED}{m.group(4)}", out)
    return _ASSIGNMENT.sub(lambda m: f"{m.group(1)}={REDACTED}" if is_secret_key(m.group(1)) and
                           m.group(2) != REDACTED else m.group(0), out)


def redact(value: Any, key: Any = None) -> Any:
    """A copy of `value` (dicts, lists, tuples, strings) with every credential replaced by REDACTED."""
    if key is not None and is_secret_key(key) and not isinstance(value, (dict, list, tuple)):
        return value if value in (None, "", False) else REDACTED
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_params(params: dict) -> dict:
    """{name: value} for MLflow params or tags, values redacted (a secret-named key hides its whole value)."""
    return {k: (REDACTED if is_secret_key(k.rsplit(".", 1)[-1]) and v not in (None, "", "null") else redact_text(v))
            if isinstance(v, str) else redact(v, k) for k, v in params.items()}
