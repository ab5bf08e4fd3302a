"""Lanes (gateway/replica_link/lane.py): a keep-alive connection whose forwarded execute was
answered leaves tornado's HTTP server and its next forwarded calls are served by the front
itself; anything else goes back to tornado with its bytes unread. A Front in this process
(tests/front_server.py) in front of real owner gateways (Redis, local kernels) over the real
replica link; clients are httpx or raw sockets (to split and pipeline requests)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import httpx
import pytest

from tests.conftest import Gateway, wait_until
from tests.front_server import AUTH, FrontServer, owner_pair


@pytest.fixture
def owners(gateway_factory: Any, redis_url: str) -> tuple[Gateway, Gateway]:
    return owner_pair(gateway_factory, redis_url)


@pytest.fixture
def make_front() -> Iterator[Callable[..., FrontServer]]:
    made: list[FrontServer] = []

    def make(**settings: Any) -> FrontServer:
        made.append(FrontServer(**settings))
        return made[-1]

    yield make
    for front in made:
        front.close()


def request(code: str, session_id: str = "s", **headers: str) -> bytes:
    body = json.dumps({"code": code}).encode()
    lines = {"Host": "front", **AUTH, "Content-Type": "application/json",
             "Content-Length": str(len(body)), **headers}
    head = "".join(f"{name}: {value}\r\n" for name, value in lines.items())
    return f"POST /v1/sessions/{session_id}/execute HTTP/1.1\r\n{head}\r\n".encode() + body


class Raw:
    """A client on a plain socket: requests sent as given, answers read one by one."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file: BinaryIO = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        status = int(self.file.readline().split()[1])
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, value = line.decode().split(":", 1)
            headers[name.strip().lower()] = value.strip()
        return status, headers, self.file.read(int(headers.get("content-length", 0)))

    def value(self) -> str:
        status, _, body = self.answer()
        assert status == 200, body
        return str(json.loads(body)["outputs"][0]["data"]["text/plain"])

    def closed(self) -> bool:
        """Whether the server closed the connection (waits up to the socket's timeout)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def a_lane(front: FrontServer, owner: Gateway, code: str = "1", shows: str = "1") -> Raw:
    """A raw connection made a lane by a first forwarded call to session "s" at ``owner``."""
    front.manager.places["s"] = owner.url
    raw = Raw(front.port)
    raw.send(request(code))
    assert raw.value() == shows and front.lanes() >= 1
    return raw


def value(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["outputs"][0]["data"]["text/plain"])


def test_a_keep_alive_connection_becomes_a_lane_that_serves_the_calls_after(
        make_front: Callable[..., FrontServer], owners: tuple[Gateway, Gateway]) -> None:
    front = make_front()
    a, _ = owners
    a.execute("s", "n = 0")
    front.manager.places["s"] = a.url
    with httpx.Client(base_url=front.url, headers=AUTH, timeout=30) as client:
        for n in range(1, 4):
            r = client.post("/v1/sessions/s/execute", json={"code": "n += 1; n"})
            assert value(r) == str(n)
            assert r.headers["content-type"] == "application/json"
            assert r.headers["cache-control"] == "no-store" and "date" in r.headers
            assert front.lanes() == 1
        invalid = client.post("/v1/sessions/s/execute", json={"code": 5})  # the owner's 400
        assert invalid.status_code == 400
        assert invalid.json()["error"]["code"] == "validation_error"
        assert front.lanes() == 1
    assert front.seen == [] and front.forwarded("answered") == 4
    wait_until(lambda: front.lanes() == 0, 10, 0.05)  # the client closed it


def test_anything_else_on_a_lane_goes_back_to_tornado_unread(
        make_front: Callable[..., FrontServer], owners: tuple[Gateway, Gateway]) -> None:
    front = make_front()
    a, _ = owners
    a.execute("s", "n = 0")
    front.manager.places["s"] = a.url
    with httpx.Client(base_url=front.url, headers=AUTH, timeout=30) as client:
        assert value(client.post("/v1/sessions/s/execute", json={"code": "n += 1; n"})) == "1"
        assert client.get("/v1/sessions/s").json() == {"app": True}
        assert front.lanes() == 0
        assert value(client.post("/v1/sessions/s/execute", json={"code": "n"})) == "1"
        assert front.lanes() == 1  # a lane again
        query = client.post("/v1/sessions/s/execute?x=1", json={"code": "n += 100"})
        assert query.json() == {"app": True}
        assert front.lanes() == 0
        assert value(client.post("/v1/sessions/s/execute", json={"code": "n"})) == "1"
        closing = client.post("/v1/sessions/s/execute", json={"code": "n += 1; n"},
                              headers={"Connection": "close"})
        assert value(closing) == "2"  # (by tornado's hot path, which then closes)
        assert closing.headers.get("connection") == "close"
    assert [(m, u, json.loads(b or b"null")) for m, u, b in front.seen] == [
        ("GET", "/v1/sessions/s", None),
        ("POST", "/v1/sessions/s/execute?x=1", {"code": "n += 100"})]
    raw = Raw(front.port)  # bytes that are no request: tornado says so
    try:
        raw.send(request("n"))
        assert raw.value() == "2" and front.lanes() == 1
        raw.send(b"NOT HTTP AT ALL\r\n\r\n")
        assert raw.answer()[0] == 400
        assert raw.closed()
    finally:
        raw.close()


def test_split_and_pipelined_requests_on_a_lane(
        make_front: Callable[..., FrontServer], owners: tuple[Gateway, Gateway]) -> None:
    front = make_front()
    raw = a_lane(front, owners[0], "n = 1; n", "1")
    try:
        data = request("n += 10; n")
        head = data.index(b"\r\n\r\n") + 4
        raw.send(data[:head])  # the body comes later: the lane waits for it
        time.sleep(0.3)
        raw.send(data[head:])
        assert raw.value() == "11" and front.lanes() == 1
        raw.send(data[:20])  # a head cut short: tornado reads it
        time.sleep(0.3)
        raw.send(data[20:])
        assert raw.value() == "21"
        assert front.lanes() == 1  # (tornado's hot path made it a lane again)
        raw.send(request("n += 1; n") + request("n += 1; n") + request("n * 2"))
        assert [raw.value() for _ in range(3)] == ["22", "23", "46"]
        raw.send(data[:head + 3])  # the client gives up halfway through a body
        time.sleep(0.3)
        raw.sock.shutdown(socket.SHUT_WR)
        assert raw.closed()
        wait_until(lambda: front.lanes() == 0, 10, 0.05)
    finally:
        raw.close()
    assert front.seen == [] and front.forwarded("answered") == 6


STRICT = (b"POST /v1/sessions/s/execute HTTP/1.1\r\nHost: front\r\nX-Empty:\r\nX-Blank: \t \r\n"
          b"X-Spaced: \t a  b \t\r\nContent-Length: 2\r\n\r\n{}")


@pytest.mark.parametrize("head", [
    STRICT.replace(b"Host: front\r\n", b"Host: front\r\n continued\r\n"),  # folded
    STRICT.replace(b"Host: front\r\n", b"Host: front\nX-Lf: 1\r\n"),  # a bare LF
    STRICT.replace(b"Host: front", b"Host: front\r\ncontent-length: 2"),  # a field twice
    STRICT.replace(b"HTTP/1.1", b"HTTP/1.0"),
    STRICT.replace(b"front", b"caf\xc3\xa9"),  # bytes outside visible ASCII
    STRICT.replace(b"Host: ", b"Host : "),  # space before the colon
    STRICT.replace(b"X-Empty:", b"X Empty:"),  # not a token
    STRICT.replace(b"POST /v1", b"POST  /v1"),
    STRICT.replace(b"\r\n\r\n", b"\r\n"),  # the head not all there
    b"\r\n\r\n",
])
def test_the_lane_reads_only_strict_heads(head: bytes) -> None:
    from gateway.replica_link.lane import _request_in
    assert _request_in(head) is None  # (tornado's to read, or refuse)


def test_a_strict_head_reads_as_tornado_reads_it() -> None:
    from tornado import httputil

    from gateway.replica_link.lane import _request_in
    request = _request_in(STRICT)
    assert request is not None
    start_line, headers, size = request
    first, _, rest = STRICT[:size - 4].decode().partition("\r\n")
    assert start_line == httputil.parse_request_start_line(first)
    assert sorted(headers.get_all()) == sorted(httputil.HTTPHeaders.parse(rest).get_all())
    assert STRICT[size:] == b"{}"


def test_a_request_the_lane_leaves_alone_still_reaches_tornado(
        make_front: Callable[..., FrontServer], owners: tuple[Gateway, Gateway]) -> None:
    front = make_front()
    raw = a_lane(front, owners[0], "n = 1; n", "1")
    try:
        # legal, not strict: tornado reads it (and forwards it, its hot path)
        raw.send(request("n += 1; n", **{"X-Note": "caf\u00e9"}))
        assert raw.value() == "2"
        raw.send(request("n += 1; n").replace(b"Host: front", b"Host: front\r\nContent-Length: 1"))
        assert raw.answer()[0] == 400  # two lengths: tornado refuses
        assert raw.closed()
    finally:
        raw.close()
    assert front.seen == [] and front.forwarded("answered") == 2


def test_a_call_the_owner_did_not_take_goes_to_the_application_with_its_body(
        make_front: Callable[..., FrontServer], owners: tuple[Gateway, Gateway]) -> None:
    """On a lane, a session that moved (the remembered owner answers 421): nothing ran there,
    the place is forgotten and the application gets the request as the client sent it."""
    front = make_front()
    a, c = owners
    c.execute("moved", "ran = 0")
    front.manager.places.update(s=a.url, moved=a.url)
    with httpx.Client(base_url=front.url, headers=AUTH, timeout=30) as client:
        value(client.post("/v1/sessions/s/execute", json={"code": "1"}))
        assert front.lanes() == 1
        r = client.post("/v1/sessions/moved/execute", json={"code": "ran += 1"})
        assert r.json() == {"app": True}
    assert [(m, u, json.loads(b)) for m, u, b in front.seen] == [
        ("POST", "/v1/sessions/moved/execute", {"code": "ran += 1"})]
    assert front.forwarded("misdirected") == 1 and "moved" not in front.manager.places
    assert value(c.http.post("/v1/sessions/moved/execute", json={"code": "ran"})) == "0"


def test_a_large_answer_is_written_as_the_client_reads_it(
        make_front: Callable[..., FrontServer], gateway_factory: Any, redis_url: str) -> None:
    """An answer larger than a socket's send buffer (4 MiB at most) takes more than one send."""
    front = make_front()
    a, _ = owner_pair(gateway_factory, redis_url, max_output_bytes=8_000_000)
    front.manager.places["s"] = a.url
    with httpx.Client(base_url=front.url, headers=AUTH, timeout=60) as client:
        value(client.post("/v1/sessions/s/execute", json={"code": "1"}))
        assert front.lanes() == 1
        big = client.post("/v1/sessions/s/execute", json={"code": "print('x' * 6_000_000)"})
        assert big.status_code == 200 and len(big.json()["stdout"]) == 6_000_001
        assert value(client.post("/v1/sessions/s/execute", json={"code": "2"})) == "2"
        assert front.lanes() == 1


def test_lanes_wait_within_the_timeouts_and_count_towards_the_connection_cap(
        make_front: Callable[..., FrontServer], owners: tuple[Gateway, Gateway]) -> None:
    front = make_front(keepalive_timeout_s=0.5, body_timeout_s=0.5, max_connections=2)
    idle, partial, third = a_lane(front, owners[0]), a_lane(front, owners[0]), None
    try:
        assert front.lanes() == 2
        partial.send(request("2")[:-3])  # its body never ends
        t0 = time.monotonic()
        assert idle.closed() and partial.closed()
        assert time.monotonic() - t0 < 5
        wait_until(lambda: front.lanes() == 0, 10, 0.05)
        idle, partial = a_lane(front, owners[0]), a_lane(front, owners[0])
        third = Raw(front.port)  # at the cap: the lane idle longest makes room
        third.send(request("4"))
        assert third.value() == "4"
        assert idle.closed()
    finally:
        for raw in (idle, partial, third):
            if raw is not None:
                raw.close()


def test_a_client_that_leaves_during_its_call(
        make_front: Callable[..., FrontServer], owners: tuple[Gateway, Gateway]) -> None:
    front = make_front()
    a, _ = owners
    raw = a_lane(front, a, "n = 0; n", "0")
    raw.send(request("import time; time.sleep(1); n = 99"))
    raw.close()
    wait_until(lambda: front.lanes() == 0, 10, 0.05)
    assert value(a.http.post("/v1/sessions/s/execute", json={"code": "n"})) == "99"
    with httpx.Client(base_url=front.url, headers=AUTH, timeout=30) as client:
        assert value(client.post("/v1/sessions/s/execute", json={"code": "n + 1"})) == "100"
    assert front.forwarded("answered") == 3


def test_a_bug_in_a_lane_closes_its_connection(
        make_front: Callable[..., FrontServer], owners: tuple[Gateway, Gateway]) -> None:
    """A lane that fails (here: the place lookup raises) closes its connection: no reader left
    spinning on bytes it cannot handle, no socket left waiting for nothing."""
    front = make_front()
    raw = a_lane(front, owners[0])
    try:
        class Broken(dict[str, str]):
            def get(self, *_: Any) -> str | None:
                raise RuntimeError("a bug")

        front.manager.places = Broken()
        raw.send(request("2"))
        assert raw.closed()
        assert front.lanes() == 0
    finally:
        raw.close()
