"""MemoryRegistry: session records in a dict; one gateway process, gone when it stops."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable

from gateway.registry import SessionKey, SessionRecord


class MemoryRegistry:
    name = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 shared: bool = False) -> None:
        """``clock`` (lease expiry) and ``shared`` (act as a registry other replicas use) are
        for tests of the lease logic."""
        self._clock = clock
        self.shared = shared
        self._records: dict[SessionKey, SessionRecord] = {}
        self._leases: dict[SessionKey, tuple[str, float]] = {}  # → (holder, monotonic expiry)

    async def ping(self) -> None:
        return None

    async def get(self, owner: str, session_id: str) -> SessionRecord | None:
        record = self._records.get((owner, session_id))
        return record.model_copy() if record is not None else None

    async def put(self, record: SessionRecord) -> None:
        self._records[(record.owner, record.session_id)] = record.model_copy()

    async def delete(self, owner: str, session_id: str) -> None:
        self._records.pop((owner, session_id), None)

    async def list(self, owner: str | None = None) -> list[SessionRecord]:
        return [r.model_copy() for (o, _), r in self._records.items() if owner in (None, o)]

    async def claim(
        self, keys: builtins.list[SessionKey], holder: str, ttl_s: float
    ) -> builtins.list[bool]:
        granted = []
        for key in keys:
            ok = self._holder(key) in (None, holder)
            if ok:
                self._leases[key] = (holder, self._clock() + ttl_s)
            granted.append(ok)
        return granted

    def _holder(self, key: SessionKey) -> str | None:
        lease = self._leases.get(key)
        if lease is None or lease[1] <= self._clock():
            return None
        return lease[0]

    async def lookup(self, owner: str, session_id: str) -> tuple[SessionRecord | None, str | None]:
        return await self.get(owner, session_id), self._holder((owner, session_id))

    async def release(self, owner: str, session_id: str, holder: str) -> None:
        lease = self._leases.get((owner, session_id))
        if lease is not None and (lease[0] == holder or lease[1] <= self._clock()):
            del self._leases[(owner, session_id)]  # (an expired one too: nothing is kept)

    async def close(self) -> None:
        self._records.clear()
        self._leases.clear()
