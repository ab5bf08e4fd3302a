"""Hibernation end to end: a session's kernel and sandbox stopped, its variables and files
in the snapshot store, and the session back on its next call of any kind — on both
launchers, through a gateway restart (Redis) and on another replica (S3)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.conftest import (
    DOCKER_IMAGE,
    Gateway,
    S3Server,
    containers_of,
    docker_instance_id,
    wait_until,
)
from tests.wheels import build_index

SETUP = """
import numpy as np
n, s, items, table = 42, "text", [1, [2, 3]], {"a": 1, "b": [True, None]}
arr = np.arange(6).reshape(2, 3)
class Point:
    def __init__(self, x): self.x = x
    def norm(self): return abs(self.x)
p = Point(-5)
def twice(v): return 2 * v
square = lambda v: v * v
gen = (i for i in range(3))
fh = open("notes.txt", "w"); fh.write("hi"); fh.flush()
"""
CHECK = ("print(n, s, items, table, arr.sum(), p.norm(), twice(4), square(3), "
         "open('notes.txt').read())")
CHECKED = "42 text [1, [2, 3]] {'a': 1, 'b': [True, None]} 15 5 8 9 hi\n"


@pytest.fixture(params=[pytest.param("local", id="local"),
                        pytest.param("docker", id="docker", marks=pytest.mark.docker)])
def start(request: pytest.FixtureRequest, gateway_factory: Any, tmp_path: Path) -> Any:
    """``start(**settings)``: a gateway of the parametrised launcher with a file snapshot
    store at ``tmp_path/store`` (unless settings name another)."""
    extra: dict[str, Any] = {"pool_size": 1, "snapshot_url": (tmp_path / "store").as_uri()}
    if request.param == "docker":
        client = request.getfixturevalue("docker_client")
        client.images.get(DOCKER_IMAGE)
        extra.update(launcher="docker", docker_image=DOCKER_IMAGE)

    def factory(**settings: Any) -> Gateway:
        if request.param == "docker":
            settings.setdefault("instance_id", docker_instance_id())
        return gateway_factory(**{**extra, **settings})

    factory.launcher = request.param  # type: ignore[attr-defined]
    return factory


def stored(root: Path) -> list[Path]:
    return sorted(root.glob("*/*/*.tar")) if root.is_dir() else []


def hibernate(gw: Gateway, sid: str, client: httpx.Client | None = None) -> dict[str, Any]:
    r = (client or gw.http).post(f"/v1/sessions/{sid}/hibernate")
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    assert body["state"] == "hibernated"
    return body


def test_on_demand_hibernation_keeps_values_and_files_and_the_next_call_restores_them(
        start: Any, tmp_path: Path) -> None:
    gw = start()
    assert gw.execute("s1", SETUP)["status"] == "ok"
    body = hibernate(gw, "s1")
    assert {"n", "s", "items", "table", "arr", "Point", "p", "twice", "square", "np"} <= set(
        body["variables"])
    skipped = {v["name"]: v["reason"] for v in body["skipped"]}
    assert set(skipped) == {"gen", "fh"} and "generator" in skipped["gen"]
    assert body["files"] == 1 and body["generation"] == 1
    # nothing runs for it now; it is listed, as a session and as a kernel
    info = gw.http.get("/v1/sessions/s1").json()
    assert info["state"] == "hibernated"
    assert [s["state"] for s in gw.http.get("/v1/sessions").json()["sessions"]] == ["hibernated"]
    kernels = gw.http.get("/api/kernels").json()
    assert [(k["id"], k["execution_state"]) for k in kernels] == [
        (info["kernel_id"], "hibernated")]
    assert gw.http.get(f"/api/kernels/{info['kernel_id']}").json()[
        "execution_state"] == "hibernated"
    assert len(stored(tmp_path / "store")) == 1
    first = gw.execute("s1", CHECK)
    assert first["status"] == "ok", first
    assert first["stdout"] == CHECKED
    assert 'gateway_restores_total{status="restored"} 1.0' in gw.http.get("/metrics").text
    assert first["generation"] == 2 and first["state_preserved"] is False
    restored = first["restored"]
    assert restored["status"] == "restored" and restored["files"] == 1
    assert restored["packages"] == 0
    assert set(restored["variables"]) == set(body["variables"])
    assert {v["name"] for v in restored["skipped"]} == {"gen", "fh"}
    second = gw.execute("s1", "n")
    assert second["restored"] is None and second["state_preserved"] is True
    assert gw.http.get("/v1/sessions/s1").json()["state"] == "idle"
    assert stored(tmp_path / "store") == []  # restored: the snapshot is gone


@pytest.mark.slow
def test_the_reaper_hibernates_idle_sessions_instead_of_deleting_them(start: Any) -> None:
    gw = start(reap_action="hibernate", idle_timeout_s=1, reap_interval_s=0.5)
    assert gw.execute("s1", "kept = [1, 2, 3]")["status"] == "ok"
    wait_until(lambda: gw.http.get("/v1/sessions/s1").json()["state"] == "hibernated", 30)
    if start.launcher == "docker":  # the session's container is gone: only the pool's is left
        client = docker.from_env()
        wait_until(lambda: len(containers_of(client, gw.env["GATEWAY_INSTANCE_ID"])) == 1, 30)
        client.close()
    wait_until(lambda: 'gateway_hibernations_total{outcome="ok"} 1.0' in gw.http.get(
        "/metrics").text, 30)
    result = gw.execute("s1", "sum(kept)")
    assert result["outputs"][0]["data"]["text/plain"] == "6"
    assert result["restored"]["variables"] == ["kept"]


@pytest.mark.docker
def test_a_dataframe_and_numpy_array_come_back_in_the_docker_kernel(
        docker_client: Any, gateway_factory: Any, tmp_path: Path) -> None:
    docker_client.images.get(DOCKER_IMAGE)
    gw = gateway_factory(launcher="docker", docker_image=DOCKER_IMAGE, pool_size=1,
                         instance_id=docker_instance_id(),
                         snapshot_url=(tmp_path / "store").as_uri())
    gw.execute("s1", "import pandas as pd, numpy as np\n"
                     "df = pd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})\nm = np.eye(3)")
    assert set(hibernate(gw, "s1")["variables"]) == {"pd", "np", "df", "m"}
    result = gw.execute("s1", "print(df.a.sum(), list(df.b), m.trace())")
    assert result["stdout"] == "3 ['x', 'y'] 3.0\n"
    assert set(result["restored"]["variables"]) == {"pd", "np", "df", "m"}


async def test_a_websocket_reconnect_restores_the_session(start: Any, connect: Any) -> None:
    gw = start()
    await asyncio.to_thread(gw.execute, "s1", "x = 41")
    watcher = await connect(gw, "s1")
    await asyncio.to_thread(hibernate, gw, "s1")
    with pytest.raises(Exception, match="4503"):  # told to reconnect
        await watcher.until(lambda e: False, 30)
    again = await connect(gw, "s1")
    await again.execute("r1", "print(x + 1)")
    result = (await again.result("r1"))["result"]
    assert result["stdout"] == "42\n" and result["restored"]["variables"] == ["x"]


async def test_a_jupyter_client_restores_the_session(start: Any, kernel_ws: Any) -> None:
    gw = start()
    info = await asyncio.to_thread(gw.http.post, "/v1/sessions", json={"session_id": "s1"})
    kernel_id = info.json()["kernel_id"]
    await asyncio.to_thread(gw.execute, "s1", "x = 'from before'")
    await asyncio.to_thread(hibernate, gw, "s1")
    sock = await kernel_ws(gw.url, kernel_id, gw.token)
    reply, iopub = await sock.execute("print(x)")
    assert reply["content"]["status"] == "ok"
    assert "from before" in "".join(m["content"].get("text", "") for m in iopub)
    state = (await asyncio.to_thread(gw.http.get, "/v1/sessions/s1")).json()
    assert state["state"] == "idle" and state["generation"] == 2


def test_the_files_api_restores_the_session(start: Any) -> None:
    gw = start()
    gw.execute("s1", "open('data.csv', 'w').write('a,b\\n1,2\\n'); y = 7")
    hibernate(gw, "s1")
    r = gw.http.get("/v1/sessions/s1/files/data.csv")
    assert r.status_code == 200 and r.content == b"a,b\n1,2\n"
    assert gw.http.get("/v1/sessions/s1").json()["state"] == "idle"
    result = gw.execute("s1", "y")  # the variables came back too
    assert result["outputs"][0]["data"]["text/plain"] == "7"
    assert result["restored"]["variables"] == ["y"]


def test_over_the_cap_variables_are_dropped_first_and_the_answers_say_so(
        start: Any) -> None:
    gw = start(snapshot_max_mb=3)
    gw.execute("s1", "big = b'x' * 2_500_000; small = 'kept'\n"
                     "open('f.bin', 'wb').write(b'y' * 500_000)")
    body = hibernate(gw, "s1")
    assert body["variables"] == ["small"]
    assert [v["name"] for v in body["skipped"]] == ["big"]
    assert "snapshot_max_mb" in body["skipped"][0]["reason"]
    result = gw.execute("s1", "print(small, len(open('f.bin','rb').read()), 'big' in dir())")
    assert result["stdout"] == "kept 500000 False\n"
    assert [v["name"] for v in result["restored"]["skipped"]] == ["big"]
    # a workspace over the cap by itself: refused, and the session keeps running as it was
    gw.execute("s1", "open('huge.bin', 'wb').write(b'z' * 3_500_000)")
    r = gw.http.post("/v1/sessions/s1/hibernate")
    assert r.status_code == 413 and r.json()["error"]["code"] == "snapshot_too_large"
    after = gw.execute("s1", "small")
    assert after["state_preserved"] is True and after["outputs"][0]["data"]["text/plain"] == \
        "'kept'"


def test_a_tampered_snapshot_fails_the_restore_and_leaves_a_fresh_session(
        start: Any, tmp_path: Path) -> None:
    gw = start()
    gw.execute("s1", "secret = 1; open('f.txt', 'w').write('x')")
    hibernate(gw, "s1")
    [snapshot] = stored(tmp_path / "store")
    data = bytearray(snapshot.read_bytes())
    data[700] ^= 0xFF  # one flipped byte: still a tar, no longer what was hibernated
    snapshot.write_bytes(bytes(data))
    failed = gw.execute("s1", "print('ran')")
    assert failed["status"] == "restore_failed" and failed["stdout"] == ""
    assert failed["restored"]["status"] == "restore_failed"
    assert "integrity" in failed["restored"]["error"]
    assert failed["state_preserved"] is False and failed["generation"] == 2
    fresh = gw.execute("s1", "print('secret' in dir(), __import__('os').listdir('.'))")
    assert fresh["status"] == "ok" and fresh["stdout"] == "False []\n"
    assert fresh["restored"] is None


def test_snapshots_are_per_api_key(start: Any, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("alice alice-token-0123456789\nbob bob-token-0123456789abc\n")
    gw = start(keys_file=keys, token="")
    alice, bob = gw.client("alice-token-0123456789"), gw.client("bob-token-0123456789abc")
    assert alice.post("/v1/sessions/s1/execute", json={"code": "who = 'alice'"}).json()[
        "status"] == "ok"
    hibernate(gw, "s1", alice)
    kernel_id = alice.get("/v1/sessions/s1").json()["kernel_id"]
    # bob can neither see, restore, hibernate nor delete it
    assert bob.get("/v1/sessions").json()["sessions"] == []
    assert bob.get("/api/kernels").json() == []
    assert bob.get("/v1/sessions/s1").status_code == 404
    assert bob.get(f"/api/kernels/{kernel_id}").status_code == 404
    assert bob.delete("/v1/sessions/s1").status_code == 404
    assert bob.post("/v1/sessions/s1/hibernate").status_code == 404
    # bob's own s1 is another session; hibernating it does not overwrite alice's snapshot
    result = bob.post("/v1/sessions/s1/execute", json={"code": "'who' in dir()"}).json()
    assert result["outputs"][0]["data"]["text/plain"] == "False" and result["restored"] is None
    hibernate(gw, "s1", bob)
    snapshots = stored(tmp_path / "store")
    assert len(snapshots) == 2 and len({p.parent.parent for p in snapshots}) == 2
    back = alice.post("/v1/sessions/s1/execute", json={"code": "who"}).json()
    assert back["outputs"][0]["data"]["text/plain"] == "'alice'"


def test_deleting_a_hibernated_session_deletes_its_snapshot_without_restoring(
        start: Any, tmp_path: Path) -> None:
    gw = start()
    gw.execute("s1", "x = 1")
    hibernate(gw, "s1")
    assert len(stored(tmp_path / "store")) == 1
    assert gw.http.delete("/v1/sessions/s1").status_code == 204
    assert stored(tmp_path / "store") == []
    assert gw.http.get("/v1/sessions/s1").status_code == 404
    assert "session restored" not in gw.log()
    # the id is free again: a new session, nothing restored
    assert gw.execute("s1", "'x' in dir()")["restored"] is None


def test_expired_snapshots_go_with_their_sessions(start: Any, tmp_path: Path) -> None:
    gw = start(snapshot_retention_s=1, reap_interval_s=0.5)
    gw.execute("s1", "x = 1")
    hibernate(gw, "s1")
    wait_until(lambda: gw.http.get("/v1/sessions/s1").status_code == 404, 30)
    assert stored(tmp_path / "store") == []


@pytest.mark.slow
def test_a_hibernated_session_outlives_a_gateway_restart(start: Any, redis_url: str) -> None:
    shared = {"registry_url": redis_url, "redis_key_prefix": f"hib-{secrets.token_hex(4)}:",
              "instance_id": docker_instance_id("restart") if start.launcher == "docker"
              else f"restart-{secrets.token_hex(3)}"}
    first = start(**shared)
    first.execute("s1", "x = 'survives'; open('f.txt', 'w').write('kept')")
    hibernate(first, "s1")
    first.stop()
    second = start(**shared)
    assert second.http.get("/v1/sessions/s1").json()["state"] == "hibernated"
    result = second.execute("s1", "print(x, open('f.txt').read())")
    assert result["stdout"] == "survives kept\n" and result["generation"] == 2
    assert second.http.delete("/v1/sessions/s1").status_code == 204  # no kernel left behind


@pytest.mark.slow
def test_another_replica_restores_a_session_hibernated_at_shutdown_through_s3(
        start: Any, redis_url: str, s3_server: S3Server) -> None:
    shared = {"registry_url": redis_url, "redis_key_prefix": f"hib-{secrets.token_hex(4)}:",
              "hibernate_on_shutdown": "true",
              **s3_server.settings(f"replicas-{secrets.token_hex(4)}")}
    a = start(**shared, **({"instance_id": "replica-a"} if start.launcher == "local" else {}))
    b = start(**shared, **({"instance_id": "replica-b"} if start.launcher == "local" else {}))
    a.execute("s1", "import numpy as np\nv = np.ones(4)\nopen('f.txt', 'w').write('on a')")
    assert a.stop() == 0  # a graceful stop hibernates the session into the shared store
    assert "hibernated 1 sessions" in a.log()
    keys = s3_server.client().list_objects_v2(Bucket=s3_server.bucket,
                                              Prefix=shared["snapshot_url"].split("/")[-1])
    assert keys["KeyCount"] == 1
    assert b.http.get("/v1/sessions/s1").json()["state"] == "hibernated"
    result = b.execute("s1", "print(v.sum(), open('f.txt').read())")
    assert result["stdout"] == "4.0 on a\n"
    assert set(result["restored"]["variables"]) == {"np", "v"}
    assert "session restored" in b.log()
    assert b.http.delete("/v1/sessions/s1").status_code == 204  # no kernel left behind


def test_installed_packages_come_back_and_are_counted_apart_from_files(start: Any) -> None:
    # the packages API installs into <workspace>/.packages; written here the same way
    gw = start()
    gw.execute("s1", "import os\n"
                     "os.makedirs('.packages/tinypkg-1.0.dist-info')\n"
                     "os.makedirs('.packages/tinypkg')\n"
                     "open('.packages/tinypkg-1.0.dist-info/METADATA', 'w').write('Name: x')\n"
                     "open('.packages/tinypkg/__init__.py', 'w').write('VALUE = 5')\n"
                     "open('own.txt', 'w').write('mine')")
    body = hibernate(gw, "s1")
    assert (body["files"], body["packages"]) == (1, 1)
    result = gw.execute("s1", "import sys; sys.path.insert(0, '.packages'); import tinypkg\n"
                              "print(tinypkg.VALUE, open('own.txt').read())")
    assert result["stdout"] == "5 mine\n"
    assert (result["restored"]["files"], result["restored"]["packages"]) == (1, 1)


def test_pickles_are_only_loaded_inside_the_sessions_own_sandbox(start: Any) -> None:
    gw = start()
    gw.execute("s1", "class Loud:\n"
                     "    def __reduce__(self):\n"
                     "        return (exec, (\"import os; open('loaded-by', 'w')"
                     ".write(str(os.getpid()))\",))\n"
                     "loud = Loud()")
    hibernate(gw, "s1")
    result = gw.execute("s1", "print(open('loaded-by').read() == str(__import__('os').getpid()))")
    assert result["stdout"] == "True\n"  # the restored kernel itself ran the pickle's code
    assert not (Path(__file__).resolve().parent.parent / "loaded-by").exists()  # not the gateway


def test_a_namespace_that_will_not_pickle_in_time_still_hibernates_its_files(
        start: Any) -> None:
    gw = start(snapshot_timeout_s=3)
    gw.execute("s1", "import time\n"
                     "class Stuck:\n"
                     "    def __reduce__(self):\n"
                     "        time.sleep(3600)\n"
                     "stuck = Stuck()\n"
                     "open('kept.txt', 'w').write('still here')")
    body = hibernate(gw, "s1")
    assert body["variables"] == [] and body["skipped"][0]["name"] == "*"
    assert "could not be saved" in body["skipped"][0]["reason"]
    result = gw.execute("s1", "print(open('kept.txt').read())")
    assert result["stdout"] == "still here\n" and result["restored"]["files"] == 1


def test_concurrent_hibernations_of_one_session_both_answer_and_restore_nothing(
        start: Any) -> None:
    import concurrent.futures

    gw = start()
    gw.execute("s1", "x = 1; import time")
    gw.http.post("/v1/sessions/s1/execute", json={"code": "time.sleep(1)", "wait": False})
    clients = [gw.client(), gw.client()]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both wait for the running cell
        answers = list(pool.map(lambda c: c.post("/v1/sessions/s1/hibernate"), clients))
    assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
    assert {a.json()["state"] for a in answers} == {"hibernated"}
    assert "session restored" not in gw.log()
    assert gw.execute("s1", "x")["restored"]["variables"] == ["time", "x"]


def test_a_snapshot_replaced_in_s3_by_another_sessions_fails_its_restore(
        gateway_factory: Any, s3_server: S3Server) -> None:
    # the store is not trusted: a valid snapshot of another session
    # copied over this one's object is refused too, before any of it reaches a kernel
    prefix = f"swap-{secrets.token_hex(4)}"
    gw = gateway_factory(pool_size=1, **s3_server.settings(prefix))
    gw.execute("mine", "x = 'mine'")
    gw.execute("theirs", "x = 'theirs'; open('planted.txt', 'w').write('!')")
    hibernate(gw, "mine")
    hibernate(gw, "theirs")
    s3 = s3_server.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_server.bucket,
                                                 Prefix=prefix)["Contents"]]
    mine = next(k for k in keys if "/mine/" in k)
    theirs = next(k for k in keys if "/theirs/" in k)
    s3.copy_object(Bucket=s3_server.bucket, Key=mine,
                   CopySource={"Bucket": s3_server.bucket, "Key": theirs})
    failed = gw.execute("mine", "x")
    assert failed["status"] == "restore_failed", failed
    fresh = gw.execute("mine", "print('x' in dir(), __import__('os').listdir('.'))")
    assert fresh["stdout"] == "False []\n"
    assert gw.execute("theirs", "x")["outputs"][0]["data"]["text/plain"] == "'theirs'"


def test_packages_installed_through_the_api_come_back_and_a_packages_call_restores(
        start: Any, tmp_path: Path) -> None:
    """Issue 14 + 17 together: a real install (gateway-side download, in-sandbox pip),
    hibernation, then a packages call is what wakes the session; the package imports."""
    index = tmp_path / "wheels"
    build_index(index, tmp_path / "BUILT")
    gw = start(package_index_url="", package_find_links=f'["{index}"]')
    assert gw.http.post("/v1/sessions", json={"session_id": "s1"}).status_code == 201
    r = gw.http.post("/v1/sessions/s1/packages", json={"packages": ["egw-tiny==1.0.0"]})
    assert r.status_code == 202, r.text
    url = r.json()["status_url"]
    job = wait_until(lambda: (lambda j: j if j["status"] in ("succeeded", "failed") else None)(
        gw.http.get(url).json()), 180, 0.2)
    assert job["status"] == "succeeded", job
    assert gw.execute("s1", "kept = 7")["status"] == "ok"
    body = hibernate(gw, "s1")
    assert body["packages"] == 1 and "kept" in body["variables"]
    listed = gw.http.get("/v1/sessions/s1/packages")  # a call of any kind restores
    assert listed.status_code == 200, listed.text
    assert [p["name"] for p in listed.json()["packages"]] == ["egw-tiny"]
    assert gw.http.get("/v1/sessions/s1").json()["state"] == "idle"
    out = gw.execute("s1", "import egw_tiny; print(egw_tiny.hello(), kept)")
    assert out["status"] == "ok" and out["stdout"] == "hi 7\n", out
    assert out["restored"]["packages"] == 1 and out["generation"] == 2
