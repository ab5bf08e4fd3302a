"""The bench's sections: each measures one concern on already started servers (or starts
its own) and writes its figures into the results dict. Called in order by ``__main__``."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from bench import docker_sandbox, profiling
from bench.config import BenchConfig
from bench.gateway_rest import (
    GatewayProcess,
    RestTarget,
    start_gateway,
    stop_gateway,
    wait_for_env_volume,
    wait_for_pool,
)
from bench.jupyter_ws import JupyterTarget
from bench.loops import (
    CODE,
    close_executors,
    interleaved_latency,
    interleaved_starts,
    open_executors,
    stream_delivery,
    throughput,
    warm,
)
from bench.procs import ProcessTracker, cpu_seconds, kernel_pids, memory_kb, rss_bytes
from bench.raw import RawTarget
from bench.report import DOCKER, DOCKER_LOCAL, JUP, REST
from bench.target import Executor, Target, check_two


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def gateway_settings(config: BenchConfig, sessions: int, pool_size: int = 0
                      ) -> dict[str, str]:
    """GATEWAY_* for a bench gateway: room for ``sessions``, a warm pool of ``pool_size``
    (0 everywhere but the pooled-start figures, so no background refill skews a loop)."""
    return {"max_sessions": str(sessions), "max_sessions_per_key": str(sessions),
            "pool_size": str(pool_size), "log_level": config.gateway_log_level}


async def warm_latency(config: BenchConfig, targets: list[Target]) -> dict[str, Any]:
    """Sequential ``1+1`` on one warm session per target, interleaved in rounds (the
    config's counts): figures per target name. The sessions are closed afterwards."""
    executors: dict[str, tuple[Executor, int | None]] = {}
    try:
        for target in targets:
            executors[target.name] = (await target.start(), target.server_pid)
        sampled = await interleaved_latency(executors, config.iterations, config.rounds,
                                            config.warmup, config.loop_max_s)
    finally:
        await close_executors([e for e, _ in executors.values()])
    return {name: s.figures() for name, s in sampled.items()}


async def latency_section(config: BenchConfig, results: dict[str, Any],
                          targets: list[Target]) -> None:
    """Sequential ``1+1`` on one warm session per target, interleaved in rounds."""
    results["latency"].update(await warm_latency(config, targets))


async def kg_latency_section(config: BenchConfig, results: dict[str, Any], kg: Target) -> None:
    """Stock KG: its own loop (it is too slow to interleave at the same count)."""
    executor = await kg.start()
    try:
        sampled = await interleaved_latency({kg.name: (executor, kg.server_pid)},
                                            config.kg_iterations, 1, min(config.warmup, 30),
                                            config.loop_max_s)
    finally:
        await executor.close()
    results["latency"][kg.name] = sampled[kg.name].figures()


async def throughput_section(config: BenchConfig, results: dict[str, Any],
                             targets: list[Target]) -> None:
    """All targets' sessions/kernels are opened first (the server's RSS per session is read
    around that), then each level runs on the first n of them, target after target."""
    top = max(config.concurrency)
    opened: dict[str, list[Executor]] = {}
    try:
        for target in targets:
            pid = target.server_pid
            before = rss_bytes(pid) if pid else 0
            opened[target.name], failures = await open_executors(
                target, top, config.start_parallel, retries=2)
            _record_failures(results, f"throughput/{target.name}", failures)
            await asyncio.gather(*(warm(e, 5) for e in opened[target.name]))
            figures = results["throughput"].setdefault(target.name, {})
            if pid:
                figures["server_rss_kb_per_session"] = round(
                    (rss_bytes(pid) - before) / 1024 / top, 1)
        for n in config.concurrency:
            for target in targets:
                log(f"  throughput {target.name} x{n}")
                results["throughput"][target.name][str(n)] = await throughput(
                    opened[target.name][:n], target.server_pid, config.throughput_s)
    finally:
        for executors in opened.values():
            await close_executors(executors)


async def stream_section(config: BenchConfig, results: dict[str, Any],
                         targets: list[Target]) -> None:
    """One flushed-print cell per target. The raw reference should run its kernel through the
    gateway's boot shim (``RawTarget(lift_iopub_hwm=True)``): the same kernel as the gateway's,
    read straight from iopub with jupyter_client."""
    for target in targets:
        executor = await target.start()
        try:
            await warm(executor, 3)
            figures = await stream_delivery(executor, config.stream_lines)
        finally:
            await executor.close()
        if isinstance(target, RawTarget):
            figures["kernel"] = ("gateway/kernel_boot.py (tuned, iopub send HWM lifted)"
                                 if target.lift_iopub_hwm else "ipykernel_launcher")
        results["stream"][target.name] = figures


async def start_section(config: BenchConfig, results: dict[str, Any],
                        targets: list[Target]) -> None:
    """Cold starts, interleaved between targets: a new kernel process each time (the main
    gateway runs without a pool)."""
    results["session_start"].update(
        await interleaved_starts(targets, config.starts, 2 * config.loop_max_s))


async def pool_start_section(config: BenchConfig, results: dict[str, Any],
                             tracker: ProcessTracker) -> None:
    """Starts from a full warm pool: a gateway with ``pool_size`` kernels; before each start
    (untimed) the bench waits until the pool is full again. The refill that the start itself
    triggers does run during its first execute, as it would in production."""
    gw = await start_gateway(tracker, config.results_dir / "logs" / "gateway-pool.log",
                             gateway_settings(config, 2 * config.pool_size + 8,
                                              config.pool_size))
    try:
        async def full() -> None:
            await wait_for_pool(gw, config.pool_size)

        targets: list[Target] = [RestTarget(gw)]
        jupyter = JupyterTarget(JUP, gw.port, gw.token, gw.pid)
        if (await jupyter.available())[0]:
            targets.append(jupyter)
        figures = await interleaved_starts(targets, config.starts, config.loop_max_s,
                                           before_each=full)
        results["session_start"].update({f"{k}_pool": v for k, v in figures.items()})
    finally:
        await stop_gateway(tracker, gw)


async def profile_section(config: BenchConfig, results: dict[str, Any],
                          rest: RestTarget) -> None:
    """py-spy on the gateway during an extra REST loop (not the one the figures come from)."""
    exe = profiling.py_spy()
    if exe is None:
        results["notes"].append("profile skipped: py-spy is not installed")
        return
    out = config.results_dir / "profile-gateway.txt"
    executor = await rest.start()
    try:
        await warm(executor, config.warmup)
        spy = await profiling.record(exe, rest.gw.pid, config.profile_s, out)
        await asyncio.sleep(0.5)  # let py-spy attach before the counted window
        calls, started = 0, time.perf_counter()
        while spy.returncode is None and time.perf_counter() - started < config.profile_s + 30:
            check_two(await executor.execute(CODE))
            calls += 1
        _, err = await spy.communicate()
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace').strip()}")
    finally:
        await executor.close()
    summary = profiling.summarize(out, calls)
    summary["collapsed_stacks"] = str(out)
    results["profile"] = summary


async def memory_section(config: BenchConfig, results: dict[str, Any],
                         tracker: ProcessTracker) -> None:
    """A fresh gateway: RSS with 0 and with N idle sessions, per-kernel memory, idle CPU,
    REST latency with the idle sessions present; a raw kernel after one cell as reference."""
    n = config.idle_sessions
    logs = config.results_dir / "logs"
    gw = await start_gateway(tracker, logs / "gateway-memory.log",
                             gateway_settings(config, n + 8))
    raw = RawTarget(tracker)
    mem = results["memory"]
    try:
        await asyncio.sleep(1.0)
        base = memory_kb(gw.pid)
        rest = RestTarget(gw)
        sessions, failures = await open_executors(rest, n, config.start_parallel,
                                                  retries=max(2, n // 20))
        _record_failures(results, "memory", failures)
        try:
            await asyncio.gather(*(warm(s, 1) for s in sessions))
            await asyncio.sleep(2.0)
            loaded = memory_kb(gw.pid)
            kernels = [memory_kb(pid) for pid in kernel_pids(gw.pid)]
            cpu0 = cpu_seconds(gw.pid)
            await asyncio.sleep(config.idle_window_s)
            idle_cpu = cpu_seconds(gw.pid) - cpu0
            sampled = await interleaved_latency({REST: (sessions[0], gw.pid)}, config.iterations,
                                                1, config.warmup, config.loop_max_s)
        finally:
            await close_executors(sessions)
        reference = await raw.start()
        try:
            await warm(reference, 1)
            await asyncio.sleep(1.0)
            raw_kb = memory_kb(reference.pid) if reference.pid else None
        finally:
            await reference.close()
    finally:
        await stop_gateway(tracker, gw)
        raw.close()
    if len(kernels) != n:
        results["notes"].append(f"memory: found {len(kernels)} kernel processes for {n} "
                                "sessions below the gateway")
    mem.update({
        "sessions": n,
        "kernels_found": len(kernels),
        "gateway_kb_no_sessions": base,
        "gateway_kb_with_sessions": loaded,
        "gateway_rss_kb_per_idle_session": round((loaded["rss"] - base["rss"]) / n, 1),
        "kernel_kb": _kernel_summary(kernels),
        "raw_kernel_kb": raw_kb,
        "idle_cpu_percent": round(idle_cpu / config.idle_window_s * 100, 2),
        "idle_window_s": config.idle_window_s,
        "latency_with_idle_sessions": sampled[REST].figures(),
    })


async def docker_section(config: BenchConfig, results: dict[str, Any],
                         tracker: ProcessTracker) -> None:
    """The Docker launcher against the local one, each on its own fresh gateway (pool off), in
    the same run: cold starts (interleaved), warm ``1+1`` latency (interleaved rounds), idle
    memory per session; then a docker gateway with a warm pool for pooled starts. Every
    container labelled with these gateways' instance ids is removed at the end."""
    ok, why = await docker_sandbox.available(config.docker_image)
    dk = results["docker"]
    if not ok:
        dk["skipped"] = why
        results["notes"].append(f"docker section skipped: {why}")
        return
    dk["engine"] = why
    logs, ids = config.results_dir / "logs", []
    sessions = config.docker_idle_sessions + 8

    def docker_settings(name: str, pool: int = 0) -> dict[str, str]:
        ids.append(docker_sandbox.instance_id(name))
        return {**gateway_settings(config, sessions, pool), "launcher": "docker",
                "instance_id": ids[-1], "docker_image": config.docker_image}

    gws: list[GatewayProcess] = []
    try:
        gws.append(await start_gateway(tracker, logs / "gateway-docker.log",
                                       docker_settings("cold")))
        gws.append(await start_gateway(tracker, logs / "gateway-docker-local.log",
                                       gateway_settings(config, sessions)))
        docker_gw, local_gw = gws
        targets: list[Target] = [RestTarget(docker_gw, DOCKER), RestTarget(local_gw, DOCKER_LOCAL)]
        # the steady state: kernels started while the env volume is filled (once per image,
        # ~15 s) read the image's own files through the storage driver
        log("  docker env volume")
        dk["env_volume"] = await wait_for_env_volume(docker_gw)
        log("  docker cold starts")
        dk["session_start"] = await interleaved_starts(targets, config.starts,
                                                       2 * config.loop_max_s)
        log("  docker warm latency")
        dk["latency"] = await warm_latency(config, targets)
        log("  docker idle memory")
        dk["memory"] = await _docker_memory(config, results, docker_gw, local_gw, ids[0])
        for gw in gws:
            await stop_gateway(tracker, gw)
        gws.clear()
        log("  docker pooled starts")
        gws.append(await start_gateway(tracker, logs / "gateway-docker-pool.log",
                                       docker_settings("pool", config.pool_size)))
        pooled = gws[0]

        async def full() -> None:
            await wait_for_pool(pooled, config.pool_size, timeout_s=120.0)

        figures = await interleaved_starts([RestTarget(pooled, DOCKER)], config.starts,
                                           2 * config.loop_max_s, before_each=full)
        dk["session_start"][f"{DOCKER}_pool"] = figures[DOCKER]
        dk["session_start"][f"{DOCKER}_pool"]["pool_size"] = config.pool_size
    finally:
        for gw in gws:
            await stop_gateway(tracker, gw)
        left = await docker_sandbox.remove_containers(ids)
        dk["instance_ids"] = ids
        dk["containers_left_by_gateways"] = left
        if left:
            results["notes"].append(f"docker: the gateways left {len(left)} container(s) "
                                    f"behind (removed by the bench): {left[:5]}")


async def _docker_memory(config: BenchConfig, results: dict[str, Any], docker_gw: GatewayProcess,
                         local_gw: GatewayProcess, docker_id: str) -> dict[str, Any]:
    """n idle sessions (one cell each) on each launcher's gateway: the docker session's
    container memory (cgroup) and its kernel's USS, the local kernel's USS, each gateway's RSS
    growth per session; per session = container (or local kernel USS) + gateway growth."""
    n = config.docker_idle_sessions
    out: dict[str, Any] = {"sessions": n}
    for gw, name in ((docker_gw, DOCKER), (local_gw, DOCKER_LOCAL)):
        base = memory_kb(gw.pid)
        opened, failures = await open_executors(RestTarget(gw, name), n, 2, retries=1)
        _record_failures(results, f"docker_memory/{name}", failures)
        try:
            await asyncio.gather(*(warm(s, 1) for s in opened))
            await asyncio.sleep(2.0)
            growth = round((memory_kb(gw.pid)["rss"] - base["rss"]) / n, 1)
            if name == DOCKER:
                containers = await docker_sandbox.session_containers_memory(docker_id)
                cgroup = sorted(c["cgroup_kb"] for c in containers if c["cgroup_kb"] is not None)
                kernels = [c["kernel"] for c in containers if c.get("kernel")]
                shims = [c["shim"] for c in containers if c.get("shim")]
                median = cgroup[len(cgroup) // 2] if cgroup else None
                out[name] = {
                    "containers_found": len(containers),
                    "cgroup_source": containers[0]["cgroup_source"] if containers else None,
                    "container_kb_median": median,
                    "kernel_kb": _kernel_summary(kernels),
                    "container_processes_uss_kb_median": _median(
                        [c["processes_uss_kb"] for c in containers if "processes_uss_kb" in c]),
                    "shim_kb": _kernel_summary(shims),
                    "gateway_rss_kb_per_idle_session": growth,
                }
                shim_uss = out[name]["shim_kb"].get("uss_median", 0)
                # the engine's shim lives outside the container's cgroup but is per container
                out[name]["per_session_kb"] = (None if median is None
                                               else round(median + shim_uss + growth, 1))
            else:
                kernels = [memory_kb(pid) for pid in kernel_pids(gw.pid)]
                uss = _kernel_summary(kernels).get("uss_median")
                out[name] = {
                    "kernels_found": len(kernels),
                    "kernel_kb": _kernel_summary(kernels),
                    "gateway_rss_kb_per_idle_session": growth,
                    "per_session_kb": None if uss is None else round(uss + growth, 1),
                }
        finally:
            await close_executors(opened)
    return out


def _median(values: list[int]) -> int | None:
    return sorted(values)[len(values) // 2] if values else None


def _record_failures(results: dict[str, Any], where: str, failures: list[str]) -> None:
    """Starts that failed and were retried: kept in the report, they are a finding too."""
    if failures:
        results.setdefault("start_failures", {})[where] = failures
        results["notes"].append(f"{where}: {len(failures)} session/kernel start(s) failed and "
                                f"were retried; first: {failures[0][:200]}")


def _kernel_summary(kernels: list[dict[str, int]]) -> dict[str, Any]:
    if not kernels:
        return {}
    out: dict[str, Any] = {}
    for key in ("rss", "pss", "uss"):
        values = sorted(k[key] for k in kernels)
        out[f"{key}_median"] = values[len(values) // 2]
        out[f"{key}_total"] = sum(values)
    return out
