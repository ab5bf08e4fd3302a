"""A forwarding Front in the test process (tests/test_front.py, tests/test_lane.py): on the
gateway's own HTTP server, with a recording application (so a test sees whether a request
went the hot path or to the application) and a stand-in session manager that says where a
session is remembered and records what it is told."""

from __future__ import annotations

import asyncio
import secrets
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import httpx
from tornado import netutil, web

from gateway.auth import DEFAULT_KEY, Auth
from gateway.handlers.base import Services
from gateway.metrics import Metrics
from gateway.replica_link.client import ReplicaLinks
from gateway.replica_link.front import Front
from gateway.server import make_server
from gateway.settings import Settings
from tests.conftest import Gateway

TOKEN = secrets.token_urlsafe(24)
LEASE = {"lease_ttl_s": 2.0, "lease_renew_s": 0.5}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
__all__ = ["AUTH", "DEFAULT_KEY", "TOKEN", "FrontServer", "owner_pair"]


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
        self.places.pop(session_id, None)

    def mark_down(self, url: str) -> None:
        self.down.append(url)
        self.places = {sid: place for sid, place in self.places.items() if place != url}


class Recorder(web.RequestHandler):
    """The application: records what reached it (the body too) and says it was here."""

    def initialize(self, seen: list[tuple[str, str, bytes]]) -> None:
        self.seen = seen

    def prepare(self) -> None:
        self.seen.append((self.request.method or "", self.request.uri or "", self.request.body))
        self.finish({"app": True})


class FrontServer:
    """Front + Recorder on a loopback port, served by the gateway's HTTPServer (with
    ``settings``) in a thread of its own."""

    def __init__(self, max_connections: int = 100, **settings: Any) -> None:
        self.manager = Manager()
        self.seen: list[tuple[str, str, bytes]] = []
        self.metrics = Metrics()
        self.settings = Settings(instance_id="front", **{**LEASE, **settings})
        self.max_connections = max_connections
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
                settings=self.settings, auth=Auth({DEFAULT_KEY: TOKEN}), manager=self.manager,
                metrics=self.metrics, replicas=ReplicaLinks())
            self.front = Front(app, cast(Services, services))
            self.server = self.front.server = make_server(self.front, self.settings,
                                                          self.max_connections)
            sockets = netutil.bind_sockets(0, "127.0.0.1")
            self.server.add_sockets(sockets)
            self.port = sockets[0].getsockname()[1]

        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    def lanes(self) -> int:
        """How many connections are lanes now."""
        return asyncio.run_coroutine_threadsafe(self._lanes(), self.loop).result(10)

    async def _lanes(self) -> int:
        return len(self.front.lanes)

    def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers={**AUTH, **headers},
                          timeout=30)

    def forwarded(self, outcome: str) -> float:
        return self.metrics.registry.get_sample_value(
            "gateway_forwarded_calls_total", {"outcome": outcome}) or 0.0

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def owner_pair(gateway_factory: Any, redis_url: str, **settings: Any
               ) -> tuple[Gateway, Gateway]:
    """Two replicas sharing Redis and the front's token."""
    common = {"registry_url": redis_url, "redis_key_prefix": f"frt-{secrets.token_hex(3)}:",
              "token": TOKEN, "pool_size": 0, **LEASE, **settings}
    return (gateway_factory(instance_id="frt-a", **common),
            gateway_factory(instance_id="frt-c", **common))
