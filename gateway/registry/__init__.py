"""The Registry protocol: where session records live (``memory`` here, ``redis`` when shared).

A record is everything another gateway process needs to find and talk to a session's
kernel again, the HMAC key included: a shared registry is trusted infrastructure.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from gateway.launchers import KernelHandle
from gateway.models import Limits, SessionInfo, SessionState

if TYPE_CHECKING:
    from gateway.settings import Settings


class SessionRecord(BaseModel):
    session_id: str
    owner: str  # API key name, never the token
    kernel_id: str
    gateway_id: str
    state: SessionState
    generation: int
    created_at: datetime
    last_activity: datetime
    execution_count: int
    limits: Limits
    handle: KernelHandle | None = None
    gateway_url: str | None = None  # where other replicas forward calls for this session

    def info(self) -> SessionInfo:
        return SessionInfo(
            id=self.session_id, kernel_id=self.kernel_id, state=self.state,
            generation=self.generation, created_at=self.created_at,
            last_activity=self.last_activity, execution_count=self.execution_count,
            queued=0, limits=self.limits,
        )


class Registry(Protocol):
    name: str

    async def ping(self) -> None:
        """Raise RegistryUnavailable if the registry cannot be reached."""

    async def get(self, owner: str, session_id: str) -> SessionRecord | None: ...

    async def put(self, record: SessionRecord) -> None: ...

    async def delete(self, owner: str, session_id: str) -> None: ...

    async def list(self, owner: str | None = None) -> list[SessionRecord]: ...

    async def close(self) -> None: ...


def make_registry(settings: Settings) -> Registry:
    if settings.registry_url.startswith("memory:"):
        from gateway.registry.memory import MemoryRegistry

        return MemoryRegistry()
    if settings.registry_url.startswith(("redis:", "rediss:", "unix:")):
        from gateway.registry.redis import RedisRegistry

        return RedisRegistry(settings.registry_url, settings.redis_key_prefix,
                             settings.redis_timeout_s)
    raise ValueError(f"unsupported registry_url scheme: {settings.registry_url.split(':')[0]!r}")
