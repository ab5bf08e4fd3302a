"""End to end: the Jupyter kernels API and channels WebSocket, directly against the gateway.

REST shapes and status codes as Jupyter clients parse them, auth forms, ``env`` on create,
both WebSocket framings (legacy JSON, v1 binary), comms with buffers, stdin, restart and
death notices, reconnect buffering, and one session shared by REST, /v1 WebSocket and
Jupyter clients at once.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import V1_SUBPROTOCOL, Gateway, KernelSocket

KernelWs = Callable[..., Awaitable[KernelSocket]]
PROTOCOLS = pytest.mark.parametrize("v1", [False, True], ids=["legacy", "v1"])
LAST_ACTIVITY_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def jupyter_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


@pytest.fixture
def api(gw: Gateway) -> Iterator[httpx.Client]:
    """The gateway's Jupyter API with the auth scheme Jupyter clients use."""
    with httpx.Client(base_url=gw.url, headers=jupyter_headers(gw.token), timeout=60) as client:
        yield client


@pytest.fixture
async def aapi(gw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gw.url, headers=jupyter_headers(gw.token),
                                 timeout=120) as client:
        yield client


@pytest.fixture
def kernel(api: httpx.Client) -> Iterator[dict[str, Any]]:
    """A kernel made by POST /api/kernels (its model); deleted afterwards."""
    r = api.post("/api/kernels", json={"name": "python3"})
    assert r.status_code == 201, r.text
    model: dict[str, Any] = r.json()
    yield model
    api.delete(f"/api/kernels/{model['id']}")


def session_of(api: httpx.Client, kernel_id: str) -> dict[str, Any]:
    """The REST session (GET /v1/sessions) behind a kernel id."""
    found = [s for s in api.get("/v1/sessions").json()["sessions"] if s["kernel_id"] == kernel_id]
    assert len(found) == 1, found
    return found[0]


def text_of(msgs: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in msgs if m["header"]["msg_type"] == "stream")


def result_of(msgs: list[dict[str, Any]]) -> str:
    [result] = [m for m in msgs if m["header"]["msg_type"] == "execute_result"]
    return str(result["content"]["data"]["text/plain"])


async def until(predicate: Callable[[], Awaitable[Any]], timeout_s: float = 15.0) -> Any:
    """Poll the async ``predicate`` until it is truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (value := await predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.02)
    return value


def async_eq(get: Callable[[], Awaitable[dict[str, Any]]], key: str, value: Any
             ) -> Callable[[], Awaitable[bool]]:
    """A predicate for ``until``: ``(await get())[key] == value``."""
    async def check() -> bool:
        return (await get())[key] == value
    return check

async def model(aapi: httpx.AsyncClient, kernel_id: str) -> dict[str, Any]:
    r = await aapi.get(f"/api/kernels/{kernel_id}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def asession_of(aapi: httpx.AsyncClient, kernel_id: str) -> dict[str, Any]:
    """The REST session (GET /v1/sessions) behind a kernel id."""
    sessions = (await aapi.get("/v1/sessions")).json()["sessions"]
    found = [s for s in sessions if s["kernel_id"] == kernel_id]
    assert len(found) == 1, found
    return found[0]  # type: ignore[no-any-return]


async def rest_execute(aapi: httpx.AsyncClient, session_id: str, code: str) -> dict[str, Any]:
    r = await aapi.post(f"/v1/sessions/{session_id}/execute", json={"code": code})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def is_status(state: str, parent_id: str | None = None) -> Callable[[str, Any], bool]:
    def match(channel: str, msg: dict[str, Any]) -> bool:
        return (channel == "iopub" and msg["header"]["msg_type"] == "status"
                and msg["content"]["execution_state"] == state
                and (parent_id is None or msg["parent_header"].get("msg_id") == parent_id))
    return match


# ================================================================== REST
def test_api_root_reports_version(api: httpx.Client) -> None:
    r = api.get("/api")
    assert r.status_code == 200
    assert isinstance(r.json()["version"], str) and r.json()["version"]


def test_kernelspecs_list_python3_as_default(api: httpx.Client) -> None:
    body = api.get("/api/kernelspecs").json()
    assert body["default"] == "python3"
    assert list(body["kernelspecs"]) == ["python3"]
    spec = body["kernelspecs"]["python3"]
    assert spec["name"] == "python3"
    assert spec["spec"]["language"] == "python"
    assert {"argv", "display_name", "language"} <= set(spec["spec"])
    assert api.get("/api/kernelspecs/python3").json() == spec


@pytest.mark.parametrize("path", ["/api/kernelspecs/ruby",
                                  "/api/kernelspecs/python3/logo-64x64.png",
                                  "/kernelspecs/python3/logo-64x64.png"])
def test_unknown_kernelspec_and_resource_paths_are_json_404(api: httpx.Client, path: str) -> None:
    r = api.get(path)
    assert r.status_code == 404
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["error"]["code"] == "not_found"


def test_create_kernel_answers_201_with_location_and_exact_model(api: httpx.Client) -> None:
    r = api.post("/api/kernels", json={"name": "python3", "path": "nb.ipynb"})
    try:
        assert r.status_code == 201, r.text
        model = r.json()
        assert set(model) == {"id", "name", "last_activity", "execution_state", "connections"}
        assert UUID_RE.match(model["id"])
        assert model["name"] == "python3"
        assert LAST_ACTIVITY_RE.match(model["last_activity"]), model["last_activity"]
        assert model["execution_state"] == "idle"
        assert model["connections"] == 0
        assert r.headers["Location"] == f"/api/kernels/{model['id']}"
        assert api.get(r.headers["Location"]).json()["id"] == model["id"]
    finally:
        api.delete(f"/api/kernels/{r.json()['id']}")


def test_create_without_body_or_name_starts_the_default_kernel(api: httpx.Client) -> None:
    for kwargs in ({}, {"json": {}}):
        r = api.post("/api/kernels", **kwargs)
        assert r.status_code == 201, r.text
        assert api.delete(f"/api/kernels/{r.json()['id']}").status_code == 204


def test_create_with_another_kernel_name_is_404(api: httpx.Client) -> None:
    r = api.post("/api/kernels", json={"name": "ir"})
    assert r.status_code == 404
    assert "python3" in r.json()["error"]["message"]


def test_kernel_actions_answer_jupyter_status_codes(api: httpx.Client, kernel: dict) -> None:
    url = f"/api/kernels/{kernel['id']}"
    got = api.get(url)
    assert got.status_code == 200 and got.json()["id"] == kernel["id"]
    interrupted = api.post(f"{url}/interrupt")
    assert interrupted.status_code == 204 and interrupted.content == b""
    restarted = api.post(f"{url}/restart")
    assert restarted.status_code == 200
    model = restarted.json()
    assert set(model) == {"id", "name", "last_activity", "execution_state", "connections"}
    assert model["id"] == kernel["id"] and model["execution_state"] == "idle"
    assert [k["id"] for k in api.get("/api/kernels").json()].count(kernel["id"]) == 1
    deleted = api.delete(url)
    assert deleted.status_code == 204 and deleted.content == b""
    gone = api.get(url)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"
    assert kernel["id"] not in [k["id"] for k in api.get("/api/kernels").json()]


@pytest.mark.parametrize("kernel_id", [str(uuid.uuid4()), "not-a-uuid", "1234"])
def test_unknown_kernel_ids_are_json_404(gw: Gateway, kernel_id: str) -> None:
    for method, suffix in [("GET", ""), ("DELETE", ""), ("POST", "/interrupt"),
                           ("POST", "/restart")]:
        # one connection per request: the gateway closes a connection after an error raised
        # before the body was read (non-UUID paths), and a pooled client may race that close
        r = httpx.request(method, f"{gw.url}/api/kernels/{kernel_id}{suffix}",
                          headers=jupyter_headers(gw.token))
        assert r.status_code == 404, (method, suffix, r.text)
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.json()["error"]["code"] in ("not_found", "session_not_found")


def test_kernel_id_is_stable_across_restart_and_matches_the_rest_session(
    api: httpx.Client, kernel: dict
) -> None:
    session = session_of(api, kernel["id"])
    assert api.get(f"/v1/sessions/{session['id']}").json()["kernel_id"] == kernel["id"]
    restarted = api.post(f"/api/kernels/{kernel['id']}/restart").json()
    assert restarted["id"] == kernel["id"]
    after = api.get(f"/v1/sessions/{session['id']}").json()
    assert after["kernel_id"] == kernel["id"] and after["generation"] == session["generation"] + 1
    rest_restart = api.post(f"/v1/sessions/{session['id']}/restart").json()
    assert rest_restart["kernel_id"] == kernel["id"]


def test_rest_session_is_a_kernel_and_a_kernel_is_a_rest_session(
    gw: Gateway, api: httpx.Client, kernel: dict, sid: str
) -> None:
    gw.execute(sid, "from_rest = 1")
    rest_kid = api.get(f"/v1/sessions/{sid}").json()["kernel_id"]
    assert UUID_RE.match(rest_kid)
    listed = {k["id"]: k for k in api.get("/api/kernels").json()}
    assert {rest_kid, kernel["id"]} <= set(listed)
    assert set(listed[rest_kid]) == {"id", "name", "last_activity", "execution_state",
                                     "connections"}
    other = session_of(api, kernel["id"])["id"]
    assert gw.execute(other, "1 + 1")["outputs"][0]["data"]["text/plain"] == "2"


def test_kernel_list_shows_only_the_callers_sessions(gateway_factory: Any, tmp_path: Path
                                                     ) -> None:
    keys = tmp_path / "keys"
    keys.write_text("alice alice-token-0123456789\nbob bob-token-0123456789abc\n")
    gw = gateway_factory(keys_file=keys, token="")
    with httpx.Client(base_url=gw.url, headers=jupyter_headers("alice-token-0123456789"),
                      timeout=60) as alice, \
         httpx.Client(base_url=gw.url, headers=jupyter_headers("bob-token-0123456789abc"),
                      timeout=60) as bob:
        mine = alice.post("/api/kernels").json()["id"]
        rest = alice.post("/v1/sessions/by-rest/execute", json={"code": "1"})
        assert rest.status_code == 200
        rest_kid = alice.get("/v1/sessions/by-rest").json()["kernel_id"]
        theirs = bob.post("/api/kernels").json()["id"]
        assert {k["id"] for k in alice.get("/api/kernels").json()} == {mine, rest_kid}
        assert [k["id"] for k in bob.get("/api/kernels").json()] == [theirs]
        for action in [("GET", ""), ("POST", "/interrupt"), ("POST", "/restart"),
                       ("DELETE", "")]:
            r = bob.request(action[0], f"/api/kernels/{mine}{action[1]}")
            assert r.status_code == 404, action
        assert alice.get(f"/api/kernels/{mine}").status_code == 200


def raw_get(gw: Gateway, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """GET with headers sent byte for byte as given (httpx refuses a trailing space, which is
    what jupyter_server's GatewayClient sends without a token: ``token ``)."""
    conn = http.client.HTTPConnection(gw.url.removeprefix("http://"), timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_jupyter_auth_forms(gw: Gateway) -> None:
    assert raw_get(gw, "/api/kernels", jupyter_headers(gw.token))[0] == 200
    assert raw_get(gw, f"/api/kernels?token={gw.token}", {})[0] == 200
    # what GatewayClient sends when it has no token: "token" with an empty value
    for empty in ("token ", "token", "token    "):
        status, body = raw_get(gw, "/api/kernels", {"Authorization": empty})
        assert status == 401, empty
        assert body["error"]["code"] == "unauthorized"
        # treated as absent: a query token still counts
        assert raw_get(gw, f"/api/kernels?token={gw.token}", {"Authorization": empty})[0] == 200
    for bad in ({"Authorization": "token wrong-token"}, {}):
        assert raw_get(gw, "/api/kernels", bad)[0] == 401
    assert raw_get(gw, "/api/kernelspecs", {})[0] == 401


def test_create_env_passes_only_allowlisted_keys_to_the_kernel(
    gw: Gateway, api: httpx.Client
) -> None:
    env = {"KERNEL_USERNAME": "ada", "KERNEL_LAUNCH_TIMEOUT": "40",
           "KERNEL_WORKING_DIR": "/tmp", "TZ": "Europe/Paris", "SECRET_FROM_CLIENT": "leak",
           "PATH": "/evil", "LD_PRELOAD": "/evil.so"}
    r = api.post("/api/kernels", json={"name": "python3", "env": env})
    assert r.status_code == 201, r.text
    try:
        session = session_of(api, r.json()["id"])["id"]
        code = ("import os, json\nprint(json.dumps({k: os.environ.get(k) for k in "
                f"{sorted(env)!r} + ['GATEWAY_TOKEN', 'GATEWAY_PORT']}}))")
        seen = json.loads(gw.execute(session, code)["stdout"])
        assert seen.pop("TZ") == "Europe/Paris"
        assert seen.pop("PATH") != "/evil"
        assert all(value is None for value in seen.values()), seen
    finally:
        api.delete(f"/api/kernels/{r.json()['id']}")


@pytest.mark.parametrize("value", ["a\x00b", "line\nbreak", "x" * 5000])
def test_create_env_rejects_bad_allowlisted_values(api: httpx.Client, value: str) -> None:
    r = api.post("/api/kernels", json={"env": {"TZ": value}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert value not in r.text


async def test_model_reports_busy_and_connections(
    gw: Gateway, aapi: httpx.AsyncClient, kernel: dict, kernel_ws: KernelWs
) -> None:
    kid = kernel["id"]
    ws = await kernel_ws(gw.url, kid, gw.token)
    await until(async_eq(lambda: model(aapi, kid), "connections", 1))
    second = await kernel_ws(gw.url, kid, gw.token, v1=True)
    await until(async_eq(lambda: model(aapi, kid), "connections", 2))
    request = await ws.send("shell", "execute_request", {"code": "while True: pass"})
    await ws.wait_for(is_status("busy", request["header"]["msg_id"]))
    busy = await model(aapi, kid)
    assert busy["execution_state"] == "busy"
    assert (await aapi.post(f"/api/kernels/{kid}/interrupt")).status_code == 204
    reply = await ws.reply_to(request)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    await until(async_eq(lambda: model(aapi, kid), "execution_state", "idle"))
    assert (await model(aapi, kid))["last_activity"] >= busy["last_activity"]
    second.close()
    await until(async_eq(lambda: model(aapi, kid), "connections", 1))



# ================================================================== channels WebSocket
async def test_channels_rejects_bad_credentials_and_unknown_kernels_before_upgrade(
    gw: Gateway, kernel: dict, kernel_ws: KernelWs
) -> None:
    for token in (None, "wrong-token", ""):
        with pytest.raises(HTTPClientError) as info:
            await kernel_ws(gw.url, kernel["id"], token)
        assert info.value.code == 401
        assert info.value.response is not None
        assert json.loads(info.value.response.body)["error"]["code"] == "unauthorized"
    with pytest.raises(HTTPClientError) as info:
        await kernel_ws(gw.url, str(uuid.uuid4()), gw.token)
    assert info.value.code == 404
    # the query form works for the socket too
    url = gw.url.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels?token={gw.token}"
    conn = await websocket_connect(url)
    conn.close()


@PROTOCOLS
async def test_execute_over_channels(gw: Gateway, aapi: httpx.AsyncClient, kernel: dict,
                                     kernel_ws: KernelWs, v1: bool) -> None:
    ws = await kernel_ws(gw.url, kernel["id"], gw.token, v1=v1)
    assert ws.conn.selected_subprotocol == (V1_SUBPROTOCOL if v1 else None)
    info = await ws.send("shell", "kernel_info_request")
    reply = await ws.reply_to(info)
    assert reply["header"]["msg_type"] == "kernel_info_reply"
    assert reply["content"]["language_info"]["name"] == "python"
    reply, iopub = await ws.execute("x = 6 * 7\nprint('side')\nx")
    assert reply["header"]["msg_type"] == "execute_reply"
    assert reply["content"]["status"] == "ok"
    assert result_of(iopub) == "42"
    assert text_of(iopub) == "side\n"
    kinds = [m["header"]["msg_type"] for m in iopub]
    assert kinds[0] == "status" and kinds[-1] == "status"
    assert "execute_input" in kinds
    # framing: v1 is binary throughout; legacy sends text frames for buffer-less messages
    assert set(ws.frame_kinds) == ({bytes} if v1 else {str})
    # headers survive the trip: the reply's parent is exactly our request
    assert reply["parent_header"]["msg_type"] == "execute_request"
    assert reply["parent_header"]["session"] == ws.session.session
    # state is the session's: visible from REST
    session = await asession_of(aapi, kernel["id"])
    assert (await rest_execute(aapi, session["id"], "x"))["outputs"][0]["data"][
        "text/plain"] == "42"


@PROTOCOLS
async def test_control_channel_interrupts_a_running_cell(gw: Gateway, kernel: dict,
                                                         kernel_ws: KernelWs, v1: bool) -> None:
    ws = await kernel_ws(gw.url, kernel["id"], gw.token, v1=v1)
    code = "print('looping', flush=True)\nwhile True: pass"
    request = await ws.send("shell", "execute_request", {"code": code})
    # interrupt once the loop runs: a SIGINT that lands while ipykernel is still setting
    # the cell up is swallowed there, and the loop would then run forever
    await ws.wait_for(lambda ch, m: ch == "iopub" and m["header"]["msg_type"] == "stream"
                      and m["parent_header"].get("msg_id") == request["header"]["msg_id"])
    interrupt = await ws.send("control", "interrupt_request")
    control_reply = await ws.wait_for(
        lambda ch, m: ch == "control"
        and m["parent_header"].get("msg_id") == interrupt["header"]["msg_id"])
    assert control_reply["header"]["msg_type"] == "interrupt_reply"
    reply = await ws.reply_to(request)
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    errors = [m for m in ws.iopub_of(request) if m["header"]["msg_type"] == "error"]
    assert errors and errors[0]["content"]["ename"] == "KeyboardInterrupt"


COMM_TARGET = """
from comm import create_comm

def _echo_target(comm, open_msg):
    comm.send({"opened": open_msg["content"]["data"]},
              buffers=[bytes(b)[::-1] for b in open_msg["buffers"]])

    @comm.on_msg
    def _echo(msg):
        comm.send({"got": msg["content"]["data"]},
                  buffers=[bytes(b)[::-1] for b in msg["buffers"]])

get_ipython().kernel.comm_manager.register_target("echo", _echo_target)
"""


@PROTOCOLS
async def test_comms_carry_buffers_both_ways(gw: Gateway, kernel: dict, kernel_ws: KernelWs,
                                             v1: bool) -> None:
    ws = await kernel_ws(gw.url, kernel["id"], gw.token, v1=v1)
    reply, _ = await ws.execute(COMM_TARGET)
    assert reply["content"]["status"] == "ok", reply["content"]
    blob = bytes(range(256)) * 4
    comm_id = uuid.uuid4().hex
    opened = await ws.send("shell", "comm_open",
                           {"comm_id": comm_id, "target_name": "echo", "data": {"hello": [1, 2]}},
                           buffers=[b"\x00\x01open"])
    echo = await ws.wait_for(lambda ch, m: ch == "iopub" and m["header"]["msg_type"] == "comm_msg"
                             and m["parent_header"].get("msg_id") == opened["header"]["msg_id"])
    assert echo["content"]["comm_id"] == comm_id
    assert echo["content"]["data"] == {"opened": {"hello": [1, 2]}}
    assert [bytes(b) for b in echo["buffers"]] == [b"nepo\x01\x00"]

    sent = await ws.send("shell", "comm_msg", {"comm_id": comm_id, "data": {"n": 2}},
                         buffers=[b"abc", blob], metadata={"kept": True})
    back = await ws.wait_for(lambda ch, m: ch == "iopub" and m["header"]["msg_type"] == "comm_msg"
                             and m["parent_header"].get("msg_id") == sent["header"]["msg_id"])
    assert back["content"]["data"] == {"got": {"n": 2}}
    assert [bytes(b) for b in back["buffers"]] == [b"cba", blob[::-1]]
    assert back["parent_header"]["msg_type"] == "comm_msg"

    # a comm opened by the kernel reaches the client, buffers included
    reply, iopub = await ws.execute("c = create_comm(target_name='client-side', "
                                    "data={'from': 'kernel'}, buffers=[b'\\xff\\x00k'])")
    assert reply["content"]["status"] == "ok", reply["content"]
    [kernel_open] = [m for m in iopub if m["header"]["msg_type"] == "comm_open"]
    assert kernel_open["content"]["target_name"] == "client-side"
    assert kernel_open["content"]["data"] == {"from": "kernel"}
    assert [bytes(b) for b in kernel_open["buffers"]] == [b"\xff\x00k"]
    closing = await ws.send("shell", "comm_close", {"comm_id": comm_id, "data": {}})
    await ws.wait_for(is_status("idle", closing["header"]["msg_id"]))

    # framing: in legacy, exactly the messages with buffers came as binary frames
    for kind, (_, msg) in zip(ws.frame_kinds, ws.received, strict=True):
        assert kind is (bytes if v1 or msg["buffers"] else str), msg["header"]["msg_type"]


@PROTOCOLS
async def test_stdin_input_request_and_reply(gw: Gateway, kernel: dict, kernel_ws: KernelWs,
                                             v1: bool) -> None:
    ws = await kernel_ws(gw.url, kernel["id"], gw.token, v1=v1)
    request = await ws.send("shell", "execute_request", {
        "code": "name = input('who? ')\nprint('hi', name)", "allow_stdin": True})
    asked = await ws.wait_for(lambda ch, m: ch == "stdin")
    assert asked["header"]["msg_type"] == "input_request"
    assert asked["content"]["prompt"] == "who? "
    assert asked["parent_header"]["msg_id"] == request["header"]["msg_id"]
    await ws.send("stdin", "input_reply", {"value": "ada"}, parent=asked)
    reply = await ws.reply_to(request)
    assert reply["content"]["status"] == "ok"
    assert text_of(ws.iopub_of(request)).endswith("hi ada\n")


async def test_requested_restart_pushes_starting_and_the_socket_keeps_working(
    gw: Gateway, aapi: httpx.AsyncClient, kernel: dict, kernel_ws: KernelWs
) -> None:
    ws = await kernel_ws(gw.url, kernel["id"], gw.token)
    await ws.execute("gone = 1")
    r = await aapi.post(f"/api/kernels/{kernel['id']}/restart")
    assert r.status_code == 200
    # as jupyter_server: "starting", never "restarting" (JupyterLab reads that as a crash)
    await ws.wait_for(is_status("starting"))
    assert not [m for ch, m in ws.received if is_status("restarting")(ch, m)]
    reply, iopub = await ws.execute("'gone' in dir()")
    assert reply["content"]["status"] == "ok"
    assert result_of(iopub) == "False"
    assert reply["content"]["execution_count"] == 1  # a fresh interpreter


async def test_kernel_death_pushes_dead_and_the_next_request_gets_a_fresh_kernel(
    gw: Gateway, aapi: httpx.AsyncClient, kernel: dict, kernel_ws: KernelWs
) -> None:
    ws = await kernel_ws(gw.url, kernel["id"], gw.token)
    await ws.execute("kept = 1")
    generation = (await asession_of(aapi, kernel["id"]))["generation"]
    await ws.send("shell", "execute_request", {"code": "import os; os._exit(1)"})
    await ws.wait_for(is_status("dead"))
    assert (await model(aapi, kernel["id"]))["execution_state"] == "dead"
    reply, iopub = await ws.execute("'kept' in dir()")
    await ws.wait_for(is_status("restarting"))  # the gateway replaced a dead kernel
    assert reply["content"]["status"] == "ok"
    assert result_of(iopub) == "False"
    after = await asession_of(aapi, kernel["id"])
    assert after["generation"] == generation + 1
    assert after["kernel_id"] == kernel["id"]


@pytest.mark.parametrize("how", ["jupyter", "rest"])
async def test_deleting_a_kernel_closes_its_channels_for_good(
    gw: Gateway, aapi: httpx.AsyncClient, kernel_ws: KernelWs, how: str
) -> None:
    kid = (await aapi.post("/api/kernels")).json()["id"]
    session = await asession_of(aapi, kid)
    legacy = await kernel_ws(gw.url, kid, gw.token)
    v1 = await kernel_ws(gw.url, kid, gw.token, v1=True)
    await legacy.execute("1")
    url = f"/api/kernels/{kid}" if how == "jupyter" else f"/v1/sessions/{session['id']}"
    assert (await aapi.delete(url)).status_code == 204
    for ws in (legacy, v1):
        while await ws.recv() is not None:  # a status message may come first
            pass
        assert ws.conn.close_code == 4410
    # nothing a client sends can bring the kernel back
    with pytest.raises(HTTPClientError) as info:
        await kernel_ws(gw.url, kid, gw.token)
    assert info.value.code == 404
    assert kid not in [k["id"] for k in (await aapi.get("/api/kernels")).json()]
    assert session["id"] not in [
        s["id"] for s in (await aapi.get("/v1/sessions")).json()["sessions"]]


SEND_LONE_SURROGATE = r"""
import json
from jupyter_client.session import Session, json_default
k = get_ipython().kernel
raw = Session(key=k.session.key, signature_scheme=k.session.signature_scheme, username="k")
raw.pack = lambda o: json.dumps(o, default=json_default).encode()  # keeps \ud800 escaped
raw.send(k.iopub_socket, "stream", {"name": "stdout", "text": "a\ud800b\n"},
         parent=k.get_parent())
print("after", flush=True)
"""


async def test_kernel_output_with_a_lone_surrogate_reaches_every_client(
    gw: Gateway, kernel: dict, kernel_ws: KernelWs
) -> None:
    # valid JSON from the kernel that is not valid UTF-8 once decoded: the gateway must pass
    # it on (as a \u escape) and keep serving every other client and message
    legacy = await kernel_ws(gw.url, kernel["id"], gw.token)
    v1 = await kernel_ws(gw.url, kernel["id"], gw.token, v1=True)
    request = await legacy.send("shell", "execute_request", {"code": SEND_LONE_SURROGATE})
    reply = await legacy.reply_to(request)
    assert reply["content"]["status"] == "ok", reply["content"]
    assert text_of(legacy.iopub_of(request)) == "a\ud800b\nafter\n"
    await v1.wait_for(is_status("idle", request["header"]["msg_id"]))
    assert text_of(v1.iopub_of(request)) == "a\ud800b\nafter\n"


WAIT_THEN_PRINT = ("print('before', flush=True)\nv = input('go? ')\n"
                   "for i in range(3):\n    print('after', i, v, flush=True)")


async def _disconnect_while_a_cell_waits(gw: Gateway, aapi: httpx.AsyncClient, kernel_id: str,
                                         kernel_ws: KernelWs, code: str
                                         ) -> dict[str, Any]:
    """Run ``code`` (which calls input()) from a client with session_id=tab-1, drop that
    client once it is asked for input, and answer from another client. Returns the request."""
    first = await kernel_ws(gw.url, kernel_id, gw.token, session_id="tab-1")
    request = await first.send("shell", "execute_request", {"code": code, "allow_stdin": True})
    asked = await first.wait_for(lambda ch, m: ch == "stdin")
    await first.wait_for(lambda ch, m: ch == "iopub" and m["header"]["msg_type"] == "stream")
    first.close()
    await until(async_eq(lambda: model(aapi, kernel_id), "connections", 0))
    other = await kernel_ws(gw.url, kernel_id, gw.token, session_id="tab-2")
    await other.send("stdin", "input_reply", {"value": "x"}, parent=asked)
    await other.wait_for(is_status("idle", request["header"]["msg_id"]))
    other.close()
    return request


async def test_reconnect_with_the_same_session_id_replays_missed_iopub(
    gw: Gateway, aapi: httpx.AsyncClient, kernel: dict, kernel_ws: KernelWs
) -> None:
    request = await _disconnect_while_a_cell_waits(gw, aapi, kernel["id"], kernel_ws,
                                                   WAIT_THEN_PRINT)
    back = await kernel_ws(gw.url, kernel["id"], gw.token, session_id="tab-1")
    await back.wait_for(is_status("idle", request["header"]["msg_id"]))
    missed = back.iopub_of(request)
    assert text_of(missed) == "after 0 x\nafter 1 x\nafter 2 x\n"
    # a client with another session id gets nothing replayed
    fresh = await kernel_ws(gw.url, kernel["id"], gw.token, session_id="tab-3")
    reply, _ = await fresh.execute("1")
    assert not fresh.iopub_of(request)
    assert reply["content"]["status"] == "ok"


async def test_reconnect_buffer_is_bounded_and_keeps_the_newest(
    gateway_factory: Any, kernel_ws: KernelWs
) -> None:
    gw = gateway_factory(jupyter_buffer_messages=5)
    async with httpx.AsyncClient(base_url=gw.url, headers=jupyter_headers(gw.token),
                                 timeout=60) as aapi:
        kid = (await aapi.post("/api/kernels")).json()["id"]
        code = ("from IPython.display import display\nprint('before', flush=True)\n"
                "v = input()\nfor i in range(50):\n    display(i)")
        request = await _disconnect_while_a_cell_waits(gw, aapi, kid, kernel_ws, code)
        back = await kernel_ws(gw.url, kid, gw.token, session_id="tab-1")
        await back.wait_for(is_status("idle", request["header"]["msg_id"]))
        missed = back.iopub_of(request)
        assert len(missed) == 5
        shown = [m["content"]["data"]["text/plain"] for m in missed
                 if m["header"]["msg_type"] == "display_data"]
        assert shown == ["46", "47", "48", "49"]


async def test_one_session_shared_by_rest_v1_ws_and_jupyter_clients(
    gw: Gateway, aapi: httpx.AsyncClient, sid: str, kernel_ws: KernelWs
) -> None:
    await rest_execute(aapi, sid, "shared = 'from rest'")
    kid = (await aapi.get(f"/v1/sessions/{sid}")).json()["kernel_id"]
    j1 = await kernel_ws(gw.url, kid, gw.token)
    j2 = await kernel_ws(gw.url, kid, gw.token, v1=True)
    _, iopub = await j1.execute("shared")
    assert result_of(iopub) == "'from rest'"
    ws_url = gw.url.replace("http", "ws") + f"/v1/sessions/{sid}/ws"
    v1ws = await websocket_connect(HTTPRequest(
        ws_url, headers={"Authorization": f"Bearer {gw.token}"}))
    try:
        async def jupyter_runs(client: KernelSocket, name: str) -> list[dict[str, Any]]:
            requests = [await client.send("shell", "execute_request",
                                          {"code": f"print('{name}-{i}')"}) for i in range(5)]
            for i, request in enumerate(requests):
                reply = await client.reply_to(request)
                assert reply["content"]["status"] == "ok"
                assert text_of(client.iopub_of(request)) == f"{name}-{i}\n"
            return requests

        async def rest_run(i: int) -> None:
            assert (await rest_execute(aapi, sid, f"print('rest-{i}')"))["stdout"] == f"rest-{i}\n"

        async def ws_runs() -> dict[str, dict[str, Any]]:
            for i in range(3):
                await v1ws.write_message(json.dumps(
                    {"type": "execute", "id": f"ws-{i}", "code": f"print('ws-{i}')"}))
            results: dict[str, dict[str, Any]] = {}
            streams: dict[str, str] = {}
            while len(results) < 3:
                raw = await asyncio.wait_for(v1ws.read_message(), 60)
                assert raw is not None, "the /v1 socket closed"
                event = json.loads(raw)
                if event["type"] == "result" and event["id"].startswith("ws-"):
                    results[event["id"]] = event["result"]
                elif event["type"] == "stream" and str(event.get("id")).startswith("ws-"):
                    streams[event["id"]] = streams.get(event["id"], "") + event["text"]
            for i in range(3):
                assert results[f"ws-{i}"]["stdout"] == f"ws-{i}\n"
                assert streams[f"ws-{i}"] == f"ws-{i}\n"
            return results

        await asyncio.gather(jupyter_runs(j1, "j1"), jupyter_runs(j2, "j2"), ws_runs(),
                             *(rest_run(i) for i in range(4)))
    finally:
        v1ws.close()
    # each Jupyter client got replies to its own requests only...
    for client in (j1, j2):
        own = {m["header"]["msg_id"] for m in client.sent}
        replies = [m for ch, m in client.received if ch != "iopub"]
        assert len(replies) == len(client.sent)
        assert {m["parent_header"]["msg_id"] for m in replies} == own
    # ...and sees the iopub of every run in the session, whoever started it
    expected = ({f"rest-{i}\n" for i in range(4)} | {f"ws-{i}\n" for i in range(3)}
                | {f"j1-{i}\n" for i in range(5)} | {f"j2-{i}\n" for i in range(5)})
    for client in (j1, j2):
        await streams_until(client, expected)
    # and a variable set through a Jupyter client is there for REST
    await j2.execute("from_jupyter = 'j2'")
    result = await rest_execute(aapi, sid, "from_jupyter")
    assert result["outputs"][0]["data"]["text/plain"] == "'j2'"


async def streams_until(client: KernelSocket, expected: set[str], timeout_s: float = 30.0
                        ) -> None:
    """Read until the stream text of each request seen, joined, covers ``expected`` (the kernel
    may split one print into several stream messages)."""
    deadline = time.monotonic() + timeout_s
    while True:
        texts: dict[str, str] = {}
        for channel, msg in client.received:
            if channel == "iopub" and msg["header"]["msg_type"] == "stream":
                parent = msg["parent_header"]["msg_id"]
                texts[parent] = texts.get(parent, "") + msg["content"]["text"]
        if expected <= set(texts.values()):
            return
        assert time.monotonic() < deadline, f"missing: {expected - set(texts.values())}"
        assert await client.recv(deadline - time.monotonic()) is not None


def _legacy_binary(parts: list[bytes], offsets: list[int] | None = None) -> bytes:
    count = len(parts)
    if offsets is None:
        offsets = [4 * (count + 1)]
        for part in parts[:-1]:
            offsets.append(offsets[-1] + len(part))
    return struct.pack("!" + "I" * (len(offsets) + 1), count, *offsets) + b"".join(parts)


def _v1_frame(parts: list[bytes], offsets: list[int] | None = None) -> bytes:
    if offsets is None:
        offsets = [8 * (len(parts) + 2)]
        for part in parts:
            offsets.append(offsets[-1] + len(part))
    table = b"".join(n.to_bytes(8, "little") for n in (len(offsets), *offsets))
    return table + b"".join(parts)


def malformed_frames(ws: KernelSocket) -> list[str | bytes]:
    good = ws.message("execute_request", {"code": "bad = 1"})
    header = json.dumps(good["header"], default=str)
    no_id = json.dumps({k: v for k, v in good["header"].items() if k != "msg_id"}, default=str)
    if ws.v1:
        parts = [b"shell", header.encode(), b"{}", b"{}", b'{"code": "bad = 1"}']
        return [
            "a text frame on a v1 socket",
            b"",
            b"\x01\x00",
            (7).to_bytes(8, "little"),  # an offset table longer than the frame
            _v1_frame(parts, [8 * 7, 8 * 7 + 5, 10**9, 10**9, 10**9, 10**9]),  # past the end
            _v1_frame(parts, [8 * 7, 8 * 7 + 5, 8 * 7 + 2, 8 * 7 + 90, 8 * 7 + 95, 8 * 7 + 99]),
            _v1_frame([b"iopub", *parts[1:]]),
            _v1_frame([b"shell", no_id.encode(), *parts[2:]]),
            _v1_frame([b"shell", b"{not json", *parts[2:]]),
            _v1_frame([b"shell", b"[]", *parts[2:]]),
            _v1_frame([b"\xff\xfe", *parts[1:]]),
            _v1_frame(parts[:3]),  # too few parts
        ]
    body = {"header": good["header"], "parent_header": {}, "metadata": {},
            "content": {"code": "bad = 1"}, "channel": "shell"}
    return [
        "not json",
        "[1, 2]",
        "[" * 100_000,
        json.dumps({**body, "channel": "iopub"}, default=str),
        json.dumps({**body, "channel": ""}, default=str),
        json.dumps({**body, "channel": "hb"}, default=str),
        json.dumps({**body, "header": json.loads(no_id)}, default=str),
        json.dumps({**body, "header": {**json.loads(header), "msg_id": 7}}),
        json.dumps({**body, "content": [1]}, default=str),
        b"",
        b"\x00\x00",
        struct.pack("!I", 5000) + b"\x00" * 16,  # offset table longer than the frame
        _legacy_binary([json.dumps(body, default=str).encode(), b"buf"], [12, 10**6]),
        _legacy_binary([json.dumps(body, default=str).encode(), b"buf"], [12, 4]),
        _legacy_binary([b"\xff\xfe not utf-8", b"buf"]),
    ]


@PROTOCOLS
async def test_malformed_frames_are_dropped_and_the_socket_stays_usable(
    gw: Gateway, kernel: dict, kernel_ws: KernelWs, v1: bool
) -> None:
    ws = await kernel_ws(gw.url, kernel["id"], gw.token, v1=v1)
    log_start = len(gw.log())
    for frame in malformed_frames(ws):
        await ws.send_frame(frame)
    reply, iopub = await ws.execute("'bad' in dir()")
    assert reply["content"]["status"] == "ok"
    assert result_of(iopub) == "False"  # none of the malformed requests ran
    assert ws.conn.close_code is None
    log = gw.log()[log_start:]
    assert "Traceback" not in log
    assert log.count("dropped a malformed Jupyter message") == len(malformed_frames(ws))
