"""Session: one session's identity, lifecycle state and bookkeeping, with checked transitions.

A session's moves are a table (starlette's ``WebSocketState``): an illegal one raises
``IllegalTransition`` instead of silently corrupting what clients and the reaper see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from gateway.events import EVENT_OVERHEAD, EventLog
from gateway.jupyter_watchers import KernelWatchers
from gateway.kernel import Message
from gateway.launchers import ExitInfo
from gateway.models import Limits, RestoreReport, SessionInfo, SessionState
from gateway.policy import kernel_id_for
from gateway.registry import SessionRecord
from gateway.sessions.kernel_slot import KernelSlot
from gateway.sessions.queue import CellQueue
from gateway.snapshots import SnapshotRef

log = logging.getLogger(__name__)

S = SessionState
STATUS_EVENT_BYTES = EVENT_OVERHEAD  # a status event: a state name and a generation
ALLOWED: dict[SessionState, frozenset[SessionState]] = {
    S.starting: frozenset({S.idle, S.dead, S.closed}),
    S.idle: frozenset({S.busy, S.restarting, S.dead, S.hibernated, S.closed}),
    S.busy: frozenset({S.idle, S.restarting, S.dead, S.closed}),
    S.restarting: frozenset({S.idle, S.dead, S.closed}),
    S.dead: frozenset({S.restarting, S.idle, S.hibernated, S.closed}),
    S.hibernated: frozenset({S.closed}),  # its record lives on; a new Session restores it
    S.closed: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A bug: the session layer asked for a move the lifecycle does not allow."""


def now() -> datetime:
    return datetime.now(UTC)


class Session:
    """One session's live state. Mutated by the session layer only; handlers read it."""

    def __init__(self, owner: str, session_id: str, limits: Limits, env: dict[str, str],
                 events: EventLog, watchers: KernelWatchers, slot: KernelSlot) -> None:
        self.owner = owner
        self.id = session_id
        self.kernel_id = kernel_id_for(owner, session_id)
        self.limits = limits
        self.env = env
        self.created_at = self.last_activity = now()
        self.created_mono = self.active_mono = time.monotonic()
        self.saved_mono = 0.0  # active_mono when the record was last written
        self.execution_count = 0
        self.state = SessionState.starting
        self.events = events
        self.watchers = watchers
        self.slot = slot
        self.queue = CellQueue()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending_input: dict[str, Message] = {}  # request id → the kernel's input_request
        self.jupyter_error: tuple[str, float] | None = None  # (client session, when) it failed
        self.workspace: str | None = None  # host path of its workspace, once it has one
        # when the files API or a cell last changed the workspace (fine clock): the next cell
        # counts changes from a later tick, so they are never reported twice
        self.files_changed_ns = 0
        self.snapshot: SnapshotRef | None = None  # while hibernated, or being restored
        self.restored: RestoreReport | None = None  # for the first answer after a restore

    @property
    def key(self) -> tuple[str, str]:
        return self.owner, self.id

    @property
    def generation(self) -> int:
        return self.slot.generation

    def set_state(self, state: SessionState) -> None:
        """Move to ``state`` (a no-op if already there) and tell the /v1 watchers. Raises
        IllegalTransition."""
        if state == self.state:
            return
        if state not in ALLOWED[self.state]:
            raise IllegalTransition(f"session {self.id!r}: {self.state.value} -> {state.value}")
        self.state = state
        self.events.publish({"type": "status", "state": state.value,
                             "generation": self.generation}, STATUS_EVENT_BYTES)

    def kernel_exited(self, info: ExitInfo) -> None:
        """Its kernel died on its own (crash, ``os._exit``, OOM): the next call restarts it."""
        log.info("kernel died session_id=%s reason=%s", self.id, info.reason)
        if not self.closed:
            self.set_state(SessionState.dead)
        self.watchers.announce("dead")

    def touch(self) -> None:
        self.last_activity = now()
        self.active_mono = time.monotonic()

    @property
    def closed(self) -> bool:
        return self.state == SessionState.closed

    @property
    def busy(self) -> bool:
        return self.queue.busy

    @property
    def execution_state(self) -> str:
        """The state a Jupyter client expects: starting/idle/busy/restarting/dead."""
        if self.state == SessionState.idle:
            return self.watchers.kernel_state if self.watchers.kernel_state == "busy" else "idle"
        return "dead" if self.state == SessionState.closed else self.state.value

    def _fields(self) -> dict[str, Any]:
        """The one field set the wire model and the registry record are both made from."""
        return {"kernel_id": self.kernel_id, "state": self.state, "generation": self.generation,
                "created_at": self.created_at, "last_activity": self.last_activity,
                "execution_count": self.execution_count, "limits": self.limits}

    def info(self) -> SessionInfo:
        return SessionInfo(id=self.id, queued=self.queue.waiting, **self._fields())

    def record(self, gateway_id: str, gateway_url: str | None = None) -> SessionRecord:
        return SessionRecord(session_id=self.id, owner=self.owner, gateway_id=gateway_id,
                             handle=self.slot.handle, gateway_url=gateway_url,
                             workspace=self.workspace, snapshot=self.snapshot,
                             **self._fields())

    def restore_from(self, record: SessionRecord) -> None:
        """Counters and timestamps of a record another gateway process wrote."""
        self.slot.generation = record.generation
        self.slot.handle = record.handle
        self.workspace = record.workspace or (record.handle.workspace if record.handle else None)
        self.execution_count = record.execution_count
        self.snapshot = record.snapshot
        self.created_at, self.last_activity = record.created_at, record.last_activity
