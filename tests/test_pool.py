"""The warm pool: sessions take started kernels, never share them, and the pool refills."""

from __future__ import annotations

import re

from tests.conftest import Gateway, wait_until


def metric(gw: Gateway, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", gw.http.get("/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_sessions_take_pooled_kernels_and_never_share_them(gateway_factory) -> None:
    gw: Gateway = gateway_factory(pool_size=2)
    wait_until(lambda: metric(gw, "gateway_pool_size") == 2, 30)
    pids = set()
    for name in ("p1", "p2", "p3"):
        result = gw.execute(name, "import os; print(os.getpid())")
        pids.add(int(result["stdout"]))
    assert len(pids) == 3
    assert metric(gw, "gateway_pool_hits_total") >= 2
    gw.http.delete("/v1/sessions/p1")
    again = int(gw.execute("p1", "import os; print(os.getpid())")["stdout"])
    assert again not in pids  # a pooled kernel is never reused after its session
    wait_until(lambda: gw.http.get("/healthz").json()["pool_size"] == 2, 30)


def test_pool_counts_against_capacity(gateway_factory) -> None:
    gw: Gateway = gateway_factory(pool_size=4, max_sessions=3)
    wait_until(lambda: metric(gw, "gateway_pool_size") == 3, 30)
    gw.execute("c1", "1")
    gw.execute("c2", "1")
    wait_until(lambda: metric(gw, "gateway_pool_size") == 1, 30)


def test_custom_limits_bypass_the_pool(gateway_factory) -> None:
    gw: Gateway = gateway_factory(pool_size=1)
    wait_until(lambda: metric(gw, "gateway_pool_size") == 1, 30)
    created = gw.http.post("/v1/sessions", json={"session_id": "own", "limits": {"pids": 64}})
    assert created.status_code == 201
    assert metric(gw, "gateway_pool_hits_total") == 0
    assert metric(gw, "gateway_pool_size") == 1
