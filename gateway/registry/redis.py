"""RedisRegistry: session records shared by gateway processes (redis.asyncio).

Records hold kernels' HMAC keys: Redis is trusted infrastructure (use a password and TLS
(``rediss://``) where it is reachable by anyone but the gateways). Layout, under the key
prefix: ``session:<owner>:<session_id>`` → the record as JSON; ``sessions`` → a set of those
keys, so listing never needs SCAN; ``lease:<owner>:<session_id>`` → the holder's instance id,
expiring (PX). Leases change only through Lua scripts, so check-and-set is atomic.

Owner and session id are percent-encoded (``quote(..., safe="")``), so neither ever holds the
``:`` separator: no owner's keys start with another owner's (``alice`` vs ``alice:ci``), and a
key parses back to exactly one (owner, session id). Names made of ``A-Za-z0-9._-`` (every
session id, the usual key names) encode to themselves, so records written before keep their
keys.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import RegistryUnavailable
from gateway.registry import SessionKey, SessionRecord

# KEYS: leases; ARGV: holder, ttl in ms. Per key: 1 if granted (free or already ours), else 0.
_CLAIM = """
local granted = {}
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if not current or current == ARGV[1] then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    granted[i] = 1
  else
    granted[i] = 0
  end
end
return granted
"""
# KEYS[1]: a lease; ARGV[1]: holder. Delete it only if the holder still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Redis and socket errors as the one domain error callers handle (httpx's
    ``map_httpcore_exceptions``): every Redis call of this module runs inside it."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise RegistryUnavailable(f"redis is not reachable: {type(exc).__name__}") from exc


class RedisRegistry:
    name = "redis"
    shared = True

    def __init__(self, url: str, prefix: str, timeout_s: float, *, password: str | None = None,
                 ca_file: str | None = None) -> None:
        """``password`` (when the URL has none) and ``ca_file`` (the CA that signed a
        ``rediss://`` server's certificate, instead of the system's) come from settings."""
        self.prefix = prefix
        options: dict[str, Any] = {}
        if password is not None:
            options["password"] = password
        if ca_file is not None and url.startswith("rediss:"):
            options["ssl_ca_certs"] = ca_file
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=30, **options,
        )
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)

    def _key(self, owner: str, session_id: str) -> str:
        return f"{self._owner_keys(owner)}{_encode(session_id)}"

    def _owner_keys(self, owner: str) -> str:
        """What every record key of ``owner`` starts with, and no other owner's does."""
        return f"{self.prefix}session:{_encode(owner)}:"

    def _lease(self, owner: str, session_id: str) -> str:
        return f"{self.prefix}lease:{_encode(owner)}:{_encode(session_id)}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}sessions"

    async def ping(self) -> None:
        with translated_errors():
            await self._redis.ping()

    async def get(self, owner: str, session_id: str) -> SessionRecord | None:
        with translated_errors():
            raw = await self._redis.get(self._key(owner, session_id))
        return SessionRecord.model_validate_json(raw) if raw is not None else None

    async def put(self, record: SessionRecord) -> None:
        key = self._key(record.owner, record.session_id)
        with translated_errors():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(key, record.model_dump_json())
                pipe.sadd(self._index, key)
                await pipe.execute()

    async def delete(self, owner: str, session_id: str) -> None:
        key = self._key(owner, session_id)
        with translated_errors():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.srem(self._index, key)
                await pipe.execute()

    async def list(self, owner: str | None = None) -> list[SessionRecord]:
        with translated_errors():
            members = await self._redis.smembers(self._index)
            keys = sorted(k.decode() if isinstance(k, bytes) else k for k in members)
            if owner is not None:
                mine = self._owner_keys(owner)
                keys = [k for k in keys if k.startswith(mine) and ":" not in k[len(mine):]]
            values = await self._redis.mget(keys) if keys else []
        records = [SessionRecord.model_validate_json(v) for v in values if v is not None]
        return [r for r in records if owner in (None, r.owner)]

    async def claim(
        self, keys: builtins.list[SessionKey], holder: str, ttl_s: float
    ) -> builtins.list[bool]:
        if not keys:
            return []
        with translated_errors():
            granted = await self._claim(keys=[self._lease(*k) for k in keys],
                                        args=[holder, max(1, round(ttl_s * 1000))])
        return [bool(g) for g in granted]

    async def lookup(self, owner: str, session_id: str) -> tuple[SessionRecord | None, str | None]:
        with translated_errors():
            raw, lease = await self._redis.mget(self._key(owner, session_id),
                                                self._lease(owner, session_id))
        record = SessionRecord.model_validate_json(raw) if raw is not None else None
        return record, lease.decode() if isinstance(lease, bytes) else lease

    async def release(self, owner: str, session_id: str, holder: str) -> None:
        with translated_errors():
            await self._release(keys=[self._lease(owner, session_id)], args=[holder])

    async def close(self) -> None:
        await self._redis.aclose()


def _encode(component: str) -> str:
    """A key component that never holds ':' (percent-encoding: ``%`` itself is encoded too)."""
    return quote(component, safe="")
