"""HTTP hardening: oversized bodies answered so real clients read the answer; connection floods
cannot take the gateway down (file descriptors, header timeouts, log volume)."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import httpx
import psutil
import pytest
import requests

from gateway.app import FD_PER_SESSION, FD_RESERVE, connection_limit
from gateway.settings import Settings
from tests.conftest import ROOT, wait_until

LIMIT = 2_000_000  # max_request_bytes of the gateways below (the default)


def test_oversized_body_gets_a_readable_413_with_requests_and_urllib(gateway_factory: Any
                                                                     ) -> None:
    gw = gateway_factory(max_request_bytes=LIMIT)
    url = f"{gw.url}/v1/sessions/big/execute"
    headers = {"Authorization": f"Bearer {gw.token}", "Content-Type": "application/json"}
    body = json.dumps({"code": "#" * (3 * LIMIT)}).encode()  # over the limit, under the bound
    with requests.Session() as http:
        for _ in range(3):  # the connection stays usable after each 413
            r = http.post(url, data=body, headers=headers, timeout=30)
            assert r.status_code == 413, r.text
            assert r.json()["error"]["code"] == "payload_too_large"
        assert http.get(f"{gw.url}/v1/sessions", headers=headers, timeout=30).status_code == 200
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("expected 413")
    except urllib.error.HTTPError as exc:
        assert exc.code == 413
        assert json.loads(exc.read())["error"]["code"] == "payload_too_large"
    # no body at all on an endpoint that ignores it: still refused, still readable
    r = requests.post(f"{gw.url}/v1/sessions/big/interrupt", data=body, headers=headers,
                      timeout=30)
    assert r.status_code == 413, r.text


NOFILE = 256  # the gateway's RLIMIT_NOFILE (soft and hard) in the flood test
# run the gateway with a small fd limit it cannot raise: python -c <this> python -m gateway
LOW_FD_LIMIT = [sys.executable, "-c", "import os, resource, sys; "
                f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE})); "
                "os.execv(sys.argv[1], sys.argv[1:])"]


class Flood:
    """Idle connections that never send a byte, kept at ``count`` open from a thread."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        held: list[socket.socket] = []
        try:
            while not self._stop.is_set():
                alive = []
                for s in held:  # drop what the server closed
                    try:
                        if s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                            s.close()
                            continue
                    except BlockingIOError:
                        pass
                    except OSError:
                        s.close()
                        continue
                    alive.append(s)
                held = alive
                while len(held) < self.count and not self._stop.is_set():
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", self.port))
                    held.append(s)
                    self.opened += 1
                self._stop.wait(0.2)
        finally:
            for s in held:
                s.close()


def test_idle_connection_flood_cannot_starve_authenticated_calls(gateway_factory: Any) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * NOFILE:  # this process holds the flood's sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * NOFILE), hard))
    gw = gateway_factory(prefix=LOW_FD_LIMIT, max_sessions=2, pool_size=0, header_timeout_s=2)
    port = int(gw.url.rsplit(":", 1)[1])
    proc = psutil.Process(gw.proc.pid)
    assert proc.rlimit(psutil.RLIMIT_NOFILE) == (NOFILE, NOFILE)
    gw.execute("before", "x = 1")
    with Flood(port, 3 * NOFILE) as flood:
        wait_until(lambda: flood.opened >= 3 * NOFILE, 30)
        for i in range(5):  # answered while the flood goes on, a kernel started among them
            with httpx.Client(base_url=gw.url, timeout=10,
                              headers={"Authorization": f"Bearer {gw.token}"}) as http:
                assert http.get("/v1/sessions").status_code == 200
                r = http.post("/v1/sessions/during/execute", json={"code": f"y = {i}"})
                assert r.status_code == 200 and r.json()["status"] == "ok", r.text
        cpu = proc.cpu_times()
        time.sleep(2)  # the flood sits idle: the gateway must too (no accept loop spinning)
        after = proc.cpu_times()
        assert (after.user + after.system) - (cpu.user + cpu.system) < 1.0
        assert len(proc.net_connections("tcp")) < NOFILE
    assert gw.execute("before", "x")["outputs"][0]["data"]["text/plain"] == "1"
    log = gw.log()
    assert len(log) < 50_000 and "Traceback" not in log, log[-3000:]


def test_header_timeout_is_short_and_keep_alive_separate(gateway_factory: Any) -> None:
    gw = gateway_factory(header_timeout_s=1, keepalive_timeout_s=30)
    port = int(gw.url.rsplit(":", 1)[1])
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as silent, \
         socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        started = time.monotonic()
        client.sendall(request)
        assert client.recv(65536).startswith(b"HTTP/1.1 200")
        assert silent.recv(1) == b""  # closed: it sent no request within header_timeout_s
        assert 0.5 < time.monotonic() - started < 5
        time.sleep(1.5)  # idle between requests past header_timeout_s: kept alive
        client.sendall(request)
        assert client.recv(65536).startswith(b"HTTP/1.1 200")


def test_fd_limit_too_low_for_the_sessions_refuses_to_start(tmp_path: Any) -> None:
    done = subprocess.run([*LOW_FD_LIMIT, sys.executable, "-m", "gateway"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path,
                          env={"PATH": os.environ.get("PATH", os.defpath),
                               "PYTHONPATH": str(ROOT), "GATEWAY_MAX_SESSIONS": "64"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "ulimit -n" in done.stderr, done.stderr


def test_connection_limit_leaves_room_for_every_session() -> None:
    settings = Settings(max_sessions=10, pool_size=2, max_connections=100_000)
    assert connection_limit(settings, 10_000) == 10_000 - FD_RESERVE - 12 * FD_PER_SESSION
    assert connection_limit(Settings(max_connections=50), 65536) == 50
    with pytest.raises(ValueError, match="ulimit -n"):
        connection_limit(settings, 256)
