"""Several gateway replicas sharing one Redis: a session is served through any of them."""

from __future__ import annotations

import concurrent.futures
import secrets
import signal

import pytest

from tests.conftest import Gateway, wait_until


@pytest.fixture
def replicas(gateway_factory, redis_url: str) -> tuple[Gateway, Gateway]:
    """Two replicas that share Redis but not their socket directories (as on two hosts)."""
    token, prefix = secrets.token_urlsafe(24), f"rep-{secrets.token_hex(3)}:"
    a = gateway_factory(registry_url=redis_url, redis_key_prefix=prefix, instance_id="rep-a",
                        token=token, pool_size=0)
    b = gateway_factory(registry_url=redis_url, redis_key_prefix=prefix, instance_id="rep-b",
                        token=token, pool_size=0)
    return a, b


def test_session_made_on_a_is_served_by_b(replicas: tuple[Gateway, Gateway]) -> None:
    a, b = replicas
    assert a.execute("shared", "x = 'from a'")["status"] == "ok"
    result = b.execute("shared", "x")
    assert result["outputs"][0]["data"]["text/plain"] == "'from a'"
    assert b.http.get("/v1/sessions/shared").json()["id"] == "shared"
    assert "shared" in [s["id"] for s in b.http.get("/v1/sessions").json()["sessions"]]
    assert b.http.post("/v1/sessions", json={"session_id": "shared"}).status_code == 409
    assert b.http.post("/v1/sessions/shared/restart").json()["generation"] == 2
    assert b.http.delete("/v1/sessions/shared").status_code == 204
    assert a.http.get("/v1/sessions/shared").status_code == 404


def test_calls_through_both_replicas_are_serialized(replicas: tuple[Gateway, Gateway]) -> None:
    a, b = replicas
    a.execute("fifo", "log = []")
    code = "import time\nlog.append('start {n}'); time.sleep(0.05); log.append('end {n}')"

    def call(args: tuple[Gateway, int]) -> dict:
        gw, n = args
        return gw.client().post("/v1/sessions/fifo/execute",
                                json={"code": code.format(n=n)}).json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, [(a if n % 2 else b, n) for n in range(8)]))
    assert {r["status"] for r in results} == {"ok"}
    log = eval(a.execute("fifo", "log")["outputs"][0]["data"]["text/plain"])
    pairs = [log[i:i + 2] for i in range(0, len(log), 2)]
    assert all(p[0].replace("start", "end") == p[1] for p in pairs), log  # never interleaved


def test_replica_whose_owner_is_gone_answers_clearly(replicas: tuple[Gateway, Gateway]) -> None:
    a, b = replicas
    a.execute("orphan", "1")
    a.stop(signal.SIGKILL)  # a crash: the record stays, its owner is gone
    r = b.http.post("/v1/sessions/orphan/execute", json={"code": "1"})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "owner_unreachable"


def test_other_replicas_see_recent_activity(gateway_factory, redis_url: str) -> None:
    token, prefix = secrets.token_urlsafe(24), f"act-{secrets.token_hex(3)}:"
    common = {"registry_url": redis_url, "redis_key_prefix": prefix, "token": token,
              "pool_size": 0, "reap_interval_s": 0.2}
    a = gateway_factory(instance_id="act-a", **common)
    b = gateway_factory(instance_id="act-b", **common)
    a.execute("busy", "1")
    a.execute("busy", "2")

    def count_seen_by_b() -> int:
        sessions = b.http.get("/v1/sessions").json()["sessions"]
        return next((s["execution_count"] for s in sessions if s["id"] == "busy"), 0)

    wait_until(lambda: count_seen_by_b() == 2, 10)
