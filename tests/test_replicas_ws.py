"""Several replicas sharing one Redis: a session's WebSockets (/v1 and Jupyter channels) and
its Jupyter REST calls work through any replica, relayed to the one that owns the session."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tornado.httpclient import HTTPClientError

from tests.conftest import (
    V1_SUBPROTOCOL,
    Closed,
    Connect,
    Gateway,
    KernelSocket,
    upgrade,
    upgrade_at,
    wait_until,
)

KernelWs = Callable[..., Awaitable[KernelSocket]]
FORWARDED_HEADER = "X-Exec-Gateway-Forwarded-By"


def start_replicas(factory: Callable[..., Gateway], redis_url: str, **settings: Any
                   ) -> tuple[Gateway, Gateway]:
    """Two replicas that share Redis but not their socket directories (as on two hosts)."""
    token, prefix = secrets.token_urlsafe(24), f"rws-{secrets.token_hex(3)}:"
    common = {"registry_url": redis_url, "redis_key_prefix": prefix, "token": token,
              "pool_size": 0, "interrupt_grace_s": 1, **settings}
    return factory(instance_id="rws-a", **common), factory(instance_id="rws-b", **common)


@pytest.fixture
def replicas(gateway_factory: Callable[..., Gateway], redis_url: str) -> tuple[Gateway, Gateway]:
    return start_replicas(gateway_factory, redis_url)


def jupyter(gw: Gateway) -> httpx.Client:
    """The replica's Jupyter API with the auth scheme Jupyter clients use."""
    return httpx.Client(base_url=gw.url, headers={"Authorization": f"token {gw.token}"},
                        timeout=60)


def of_type(msgs: list[dict[str, Any]], msg_type: str) -> list[dict[str, Any]]:
    """The contents of the Jupyter messages of ``msg_type``."""
    return [m["content"] for m in msgs if m["header"]["msg_type"] == msg_type]


def make_session(gw: Gateway, session_id: str) -> None:
    r = gw.http.post("/v1/sessions", json={"session_id": session_id})
    assert r.status_code == 201, r.text


# ------------------------------------------------------------------ /v1 WebSocket
async def test_v1_socket_on_b_runs_code_in_a_session_made_on_a(
    replicas: tuple[Gateway, Gateway], connect: Connect
) -> None:
    a, b = replicas
    make_session(a, "shared")
    assert a.execute("shared", "x = 'from a'")["status"] == "ok"
    w = await connect(b, "shared")
    assert w.hello["session_id"] == "shared" and w.hello["execution_count"] == 1
    await w.execute("r1", "print('side')\nx")
    result = await w.result("r1")
    assert w.stream_text("r1") == "side\n"
    assert result["result"]["status"] == "ok"
    assert result["result"]["outputs"][0]["data"]["text/plain"] == "'from a'"
    # the run happened in A's session: A sees what B's client did
    assert a.execute("shared", "_")["outputs"][0]["data"]["text/plain"] == "'from a'"
    assert a.http.get("/v1/sessions/shared").json()["execution_count"] == 3


async def test_watcher_on_b_sees_a_rest_run_on_a_live(
    replicas: tuple[Gateway, Gateway], connect: Connect
) -> None:
    a, b = replicas
    make_session(a, "live")
    w = await connect(b, "live")
    code = "import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(0.4)"
    rest = asyncio.create_task(asyncio.to_thread(a.execute, "live", code))
    first = await w.until(lambda e: e["type"] == "stream")
    assert first["text"].startswith("0")
    assert not rest.done(), "the first line must reach B's watcher while the cell runs"
    result = await w.until(lambda e: e["type"] == "result")
    assert (await rest)["stdout"] == "0\n1\n2\n3\n"
    assert w.stream_text(result["id"]) == "0\n1\n2\n3\n"


async def test_deleting_the_session_on_a_closes_the_socket_on_b_with_4410(
    replicas: tuple[Gateway, Gateway], connect: Connect
) -> None:
    a, b = replicas
    make_session(a, "doomed")
    w = await connect(b, "doomed")
    assert a.http.delete("/v1/sessions/doomed").status_code == 204
    with pytest.raises(Closed):
        await w.until(lambda e: False)
    assert w.conn.close_code == 4410
    assert {"type": "status", "state": "closed"}.items() <= w.events[-1].items()


def test_a_forwarded_socket_is_never_forwarded_again(replicas: tuple[Gateway, Gateway]) -> None:
    a, b = replicas
    make_session(b, "on-b")
    r = upgrade(a, "on-b", **{FORWARDED_HEADER: "rws-b"})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "owner_unreachable"
    assert upgrade(a, "on-b").status_code == 101  # without the header, A relays it


async def test_a_refusal_by_the_owner_reaches_the_client_as_its_json_error(
    gateway_factory: Callable[..., Gateway], redis_url: str, tmp_path: Path, connect: Connect
) -> None:
    # misconfigured replicas: the same key name with another token on each
    token_a, token_b = "alice-token-on-a-0123456789", "alice-token-on-b-0123456789"
    (tmp_path / "keys-a").write_text(f"alice {token_a}\n")
    (tmp_path / "keys-b").write_text(f"alice {token_b}\n")
    common = {"registry_url": redis_url, "redis_key_prefix": f"rws-{secrets.token_hex(3)}:",
              "token": "", "pool_size": 0}
    a = gateway_factory(instance_id="rws-a", keys_file=tmp_path / "keys-a", **common)
    b = gateway_factory(instance_id="rws-b", keys_file=tmp_path / "keys-b", **common)
    assert a.client(token_a).post("/v1/sessions", json={"session_id": "s"}).status_code == 201
    assert "s" in [s["id"] for s in b.client(token_b).get("/v1/sessions").json()["sessions"]]
    with pytest.raises(HTTPClientError) as info:
        await connect(b, "s", token=token_b)
    assert info.value.code == 401  # B let the token in; A, the owner, did not
    assert info.value.response is not None
    assert json.loads(info.value.response.body)["error"]["code"] == "unauthorized"


# ------------------------------------------------------------------ Jupyter
@pytest.mark.parametrize("v1", [False, True], ids=["legacy", "v1"])
async def test_jupyter_kernel_made_on_a_is_served_by_b(
    replicas: tuple[Gateway, Gateway], kernel_ws: KernelWs, v1: bool
) -> None:
    a, b = replicas
    with jupyter(a) as api_a, jupyter(b) as api_b:
        made = api_a.post("/api/kernels", json={"name": "python3"})
        assert made.status_code == 201, made.text
        kid = made.json()["id"]
        model = api_b.get(f"/api/kernels/{kid}")
        assert model.status_code == 200, model.text
        assert model.json()["id"] == kid and model.json()["name"] == "python3"
        listed = api_b.get("/api/kernels").json()  # B lists the kernels A serves too
        assert [(k["id"], k["execution_state"]) for k in listed] == [(kid, "idle")]

        ws = await kernel_ws(b.url, kid, b.token, v1=v1)
        assert ws.conn.selected_subprotocol == (V1_SUBPROTOCOL if v1 else None)
        reply, iopub = await ws.execute("x = 6 * 7\nprint('side')\nx")
        assert reply["header"]["msg_type"] == "execute_reply"
        assert reply["content"]["status"] == "ok"
        assert reply["parent_header"]["session"] == ws.session.session
        assert of_type(iopub, "stream") == [{"name": "stdout", "text": "side\n"}]
        assert of_type(iopub, "execute_result")[0]["data"]["text/plain"] == "42"
        assert of_type(iopub, "execute_input")[0]["code"].startswith("x = 6 * 7")
        assert set(ws.frame_kinds) == ({bytes} if v1 else {str})
        # A serves the kernel: B's socket is one of A's connections
        assert api_a.get(f"/api/kernels/{kid}").json()["connections"] == 1

        # interrupt through B's REST stops a running cell
        loop = await ws.send("shell", "execute_request", {
            "code": "print('looping', flush=True)\nwhile True: pass"})
        await ws.wait_for(lambda ch, m: ch == "iopub" and m["header"]["msg_type"] == "stream"
                          and m["parent_header"].get("msg_id") == loop["header"]["msg_id"])
        assert api_b.post(f"/api/kernels/{kid}/interrupt").status_code == 204
        interrupted = await ws.reply_to(loop)
        assert interrupted["content"]["status"] == "error"
        assert interrupted["content"]["ename"] == "KeyboardInterrupt"

        # restart through B's REST: a fresh interpreter, and the socket keeps working
        restarted = api_b.post(f"/api/kernels/{kid}/restart")
        assert restarted.status_code == 200 and restarted.json()["id"] == kid
        await ws.wait_for(lambda ch, m: ch == "iopub" and m["header"]["msg_type"] == "status"
                          and m["content"]["execution_state"] == "starting")
        reply, iopub = await ws.execute("'x' in dir()")
        assert reply["content"]["status"] == "ok"
        assert of_type(iopub, "execute_result")[0]["data"]["text/plain"] == "False"

        # closing B's socket closes its relay to A
        ws.close()
        wait_until(lambda: api_a.get(f"/api/kernels/{kid}").json()["connections"] == 0, 10)
        assert api_b.delete(f"/api/kernels/{kid}").status_code == 204
        assert api_a.get(f"/api/kernels/{kid}").status_code == 404


def test_channels_on_b_refuse_a_foreign_origin_before_relaying(
    replicas: tuple[Gateway, Gateway]
) -> None:
    a, b = replicas
    with jupyter(a) as api_a:
        kid = api_a.post("/api/kernels").json()["id"]
        url = f"{b.url.replace('http', 'ws', 1)}/api/kernels/{kid}/channels?token={b.token}"
        refused = upgrade_at(url, Origin="https://evil.example")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
        assert api_a.get(f"/api/kernels/{kid}").json()["connections"] == 0
        assert upgrade_at(url).status_code == 101


# ------------------------------------------------------------------ a dead owner
async def test_socket_on_b_is_closed_with_4503_when_the_owner_dies(
    replicas: tuple[Gateway, Gateway], connect: Connect
) -> None:
    a, b = replicas
    make_session(a, "fragile")
    w = await connect(b, "fragile")
    a.stop(signal.SIGKILL)
    with pytest.raises(Closed):
        await w.until(lambda e: False)
    assert w.conn.close_code == 4503  # 4000 + owner_unreachable's 503: reconnect later


async def test_sockets_to_b_for_a_session_whose_owner_died_open_once_its_lease_expired(
    gateway_factory: Callable[..., Gateway], redis_url: str, connect: Connect, kernel_ws: KernelWs
) -> None:
    lease_ttl_s = 2.0
    a, b = start_replicas(gateway_factory, redis_url, lease_ttl_s=lease_ttl_s,
                          lease_renew_s=0.5)
    make_session(a, "orphan")
    kid = a.http.get("/v1/sessions/orphan").json()["kernel_id"]
    a.stop(signal.SIGKILL)  # a crash: the record and the lease stay, the owner is gone
    started = time.monotonic()
    w = await connect(b, "orphan")  # refused by A: waits out A's lease, then B takes over
    assert time.monotonic() - started < lease_ttl_s + 10
    assert w.hello["state"] == "dead"  # a local kernel dies with its gateway: said so plainly
    await w.execute("r1", "print('back')")
    await w.result("r1")
    assert w.stream_text("r1") == "back\n"
    ks = await kernel_ws(b.url, kid, b.token)  # the channels socket, now served by B itself
    reply, iopub = await ks.execute("1 + 1")
    assert reply["content"]["status"] == "ok"
    assert of_type(iopub, "execute_result")[0]["data"]["text/plain"] == "2"


def test_a_client_gone_before_the_relay_opened_leaves_nothing_behind(
    gateway_factory: Callable[..., Gateway], redis_url: str
) -> None:
    """The client hangs up while B still waits for A (here: A starting the session): B must
    not keep the socket it opened to A, which would pin the session (never idle-reaped)."""
    a, b = start_replicas(gateway_factory, redis_url, idle_timeout_s=2, reap_interval_s=0.3)
    a_port, b_port = (int(gw.url.rsplit(":", 1)[1]) for gw in (a, b))

    def relayed() -> int:  # B's established connections to A
        out = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{a_port} )"],
                             capture_output=True, text=True, check=True).stdout
        return sum(1 for line in out.splitlines() if f"pid={b.proc.pid}," in line)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        creating = pool.submit(a.client().post, "/v1/sessions", json={"session_id": "left"})
        wait_until(lambda: "left" in a.log(), 10)  # A is starting the session's kernel
        with socket.create_connection(("127.0.0.1", b_port)) as s:
            s.sendall(("GET /v1/sessions/left/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                       f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                       f"Authorization: Bearer {b.token}\r\n\r\n").encode())
            time.sleep(0.1)  # B is now waiting for A; the client hangs up
        assert creating.result(60).status_code == 201
    wait_until(lambda: a.http.get("/v1/sessions/left").status_code == 404, 20)  # reaped
    assert relayed() == 0
