"""One execution path per session: REST, /v1 WebSocket and Jupyter channels cells share the
session's FIFO, busy state, counts and watchers; a call's timeout is its own cell's."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import Connect, Gateway, KernelSocket, connect_kernel
from tests.test_jupyter import until

SLOW_CELL = "import time; time.sleep(3); print('done')"


async def _jupyter(gw: Gateway, session_id: str) -> KernelSocket:
    async with httpx.AsyncClient(base_url=gw.url, timeout=60,
                                 headers={"Authorization": f"Bearer {gw.token}"}) as http:
        r = await http.post(f"/v1/sessions/{session_id}/execute", json={"code": "import time"})
        assert r.status_code == 200, r.text
        kernel_id = (await http.get(f"/v1/sessions/{session_id}")).json()["kernel_id"]
    return await connect_kernel(gw.url, kernel_id, gw.token)


async def _rest(gw: Gateway, session_id: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, timeout=60,
                                 headers={"Authorization": f"Bearer {gw.token}"}) as http:
        return await http.post(f"/v1/sessions/{session_id}/execute", json=body)


async def _state(gw: Gateway, session_id: str) -> str:
    async with httpx.AsyncClient(base_url=gw.url, timeout=10,
                                 headers={"Authorization": f"Bearer {gw.token}"}) as http:
        return str((await http.get(f"/v1/sessions/{session_id}")).json()["state"])


async def test_rest_call_waits_for_a_jupyter_cell_and_never_interrupts_it(
        gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory()
    ws = await _jupyter(gw, "shared")
    try:
        request = await ws.send("shell", "execute_request", {"code": SLOW_CELL})
        await ws.wait_for(lambda ch, m: ch == "iopub" and m["header"]["msg_type"] == "status"
                          and m["content"]["execution_state"] == "busy"
                          and m["parent_header"].get("msg_id") == request["header"]["msg_id"])
        assert await _state(gw, "shared") == "busy"  # the Jupyter cell counts as the session's
        r = await _rest(gw, "shared", {"code": "6 * 7", "timeout_s": 1})
        reply = await ws.reply_to(request)
        assert reply["content"]["status"] == "ok"  # undisturbed: no KeyboardInterrupt
        assert "done" in "".join(m["content"].get("text", "") for m in ws.iopub_of(request))
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["status"] == "ok" and result["outputs"][0]["data"]["text/plain"] == "42"
        assert result["state_preserved"] is True
        # counted in order: import (1), the Jupyter cell (2), the REST cell (3)
        assert reply["content"]["execution_count"] == 2 and result["execution_count"] == 3
    finally:
        ws.close()


async def test_rest_call_behind_a_long_jupyter_cell_gets_429_after_max_queue_wait(
        gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(max_queue_wait_s=1)
    ws = await _jupyter(gw, "waits")
    try:
        request = await ws.send("shell", "execute_request", {"code": SLOW_CELL})
        r = await _rest(gw, "waits", {"code": "1"})
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "queue_timeout"
        assert (await ws.reply_to(request))["content"]["status"] == "ok"
        assert (await _rest(gw, "waits", {"code": "1"})).status_code == 200
    finally:
        ws.close()


async def test_reaper_keeps_a_session_busy_with_a_jupyter_cell(gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(idle_timeout_s=1, reap_interval_s=0.2, reap_connected="true")
    ws = await _jupyter(gw, "kept")
    try:
        request = await ws.send("shell", "execute_request",
                                {"code": "import time; time.sleep(4); 'survived'"})
        reply = await ws.reply_to(request)
        assert reply["content"]["status"] == "ok"
        assert await _state(gw, "kept") == "idle"  # still there after 4 s with a 1 s idle limit
    finally:
        ws.close()


async def test_cells_from_every_front_door_run_in_fifo_order_without_mixing(
        gateway_factory: Any, connect: Connect) -> None:
    gw: Gateway = gateway_factory()
    jupyter = await _jupyter(gw, "mixed")
    watcher = await connect(gw, "mixed")
    try:
        def cell(tag: str, hold_s: float = 0.0) -> str:
            return (f"import time\ntime.sleep({hold_s})\nfor i in range(5):\n"
                    f"    print('{tag}', i, flush=True)\n    time.sleep(0.02)\n"
                    f"order.append('{tag}')")
        assert (await _rest(gw, "mixed", {"code": "order = []"})).status_code == 200
        # the first cell holds the kernel while the others queue up behind it
        first = await jupyter.send("shell", "execute_request", {"code": cell("jupyter1", 3)})
        await until(lambda: _busy(gw, "mixed"))
        rest = asyncio.ensure_future(_rest(gw, "mixed", {"code": cell("rest")}))
        await until(lambda: _queued(gw, "mixed", 1))
        await watcher.execute("ws1", cell("ws"))
        await until(lambda: _queued(gw, "mixed", 2))
        second = await jupyter.send("shell", "execute_request", {"code": cell("jupyter2")})
        await watcher.result("ws1")
        assert (await rest).json()["stdout"] == "".join(f"rest {i}\n" for i in range(5))
        await jupyter.reply_to(first)
        await jupyter.reply_to(second)
        for request, tag in ((first, "jupyter1"), (second, "jupyter2")):
            text = "".join(m["content"].get("text", "") for m in jupyter.iopub_of(request)
                           if m["header"]["msg_type"] == "stream")
            assert text == "".join(f"{tag} {i}\n" for i in range(5))
        assert watcher.stream_text("ws1") == "".join(f"ws {i}\n" for i in range(5))
        order = (await _rest(gw, "mixed", {"code": "order"})).json()
        assert order["outputs"][0]["data"]["text/plain"] == \
            "['jupyter1', 'rest', 'ws', 'jupyter2']"
        # the /v1 watcher saw the Jupyter cells too, each ending in its own result event
        last = await watcher.result(f"jupyter-{second['header']['msg_id']}")
        assert last["result"]["stdout"] == "".join(f"jupyter2 {i}\n" for i in range(5))
        results = [e["id"] for e in watcher.events if e["type"] == "result"]
        assert results[-4] == f"jupyter-{first['header']['msg_id']}"
        assert results[-3].startswith("rest-") and results[-2:] == ["ws1", last["id"]]
    finally:
        jupyter.close()


async def _busy(gw: Gateway, session_id: str) -> bool:
    return await _state(gw, session_id) == "busy"


async def _queued(gw: Gateway, session_id: str, count: int) -> bool:
    """Whether ``count`` calls wait for the session's turn."""
    async with httpx.AsyncClient(base_url=gw.url, timeout=10,
                                 headers={"Authorization": f"Bearer {gw.token}"}) as http:
        return int((await http.get(f"/v1/sessions/{session_id}")).json()["queued"]) >= count


async def test_jupyter_interrupt_stops_a_rest_cell_which_reports_interrupted(
        gateway_factory: Any, connect: Connect) -> None:
    gw: Gateway = gateway_factory()
    ws = await _jupyter(gw, "stopme")
    watcher = await connect(gw, "stopme")
    try:
        rest = asyncio.ensure_future(_rest(gw, "stopme", {
            "code": "print('spinning', flush=True)\nwhile True: pass", "timeout_s": 60}))
        # interrupt once the loop runs (a SIGINT during the cell's set-up is swallowed)
        await watcher.until(lambda e: e["type"] == "stream" and "spinning" in e["text"])
        interrupt = await ws.send("control", "interrupt_request")
        await ws.wait_for(lambda ch, m: ch == "control"
                          and m["parent_header"].get("msg_id") == interrupt["header"]["msg_id"])
        result = (await rest).json()
        assert result["status"] == "interrupted" and result["state_preserved"] is True
    finally:
        ws.close()
