"""One place that makes DSNs, URLs and config dumps safe to print.

Secrets are also registered at load time, so any text (a log line, an exception from
a driver, a pytest report) can be scrubbed of the exact values, not only of the
patterns we can predict.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

MASK = "***"

_SECRET_KEY_RE = re.compile(r"(password|passwd|secret|token|webhook|api_key|encryption_key|access_key)", re.I)
# user:password@ in any URL-ish string
_URL_PASSWORD_RE = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@", re.I)
# password=... in libpq keyword/value strings and query strings
_KV_PASSWORD_RE = re.compile(r"(?P<key>\b(?:password|sslpassword)\s*=\s*)(?P<val>'[^']*'|\S+?)(?=[\s&;]|$)", re.I)
# Slack-style webhook paths carry the credential in the path itself
_WEBHOOK_RE = re.compile(r"(https?://hooks\.[^/\s]+/services/)[^\s\"']+", re.I)

_known_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret value so ``redact`` removes it wherever it appears."""
    if value and len(value) >= 4:
        with _lock:
            _known_secrets.add(value)


def register_secrets(values: Iterable[str | None]) -> None:
    for value in values:
        register_secret(value)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY_RE.search(key))


def redact(text: str) -> str:
    """Mask passwords in URLs, ``password=`` pairs, webhook URLs and any registered secret."""
    if not text:
        return text
    text = _URL_PASSWORD_RE.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _KV_PASSWORD_RE.sub(lambda m: f"{m['key']}{MASK}", text)
    text = _WEBHOOK_RE.sub(lambda m: f"{m.group(1)}{MASK}", text)
    with _lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_mapping(data: Any) -> Any:
    """A deep copy of a config-like structure with every secret-named value masked."""
    if isinstance(data, dict):
        return {
            k: (MASK if is_secret_key(str(k)) and v not in (None, "") else redact_mapping(v))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact_mapping(v) for v in data]
    if isinstance(data, str):
        return redact(data)
    return data


class RedactingFilter(logging.Filter):
    """Scrub known secrets from every record a handler emits (log files and terminals alike)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True
