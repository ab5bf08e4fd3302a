"""ReplicaClient: forwarded calls reuse keep-alive connections to the owning replica, notice
one the owner closed, and say "down" only when the owner refused the connection."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from tornado import httpserver, iostream, web

from gateway import errors
from gateway.handlers.replica_client import ReplicaClient


class Echo(web.RequestHandler):
    def post(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(b'{"got": ' + str(len(self.request.body)).encode() + b"}")

    def get(self) -> None:
        if self.get_query_argument("close", None):
            self.request.connection.stream.close()  # type: ignore[attr-defined]
            return
        self.finish({"ok": True})


class Owner:
    """A tornado server counting the TCP connections it accepted."""

    def __init__(self) -> None:
        self.accepted: list[iostream.IOStream] = []
        owner = self

        class Server(httpserver.HTTPServer):
            def handle_stream(self, stream: iostream.IOStream, address: tuple[str, int]
                              ) -> None:
                owner.accepted.append(stream)
                super().handle_stream(stream, address)

        self.server = Server(web.Application([(r"/echo", Echo)]))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.server.add_sockets([sock])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def owner() -> AsyncIterator[Owner]:
    owner = Owner()
    yield owner
    owner.server.stop()
    await owner.server.close_all_connections()


async def test_sequential_forwarded_calls_share_one_connection(owner: Owner) -> None:
    client = ReplicaClient(idle_s=30.0)
    try:
        for i in range(5):
            answer = await client.fetch(owner.url, "POST", "/echo", {}, b"x" * i, 10.0)
            assert answer.code == 200
            assert answer.body == b'{"got": %d}' % i
            assert answer.headers["Content-Type"] == "application/json"
        assert len(owner.accepted) == 1
    finally:
        client.close()


async def test_concurrent_calls_each_get_a_connection_and_idle_ones_stay_bounded(
        owner: Owner) -> None:
    client = ReplicaClient(idle_s=30.0, max_idle=2)
    try:
        answers = await asyncio.gather(*(client.fetch(owner.url, "GET", "/echo", {}, None, 10.0)
                                         for _ in range(4)))
        assert [a.code for a in answers] == [200] * 4
        assert len(owner.accepted) == 4
        await asyncio.gather(*(client.fetch(owner.url, "GET", "/echo", {}, None, 10.0)
                               for _ in range(2)))
        assert len(owner.accepted) == 4  # the two kept idle were reused
    finally:
        client.close()


async def test_a_connection_the_owner_closed_while_idle_is_not_reused(owner: Owner) -> None:
    client = ReplicaClient(idle_s=30.0)
    try:
        assert (await client.fetch(owner.url, "GET", "/echo", {}, None, 10.0)).code == 200
        owner.accepted[0].close()  # e.g. its keep-alive timeout, or its connection cap
        for _ in range(100):  # (the client notices it, or checks it when taken)
            await asyncio.sleep(0.01)
            if owner.accepted[0].closed():
                break
        assert (await client.fetch(owner.url, "GET", "/echo", {}, None, 10.0)).code == 200
        assert len(owner.accepted) == 2
    finally:
        client.close()


async def test_idle_connections_older_than_idle_s_are_replaced(owner: Owner) -> None:
    client = ReplicaClient(idle_s=0.05)
    try:
        await client.fetch(owner.url, "GET", "/echo", {}, None, 10.0)
        await asyncio.sleep(0.1)
        await client.fetch(owner.url, "GET", "/echo", {}, None, 10.0)
        assert len(owner.accepted) == 2
    finally:
        client.close()


async def test_an_owner_closing_mid_call_is_unreachable_not_down(owner: Owner) -> None:
    client = ReplicaClient(idle_s=30.0)
    try:
        with pytest.raises(errors.OwnerUnreachable):
            await client.fetch(owner.url, "GET", "/echo?close=1", {}, None, 10.0)
        assert (await client.fetch(owner.url, "GET", "/echo", {}, None, 10.0)).code == 200
        assert len(owner.accepted) == 2
    finally:
        client.close()


async def test_a_refused_connection_means_the_owner_is_down() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    client = ReplicaClient(idle_s=30.0)
    with pytest.raises(errors.OwnerDown):
        await client.fetch(f"http://127.0.0.1:{port}", "GET", "/echo", {}, None, 10.0)


async def test_a_silent_owner_runs_out_the_deadline() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts (the kernel does) but never answers
    client = ReplicaClient(idle_s=30.0)
    try:
        with pytest.raises(errors.OwnerUnreachable):
            await client.fetch(f"http://127.0.0.1:{listener.getsockname()[1]}", "GET", "/echo",
                               {}, None, 0.3)
    finally:
        listener.close()
