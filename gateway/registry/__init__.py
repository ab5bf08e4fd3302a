"""The Registry protocol: where session records live (``memory`` here, ``redis`` when shared).

A record is everything another gateway process needs to find and talk to a session's
kernel again, the HMAC key included: a shared registry is trusted infrastructure.

A **lease** per session says which gateway serves it now. The holder renews its leases every
``lease_renew_s``; a lease not renewed for ``lease_ttl_s`` (its gateway crashed or lost the
registry) expires, and the next gateway that needs the session claims it and takes it over.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from gateway.launchers import KernelHandle
from gateway.models import Limits, SessionInfo, SessionState
from gateway.snapshots import SnapshotRef

if TYPE_CHECKING:
    from gateway.settings import Settings


SessionKey = tuple[str, str]  # (owner, session_id)


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
    workspace: str | None = None  # host path of the session's workspace (kept across kernels)
    snapshot: SnapshotRef | None = None  # a hibernated session's (or one being restored)

    def info(self) -> SessionInfo:
        return SessionInfo(
            id=self.session_id, kernel_id=self.kernel_id, state=self.state,
            generation=self.generation, created_at=self.created_at,
            last_activity=self.last_activity, execution_count=self.execution_count,
            queued=0, limits=self.limits,
        )


class Registry(Protocol):
    name: str
    shared: bool  # other gateway processes may read and write the same records

    async def ping(self) -> None:
        """Raise RegistryUnavailable if the registry cannot be reached."""

    async def get(self, owner: str, session_id: str) -> SessionRecord | None: ...

    async def put(self, record: SessionRecord) -> None: ...

    async def delete(self, owner: str, session_id: str) -> None: ...

    async def list(self, owner: str | None = None) -> list[SessionRecord]: ...

    async def claim(
        self, keys: builtins.list[SessionKey], holder: str, ttl_s: float
    ) -> builtins.list[bool]:
        """Take or renew the lease of each (owner, session_id) for ``ttl_s``: granted if it is
        free or already ``holder``'s. One answer per key, in order (one round trip)."""

    async def lookup(self, owner: str, session_id: str) -> tuple[SessionRecord | None, str | None]:
        """The record and who holds the session's lease now (None once it expired or was
        released), in one round trip: where to find the session."""

    async def release(self, owner: str, session_id: str, holder: str) -> None:
        """Give the lease up, if ``holder`` still holds it."""

    async def close(self) -> None: ...


def make_registry(settings: Settings) -> Registry:
    if settings.registry_url.startswith("memory:"):
        from gateway.registry.memory import MemoryRegistry

        return MemoryRegistry()
    if settings.registry_url.startswith(("redis:", "rediss:", "unix:")):
        from gateway.registry.redis import RedisRegistry

        password = settings.redis_password
        return RedisRegistry(
            settings.registry_url, settings.redis_key_prefix, settings.redis_timeout_s,
            password=password.get_secret_value() if password is not None else None,
            ca_file=str(settings.redis_ca_file) if settings.redis_ca_file is not None else None,
        )
    raise ValueError(f"unsupported registry_url scheme: {settings.registry_url.split(':')[0]!r}")
