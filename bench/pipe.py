"""A byte pipe in its own process: the floor under any forwarding replica.

``python -m bench.pipe PORT TO_PORT`` accepts connections on 127.0.0.1:PORT and copies bytes
both ways to 127.0.0.1:TO_PORT, doing nothing else (no parsing, no authentication, no
lookup): an asyncio protocol per side, each chunk written on as it arrives. What a call
through it costs over a direct call is what one more process and two more loopback hops cost
on this machine, before any forwarding logic: the replicas section measures it in the same
run as the forwarded calls (see README, Performance).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bench.gateway_rest import ROOT, START_TIMEOUT_S, GatewayProcess, stop_gateway
from bench.procs import ProcessTracker, free_port
from bench.target import BenchError


class _Side(asyncio.Protocol):
    """One socket of a piped connection; what it reads goes to ``peer``."""

    def __init__(self, peer: _Side | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.peer is not None:  # the upstream side: join the client's
            self.peer.peer = self
            assert self.peer.transport is not None
            self.peer.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def _serve(port: int, to_port: int) -> None:
    loop = asyncio.get_running_loop()

    class Client(_Side):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            assert self.transport is not None
            self.transport.pause_reading()  # until the upstream side is connected
            self.connecting = asyncio.ensure_future(self._connect())  # (a task kept alive)

        async def _connect(self) -> None:
            try:
                await loop.create_connection(lambda: _Side(self), "127.0.0.1", to_port)
            except OSError:
                assert self.transport is not None
                self.transport.close()

    server = await loop.create_server(Client, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def start_pipe(tracker: ProcessTracker, to: GatewayProcess, log_path: Path
                     ) -> GatewayProcess:
    """A pipe to ``to``, as a GatewayProcess (its own port and process, ``to``'s token: stop
    it with ``stop_gateway``); returns once it accepts connections. Raises BenchError."""
    port = free_port()
    proc = tracker.spawn([sys.executable, "-m", "bench.pipe", str(port), str(to.port)],
                         env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, cwd=ROOT,
                         log_path=log_path)
    pipe = GatewayProcess(port, to.token, proc, log_path, Path(tempfile.mkdtemp(prefix="bnp-")))
    deadline = time.monotonic() + START_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return pipe
    await stop_gateway(tracker, pipe)
    raise BenchError(f"the byte pipe did not listen on port {port}; see {log_path}")


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), int(sys.argv[2])))
