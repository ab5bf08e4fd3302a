"""The forwarding hot path (gateway/replica_link/front.py): a Front in this process (see
tests/front_server.py), in front of real owner gateways (Redis registry, local kernels)
reached over the real replica link."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, free_port
from tests.front_server import DEFAULT_KEY, TOKEN, FrontServer, owner_pair


@pytest.fixture
def front() -> Iterator[FrontServer]:
    server = FrontServer()
    yield server
    server.close()


@pytest.fixture
def owners(gateway_factory: Any, redis_url: str) -> tuple[Gateway, Gateway]:
    return owner_pair(gateway_factory, redis_url)


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
