"""Shared fixtures: real gateway processes on free loopback ports, and clients for them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
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
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
KERNEL_PYTHON = ROOT / ".venv-kernel" / "bin" / "python"  # the local kernels' environment


def unavailable(why: str) -> NoReturn:
    """What a test needs is not on this machine: a failure in CI (CI=true: there it is a
    broken build, never a skip), a skip elsewhere."""
    if IN_CI:
        pytest.fail(why)
    pytest.skip(why)


def require_kernel_env() -> Path:
    """The local kernels' Python (``make kernel-env``), or ``unavailable``."""
    if not KERNEL_PYTHON.exists():
        unavailable("the local kernels' environment is missing: run `make kernel-env`")
    return KERNEL_PYTHON


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


def start_gateway(tmp: Path, *, prefix: list[str] | None = None, **settings: Any) -> Gateway:
    """Start ``python -m gateway`` with GATEWAY_* settings (``prefix``: a command to run it
    through, e.g. setpriv for another user); returns once /healthz answers."""
    port = free_port()
    token = settings.pop("token", secrets.token_urlsafe(24))
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(tmp),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_TOKEN": token,
        "GATEWAY_RUNTIME_DIR": str(settings.pop("runtime_dir", None)
                                   or tempfile.mkdtemp(prefix="egt-", dir="/tmp")),
        "GATEWAY_KERNEL_PYTHON": sys.executable,
        "GATEWAY_LOG_LEVEL": "INFO",
    }
    if os.environ.get("DOCKER_HOST"):
        env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    if os.environ.get("GATEWAY_DOCKER_IMAGE"):  # the kernel image under test (DOCKER_IMAGE)
        env["GATEWAY_DOCKER_IMAGE"] = os.environ["GATEWAY_DOCKER_IMAGE"]
    for key, value in settings.items():
        env[f"GATEWAY_{key.upper()}"] = str(value)
    log_path = tmp / f"gateway-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "gateway"], env=env,
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
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


def unmount_under(path: str) -> None:
    """Unmount whatever is still mounted under ``path``: the workspaces a gateway that was
    killed (not stopped) left behind, before the test removes its directories."""
    prefix = path.rstrip("/") + "/"
    with open("/proc/self/mounts") as fh:
        targets = [line.split()[1].encode().decode("unicode_escape") for line in fh]
    for target in reversed(targets):
        if target.startswith(prefix):
            subprocess.run(["umount", "--lazy", target], capture_output=True, check=False)


def remove_runtime_dir(gw: Gateway) -> None:
    unmount_under(gw.env["GATEWAY_RUNTIME_DIR"])
    shutil.rmtree(gw.env["GATEWAY_RUNTIME_DIR"], ignore_errors=True)


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
        remove_runtime_dir(gw)


# ------------------------------------------------------------------ docker
DOCKER_IMAGE = os.environ.get("GATEWAY_DOCKER_IMAGE", "exec-gateway-kernel:latest")
LABEL_MANAGED = "exec-gateway.managed"
LABEL_GATEWAY = "exec-gateway.gateway"
RUN_ID = secrets.token_hex(3)  # instance ids of this run's docker gateways start with t<RUN_ID>


def docker_instance_id(name: str = "") -> str:
    """A gateway instance id unique to this test run (container names and labels carry it)."""
    return f"t{RUN_ID}-{name or secrets.token_hex(3)}"


def require_docker() -> Any:
    """A docker client when the engine and the kernel image are here; otherwise skip, or
    fail in CI (a missing engine or image is a broken build there, never a skip)."""
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
        client.images.get(DOCKER_IMAGE)
    except Exception as exc:
        unavailable(f"Docker engine or image {DOCKER_IMAGE} unavailable ({exc}); "
                    "run `make kernel-image`")
    return client


def containers_of(client: Any, instance_id: str | None = None) -> list[Any]:
    """Containers (any state) labelled by this project, of one gateway or of this run."""
    import docker.errors

    found = []
    for summary in client.api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=true"}):
        try:
            found.append(client.containers.get(summary["Id"]))
        except docker.errors.NotFound:  # removed between the list and its inspect: not left
            pass
    if instance_id is not None:
        return [c for c in found if c.labels.get(LABEL_GATEWAY) == instance_id]
    return [c for c in found if c.labels.get(LABEL_GATEWAY, "").startswith(f"t{RUN_ID}-")]


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """The engine, for tests that look at containers; at the end of the run, no container of
    any gateway this run started may be left."""
    client = require_docker()
    yield client
    left = containers_of(client)
    for c in left:
        with contextlib.suppress(Exception):  # removed meanwhile, or being removed
            c.remove(force=True)
    client.close()
    assert not left, f"containers left behind: {[c.name for c in left]}"


LAUNCHERS = [pytest.param("local", id="local"),
             pytest.param("docker", id="docker", marks=pytest.mark.docker)]


@contextlib.contextmanager
def launcher_gateway(launcher: str, tmp: Path, client: Any, **settings: Any
                     ) -> Iterator[Gateway]:
    """A gateway on ``launcher`` (``client``: the Docker client, for "docker"); afterwards it
    is stopped, and a Docker gateway must have left no container behind."""
    if launcher == "docker":
        settings = {"launcher": "docker", "instance_id": docker_instance_id(), **settings}
    gateway = start_gateway(tmp, **settings)
    try:
        yield gateway
    finally:
        gateway.stop()
        remove_runtime_dir(gateway)
    if launcher == "docker":
        left = containers_of(client, settings["instance_id"])
        assert not left, f"the gateway left containers behind: {[c.name for c in left]}"


@pytest.fixture(scope="module", params=LAUNCHERS)
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[Gateway]:
    """One gateway per launcher shared by a test module: every test using it runs against the
    local launcher, then against Docker (``-m "not docker"`` keeps the quick half)."""
    client = request.getfixturevalue("docker_client") if request.param == "docker" else None
    with launcher_gateway(request.param, tmp_path_factory.mktemp("gw"), client,
                          interrupt_grace_s=1) as gateway:
        yield gateway


@pytest.fixture
def sid(request: pytest.FixtureRequest) -> Iterator[str]:
    """A session id unique to the test; deleted from the module's gateway afterwards."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:40]
    session_id = f"t-{name}-{secrets.token_hex(3)}"
    yield session_id
    if "gw" in request.fixturenames:
        gateway: Gateway = request.getfixturevalue("gw")
        gateway.http.delete(f"/v1/sessions/{session_id}")


# ------------------------------------------------------------------ Jupyter channels client
V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
JupyterMessage = dict[str, Any]


class KernelSocket:
    """A Jupyter client on a ``/api/kernels/{id}/channels`` WebSocket, legacy or v1 framing.

    Frames are made and read with jupyter_server's own (de)serializers, so the gateway is
    checked against the reference implementation, not against itself. Every message read is
    kept in ``received`` (in order); ``wait_for`` consumes from what was not matched yet.
    """

    def __init__(self, conn: Any, *, v1: bool) -> None:
        from jupyter_client.session import Session

        self.conn = conn
        self.v1 = v1
        self.session = Session(username="test")
        self.sent: list[JupyterMessage] = []
        self.received: list[tuple[str, JupyterMessage]] = []
        self.frame_kinds: list[type] = []  # str or bytes, per frame received
        self._unmatched: list[tuple[str, JupyterMessage]] = []

    # ---------------------------------------------------------------- framing
    def encode(self, channel: str, msg: JupyterMessage) -> str | bytes:
        import json

        from jupyter_client.jsonutil import json_default
        from jupyter_server.services.kernels.connection.base import (
            serialize_binary_message,
            serialize_msg_to_ws_v1,
        )

        buffers = [bytes(b) for b in msg.get("buffers") or []]
        parts = {k: msg[k] for k in ("header", "parent_header", "metadata", "content")}
        if self.v1:
            packed = [json.dumps(parts[k], default=json_default).encode() for k in parts]
            return serialize_msg_to_ws_v1([*packed, *buffers], channel)  # type: ignore[no-any-return]
        body = {**parts, "channel": channel}
        if buffers:
            return serialize_binary_message({**body, "buffers": buffers})  # type: ignore[no-any-return]
        return json.dumps(body, default=json_default)

    def decode(self, frame: str | bytes) -> tuple[str, JupyterMessage]:
        import json

        from jupyter_server.services.kernels.connection.base import (
            deserialize_binary_message,
            deserialize_msg_from_ws_v1,
        )

        if self.v1:
            assert isinstance(frame, bytes), "v1 frames must be binary"
            channel, parts = deserialize_msg_from_ws_v1(frame)
            keys = ("header", "parent_header", "metadata", "content")
            msg = {k: json.loads(p) for k, p in zip(keys, parts[:4], strict=True)}
            msg["buffers"] = list(parts[4:])
            return channel, msg
        if isinstance(frame, bytes):
            msg = deserialize_binary_message(frame)
        else:
            msg = json.loads(frame)
            msg["buffers"] = []
        return msg.pop("channel"), msg

    # ---------------------------------------------------------------- sending
    def message(self, msg_type: str, content: dict[str, Any] | None = None, *,
                parent: JupyterMessage | None = None, buffers: list[bytes] | None = None,
                metadata: dict[str, Any] | None = None) -> JupyterMessage:
        msg: JupyterMessage = self.session.msg(msg_type, content or {},
                                               parent=(parent or {}).get("header"),
                                               metadata=metadata)
        msg["buffers"] = list(buffers or [])
        return msg

    async def send(self, channel: str, msg_type: str, content: dict[str, Any] | None = None,
                   **kw: Any) -> JupyterMessage:
        msg = self.message(msg_type, content, **kw)
        self.sent.append(msg)
        await self.send_frame(self.encode(channel, msg))
        return msg

    async def send_frame(self, frame: str | bytes) -> None:
        await self.conn.write_message(frame, binary=isinstance(frame, bytes))

    # ---------------------------------------------------------------- receiving
    async def recv(self, timeout_s: float = 30.0) -> tuple[str, JupyterMessage] | None:
        """The next message, or None once the socket is closed. Fails after ``timeout_s``."""
        import asyncio

        frame = await asyncio.wait_for(self.conn.read_message(), timeout_s)
        if frame is None:
            return None
        self.frame_kinds.append(type(frame))
        item = self.decode(frame)
        self.received.append(item)
        return item

    async def wait_for(self, match: Any, timeout_s: float = 30.0) -> JupyterMessage:
        """The first unconsumed message for which ``match(channel, msg)`` is true."""
        import time

        for i, (channel, msg) in enumerate(self._unmatched):
            if match(channel, msg):
                del self._unmatched[i]
                return msg
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                item = await self.recv(left)
            except TimeoutError:
                seen = [(ch, m["header"]["msg_type"], m["content"].get("execution_state", ""))
                        for ch, m in self._unmatched[-12:]]
                raise AssertionError(f"no matching message within {timeout_s}s; "
                                     f"last unmatched: {seen}") from None
            if item is None:
                raise AssertionError("the socket closed before a matching message came")
            if match(*item):
                return item[1]
            self._unmatched.append(item)

    async def reply_to(self, request: JupyterMessage, channel: str = "shell",
                       timeout_s: float = 30.0) -> JupyterMessage:
        """The reply to ``request`` on ``channel`` and the kernel's idle status for it."""
        msg_id = request["header"]["msg_id"]
        reply = await self.wait_for(
            lambda ch, m: ch == channel and m["parent_header"].get("msg_id") == msg_id, timeout_s)
        await self.wait_for(
            lambda ch, m: ch == "iopub" and m["header"]["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
            and m["parent_header"].get("msg_id") == msg_id, timeout_s)
        return reply

    def iopub_of(self, request: JupyterMessage) -> list[JupyterMessage]:
        """Every iopub message received so far that answers ``request``."""
        msg_id = request["header"]["msg_id"]
        return [m for ch, m in self.received
                if ch == "iopub" and m["parent_header"].get("msg_id") == msg_id]

    async def execute(self, code: str, *, allow_stdin: bool = False, timeout_s: float = 30.0
                      ) -> tuple[JupyterMessage, list[JupyterMessage]]:
        """Run ``code``: (execute_reply, the iopub messages of this request)."""
        request = await self.send("shell", "execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": allow_stdin, "stop_on_error": True})
        reply = await self.reply_to(request, timeout_s=timeout_s)
        return reply, self.iopub_of(request)

    def close(self) -> None:
        self.conn.close()


async def connect_kernel(base_url: str, kernel_id: str, token: str | None, *, v1: bool = False,
                         session_id: str | None = None) -> KernelSocket:
    """Open a channels WebSocket (``v1`` offers the v1 subprotocol). Raises HTTPClientError."""
    import urllib.parse

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = base_url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    if session_id is not None:
        url += "?" + urllib.parse.urlencode({"session_id": session_id})
    headers = {"Authorization": f"token {token}"} if token is not None else {}
    conn = await websocket_connect(HTTPRequest(url, headers=headers, request_timeout=30),
                                   subprotocols=[V1_SUBPROTOCOL] if v1 else None,
                                   max_message_size=64 * 1024 * 1024)
    return KernelSocket(conn, v1=v1)


@pytest.fixture
async def kernel_ws() -> Any:
    """``await kernel_ws(base_url, kernel_id, token, v1=..., session_id=...)``: a KernelSocket,
    closed at the end of the test."""
    opened: list[KernelSocket] = []

    async def connect(*args: Any, **kw: Any) -> KernelSocket:
        sock = await connect_kernel(*args, **kw)
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        sock.close()


# ------------------------------------------------------------------ /v1 WebSocket client
Event = dict[str, Any]


class Closed(Exception):
    """The server closed the socket."""


class Watcher:
    """One client of a session's WebSocket: every event it received, in order."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.events: list[Event] = []
        self.hello: Event = {}

    async def recv(self, timeout_s: float = 60.0) -> Event:
        frame = await asyncio.wait_for(self.conn.read_message(), timeout_s)
        if frame is None:
            raise Closed(f"closed: code={self.conn.close_code} reason={self.conn.close_reason}")
        event: Event = json.loads(frame)
        event["_t"] = time.monotonic()
        self.events.append(event)
        return event

    async def until(self, match: Callable[[Event], bool], timeout_s: float = 60.0) -> Event:
        """Read until an event matches; returns it (everything read stays in ``events``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout_s}s: {self.events[-5:]}")
            try:
                event = await self.recv(left)
            except TimeoutError:
                raise AssertionError(f"no matching event within {timeout_s}s") from None
            if match(event):
                return event

    async def result(self, rid: str, timeout_s: float = 60.0) -> Event:
        return await self.until(lambda e: e["type"] == "result" and e.get("id") == rid, timeout_s)

    async def send(self, message: Any) -> None:
        await self.conn.write_message(message if isinstance(message, str) else json.dumps(message))

    async def execute(self, rid: str, code: str, **extra: Any) -> None:
        await self.send({"type": "execute", "id": rid, "code": code, **extra})

    def run_events(self, rid: str) -> list[Event]:
        return [e for e in self.events if e.get("id") == rid]

    def stream_text(self, rid: str, name: str = "stdout") -> str:
        return "".join(e["text"] for e in self.run_events(rid)
                       if e["type"] == "stream" and e["name"] == name)

    def close(self) -> None:
        self.conn.close()


def ws_url(gw: Gateway, sid: str, *, token: str | None = "", since: int | None = None) -> str:
    query = {}
    if token is not None:
        query["token"] = token or gw.token
    if since is not None:
        query["since"] = str(since)
    base = gw.url.replace("http", "ws", 1)
    return f"{base}/v1/sessions/{sid}/ws?{urllib.parse.urlencode(query)}"


Connect = Callable[..., Any]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``await connect(gw, sid, since=..., headers=...)``: a Watcher that has read its hello;
    every one is closed at the end of the test."""
    opened: list[Watcher] = []

    async def open_watcher(gw: Gateway, sid: str, *, since: int | None = None,
                           token: str | None = "", headers: dict[str, str] | None = None
                           ) -> Watcher:
        request = HTTPRequest(ws_url(gw, sid, token=token, since=since), headers=headers or {},
                              request_timeout=60)
        conn = await websocket_connect(request, max_message_size=64 * 1024 * 1024)
        watcher = Watcher(conn)
        opened.append(watcher)
        watcher.hello = await watcher.recv()
        assert watcher.hello["type"] == "hello", watcher.hello
        return watcher

    yield open_watcher
    for watcher in opened:
        watcher.close()


def upgrade_headers(**extra: str) -> dict[str, str]:
    return {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), **extra}


def upgrade_at(url: str, **headers: str) -> httpx.Response:
    """A bare upgrade request to the ws:// ``url`` (any WebSocket of the gateway): the status
    and body the gateway answers before any upgrade."""
    with httpx.Client(timeout=60) as client:
        return client.get("http" + url.removeprefix("ws"), headers=upgrade_headers(**headers))


def upgrade(gw: Gateway, sid: str, *, token: str | None = "", **headers: str) -> httpx.Response:
    """A bare upgrade request to a session's /v1 WebSocket (see ``upgrade_at``)."""
    return upgrade_at(ws_url(gw, sid, token=token), **headers)


def start_redis(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """A real redis-server on 127.0.0.1:``port`` (no persistence), once it answers PING.
    Skips without redis-server, or fails in CI (scripts/test-deps.sh installs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed (scripts/test-deps.sh installs it)")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_until(up, 10)
    return proc


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server for the whole run (tests keep apart by key prefix)."""
    port = free_port()
    proc = start_redis(tmp_path_factory.mktemp("redis"), port)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


# ------------------------------------------------------------------ S3-compatible store
@dataclass
class S3Server:
    """A real S3-compatible server (s3s-fs) on loopback, with one bucket."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    root: Path

    def settings(self, prefix: str) -> dict[str, str]:
        """Gateway settings for a snapshot store at s3://bucket/prefix on this server."""
        return {"snapshot_url": f"s3://{self.bucket}/{prefix}",
                "snapshot_s3_endpoint_url": self.endpoint, "snapshot_s3_region": "us-east-1",
                "snapshot_s3_access_key_id": self.access_key,
                "snapshot_s3_secret_access_key": self.secret_key}

    def client(self) -> Any:
        import boto3
        import botocore.config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key,
                            config=botocore.config.Config(s3={"addressing_style": "path"}))


def s3s_fs_binary() -> str | None:
    return shutil.which("s3s-fs") or shutil.which(
        "s3s-fs", path=str(Path.home() / ".cargo" / "bin"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One s3s-fs for the whole run (tests keep apart by key prefix). Skips without the
    binary, or fails in CI (scripts/test-deps.sh builds it with cargo)."""
    binary = s3s_fs_binary()
    if binary is None:
        unavailable("s3s-fs is not installed (scripts/test-deps.sh builds it with cargo)")
    root = tmp_path_factory.mktemp("s3")
    port = free_port()
    server = S3Server(f"http://127.0.0.1:{port}", "egw-test", secrets.token_hex(16),
                      "snapshots", root)
    proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port),
                             "--access-key", server.access_key, "--secret-key",
                             server.secret_key, str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError("s3s-fs exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    try:
        wait_until(up, 10)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        proc.terminate()
        proc.wait(10)
