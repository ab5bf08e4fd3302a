"""The Registry contract, run against both backends (memory, and a real redis-server)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from gateway.errors import RegistryUnavailable
from gateway.kernel import ConnectionInfo
from gateway.launchers import KernelHandle
from gateway.models import Limits, SessionState
from gateway.registry import Registry, SessionRecord
from gateway.registry.memory import MemoryRegistry
from gateway.registry.redis import RedisRegistry


@pytest.fixture(params=["memory", "redis"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    if request.param == "memory":
        reg: Registry = MemoryRegistry()
    else:
        url = request.getfixturevalue("redis_url")
        reg = RedisRegistry(url, f"test-{secrets.token_hex(4)}:", 5.0)
    yield reg
    await reg.close()


def record(owner: str, sid: str, generation: int = 1) -> SessionRecord:
    now = datetime.now(UTC)
    handle = KernelHandle(launcher="docker", kernel_id="k", session_id=sid, ref="abc",
                          socket_dir="/tmp/x", connection=ConnectionInfo.for_ipc("/tmp/x/k"))
    return SessionRecord(session_id=sid, owner=owner, kernel_id="k-" + sid, gateway_id="gw-a",
                         state=SessionState.idle, generation=generation, created_at=now,
                         last_activity=now, execution_count=3, limits=Limits(memory_mb=256),
                         handle=handle)


async def test_put_get_round_trips_the_whole_record(registry: Registry) -> None:
    rec = record("alice", "s1")
    await registry.put(rec)
    got = await registry.get("alice", "s1")
    assert got == rec
    assert got is not None and got.handle is not None
    assert got.handle.connection.key == rec.handle.connection.key  # type: ignore[union-attr]


async def test_records_are_namespaced_by_owner(registry: Registry) -> None:
    await registry.put(record("alice", "s1"))
    await registry.put(record("bob", "s1", generation=5))
    assert (await registry.get("bob", "s1")).generation == 5  # type: ignore[union-attr]
    assert [r.owner for r in await registry.list("alice")] == ["alice"]
    assert {r.owner for r in await registry.list()} == {"alice", "bob"}


async def test_put_replaces_and_delete_removes(registry: Registry) -> None:
    await registry.put(record("alice", "s1"))
    await registry.put(record("alice", "s1", generation=2))
    assert len(await registry.list("alice")) == 1
    await registry.delete("alice", "s1")
    assert await registry.get("alice", "s1") is None
    assert await registry.list() == []
    await registry.delete("alice", "s1")  # idempotent


async def test_ping_reports_unreachable_redis() -> None:
    from tests.conftest import free_port

    reg = RedisRegistry(f"redis://127.0.0.1:{free_port()}/0", "x:", 0.5)
    with pytest.raises(RegistryUnavailable):
        await reg.ping()
    await reg.close()


async def test_a_lease_has_one_holder_until_it_expires(registry: Registry) -> None:
    key = ("alice", "s1")
    assert await registry.holder(*key) is None
    assert await registry.claim([key], "gw-a", 0.3) == [True]
    assert await registry.holder(*key) == "gw-a"
    assert await registry.claim([key], "gw-b", 5.0) == [False]  # held: not B's to take
    assert await registry.claim([key], "gw-a", 0.3) == [True]  # renewal
    await asyncio.sleep(0.5)  # not renewed: expired
    assert await registry.holder(*key) is None
    assert await registry.claim([key], "gw-b", 5.0) == [True]
    assert await registry.holder(*key) == "gw-b"


async def test_claim_answers_per_key_in_order(registry: Registry) -> None:
    await registry.claim([("alice", "taken")], "gw-b", 5.0)
    keys = [("alice", "free"), ("alice", "taken"), ("bob", "taken")]
    assert await registry.claim(keys, "gw-a", 5.0) == [True, False, True]
    assert await registry.claim([], "gw-a", 5.0) == []


async def test_release_only_by_the_holder(registry: Registry) -> None:
    key = ("alice", "s1")
    await registry.claim([key], "gw-a", 5.0)
    await registry.release(*key, "gw-b")
    assert await registry.holder(*key) == "gw-a"
    await registry.release(*key, "gw-a")
    assert await registry.holder(*key) is None
    await registry.release(*key, "gw-a")  # idempotent
