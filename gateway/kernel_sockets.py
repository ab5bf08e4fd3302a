"""KernelSockets: one kernel's four ZeroMQ sockets, read by the event loop itself.

Each socket's file descriptor is registered with the loop once; each wake-up drains what is
ready with non-blocking receives — no future and no task per message (``zmq.asyncio`` makes
a future, arms and disarms the descriptor, and does pyzmq's enum flag arithmetic for every
message). ZMQ's descriptor is edge-triggered: a socket is read until ZMQ says EAGAIN, and
read again after every send (a send processes ZMQ's commands and can consume the edge of a
message that arrived meanwhile); a busy socket yields to other work every ``DRAIN_BATCH``
messages. Sends never block: while ZMQ's queue towards the kernel is full
(the kernel does not read) messages wait here, bounded, and go once there is room.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import zmq

OnFrames = Callable[[str, list[bytes]], None]  # (channel, frames of one message)
OnDropped = Callable[[str, str], None]  # (channel, reason) of a message not sent

SOCKET_TYPES = {"shell": zmq.DEALER, "iopub": zmq.SUB, "stdin": zmq.DEALER, "control": zmq.DEALER}
DRAIN_BATCH = 64  # messages read from one socket before other work gets a turn
MAX_QUEUED_SENDS = 10_000  # per socket while the kernel does not read; more are dropped
# plain ints: pyzmq's enum flags cost an enum operation on every use
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE) | _NOBLOCK
_EVENTS = int(zmq.EVENTS)
_POLLOUT = int(zmq.POLLOUT)


class KernelSockets:
    """Opened once with the kernel's socket fds; ``on_frames`` gets every message received,
    in order per socket, and must not raise."""

    def __init__(self, context: zmq.Context[Any], on_frames: OnFrames,
                 on_dropped: OnDropped) -> None:
        self._context = context
        self._loop = asyncio.get_running_loop()
        self._on_frames = on_frames
        self._on_dropped = on_dropped
        self._sockets: dict[str, zmq.Socket[bytes]] = {}  # plain sockets, not asyncio ones
        self._watched: list[int] = []  # ZMQ descriptors registered with the loop
        self._unsent: dict[str, collections.deque[list[bytes]]] = {}
        self._drain_soon: set[str] = set()  # channels with a drain already scheduled

    def open(self, fds: dict[str, int], identity: bytes) -> None:
        """Connect a socket to each of the kernel's (``fds``: the socket files, opened
        safely; the caller closes them) and start reading."""
        for channel, kind in SOCKET_TYPES.items():
            sock: zmq.Socket[bytes] = zmq.Socket(self._context, kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, -1)
            # default RCVHWM: when the gateway lags, ZMQ stops reading and the backlog waits in
            # the kernel (whose PUB never drops, see kernel_boot.py), not in the gateway
            if kind == zmq.DEALER:
                # the kernel sends stdin requests to the identity that sent the shell request
                sock.setsockopt(zmq.IDENTITY, identity)
            else:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(f"ipc:///proc/self/fd/{fds[channel]}")
            self._sockets[channel] = sock
            watched = int(sock.getsockopt(zmq.FD))
            self._loop.add_reader(watched, self._drain, channel)
            self._watched.append(watched)
            self._schedule_drain(channel)  # what is already there would never signal

    def close(self) -> None:
        for watched in self._watched:
            self._loop.remove_reader(watched)
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._watched.clear()
        self._sockets.clear()
        self._unsent.clear()

    # ----------------------------------------------------------------- receiving
    def _schedule_drain(self, channel: str) -> None:
        if channel not in self._drain_soon:
            self._drain_soon.add(channel)
            self._loop.call_soon(self._drain, channel)

    def _drain(self, channel: str) -> None:
        """Read what ``channel`` holds (at most DRAIN_BATCH messages, then a turn for other
        work) and send what waited for room; the loop calls it when the descriptor signals.

        Reading goes on until ZMQ answers EAGAIN: a receive that finds nothing processes
        the socket's pending commands, which re-arms the edge-triggered descriptor (as
        reading ``zmq.EVENTS`` would, at the cost of an enum construction per call in
        pyzmq). Frames are received without copy and copied out once, their ``more`` flag
        read from the frame (``RCVMORE`` would be one more option lookup per frame).
        """
        self._drain_soon.discard(channel)
        sock = self._sockets.get(channel)
        if sock is None:
            return
        recv = sock.recv
        try:
            if self._unsent.get(channel) and int(sock.get(_EVENTS)) & _POLLOUT:
                self._flush(channel, sock)
            for _ in range(DRAIN_BATCH):
                frame = recv(_NOBLOCK, copy=False)
                frames = [frame.bytes]
                while frame.more:
                    frame = recv(_NOBLOCK, copy=False)
                    frames.append(frame.bytes)
                self._on_frames(channel, frames)
                if channel not in self._sockets:  # closed by whoever got the message
                    return
        except zmq.Again:
            return  # drained: the descriptor signals again when something new arrives
        except zmq.ZMQError:  # closed meanwhile
            return
        self._schedule_drain(channel)

    # ----------------------------------------------------------------- sending
    def send(self, channel: str, frames: list[bytes]) -> None:
        """Queue one message's frames for the kernel; never blocks, never raises (on a
        closed socket the message is dropped: whoever waits for its reply hears KernelDied
        from the connection)."""
        sock = self._sockets.get(channel)
        if sock is None:
            return
        try:
            if self._unsent.get(channel) or not self._send_now(sock, frames):
                unsent = self._unsent.setdefault(channel, collections.deque())
                if len(unsent) >= MAX_QUEUED_SENDS:
                    self._on_dropped(channel, "send_queue_full")
                else:
                    unsent.append(frames)
        except zmq.ZMQError:
            return
        self._schedule_drain(channel)  # the send may have taken the descriptor's edge

    @staticmethod
    def _send_now(sock: zmq.Socket[bytes], frames: list[bytes]) -> bool:
        """Send one message without blocking; False if ZMQ has no room (then nothing was
        sent: the first frame decides, a message's other frames always follow it)."""
        last = len(frames) - 1
        try:
            for i, frame in enumerate(frames):
                sock.send(frame, _SNDMORE_NOBLOCK if i < last else _NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _flush(self, channel: str, sock: zmq.Socket[bytes]) -> None:
        unsent = self._unsent[channel]
        while unsent and self._send_now(sock, unsent[0]):
            unsent.popleft()
