"""Placement: where a session is served — here, at another replica, or nowhere yet — as a
value (starlette's ``Match``), never an exception.

A local hit costs no I/O (the execute hot path). Otherwise the registry says who holds the
session's lease: that replica's URL (``There``), or, when the lease is free or expired, this
replica claims it and either takes the session over or (``Vacant``) opens it. Waiting for a
lease to settle has one deadline, carried in ``There`` so a retried forward keeps it.

Where another replica serves a session is remembered for ``lease_ttl_s`` (the forwarded hot
path then costs no registry call either). A remembered place can only be stale in a way the
forward notices without running anything — that replica refuses the connection
(``mark_down``) or answers that it no longer serves the session (``forget``) — and the
registry is asked again.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway import errors
from gateway.models import SessionState
from gateway.policy import check_session_id
from gateway.registry import Registry, SessionRecord
from gateway.sessions.handoff import Handoff
from gateway.sessions.leases import Leases
from gateway.sessions.session import Session
from gateway.sessions.table import SessionTable
from gateway.settings import Settings

POLL_S = 0.1
MAX_REMEMBERED = 100_000  # places of sessions served elsewhere (oldest forgotten first)


@dataclass(frozen=True)
class Here:
    session: Session


@dataclass(frozen=True)
class There:
    url: str
    deadline: float  # pass back to ``locate`` when the call there failed and is retried


@dataclass(frozen=True)
class Vacant:
    """Nobody serves the session; this replica holds its lease now and should open it."""


Where = Here | There | Vacant


class Placement:
    def __init__(self, settings: Settings, registry: Registry, table: SessionTable,
                 leases: Leases, handoff: Handoff, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._settings = settings
        self._registry = registry
        self._table = table
        self._leases = leases
        self._handoff = handoff
        self._clock = clock
        self._sleep = sleep
        self._down: dict[str, float] = {}  # replica URL → until when it counts as down
        # (owner, session id) → (URL of the replica serving it, until when to believe that)
        self._places: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    async def locate(self, owner: str, session_id: str, *, create: bool,
                     deadline: float | None = None, remembered: bool = False) -> Where:
        """Where ``session_id`` of ``owner`` is served (``remembered``: a place remembered
        from an earlier call will do, for callers that notice when it is stale). Raises
        InvalidSessionId, SessionNotFound (absent and not ``create``), OwnerUnreachable (its
        holder stays silent past ``deadline``), RegistryUnavailable."""
        key = (owner, check_session_id(session_id))
        session = self._table.get(key)
        if session is not None and await self.holds(session):
            await asyncio.shield(session.ready)
            return Here(session)
        now = self._clock()
        place = self._places.get(key) if remembered else None
        if place is not None and place[1] > now and self._down.get(place[0], 0.0) < now:
            return There(place[0], deadline if deadline is not None else self._deadline())
        where = await self._elsewhere(owner, session_id, create, deadline)
        if isinstance(where, There):
            self._places[key] = (where.url, self._clock() + self._settings.lease_ttl_s)
            self._places.move_to_end(key)
            if len(self._places) > MAX_REMEMBERED:
                self._places.popitem(last=False)
        return where

    def remembered(self, owner: str, session_id: str) -> str | None:
        """The URL of the replica remembered as serving the session (not here, not down),
        without waiting for anything; None when there is none to trust."""
        key = (owner, session_id)
        place = self._places.get(key)
        now = self._clock()
        if place is None or place[1] <= now or self._down.get(place[0], 0.0) >= now \
                or key in self._table:
            return None
        return place[0]

    def forget(self, owner: str, session_id: str) -> None:
        """The replica remembered as serving the session said it does not (any more)."""
        self._places.pop((owner, session_id), None)

    def _deadline(self) -> float:
        return self._clock() + self._settings.lease_ttl_s + self._settings.kernel_start_timeout_s

    async def holds(self, session: Session) -> bool:
        """Whether this replica still serves ``session``: a registry call only when renewals
        have not got through for a whole lease (the registry was unreachable)."""
        if self._leases.held(session.key):
            return True
        if (await self._leases.claim([session.key]))[0]:
            return True
        await self._handoff.lose(session)
        return False

    async def _elsewhere(self, owner: str, session_id: str, create: bool,
                         deadline: float | None) -> Where:
        me, key = self._settings.instance_id, (owner, session_id)
        if deadline is None:
            deadline = self._deadline()
        while True:
            record, holder = await self._registry.lookup(owner, session_id)
            if holder in (None, me):
                if record is None and not create:
                    hint = "" if self._settings.create_on_execute else (
                        " (create it first with POST /v1/sessions)")
                    raise errors.SessionNotFound(f"no session {session_id!r}{hint}")
                if (await self._leases.claim([key]))[0]:
                    return Vacant() if record is None else await self._take_over(record)
            elif record is not None and record.gateway_id == holder:
                if not record.gateway_url:
                    raise errors.OwnerUnreachable(
                        f"session {session_id!r} lives on gateway {record.gateway_id!r}, "
                        "which published no internal URL")
                if self._down.get(record.gateway_url, 0.0) < self._clock():
                    return There(record.gateway_url, deadline)
            # else: the holder is starting the session or taking it over, or just went down
            if self._clock() > deadline:
                raise errors.OwnerUnreachable(
                    f"session {session_id!r} is held by gateway {holder!r}, which does not answer")
            await self._sleep(POLL_S)

    async def _take_over(self, record: SessionRecord) -> Here:
        return Here(await self._handoff.take_over(record))

    def mark_down(self, url: str) -> None:
        """The replica at ``url`` refused a forwarded call: wait for its leases to expire (or
        for it to come back) instead of forwarding there again at once."""
        self._down[url] = self._clock() + self._settings.lease_renew_s
        for key in [k for k, (place, _) in self._places.items() if place == url]:
            del self._places[key]

    async def served_elsewhere(self, owner: str) -> builtins.list[SessionRecord]:
        """This key's sessions that other replicas serve (none without a shared registry),
        and its hibernated sessions (served nowhere)."""
        return [r for r in await self._registry.list(owner)
                if (owner, r.session_id) not in self._table
                and (self._leases.shared or r.state == SessionState.hibernated)]

    async def session_of_kernel(self, owner: str, kernel_id: str) -> str:
        """The id of ``owner``'s session whose kernel is ``kernel_id``, here or elsewhere.
        Raises SessionNotFound (also for another key's kernel)."""
        key = self._table.key_of_kernel(kernel_id)
        if key is not None and key[0] == owner:
            return key[1]
        # served by another replica, or hibernated? (kernel ids derive from ids)
        for record in await self._registry.list(owner):
            if record.kernel_id == kernel_id:
                return record.session_id
        raise errors.SessionNotFound(f"no kernel {kernel_id!r}")

    async def orphans(self) -> builtins.list[SessionRecord]:
        """Records whose lease nobody holds (their replica crashed, or stopped and did not
        come back within a lease), now leased here: one registry call claims them all."""
        records = [r for r in await self._registry.list()  # hibernated ones wait for a call
                   if (r.owner, r.session_id) not in self._table
                   and r.state != SessionState.hibernated]
        granted = await self._leases.claim([(r.owner, r.session_id) for r in records])
        return [r for r, ok in zip(records, granted, strict=True) if ok]
