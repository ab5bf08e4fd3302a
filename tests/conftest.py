"""Shared fixtures: real gateway processes on free loopback ports, and clients for them."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)


@dataclass
class Gateway:
    """A running gateway process."""

    url: str
    token: str
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log_path: Path
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token if token is not None else self.token}"}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=120, **kw)
        self.clients.append(c)
        return c

    def execute(self, session_id: str, code: str, **body: Any) -> dict[str, Any]:
        r = self.http.post(f"/v1/sessions/{session_id}/execute", json={"code": code, **body})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    @property
    def http(self) -> httpx.Client:
        if not self.clients:
            self.client()
        return self.clients[0]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_gateway(tmp: Path, **settings: Any) -> Gateway:
    """Start ``python -m gateway`` with GATEWAY_* settings; returns once /healthz answers."""
    port = free_port()
    token = settings.pop("token", secrets.token_urlsafe(24))
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(tmp),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_TOKEN": token,
        "GATEWAY_RUNTIME_DIR": tempfile.mkdtemp(prefix="egt-", dir="/tmp"),
        "GATEWAY_KERNEL_PYTHON": sys.executable,
        "GATEWAY_LOG_LEVEL": "INFO",
    }
    if os.environ.get("DOCKER_HOST"):
        env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    for key, value in settings.items():
        env[f"GATEWAY_{key.upper()}"] = str(value)
    log_path = tmp / f"gateway-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
    gw = Gateway(f"http://127.0.0.1:{port}", token, proc, env, log_path)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited early:\n{gw.log()}")
        try:
            return httpx.get(f"{gw.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 20)
    return gw


@pytest.fixture
def gateway_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    started: list[Gateway] = []

    def factory(**settings: Any) -> Gateway:
        gw = start_gateway(tmp_path_factory.mktemp("gw"), **settings)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.stop()
        shutil.rmtree(gw.env["GATEWAY_RUNTIME_DIR"], ignore_errors=True)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One local-launcher gateway shared by a test module."""
    gateway = start_gateway(tmp_path_factory.mktemp("gw"), interrupt_grace_s=1)
    yield gateway
    gateway.stop()
    shutil.rmtree(gateway.env["GATEWAY_RUNTIME_DIR"], ignore_errors=True)


@pytest.fixture
def sid(request: pytest.FixtureRequest) -> Iterator[str]:
    """A session id unique to the test; deleted from the module's gateway afterwards."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:40]
    session_id = f"t-{name}-{secrets.token_hex(3)}"
    yield session_id
    if "gw" in request.fixturenames:
        gateway: Gateway = request.getfixturevalue("gw")
        gateway.http.delete(f"/v1/sessions/{session_id}")
