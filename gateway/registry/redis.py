"""RedisRegistry: session records shared by gateway processes (redis.asyncio).

Records hold kernels' HMAC keys: Redis is trusted infrastructure (use a password and TLS
(``rediss://``) where it is reachable by anyone but the gateways). Layout, under the key
prefix: ``session:<owner>:<session_id>`` → the record as JSON; ``sessions`` → a set of those
keys, so listing never needs SCAN.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import RegistryUnavailable
from gateway.registry import SessionRecord


class RedisRegistry:
    name = "redis"

    def __init__(self, url: str, prefix: str, timeout_s: float) -> None:
        self.prefix = prefix
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )

    def _key(self, owner: str, session_id: str) -> str:
        return f"{self.prefix}session:{owner}:{session_id}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}sessions"

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"redis is not reachable: {type(exc).__name__}") from exc

    async def get(self, owner: str, session_id: str) -> SessionRecord | None:
        try:
            raw = await self._redis.get(self._key(owner, session_id))
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable("redis is not reachable") from exc
        return SessionRecord.model_validate_json(raw) if raw is not None else None

    async def put(self, record: SessionRecord) -> None:
        key = self._key(record.owner, record.session_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(key, record.model_dump_json())
                pipe.sadd(self._index, key)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable("redis is not reachable") from exc

    async def delete(self, owner: str, session_id: str) -> None:
        key = self._key(owner, session_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.srem(self._index, key)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable("redis is not reachable") from exc

    async def list(self, owner: str | None = None) -> list[SessionRecord]:
        try:
            members = await self._redis.smembers(self._index)
            keys = sorted(k.decode() if isinstance(k, bytes) else k for k in members)
            if owner is not None:
                keys = [k for k in keys if k.startswith(f"{self.prefix}session:{owner}:")]
            values = await self._redis.mget(keys) if keys else []
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable("redis is not reachable") from exc
        return [SessionRecord.model_validate_json(v) for v in values if v is not None]

    async def close(self) -> None:
        await self._redis.aclose()
