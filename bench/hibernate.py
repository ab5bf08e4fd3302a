"""Hibernation: hibernate and restore times for a session holding a 10 MB workspace and a
50 MB DataFrame, and what a hibernated session costs.

One local gateway (pool of one, file snapshot store on the host's disk, snapshot_max_mb
raised to fit), kernels from the project's kernel environment (``.venv-kernel``, which has
pandas) when it is built, else the bench's own interpreter with a numpy array of the same
size (noted). Each round: POST .../hibernate (timed), then the next execute, which restores
(timed end to end; the restore's own share is that minus a warm execute). Memory: the
gateway's RSS and its kernels' count with ``hibernated_sessions`` small sessions live, then
all hibernated (the target is no kernel and nothing but the registry record).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from bench.config import BenchConfig
from bench.gateway_rest import ROOT, GatewayProcess, start_gateway, stop_gateway
from bench.procs import ProcessTracker, kernel_pids, memory_kb
from bench.sections import gateway_settings, log
from bench.stats import summarize_ms

MiB = 2**20
SETUP = """
import os
try:
    import pandas as pd, numpy as np
    df = pd.DataFrame({f"c{i}": np.random.default_rng(i).random(655_360) for i in range(10)})
    kind = "pandas.DataFrame"
except ImportError:
    import numpy as np
    df = np.random.default_rng(0).random(6_553_600)
    kind = "numpy.ndarray (no pandas in this kernel)"
os.makedirs("data", exist_ok=True)
for i in range(10):
    with open(f"data/part{i}.bin", "wb") as fh:
        fh.write(os.urandom(1024 * 1024))
print(kind, round(df.memory_usage(deep=True).sum() / 2**20 if hasattr(df, "memory_usage")
                  else df.nbytes / 2**20, 1))
"""


def _kernel_python() -> str | None:
    candidate = ROOT / ".venv-kernel" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


async def _post(client: httpx.AsyncClient, path: str, **kw: Any) -> dict[str, Any]:
    r = await client.post(path, **kw)
    if r.status_code not in (200, 202):
        raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
    body: dict[str, Any] = r.json()
    return body


async def hibernate_section(config: BenchConfig, results: dict[str, Any],
                            tracker: ProcessTracker) -> None:
    hr = results.setdefault("hibernate", {})
    settings = {**gateway_settings(config, config.hibernate_sessions + 4, pool_size=1),
                "snapshot_max_mb": "512", "workspace_preallocate": "false",
                # room for the 50 MB frame and, while it is saved, its pickle in the workspace
                "default_limits": '{"memory_mb": 1024, "cpus": 1.0, "pids": 128, '
                                  '"disk_mb": 160}'}
    if (python := _kernel_python()) is not None:
        settings["kernel_python"] = python
    gw = await start_gateway(tracker, config.results_dir / "logs" / "gateway-hibernate.log",
                             settings)
    try:
        async with httpx.AsyncClient(base_url=gw.url, timeout=600, headers={
                "Authorization": f"Bearer {gw.token}"}) as client:
            await _round_trips(config, client, hr)
            await _memory(config, gw, client, hr)
    finally:
        await stop_gateway(tracker, gw)


async def _round_trips(config: BenchConfig, client: httpx.AsyncClient,
                       hr: dict[str, Any]) -> None:
    setup = await _post(client, "/v1/sessions/big/execute", json={"code": SETUP,
                                                                  "timeout_s": 300})
    if setup["status"] != "ok":
        raise RuntimeError(f"setup: {setup['status']} {setup.get('error')}")
    hr["data"] = setup["stdout"].strip() + " MiB in memory, 10 MiB workspace"
    log(f"  hibernate/restore x{config.hibernate_rounds}: {hr['data']}")
    hibernate_s, restore_s, warm_s = [], [], []
    for _ in range(config.hibernate_rounds):
        started = time.perf_counter()
        body = await _post(client, "/v1/sessions/big/hibernate")
        hibernate_s.append(time.perf_counter() - started)
        hr["snapshot_mb"] = round(body["snapshot_bytes"] / MiB, 1)
        started = time.perf_counter()
        result = await _post(client, "/v1/sessions/big/execute", json={"code": "len(df)"})
        restore_s.append(time.perf_counter() - started)
        if result["status"] != "ok" or not result.get("restored"):
            raise RuntimeError(f"restore: {result['status']} {result.get('error')}")
        started = time.perf_counter()
        await _post(client, "/v1/sessions/big/execute", json={"code": "len(df)"})
        warm_s.append(time.perf_counter() - started)
    hr["hibernate_ms"] = summarize_ms(hibernate_s)
    hr["restore_first_call_ms"] = summarize_ms(restore_s)
    hr["warm_call_ms"] = summarize_ms(warm_s)
    await client.delete("/v1/sessions/big")


async def _memory(config: BenchConfig, gw: GatewayProcess, client: httpx.AsyncClient,
                  hr: dict[str, Any]) -> None:
    n = config.hibernate_sessions
    log(f"  memory: {n} sessions live, then hibernated")
    for i in range(n):
        await _post(client, f"/v1/sessions/m{i}/execute", json={"code": "x = list(range(1000))"})
    live_kernels = [memory_kb(p)["pss"] for p in kernel_pids(gw.pid)]
    live_gateway = memory_kb(gw.pid)["pss"]
    for i in range(n):
        await _post(client, f"/v1/sessions/m{i}/hibernate")
    asleep_kernels = kernel_pids(gw.pid)
    asleep_gateway = memory_kb(gw.pid)["pss"]
    listed = (await client.get("/v1/sessions")).json()["sessions"]
    hr["memory"] = {
        "sessions": n,
        "live_kernel_pss_kb_each": round(sum(live_kernels) / max(1, len(live_kernels))),
        "kernels_while_hibernated": len(asleep_kernels),  # the warm pool's only
        "gateway_pss_kb_live": live_gateway, "gateway_pss_kb_hibernated": asleep_gateway,
        "hibernated_listed": sum(1 for s in listed if s["state"] == "hibernated"),
        "record_bytes_each": round(sum(len(str(s)) for s in listed) / max(1, len(listed))),
    }
    for i in range(n):
        await client.delete(f"/v1/sessions/m{i}")
