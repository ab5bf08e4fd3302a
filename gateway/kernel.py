"""KernelConnection: one kernel's ZeroMQ sockets, messages routed to whoever asked.

The gateway is the kernel's only direct client. Every socket is read continuously by its
own task (so ZMQ high-water marks never drop output); replies and iopub/stdin messages are
routed by their parent ``msg_id`` to the route registered for that request; every iopub
message is also shown to ``iopub_tap``. The kernel owns the socket directory: sockets are
opened with ``O_PATH | O_NOFOLLOW`` and connected through ``/proc/self/fd`` so a planted
symlink or a swapped file is never followed, and reconnects are disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import secrets
import socket
import stat
import time
from collections.abc import Callable
from typing import Any, cast

import zmq
import zmq.asyncio
from jupyter_client.session import Session
from pydantic import BaseModel

from gateway.bounds import depth_exceeds
from gateway.errors import KernelDied, KernelTimeout

log = logging.getLogger(__name__)

Message = dict[str, Any]
Route = Callable[[str, Message], None]  # (channel, message)

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
_SOCKET_TYPES = {"shell": zmq.DEALER, "iopub": zmq.SUB, "stdin": zmq.DEALER, "control": zmq.DEALER}


DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
REJECT_LOG_INTERVAL_S = 60.0


class Rejected(ValueError):
    """A kernel message the gateway will not process (``args[0]``: the reason, a label)."""


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


def _ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a send on a closed socket is not worth a warning


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

    def __init__(self, info: ConnectionInfo, context: zmq.asyncio.Context) -> None:
        if info.transport != "ipc":
            raise ValueError("only the ipc transport is supported")
        self.info = info
        self.session = Session(
            key=info.key.encode(), signature_scheme=info.signature_scheme, username="gateway"
        )
        self._context = context
        self._sockets: dict[str, zmq.asyncio.Socket] = {}
        self._fds: list[int] = []
        self._readers: list[asyncio.Task[None]] = []
        self._routes: dict[str, Route] = {}
        self._dead: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        # sees every iopub message, whoever asked (Jupyter clients watch the whole kernel)
        self.iopub_tap: Callable[[Message], None] | None = None
        self.on_reject: Callable[[str], None] | None = None  # (reason) of a dropped message
        self.max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
        self._rejected = 0
        self._next_complaint = 0.0

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
            while len(fds) < len(_SOCKET_TYPES):
                for channel in _SOCKET_TYPES:
                    path = self.info.socket_path(channel)
                    if channel not in fds and os.path.lexists(path):
                        fd = open_socket_path(path)
                        if _listening(fd):
                            fds[channel] = fd
                        else:
                            os.close(fd)
                if len(fds) == len(_SOCKET_TYPES):
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
        identity = self.session.bsession
        for channel, kind in _SOCKET_TYPES.items():
            fd = fds[channel]
            self._fds.append(fd)
            sock = self._context.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, -1)
            # default RCVHWM: when the gateway lags, ZMQ stops reading and the backlog waits in
            # the kernel (whose PUB never drops, see kernel_boot.py), not in the gateway
            if kind == zmq.DEALER:
                # the kernel sends stdin requests to the identity that sent the shell request
                sock.setsockopt(zmq.IDENTITY, identity)
            else:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(f"ipc:///proc/self/fd/{fd}")
            self._sockets[channel] = sock
            self._readers.append(asyncio.create_task(self._read_loop(channel, sock)))

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

    @property
    def dead(self) -> bool:
        return self._dead.done()

    def close(self) -> None:
        self.mark_dead("closed")
        for task in self._readers:
            task.cancel()
        for sock in self._sockets.values():
            sock.close(linger=0)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._readers.clear()
        self._sockets.clear()
        self._fds.clear()

    # ----------------------------------------------------------------- reading
    async def _read_loop(self, channel: str, sock: zmq.asyncio.Socket) -> None:
        count = 0
        while True:
            count += 1
            if count % 64 == 0:
                # recv on a busy socket completes without yielding: let other work run
                await asyncio.sleep(0)
            try:
                frames = await sock.recv_multipart()
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            try:
                msg = self._deserialize(frames)
            except Exception as exc:  # a kernel may send anything; never let it stop the reader
                self._reject(channel, exc)
                continue
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

    def _deserialize(self, frames: list[bytes]) -> Message:
        """Check the HMAC and decode one message. Like ``Session.deserialize`` without its
        date parsing of every header (half its cost; the gateway never reads those dates).
        Raises ValueError."""
        _, found = self.session.feed_identities(frames, copy=True)
        parts = cast("list[bytes]", found)  # recv_multipart copies: frames are bytes
        if len(parts) < 5:
            raise ValueError("short message")
        if self.session.auth is not None:
            expected = self.session.sign(parts[1:5])
            if not hmac.compare_digest(parts[0], expected):
                raise ValueError("invalid signature")
        if sum(len(p) for p in parts) > self.max_message_bytes:
            raise Rejected("too_large")
        header, parent, metadata, content = (json.loads(p) for p in parts[1:5])
        if not all(isinstance(d, dict) for d in (header, parent, metadata, content)) or \
                not isinstance(header.get("msg_id"), str) or \
                not isinstance(header.get("msg_type"), str):
            raise Rejected("malformed")
        if depth_exceeds(content) or depth_exceeds(metadata):
            raise Rejected("too_deep")
        return {
            "header": header,
            "msg_id": header["msg_id"],
            "msg_type": header["msg_type"],
            "parent_header": parent,
            "metadata": metadata,
            "content": content,
            "buffers": parts[5:],
        }

    def _dispatch(self, channel: str, msg: Message) -> None:
        if channel == "iopub" and self.iopub_tap is not None:
            try:
                self.iopub_tap(msg)
            except Exception:
                log.exception("iopub tap failed")
        parent_id = msg.get("parent_header", {}).get("msg_id")
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
        """Sign and send ``msg`` (a message dict, buffers included) on ``channel``.

        Through the asyncio socket itself: jupyter_client's ``Session.send`` writes through a
        synchronous shadow of the socket, which can swallow libzmq's edge-triggered
        "readable" signal, and then a reply that arrives at that moment is never read.
        """
        frames = self.session.serialize(msg)
        frames.extend(msg.get("buffers") or [])
        sent = self._sockets[channel].send_multipart(frames)
        asyncio.ensure_future(sent).add_done_callback(_ignore_result)

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
        done = asyncio.get_running_loop().create_future()
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
        try:
            self.send(channel, msg)
            finished, _ = await asyncio.wait(
                {done, self._dead}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if done in finished:
                return reply[0]
            if self._dead.done():
                raise KernelDied(self._dead.result())
            raise KernelTimeout(f"no {msg['msg_type']} reply after {timeout_s}s")
        finally:
            self._routes.pop(msg_id, None)
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

