"""Keep secrets out of logs, results and errors."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """The URL without user:password and without its query string, where signed-URL tokens live."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


#: An http(s) URL inside a longer text (a repr): up to whitespace, a quote or a bracket.
URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>\[\]{}]+")


def redact_urls_in(text: str) -> str:
    """``text`` with every http(s) URL in it redacted as :func:`redact_url` does."""
    return URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def redact_urls_deep(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, tuples, strings) with every http(s) URL inside redacted."""
    if isinstance(value, str):
        return redact_urls_in(value)
    if isinstance(value, dict):
        return {key: redact_urls_deep(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_urls_deep(item) for item in value)
    return value
