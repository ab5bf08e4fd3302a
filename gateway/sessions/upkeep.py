"""Upkeep: the session layer's background passes — reaping (after taking over orphaned
sessions, so every session is reaped once, by its current holder), batched activity writes,
and lease renewal. Each pass returns or acts on lists; a failed pass never stops the loop."""

from __future__ import annotations

import asyncio
import logging

from gateway import errors
from gateway.metrics import Metrics
from gateway.registry import Registry, SessionRecord
from gateway.sessions.handoff import Handoff
from gateway.sessions.hibernation import Hibernation
from gateway.sessions.leases import Leases
from gateway.sessions.lifecycle import Lifecycle
from gateway.sessions.placement import Placement
from gateway.sessions.reaper import Reaper
from gateway.sessions.records import Records
from gateway.sessions.session import Session
from gateway.sessions.table import SessionTable
from gateway.settings import Settings

log = logging.getLogger(__name__)


class Upkeep:
    def __init__(self, settings: Settings, registry: Registry, metrics: Metrics,
                 table: SessionTable, leases: Leases, placement: Placement, handoff: Handoff,
                 records: Records, lifecycle: Lifecycle, hibernation: Hibernation) -> None:
        self._settings = settings
        self._registry = registry
        self._metrics = metrics
        self._table = table
        self._leases = leases
        self._placement = placement
        self._handoff = handoff
        self._records = records
        self._lifecycle = lifecycle
        self._hibernation = hibernation
        self._reaper = Reaper(settings)

    async def reap_forever(self) -> None:
        await self._reaper.run_forever(self.reap_once)

    async def reap_once(self) -> int:
        """Remove (delete or hibernate, as ``reap_action`` says) idle and over-age sessions,
        and expired snapshots; returns how many sessions."""
        if self._leases.shared:
            for record in await self._placement.orphans():
                await self._adopt_orphan(record)
        doomed = self._reaper.doomed(list(self._table))
        for session, why in doomed:
            log.info("reaping session_id=%s why=%s", session.id, why)
            self._metrics.reaped.labels(why).inc()
            await self._reap(session)
        await self._records.save_activity(list(self._table))
        try:
            await self._hibernation.expire()
        except errors.GatewayError as exc:  # the store or the registry: next pass
            log.warning("snapshot retention pass failed: %s", exc.message)
        return len(doomed)

    async def _reap(self, session: Session) -> None:
        if self._settings.reap_action == "hibernate":
            try:
                await self._hibernation.hibernate(session)
                return
            except errors.SnapshotTooLarge as exc:  # never fits: deleted, as without hibernation
                log.warning("deleting instead of hibernating session_id=%s: %s", session.id,
                            exc.message)
            except errors.GatewayError as exc:  # the store or registry: tried again next pass
                log.warning("hibernation failed session_id=%s: %s", session.id, exc.message)
                return
        await self._lifecycle.discard(session, remove_files=True)

    async def _adopt_orphan(self, record: SessionRecord) -> None:
        current = await self._registry.get(record.owner, record.session_id)
        if current is None:  # deleted meanwhile
            await self._leases.release((record.owner, record.session_id))
            return
        try:
            await self._handoff.take_over(current)
        except errors.GatewayError as exc:
            log.warning("orphan takeover failed session_id=%s: %s", record.session_id,
                        exc.message)
        self._metrics.sessions.set(len(self._table))

    async def renew_forever(self) -> None:
        """Renew the leases of every session served here, in one registry call a round."""
        while True:
            await asyncio.sleep(self._settings.lease_renew_s)
            try:
                await self.renew_leases()
            except errors.RegistryUnavailable:
                log.warning("could not renew session leases: the registry is unreachable")
            except Exception:  # one failure must not stop renewing
                log.exception("lease renewal failed")

    async def renew_leases(self) -> None:
        sessions = list(self._table)
        lost = set(await self._leases.renew([s.key for s in sessions]))
        for session in sessions:
            current = self._table.get(session.key)
            if current is None:
                # closed meanwhile: do not leave a renewed lease behind its deleted record
                await self._leases.release(session.key)
            elif current is session and session.key in lost:
                await self._handoff.lose(session)
                self._metrics.sessions.set(len(self._table))
