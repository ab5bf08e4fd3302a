"""The forwarding hot path (gateway/replica_link/front.py): a Front in this process, on a real
tornado HTTP server, in front of real owner gateways (Redis registry, local kernels) reached
over the real replica link. Its application is a recorder, so every test sees whether a
request went the hot path (straight to the owner) or to the application; its session manager
is a stand-in that says where a session is remembered and records what it is told."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from tornado import httpserver, netutil, web

from gateway.auth import DEFAULT_KEY, Auth
from gateway.handlers.base import Services
from gateway.metrics import Metrics
from gateway.replica_link.client import ReplicaLinks
from gateway.replica_link.front import Front
from gateway.settings import Settings
from tests.conftest import Gateway, free_port

TOKEN = secrets.token_urlsafe(24)
LEASE = {"lease_ttl_s": 2.0, "lease_renew_s": 0.5}


@dataclass
class Manager:
    """The session manager as Front uses it: where sessions are remembered, and what it is
    told about them."""

    places: dict[str, str] = field(default_factory=dict)
    forgotten: list[tuple[str, str]] = field(default_factory=list)
    down: list[str] = field(default_factory=list)

    def remembered_place(self, owner: str, session_id: str) -> str | None:
        return self.places.get(session_id)

    def forget_location(self, owner: str, session_id: str) -> None:
        self.forgotten.append((owner, session_id))

    def mark_down(self, url: str) -> None:
        self.down.append(url)


class Recorder(web.RequestHandler):
    """The application: records what reached it (the body too) and says it was here."""

    def initialize(self, seen: list[tuple[str, str, bytes]]) -> None:
        self.seen = seen

    def prepare(self) -> None:
        self.seen.append((self.request.method or "", self.request.uri or "", self.request.body))
        self.finish({"app": True})


class FrontServer:
    """Front + Recorder on a loopback port, served by a loop in a thread of its own."""

    def __init__(self) -> None:
        self.manager = Manager()
        self.seen: list[tuple[str, str, bytes]] = []
        self.metrics = Metrics()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            app = web.Application([(r".*", Recorder, {"seen": self.seen})])
            services = SimpleNamespace(
                settings=Settings(instance_id="front", lease_ttl_s=2.0, lease_renew_s=0.5),
                auth=Auth({DEFAULT_KEY: TOKEN}), manager=self.manager, metrics=self.metrics,
                replicas=ReplicaLinks())
            self.server = httpserver.HTTPServer(Front(app, cast(Services, services)))
            sockets = netutil.bind_sockets(0, "127.0.0.1")
            self.server.add_sockets(sockets)
            self.port = sockets[0].getsockname()[1]

        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", **headers}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=30)

    def forwarded(self, outcome: str) -> float:
        return self.metrics.registry.get_sample_value(
            "gateway_forwarded_calls_total", {"outcome": outcome}) or 0.0

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def front() -> Iterator[FrontServer]:
    server = FrontServer()
    yield server
    server.close()


@pytest.fixture
def owners(gateway_factory: Any, redis_url: str) -> tuple[Gateway, Gateway]:
    """Two replicas sharing Redis and the front's token."""
    common = {"registry_url": redis_url, "redis_key_prefix": f"frt-{secrets.token_hex(3)}:",
              "token": TOKEN, "pool_size": 0, **LEASE}
    return (gateway_factory(instance_id="frt-a", **common),
            gateway_factory(instance_id="frt-c", **common))


def test_a_remembered_call_goes_straight_to_its_owner(
        front: FrontServer, owners: tuple[Gateway, Gateway]) -> None:
    a, _ = owners
    a.execute("s", "x = 41")
    front.manager.places["s"] = a.url
    r = front.post("/v1/sessions/s/execute", {"code": "x + 1"})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"]["text/plain"] == "42"
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    queued = front.post("/v1/sessions/s/execute", {"code": "x", "wait": False})
    assert queued.status_code == 202, queued.text
    assert queued.headers["location"] == queued.json()["status_url"]
    # the owner's own refusals come back as it gave them
    invalid = front.post("/v1/sessions/s/execute", {"code": 5})
    assert invalid.status_code == 400 and invalid.json()["error"]["code"] == "validation_error"
    assert front.seen == []  # the application saw none of them
    assert front.forwarded("answered") == 3


@pytest.mark.parametrize("case", ["no place", "origin", "bad key", "query", "get", "other path"])
def test_everything_else_goes_to_the_application(
        front: FrontServer, owners: tuple[Gateway, Gateway], case: str) -> None:
    a, _ = owners
    a.execute("s", "1")
    front.manager.places["s"] = a.url
    path, headers = "/v1/sessions/s/execute", {}
    if case == "no place":
        path = "/v1/sessions/elsewhere/execute"
    elif case == "origin":
        headers = {"Origin": "https://ide.example"}
    elif case == "bad key":
        headers = {"Authorization": "Bearer nope"}
    elif case == "query":
        path += "?token=" + TOKEN
    elif case == "other path":
        path = "/v1/sessions/s/interrupt"
    if case == "get":
        r = httpx.get(f"{front.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    else:
        r = front.post(path, {"code": "1"}, **headers)
    assert r.json() == {"app": True}
    assert len(front.seen) == 1 and front.seen[0][1] == path
    assert front.forwarded("answered") == 0


def test_a_session_that_moved_is_given_to_the_application_untouched(
        front: FrontServer, owners: tuple[Gateway, Gateway]) -> None:
    """The remembered owner answers 421 (it no longer serves the session): nothing ran there,
    the place is forgotten and the application gets the request as it came."""
    a, c = owners
    c.execute("moved", "ran = 0")
    front.manager.places["moved"] = a.url
    body = {"code": "ran += 1"}
    r = front.post("/v1/sessions/moved/execute", body)
    assert r.json() == {"app": True}
    assert front.manager.forgotten == [(DEFAULT_KEY, "moved")]
    assert [(m, u, json.loads(b)) for m, u, b in front.seen] == [
        ("POST", "/v1/sessions/moved/execute", body)]
    assert c.execute("moved", "ran")["outputs"][0]["data"]["text/plain"] == "0"
    assert front.forwarded("misdirected") == 1


def test_an_owner_that_is_down_is_marked_and_the_call_given_to_the_application(
        front: FrontServer) -> None:
    gone = f"http://127.0.0.1:{free_port()}"  # nobody listens: the connection is refused
    front.manager.places["s"] = gone
    r = front.post("/v1/sessions/s/execute", {"code": "1"})
    assert r.json() == {"app": True}
    assert front.manager.down == [gone] and len(front.seen) == 1
    assert front.forwarded("down") == 1


def test_a_call_that_may_have_run_is_never_replayed(front: FrontServer) -> None:
    """The link breaks with the call sent: 503 owner_unreachable, the application never
    sees it (it might run twice)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def owner() -> None:  # accepts the link, takes the call, then hangs up
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                         b"Upgrade: exec-gateway-link/1\r\n\r\n")
            conn.settimeout(10)
            with contextlib.suppress(OSError):
                conn.recv(65536)  # the call

    thread = threading.Thread(target=owner, daemon=True)
    thread.start()
    front.manager.places["s"] = f"http://127.0.0.1:{port}"
    r = front.post("/v1/sessions/s/execute", {"code": "1"})
    thread.join(10)
    listener.close()
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "owner_unreachable"
    assert r.headers["retry-after"] == "1"
    assert front.seen == [] and front.manager.down == []
    assert front.forwarded("unreachable") == 1
