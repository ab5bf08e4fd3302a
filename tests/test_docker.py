"""Docker sandbox end to end, against the real engine and kernel image: the lockdown as seen
from inside the kernel, limits, death reasons, cleanup and orphans."""

from __future__ import annotations

import grp
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.launchers.docker import SECCOMP_PROFILE
from tests.conftest import (
    LABEL_GATEWAY,
    Gateway,
    containers_of,
    docker_instance_id,
    start_gateway,
    unavailable,
    wait_until,
)

pytestmark = pytest.mark.docker

MARKER = f"egw-marker-{secrets.token_hex(4)}"  # a value only the gateway's environment holds
MiB = 2**20


@pytest.fixture(scope="module")
def gw(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A docker gateway whose environment carries a marker the kernels must never see."""
    instance_id = docker_instance_id("lockdown")
    gateway = start_gateway(tmp_path_factory.mktemp("gw"), launcher="docker",
                            instance_id=instance_id, interrupt_grace_s=1,
                            registry_url=f"memory://{MARKER}")
    yield gateway
    gateway.stop()
    shutil.rmtree(gateway.env["GATEWAY_RUNTIME_DIR"], ignore_errors=True)
    assert not containers_of(docker_client, instance_id)


def value(gw: Gateway, session_id: str, code: str) -> Any:
    """Run ``code``, which sets ``out``, and return ``out`` (through JSON)."""
    result = gw.execute(session_id, f"{code}\nimport json as _j; print(_j.dumps(out))")
    assert result["status"] == "ok", result
    return json.loads(result["stdout"])


def container_of(client: Any, gw: Gateway, session_id: str) -> Any:
    """The session's current container (its hostname is the container id; a kernel from the
    warm pool carries the label session_id=pool, so labels cannot find it)."""
    container = client.containers.get(value(gw, session_id, "import socket\n"
                                                           "out = socket.gethostname()"))
    assert container.labels[LABEL_GATEWAY] == gw.env["GATEWAY_INSTANCE_ID"]
    return container


def create(gw: Gateway, session_id: str, **limits: Any) -> dict[str, Any]:
    r = gw.http.post("/v1/sessions", json={"session_id": session_id, "limits": limits})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- lockdown, from inside
def test_kernel_sees_only_loopback(gw: Gateway, sid: str) -> None:
    names = value(gw, sid, "import os, socket\n"
                           "out = [sorted(os.listdir('/sys/class/net')),\n"
                           "       sorted(n for _, n in socket.if_nameindex())]")
    assert names == [["lo"], ["lo"]]


def test_kernel_is_not_root_and_has_no_capabilities(gw: Gateway, sid: str) -> None:
    seen = value(gw, sid, """
import os
st = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())
try:
    os.setuid(0); setuid = 'worked'
except OSError as e:
    setuid = e.errno
out = {'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(),
       'groups': os.getgroups(), 'setuid': setuid, 'nnp': st['NoNewPrivs'].strip(),
       'caps': {k: int(st[k], 16) for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')}}
""")
    assert seen["uid"] == seen["euid"] == 1000
    assert seen["gid"] != 0 and 0 not in seen["groups"]
    assert seen["setuid"] != "worked"
    assert seen["caps"] == dict.fromkeys(("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), 0)
    assert seen["nnp"] == "1"


def test_only_tmp_and_work_are_writable(gw: Gateway, sid: str) -> None:
    errnos = value(gw, sid, """
def attempt(path):
    try:
        with open(path, 'w') as f:
            f.write('x')
        return None
    except OSError as e:
        return e.errno
out = {p: attempt(p) for p in ['/x', '/usr/x', '/etc/x', '/opt/kernel/x', '/kernel/x',
                               '/etc/hosts', '/tmp/x', '/work/x', '/dev/shm/x']}
""")
    writable = {p for p, err in errnos.items() if err is None}
    assert writable == {"/tmp/x", "/work/x", "/dev/shm/x"}, errnos


def test_tmp_and_work_are_bounded(gw: Gateway, sid: str) -> None:
    create(gw, sid, disk_mb=8)
    sizes = value(gw, sid, """
import os
def fill(path):
    chunk = b'x' * 2**20
    try:
        with open(path, 'wb') as f:
            for _ in range(16):
                f.write(chunk)
                f.flush()
        return 'wrote 16 MiB'
    except OSError as e:
        return e.errno
    finally:
        os.remove(path)
out = [fill('/tmp/big'), fill('/work/big'),
       os.statvfs('/tmp').f_blocks * os.statvfs('/tmp').f_frsize]
""")
    assert sizes == [28, 28, 8 * MiB]  # ENOSPC


def test_no_docker_socket_and_no_host_path_but_the_socket_dir(gw: Gateway, sid: str) -> None:
    seen = value(gw, sid, """
import os
mounts = [l.split() for l in open('/proc/self/mountinfo')]
# a mount of a host directory or file shows a root other than '/' on a disk filesystem
virtual = ('tmpfs', 'proc', 'sysfs', 'devpts', 'mqueue', 'cgroup', 'cgroup2', 'overlay',
           'fuse.fuse-overlayfs', 'shm')
host = sorted(m[4] for m in mounts if m[m.index('-') + 1] not in virtual)
out = [os.path.exists('/var/run/docker.sock') or os.path.exists('/run/docker.sock'), host]
""")
    docker_sock, host_paths = seen
    assert docker_sock is False
    # /kernel is the session's socket dir, /work its workspace; the rest are the engine's
    # per-container files and the image's Python environment (a read-only volume)
    assert set(host_paths) <= {"/kernel", "/work", "/etc/hosts", "/etc/hostname",
                               "/etc/resolv.conf", "/sbin/docker-init",
                               "/usr/sbin/docker-init", "/opt/kernel"}, host_paths
    assert "/kernel" in host_paths and "/work" in host_paths


def test_environment_holds_nothing_of_the_gateway(gw: Gateway, sid: str) -> None:
    env = value(gw, sid, "import os\nout = dict(os.environ)")
    text = json.dumps(env)
    for secret in (gw.token, MARKER, gw.env["GATEWAY_RUNTIME_DIR"], gw.env["HOME"]):
        assert secret not in text
    assert not [k for k in env if k.startswith(("GATEWAY_", "DOCKER_"))]


def test_two_sessions_cannot_see_each_others_files_or_processes(gw: Gateway, sid: str) -> None:
    other = f"{sid}-b"
    mark = secrets.token_hex(8)
    try:
        gw.execute(sid, f"""
import subprocess, sys
open('/tmp/{mark}', 'w').write('a'); open('/work/{mark}', 'w').write('a')
p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', '{mark}'])
""")
        look = f"""
import os
def cmdlines():
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            yield open(f'/proc/{{pid}}/cmdline', 'rb').read()
        except OSError:
            pass
out = [os.path.exists('/tmp/{mark}') or os.path.exists('/work/{mark}'),
       any(b'{mark}' in c for c in cmdlines()),
       len(list(filter(str.isdigit, os.listdir('/proc'))))]
"""
        assert value(gw, sid, look)[:2] == [True, True]  # the owner sees both
        files, procs, count = value(gw, other, look)
        assert (files, procs) == (False, False)
        assert count <= 3  # init, the kernel, perhaps a transient child
    finally:
        gw.http.delete(f"/v1/sessions/{other}")


# ---------------------------------------------------------------------- limits
def test_container_is_created_locked_down_with_default_limits(
    gw: Gateway, sid: str, docker_client: Any
) -> None:
    gw.execute(sid, "1")
    c = container_of(docker_client, gw, sid)
    host = c.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    nnp, seccomp = host["SecurityOpt"]
    assert nnp == "no-new-privileges" and seccomp.startswith("seccomp=")
    assert json.loads(seccomp.removeprefix("seccomp=")) == json.loads(SECCOMP_PROFILE.read_text())
    assert host["Init"] is True and host["Privileged"] is False
    assert host["Memory"] == host["MemorySwap"] == 512 * MiB
    assert host["NanoCpus"] == 1_000_000_000 and host["PidsLimit"] == 128
    assert "size=64m" in host["Tmpfs"]["/tmp"] and "/work" not in host["Tmpfs"]
    assert not host.get("Binds")
    mounts = {m["Destination"]: m for m in c.attrs["Mounts"]}
    env = mounts.pop("/opt/kernel", None)  # absent while the env volume is being filled
    assert env is None or (env["Type"] == "volume" and env["RW"] is False), env
    assert {(m["Type"], d) for d, m in mounts.items()} == {("bind", "/kernel"), ("bind", "/work")}
    runtime_dir = gw.env["GATEWAY_RUNTIME_DIR"]
    assert Path(mounts["/kernel"]["Source"]).parent == Path(runtime_dir)
    # the workspace: a directory of the gateway's work dir (a loop-mounted image as root)
    assert Path(mounts["/work"]["Source"]).is_relative_to(Path(runtime_dir) / "work")
    assert c.attrs["Config"]["User"].startswith("1000:")
    labels = c.labels
    assert labels["exec-gateway.managed"] == "true"
    assert labels["exec-gateway.session_id"] in (sid, "pool")  # "pool": started before use
    assert labels[LABEL_GATEWAY] == gw.env["GATEWAY_INSTANCE_ID"]
    assert labels["exec-gateway.kernel_id"]
    assert not [e for e in c.attrs["Config"]["Env"] if e.startswith("GATEWAY_")]


def test_session_limits_lower_the_defaults(gw: Gateway, sid: str, docker_client: Any) -> None:
    info = create(gw, sid, memory_mb=256, cpus=0.5, pids=64, disk_mb=16)
    assert info["limits"] == {"memory_mb": 256, "cpus": 0.5, "pids": 64, "disk_mb": 16}
    host = container_of(docker_client, gw, sid).attrs["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 256 * MiB
    assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 64
    assert "size=16m" in host["Tmpfs"]["/tmp"]
    seen = value(gw, sid, """
import os
def first(*paths):
    for p in paths:
        if os.path.exists(p):
            return open(p).read().split()[0]
out = [first('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'),
       first('/sys/fs/cgroup/pids.max', '/sys/fs/cgroup/pids/pids.max')]
""")
    assert seen == [str(256 * MiB), "64"]


@pytest.mark.parametrize("limits", [{"memory_mb": 8192}, {"cpus": 4.0}, {"pids": 5000},
                                    {"disk_mb": 4096}])
def test_limits_above_the_server_maximum_are_refused(
    gw: Gateway, sid: str, limits: dict[str, Any]
) -> None:
    r = gw.http.post("/v1/sessions", json={"session_id": sid, "limits": limits})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "limit_out_of_range"


def test_memory_bomb_gives_memory_exceeded_and_next_call_works(gw: Gateway, sid: str) -> None:
    create(gw, sid, memory_mb=128)
    gw.execute(sid, "kept = 1")
    bomb = gw.execute(sid, "hog = []\nwhile True: hog.append(b'x' * (8 * 2**20))")
    assert bomb["status"] == "memory_exceeded", bomb
    assert bomb["state_preserved"] is False
    assert bomb["error"]["ename"] == "MemoryLimitExceeded"
    after = gw.execute(sid, "'kept' in dir()")
    assert after["status"] == "ok"
    assert after["generation"] == bomb["generation"] + 1
    assert after["outputs"][0]["data"]["text/plain"] == "False"


def test_fork_bomb_is_contained_and_other_sessions_answer(
    gw: Gateway, sid: str, docker_client: Any
) -> None:
    other = f"{sid}-other"
    try:
        gw.execute(other, "1")
        create(gw, sid, pids=64)
        container = container_of(docker_client, gw, sid)
        bomb = gw.execute(sid, """
import os, time
n = 0
while True:
    try:
        pid = os.fork()
    except OSError as e:
        print('contained after', n, 'forks:', e.strerror)
        break
    if pid == 0:  # children fork forever too and never come back to the kernel's code
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.05)
    n += 1
""", timeout_s=30)
        assert bomb["status"] == "ok", bomb
        assert "contained after" in bomb["stdout"]
        started = time.perf_counter()
        assert gw.execute(other, "1 + 1")["outputs"][0]["data"]["text/plain"] == "2"
        assert time.perf_counter() - started < 2.0
        # the bombed kernel itself is at its limit: ask the engine, not the kernel
        assert 32 < container.stats(stream=False)["pids_stats"]["current"] <= 64
        started = time.perf_counter()
        assert gw.http.delete(f"/v1/sessions/{sid}").status_code == 204
        assert time.perf_counter() - started < 5.0
        assert not docker_client.api.containers(all=True, filters={"id": container.id})
    finally:
        gw.http.delete(f"/v1/sessions/{other}")


# ---------------------------------------------------------------------- death and lifecycle
def test_kernel_exit_is_reported_within_a_second(gw: Gateway, sid: str) -> None:
    gw.execute(sid, "1")
    dead = gw.execute(sid, "import os; os._exit(3)")
    assert dead["status"] == "dead"
    assert "exited with code 3" in dead["error"]["evalue"]
    assert dead["duration_ms"] < 1000


def test_container_killed_outside_the_gateway_is_noticed(
    gw: Gateway, sid: str, docker_client: Any
) -> None:
    gw.execute(sid, "1")
    container_of(docker_client, gw, sid).kill()
    started = time.perf_counter()
    wait_until(lambda: gw.http.get(f"/v1/sessions/{sid}").json()["state"] == "dead", 5, 0.01)
    assert time.perf_counter() - started < 1.0
    after = gw.execute(sid, "2")
    assert after["status"] == "ok" and after["generation"] == 2


def test_restart_replaces_the_container(gw: Gateway, sid: str, docker_client: Any) -> None:
    gw.execute(sid, "1")
    before = container_of(docker_client, gw, sid)
    assert gw.http.post(f"/v1/sessions/{sid}/restart").status_code == 200
    after = container_of(docker_client, gw, sid)
    assert after.id != before.id
    assert gw.execute(sid, "3")["generation"] == 2


def test_delete_removes_the_container_and_socket_dir(
    gw: Gateway, sid: str, docker_client: Any
) -> None:
    gw.execute(sid, "1")
    c = container_of(docker_client, gw, sid)
    socket_dir = Path(c.labels["exec-gateway.socket_dir"])
    assert socket_dir.is_dir()
    assert gw.http.delete(f"/v1/sessions/{sid}").status_code == 204
    assert not docker_client.api.containers(all=True, filters={"id": c.id})
    assert not socket_dir.exists()


def test_kernel_that_exits_during_start_up_gives_503_and_leaves_nothing(
    gateway_factory: Any, docker_client: Any
) -> None:
    instance_id = docker_instance_id()
    broken = json.dumps({"KERNEL_CONNECTION_FILE": "/nonexistent/connection.json"})
    gw = gateway_factory(launcher="docker", instance_id=instance_id, pool_size=0,
                         kernel_env=broken)
    r = gw.http.post("/v1/sessions", json={})
    assert r.status_code == 503, r.text
    assert r.json()["error"] == {
        "code": "kernel_start_failed",
        "message": "the kernel container stopped during start-up: exited with code 1",
    }
    assert containers_of(docker_client, instance_id) == []
    runtime_dir = Path(gw.env["GATEWAY_RUNTIME_DIR"])
    assert set(os.listdir(runtime_dir)) <= {"work"}  # no socket dir left ...
    assert list((runtime_dir / "work").rglob("ws-*")) == []  # ... nor a workspace
    assert "Read-only file system" in gw.log()  # the kernel's own words, for the operator


def test_readyz_fails_clearly_without_the_image(gateway_factory: Any, docker_client: Any) -> None:
    missing = "exec-gateway-kernel:no-such-tag"
    gw = gateway_factory(launcher="docker", instance_id=docker_instance_id(), docker_image=missing)
    ready = gw.http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["launcher"] == (
        f"image {missing} not found: run `make kernel-image`"
    )
    r = gw.http.post("/v1/sessions", json={})
    assert r.status_code == 503 and r.json()["error"]["code"] == "launcher_unavailable"


def test_startup_removes_orphans_but_not_other_gateways_containers(
    gateway_factory: Any, docker_client: Any
) -> None:
    instance_id = docker_instance_id()
    crashed = gateway_factory(launcher="docker", instance_id=instance_id, pool_size=0)
    crashed.execute("s", "1")
    crashed.stop(signal.SIGKILL)  # its kernel keeps running, and no record claims it now
    (orphan,) = containers_of(docker_client, instance_id)
    orphan_dir = Path(orphan.labels["exec-gateway.socket_dir"])
    other_id = docker_instance_id()
    other = gateway_factory(launcher="docker", instance_id=other_id, pool_size=0)
    other.execute("s", "x = 5")

    gateway_factory(launcher="docker", instance_id=instance_id, pool_size=0,
                    runtime_dir=crashed.env["GATEWAY_RUNTIME_DIR"])
    assert containers_of(docker_client, instance_id) == []
    assert not orphan_dir.exists()
    assert len(containers_of(docker_client, other_id)) == 1
    assert other.execute("s", "x")["outputs"][0]["data"]["text/plain"] == "5"


def test_non_root_gateway_reaches_its_kernels(gateway_factory: Any, docker_client: Any) -> None:
    """The gateway as uid 4242 (in the docker group): the kernel runs as 1000 with the
    gateway's gid, and the setgid socket directory lets the gateway connect. The gateway keeps
    only CAP_DAC_READ_SEARCH, to read this interpreter (it may live under /root); it grants no
    right to connect to a socket, so the group permissions are what is tested."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        unavailable("starting the gateway as another user needs root and setpriv")
    try:
        docker_gid = grp.getgrnam("docker").gr_gid
    except KeyError:
        unavailable("no docker group to give a non-root gateway access to the engine")
    uid = gid = 4242
    runtime_dir = tempfile.mkdtemp(prefix="egn-", dir="/tmp")
    os.chown(runtime_dir, uid, gid)
    prefix = [setpriv, f"--reuid={uid}", f"--regid={gid}", f"--groups={docker_gid}",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]
    gw = gateway_factory(launcher="docker", instance_id=docker_instance_id(), pool_size=0,
                         runtime_dir=runtime_dir, prefix=prefix)
    assert value(gw, "s", "import os\nout = [os.getuid(), os.getgid()]") == [1000, gid]
    (container,) = containers_of(docker_client, gw.env["GATEWAY_INSTANCE_ID"])
    st = Path(container.labels["exec-gateway.socket_dir"]).stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)) == (uid, gid, oct(0o2750))
    assert gw.http.delete("/v1/sessions/s").status_code == 204
    assert containers_of(docker_client, gw.env["GATEWAY_INSTANCE_ID"]) == []


# ---------------------------------------------------------------------- seccomp
# x86_64 numbers (asm/unistd_64.h) and arguments that make each call succeed, or fail with an
# errno other than EPERM, wherever the call is allowed: EPERM then means the profile refused it.
BLOCKED_SYSCALLS = {
    "ptrace": (101, [2, 0x7FFFFFFF, 0, 0]),  # PEEKDATA of no such pid: ESRCH
    "process_vm_readv": (310, ["getpid", 0, 0, 0, 0, 0]),  # nothing to copy: 0
    "process_vm_writev": (311, ["getpid", 0, 0, 0, 0, 0]),
    "kcmp": (312, ["getpid", "getpid", 0, 0, 0]),  # KCMP_FILE 0 vs 0 of itself: 0
    "pidfd_getfd": (438, [-1, 0, 0]),  # EBADF
    "process_madvise": (440, [-1, 0, 0, 0, 0]),  # EBADF
    "personality": (135, [0xFFFFFFFF]),  # a query: the current persona
    "io_uring_setup": (425, [0, 0]),  # no entries: EINVAL
    "io_uring_enter": (426, [-1, 0, 0, 0, 0, 0]),  # EBADF
    "io_uring_register": (427, [-1, 0, 0, 0]),  # EBADF
    "userfaultfd": (323, [1]),  # UFFD_USER_MODE_ONLY: a descriptor
    "keyctl": (250, [9999, 0, 0, 0, 0]),  # no such operation: EOPNOTSUPP
    "add_key": (248, [0, 0, 0, 0, 0]),  # NULL type: EFAULT
    "request_key": (249, [0, 0, 0, 0]),  # EFAULT
    "perf_event_open": (298, [0, 0, -1, -1, 0]),  # NULL attr: EFAULT
    "bpf": (321, [9999, 0, 0]),  # no such command: EINVAL (EPERM if the host forbids bpf)
}


def test_seccomp_refuses_what_a_kernel_never_needs(gw: Gateway, sid: str) -> None:
    seen = value(gw, sid, f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {{}}
for name, (number, args) in {BLOCKED_SYSCALLS!r}.items():
    args = [os.getpid() if a == "getpid" else a for a in args]
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
    out[name] = [result, ctypes.get_errno()]
    if result > 2 and name == "userfaultfd":
        os.close(result)
st = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())
out["Seccomp"] = st["Seccomp"].strip()
""")
    assert seen.pop("Seccomp") == "2"  # a filter is on
    refused = {name: r for name, r in seen.items() if r == [-1, 1]}  # -1, EPERM
    assert refused == seen, {name: r for name, r in seen.items() if r != [-1, 1]}


def test_numpy_pandas_matplotlib_threads_and_subprocesses_work_under_seccomp(
    gw: Gateway, sid: str
) -> None:
    seen = value(gw, sid, """
import io, subprocess, sys, threading, concurrent.futures, multiprocessing
import numpy as np, pandas as pd, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
a = np.random.default_rng(0).random((200, 200))
frame = pd.DataFrame({"x": range(10), "y": [v * v for v in range(10)]})
fig, ax = plt.subplots(); ax.plot(frame.x, frame.y); png = io.BytesIO(); fig.savefig(png)
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    threads = sorted(pool.map(lambda v: v * 2, range(8)))
with multiprocessing.get_context("fork").Pool(2) as procs:
    forked = procs.map(abs, [-1, -2])
child = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True)
shell = subprocess.run("echo hi | tr a-z A-Z", shell=True, capture_output=True, text=True)
out = {"det": round(float(np.linalg.det(np.eye(3) * 2)), 6), "inv": bool(np.allclose(
       a @ np.linalg.inv(a), np.eye(200), atol=1e-6)), "sum": int(frame.y.sum()),
       "png": png.getvalue()[:4] == b"\\x89PNG", "threads": threads, "forked": forked,
       "child": child.stdout.strip(), "shell": shell.stdout.strip()}
""")
    assert seen == {"det": 8.0, "inv": True, "sum": 285, "png": True,
                    "threads": [0, 2, 4, 6, 8, 10, 12, 14], "forked": [1, 2], "child": "42",
                    "shell": "HI"}


def test_docker_seccomp_profile_setting_replaces_the_bundled_profile(
    gateway_factory: Any, docker_client: Any, tmp_path: Path
) -> None:
    profile = json.loads(SECCOMP_PROFILE.read_text())
    for rule in profile["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n != "getpriority"]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    gw = gateway_factory(launcher="docker", instance_id=docker_instance_id("seccomp"),
                         docker_seccomp_profile=path, pool_size=0)
    code = ("import os\ntry:\n    out = os.getpriority(os.PRIO_PROCESS, 0)\n"
            "except OSError as e:\n    out = e.errno\n")
    assert value(gw, "custom", code) == 1  # EPERM: this profile does not allow it
    gw.http.delete("/v1/sessions/custom")


