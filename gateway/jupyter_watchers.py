"""KernelWatchers: one kernel's iopub fan-out to Jupyter channel sockets, and to the parked
buffers of clients that went away (replayed when they reconnect with the same session).

It owns the kernel's Jupyter ``execution_state`` as the kernel last reported it. Handlers call
its verbs (``add``, ``remove``, ``resume``); the session layer feeds it every iopub message
(``tap``) and announces the gateway's own lifecycle changes (``announce``).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

from gateway.jupyter import status_message
from gateway.kernel import Message

log = logging.getLogger(__name__)

Client = Callable[[Message], None]
MAX_PARKED_CLIENTS = 8


class KernelWatchers:
    def __init__(self, parked_max: int) -> None:
        self.parked_max = parked_max  # iopub messages kept per gone client
        self.kernel_state = "starting"
        self._clients: set[Client] = set()
        self._parked: dict[str, collections.deque[Message]] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def tap(self, msg: Message) -> None:
        """Every iopub message of the kernel: to each client, and parked for gone ones."""
        if msg["msg_type"] == "status":
            self.kernel_state = str(msg["content"].get("execution_state", self.kernel_state))
        for client in list(self._clients):
            try:
                client(msg)
            except Exception:  # one broken client must not cost the others this message
                log.exception("jupyter client failed")
        for parked in self._parked.values():
            parked.append(msg)

    def announce(self, state: str) -> None:
        """A status the gateway itself reports (``starting`` after a requested restart,
        ``restarting`` when a dead or timed-out kernel is replaced, ``dead``)."""
        self.tap(status_message(state))

    def kernel_started(self) -> None:
        self.kernel_state = "idle"

    def add(self, client: Client) -> None:
        self._clients.add(client)

    def remove(self, client: Client, *, park_as: str = "") -> None:
        """Stop sending to ``client``; with ``park_as`` (its Jupyter session id), keep its
        iopub until it reconnects (bounded: the oldest parked client goes first)."""
        self._clients.discard(client)
        if not park_as or not self.parked_max:
            return
        if len(self._parked) >= MAX_PARKED_CLIENTS:
            self._parked.pop(next(iter(self._parked)))
        self._parked[park_as] = collections.deque(maxlen=self.parked_max)

    def resume(self, client_session: str) -> list[Message]:
        """What a reconnecting client missed while it was parked (empty if nothing)."""
        return list(self._parked.pop(client_session, ()))
