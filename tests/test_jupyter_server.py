"""End to end: a real ``jupyter server --gateway-url`` (jupyter_server from PyPI) in front of
the gateway. Everything goes through jupyter_server's own /api/kernels and channels socket
and must land on the gateway's sessions."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, KernelSocket, free_port, wait_until


@dataclass
class JupyterServer:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def jupyter(gw: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    """``jupyter server`` on a free loopback port, its gateway client pointed at ``gw`` with
    the gateway's token; its own token, dirs and HOME under a temp dir (nothing read from or
    written to this machine's Jupyter setup)."""
    tmp = tmp_path_factory.mktemp("jupyter")
    dirs = {name: tmp / name for name in ("root", "runtime", "config", "data", "home")}
    for path in dirs.values():
        path.mkdir()
    port, token = free_port(), secrets.token_urlsafe(24)
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(dirs["home"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_NO_CONFIG": "1",  # ignore system and sys.prefix config
        "JUPYTER_GATEWAY_AUTH_TOKEN": gw.token,  # an env var keeps it out of `ps`
    }
    log_path = tmp / "jupyter.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser",
             f"--gateway-url={gw.url}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
             "--ServerApp.port_retries=0", f"--ServerApp.root_dir={dirs['root']}",
             f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
             "--GatewayClient.request_timeout=60", "--GatewayClient.connect_timeout=10",
             *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI containers run as root
            env=env, cwd=dirs["root"], stdout=log, stderr=subprocess.STDOUT)
    server = JupyterServer(f"http://127.0.0.1:{port}", token, proc, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter server exited early:\n{server.log()}")
        try:
            return httpx.get(f"{server.url}/api/status", timeout=2,
                             headers={"Authorization": f"token {token}"}).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60, 0.1)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def jclient(jupyter: JupyterServer) -> AsyncIterator[httpx.AsyncClient]:
    """jupyter_server's REST API, as JupyterLab calls it."""
    async with httpx.AsyncClient(base_url=jupyter.url, timeout=90,
                                 headers={"Authorization": f"token {jupyter.token}"}) as c:
        yield c


@pytest.fixture
async def gclient(gw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """Our gateway's REST API, to see where things landed."""
    async with httpx.AsyncClient(base_url=gw.url, timeout=90,
                                 headers={"Authorization": f"Bearer {gw.token}"}) as c:
        yield c


async def gateway_session(gclient: httpx.AsyncClient, kernel_id: str) -> dict[str, Any] | None:
    sessions = (await gclient.get("/v1/sessions")).json()["sessions"]
    found = [s for s in sessions if s["kernel_id"] == kernel_id]
    assert len(found) <= 1
    return found[0] if found else None


def is_idle_for(request: dict[str, Any]) -> Any:
    msg_id = request["header"]["msg_id"]
    return lambda ch, m: (ch == "iopub" and m["header"]["msg_type"] == "status"
                          and m["content"]["execution_state"] == "idle"
                          and m["parent_header"].get("msg_id") == msg_id)


def result_text(iopub: list[dict[str, Any]]) -> str:
    [result] = [m for m in iopub if m["header"]["msg_type"] == "execute_result"]
    return str(result["content"]["data"]["text/plain"])


async def test_kernel_lifecycle_through_jupyter_server_lands_on_the_gateway(
    jupyter: JupyterServer, jclient: httpx.AsyncClient, gclient: httpx.AsyncClient,
    kernel_ws: Any
) -> None:
    created = await jclient.post("/api/kernels", json={"name": "python3"})
    assert created.status_code == 201, created.text
    kid = created.json()["id"]
    try:
        # it is one of our sessions, same kernel id
        session = await gateway_session(gclient, kid)
        assert session is not None, "the kernel did not land on the gateway"
        assert (await gclient.get(f"/api/kernels/{kid}")).status_code == 200
        assert kid in [k["id"] for k in (await jclient.get("/api/kernels")).json()]

        # execute through jupyter_server's channels socket (it speaks the legacy protocol)
        ws: KernelSocket = await kernel_ws(jupyter.url, kid, jupyter.token)
        reply, iopub = await ws.execute("x = 6 * 7; x")
        assert reply["content"]["status"] == "ok", reply["content"]
        assert result_text(iopub) == "42"
        assert ws.conn.selected_subprotocol is None
        assert set(ws.frame_kinds) == {str}
        assert (await gclient.get(f"/api/kernels/{kid}")).json()["connections"] == 1

        # interrupt a running cell through jupyter_server's REST
        running = await ws.send("shell", "execute_request", {"code": "while True: pass"})
        await ws.wait_for(lambda ch, m: ch == "iopub" and m["header"]["msg_type"] == "status"
                          and m["content"]["execution_state"] == "busy"
                          and m["parent_header"].get("msg_id") == running["header"]["msg_id"])
        assert (await jclient.post(f"/api/kernels/{kid}/interrupt")).status_code == 204
        reply = await ws.reply_to(running)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        errors = [m for m in ws.iopub_of(running) if m["header"]["msg_type"] == "error"]
        assert errors and errors[0]["content"]["ename"] == "KeyboardInterrupt"
        reply, iopub = await ws.execute("x")
        assert result_text(iopub) == "42"  # an interrupt keeps state

        # restart: same kernel id on both servers, a fresh interpreter on ours
        restarted = await jclient.post(f"/api/kernels/{kid}/restart")
        assert restarted.status_code == 200, restarted.text
        assert restarted.json()["id"] == kid
        after = await gateway_session(gclient, kid)
        assert after is not None
        assert after["id"] == session["id"]
        assert after["generation"] == session["generation"] + 1
        reply, iopub = await ws.execute("'x' in dir()")
        assert reply["content"]["status"] == "ok", reply["content"]
        assert result_text(iopub) == "False"
    finally:
        deleted = await jclient.delete(f"/api/kernels/{kid}")
    assert deleted.status_code == 204, deleted.text
    assert await gateway_session(gclient, kid) is None
    assert (await gclient.get(f"/api/kernels/{kid}")).status_code == 404
    assert kid not in [k["id"] for k in (await jclient.get("/api/kernels")).json()]


async def test_a_rest_session_is_reachable_through_jupyter_server(
    gw: Gateway, jupyter: JupyterServer, jclient: httpx.AsyncClient,
    gclient: httpx.AsyncClient, sid: str, kernel_ws: Any
) -> None:
    made = await gclient.post(f"/v1/sessions/{sid}/execute", json={"code": "shared = 1"})
    assert made.status_code == 200 and made.json()["status"] == "ok", made.text
    kid = (await gclient.get(f"/v1/sessions/{sid}")).json()["kernel_id"]
    # jupyter_server lists only the kernels it manages; it takes on a gateway kernel that
    # exists already when asked to start one with that id (how a client attaches to it)
    attached = await jclient.post("/api/kernels", json={"name": "python3", "kernel_id": kid})
    assert attached.status_code == 201, attached.text
    assert attached.json()["id"] == kid
    assert kid in [k["id"] for k in (await jclient.get("/api/kernels")).json()]
    model = (await jclient.get(f"/api/kernels/{kid}")).json()
    assert model["execution_state"] == "idle"

    ws: KernelSocket = await kernel_ws(jupyter.url, kid, jupyter.token)
    reply, iopub = await ws.execute("shared + 1")
    assert reply["content"]["status"] == "ok", reply["content"]
    assert result_text(iopub) == "2"
    # and the other way round: set through Jupyter, read over REST
    await ws.execute("from_jupyter = 'yes'")
    back = await gclient.post(f"/v1/sessions/{sid}/execute", json={"code": "from_jupyter"})
    assert back.json()["outputs"][0]["data"]["text/plain"] == "'yes'"
    # a REST run's output reaches the Jupyter client through jupyter_server
    rest = await gclient.post(f"/v1/sessions/{sid}/execute", json={"code": "print('via rest')"})
    assert rest.json()["stdout"] == "via rest\n"
    await ws.wait_for(lambda ch, m: ch == "iopub" and m["header"]["msg_type"] == "stream"
                      and m["content"]["text"] == "via rest\n")
    assert (await gateway_session(gclient, kid)) is not None


async def test_gateway_errors_come_back_through_jupyter_server(
    jupyter: JupyterServer, jclient: httpx.AsyncClient
) -> None:
    specs = (await jclient.get("/api/kernelspecs")).json()
    assert specs["default"] == "python3"
    assert "python3" in specs["kernelspecs"]
    missing = await jclient.get("/api/kernels/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404
    # our JSON 404 for an unknown kernelspec reaches the Jupyter client as a 404
    assert (await jclient.post("/api/kernels", json={"name": "nope"})).status_code == 404
