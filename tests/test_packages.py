"""Packages end to end, both launchers: pip install (REST, %pip and !pip over REST and the
Jupyter channels) into a session's .packages from wheels these tests build themselves (no
index), imported in the next cell, kept across a kernel restart, invisible to other sessions;
failures that say why; the sandbox's network stays loopback only."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    DOCKER_IMAGE,
    Gateway,
    connect_kernel,
    containers_of,
    docker_instance_id,
    launcher_gateway,
    remove_runtime_dir,
    require_docker,
    start_gateway,
    wait_until,
)
from tests.wheels import build_index

LAUNCHERS = [pytest.param("local", id="local"),
             pytest.param("docker", id="docker", marks=pytest.mark.docker)]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("index")
    marker = root / "BUILT"  # an sdist build would create it
    root_dir = root / "wheels"
    return {"dir": root_dir, "marker": marker, "wheels": build_index(root_dir, marker)}


def package_settings(index: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"package_index_url": "", "package_find_links": f'["{index["dir"]}"]',
            "interrupt_grace_s": 1, **more}


@pytest.fixture(scope="module", params=LAUNCHERS)
def pgw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        index: dict[str, Any]) -> Iterator[Gateway]:
    """One gateway per launcher for the module, installing from the test index only."""
    docker = request.param == "docker"
    client = require_docker() if docker else None
    extra = {"instance_id": docker_instance_id("pkg"),
             "docker_image": DOCKER_IMAGE} if docker else {}
    with launcher_gateway(request.param, tmp_path_factory.mktemp("gw"), client,
                          **package_settings(index), **extra) as gateway:
        yield gateway


@pytest.fixture
def new_sid(pgw: Gateway) -> Iterator[Any]:
    made: list[str] = []

    def make(**limits: Any) -> str:
        sid = f"p-{secrets.token_hex(4)}"
        body: dict[str, Any] = {"session_id": sid}
        if limits:
            body["limits"] = limits
        assert pgw.http.post("/v1/sessions", json=body).status_code == 201
        made.append(sid)
        return sid

    yield make
    for sid in made:
        pgw.http.delete(f"/v1/sessions/{sid}")


def install(gw: Gateway, sid: str, *packages: str, timeout_s: float = 180) -> dict[str, Any]:
    """POST the job, then poll its status until it ends; returns the final status."""
    r = gw.http.post(f"/v1/sessions/{sid}/packages", json={"packages": list(packages)})
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["status"] in ("queued", "running")
    assert r.headers["Location"] == accepted["status_url"]
    return wait_job(gw, accepted["status_url"], timeout_s)


def wait_job(gw: Gateway, url: str, timeout_s: float = 180) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = gw.http.get(url).json()
        return job if job["status"] in ("succeeded", "failed") else None

    return wait_until(ended, timeout_s, 0.2)  # type: ignore[no-any-return]


def names(job_or_list: dict[str, Any], key: str) -> dict[str, str]:
    return {p["name"]: p["version"] for p in job_or_list[key]}


# ------------------------------------------------------------------ REST
def test_install_then_import_in_the_next_cell(pgw: Gateway, new_sid: Any) -> None:
    sid = new_sid()
    job = install(pgw, sid, "egw-app", "egw-tiny==1.0.0")
    assert job["status"] == "succeeded", job
    assert names(job, "installed") == {"egw-app": "0.3", "egw-base": "2.0",
                                       "egw-tiny": "1.0.0"}  # the dependency came too
    assert job["error"] is None and "Successfully installed" in job["log_tail"]
    assert "/tmp" not in job["log_tail"]  # no host path in what a user sees
    out = pgw.execute(sid, "import egw_app, egw_tiny\nprint(egw_app.ANSWER, egw_tiny.hello())")
    assert out["status"] == "ok" and out["stdout"] == "42 hi\n", out
    listed = pgw.http.get(f"/v1/sessions/{sid}/packages").json()
    assert names(listed, "packages") == {"egw-app": "0.3", "egw-base": "2.0", "egw-tiny": "1.0.0"}
    metrics = pgw.http.get("/metrics").text
    assert re.search(r'gateway_package_jobs_total\{status="succeeded"\} [1-9]', metrics)
    assert re.search(r"gateway_package_download_bytes_total [1-9]", metrics) or \
        re.search(r"gateway_package_cache_hits_total [1-9]", metrics)


def test_a_native_extension_imports_from_the_workspace(pgw: Gateway, new_sid: Any,
                                                       index: dict[str, Any]) -> None:
    if "egw-native" not in index["wheels"]:
        pytest.fail("no extension module to build the native test wheel from (markupsafe)")
    sid = new_sid()
    assert install(pgw, sid, "egw-native")["status"] == "succeeded"
    out = pgw.execute(sid, "import egw_native\nprint(egw_native._speedups.__file__)")
    assert out["status"] == "ok", out
    assert "/.packages/egw_native/_speedups" in out["stdout"] and out["stdout"].strip().endswith(
        ".so")


def test_packages_survive_a_kernel_restart_and_stay_in_their_session(
        pgw: Gateway, new_sid: Any) -> None:
    sid, other = new_sid(), new_sid()
    assert install(pgw, sid, "egw-tiny")["status"] == "succeeded"
    before = pgw.execute(sid, "import egw_tiny; egw_tiny.hello()")
    assert pgw.http.post(f"/v1/sessions/{sid}/restart").status_code == 200
    after = pgw.execute(sid, "import egw_tiny; egw_tiny.__version__")
    assert after["status"] == "ok" and after["generation"] > before["generation"], after
    assert after["outputs"][0]["data"]["text/plain"] == "'1.0.0'"
    elsewhere = pgw.execute(other, "import egw_tiny")
    assert elsewhere["status"] == "error"
    assert elsewhere["error"]["ename"] == "ModuleNotFoundError"
    assert pgw.http.get(f"/v1/sessions/{other}/packages").json() == {"packages": []}


def test_an_sdist_only_package_fails_clearly_and_nothing_is_built(
        pgw: Gateway, new_sid: Any, index: dict[str, Any]) -> None:
    sid = new_sid()
    job = install(pgw, sid, "egw-sdistonly")
    assert job["status"] == "failed"
    assert "only a source distribution" in job["error"], job
    assert not index["marker"].exists()  # its setup.py never ran
    missing = install(pgw, sid, "egw-no-such-thing")
    assert missing["status"] == "failed" and "no such package" in missing["error"]
    conflict = install(pgw, sid, "egw-app", "egw-base<2")  # egw-app needs egw-base>=2
    assert conflict["status"] == "failed" and "conflict" in conflict["error"], conflict
    version = install(pgw, sid, "egw-tiny==9.9")
    assert "no version matches" in version["error"] and "1.0.0" in version["error"], version
    assert pgw.execute(sid, "1 + 1")["status"] == "ok"  # the session is still usable


def test_more_than_the_quota_fails_and_leaves_the_workspace_intact(
        pgw: Gateway, new_sid: Any) -> None:
    sid = new_sid(disk_mb=32)
    assert pgw.http.put(f"/v1/sessions/{sid}/files/keep.txt", content=b"mine").status_code == 201
    assert install(pgw, sid, "egw-tiny")["status"] == "succeeded"
    job = install(pgw, sid, "egw-big")  # 96 MiB unpacked
    assert job["status"] == "failed" and "over quota" in job["error"], job
    assert pgw.http.get(f"/v1/sessions/{sid}/files/keep.txt").content == b"mine"
    out = pgw.execute(sid, "import os, egw_tiny\nprint(sorted(os.listdir('.packages')))")
    assert out["status"] == "ok", out
    assert "egw_big" not in out["stdout"] and ".tmp" not in out["stdout"]


def test_two_sessions_install_at_once(pgw: Gateway, new_sid: Any) -> None:
    a, b = new_sid(), new_sid()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = list(pool.map(lambda s: install(pgw, s[0], s[1]),
                             [(a, "egw-app"), (b, "egw-tiny")]))
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], jobs
    assert pgw.execute(a, "import egw_app")["status"] == "ok"
    assert pgw.execute(b, "import egw_tiny")["status"] == "ok"
    assert pgw.execute(b, "import egw_app")["status"] == "error"


def test_the_network_stays_loopback_only_during_and_after_an_install(
        pgw: Gateway, new_sid: Any) -> None:
    sid = new_sid()
    r = pgw.http.post(f"/v1/sessions/{sid}/packages", json={"packages": ["egw-app"]})
    assert r.status_code == 202
    # the kernel watches its interfaces until the package appears in its workspace
    out = pgw.execute(sid, (
        "import os, socket, time\nseen = set()\ndeadline = time.monotonic() + 120\n"
        "while not os.path.isdir('.packages/egw_app') and time.monotonic() < deadline:\n"
        "    seen.update(n for _, n in socket.if_nameindex()); time.sleep(0.01)\n"
        "time.sleep(0.5); seen.update(n for _, n in socket.if_nameindex())\n"
        "print(sorted(seen), os.path.isdir('.packages/egw_app'))"), timeout_s=150)
    assert out["stdout"] == "['lo'] True\n", out
    assert wait_job(pgw, r.json()["status_url"])["status"] == "succeeded"


def test_job_events_reach_the_session_websocket(pgw: Gateway, new_sid: Any) -> None:
    import asyncio

    from tornado.websocket import websocket_connect

    from tests.conftest import ws_url

    sid = new_sid()

    async def watch() -> list[dict[str, Any]]:
        import json

        conn = await websocket_connect(ws_url(pgw, sid))
        events: list[dict[str, Any]] = []
        try:
            await asyncio.to_thread(pgw.http.post, f"/v1/sessions/{sid}/packages",
                                    json={"packages": ["egw-tiny"]})
            while not events or events[-1]["type"] != "package_done":
                frame = await asyncio.wait_for(conn.read_message(), 120)
                assert frame is not None
                event = json.loads(frame)
                if event["type"].startswith("package_"):
                    events.append(event)
        finally:
            conn.close()
        return events

    events = asyncio.run(watch())
    assert events[-1]["status"] == "succeeded" and events[-1]["error"] is None
    assert any(e["type"] == "package_progress" and "Successfully installed" in e["line"]
               for e in events)
    assert len({e["job_id"] for e in events}) == 1


# ------------------------------------------------------------------ in a cell
def test_pip_magic_and_shell_pip_in_a_rest_cell(pgw: Gateway, new_sid: Any) -> None:
    sid = new_sid()
    out = pgw.execute(sid, "%pip install egw-tiny\nimport egw_tiny\nprint(egw_tiny.hello())",
                      timeout_s=150)
    assert out["status"] == "ok", out
    assert "Successfully installed egw-tiny-1.0.0" in out["stdout"]
    assert out["stdout"].endswith("hi\n")
    assert out["files_changed"] == []  # installed packages are not the cell's files
    out = pgw.execute(sid, "!pip install -q egw-app\nimport egw_app\nprint(egw_app.ANSWER)\n"
                           "!pip list", timeout_s=150)
    assert out["status"] == "ok", out
    assert "42\n" in out["stdout"] and re.search(r"egw-app\s+0\.3", out["stdout"])
    out = pgw.execute(sid, "!pip uninstall -y egw-tiny\n!pip list\n!pip download egw-base\n"
                           "%pip install egw-sdistonly")
    assert "Successfully uninstalled egw-tiny-1.0.0" in out["stdout"], out
    assert "egw-tiny" not in out["stdout"].split("Package")[1]  # pip list after it
    assert "pip download: in this sandbox pip can only `install`" in out["stderr"]
    assert "only a source distribution" in out["stderr"]
    assert pgw.execute(sid, "%pip install --index-url=http://x egw-tiny")["stderr"].count(
        "pip options are not accepted") == 1
    assert "egw-tiny" not in str(pgw.http.get(f"/v1/sessions/{sid}/packages").json())


async def test_pip_magic_over_the_jupyter_channels(pgw: Gateway, new_sid: Any) -> None:
    sid = new_sid()
    kernel_id = pgw.http.get(f"/v1/sessions/{sid}").json()["kernel_id"]
    sock = await connect_kernel(pgw.url, kernel_id, pgw.token)
    try:
        reply, iopub = await sock.execute("name = 'egw-base'\n!pip install {name}\n"
                                          "import egw_base\n"
                                          "print('value', egw_base.VALUE)", timeout_s=150)
        text = "".join(m["content"].get("text", "") for m in iopub
                       if m["header"]["msg_type"] == "stream")
        assert reply["content"]["status"] == "ok", reply["content"]
        assert "Successfully installed egw-base-2.0" in text and "value 42" in text
        # the package request never reached the client as an input_request
        assert not [m for ch, m in sock.received if ch == "stdin"]
    finally:
        sock.close()


async def test_pip_magic_over_the_v1_websocket(pgw: Gateway, new_sid: Any, connect: Any
                                               ) -> None:
    sid = new_sid()
    watcher = await connect(pgw, sid)
    await watcher.execute("c1", "%pip install egw-tiny\nimport egw_tiny\nprint(egw_tiny.hello())")
    result = (await watcher.result("c1", 150))["result"]
    assert result["status"] == "ok", result
    streamed = watcher.stream_text("c1")
    assert "Successfully installed egw-tiny-1.0.0" in streamed and streamed.endswith("hi\n")
    assert not [e for e in watcher.events if e["type"] == "input_request"]
    done = [e for e in watcher.events if e["type"] == "package_done"]
    assert [e["status"] for e in done] == ["succeeded"]


# ------------------------------------------------------------------ durability
@pytest.mark.docker
@pytest.mark.slow
def test_packages_survive_a_gateway_restart_with_redis_and_docker(
        tmp_path: Path, redis_url: str, index: dict[str, Any]) -> None:
    client = require_docker()
    instance = docker_instance_id("pkgkeep")
    runtime = f"/tmp/egk-{secrets.token_hex(3)}"
    settings = package_settings(index, launcher="docker", registry_url=redis_url,
                                instance_id=instance, redis_key_prefix=f"{instance}:",
                                runtime_dir=runtime, token=secrets.token_urlsafe(24),
                                pool_size=0, docker_image=DOCKER_IMAGE)
    first = start_gateway(tmp_path, **dict(settings))
    try:
        assert first.http.post("/v1/sessions", json={"session_id": "keep"}).status_code == 201
        assert install(first, "keep", "egw-tiny")["status"] == "succeeded"
        first.stop()
        second = start_gateway(tmp_path, **dict(settings))
        try:
            after = second.execute("keep", "import egw_tiny; egw_tiny.hello()")
            assert after["status"] == "ok", after
            assert second.http.post("/v1/sessions/keep/restart").status_code == 200
            again = second.execute("keep", "import egw_tiny; egw_tiny.hello()")
            assert again["outputs"][0]["data"]["text/plain"] == "'hi'", again
            assert second.http.delete("/v1/sessions/keep").status_code == 204
        finally:
            second.stop()
    finally:
        first.stop()
        for c in containers_of(client, instance):
            with contextlib.suppress(Exception):  # (removed meanwhile)
                c.remove(force=True)
        remove_runtime_dir(first)


@pytest.mark.slow
def test_a_real_package_from_the_configured_index(gateway_factory: Any) -> None:
    """The host's pip configuration (PyPI by default): must work where the suite runs."""
    gw = gateway_factory(pool_size=0)
    sid = f"pypi-{secrets.token_hex(3)}"
    started = time.monotonic()
    job = install(gw, sid, "tabulate==0.9.0", timeout_s=300) if gw.http.post(
        "/v1/sessions", json={"session_id": sid}).status_code == 201 else {}
    assert job.get("status") == "succeeded", (job, time.monotonic() - started)
    out = gw.execute(sid, "import tabulate; tabulate.__version__")
    assert out["outputs"][0]["data"]["text/plain"] == "'0.9.0'", out
