"""exec-gateway under test: its process (``python -m gateway``) and its REST API v1 client."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.http_client import HttpConnection, HttpError
from bench.procs import ProcessTracker, free_port
from bench.target import CALL_TIMEOUT_S, BenchError, ExecOutput

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0


@dataclass
class GatewayProcess:
    """A running gateway on 127.0.0.1 with one API token."""

    port: int
    token: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    home: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection(self) -> HttpConnection:
        return HttpConnection("127.0.0.1", self.port, {"Authorization": f"Bearer {self.token}"})


async def start_gateway(tracker: ProcessTracker, log_path: Path,
                        settings: dict[str, str]) -> GatewayProcess:
    """Start ``python -m gateway`` (local launcher, memory registry unless ``settings`` say
    otherwise) with ``GATEWAY_*`` ``settings``; returns once /healthz answers. Its API token is
    ``settings["token"]`` when given (replicas sharing one), else a fresh one. Raises
    BenchError."""
    port, token = free_port(), settings.get("token") or secrets.token_urlsafe(24)
    home = Path(tempfile.mkdtemp(prefix="bng-", dir="/tmp"))  # short: ipc path limit
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_TOKEN": token,
        "GATEWAY_LAUNCHER": "local",
        "GATEWAY_REGISTRY_URL": "memory://",
        "GATEWAY_RUNTIME_DIR": str(home / "rt"),
        "GATEWAY_KERNEL_PYTHON": sys.executable,
        **{f"GATEWAY_{k.upper()}": v for k, v in settings.items()},
    }
    if os.environ.get("DOCKER_HOST"):  # the docker launcher's engine, when not the default
        env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    proc = tracker.spawn([sys.executable, "-m", "gateway"], env=env, cwd=ROOT, log_path=log_path)
    gw = GatewayProcess(port, token, proc, log_path, home)
    conn = gw.connection()
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise BenchError(f"gateway exited with {proc.returncode}; see {log_path}")
            try:
                if (await conn.request("GET", "/healthz")).status == 200:
                    return gw
            except HttpError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"gateway not healthy after {START_TIMEOUT_S}s; see {log_path}")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def stop_gateway(tracker: ProcessTracker, gw: GatewayProcess) -> None:
    """SIGTERM (the gateway stops its kernels), bounded wait, then kill what is left."""
    await asyncio.to_thread(tracker.stop, gw.proc, 20.0)
    shutil.rmtree(gw.home, ignore_errors=True)


async def wait_for_health(gw: GatewayProcess, what: str, ready: Callable[[dict[str, Any]], bool],
                          timeout_s: float = 60.0) -> float:
    """Poll ``/healthz`` until ``ready(body)``; returns the seconds waited. Raises BenchError
    naming ``what`` past ``timeout_s``."""
    conn = gw.connection()
    start = time.monotonic()
    try:
        while True:
            r = await conn.request("GET", "/healthz")
            if r.status == 200 and ready(r.json()):
                return time.monotonic() - start
            if time.monotonic() - start > timeout_s:
                raise BenchError(f"{what} not so after {timeout_s}s: {r.body[:200]!r}")
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def wait_for_pool(gw: GatewayProcess, size: int, timeout_s: float = 60.0) -> None:
    """Poll ``/healthz`` until the warm pool holds ``size`` kernels. Raises BenchError."""
    await wait_for_health(gw, f"warm pool at {size}",
                          lambda h: bool(h.get("pool_size", 0) >= size), timeout_s)


async def wait_for_env_volume(gw: GatewayProcess, timeout_s: float = 300.0
                              ) -> dict[str, Any]:
    """Poll a docker gateway's ``/healthz`` until its kernel env volume is settled (ready, or
    none/off/failed: then kernels read the image's own files): kernels started while it is
    filled read those too, slower. Returns ``{"wait_s", "state"}``. Raises BenchError."""
    seen: dict[str, Any] = {}

    def settled(health: dict[str, Any]) -> bool:
        seen["state"] = health.get("launcher_details", {}).get("env_volume")
        return seen["state"] in ("ready", "none", "off", "failed")

    waited = await wait_for_health(gw, "kernel env volume settled", settled, timeout_s)
    return {"wait_s": round(waited, 2), "state": seen["state"]}


class RestSession:
    """One gateway session, reached over its own keep-alive connection to ``gw``. With an
    ``owner`` (another replica sharing ``gw``'s registry) the session is created and deleted
    there, over a second connection, and ``gw`` forwards every execute to it."""

    def __init__(self, gw: GatewayProcess, session_id: str,
                 owner: GatewayProcess | None = None, attached: bool = False) -> None:
        self.session_id = session_id
        self.attached = attached  # someone else's session: never created or deleted here
        self._conn = gw.connection()
        self._owner_conn = self._conn if owner is None else owner.connection()
        self._execute_path = f"/v1/sessions/{session_id}/execute"

    async def create(self) -> None:
        try:
            r = await self._owner_conn.request("POST", "/v1/sessions",
                                               {"session_id": self.session_id})
        except HttpError as exc:
            raise BenchError(f"create session: {exc}") from exc
        if r.status != 201:
            raise BenchError(f"create session: HTTP {r.status}: {r.body[:300]!r}")

    async def execute(self, code: str) -> ExecOutput:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                r = await self._conn.request("POST", self._execute_path, {"code": code})
        except (TimeoutError, HttpError) as exc:
            raise BenchError(f"REST execute: {exc!r}") from exc
        if r.status != 200:
            raise BenchError(f"REST execute: HTTP {r.status}: {r.body[:300]!r}")
        result = r.json()
        if result["status"] != "ok":
            raise BenchError(f"REST execute: status {result['status']}: {result.get('error')}")
        outputs = result["outputs"]
        text = outputs[0]["data"].get("text/plain", "") if outputs else ""
        # REST hands all stdout over at once, with the answer
        at = time.perf_counter() if result["stdout"] else None
        return ExecOutput(text=text, stdout=result["stdout"], first_stdout_at=at,
                          last_stdout_at=at)

    async def close(self) -> None:
        if self.attached:
            await self._conn.close()
            return
        try:
            async with asyncio.timeout(30):
                await self._owner_conn.request("DELETE", f"/v1/sessions/{self.session_id}")
        except (TimeoutError, HttpError):
            pass  # the gateway's own shutdown stops the kernel
        await self._conn.close()
        if self._owner_conn is not self._conn:
            await self._owner_conn.close()


class RestTarget:
    """Sessions created with ``POST /v1/sessions`` and driven with ``POST .../execute`` on
    ``gw`` (created on ``owner`` instead when given: ``gw`` then forwards each call there).
    With ``session_id``, that one existing session instead (several targets can share it: a
    comparison without a second kernel's own speed in it). The server CPU per call is
    ``gw``'s."""

    def __init__(self, gw: GatewayProcess, name: str = "gateway_rest",
                 owner: GatewayProcess | None = None, session_id: str | None = None) -> None:
        self.gw = gw
        self.owner = owner
        self.name = name
        self.session_id = session_id
        self.server_pid: int | None = gw.pid

    async def start(self) -> RestSession:
        if self.session_id is not None:
            return RestSession(self.gw, self.session_id, attached=True)
        session = RestSession(self.gw, f"bench-{secrets.token_hex(6)}", self.owner)
        try:
            await session.create()
        except BenchError:
            await session.close()
            raise
        return session
