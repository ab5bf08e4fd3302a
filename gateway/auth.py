"""Auth: API keys (name → token) and the one check every request goes through.

Tokens are compared in constant time against every key (no early exit); only the key's
*name* travels further (session ownership, logs), never the token.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import stat
from pathlib import Path

from gateway.errors import Unauthorized
from gateway.settings import Settings

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"


# Names travel into registry keys, container labels and key=value logs: no separators
# (':' '/'), no spaces, no '='.
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
DEFAULT_KEY = "default"  # the name of GATEWAY_TOKEN's key


class KeysFileError(ValueError):
    """The keys file cannot be used; the message is one line and never holds a token."""


def read_keys_file(path: Path) -> dict[str, str]:
    """Parse ``name token`` lines (``#`` comments, blank lines ignored). Raises KeysFileError
    for an unreadable file, one writable by group or others, a malformed line, a bad or
    repeated name, a repeated token, or no keys at all; logs a warning when group or others
    may read it (container secrets are often mounted 0444/0644)."""
    try:
        mode = os.stat(path).st_mode
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"keys file {path}: cannot read it: "
                            f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KeysFileError(f"keys file {path}: writable by group or others (anyone could add "
                            f"a key): chmod 600 it")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("keys file %s is readable by group or others: chmod 600 it unless only this "
                    "gateway can see it", path)
    keys: dict[str, str] = {}
    seen_names: dict[str, int] = {}
    seen_tokens: dict[str, tuple[str, int]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"keys file {path}: line {number}"
        parts = line.split()
        if len(parts) != 2 or len(parts[1]) < 16:
            raise KeysFileError(f"{where}: expected 'name token' with a token of 16+ chars")
        name, token = parts
        if not KEY_NAME_RE.match(name):
            raise KeysFileError(f"{where}: key name {name!r} must be 1-64 of A-Z a-z 0-9 . _ "
                                f"@ + - (no ':' or '/')")
        if name in seen_names:
            raise KeysFileError(f"{where}: key name {name!r} is also on line {seen_names[name]}")
        if token in seen_tokens:
            first, first_line = seen_tokens[token]
            raise KeysFileError(f"{where}: the token of {name!r} is also on line {first_line} "
                                f"({first!r}): each key needs its own token")
        seen_names[name], seen_tokens[token] = number, (name, number)
        keys[name] = token
    if not keys:
        raise KeysFileError(f"keys file {path}: no keys in it (lines of 'name token')")
    return keys


class Auth:
    def __init__(self, keys: dict[str, str], *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._keys = [(name, token.encode()) for name, token in keys.items()]
        self.generated: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Auth:
        """Keys from settings; with none configured, generate one (see ``generated``).
        Raises KeysFileError (the caller refuses to start)."""
        if settings.allow_unauthenticated:
            log.warning("authentication is OFF (allow_unauthenticated): anyone who can reach "
                        "this port can run code")
            return cls({}, enabled=False)
        keys: dict[str, str] = {}
        if settings.keys_file is not None:
            keys.update(read_keys_file(settings.keys_file))
        token = settings.token.get_secret_value() if settings.token is not None else ""
        if token:
            where = f"keys file {settings.keys_file}"
            if DEFAULT_KEY in keys:
                raise KeysFileError(f"{where}: defines {DEFAULT_KEY!r}, the name GATEWAY_TOKEN's "
                                    f"key has: rename it or unset GATEWAY_TOKEN")
            same = [name for name, other in keys.items() if other == token]
            if same:
                raise KeysFileError(f"{where}: GATEWAY_TOKEN is also the token of {same[0]!r}")
            keys[DEFAULT_KEY] = token
        auth = cls(keys)
        if not keys:
            auth.generated = secrets.token_urlsafe(32)
            auth._keys = [(DEFAULT_KEY, auth.generated.encode())]
        return auth

    def authenticate(self, header: str | None, query_token: str | None,
                     api_key: str | None = None) -> str:
        """The key name for a request's credentials: ``Authorization: Bearer`` (or ``token``),
        else an ``X-API-Key`` header, else ``?token=``. Raises Unauthorized."""
        if not self.enabled:
            return ANONYMOUS
        token = (api_key or "").strip() or query_token or ""
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() in ("bearer", "token"):
                token = value.strip() or token
        if not token:
            raise Unauthorized("missing token: send 'Authorization: Bearer <token>' "
                               "or 'X-API-Key: <token>'")
        given = token.encode()
        found: str | None = None
        for name, expected in self._keys:
            if hmac.compare_digest(given, expected) and found is None:
                found = name
        if found is None:
            raise Unauthorized("invalid token")
        return found
