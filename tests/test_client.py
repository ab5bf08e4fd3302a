"""End to end: the Python client (client/, exec_gateway_client) and its CLI against a real gateway
with real kernels — sync and async sessions, streaming, reconnect with since, input(), interrupt,
typed errors, retries honouring Retry-After, and its models checked against /v1/openapi.json."""

from __future__ import annotations

import asyncio
import base64
import inspect
import itertools
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from exec_gateway_client import AsyncGateway, Gateway, errors, models

from tests.conftest import Gateway as GatewayProc
from tests.conftest import start_gateway, wait_until

LINES = "".join(f"{i}\n" for i in range(10000))
# a 1x1 PNG, made by hand so no imaging library is needed in the kernel
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
SHOW_PNG = (f"from IPython.display import Image, display\nimport base64\n"
            f"display(Image(data=base64.b64decode({base64.b64encode(PNG).decode()!r})))")


def stop(gateway: GatewayProc) -> None:
    gateway.stop()
    shutil.rmtree(gateway.env["GATEWAY_RUNTIME_DIR"], ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    """One gateway for the module; its replay log holds a whole 10,000-line cell."""
    gateway = start_gateway(tmp_path_factory.mktemp("gw"), interrupt_grace_s=1,
                            ws_replay_events=50000, ws_replay_bytes=50_000_000,
                            max_code_bytes=100_000)
    yield gateway
    stop(gateway)


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    """A gateway whose sessions queue nothing: a second concurrent call gets 429 queue_full."""
    gateway = start_gateway(tmp_path_factory.mktemp("gw"), max_queue_per_session=0)
    yield gateway
    stop(gateway)


@pytest.fixture
def gw(server: GatewayProc) -> Iterator[Gateway]:
    client = Gateway(server.url, token=server.token)
    yield client
    client.close()


@pytest.fixture
def sid() -> str:
    return f"c-{secrets.token_hex(4)}"


def exists(server: GatewayProc, session_id: str) -> bool:
    status = server.http.get(f"/v1/sessions/{session_id}").status_code
    assert status in (200, 404), status
    return status == 200


def released(flag: Path) -> str:
    """Kernel code that waits (bounded) until the test creates ``flag``."""
    return (f"import os, time\n_t = time.monotonic() + 60\n"
            f"while not os.path.exists({str(flag)!r}) and time.monotonic() < _t:\n"
            f"    time.sleep(0.01)\n")


# ------------------------------------------------------------------ sessions, sync and async
def test_session_keeps_state_text_is_the_value_and_is_deleted_on_exit(
    gw: Gateway, server: GatewayProc, sid: str
) -> None:
    with gw.session(sid) as s:
        assert s.run("x = 41").status == "ok"
        r = s.run("x + 1")
        assert r.text == "42" and r.status == "ok" and r.state_preserved and r.ok
        assert r.generation == 1 and r.execution_count == 2 and r.duration_ms > 0
        assert r.data == {"text/plain": "42"} and r.images == []
        info = s.info()
        assert info.id == sid and info.state == "idle" and info.execution_count == 2
        assert sid in [i.id for i in gw.sessions()]
        assert exists(server, sid)
    assert not exists(server, sid)


def test_files_and_one_shot_runs_through_the_sdk(gw: Gateway, sid: str) -> None:
    with gw.session(sid) as s:
        info = s.files.upload("data/in.csv", b"a,b\n1,2\n")
        assert info.path == "data/in.csv" and info.size == 8
        r = s.run("open('out.txt', 'w').write(open('data/in.csv').read().upper())")
        assert r.status == "ok"
        assert [f["path"] if isinstance(f, dict) else f.path
                for f in r.files_changed] == ["out.txt"]  # type: ignore[attr-defined]
        assert s.files.download("out.txt") == b"A,B\n1,2\n"
        assert {f.path for f in s.files.list(recursive=True)} >= {"data/in.csv", "out.txt"}
        s.files.delete("out.txt")
        assert "out.txt" not in {f.path for f in s.files.list()}
    one = gw.run("print(input()[::-1])", stdin="hello")
    assert one.status == "ok" and one.stdout == "olleh\n"
    graded = gw.run("def add(a, b):\n    return a + b",
                    tests=[{"code": "print(add(5, 3))", "expected_stdout": "8"}])
    assert graded.status == "ok" and graded.tests["passed"] == 1  # type: ignore[attr-defined]


def test_keep_true_leaves_the_session_and_a_server_named_one_gets_an_id(
    gw: Gateway, server: GatewayProc, sid: str
) -> None:
    with gw.session(sid, keep=True) as s:
        s.run("y = 'kept'")
    with gw.session(sid) as again:
        assert again.run("y").text == "'kept'"
    assert not exists(server, sid)
    with gw.session(limits={"memory_mb": 256}) as named:
        assert named.id and named.info().limits.memory_mb == 256
        generated = named.id
    assert not exists(server, generated)


async def test_async_session_keeps_state_and_is_deleted_on_exit(
    server: GatewayProc, sid: str
) -> None:
    async with AsyncGateway(server.url, token=server.token) as gw:
        async with gw.session(sid) as s:
            await s.run("x = 41")
            r = await s.run("x + 1")
            assert r.text == "42" and r.status == "ok" and r.state_preserved
            assert (await s.info()).execution_count == 2
            assert sid in [i.id for i in await gw.sessions()]
            restarted = await s.restart()
            assert restarted.generation == 2
            after = await s.run("'x' in globals()")
            assert after.text == "False" and after.generation == 2
        assert not exists(server, sid)
        health = await gw.health()
        assert health.status == "ok" and health.launcher == "local"
        assert "paths" in await gw.openapi()


def test_urls_and_tokens_come_from_the_environment(
    server: GatewayProc, sid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXEC_GATEWAY_URL", server.url)
    monkeypatch.setenv("EXEC_GATEWAY_TOKEN", server.token)
    with Gateway() as gw, gw.session(sid) as s:
        assert s.run("6 * 7").text == "42"
    assert Gateway().config.url == server.url


def test_hibernate_then_the_next_run_restores_and_says_so(gw: Gateway, sid: str) -> None:
    with gw.session(sid) as s:
        s.run("kept = 41; gen = (i for i in [])")
        snap = s.hibernate()
        assert snap.state == "hibernated" and snap.variables == ["kept"]
        assert [v.name for v in snap.skipped] == ["gen"]
        assert s.info().state == "hibernated"
        r = s.run("kept + 1")
        assert r.text == "42" and r.generation == 2 and not r.state_preserved
        assert r.restored is not None and r.restored.variables == ["kept"]
        assert s.run("kept").restored is None


async def test_async_hibernate(server: GatewayProc, sid: str) -> None:
    async with AsyncGateway(server.url, token=server.token) as gw, gw.session(sid) as s:
        await s.run("kept = 1")
        assert (await s.hibernate()).variables == ["kept"]
        assert [i.state for i in await gw.sessions() if i.id == sid] == ["hibernated"]
        assert (await s.run("kept")).restored is not None


def test_restart_replaces_the_interpreter_and_health_answers(gw: Gateway, sid: str) -> None:
    with gw.session(sid) as s:
        s.run("z = 1")
        info = s.restart()
        assert info.generation == 2
        r = s.run("'z' in globals()")
        assert r.text == "False" and r.generation == 2
    health = gw.health()
    assert health.status == "ok" and health.launcher == "local"


def test_images_outputs_and_errors_are_read_from_the_result(gw: Gateway, sid: str) -> None:
    with gw.session(sid) as s:
        r = s.run(SHOW_PNG)
        assert r.images == [PNG]
        assert r.outputs[0].type == "display_data" and r.outputs[0].image == ("image/png", PNG)
        failed = s.run("def f():\n    return 1 / 0\nf()")
        assert failed.status == "error" and failed.state_preserved
        assert failed.error is not None and failed.error.ename == "ZeroDivisionError"
        with pytest.raises(errors.CellError) as caught:
            failed.raise_for_status()
        assert caught.value.ename == "ZeroDivisionError"
        assert "division by zero" in caught.value.traceback and "f()" in caught.value.traceback
        assert caught.value.result is failed
        assert s.run("1").raise_for_status().text == "1"
        slow = s.run("import time; time.sleep(30)", timeout_s=0.5)
        assert slow.status == "timeout"
        with pytest.raises(errors.CellError, match="timeout"):
            slow.raise_for_status()


# ------------------------------------------------------------------ streaming
def test_on_stdout_gets_each_line_while_the_cell_still_runs(
    gw: Gateway, sid: str, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    got: list[tuple[str, str]] = []
    outputs: list[models.Output] = []

    def on_stdout(text: str) -> None:
        got.append(("out", text))
        flag.touch()  # the cell waits for this: its first line came before its end

    with gw.session(sid) as s:
        code = ("import sys\nprint('first', flush=True)\n" + released(flag)
                + "print('late', file=sys.stderr, flush=True)\n" + SHOW_PNG + "\n6 * 7")
        r = s.run(code, on_stdout=on_stdout, on_stderr=lambda t: got.append(("err", t)),
                  on_output=outputs.append)
    assert got == [("out", "first\n"), ("err", "late\n")]
    assert [o.type for o in outputs] == ["display_data", "execute_result"]
    assert outputs[0].image == ("image/png", PNG) and outputs[1].text == "42"
    assert r.status == "ok" and r.stdout == "first\n" and r.text == "42"


def test_ten_thousand_lines_reach_on_stdout_in_order_and_complete(gw: Gateway, sid: str) -> None:
    chunks: list[str] = []
    with gw.session(sid) as s:
        r = s.run("for i in range(10000): print(i, flush=True)", on_stdout=chunks.append)
    assert "".join(chunks) == LINES
    assert r.stdout == LINES and r.status == "ok"


async def test_async_ten_thousand_lines_with_a_coroutine_callback(
    server: GatewayProc, sid: str
) -> None:
    chunks: list[str] = []

    async def on_stdout(text: str) -> None:
        chunks.append(text)

    async with AsyncGateway(server.url, token=server.token) as gw, gw.session(sid) as s:
        r = await s.run("for i in range(10000): print(i, flush=True)", on_stdout=on_stdout)
    assert "".join(chunks) == LINES and r.stdout == LINES


class Proxy:
    """A TCP proxy to the gateway whose open connections a test can cut (as a network that
    drops them would), counting the connections it accepted."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepted = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self.accepted += 1
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._open.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        """Drop every open connection now (no close handshake)."""
        with self._lock:
            victims = list(self._open)
        for s in victims:
            self._close(s)

    def close(self) -> None:
        self._listener.close()
        self.cut()


@pytest.fixture
def proxy(server: GatewayProc) -> Iterator[Proxy]:
    p = Proxy(int(server.url.rsplit(":", 1)[1]))
    yield p
    p.close()


def cutting_cell(flag: Path) -> str:
    """10,000 lines; after line 5000 the cell waits for ``flag``, which the test makes only
    after cutting the connection, so the cut always lands mid-cell."""
    return (f"import os, time\nfor i in range(10000):\n    print(i, flush=True)\n"
            f"    if i == 5000:\n        _t = time.monotonic() + 60\n"
            f"        while not os.path.exists({str(flag)!r}) and time.monotonic() < _t:\n"
            f"            time.sleep(0.01)\n")


def test_a_socket_cut_mid_cell_is_resumed_with_nothing_lost_or_doubled(
    proxy: Proxy, server: GatewayProc, sid: str, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    chunks: list[str] = []
    cut_at: list[int] = []

    def on_stdout(text: str) -> None:
        chunks.append(text)
        if not cut_at and sum(c.count("\n") for c in chunks) >= 2000:
            cut_at.append(proxy.accepted)
            proxy.cut()
            flag.touch()

    with Gateway(proxy.url, token=server.token) as gw, gw.session(sid) as s:
        r = s.run(cutting_cell(flag), on_stdout=on_stdout)
    assert cut_at, "the cut never happened"
    assert proxy.accepted > cut_at[0], "the client did not reconnect"
    assert "".join(chunks) == LINES
    assert r.stdout == LINES and r.status == "ok"


async def test_async_socket_cut_mid_cell_is_resumed_with_nothing_lost_or_doubled(
    proxy: Proxy, server: GatewayProc, sid: str, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    chunks: list[str] = []
    cut_at: list[int] = []

    def on_stdout(text: str) -> None:
        chunks.append(text)
        if not cut_at and sum(c.count("\n") for c in chunks) >= 2000:
            cut_at.append(proxy.accepted)
            proxy.cut()
            flag.touch()

    async with AsyncGateway(proxy.url, token=server.token) as gw, gw.session(sid) as s:
        r = await s.run(cutting_cell(flag), on_stdout=on_stdout)
    assert cut_at and proxy.accepted > cut_at[0]
    assert "".join(chunks) == LINES and r.stdout == LINES


def test_cell_stream_drops_replayed_events_and_resyncs_after_a_dropped_notice() -> None:
    from exec_gateway_client.stream import CellStream, Resync

    run = CellStream(models.ExecuteRequest(code="x"))
    rid = run.request_id
    assert '"type": "execute"' in run.execute_frame() and rid in run.execute_frame()

    def out(seq: int, text: str, rid: str = rid) -> dict[str, Any]:
        return {"type": "stream", "name": "stdout", "text": text, "seq": seq, "id": rid}

    assert run.accept({"type": "hello", "last_seq": 5}) is None and run.since == 5
    assert run.accept(out(6, "a")) is not None
    assert run.accept(out(7, "b", rid="someone-else")) is None  # another watcher's run
    assert run.accept({"type": "hello", "last_seq": 9}) is None  # a reconnect with since=7
    assert run.accept(out(6, "a")) is None  # replayed, seen already
    assert run.accept(out(8, "c")) == out(8, "c") and run.since == 8
    with pytest.raises(Resync):
        run.accept({"type": "dropped", "count": 3, "from_seq": 9, "to_seq": 11})
    assert run.accept({"type": "gap", "from_seq": 9, "to_seq": 10}) is None
    assert run.lost == [(9, 10)]
    with pytest.raises(errors.ConnectionLost):  # a log that restarted: the run is gone
        run.accept({"type": "hello", "last_seq": 2})
    refused = CellStream(models.ExecuteRequest(code="x"))
    with pytest.raises(errors.QueueFull):
        refused.accept({"type": "error", "id": refused.request_id, "code": "queue_full",
                        "message": "busy"})
    result = {"session_id": "s", "execution_count": 1, "generation": 1, "status": "ok",
              "state_preserved": True, "duration_ms": 1.0, "memory_peak_mb": 12.5}
    assert run.accept({"type": "result", "id": rid, "seq": 12, "result": result}) is not None
    assert run.result is not None and run.result.memory_peak_mb == 12.5


# ------------------------------------------------------------------ input() and interrupt
def test_on_input_answers_input_calls_callable_or_list(gw: Gateway, sid: str) -> None:
    prompts: list[str] = []

    def answer(prompt: str) -> str:
        prompts.append(prompt)
        return f"answer{len(prompts)}"

    with gw.session(sid) as s:
        r = s.run("a = input('first? ')\nb = input('second? ')\nprint(a, b)", on_input=answer)
        assert prompts == ["first? ", "second? "]
        assert r.stdout.endswith("answer1 answer2\n") and r.status == "ok"
        listed = s.run("print(input(), input())", on_input=["x", "y"])  # REST: stdin lines
        assert listed.stdout == "x y\n"
        streamed = s.run("print(input())", on_input=["z"], on_stdout=lambda t: None)
        assert streamed.stdout == "z\n"


async def test_async_on_input_may_be_a_coroutine(server: GatewayProc, sid: str) -> None:
    async def answer(prompt: str) -> str:
        return prompt.upper()

    async with AsyncGateway(server.url, token=server.token) as gw, gw.session(sid) as s:
        r = await s.run("print(input('name: '))", on_input=answer)
        listed = await s.run("print(input())", on_input=["from a list"])
    assert r.stdout.endswith("NAME: \n") and listed.stdout == "from a list\n"


def test_keyboard_interrupt_interrupts_the_cell_and_keeps_the_session(
    gw: Gateway, sid: str
) -> None:
    def on_stdout(text: str) -> None:
        raise KeyboardInterrupt

    with gw.session(sid) as s:
        s.run("kept = 'yes'")
        with pytest.raises(KeyboardInterrupt):
            s.run("import time\nprint('go', flush=True)\nwhile True: time.sleep(0.01)",
                  on_stdout=on_stdout)
        wait_until(lambda: s.info().state == "idle", 20)
        r = s.run("kept")
        assert r.text == "'yes'" and r.state_preserved


async def test_cancelling_an_async_run_interrupts_the_cell(server: GatewayProc, sid: str) -> None:
    async with AsyncGateway(server.url, token=server.token) as gw, gw.session(sid) as s:
        started = asyncio.Event()
        task = asyncio.create_task(s.run(
            "import time\nprint('go', flush=True)\nwhile True: time.sleep(0.01)",
            on_stdout=lambda t: started.set()))
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 20
        while (await s.info()).state != "idle":
            assert time.monotonic() < deadline, "the cell was not interrupted"
            await asyncio.sleep(0.02)
        assert (await s.run("1 + 1")).text == "2"


# ------------------------------------------------------------------ typed errors and retries
def test_typed_errors_for_401_404_400_413(server: GatewayProc, gw: Gateway, sid: str) -> None:
    with Gateway(server.url, token="wrong") as bad, pytest.raises(errors.Unauthorized) as e401:
        bad.sessions()
    assert e401.value.status == 401 and e401.value.code == "unauthorized"
    with pytest.raises(errors.SessionNotFound) as e404:
        gw.session("no-such-session").interrupt()
    assert e404.value.status == 404 and isinstance(e404.value, errors.NotFound)
    with pytest.raises(errors.BadRequest) as e400:
        gw.session("bad id!").run("1")
    assert e400.value.status == 400
    with gw.session(sid) as s, pytest.raises(errors.PayloadTooLarge) as e413:
        s.run("#" * 200_000)
    assert e413.value.code == "payload_too_large"
    with pytest.raises(errors.NotFound):
        gw.request("GET", "/v1/no-such-endpoint")


async def test_async_typed_errors(server: GatewayProc) -> None:
    async with AsyncGateway(server.url, token="wrong") as bad:
        with pytest.raises(errors.Unauthorized):
            await bad.sessions()
        with pytest.raises(errors.Unauthorized):
            await bad.session("s").run("1", on_stdout=print)
    async with AsyncGateway(server.url, token=server.token) as gw:
        with pytest.raises(errors.SessionNotFound):
            await gw.session("no-such-session").interrupt()


def test_unreachable_gateway_is_a_transport_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with Gateway(f"http://127.0.0.1:{port}", token="t", retries=1) as gw:
        with pytest.raises(errors.TransportError):
            gw.health()


class Recorder(httpx.HTTPTransport):
    """An httpx transport that notes (time, method, path, status) of every answer."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, str, str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.seen.append((time.monotonic(), request.method, request.url.path,
                          response.status_code))
        return response


def test_429_queue_full_is_typed_and_retried_after_retry_after(
    busy_server: GatewayProc, sid: str, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    holder = Gateway(busy_server.url, token=busy_server.token)
    s = holder.session(sid)
    s.ensure()
    first: list[Any] = []
    running = threading.Thread(target=lambda: first.append(s.run(released(flag) + "'done'")))
    running.start()
    try:
        wait_until(lambda: s.info().state == "busy", 30)
        with Gateway(busy_server.url, token=busy_server.token, retries=0) as impatient:
            with pytest.raises(errors.QueueFull) as refused:
                impatient.session(sid).run("1")
            assert refused.value.status == 429 and refused.value.retry_after_s == 1.0
            with pytest.raises(errors.QueueFull):  # the same over the WebSocket
                impatient.session(sid).run("1", on_stdout=print)
        recorder = Recorder()
        second: list[Any] = []
        patient = Gateway(busy_server.url, token=busy_server.token, transport=recorder)
        retrying = threading.Thread(target=lambda: second.append(patient.session(sid).run("2")))
        retrying.start()
        wait_until(lambda: any(status == 429 for *_, status in recorder.seen), 30)
        flag.touch()
        retrying.join(60)
        running.join(60)
        patient.close()
    finally:
        flag.touch()
        running.join(60)
    assert first[0].text == "'done'" and second[0].text == "2"
    executes = [(t, status) for t, method, path, status in recorder.seen
                if path.endswith("/execute")]
    assert executes[-1][1] == 200 and executes[0][1] == 429
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(executes)]
    assert all(gap >= 0.9 for gap in gaps), gaps  # Retry-After: 1, not the 0.25 s backoff
    s.delete()
    holder.close()


def test_retry_policy_honours_retry_after_and_never_replays_a_maybe_run_cell() -> None:
    config = Gateway("http://127.0.0.1:1", token="t").config
    busy = errors.QueueFull("busy", retry_after_s=3.0)
    assert config.retry_delay(0, busy, replay_safe=False) == 3.0
    assert config.retry_delay(config.retries, busy, replay_safe=False) is None
    start_failed = errors.KernelStartFailed("no kernel", retry_after_s=1.0)
    assert config.retry_delay(0, start_failed, replay_safe=False) == 1.0
    unreachable = errors.OwnerUnreachable("may have run", retry_after_s=1.0)
    assert config.retry_delay(0, unreachable, replay_safe=False) is None
    assert config.retry_delay(0, unreachable, replay_safe=True) == 1.0
    assert config.retry_delay(0, errors.SessionNotFound("x"), replay_safe=True) is None
    assert errors.parse_retry_after("2") == 2.0 and errors.parse_retry_after("soon") is None


# ------------------------------------------------------------------ models agree with the server
MODEL_ALIASES = {"LimitsRequest": "Limits",  # the client's request twin of a response model
                 "RequestedLimits": "Limits"}  # the server's (its maxima written in)


def _atoms(schema: dict[str, Any], defs: dict[str, Any]) -> set[Any]:
    """A JSON schema as a set of comparable type atoms."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        target = defs[name]
        if "enum" in target:
            return {("string", frozenset(target["enum"]))}
        return {("model", MODEL_ALIASES.get(name, name))}
    if "anyOf" in schema:
        return set().union(*(_atoms(s, defs) for s in schema["anyOf"]))
    if "enum" in schema:
        return {("string", frozenset(schema["enum"]))}
    if "const" in schema:
        return {("string", frozenset([schema["const"]]))}
    kind = schema.get("type")
    if kind is None:
        return {("any",)}
    if kind == "array":
        return {("array", frozenset(_atoms(schema.get("items", {}), defs)))}
    if kind == "object":
        return {("object",)}
    return {(kind,)}


def _accepts(wide: set[Any], narrow: set[Any]) -> bool:
    """Whether every value of type ``narrow`` is a value of type ``wide``."""
    def one(w: Any, n: Any) -> bool:
        if w == ("any",) or w == n:
            return True
        if w == ("number",) and n == ("integer",):
            return True
        if w[0] == "string" and n[0] == "string":
            return len(w) == 1 or (len(n) == 2 and n[1] <= w[1])
        if w[0] == "array" and n[0] == "array":
            return _accepts(set(w[1]), set(n[1]))
        return w == ("object",) and n[0] == "model"
    return all(any(one(w, n) for w in wide) for n in narrow)


RESPONSE_MODELS = {"ExecuteResult": models.ExecuteResult, "Output": models.Output,
                   "ErrorInfo": models.ErrorInfo, "SessionInfo": models.SessionInfo,
                   "SessionList": models.SessionList, "Limits": models.Limits,
                   "Health": models.Health, "ErrorBody": models.ErrorBody,
                   "ErrorDetail": models.ErrorDetail, "HibernateResult": models.HibernateResult,
                   "RestoreReport": models.RestoreReport,
                   "SkippedVariable": models.SkippedVariable}
REQUEST_MODELS = {"ExecuteRequest": models.ExecuteRequest, "CreateSession": models.CreateSession,
                  "Limits": models.LimitsRequest}


def test_client_models_agree_with_the_servers_openapi_document(gw: Gateway) -> None:
    server_defs = gw.openapi()["components"]["schemas"]
    checked = 0
    for name, model in RESPONSE_MODELS.items():  # we read every field the server sends
        server, ours = server_defs[name], model.model_json_schema(mode="validation")
        ours_defs = ours.get("$defs", {})
        for field, schema in server["properties"].items():
            assert field in ours["properties"], f"{name}.{field} is not read by the client"
            assert _accepts(_atoms(ours["properties"][field], ours_defs),
                            _atoms(schema, server_defs)), f"{name}.{field}: types differ"
            checked += 1
        extra = set(ours["properties"]) - set(server["properties"])
        assert extra <= models.PENDING_FIELDS.get(name, set()), f"{name}: {extra} unknown"
        assert set(ours.get("required", [])) <= set(server.get("required", [])), name
    for name, model in REQUEST_MODELS.items():  # and send only what the server accepts
        server, ours = server_defs[name], model.model_json_schema(mode="serialization")
        ours_defs = ours.get("$defs", {})
        for field, schema in ours["properties"].items():
            assert field in server["properties"], f"{name}.{field} is unknown to the server"
            assert _accepts(_atoms(server["properties"][field], server_defs),
                            _atoms(schema, ours_defs)), f"{name}.{field}: types differ"
            checked += 1
        assert set(server.get("required", [])) <= set(ours.get("required", [])), name
    assert checked > 40


def test_every_server_error_code_has_a_client_class_with_its_status() -> None:
    from gateway import errors as server_errors

    def subclasses(cls: type) -> list[type]:
        return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]

    codes = {(c.code, c.status) for c in subclasses(server_errors.GatewayError)}
    assert ("queue_full", 429) in codes and len(codes) > 15
    for code, status in codes:
        cls = errors.error_class(status, code)
        assert cls.code == code and cls.status == status, (code, status, cls)
    assert errors.error_class(418, "teapot") is errors.APIError
    assert errors.error_class(429, "new_code") is errors.TooManyRequests
    assert inspect.isclass(errors.CapacityExceeded) and errors.CapacityExceeded.status == 503


# ------------------------------------------------------------------ the CLI
def cli(server: GatewayProc, *args: str) -> list[str]:
    exe = Path(sys.executable).parent / "exec-gateway-client"
    return [str(exe), *args, "--url", server.url]


def cli_env(server: GatewayProc) -> dict[str, str]:
    return {**os.environ, "EXEC_GATEWAY_TOKEN": server.token}


def test_cli_run_streams_live_and_exits_with_the_cells_status(
    server: GatewayProc, sid: str, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    script = tmp_path / "script.py"
    script.write_text("print('first', flush=True)\n" + released(flag) + "print('second')\n")
    proc = subprocess.Popen(cli(server, "run", str(script), "--session", sid),
                            env=cli_env(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "first\n"  # before the cell could end: it waits
        flag.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        flag.touch()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out == "second\n"
    failing = tmp_path / "fail.py"
    failing.write_text("x = 1\nraise ValueError('bad input')\n")
    done = subprocess.run(cli(server, "run", str(failing), "--session", sid), env=cli_env(server),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "ValueError" in done.stderr and "bad input" in done.stderr
    slow = subprocess.run(cli(server, "run", "-", "--timeout", "0.5"), env=cli_env(server),
                          input="import time\ntime.sleep(30)\n", capture_output=True, text=True,
                          timeout=60)
    assert slow.returncode == 124, slow.stderr
    with Gateway(server.url, token=server.token) as gw:  # a named session was kept
        assert gw.session(sid).run("x").text == "1"
        gw.session(sid).delete()
    refused = subprocess.run(cli(server, "sessions"), capture_output=True, text=True,
                             env={**os.environ, "EXEC_GATEWAY_TOKEN": "wrong"}, timeout=60)
    assert refused.returncode == 2 and "unauthorized" in refused.stderr


def test_cli_repl_runs_cells_and_keeps_state(server: GatewayProc, sid: str) -> None:
    session_input = "x = 20\nfor i in range(2):\n    x += 1\n\nprint(x * 2)\n"
    done = subprocess.run(cli(server, "repl", "--session", sid), env=cli_env(server),
                          input=session_input, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "44\n" in done.stdout
    with Gateway(server.url, token=server.token) as gw:
        assert gw.session(sid).run("x").text == "22"
        gw.session(sid).delete()
