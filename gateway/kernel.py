"""KernelConnection: one kernel's ZeroMQ sockets, messages routed to whoever asked.

The gateway is the kernel's only direct client. Every socket is read continuously (so ZMQ
high-water marks never drop output; see ``gateway.kernel_sockets``); each message is checked
and decoded (``gateway.wire``), then routed by its parent ``msg_id`` to the route registered
for that request; every iopub message is also shown to ``iopub_tap``. The kernel owns the
socket directory: sockets are opened with ``O_PATH | O_NOFOLLOW`` and connected through
``/proc/self/fd`` so a planted symlink or a swapped file is never followed, and reconnects
are disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

import zmq
from jupyter_client.session import Session
from pydantic import BaseModel

from gateway.errors import KernelDied, KernelStartFailed, KernelTimeout
from gateway.kernel_sockets import SOCKET_TYPES, KernelSockets
from gateway.wire import DEFAULT_MAX_MESSAGE_BYTES, Message, Rejected, WireCodec

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "KernelConnection", "Message", "Rejected", "Route"]

Route = Callable[[str, Message], None]  # (channel, message)

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
REJECT_LOG_INTERVAL_S = 60.0


class ConnectionInfo(BaseModel):
    """A kernel's connection file, as the kernel sees it. ``key`` is secret: never log it."""

    transport: str = "ipc"
    ip: str
    shell_port: int = 1
    iopub_port: int = 2
    stdin_port: int = 3
    control_port: int = 4
    hb_port: int = 5
    key: str
    signature_scheme: str = "hmac-sha256"
    kernel_name: str = "python3"

    @classmethod
    def for_ipc(cls, path_prefix: str) -> ConnectionInfo:
        return cls(ip=path_prefix, key=secrets.token_hex(32))

    def socket_path(self, channel: str) -> str:
        return f"{self.ip}-{getattr(self, channel + '_port')}"

    def with_ip(self, ip: str) -> ConnectionInfo:
        return self.model_copy(update={"ip": ip})


def open_socket_path(path: str) -> int:
    """Open a kernel-made socket file without following links; raises OSError if it is not one."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"not a socket: {path}")
    return fd


def _collect(got: dict[str, Message], both: asyncio.Future[None], channel: str,
             msg: Message) -> None:
    """Handshake route: resolve ``both`` once a shell reply and an iopub message arrived."""
    got.setdefault(channel, msg)
    if "shell" in got and "iopub" in got and not both.done():
        both.set_result(None)


def _listening(fd: int) -> bool:
    """Whether the unix socket behind ``fd`` accepts connections yet (a probe connect)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(f"/proc/self/fd/{fd}")
        except (ConnectionRefusedError, FileNotFoundError):
            return False
    return True


class KernelConnection:
    """Talks to one kernel. Created per interpreter; closed when the kernel is replaced."""

    def __init__(self, info: ConnectionInfo, context: zmq.Context[Any]) -> None:
        if info.transport != "ipc":
            raise ValueError("only the ipc transport is supported")
        self.info = info
        self.session = Session(
            key=info.key.encode(), signature_scheme=info.signature_scheme, username="gateway"
        )
        self.wire = WireCodec(self.session)
        self._loop = asyncio.get_running_loop()
        self._sockets = KernelSockets(context, self._receive,
                                      lambda channel, reason: self._reject(channel,
                                                                           Rejected(reason)))
        self._fds: list[int] = []
        self._routes: dict[str, Route] = {}
        self._waiting: set[asyncio.Future[None]] = set()  # requests: failed when it dies
        self._dead: asyncio.Future[str] = self._loop.create_future()
        # sees every iopub message, whoever asked (Jupyter clients watch the whole kernel)
        self.iopub_tap: Callable[[Message], None] | None = None
        self.on_reject: Callable[[str], None] | None = None  # (reason) of a dropped message
        self._rejected = 0
        self._next_complaint = 0.0

    @property
    def max_message_bytes(self) -> int:
        """Larger kernel messages are dropped (``kernel_messages_rejected{too_large}``)."""
        return self.wire.max_message_bytes

    @max_message_bytes.setter
    def max_message_bytes(self, value: int) -> None:
        self.wire.max_message_bytes = value

    # ----------------------------------------------------------------- lifecycle
    async def connect(self, timeout_s: float, died: asyncio.Future[Any] | None = None) -> Message:
        """Wait for the kernel's sockets, connect, and handshake; returns the kernel_info reply.

        Raises KernelTimeout if not ready within ``timeout_s``, KernelDied if ``died`` resolves
        (it is only watched, never cancelled).
        """
        try:
            async with asyncio.timeout(timeout_s):
                self._open_sockets(await self._wait_for_sockets(died))
                return await self._handshake(died)
        except TimeoutError as exc:
            raise KernelTimeout(f"kernel not ready after {timeout_s:.1f}s") from exc

    async def _wait_for_sockets(self, died: asyncio.Future[Any] | None) -> dict[str, int]:
        """Open each kernel socket once it exists AND listens: ZMQ connects only once here
        (reconnects are off), so a connect between the kernel's bind() and listen() would be
        lost for good."""
        fds: dict[str, int] = {}
        delay = 0.002
        try:
            while len(fds) < len(SOCKET_TYPES):
                for channel in SOCKET_TYPES:
                    path = self.info.socket_path(channel)
                    if channel not in fds and os.path.lexists(path):
                        fd = open_socket_path(path)
                        if _listening(fd):
                            fds[channel] = fd
                        else:
                            os.close(fd)
                if len(fds) == len(SOCKET_TYPES):
                    break
                if died is not None and died.done():
                    raise KernelDied("kernel exited during start-up")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        return fds

    def _open_sockets(self, fds: dict[str, int]) -> None:
        self._fds.extend(fds.values())
        try:
            self._sockets.open(fds, self.session.bsession)
        except zmq.ZMQError as exc:  # out of sockets or descriptors: no room for a kernel
            raise KernelStartFailed(f"the gateway cannot open the kernel's sockets: {exc}"
                                    ) from exc

    async def _handshake(self, died: asyncio.Future[Any] | None) -> Message:
        # A SUB socket misses what is published before its subscription lands: resend
        # kernel_info until both the reply and an iopub message parented to it arrive.
        while True:
            got: dict[str, Message] = {}
            both: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            msg = self.session.msg("kernel_info_request", {})
            self._routes[msg["header"]["msg_id"]] = functools.partial(_collect, got, both)
            self.send("shell", msg)
            waits: set[asyncio.Future[Any]] = {both, self._dead}
            if died is not None:
                waits.add(died)
            await asyncio.wait(waits, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            self._routes.pop(msg["header"]["msg_id"], None)
            if both.done():
                return got["shell"]
            if self._dead.done() or (died is not None and died.done()):
                raise KernelDied("kernel exited during start-up")

    def mark_dead(self, reason: str) -> None:
        """Called when the sandbox reports the kernel gone: every waiter gets KernelDied."""
        if not self._dead.done():
            self._dead.set_result(reason)
        for waiter in self._waiting:
            if not waiter.done():
                waiter.set_exception(KernelDied(reason))
        self._waiting.clear()

    @property
    def dead(self) -> bool:
        return self._dead.done()

    def close(self) -> None:
        self.mark_dead("closed")
        self._sockets.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    # ----------------------------------------------------------------- reading
    def _receive(self, channel: str, frames: list[bytes]) -> None:
        """One message from ``channel``: checked, decoded, routed; never raises."""
        try:
            msg = self.wire.decode(frames)
        except Exception as exc:  # a kernel may send anything; never let it stop the reader
            self._reject(channel, exc)
            return
        self._dispatch(channel, msg)

    def _reject(self, channel: str, exc: Exception) -> None:
        """Count a dropped message; log the first, then at most one line a minute (a kernel
        must not be able to flood the log)."""
        reason = exc.args[0] if isinstance(exc, Rejected) else "invalid"
        if self.on_reject is not None:
            self.on_reject(reason)
        self._rejected += 1
        now = time.monotonic()
        if now >= self._next_complaint:
            self._next_complaint = now + REJECT_LOG_INTERVAL_S
            log.warning("dropped %d invalid kernel message(s) kernel=%s channel=%s last=%s: %s",
                        self._rejected, os.path.basename(os.path.dirname(self.info.ip)),
                        channel, reason, type(exc).__name__)
            self._rejected = 0

    def _dispatch(self, channel: str, msg: Message) -> None:
        if channel == "iopub" and self.iopub_tap is not None:
            try:
                self.iopub_tap(msg)
            except Exception:
                log.exception("iopub tap failed")
        parent_id = msg["parent_header"].get("msg_id")
        route = self._routes.get(parent_id) if parent_id else None
        if route is not None:
            try:
                route(channel, msg)
            except Exception:
                log.exception("message route failed channel=%s", channel)

    # ----------------------------------------------------------------- requests
    def route(self, msg_id: str, route: Route) -> None:
        self._routes[msg_id] = route

    def unroute(self, msg_id: str) -> None:
        self._routes.pop(msg_id, None)

    def send(self, channel: str, msg: Message) -> None:
        """Sign and send ``msg`` (a message dict, buffers included) on ``channel``; never
        blocks (see ``KernelSockets.send``)."""
        self._sockets.send(channel, self.wire.encode(msg))

    async def execute(
        self, code: str, *, allow_stdin: bool, on_message: Route, store_history: bool = True
    ) -> Message:
        """Run one cell; ``on_message`` sees its iopub and stdin messages in order.

        Returns the execute_reply once the reply and the kernel's idle status both arrived.
        Raises KernelDied. Cancellation stops waiting, not the kernel.
        """
        msg = self.session.msg(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": store_history,
                "user_expressions": {},
                "allow_stdin": allow_stdin,
                "stop_on_error": True,
            },
        )
        return await self.request("shell", msg, on_message=on_message, wait_idle=True)

    async def request(
        self,
        channel: str,
        msg: Message,
        *,
        on_message: Route | None = None,
        wait_idle: bool = False,
        timeout_s: float | None = None,
    ) -> Message:
        """Send ``msg`` and return its reply; with ``wait_idle`` also wait for the idle status.

        Raises KernelDied, KernelTimeout (only when ``timeout_s`` is given).
        """
        if self._dead.done():
            raise KernelDied(self._dead.result())
        done: asyncio.Future[None] = self._loop.create_future()
        reply: list[Message] = []
        idle = not wait_idle

        def route(ch: str, m: Message) -> None:
            nonlocal idle
            if ch == channel:
                reply.append(m)
            elif on_message is not None:
                on_message(ch, m)
            if (
                ch == "iopub"
                and m["msg_type"] == "status"
                and m["content"].get("execution_state") == "idle"
            ):
                idle = True
            if reply and idle and not done.done():
                done.set_result(None)

        msg_id = msg["header"]["msg_id"]
        self._routes[msg_id] = route
        self._waiting.add(done)  # mark_dead fails it with KernelDied
        try:
            self.send(channel, msg)
            if timeout_s is None:
                await done
            else:
                try:
                    async with asyncio.timeout(timeout_s):
                        await done
                except TimeoutError:
                    raise KernelTimeout(
                        f"no {msg['msg_type']} reply after {timeout_s}s") from None
            return reply[0]
        finally:
            self._routes.pop(msg_id, None)
            self._waiting.discard(done)
            if not done.done():
                done.cancel()

    async def interrupt(self, timeout_s: float) -> None:
        """Interrupt the running cell over the control channel. Raises KernelTimeout/KernelDied."""
        msg = self.session.msg("interrupt_request", {})
        await self.request("control", msg, timeout_s=timeout_s)

    async def shutdown(self, timeout_s: float) -> None:
        """Ask the kernel to exit; best effort within ``timeout_s``."""
        with contextlib.suppress(KernelDied, KernelTimeout, KeyError):
            msg = self.session.msg("shutdown_request", {"restart": False})
            await self.request("control", msg, timeout_s=timeout_s)

    def reply_input(self, value: str, parent: Message) -> None:
        """Answer an input_request; ``"\\x04"`` makes ``input()`` raise EOFError in the kernel."""
        msg = self.session.msg("input_reply", {"value": value}, parent=parent["header"])
        self.send("stdin", msg)

