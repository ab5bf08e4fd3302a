"""A kernel that forges messages or sabotages its sockets never stalls, bloats or stops the
gateway (issue: hardening). The kernel has its own session key, so it can sign anything."""

from __future__ import annotations

import concurrent.futures
import contextlib
import grp
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import Connect, Gateway, containers_of, docker_instance_id

FORGE = """
import json as _json
k = get_ipython().kernel
_pack = k.session.pack
def forge(msg_type, content, metadata=None, n=1):
    # \\u escapes let lone surrogates through, as a hostile kernel's own packer would
    k.session.pack = lambda o: _json.dumps(o, default=str).encode()
    try:
        parent = k.get_parent()
        for _ in range(n):
            k.session.send(k.iopub_socket, msg_type, content, parent=parent,
                           metadata=metadata or {})
    finally:
        k.session.pack = _pack
"""


def deep(levels: int) -> str:
    """Code that makes ``d``, a dict nested ``levels`` deep."""
    return (f"d = {{}}\ncur = d\nfor _ in range({levels}):\n"
            "    cur['a'] = {}\n    cur = cur['a']\n")


def _gateway_lines(gw: Gateway) -> list[str]:
    """The gateway's own log lines, without the access log."""
    return [line for line in gw.log().splitlines() if "tornado.access" not in line]


def metric(gw: Gateway, name: str) -> float:
    text = gw.http.get("/metrics").text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_deeply_nested_metadata_is_dropped_at_the_door_without_stalling_anyone(
        gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory()
    gw.execute("evil", FORGE + deep(900))
    log_before = len(_gateway_lines(gw))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        flood = pool.submit(gw.client().post, "/v1/sessions/evil/execute", json={
            "code": "forge('display_data', {'data': {'text/plain': 'x'}, 'metadata': d}, d, "
                    "n=200)\n'done'"})
        slowest = 0.0
        while not flood.done():  # other tenants keep being served meanwhile
            started = time.monotonic()
            assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
        r = flood.result()
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok" and r.json()["outputs"][-1]["data"]["text/plain"] == "'done'"
    assert slowest < 1.0
    assert metric(gw, 'gateway_kernel_messages_rejected_total{reason="too_deep"}') == 200
    # one line per kernel per minute (the access log of our own polling aside)
    assert len(_gateway_lines(gw)) - log_before < 20


def test_output_metadata_and_empty_outputs_count_against_the_output_cap(
        gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(max_output_bytes=1_000_000, max_outputs_per_cell=1000)
    gw.execute("big", FORGE)
    r = gw.http.post("/v1/sessions/big/execute", json={
        "code": "forge('display_data', {'data': {'text/plain': 'x'}, "
                "'metadata': {'m': 'y' * 10_000_000}}, n=10)"})
    assert r.status_code == 200
    assert len(r.content) < 1_200_000  # was 100 MB: metadata did not count
    assert r.json()["truncated"] is True
    gateway = psutil.Process(gw.proc.pid)
    rss_before = gateway.memory_info().rss
    r = gw.http.post("/v1/sessions/big/execute", json={
        "code": "forge('display_data', {'data': {}, 'metadata': {}}, n=100_000)"})
    assert r.status_code == 200
    result = r.json()
    assert len(result["outputs"]) <= 1000 and result["truncated"] is True
    assert gateway.memory_info().rss - rss_before < 40 * 1024 * 1024


async def test_lone_surrogates_and_nesting_in_output_never_cost_the_result(
        gateway_factory: Any, connect: Connect) -> None:
    gw: Gateway = gateway_factory()
    gw.execute("odd", FORGE)
    watcher = await connect(gw, "odd")
    code = ("forge('display_data', {'data': {'text/plain': 'ok', "
            "'application/json': {'a': ['\\ud800', {'\\udfff': 1}]}}, "
            "'metadata': {'m': ['\\ud800']}}, {'m': {'\\ud800': '\\udc00'}})\n"
            + deep(60) + "forge('display_data', {'data': {'application/json': d}})")
    await watcher.execute("c1", code)
    result = (await watcher.result("c1"))["result"]
    assert result["status"] == "ok", result
    assert result["outputs"][0]["data"]["application/json"]["a"][0] == "\ufffd"
    r = gw.http.post("/v1/sessions/odd/execute", json={"code": code})
    assert r.status_code == 200 and r.json()["status"] == "ok"


# ------------------------------------------------------------------ Docker + Redis restarts
@pytest.mark.docker
@pytest.mark.slow
def test_a_kernel_that_sabotages_its_socket_cannot_stop_the_next_gateway_start(
        gateway_factory: Any, redis_url: str, docker_client: Any) -> None:
    """chmod 0 on its own socket (it owns the file) is fatal to a non-root gateway's connect;
    re-adopting that one session fails, the gateway starts and the other sessions carry on."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.fail("this test starts the gateway as another user: it needs root and setpriv")
    docker_gid = grp.getgrnam("docker").gr_gid
    uid = gid = 4243
    runtime = tempfile.mkdtemp(prefix="egh-", dir="/tmp")
    os.chown(runtime, uid, gid)
    prefix = [setpriv, f"--reuid={uid}", f"--regid={gid}", f"--groups={docker_gid}",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]
    instance = docker_instance_id("sabotage")
    token = secrets.token_urlsafe(24)

    def start() -> Gateway:
        return gateway_factory(launcher="docker", registry_url=redis_url, instance_id=instance,
                               redis_key_prefix=f"{instance}:", runtime_dir=runtime,
                               token=token, pool_size=0, prefix=prefix)

    try:
        first = start()
        first.execute("good", "x = 'kept'")
        first.execute("evil", "import os\nfor n in os.listdir('/kernel'):\n"
                              "    os.chmod('/kernel/' + n, 0)")
        first.stop(signal.SIGKILL)
        second = start()  # used to exit with "cannot serve: [Errno 13] Permission denied"
        assert second.execute("good", "x")["outputs"][0]["data"]["text/plain"] == "'kept'"
        assert second.http.get("/v1/sessions/evil").json()["state"] == "dead"
        fresh = second.execute("evil", "1 + 1")
        assert fresh["status"] == "ok" and fresh["state_preserved"] is False
    finally:
        subprocess.run(f"docker rm -f $(docker ps -aq --filter label=exec-gateway.gateway="
                       f"{instance})", shell=True, capture_output=True)
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.mark.docker
@pytest.mark.slow
def test_unresponsive_kernels_do_not_keep_a_restarted_gateway_deaf(
        gateway_factory: Any, redis_url: str, docker_client: Any) -> None:
    instance = docker_instance_id("frozen")
    runtime = tempfile.mkdtemp(prefix="egf-", dir="/tmp")
    token = secrets.token_urlsafe(24)

    def start() -> Gateway:
        return gateway_factory(launcher="docker", registry_url=redis_url, instance_id=instance,
                               redis_key_prefix=f"{instance}:", runtime_dir=runtime,
                               token=token, pool_size=0, reconnect_timeout_s=3)

    frozen: list[psutil.Process] = []
    try:
        first = start()
        first.execute("alive", "x = 'kept'")
        for i in range(3):
            first.execute(f"frozen{i}", "1")
        for container in containers_of(docker_client, instance):
            if container.status == "running" \
                    and container.labels.get("exec-gateway.session_id", "").startswith("frozen"):
                init = psutil.Process(container.attrs["State"]["Pid"])
                for kernel in init.children(recursive=True):  # running, but never answering
                    kernel.send_signal(signal.SIGSTOP)
                    frozen.append(kernel)
        assert len(frozen) >= 3
        first.stop(signal.SIGKILL)
        started = time.monotonic()
        second = start()  # sequential re-adoption took 3 x 30 s here
        assert time.monotonic() - started < 15
        assert second.execute("alive", "x")["outputs"][0]["data"]["text/plain"] == "'kept'"
        for i in range(3):
            assert second.http.get(f"/v1/sessions/frozen{i}").json()["state"] == "dead"
    finally:
        for kernel in frozen:
            with contextlib.suppress(psutil.Error):
                kernel.send_signal(signal.SIGCONT)
        subprocess.run(f"docker rm -f $(docker ps -aq --filter label=exec-gateway.gateway="
                       f"{instance})", shell=True, capture_output=True)
        shutil.rmtree(runtime, ignore_errors=True)


def test_docker_kernel_with_the_gateways_own_uid_is_refused(tmp_path: Any) -> None:
    """A non-root gateway whose uid is the kernel's would own the kernel's socket directory."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.fail("this test starts the gateway as another user: it needs root and setpriv")
    env = {"PATH": os.environ["PATH"], "GATEWAY_LAUNCHER": "docker", "HOME": str(tmp_path),
           "GATEWAY_DOCKER_KERNEL_UID": "4244", "GATEWAY_PORT": "0",
           "GATEWAY_TOKEN": secrets.token_urlsafe(24)}
    proc = subprocess.run([setpriv, "--reuid=4244", "--regid=4244", "--clear-groups",
                           "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
                           "--", sys.executable, "-m", "gateway"], env=env, cwd=os.getcwd(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "docker_kernel_uid=4244 is the gateway's own uid" in proc.stderr
    assert "Traceback" not in proc.stderr
