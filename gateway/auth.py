"""API keys: bearer tokens from a file or the environment, each limited to some queues.

Keys are compared as SHA-256 digests with :func:`hmac.compare_digest`, against every configured key
without stopping at the first match, so neither a key's length nor its position leaks through timing.
The secret itself is kept only as its digest and never logged: a key appears in logs by its name.

Without any key the gateway serves everyone as the anonymous owner ``""`` and must listen on loopback
only (:func:`check_bind`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from producer.errors import CONFIG_INVALID, GATEWAY_BIND_REFUSED, GATEWAY_FORBIDDEN, GATEWAY_UNAUTHORIZED, error
from producer.schema import check_queue

#: Separator of the entries of DANCE_GATEWAY_API_KEYS.
ENTRY_SEPARATOR = ";"
#: Owner name of every request when no key is configured.
ANONYMOUS = ""
#: Shortest secret accepted, in characters: a short bearer token can be guessed.
MIN_SECRET_CHARS = 16


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the key's name (the owner of its jobs) and the queues it may use."""

    name: str
    #: The queues this key may use; None: any queue.
    queues: frozenset[str] | None
    #: Where a job goes when the request names no queue; None: the producer's default queue.
    default_queue: str | None

    def queue(self, wanted: str | None, fallback: str) -> str:
        """The queue a job of this key goes to; 403 for one outside its allow-list."""
        chosen = check_queue(wanted or self.default_queue or fallback)
        if self.queues is not None and chosen not in self.queues:
            raise error(GATEWAY_FORBIDDEN, f"API key {self.name!r} may not use queue {chosen!r}",
                        queue=chosen, allowed=sorted(self.queues))
        return chosen


@dataclass(frozen=True)
class _Key:
    principal: Principal
    digest: bytes


class KeyRing:
    """The configured keys; empty means the gateway runs keyless (loopback only)."""

    def __init__(self, keys: list[_Key]) -> None:
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def names(self) -> list[str]:
        return [key.principal.name for key in self._keys]

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <key>`` header, or 401."""
        if not self._keys:
            return Principal(ANONYMOUS, None, None)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise error(GATEWAY_UNAUTHORIZED, "an 'Authorization: Bearer <API key>' header is required")
        digest = hashlib.sha256(token.strip().encode()).digest()
        found: Principal | None = None
        for key in self._keys:
            if hmac.compare_digest(key.digest, digest):
                found = key.principal
        if found is None:
            raise error(GATEWAY_UNAUTHORIZED, "the API key is not known to this gateway")
        return found


def load_keys(keys_file: Path | None, inline: str) -> KeyRing:
    """Keys from DANCE_GATEWAY_KEYS_FILE and DANCE_GATEWAY_API_KEYS together; names must be unique."""
    entries = _file_entries(keys_file) if keys_file is not None else []
    entries += [_inline_entry(chunk) for chunk in inline.split(ENTRY_SEPARATOR) if chunk.strip()]
    keys = [_key(entry) for entry in entries]
    names = [key.principal.name for key in keys]
    if len(set(names)) != len(names):
        raise error(CONFIG_INVALID, "API key names must be unique", variable="DANCE_GATEWAY_API_KEYS")
    return KeyRing(keys)


def check_bind(host: str, keys: KeyRing) -> None:
    """Refuse to listen beyond loopback when no key protects the routes."""
    if keys.enabled or _is_loopback(host):
        return
    raise error(GATEWAY_BIND_REFUSED, f"without API keys the gateway listens on loopback only, not {host!r}: "
                "set DANCE_GATEWAY_KEYS_FILE or DANCE_GATEWAY_API_KEYS", host=host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _file_entries(path: Path) -> list[dict[str, Any]]:
    try:
        # YAML is a superset of JSON, so one parser reads both spellings of the file.
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise error(CONFIG_INVALID, f"DANCE_GATEWAY_KEYS_FILE {path} cannot be read: {type(exc).__name__}",
                    variable="DANCE_GATEWAY_KEYS_FILE") from None
    items = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise error(CONFIG_INVALID, f"DANCE_GATEWAY_KEYS_FILE {path} must hold 'keys: [{{name, key, queues}}]'",
                    variable="DANCE_GATEWAY_KEYS_FILE")
    return list(items)


def _inline_entry(chunk: str) -> dict[str, Any]:
    name, sep, rest = chunk.strip().partition("=")
    secret, _, queues = rest.partition("@")
    if not sep:
        # The entry is not echoed: it may be a bare secret.
        raise error(CONFIG_INVALID, "a DANCE_GATEWAY_API_KEYS entry is not name=secret[@queue,queue]",
                    variable="DANCE_GATEWAY_API_KEYS")
    entry: dict[str, Any] = {"name": name.strip(), "key": secret.strip()}
    if queues.strip():
        entry["queues"] = [queue.strip() for queue in queues.split(",") if queue.strip()]
    return entry


def _key(entry: dict[str, Any]) -> _Key:
    name, secret = entry.get("name"), entry.get("key")
    if not isinstance(name, str) or not name.strip():
        raise error(CONFIG_INVALID, "every API key needs a name", variable="DANCE_GATEWAY_API_KEYS")
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_CHARS:
        raise error(CONFIG_INVALID, f"API key {name!r} needs a secret of at least {MIN_SECRET_CHARS} characters",
                    variable="DANCE_GATEWAY_API_KEYS", key=name)
    queues = entry.get("queues")
    if queues is not None and (not isinstance(queues, list) or not queues):
        raise error(CONFIG_INVALID, f"API key {name!r}: queues must be a non-empty list", key=name)
    allowed = frozenset(check_queue(str(queue)) for queue in queues) if queues else None
    default = entry.get("default_queue") or (str(queues[0]) if queues else None)
    if default is not None and allowed is not None and default not in allowed:
        raise error(CONFIG_INVALID, f"API key {name!r}: default_queue {default!r} is not among its queues", key=name)
    principal = Principal(name.strip(), allowed, check_queue(default) if default else None)
    return _Key(principal, hashlib.sha256(secret.encode()).digest())

