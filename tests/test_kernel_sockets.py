"""KernelSockets: a kernel that stops reading never blocks the gateway (sends wait, bounded,
and go once there is room, in order), and messages are read whole and in order."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from gateway import kernel_sockets
from gateway.kernel_sockets import SOCKET_TYPES, KernelSockets

PEER_TYPES = {"shell": zmq.ROUTER, "iopub": zmq.PUB, "stdin": zmq.ROUTER, "control": zmq.ROUTER}


@pytest.fixture
def peer_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ks-", dir="/tmp") as d:  # short: ipc path limit
        yield Path(d)


class Kernel:
    """The kernel's side: bound sockets that read only when told to."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], where: Path) -> None:
        self.sockets: dict[str, zmq.Socket[bytes]] = {}
        self.fds: dict[str, int] = {}
        for channel, kind in PEER_TYPES.items():
            sock = context.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 10)
            path = where / channel
            sock.bind(f"ipc://{path}")
            self.sockets[channel] = sock
            self.fds[channel] = os.open(path, os.O_PATH)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close(linger=0)
        for fd in self.fds.values():
            os.close(fd)


async def _until(check: object, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_sends_to_a_kernel_that_does_not_read_never_block_and_are_bounded(
        peer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_sockets, "MAX_QUEUED_SENDS", 50)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    kernel = Kernel(context, peer_dir)
    dropped: list[tuple[str, str]] = []
    sockets = KernelSockets(context, lambda channel, frames: None,
                            lambda channel, reason: dropped.append((channel, reason)))
    try:
        sockets.open(kernel.fds, b"gateway")
        payload = b"x" * 64 * 1024
        for i in range(3000):  # far beyond ZMQ's own queues (1000 + 10 messages)
            sockets.send("shell", [b"<IDS|MSG>", str(i).encode(), payload])
        assert dropped and set(dropped) == {("shell", "send_queue_full")}
        sent = 3000 - len(dropped)
        got: list[int] = []
        shell = kernel.sockets["shell"]

        def read_all() -> bool:
            while shell.poll(0):
                got.append(int(shell.recv_multipart()[2]))
            return len(got) == sent

        await _until(read_all)
        assert got == sorted(got) and len(set(got)) == sent  # in order, each once
    finally:
        sockets.close()
        kernel.close()
        context.term()


async def test_every_message_is_read_whole_and_in_order(peer_dir: Path) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    kernel = Kernel(context, peer_dir)
    received: dict[str, list[list[bytes]]] = {channel: [] for channel in SOCKET_TYPES}
    sockets = KernelSockets(context, lambda channel, frames: received[channel].append(frames),
                            lambda channel, reason: None)
    try:
        sockets.open(kernel.fds, b"gateway")
        sockets.send("shell", [b"hello"])  # the ROUTER learns the gateway's identity
        shell = kernel.sockets["shell"]
        identity = shell.recv_multipart()[0]
        for i in range(500):  # more than a drain takes at once (DRAIN_BATCH)
            shell.send_multipart([identity, b"a", str(i).encode(), b"c" * (i % 7)])
        await _until(lambda: len(received["shell"]) == 500)
        assert received["shell"] == [[b"a", str(i).encode(), b"c" * (i % 7)]
                                     for i in range(500)]
    finally:
        sockets.close()
        kernel.close()
        context.term()


async def test_no_sockets_left_is_a_failed_kernel_start_not_an_internal_error(
        peer_dir: Path) -> None:
    """ZeroMQ out of sockets (or the process out of descriptors) while connecting to a new
    kernel: the start fails as a domain error (503 kernel_start_failed), never a 500."""
    from gateway.errors import KernelStartFailed
    from gateway.kernel import ConnectionInfo, KernelConnection

    peer: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    kernel = Kernel(peer, peer_dir)
    gateway_side: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gateway_side.set(zmq.MAX_SOCKETS, 2)  # room for two of the kernel's four channels
    conn = KernelConnection(ConnectionInfo.for_ipc(str(peer_dir / "k")), gateway_side)
    try:
        with pytest.raises(KernelStartFailed, match="cannot open the kernel's sockets"):
            conn._open_sockets({ch: os.dup(fd) for ch, fd in kernel.fds.items()})
    finally:
        conn.close()
        kernel.close()
        gateway_side.term()
        peer.term()
