"""Sessions per machine: idle Docker sessions opened in steps on one gateway (pool off) until
the step list, a memory floor or a time cap ends it; at each step, what a session costs and how
an active session still answers.

Per step (``density.steps[i]``):

- ``host_used_kb_per_session``: the drop of the host's ``MemAvailable`` since the start, per
  idle session: everything counted (kernel, container cgroup, the engine's shim and storage
  daemon, the engine's own bookkeeping, the gateway), but also whatever else ran on the machine
  meanwhile; ``sessions_per_24gib`` is 24 GiB over it.
- ``parts_kb``: medians over the containers sampled at this step (up to ``sample``): the
  container's memory cgroup (usage - inactive file, what ``docker stats`` shows), the engine's
  per-container shim (PSS), the per-container storage daemon (``fuse-overlayfs``, PSS; none
  when the engine's storage driver needs no daemon), and the gateway's RSS growth per session;
  ``per_session_kb`` is their sum.
- ``gateway``: its RSS and its CPU share while opening this step's sessions and idling.
- ``active``: ``latency_calls`` sequential ``1+1`` on one session opened first: p50/p99 ms.

Bounded: ``density_max_s`` for the whole section, a floor of ``density_min_free_mb`` of
``MemAvailable``; every container is removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from bench import docker_sandbox
from bench.config import BenchConfig
from bench.gateway_rest import RestTarget, start_gateway, stop_gateway, wait_for_env_volume
from bench.loops import close_executors, interleaved_latency, open_executors, warm
from bench.procs import ProcessTracker, cmdline, cpu_seconds, memory_kb, parent_pid, rss_bytes
from bench.stats import ratio
from bench.target import Executor

GIB24_KB = 24 * 1024 * 1024
DENSITY = "docker_density"


def mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _storage_daemons() -> dict[str, int]:
    """fuse-overlayfs processes by the mount point they serve (their last argument)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() != "fuse-overlayfs":
                continue
            args = [a for a in cmdline(int(entry.name)) if a]
            if args:
                found[args[-1]] = int(entry.name)
    return found


def _sample_parts(container_ids: list[str]) -> dict[str, Any]:
    """Medians of the cgroup, shim and storage daemon of these containers (blocking)."""
    import docker

    client = docker.from_env(timeout=60)
    daemons = _storage_daemons()
    cgroups, shims, storage = [], [], []
    try:
        for cid in container_ids:
            with contextlib.suppress(Exception):
                attrs = client.api.inspect_container(cid)
                cg = docker_sandbox._cgroup_kb(attrs["Id"])
                if cg is not None:
                    cgroups.append(cg)
                pid = int((attrs.get("State") or {}).get("Pid") or 0)
                if pid:
                    shim = parent_pid(pid)
                    if "containerd-shim" in " ".join(cmdline(shim)):
                        shims.append(memory_kb(shim)["pss"])
                merged = ((attrs.get("GraphDriver") or {}).get("Data") or {}).get("MergedDir")
                if merged and merged in daemons:
                    storage.append(memory_kb(daemons[merged])["pss"])
    finally:
        client.close()

    def median(values: list[int]) -> int | None:
        return sorted(values)[len(values) // 2] if values else None

    return {"containers_sampled": len(container_ids), "cgroup_kb": median(cgroups),
            "shim_pss_kb": median(shims), "storage_daemon_pss_kb": median(storage),
            "storage_daemons_found": len(storage)}


def _session_containers(gateway_id: str) -> list[str]:
    import docker

    client = docker.from_env(timeout=60)
    try:
        labels = [f"{docker_sandbox.LABEL_MANAGED}=true",
                  f"{docker_sandbox.LABEL_GATEWAY}={gateway_id}"]
        found = client.api.containers(filters={"label": labels})
        return [c["Id"] for c in found
                if (c.get("Labels") or {}).get(docker_sandbox.LABEL_SESSION) != "pool"]
    finally:
        client.close()


async def density_section(config: BenchConfig, results: dict[str, Any],
                          tracker: ProcessTracker) -> None:
    ok, why = await docker_sandbox.available(config.docker_image)
    out: dict[str, Any] = results.setdefault("density", {})
    if not ok:
        out["skipped"] = why
        results["notes"].append(f"density section skipped: {why}")
        return
    top = max(config.density_steps)
    gw_id = docker_sandbox.instance_id("density")
    settings = {"max_sessions": str(top + 8), "max_sessions_per_key": str(top + 8),
                "pool_size": "0", "log_level": "WARNING", "launcher": "docker",
                # the active session's connection waits while the idle ones are opened
                "keepalive_timeout_s": "3600",
                "instance_id": gw_id, "docker_image": config.docker_image}
    out.update({"instance_id": gw_id, "image": config.docker_image, "steps": [],
                "min_free_mb": config.density_min_free_mb, "max_s": config.density_max_s})
    gw = await start_gateway(tracker, config.results_dir / "logs" / "gateway-density.log",
                             settings)
    idle: list[Executor] = []
    active: Executor | None = None
    started = time.perf_counter()
    try:
        out["env_volume"] = await wait_for_env_volume(gw)  # the steady state
        active = await RestTarget(gw, DENSITY).start()
        await warm(active, 5)
        await asyncio.sleep(1.0)
        base_avail, base_rss = mem_available_kb(), rss_bytes(gw.pid)
        out["mem_available_kb_at_start"] = base_avail
        out["gateway_rss_kb_at_start"] = base_rss // 1024
        for target_n in config.density_steps:
            step_t0, cpu0 = time.perf_counter(), cpu_seconds(gw.pid)
            stop_why = None
            while len(idle) < target_n:
                if time.perf_counter() - started > config.density_max_s:
                    stop_why = f"time cap {config.density_max_s:.0f}s"
                    break
                if mem_available_kb() < config.density_min_free_mb * 1024:
                    stop_why = f"memory floor {config.density_min_free_mb} MB"
                    break
                batch = min(config.start_parallel * 2, target_n - len(idle))
                opened, failures = await open_executors(RestTarget(gw, DENSITY), batch,
                                                        config.start_parallel, retries=batch)
                if failures:
                    out.setdefault("start_failures", []).extend(failures[:3])
                await asyncio.gather(*(warm(s, 1) for s in opened))
                idle.extend(opened)
            await asyncio.sleep(2.0)  # let the new kernels settle to idle
            n = len(idle)
            if n == 0:
                break
            ids = await asyncio.to_thread(_session_containers, gw_id)
            parts = await asyncio.to_thread(_sample_parts, ids[-config.density_sample:])
            growth = round((rss_bytes(gw.pid) - base_rss) / 1024 / n, 1)
            per_session = [v for v in (parts["cgroup_kb"], parts["shim_pss_kb"],
                                       parts["storage_daemon_pss_kb"]) if v is not None]
            parts["gateway_rss_growth_kb"] = growth
            parts["per_session_kb"] = round(sum(per_session) + max(growth, 0.0), 1)
            used = (base_avail - mem_available_kb()) / n
            sampled = await interleaved_latency({"active": (active, None)},
                                                config.density_latency_calls, 1, 5, 30.0)
            lat = sampled["active"].figures()
            wall = time.perf_counter() - step_t0
            out["steps"].append({
                "sessions": n,
                "host_used_kb_per_session": round(used, 1),
                "sessions_per_24gib": round(GIB24_KB / used) if used > 0 else None,
                "sessions_per_24gib_from_parts": round(GIB24_KB / parts["per_session_kb"])
                if parts["per_session_kb"] else None,
                "parts_kb": parts,
                "gateway": {"rss_kb": rss_bytes(gw.pid) // 1024,
                            "cpu_percent": round(100 * (cpu_seconds(gw.pid) - cpu0) / wall, 1)},
                "active": {k: lat.get(k) for k in ("n", "p50", "p99")},
                "step_seconds": round(wall, 1),
            })
            if stop_why:
                out["stopped"] = stop_why
                break
    finally:
        await close_executors([*idle, *([active] if active is not None else [])])
        await stop_gateway(tracker, gw)
        left = await docker_sandbox.remove_containers([gw_id])
        out["containers_left_by_gateway"] = len(left)
        out["seconds"] = round(time.perf_counter() - started, 1)


def density_figures(results: dict[str, Any]) -> dict[str, Any]:
    """The last step's headline figures (for ratios/targets)."""
    steps = (results.get("density") or {}).get("steps") or []
    if not steps:
        return {}
    last = steps[-1]
    return {"sessions": last["sessions"], "kb_per_session": last["host_used_kb_per_session"],
            "parts_kb_per_session": last["parts_kb"]["per_session_kb"],
            "sessions_per_24gib": last["sessions_per_24gib"],
            "sessions_per_24gib_from_parts": last["sessions_per_24gib_from_parts"],
            "active_p50_ms": last["active"]["p50"], "active_p99_ms": last["active"]["p99"],
            "active_p99_vs_first_step": ratio(last["active"]["p99"], steps[0]["active"]["p99"])}


def density_rows(results: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """Table rows: per step, KiB per session (host) vs the sum of the parts, and active p99."""
    dens = results.get("density") or {}
    if dens.get("skipped"):
        return [("docker density", "skipped", "", "")]
    rows: list[tuple[str, Any, Any, Any]] = []
    for step in dens.get("steps") or []:
        n = step["sessions"]
        v, ref = step["host_used_kb_per_session"], step["parts_kb"]["per_session_kb"]
        rows.append((f"density {n} idle: host KiB/session vs parts", v, ref, ratio(v, ref)))
        rows.append((f"density {n} idle: active p99 ms vs p50", step["active"]["p99"],
                     step["active"]["p50"], ratio(step["active"]["p99"], step["active"]["p50"])))
    return rows
