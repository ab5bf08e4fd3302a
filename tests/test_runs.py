"""End to end: background runs — execute with ``wait: false``, GET/DELETE
/v1/sessions/{id}/runs/{run_id}, long-poll, cancel, retention, and the WebSocket's view."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import Connect, Gateway, wait_until
from tests.test_rest import error_code


def submit(gw: Gateway, sid: str, code: str, **body: Any) -> dict[str, Any]:
    r = gw.http.post(f"/v1/sessions/{sid}/execute", json={"code": code, "wait": False, **body})
    assert r.status_code == 202, r.text
    accepted: dict[str, Any] = r.json()
    assert r.headers["Location"] == accepted["status_url"]
    assert accepted["status_url"] == f"/v1/sessions/{sid}/runs/{accepted['run_id']}"
    return accepted


def poll(gw: Gateway, url: str, **params: Any) -> dict[str, Any]:
    r = gw.http.get(url, params=params)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_async_run_polled_to_completion(gw: Gateway, sid: str) -> None:
    gw.execute(sid, "x = 41")
    accepted = submit(gw, sid, "import time; time.sleep(0.5); x + 1")
    assert accepted["status"] in ("queued", "running")
    done = wait_until(lambda: (info := poll(gw, accepted["status_url"]))["status"] == "finished"
                      and info, timeout_s=60)
    assert done["run_id"] == accepted["run_id"]
    assert done["result"]["outputs"][0]["data"]["text/plain"] == "42"
    assert done["result"]["session_id"] == sid and done["result"]["status"] == "ok"


def test_long_poll_returns_when_the_run_finishes(gw: Gateway, sid: str) -> None:
    gw.execute(sid, "1")
    accepted = submit(gw, sid, "import time; time.sleep(1.5); print('slept')")
    started = time.monotonic()
    early = poll(gw, accepted["status_url"], wait_s=0.3)
    assert early["status"] == "running" and early["result"] is None
    assert time.monotonic() - started >= 0.3
    done = poll(gw, accepted["status_url"], wait_s=30)
    assert done["status"] == "finished" and done["result"]["stdout"] == "slept\n"
    assert time.monotonic() - started < 20, "long-poll answered as soon as the run finished"


def test_cancel_while_queued_removes_it_and_running_one_carries_on(gw: Gateway, sid: str
                                                                    ) -> None:
    gw.execute(sid, "1")
    first = submit(gw, sid, "import time; time.sleep(2); print('first')")
    second = submit(gw, sid, "print('second')")
    third = submit(gw, sid, "print('third')")
    queued = poll(gw, second["status_url"])
    assert queued["status"] == "queued" and queued["queue_position"] == 1
    assert poll(gw, third["status_url"])["queue_position"] == 2
    assert gw.http.delete(second["status_url"]).status_code == 204
    gone = gw.http.get(second["status_url"])
    assert gone.status_code == 404 and error_code(gone) == "run_not_found"
    assert poll(gw, third["status_url"])["queue_position"] == 1
    assert poll(gw, first["status_url"], wait_s=30)["result"]["stdout"] == "first\n"
    last = poll(gw, third["status_url"], wait_s=30)
    assert last["result"]["stdout"] == "third\n"
    assert last["result"]["execution_count"] == 3, "the cancelled run never ran"


async def test_cancel_while_running_interrupts_it(gw: Gateway, sid: str, connect: Connect
                                                  ) -> None:
    gw.execute(sid, "kept = 7")
    watcher = await connect(gw, sid)
    accepted = submit(gw, sid, "import time\nprint('started', flush=True)\ntime.sleep(60)")
    assert poll(gw, accepted["status_url"])["status"] == "running"
    await watcher.until(lambda e: e["type"] == "stream" and "started" in e["text"])
    assert gw.http.delete(accepted["status_url"]).status_code == 204
    done = poll(gw, accepted["status_url"], wait_s=30)
    assert done["status"] == "finished" and done["result"]["status"] == "interrupted"
    assert done["result"]["state_preserved"] is True
    assert gw.execute(sid, "print(kept)")["stdout"] == "7\n"


def test_queue_bound_applies_before_the_202(gateway_factory: Any) -> None:
    gw = gateway_factory(max_queue_per_session=1)
    gw.execute("q", "1")
    submit(gw, "q", "import time; time.sleep(3)")
    submit(gw, "q", "1")
    full = gw.http.post("/v1/sessions/q/execute", json={"code": "1", "wait": False})
    assert full.status_code == 429 and error_code(full) == "queue_full"


def test_finished_runs_expire_after_retention(gateway_factory: Any) -> None:
    gw = gateway_factory(run_retention_s=1)
    accepted = submit(gw, "r", "print('x')")
    assert poll(gw, accepted["status_url"], wait_s=30)["status"] == "finished"
    gone = wait_until(lambda: (r := gw.http.get(accepted["status_url"])).status_code == 404
                      and r, timeout_s=15)
    assert error_code(gone) == "run_not_found"


def test_bad_wait_s_and_unknown_runs(gw: Gateway, sid: str) -> None:
    gw.execute(sid, "1")
    accepted = submit(gw, sid, "1")
    for bad in ("nan", "-1", "3600", "soon"):
        r = gw.http.get(accepted["status_url"], params={"wait_s": bad})
        assert r.status_code == 400 and error_code(r) == "validation_error", bad
    unknown = gw.http.get(f"/v1/sessions/{sid}/runs/nope")
    assert unknown.status_code == 404 and error_code(unknown) == "run_not_found"
    no_session = gw.http.get("/v1/sessions/never-made/runs/abc")
    assert no_session.status_code == 404 and error_code(no_session) == "session_not_found"


async def test_websocket_sees_background_runs_like_any_other(gw: Gateway, sid: str,
                                                             connect: Connect) -> None:
    gw.execute(sid, "1")
    watcher = await connect(gw, sid)
    accepted = submit(gw, sid, "print('from the background')")
    rid = f"run-{accepted['run_id']}"
    event = await watcher.result(rid)
    assert event["result"]["stdout"] == "from the background\n"
    assert watcher.stream_text(rid) == "from the background\n"
