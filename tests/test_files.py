"""The files API end to end, with real kernels on both launchers: uploads the kernel reads,
files the kernel writes (``files_changed``) downloaded byte for byte, listings, deletes, bad
paths, limits, what a kernel plants in its workspace, and other keys."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import Connect, Gateway

MiB = 2**20


def files_url(sid: str, path: str = "") -> str:
    return f"/v1/sessions/{sid}/files" + (f"/{urllib.parse.quote(path)}" if path else "")


def value(gw: Gateway, sid: str, code: str) -> Any:
    """Run ``code``, which sets ``out``; returns ``out`` (through JSON)."""
    result = gw.execute(sid, f"{code}\nimport json as _j; print(_j.dumps(out))")
    assert result["status"] == "ok", result
    return json.loads(result["stdout"])


def raw(gw: Gateway, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
    """A request with the target exactly as given (httpx would normalise ``..`` away)."""
    url = urllib.parse.urlsplit(gw.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request(method, target, body=body,
                     headers={"Authorization": f"Bearer {gw.token}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def workspace_of(gw: Gateway, sid: str) -> Path:
    """The session's workspace on the host, found by a file only it holds."""
    mark = f"mark-{secrets.token_hex(6)}"
    value(gw, sid, f"open({mark!r}, 'w').close(); out = 1")
    work = Path(gw.env["GATEWAY_RUNTIME_DIR"]) / "work"
    (found,) = list(work.glob(f"*/ws-*/{mark}"))
    os.unlink(found)
    return found.parent


# ---------------------------------------------------------------------- in and out
def test_put_upload_is_read_by_the_kernel_and_replacing_answers_200(gw: Gateway, sid: str
                                                                    ) -> None:
    r = gw.http.put(files_url(sid, "data/sales.csv"), content=b"region,total\nnorth,3\n")
    assert r.status_code == 201, r.text
    info = r.json()
    assert (info["path"], info["type"], info["size"]) == ("data/sales.csv", "file", 21)
    assert "modified_at" in info
    assert value(gw, sid, "out = open('data/sales.csv').read()") == "region,total\nnorth,3\n"
    r = gw.http.put(files_url(sid, "data/sales.csv"), content=b"new")
    assert r.status_code == 200 and r.json()["size"] == 3
    assert value(gw, sid, "out = open('data/sales.csv').read()") == "new"


def test_multipart_upload_puts_every_file_in_the_path_directory(gw: Gateway, sid: str) -> None:
    png = bytes(range(256)) * 100
    r = gw.http.post(files_url(sid), files=[("file", ("a.png", png, "image/png")),
                                            ("file", ("b.txt", b"bee", "text/plain"))],
                     data={"path": "in"})
    assert r.status_code == 201, r.text
    assert [(f["path"], f["size"]) for f in r.json()["files"]] == [
        ("in/a.png", len(png)), ("in/b.txt", 3)]
    assert value(gw, sid, "out = [len(open('in/a.png', 'rb').read()), open('in/b.txt').read()]"
                 ) == [len(png), "bee"]


def test_a_file_the_kernel_writes_is_in_files_changed_and_downloads_byte_identical(
        gw: Gateway, sid: str) -> None:
    result = gw.execute(sid, """
import os, hashlib
os.makedirs('out', exist_ok=True)
data = bytes(range(256)) * 1000 + os.urandom(1000)
open('out/blob.bin', 'wb').write(data)
open('out/summary.csv', 'w').write('a,b\\n1,2\\n')
print(hashlib.sha256(data).hexdigest())
""")
    assert result["status"] == "ok", result
    changed = {f["path"]: f for f in result["files_changed"]}
    assert set(changed) == {"out/blob.bin", "out/summary.csv"}
    assert result["files_changed_truncated"] is False
    assert changed["out/blob.bin"]["size"] == 257_000
    r = gw.http.get(files_url(sid, "out/blob.bin"))
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == result["stdout"].strip()
    assert r.headers["content-length"] == "257000"
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"].startswith("attachment")
    r = gw.http.get(files_url(sid, "out/summary.csv"))
    assert r.headers["content-type"] == "text/csv" and r.text == "a,b\n1,2\n"
    # a cell that writes nothing lists nothing, and an upload is not "changed by a cell"
    gw.http.put(files_url(sid, "up.txt"), content=b"x")
    again = gw.execute(sid, "1 + 1")
    assert again["files_changed"] == [] and again["files_changed_truncated"] is False


def test_files_changed_is_bounded_to_100(gw: Gateway, sid: str) -> None:
    result = gw.execute(sid, "import os\nos.makedirs('many')\n"
                             "for i in range(150): open(f'many/{i:03}', 'w').write('x')")
    assert len(result["files_changed"]) == 100 and result["files_changed_truncated"] is True
    assert result["files_changed"][0]["path"] == "many/000"


async def test_websocket_result_has_files_changed_and_file_changed_events(
        gw: Gateway, sid: str, connect: Connect) -> None:
    gw.execute(sid, "1")
    watcher = await connect(gw, sid)
    r = gw.http.put(files_url(sid, "in.txt"), content=b"hello")
    assert r.status_code == 201
    event = await watcher.until(lambda e: e["type"] == "file_changed")
    assert event["change"] == "written" and event["file"]["path"] == "in.txt"
    await watcher.execute("c1", "open('made.txt', 'w').write('x')")
    result = await watcher.result("c1")
    assert [f["path"] for f in result["result"]["files_changed"]] == ["made.txt"]
    assert any(e["type"] == "file_changed" and e["file"]["path"] == "made.txt"
               for e in watcher.events)
    assert gw.http.delete(files_url(sid, "in.txt")).status_code == 204
    event = await watcher.until(lambda e: e["type"] == "file_changed"
                                and e["change"] == "deleted")
    assert event["file"]["path"] == "in.txt"


def test_listing_recursive_listing_and_delete(gw: Gateway, sid: str) -> None:
    value(gw, sid, "import os\nos.makedirs('a/b')\nopen('a/b/c.txt', 'w').write('cc')\n"
                   "open('top.txt', 'w').write('t')\nout = 1")
    top = gw.http.get(files_url(sid)).json()["files"]
    assert [(f["path"], f["type"]) for f in top] == [("a", "directory"), ("top.txt", "file")]
    deep = gw.http.get(files_url(sid), params={"path": "a", "recursive": "true"}).json()
    assert [(f["path"], f["size"]) for f in deep["files"]] == [("a/b", None), ("a/b/c.txt", 2)]
    assert gw.http.get(files_url(sid), params={"path": "top.txt"}).json()["error"]["code"] == \
        "not_a_directory"
    assert gw.http.get(files_url(sid), params={"path": "nope"}).status_code == 404
    r = gw.http.delete(files_url(sid, "a"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_a_file"
    assert gw.http.delete(files_url(sid, "a"), params={"recursive": "true"}).status_code == 204
    assert gw.http.delete(files_url(sid, "top.txt")).status_code == 204
    assert value(gw, sid, "import os\nout = sorted(os.listdir())") == []
    r = gw.http.get(files_url(sid, "top.txt"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "file_not_found"
    r = gw.http.get(files_url(sid, "a"))  # gone; a directory would be not_a_file
    assert r.status_code == 404


@pytest.mark.parametrize("target", [
    "/etc/passwd", "%2Fetc%2Fpasswd", "../x", "a/../../x", "%2E%2E/x", "a/%00b", "a/%0Ab",
    "a//b", "x" * 256, "/".join(["abcdefgh"] * 120),
])
def test_bad_paths_are_400_invalid_path(gw: Gateway, sid: str, target: str) -> None:
    gw.execute(sid, "1")
    for method, body in (("GET", None), ("PUT", b"x"), ("DELETE", None)):
        status, answer = raw(gw, method, f"/v1/sessions/{sid}/files/{target}", body)
        assert status == 400, (method, target, answer)
        assert json.loads(answer)["error"]["code"] == "invalid_path"
    status, answer = raw(gw, "GET", f"/v1/sessions/{sid}/files?path=../..")
    assert status == 400 and json.loads(answer)["error"]["code"] == "invalid_path"


def test_a_directory_in_the_way_is_409(gw: Gateway, sid: str) -> None:
    value(gw, sid, "import os\nos.makedirs('d/e')\nopen('f', 'w').close()\nout = 1")
    r = gw.http.put(files_url(sid, "d"), content=b"x")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_a_file"
    r = gw.http.put(files_url(sid, "f/g"), content=b"x")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_a_directory"
    r = gw.http.get(files_url(sid, "d"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_a_file"


# ---------------------------------------------------------------------- what the kernel plants
def test_planted_symlinks_never_leak_host_or_other_sessions_files(gw: Gateway, sid: str
                                                                  ) -> None:
    other = f"{sid}-other"
    try:
        gw.http.put(files_url(other, "private.txt"), content=b"other's secret")
        theirs = workspace_of(gw, other)
        value(gw, sid, f"""
import os
os.mkdir('real'); open('real/passwd', 'w').write('mine')
for name, target in [('abs', '/etc/passwd'), ('rel', '../../../../../../../etc/passwd'),
                     ('etc', '/etc'), ('up', '../../../../../../..'),
                     ('theirs', {str(theirs)!r}), ('theirfile', {str(theirs / 'private.txt')!r}),
                     ('runtime', {gw.env['GATEWAY_RUNTIME_DIR']!r})]:
    os.symlink(target, name)
out = 1
""")
        host_passwd = Path("/etc/passwd").read_bytes()
        for path in ("abs", "rel", "etc/passwd", "up/etc/passwd", "theirs/private.txt",
                     "theirfile", "runtime/work"):
            r = gw.http.get(files_url(sid, path))
            assert r.status_code in (404, 409), (path, r.status_code)
            assert r.content != host_passwd and b"other's secret" not in r.content
            assert r.json()["error"]["code"] in ("not_a_file", "not_a_directory",
                                                 "file_not_found")
        for path in ("etc/evil", "theirs/evil", "up/tmp/evil"):
            r = gw.http.put(files_url(sid, path), content=b"evil")
            assert r.status_code == 409, (path, r.text)
        assert not (theirs / "evil").exists()
        r = gw.http.delete(files_url(sid, "theirs/private.txt"))
        assert r.status_code == 409
        assert (theirs / "private.txt").read_bytes() == b"other's secret"
        listed = gw.http.get(files_url(sid), params={"recursive": "true"}).json()["files"]
        assert [f["path"] for f in listed] == ["real", "real/passwd"]
        assert gw.http.get(files_url(sid), params={"path": "etc"}).status_code == 409
        # deleting a planted link removes the link only
        assert gw.http.delete(files_url(sid, "theirs")).status_code == 204
        assert (theirs / "private.txt").exists()
    finally:
        gw.http.delete(f"/v1/sessions/{other}")


def test_a_planted_fifo_never_hangs_the_gateway(gw: Gateway, sid: str) -> None:
    value(gw, sid, "import os\nos.mkfifo('pipe')\nout = 1")
    started = time.monotonic()
    r = gw.http.get(files_url(sid, "pipe"), timeout=10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_a_file"
    assert time.monotonic() - started < 5
    assert gw.http.get(files_url(sid)).json()["files"] == []
    assert gw.http.get("/healthz").status_code == 200


def test_a_symlink_swapped_in_while_files_are_read_never_leaks(gw: Gateway, sid: str) -> None:
    """A kernel thread swaps ``d`` between a real directory and a symlink to /etc as fast as
    it can while the gateway serves ``d/passwd`` (uploads and a cell run meanwhile too)."""
    gw.execute(sid, """
import os, threading, time
os.mkdir('safe'); open('safe/passwd', 'w').write('workspace')
stop = time.monotonic() + 4
def swap():
    while time.monotonic() < stop:
        try:
            os.symlink('/etc', 'link'); os.replace('link', 'd')
            os.unlink('d'); os.rename('safe', 'd'); os.rename('d', 'safe')
        except OSError:
            pass
threading.Thread(target=swap, daemon=True).start()
""")
    host_passwd = Path("/etc/passwd").read_bytes()
    seen = set()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        r = gw.http.get(files_url(sid, "d/passwd"))
        assert r.content != host_passwd
        seen.add(r.status_code)
        r = gw.http.put(files_url(sid, "d/passwd"), content=b"upload")
        assert r.status_code in (200, 201, 404, 409), r.text
    assert Path("/etc/passwd").read_bytes() == host_passwd
    assert seen <= {200, 404, 409}


# ---------------------------------------------------------------------- while a cell runs
def test_files_move_while_a_cell_runs(gw: Gateway, sid: str) -> None:
    gw.execute(sid, "1")
    box: dict[str, Any] = {}
    cell = threading.Thread(target=lambda: box.update(r=gw.client().post(
        f"/v1/sessions/{sid}/execute", json={"code": "import time; time.sleep(3)"}).json()))
    cell.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert gw.http.put(files_url(sid, "next.csv"), content=b"1,2").status_code == 201
    assert gw.http.get(files_url(sid, "next.csv")).content == b"1,2"
    assert time.monotonic() - started < 2  # did not wait for the cell's turn
    cell.join()
    assert box["r"]["status"] == "ok"


# ---------------------------------------------------------------------- big files
def rss_during(gw: Gateway, action: Any) -> tuple[Any, int]:
    """Run ``action``; returns its value and the gateway's RSS growth (peak - before)."""
    proc = psutil.Process(gw.proc.pid)
    before = peak = proc.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return result, peak - before


def test_50_mb_binary_round_trip_is_byte_identical_in_bounded_gateway_memory(
        gw: Gateway, sid: str) -> None:
    digest = gw.execute(sid, """
import os, hashlib
data = os.urandom(50 * 2**20)
open('big.bin', 'wb').write(data)
print(hashlib.sha256(data).hexdigest()); del data
""")["stdout"].strip()

    def download() -> str:
        h = hashlib.sha256()
        with gw.http.stream("GET", files_url(sid, "big.bin")) as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes(1 << 16):
                h.update(chunk)
                time.sleep(0.0005)  # a client a bit slower than the disk
        return h.hexdigest()

    got, growth = rss_during(gw, download)
    assert got == digest
    assert growth < 20 * MiB, growth
    gw.http.delete(files_url(sid, "big.bin"))
    payload = os.urandom(50 * MiB)

    def upload() -> int:
        def chunks() -> Any:
            for i in range(0, len(payload), 1 << 16):
                yield payload[i:i + (1 << 16)]
        return gw.http.put(files_url(sid, "up.bin"), content=chunks()).status_code

    status, growth = rss_during(gw, upload)
    assert status == 201 and growth < 20 * MiB, growth
    assert value(gw, sid, "import hashlib\nout = hashlib.sha256(open('up.bin', 'rb').read())"
                          ".hexdigest()") == hashlib.sha256(payload).hexdigest()


# ---------------------------------------------------------------------- limits
def test_upload_over_max_upload_bytes_is_413(gateway_factory: Any) -> None:
    gw = gateway_factory(max_upload_bytes=MiB, pool_size=0)
    r = gw.http.put(files_url("s", "big"), content=b"x" * (MiB + 1))
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunked() -> Any:  # no Content-Length: refused when the bytes pass the limit
        for _ in range(4):
            yield b"x" * (MiB // 2)

    r = gw.http.put(files_url("s", "big"), content=chunked())
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert gw.http.put(files_url("s", "ok"), content=b"x" * MiB).status_code == 201
    assert [f["path"] for f in gw.http.get(files_url("s")).json()["files"]] == ["ok"]


def test_workspace_quota_507_and_enospc_in_the_cell_leave_the_host_disk_alone(
        gw: Gateway, sid: str) -> None:
    r = gw.http.post("/v1/sessions", json={"session_id": sid, "limits": {"disk_mb": 8}})
    assert r.status_code == 201, r.text
    r = gw.http.put(files_url(sid, "big"), content=b"x" * (9 * MiB))
    assert r.status_code == 507 and r.json()["error"]["code"] == "workspace_full"
    host = workspace_of(gw, sid)
    result = gw.execute(sid, """
chunk = b'x' * 2**20
with open('fill', 'wb') as f:
    for _ in range(64):
        f.write(chunk); f.flush()
""")
    assert result["status"] == "error"
    assert result["error"]["ename"] == "OSError" and "[Errno 28]" in result["error"]["evalue"]
    image = host.with_name(host.name + ".img")
    if os.geteuid() == 0:  # the loop quota: all the host holds is the fixed-size image
        assert os.path.ismount(host)
        assert image.stat().st_size == 8 * MiB
        assert image.stat().st_blocks * 512 <= 8 * MiB + 64 * 1024
    r = gw.http.put(files_url(sid, "more"), content=b"x" * MiB)
    assert r.status_code == 507
    assert gw.http.delete(files_url(sid, "fill")).status_code == 204
    assert gw.http.put(files_url(sid, "more"), content=b"x" * MiB).status_code == 201
    metrics = gw.http.get("/metrics").text
    assert 'gateway_workspace_quota_hits_total{source="upload"}' in metrics
    assert 'gateway_workspace_quota_hits_total{source="cell"}' in metrics
    assert f'gateway_workspace_bytes{{owner="default",session_id="{sid}"}}' in metrics


# ---------------------------------------------------------------------- keys
def test_another_api_key_gets_404_for_the_same_paths(gateway_factory: Any, tmp_path: Path
                                                     ) -> None:
    keys = tmp_path / "keys"
    alice, bob = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    keys.write_text(f"alice {alice}\nbob {bob}\n")
    gw = gateway_factory(keys_file=keys, token="", pool_size=0)
    a, b = gw.client(alice), gw.client(bob)
    assert a.put(files_url("s", "secret.txt"), content=b"alice's").status_code == 201
    for method in ("GET", "DELETE"):
        r = b.request(method, files_url("s", "secret.txt"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    assert b.get(files_url("s")).status_code == 404
    # bob's own "s" is another session with another workspace
    assert b.put(files_url("s", "other.txt"), content=b"bob's").status_code == 201
    assert [f["path"] for f in b.get(files_url("s")).json()["files"]] == ["other.txt"]
    assert a.get(files_url("s", "secret.txt")).content == b"alice's"
    assert httpx.get(gw.url + files_url("s", "secret.txt")).status_code == 401


def test_files_changed_without_a_quota_mount_walks_the_workspace(gateway_factory: Any) -> None:
    """Without the loop mount there is no fanotify: every cell walks its workspace."""
    gw = gateway_factory(workspace_quota="none", pool_size=0)
    result = gw.execute("s", "import os\nos.makedirs('d')\nopen('d/f.txt', 'w').write('x')")
    assert [f["path"] for f in result["files_changed"]] == ["d/f.txt"]
    assert gw.execute("s", "1 + 1")["files_changed"] == []
    # back to back: a cell (~2 ms) can start in the clock tick (4 ms) its predecessor wrote
    # in; the file is still the predecessor's, never reported twice
    for i in range(20):
        wrote = gw.execute("s", f"open('d/f.txt', 'w').write('{i}')")["files_changed"]
        assert [f["path"] for f in wrote] == ["d/f.txt"], (i, wrote)
        assert gw.execute("s", "1 + 1")["files_changed"] == [], i
    assert "workspace quota off" in gw.log()
    r = gw.http.post("/v1/sessions", json={"session_id": "small", "limits": {"disk_mb": 1}})
    assert r.status_code == 201
    r = gw.http.put(files_url("small", "big"), content=b"x" * (2 * MiB))  # held by the gateway
    assert r.status_code == 507 and r.json()["error"]["code"] == "workspace_full"
