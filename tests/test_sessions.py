"""SessionManager behaviour through a real gateway: capacity, queue bound, reaper, shutdown."""

from __future__ import annotations

import concurrent.futures

from tests.conftest import Gateway, wait_until


def test_capacity_limits_give_clear_errors(gateway_factory) -> None:
    gw: Gateway = gateway_factory(max_sessions=3, max_sessions_per_key=2)
    assert gw.http.post("/v1/sessions", json={"session_id": "a"}).status_code == 201
    assert gw.http.post("/v1/sessions", json={"session_id": "b"}).status_code == 201
    per_key = gw.http.post("/v1/sessions/c/execute", json={"code": "1"})
    assert per_key.status_code == 429
    assert per_key.json()["error"]["code"] == "key_session_limit"
    gw.http.delete("/v1/sessions/a")
    assert gw.http.post("/v1/sessions", json={"session_id": "c"}).status_code == 201


def test_global_capacity_is_503(gateway_factory, tmp_path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k1 token-one-0123456789\nk2 token-two-0123456789\n")
    gw: Gateway = gateway_factory(max_sessions=1, keys_file=keys, token="")
    assert gw.client("token-one-0123456789").post("/v1/sessions").status_code == 201
    full = gw.client("token-two-0123456789").post("/v1/sessions")
    assert full.status_code == 503
    assert full.json()["error"]["code"] == "capacity_exceeded"


def test_bounded_queue_answers_429(gateway_factory) -> None:
    gw: Gateway = gateway_factory(max_queue_per_session=1)
    gw.execute("q", "import time")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = pool.submit(gw.client().post, "/v1/sessions/q/execute",
                              json={"code": "time.sleep(60)"})
        wait_until(lambda: gw.http.get("/v1/sessions/q").json()["state"] == "busy")
        queued = pool.submit(gw.client().post, "/v1/sessions/q/execute", json={"code": "2"})
        wait_until(lambda: gw.http.get("/v1/sessions/q").json()["queued"] == 1)
        refused = gw.http.post("/v1/sessions/q/execute", json={"code": "3"})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "queue_full"
        gw.http.post("/v1/sessions/q/interrupt")
        assert running.result().json()["status"] == "interrupted"
        assert queued.result().json()["status"] == "ok"


def test_create_on_execute_can_be_turned_off(gateway_factory) -> None:
    gw: Gateway = gateway_factory(create_on_execute="false")
    r = gw.http.post("/v1/sessions/new/execute", json={"code": "1"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"


def test_reaper_removes_idle_sessions_but_keeps_busy_ones(gateway_factory) -> None:
    gw: Gateway = gateway_factory(idle_timeout_s=1, reap_interval_s=0.2, default_timeout_s=30)
    gw.execute("idle", "1")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(gw.client().post, "/v1/sessions/busy/execute",
                           json={"code": "import time; time.sleep(3)"})
        wait_until(lambda: gw.http.get("/v1/sessions/idle").status_code == 404, 10)
        assert gw.http.get("/v1/sessions/busy").status_code == 200
        assert busy.result().json()["status"] == "ok"
    assert 'gateway_sessions_reaped_total{why="idle"}' in gw.http.get("/metrics").text


def test_max_lifetime_reaps_sessions(gateway_factory) -> None:
    gw: Gateway = gateway_factory(max_lifetime_s=1, idle_timeout_s=0, reap_interval_s=0.2)
    gw.execute("old", "1")
    wait_until(lambda: gw.http.get("/v1/sessions/old").status_code == 404, 10)


def test_sigterm_stops_every_kernel(gateway_factory) -> None:
    gw: Gateway = gateway_factory()
    pid = int(gw.execute("k", "import os; print(os.getpid())")["stdout"])
    assert gw.stop() == 0
    wait_until(lambda: not _alive(pid), 10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
