"""Leases and Placement against the memory registry with an injected clock (no sleeps)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway import errors
from gateway.events import EventLog
from gateway.jupyter_watchers import KernelWatchers
from gateway.models import Limits, SessionState
from gateway.registry import SessionRecord
from gateway.registry.memory import MemoryRegistry
from gateway.sessions.kernel_slot import KernelSlot
from gateway.sessions.leases import Leases
from gateway.sessions.placement import Here, Placement, There, Vacant
from gateway.sessions.session import Session
from gateway.sessions.table import SessionTable
from gateway.settings import Settings

TTL = 15.0


class Clock:
    """Monotonic time that moves only when told (or when placement waits)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeHandoff:
    """Records what placement asks of the hand-off layer (its own tests are end to end)."""

    def __init__(self, table: SessionTable) -> None:
        self.table = table
        self.lost: list[Session] = []
        self.taken: list[SessionRecord] = []

    async def lose(self, session: Session) -> None:
        self.lost.append(session)
        self.table.remove(session)

    async def take_over(self, record: SessionRecord) -> Session:
        self.taken.append(record)
        session = make_session(record.owner, record.session_id)
        self.table.add(session)
        session.ready.set_result(None)
        return session


def make_session(owner: str, session_id: str) -> Session:
    watchers = KernelWatchers(10)
    return Session(owner, session_id, Limits(), {}, EventLog(10, 10_000), watchers,
                   KernelSlot(None, watchers.tap))  # type: ignore[arg-type]


def record(owner: str, session_id: str, gateway_id: str, url: str | None) -> SessionRecord:
    now = datetime.now(UTC)
    return SessionRecord(session_id=session_id, owner=owner, kernel_id="k", gateway_id=gateway_id,
                         state=SessionState.idle, generation=1, created_at=now,
                         last_activity=now, execution_count=0, limits=Limits(),
                         gateway_url=url)


@pytest.fixture
def world() -> dict[str, Any]:
    clock = Clock()
    registry = MemoryRegistry(clock=clock, shared=True)
    settings = Settings(instance_id="me", lease_ttl_s=TTL, lease_renew_s=5,
                        kernel_start_timeout_s=10)
    table = SessionTable(settings)
    leases = Leases(registry, "me", TTL, clock=clock)
    handoff = FakeHandoff(table)
    placement = Placement(settings, registry, table, leases, handoff,  # type: ignore[arg-type]
                          clock=clock, sleep=clock.sleep)
    return {"clock": clock, "registry": registry, "table": table, "leases": leases,
            "handoff": handoff, "placement": placement}


async def test_a_claimed_lease_is_held_until_its_ttl_runs_out(world: dict[str, Any]) -> None:
    leases, clock = world["leases"], world["clock"]
    assert await leases.claim([("a", "s")]) == [True]
    assert leases.held(("a", "s"))
    clock.now += TTL - 0.1
    assert leases.held(("a", "s"))
    clock.now += 0.2
    assert not leases.held(("a", "s"))


async def test_renew_returns_the_keys_another_replica_holds(world: dict[str, Any]) -> None:
    leases, registry, clock = world["leases"], world["registry"], world["clock"]
    await leases.claim([("a", "mine"), ("a", "stolen")])
    clock.now += TTL + 1  # our leases expired (say the registry was unreachable) ...
    await registry.claim([("a", "stolen")], "other", TTL)  # ... and another replica took one
    assert await leases.renew([("a", "mine"), ("a", "stolen")]) == [("a", "stolen")]
    assert leases.held(("a", "mine")) and not leases.held(("a", "stolen"))


async def test_release_frees_the_lease_for_other_replicas(world: dict[str, Any]) -> None:
    leases, registry = world["leases"], world["registry"]
    await leases.claim([("a", "s")])
    assert await registry.claim([("a", "s")], "other", TTL) == [False]
    await leases.release(("a", "s"))
    assert not leases.held(("a", "s"))
    assert await registry.claim([("a", "s")], "other", TTL) == [True]


async def test_unshared_registry_leases_are_always_held() -> None:
    leases = Leases(MemoryRegistry(), "me", TTL)
    assert leases.held(("a", "never-claimed"))


async def test_local_session_with_a_good_lease_is_here_without_registry_io(
        world: dict[str, Any]) -> None:
    session = make_session("a", "s")
    world["table"].add(session)
    session.ready.set_result(None)
    await world["leases"].claim([session.key])
    world["registry"].lookup = None  # any registry read would fail now
    assert await world["placement"].locate("a", "s", create=False) == Here(session)


async def test_unknown_session_is_not_found_or_vacant_when_created(world: dict[str, Any]) -> None:
    placement = world["placement"]
    with pytest.raises(errors.SessionNotFound):
        await placement.locate("a", "new", create=False)
    assert await placement.locate("a", "new", create=True) == Vacant()
    assert world["leases"].held(("a", "new"))  # the caller opens it under our lease


async def test_invalid_session_id_is_refused_before_any_lookup(world: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidSessionId):
        await world["placement"].locate("a", "../etc", create=True)


async def test_session_held_by_another_replica_is_there(world: dict[str, Any]) -> None:
    registry, clock = world["registry"], world["clock"]
    await registry.put(record("a", "s", "other", "http://other:8888"))
    await registry.claim([("a", "s")], "other", TTL)
    where = await world["placement"].locate("a", "s", create=False)
    assert isinstance(where, There) and where.url == "http://other:8888"
    assert where.deadline == clock.now + TTL + 10  # one deadline: lease ttl + start timeout


async def test_a_down_owner_is_waited_out_then_taken_over(world: dict[str, Any]) -> None:
    registry, clock, placement = world["registry"], world["clock"], world["placement"]
    await registry.put(record("a", "s", "other", "http://other:8888"))
    await registry.claim([("a", "s")], "other", TTL)
    started = clock.now
    where = await placement.locate("a", "s", create=False)
    for _ in range(100):  # as a handler does: every forward there is refused
        if not isinstance(where, There):
            break
        placement.mark_down(where.url)
        where = await placement.locate("a", "s", create=False, deadline=where.deadline)
    assert isinstance(where, Here)
    assert [r.session_id for r in world["handoff"].taken] == ["s"]
    assert TTL - 1 <= clock.now - started <= TTL + 1  # waited for the lease to expire, no more


async def test_an_owner_that_keeps_renewing_but_refuses_runs_out_the_one_deadline(
        world: dict[str, Any]) -> None:
    registry, clock, placement = world["registry"], world["clock"], world["placement"]
    await registry.put(record("a", "s", "other", "http://other:8888"))
    where = None
    with pytest.raises(errors.OwnerUnreachable):
        for _ in range(100):  # bounded: the deadline must end this long before
            await registry.claim([("a", "s")], "other", TTL)  # "other" keeps renewing
            where = await placement.locate("a", "s", create=False,
                                           deadline=where.deadline if where else None)
            assert isinstance(where, There)
            placement.mark_down(where.url)
    assert clock.now <= 1000.0 + TTL + 10 + 1


async def test_a_session_whose_lease_was_taken_is_lost_and_located_elsewhere(
        world: dict[str, Any]) -> None:
    registry, clock, placement = world["registry"], world["clock"], world["placement"]
    session = make_session("a", "s")
    world["table"].add(session)
    session.ready.set_result(None)
    await world["leases"].claim([session.key])
    clock.now += TTL + 1
    await registry.put(record("a", "s", "other", "http://other:8888"))
    await registry.claim([("a", "s")], "other", TTL)
    where = await placement.locate("a", "s", create=False)
    assert world["handoff"].lost == [session]
    assert isinstance(where, There)


async def test_a_remembered_place_saves_the_registry_until_forgotten_or_stale(
        world: dict[str, Any]) -> None:
    registry, clock, placement = world["registry"], world["clock"], world["placement"]
    await registry.put(record("a", "s", "other", "http://other:8888"))
    await registry.claim([("a", "s")], "other", TTL)
    assert isinstance(await placement.locate("a", "s", create=False, remembered=True), There)
    lookup, world["registry"].lookup = registry.lookup, None  # a registry read fails now
    where = await placement.locate("a", "s", create=False, remembered=True)
    assert isinstance(where, There) and where.url == "http://other:8888"
    with pytest.raises(TypeError):  # callers that cannot tell a stale place ask the registry
        await placement.locate("a", "s", create=False)
    placement.forget("a", "s")  # "not served here": the registry is asked again
    with pytest.raises(TypeError):
        await placement.locate("a", "s", create=False, remembered=True)
    world["registry"].lookup = lookup
    await placement.locate("a", "s", create=False, remembered=True)
    placement.mark_down("http://other:8888")  # refused: every place there is forgotten
    world["registry"].lookup = None
    with pytest.raises(TypeError):
        await placement.locate("a", "s", create=False, remembered=True)
    world["registry"].lookup = lookup
    clock.now += 2 * TTL  # (the owner renewed meanwhile)
    await registry.claim([("a", "s")], "other", TTL)
    await placement.locate("a", "s", create=False, remembered=True)
    clock.now += TTL + 0.1  # remembered no longer than a lease
    world["registry"].lookup = None
    with pytest.raises(TypeError):
        await placement.locate("a", "s", create=False, remembered=True)
