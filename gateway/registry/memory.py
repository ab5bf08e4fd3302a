"""MemoryRegistry: session records in a dict; one gateway process, gone when it stops."""

from __future__ import annotations

from gateway.registry import SessionRecord


class MemoryRegistry:
    name = "memory"

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], SessionRecord] = {}

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

    async def close(self) -> None:
        self._records.clear()
