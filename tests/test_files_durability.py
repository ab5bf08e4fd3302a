"""A session's workspace outlives its kernels and gateway processes, ends with the session,
and moves between replicas (a large file streamed through the forwarding replica)."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Gateway, docker_instance_id, wait_until
from tests.test_files import MiB, files_url, rss_during, value, workspace_of


def has_file(gw: Gateway, sid: str, name: str, content: bytes) -> bool:
    r = gw.http.get(files_url(sid, name))
    seen = value(gw, sid, f"import os\nout = open({name!r}).read() if os.path.exists({name!r}) "
                          "else None")
    return r.status_code == 200 and r.content == content and seen == content.decode()


def workspaces(gw: Gateway) -> list[Path]:
    work = Path(gw.env["GATEWAY_RUNTIME_DIR"]) / "work"
    return sorted(p for p in work.glob("*/ws-*") if not p.name.endswith(".img"))


# ---------------------------------------------------------------------- kernel replacements
def test_workspace_survives_restart_timeout_restart_and_kernel_death(gw: Gateway, sid: str
                                                                     ) -> None:
    assert gw.http.put(files_url(sid, "keep.txt"), content=b"kept").status_code == 201
    value(gw, sid, "open('own.txt', 'w').write('own')\nout = 1")
    home = workspace_of(gw, sid)
    assert gw.http.post(f"/v1/sessions/{sid}/restart").status_code == 200
    assert has_file(gw, sid, "keep.txt", b"kept") and has_file(gw, sid, "own.txt", b"own")
    # a cell that ignores the interrupt: the timeout ladder replaces the kernel
    r = gw.execute(sid, "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                        "while True: time.sleep(0.01)", timeout_s=1)
    assert r["status"] == "timeout" and r["state_preserved"] is False
    assert has_file(gw, sid, "keep.txt", b"kept")
    r = gw.execute(sid, "import os; os._exit(1)")
    assert r["status"] == "dead"
    assert has_file(gw, sid, "keep.txt", b"kept") and has_file(gw, sid, "own.txt", b"own")
    assert workspace_of(gw, sid) == home
    generation = gw.http.get(f"/v1/sessions/{sid}").json()["generation"]
    assert generation >= 4


@pytest.mark.docker
def test_workspace_survives_an_oom_kill_and_a_replaced_container(
        gateway_factory: Any, docker_client: Any) -> None:
    gw = gateway_factory(launcher="docker", instance_id=docker_instance_id(), pool_size=1)
    assert gw.http.put(files_url("s", "keep.txt"), content=b"kept").status_code == 201
    r = gw.execute("s", "x = bytearray(2 * 2**30)")  # past the 512 MB limit: OOM-killed
    assert r["status"] == "memory_exceeded" and r["state_preserved"] is False
    assert has_file(gw, "s", "keep.txt", b"kept")
    container = value(gw, "s", "import socket\nout = socket.gethostname()")
    docker_client.containers.get(container).kill()  # replaced behind the gateway's back
    wait_until(lambda: gw.http.get("/v1/sessions/s").json()["state"] == "dead", 15)
    assert has_file(gw, "s", "keep.txt", b"kept")
    assert value(gw, "s", "import socket\nout = socket.gethostname()") != container


# ---------------------------------------------------------------------- ends
def test_workspace_is_removed_on_delete_and_pooled_kernels_leave_none_behind(
        gateway_factory: Any) -> None:
    gw = gateway_factory(pool_size=1)
    assert gw.http.put(files_url("s", "f"), content=b"x").status_code == 201
    home = workspace_of(gw, "s")
    for _ in range(3):  # each restart takes a pooled kernel, which is moved into the workspace
        assert gw.http.post("/v1/sessions/s/restart").status_code == 200
        assert workspace_of(gw, "s") == home
    wait_until(lambda: len(workspaces(gw)) == 2)  # the session's and one pooled kernel's
    image = home.with_name(home.name + ".img")
    assert gw.http.delete("/v1/sessions/s").status_code == 204
    assert not home.exists() and not image.exists()
    assert str(home) not in Path("/proc/self/mounts").read_text()
    assert gw.http.get(files_url("s", "f")).status_code == 404


def test_workspace_is_removed_when_the_session_is_reaped(gateway_factory: Any) -> None:
    gw = gateway_factory(pool_size=0, idle_timeout_s=1, reap_interval_s=0.3)
    assert gw.http.put(files_url("s", "f"), content=b"x").status_code == 201
    home = workspace_of(gw, "s")
    wait_until(lambda: gw.http.get("/v1/sessions/s").status_code == 404, 15)
    wait_until(lambda: not home.exists(), 5)
    assert workspaces(gw) == []


def test_a_stopped_gateway_without_a_shared_registry_removes_its_workspaces(
        gateway_factory: Any) -> None:
    gw = gateway_factory(pool_size=1)
    gw.http.put(files_url("s", "f"), content=b"x")
    wait_until(lambda: len(workspaces(gw)) == 2)
    assert gw.stop() == 0
    assert workspaces(gw) == []
    assert gw.env["GATEWAY_RUNTIME_DIR"] not in Path("/proc/self/mounts").read_text()


# ---------------------------------------------------------------------- gateway processes
@pytest.mark.docker
def test_workspace_survives_a_gateway_restart_with_redis_and_docker(
        gateway_factory: Any, docker_client: Any, redis_url: str) -> None:
    settings = {"launcher": "docker", "instance_id": docker_instance_id(), "pool_size": 0,
                "registry_url": redis_url, "redis_key_prefix": f"ws-{secrets.token_hex(3)}:",
                "runtime_dir": f"/tmp/egd-{secrets.token_hex(3)}"}
    gw = gateway_factory(**settings)
    assert gw.http.put(files_url("s", "keep.txt"), content=b"kept").status_code == 201
    gw.execute("s", "x = 42")
    assert gw.stop() == 0  # the container and the workspace stay for the next process
    again = gateway_factory(**settings, token=gw.token)
    assert has_file(again, "s", "keep.txt", b"kept")
    assert again.execute("s", "x")["outputs"][0]["data"]["text/plain"] == "42"
    again.stop(signal.SIGKILL)  # a crash: the next process finds it all the same
    third = gateway_factory(**settings, token=gw.token)
    assert has_file(third, "s", "keep.txt", b"kept")
    assert third.http.delete("/v1/sessions/s").status_code == 204
    assert workspaces(third) == []


def test_a_large_file_is_streamed_through_the_forwarding_replica(
        gateway_factory: Any, redis_url: str) -> None:
    """B forwards to A, which serves the session: 50 MB up and down through B, byte for byte,
    without B's memory growing with the file; then A crashes and B takes the session over,
    workspace included (same host)."""
    token, prefix = secrets.token_urlsafe(24), f"wsr-{secrets.token_hex(3)}:"
    lease = {"lease_ttl_s": 2.0, "lease_renew_s": 0.5, "pool_size": 0,
             "registry_url": redis_url, "redis_key_prefix": prefix, "token": token}
    a = gateway_factory(instance_id="wsr-a", **lease)
    b = gateway_factory(instance_id="wsr-b", **lease)
    a.execute("s", "1")  # served by A
    payload = os.urandom(50 * MiB)

    def upload() -> int:
        def chunks() -> Any:
            for i in range(0, len(payload), 1 << 16):
                yield payload[i:i + (1 << 16)]
        return b.http.put(files_url("s", "big.bin"), content=chunks()).status_code

    status, growth = rss_during(b, upload)
    assert status == 201 and growth < 20 * MiB, growth
    assert value(a, "s", "import hashlib\nout = hashlib.sha256(open('big.bin', 'rb').read())"
                         ".hexdigest()") == hashlib.sha256(payload).hexdigest()

    def download() -> str:
        h = hashlib.sha256()
        with b.http.stream("GET", files_url("s", "big.bin")) as r:
            assert r.status_code == 200 and r.headers["content-length"] == str(len(payload))
            for chunk in r.iter_bytes(1 << 16):
                h.update(chunk)
                time.sleep(0.0005)
        return h.hexdigest()

    digest, growth = rss_during(b, download)
    assert digest == hashlib.sha256(payload).hexdigest()
    assert growth < 20 * MiB, growth
    listing = b.http.get(files_url("s")).json()["files"]
    assert [(f["path"], f["size"]) for f in listing] == [("big.bin", len(payload))]
    r = b.http.post(files_url("s"), files=[("file", ("m.txt", b"multi", "text/plain"))],
                    data={"path": "in"})
    assert r.status_code == 201 and r.json()["files"][0]["path"] == "in/m.txt"
    assert b.http.get(files_url("s", "missing")).json()["error"]["code"] == "file_not_found"
    assert b.http.delete(files_url("s", "big.bin")).status_code == 204
    a.stop(signal.SIGKILL)
    assert b.http.get(files_url("s", "in/m.txt"), timeout=60).content == b"multi"
    assert "taken over" in b.log()
    assert b.http.delete("/v1/sessions/s").status_code == 204


def test_rss_sampler_sees_growth() -> None:
    """The RSS bound above is measured, not vacuous: the sampler sees a 30 MB allocation."""
    class Fake:
        class proc:
            pid = os.getpid()

    def grow() -> int:
        blob = bytearray(os.urandom(30 * MiB))
        time.sleep(0.05)
        return len(blob)

    _, growth = rss_during(Fake, grow)  # type: ignore[arg-type]
    assert growth > 20 * MiB
    assert psutil.Process().memory_info().rss > 0
    assert threading.active_count() >= 1
