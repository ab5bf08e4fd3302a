"""Auth: API keys (name → token) and the one check every request goes through.

Tokens are compared in constant time against every key (no early exit); only the key's
*name* travels further (session ownership, logs), never the token.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from pathlib import Path

from gateway.errors import Unauthorized
from gateway.settings import Settings

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"


def read_keys_file(path: Path) -> dict[str, str]:
    """Parse ``name token`` lines (``#`` comments, blank lines ignored). Raises ValueError."""
    keys: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[1]) < 16:
            raise ValueError(f"{path}:{number}: expected 'name token' with a token of 16+ chars")
        keys[parts[0]] = parts[1]
    return keys


class Auth:
    def __init__(self, keys: dict[str, str], *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._keys = [(name, token.encode()) for name, token in keys.items()]
        self.generated: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Auth:
        """Keys from settings; with none configured, generate one (see ``generated``)."""
        if settings.allow_unauthenticated:
            log.warning("authentication is OFF (allow_unauthenticated): anyone who can reach "
                        "this port can run code")
            return cls({}, enabled=False)
        keys: dict[str, str] = {}
        if settings.keys_file is not None:
            keys.update(read_keys_file(settings.keys_file))
        if settings.token is not None and settings.token.get_secret_value():
            keys["default"] = settings.token.get_secret_value()
        auth = cls(keys)
        if not keys:
            auth.generated = secrets.token_urlsafe(32)
            auth._keys = [("default", auth.generated.encode())]
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
