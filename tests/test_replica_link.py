"""The replica link: forwarded REST calls between real gateway replicas (Redis registry, local
launcher) share one long-lived link, land where the session is even when the forwarder's
remembered place is stale, and a hostile peer on the link endpoint gets nowhere."""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import signal
import socket
import struct
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.replica_link import frames, served
from tests.conftest import Gateway, wait_until

LEASE = {"lease_ttl_s": 2.0, "lease_renew_s": 0.5}


def metric(gw: Gateway, name: str) -> float:
    """The sum of a metric's samples (every label set) on ``gw``."""
    text = gw.http.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((f"{name} ", f"{name}{{")))


@pytest.fixture
def trio(gateway_factory: Any, redis_url: str) -> tuple[Gateway, Gateway, Gateway]:
    """Three replicas sharing Redis and one token."""
    common = {"registry_url": redis_url, "redis_key_prefix": f"lnk-{secrets.token_hex(3)}:",
              "token": secrets.token_urlsafe(24), "pool_size": 0, **LEASE}
    return tuple(gateway_factory(instance_id=f"lnk-{n}", **common)  # type: ignore[return-value]
                 for n in "abc")


def test_forwarded_calls_share_one_link_and_run_once_each(
        trio: tuple[Gateway, Gateway, Gateway]) -> None:
    a, b, _ = trio
    a.execute("counted", "n = 0")
    for _ in range(20):
        assert b.execute("counted", "n += 1")["status"] == "ok"

    def bump(_: int) -> int:
        r = b.client().post("/v1/sessions/counted/execute", json={"code": "n += 1"})
        return r.status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # several calls on the link at once
        assert set(pool.map(bump, range(16))) == {200}
    assert a.execute("counted", "n")["outputs"][0]["data"]["text/plain"] == "36"
    assert metric(a, "gateway_replica_links") == 1  # one link from B, however many calls
    assert metric(b, "gateway_executes_total") == 0  # B ran nothing itself
    text = b.http.get("/metrics").text
    assert 'gateway_forwarded_calls_total{outcome="answered"} 36.0' in text


def test_answers_keep_status_and_headers_through_the_link(
        trio: tuple[Gateway, Gateway, Gateway]) -> None:
    a, b, _ = trio
    a.execute("h", "1")
    r = b.http.post("/v1/sessions/h/execute", json={"code": "1", "wait": False})
    assert r.status_code == 202 and r.headers["Location"].startswith("/v1/sessions/h/runs/")
    assert r.headers["Content-Type"].startswith("application/json")
    done = b.http.get(r.headers["Location"], params={"wait_s": 10}).json()
    assert done["status"] == "finished" and done["result"]["status"] == "ok", done
    assert b.http.post("/v1/sessions/h/interrupt").status_code == 204
    r = b.http.get("/v1/sessions/h/runs/no-such-run")  # A's error answer, as A gave it
    assert r.status_code == 404 and r.json()["error"]["code"] == "run_not_found", r.text
    r = b.client(token="not-the-token").post("/v1/sessions/h/execute", json={"code": "1"})
    assert r.status_code == 401


def test_a_stale_remembered_place_is_asked_again_and_nothing_runs_twice(
        trio: tuple[Gateway, Gateway, Gateway]) -> None:
    """B remembers that A serves ``moving``; the session is deleted there and created again on
    C. B's next call reaches A first, which answers that it does not serve it, then C."""
    a, b, c = trio
    a.execute("moving", "where = 'a'")
    assert b.execute("moving", "where")["outputs"][0]["data"]["text/plain"] == "'a'"
    assert a.http.delete("/v1/sessions/moving").status_code == 204
    c.execute("moving", "where = 'c'; calls = 0")
    result = b.execute("moving", "calls += 1; where, calls")
    assert result["outputs"][0]["data"]["text/plain"] == "('c', 1)"
    assert 'gateway_forwarded_calls_total{outcome="misdirected"} 1.0' in \
        b.http.get("/metrics").text
    assert metric(a, "gateway_executes_total") == 2  # A ran only its own two cells


def test_after_the_owner_stops_the_next_forwarded_call_is_served_by_the_forwarder(
        trio: tuple[Gateway, Gateway, Gateway]) -> None:
    """A stops gracefully (closing its sessions) while B holds a link to it and remembers A
    as the session's place: the link closes, and B's next call opens the session anew
    instead of answering an error."""
    a, b, _ = trio
    a.execute("left", "x = 1")
    assert b.execute("left", "x")["status"] == "ok"  # B holds a link to A now
    assert a.stop(signal.SIGTERM) == 0
    result = b.execute("left", "'x' in dir()")
    assert result["outputs"][0]["data"]["text/plain"] == "False", result
    assert result["execution_count"] == 1
    assert "kernel started session_id=left" in b.log()


# ---------------------------------------------------------------------- a hostile peer
class RawLink:
    """A plain socket speaking the link protocol to a gateway, as a hostile peer would."""

    def __init__(self, gw: Gateway, *, token: str | None) -> None:
        url = urllib.parse.urlsplit(gw.url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=10)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.sock.sendall(f"GET {frames.PATH} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                          f"Upgrade: {frames.PROTOCOL}\r\n{auth}\r\n".encode())
        self.head = b""
        while b"\r\n\r\n" not in self.head:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.head += chunk
        self.status = int(self.head.split(b" ", 2)[1]) if self.head else 0
        self.rest = self.head.partition(b"\r\n\r\n")[2]

    def call(self, number: int, method: str, uri: str, headers: list[list[str]],
             body: bytes = b"") -> frames.Frame:
        self.sock.sendall(frames.encode(number, {"method": method, "uri": uri,
                                                 "headers": headers}, body))
        decoder = frames.Decoder(1 << 24)
        data = self.rest
        while True:
            got = list(decoder.feed(data))
            if got:
                return got[0]
            data = self.sock.recv(65536)
            assert data, "the gateway closed the link"

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def lone(gateway_factory: Any) -> Iterator[Gateway]:
    yield gateway_factory(pool_size=0)


def test_the_link_endpoint_wants_a_key_and_the_upgrade(lone: Gateway) -> None:
    raw = RawLink(lone, token=None)
    assert raw.status == 401 and b'"unauthorized"' in raw.head
    raw.close()
    r = lone.http.get(frames.PATH)  # a key, but no Upgrade
    assert r.status_code == 400 and frames.PROTOCOL in r.json()["error"]["message"]


def test_every_call_on_a_link_is_authenticated_again(lone: Gateway) -> None:
    lone.execute("mine", "secret = 42")
    raw = RawLink(lone, token=lone.token)
    assert raw.status == 101
    bearer = [["Authorization", f"Bearer {lone.token}"]]
    ok = raw.call(1, "GET", "/v1/sessions/mine", bearer)
    assert ok.head["code"] == 200 and json.loads(ok.body)["id"] == "mine"
    anonymous = raw.call(2, "POST", "/v1/sessions/mine/execute", [],
                         b'{"code": "secret"}')
    assert anonymous.head["code"] == 401
    forged = raw.call(3, "POST", "/v1/sessions/mine/execute",
                      [["Authorization", "Bearer forged-token-0123456789"]], b'{"code": "1"}')
    assert forged.head["code"] == 401
    raw.close()


def test_quiet_links_cannot_lock_the_replicas_out(lone: Gateway) -> None:
    """Any key holder may open links; when the room is full, the link quiet longest makes
    way for the new one."""
    hoarded = [RawLink(lone, token=lone.token) for _ in range(served.MAX_LINKS)]
    assert {raw.status for raw in hoarded} == {101}
    assert metric(lone, "gateway_replica_links") == served.MAX_LINKS
    newcomer = RawLink(lone, token=lone.token)
    assert newcomer.status == 101
    assert hoarded[0].closed_by_peer()
    answer = newcomer.call(1, "GET", "/healthz", [])
    assert answer.head["code"] == 200
    for raw in [*hoarded, newcomer]:
        raw.close()


@pytest.mark.parametrize("junk", [
    struct.pack(">IIH", 1 << 31, 1, 2) + b"{}",  # a 2 GiB frame: refused before buffering
    struct.pack(">IIH", 12, 1, 6) + b"not js",  # a head that is not JSON
    frames.encode(1, {"method": "GET", "uri": "/healthz", "headers": "x"}),
    frames.encode(1, {"method": "GET", "uri": "http://evil/", "headers": []}),
    frames.encode(0, {"goaway": 0}),  # call numbers start at 1 and only grow
])
def test_broken_frames_close_the_link_and_the_gateway_serves_on(lone: Gateway,
                                                                junk: bytes) -> None:
    raw = RawLink(lone, token=lone.token)
    assert raw.status == 101
    raw.sock.sendall(junk)
    assert raw.closed_by_peer()
    raw.close()
    assert lone.execute("after", "1 + 1")["outputs"][0]["data"]["text/plain"] == "2"
    wait_until(lambda: metric(lone, "gateway_replica_links") == 0, 5)


def rss_mb(gw: Gateway) -> float:
    with open(f"/proc/{gw.proc.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def test_a_peer_that_never_reads_cannot_make_the_gateway_buffer_without_bound(
        lone: Gateway) -> None:
    """3000 calls whose answers are large (the OpenAPI document), sent in batches, none of
    the answers read: once they back up, the link stops taking calls instead of reading on
    and holding every answer (~300 MB), and the gateway serves everyone else meanwhile."""
    document = len(lone.http.get("/v1/openapi.json").content)
    assert document > 30_000
    raw = RawLink(lone, token=lone.token)
    assert raw.status == 101
    before = rss_mb(lone)
    auth = [["Authorization", f"Bearer {lone.token}"]]
    for batch in range(30):
        raw.sock.sendall(b"".join(
            frames.encode(n, {"method": "GET", "uri": "/v1/openapi.json", "headers": auth})
            for n in range(batch * 100 + 1, batch * 100 + 101)))
        time.sleep(0.03)
    time.sleep(0.5)
    grown = rss_mb(lone) - before
    assert grown < 0.3 * 3000 * document / 2**20, f"the gateway grew {grown:.0f} MB"
    assert lone.execute("other", "2 + 2")["outputs"][0]["data"]["text/plain"] == "4"
    raw.close()


# ---------------------------------------------------------------------- frames
def test_frames_survive_any_split_and_keep_their_order() -> None:
    sent = [frames.encode(n, {"method": "POST", "uri": f"/{n}", "headers": [["A", "b"]]},
                          bytes([n]) * n) for n in range(1, 40)]
    wire = b"".join(sent)
    for size in (1, 7, 64, len(wire)):
        decoder = frames.Decoder(1 << 20)
        got = [f for i in range(0, len(wire), size) for f in decoder.feed(wire[i:i + size])]
        assert [(f.call, f.head["uri"], f.body) for f in got] == \
            [(n, f"/{n}", bytes([n]) * n) for n in range(1, 40)]
        assert frames.headers_of(got[0].head)["a"] == "b"


def test_a_frame_over_the_limit_is_refused_from_its_prefix_alone() -> None:
    decoder = frames.Decoder(1000)
    with pytest.raises(frames.FrameError):
        list(decoder.feed(frames.encode(1, {}, b"x" * 2000)[:10]))
