"""The one-shot section: POST /v1/run latency for ``print(1)`` with the warm pool on, and
grading throughput (a 10-test submission, tests per second), local and (when on) Docker.

Latency is measured two ways: with the pool full before each run (untimed wait: what a run
sees when runs are not back to back), and back to back (each run's sandbox comes from the
pool if its background refill kept up, else is started cold: the steady state of a busy
client). The seeds' one-shot services start a container per request (~0.5-3 s cold).
"""

from __future__ import annotations

import time
from typing import Any

from bench.config import BenchConfig
from bench.gateway_rest import GatewayProcess, start_gateway, stop_gateway, wait_for_pool
from bench.procs import ProcessTracker
from bench.sections import gateway_settings, log
from bench.stats import summarize_ms
from bench.target import BenchError

SUBMISSION = "def add(a, b):\n    return a + b"
TESTS = [{"name": f"t{i}", "code": f"print(add({i}, {i}))", "expected_stdout": str(2 * i)}
         for i in range(10)]


async def _run(gw: GatewayProcess, body: dict[str, Any]) -> dict[str, Any]:
    conn = gw.connection()
    try:
        r = await conn.request("POST", "/v1/run", body)
    finally:
        await conn.close()
    if r.status != 200:
        raise BenchError(f"/v1/run answered {r.status}: {r.body[:200]!r}")
    answer: dict[str, Any] = r.json()
    return answer


async def _figures(config: BenchConfig, gw: GatewayProcess) -> dict[str, Any]:
    runs = max(4, config.starts * 2)
    pooled: list[float] = []
    for _ in range(runs):
        await wait_for_pool(gw, config.pool_size)
        started = time.perf_counter()
        out = await _run(gw, {"code": "print(1)"})
        pooled.append(time.perf_counter() - started)
        if out["stdout"] != "1\n":
            raise BenchError(f"unexpected answer: {out}")
    back_to_back: list[float] = []
    await wait_for_pool(gw, config.pool_size)
    for _ in range(runs):
        started = time.perf_counter()
        await _run(gw, {"code": "print(1)"})
        back_to_back.append(time.perf_counter() - started)
    grading: list[float] = []
    for _ in range(max(2, config.starts // 2)):
        await wait_for_pool(gw, config.pool_size)
        started = time.perf_counter()
        out = await _run(gw, {"code": SUBMISSION, "tests": TESTS})
        grading.append(time.perf_counter() - started)
        if out["tests"]["passed"] != len(TESTS):
            raise BenchError(f"grading failed: {out['tests']}")
    seconds = sorted(grading)[len(grading) // 2]
    return {
        "run_print1_pool_ready_ms": summarize_ms(pooled),
        "run_print1_back_to_back_ms": summarize_ms(back_to_back),
        "grading_10_tests_s": round(seconds, 3),
        "grading_tests_per_s": round(len(TESTS) / seconds, 2),
        "pool_size": config.pool_size,
    }


async def oneshot_section(config: BenchConfig, results: dict[str, Any],
                          tracker: ProcessTracker) -> None:
    launchers = ["local", "docker"] if config.docker else ["local"]
    for launcher in launchers:
        settings = gateway_settings(config, 16, config.pool_size)
        if launcher == "docker":
            settings.update(launcher="docker", instance_id="bench-oneshot",
                            docker_image=config.docker_image)
        log(f"one-shot runs ({launcher}) ...")
        gw = await start_gateway(tracker, config.results_dir / "logs" / f"oneshot-{launcher}.log",
                                 settings)
        try:
            results["oneshot"][launcher] = await _figures(config, gw)
        finally:
            await stop_gateway(tracker, gw)
