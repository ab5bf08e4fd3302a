"""The Jupyter Server kernels API over the same sessions: /api/kernels... and the channels socket.

A session is a kernel whose id is derived from (API key, session id), so JupyterLab (through
``jupyter server --gateway-url``) and any kernel-protocol client can use sessions made over
REST, and the other way round.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

from tornado import websocket

from gateway import __version__, errors
from gateway.events import CLOSE_RECONNECT, CLOSE_SESSION_GONE, Event, close_for
from gateway.handlers.base import ApiHandler, GatewayHandler, Services, forwardable_kernel
from gateway.handlers.relay import Relay
from gateway.handlers.ws import refuse_foreign_origin
from gateway.jupyter import (
    KERNEL_NAME,
    V1_PROTOCOL,
    Message,
    from_legacy,
    from_v1,
    gateway_message,
    kernel_model,
    kernelspec,
    to_legacy,
    to_v1,
)
from gateway.models import JupyterKernelCreate, SessionState
from gateway.sessions import Session

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 4429


def model_of(session: Session) -> dict[str, Any]:
    return kernel_model(session.kernel_id, session.last_activity, session.execution_state,
                        len(session.watchers))


class JsonApiHandler(ApiHandler):
    def send_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body).encode())


class ApiRootHandler(JsonApiHandler):
    async def get(self) -> None:
        self.send_json({"version": __version__, "server": "exec-gateway"})


class KernelSpecsHandler(JsonApiHandler):
    async def get(self) -> None:
        self.send_json({"default": KERNEL_NAME, "kernelspecs": {KERNEL_NAME: kernelspec()}})


class KernelSpecHandler(JsonApiHandler):
    async def get(self, name: str) -> None:
        if name != KERNEL_NAME:
            raise errors.NotFound(f"no kernelspec {name!r}")
        self.send_json(kernelspec())


class KernelsHandler(JsonApiHandler):
    async def get(self) -> None:
        manager = self.services.manager
        self.send_json([model_of(s) for s in manager.sessions_of(self.owner)] + [
            kernel_model(r.kernel_id, r.last_activity, r.state.value, 0)
            for r in await manager.served_elsewhere(self.owner)])

    async def post(self) -> None:
        req = self.body(JupyterKernelCreate, empty_ok=True)
        if req.name not in (None, "", KERNEL_NAME):
            raise errors.NotFound(f"no kernelspec {req.name!r}; this gateway runs {KERNEL_NAME!r}")
        session = await self.services.manager.create_kernel(self.owner, req.env)
        self.set_header("Location", f"/api/kernels/{session.kernel_id}")
        self.send_json(model_of(session), 201)


class KernelHandler(JsonApiHandler):
    async def get(self, kernel_id: str) -> None:
        """A hibernated session's kernel is described from its record (not restored)."""
        manager = self.services.manager
        session_id = await manager.session_of_kernel(self.owner, kernel_id)
        asleep = await manager.hibernation.asleep(self.owner, session_id)
        if asleep is not None:
            self.send_json(kernel_model(asleep.kernel_id, asleep.last_activity,
                                        asleep.state.value, 0))
            return
        await self._get(kernel_id)

    @forwardable_kernel
    async def _get(self, session: Session) -> None:
        self.send_json(model_of(session))

    async def delete(self, kernel_id: str) -> None:
        manager = self.services.manager
        session_id = await manager.session_of_kernel(self.owner, kernel_id)
        if await manager.delete_hibernated(self.owner, session_id):
            self.no_content()
            return
        await self._delete(kernel_id)

    @forwardable_kernel
    async def _delete(self, session: Session) -> None:
        await self.services.manager.delete(session)
        self.no_content()


class KernelActionHandler(JsonApiHandler):
    @forwardable_kernel
    async def post(self, session: Session, action: str) -> None:
        if action == "interrupt":
            await self.services.manager.cells.interrupt(session)
            self.no_content()
        else:
            await self.services.manager.cells.restart(session)
            self.send_json(model_of(session))


class ChannelsHandler(GatewayHandler, websocket.WebSocketHandler):
    """/api/kernels/{id}/channels: Jupyter messages both ways, legacy or v1 framing."""

    session: Session

    def initialize(self, services: Services) -> None:
        super().initialize(services)
        self._v1 = False
        self._client_session = ""
        self._backlog = 0
        self._relay: Relay | None = None  # set when another replica owns the kernel
        self._gone = False  # the client left (on_close ran), maybe before the upgrade

    async def prepare(self) -> None:
        self.authenticate()
        kernel_id = self.path_kwargs["kernel_id"]

        async def find(session: Session) -> None:
            self.session = session

        async def relay(url: str) -> None:
            refuse_foreign_origin(self)  # before any connection is made on the client's behalf
            self._relay = await Relay.open(self, self.services.settings, url)
            if self._gone:  # it left while the owner was being reached: nothing to relay
                self._relay.close()

        session_id = await self.services.manager.session_of_kernel(self.owner, kernel_id)
        await self.serve_or_forward(session_id, find, relay)
        self._client_session = self.get_query_argument("session_id", "")[:128]

    def check_origin(self, origin: str) -> bool:
        return self.origin_allowed(origin) or bool(super().check_origin(origin))

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        if self._relay is not None:
            return self._relay.subprotocol  # the owner chose from the same offer
        return V1_PROTOCOL if V1_PROTOCOL in subprotocols else None

    def get_compression_options(self) -> None:
        return None

    def open(self, kernel_id: str) -> None:  # type: ignore[override]
        if self._relay is not None:
            self._relay.start()
            return
        # tornado turns TCP_NODELAY off after the 101 answer: small frames would wait ~40 ms
        self.set_nodelay(True)
        self._v1 = self.selected_subprotocol == V1_PROTOCOL
        if self.session.state == SessionState.closed:  # deleted during the handshake
            self.close(CLOSE_SESSION_GONE, "kernel deleted")
            return
        for msg in self.session.watchers.resume(self._client_session):
            self._send(msg, "iopub")
        self.session.watchers.add(self._on_iopub)
        self.session.events.subscribe(self._on_event)
        self.session.touch()

    def _on_iopub(self, msg: Message) -> None:
        self._send(msg, "iopub")

    def _on_event(self, event: Event) -> None:
        """Session events; only the last one matters here (deleted, or moved elsewhere)."""
        closing = close_for(event)
        if closing is not None:
            self.close(*closing)

    def _on_reply(self, channel: str, msg: Message) -> None:
        """Replies to this client's own requests (iopub reaches it through the watchers)."""
        if channel != "iopub":
            self._send(msg, channel)

    def _send(self, msg: Message, channel: str) -> None:
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        if self._backlog >= self.services.settings.jupyter_client_backlog:
            self.close(CLOSE_TOO_SLOW, "client reads too slowly")
            return
        try:
            frame = to_v1(msg, channel) if self._v1 else to_legacy(msg, channel)
        except (TypeError, ValueError):  # a kernel may send anything; it must not reach the tap
            log.warning("dropped an unencodable %s message kernel_id=%s", channel,
                        self.session.kernel_id)
            return
        self._backlog += 1
        future = self.write_message(frame, binary=isinstance(frame, bytes))
        future.add_done_callback(self._sent)

    def _sent(self, future: Any) -> None:
        self._backlog -= 1
        if not future.cancelled():
            future.exception()  # a closed socket is not an error worth logging

    async def on_message(self, frame: str | bytes) -> None:
        if self._relay is not None:
            await self._relay.send(frame)
            return
        try:
            channel, msg = from_v1(frame) if self._v1 else from_legacy(frame)  # type: ignore[arg-type]
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            log.info("dropped a malformed Jupyter message kernel_id=%s: %s",
                     self.session.kernel_id, exc)
            return
        if self.session.state == SessionState.closed:
            # never let a client's message start a kernel for a deleted session
            self.close(CLOSE_SESSION_GONE, "kernel deleted")
            return
        msg_type = msg["header"]["msg_type"]
        if channel == "shell" and msg_type == "execute_request":
            # a cell: the session's FIFO turn, busy state, counts and watchers, like any other
            task = self.services.manager.cells.submit_jupyter(self.session, msg, self._on_reply)
            task.add_done_callback(functools.partial(self._cell_failed, msg))
            return
        if channel == "control" and msg_type == "interrupt_request":
            self.session.queue.note_interrupt()  # interrupts whatever runs, whoever sent it
        await self._pass_through(channel, msg)

    async def _pass_through(self, channel: str, msg: Message) -> None:
        """Any other message (kernel_info, complete, inspect, comm_*, history, stdin replies,
        control) goes straight to the kernel, its replies straight back to this client."""
        try:
            conn = await self.services.manager.cells.live_connection(self.session)
        except (errors.OwnerUnreachable, errors.RegistryUnavailable) as exc:
            # not served here any more, or cannot tell: the client reconnects (and is relayed)
            self.close(CLOSE_RECONNECT, exc.message[:100])
            return
        except errors.GatewayError as exc:
            log.info("cannot reach kernel kernel_id=%s: %s", self.session.kernel_id, exc.message)
            return
        if channel in ("shell", "control"):
            conn.route(msg["header"]["msg_id"], self._on_reply_once)
        conn.send(channel, msg)
        self.session.touch()

    def _on_reply_once(self, channel: str, msg: Message) -> None:
        self._on_reply(channel, msg)
        if channel in ("shell", "control") and self.session.slot.live:
            self.session.slot.connection().unroute(msg["parent_header"].get("msg_id", ""))

    def _cell_failed(self, request: Message, task: asyncio.Task[Any]) -> None:
        """A cell the gateway could not run (queue full, shutting down, no kernel): the client
        gets an error execute_reply instead of waiting forever."""
        exc = None if task.cancelled() else task.exception()
        if exc is None:
            return
        if not isinstance(exc, errors.GatewayError):
            log.error("jupyter cell failed kernel_id=%s", self.session.kernel_id, exc_info=exc)
            exc = errors.GatewayError("internal error")
        content = {"status": "error", "ename": exc.code, "evalue": exc.message,
                   "traceback": [f"{exc.code}: {exc.message}"], "execution_count": None}
        self._send(gateway_message("execute_reply", content, request["header"]), "shell")

    def on_finish(self) -> None:
        if self._relay is not None and self.get_status() != 101:
            self._relay.close()  # tornado refused the upgrade after prepare()

    def on_close(self) -> None:
        self._gone = True
        if self._relay is not None:
            self._relay.close()
        session = getattr(self, "session", None)
        if session is None:
            return
        session.events.unsubscribe(self._on_event)
        park_as = "" if session.closed else self._client_session
        session.watchers.remove(self._on_iopub, park_as=park_as)
