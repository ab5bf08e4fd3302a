"""python -m bench: measure exec-gateway against same-run references; print JSON and a table.

Sections run one after another; one that fails is recorded under ``errors`` and the others
still run. Every process started here is stopped at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Awaitable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench import profiling
from bench.config import BenchConfig, load
from bench.gateway_rest import GatewayProcess, RestTarget, start_gateway, stop_gateway
from bench.jupyter_ws import JupyterTarget
from bench.kernel_gateway import (
    KernelGatewayProcess,
    ensure_venv,
    start_kernel_gateway,
    stop_kernel_gateway,
)
from bench.loops import (
    CODE,
    close_executors,
    interleaved_latency,
    open_executors,
    session_starts,
    stream_delivery,
    throughput,
    warm,
)
from bench.procs import ProcessTracker, cpu_seconds, kernel_pids, loadavg, memory_kb
from bench.raw import RawTarget
from bench.report import JUP, KG, REST, derive, table, write_json
from bench.target import Executor, Target, check_two

HTTP_CLIENT_NOTE = ("REST: bench.http_client (asyncio streams, HTTP/1.1 keep-alive, one write "
                    "per request); Jupyter: tornado websocket client, TCP_NODELAY on our side")


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in ("exec-gateway", "jupyter_client", "ipykernel", "pyzmq", "tornado", "pydantic"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def new_results(config: BenchConfig) -> dict[str, Any]:
    return {
        "meta": {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "cpu_model": _cpu_model(),
            "python": platform.python_version(), "versions": _versions(),
            "http_client": HTTP_CLIENT_NOTE, "loadavg_before": loadavg(),
        },
        "config": dataclasses.asdict(config),
        "latency": {}, "throughput": {}, "session_start": {}, "stream": {}, "memory": {},
        "errors": {}, "notes": [], "section_seconds": {},
    }


async def _section(results: dict[str, Any], name: str, work: Awaitable[None]) -> None:
    """Run one section; an Exception is recorded (not raised) so later sections still run."""
    _log(f"{name} ...")
    started = time.perf_counter()
    try:
        await work
    except Exception as exc:
        results["errors"][name] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    results["section_seconds"][name] = round(time.perf_counter() - started, 1)


def _gateway_settings(config: BenchConfig, sessions: int) -> dict[str, str]:
    return {"max_sessions": str(sessions), "max_sessions_per_key": str(sessions),
            "log_level": config.gateway_log_level}


# ------------------------------------------------------------------ sections
async def latency_section(config: BenchConfig, results: dict[str, Any],
                          targets: list[Target]) -> None:
    """Sequential ``1+1`` on one warm session per target, interleaved in rounds."""
    executors: dict[str, tuple[Executor, int | None]] = {}
    try:
        for target in targets:
            executors[target.name] = (await target.start(), target.server_pid)
        sampled = await interleaved_latency(executors, config.iterations, config.rounds,
                                            config.warmup, config.loop_max_s)
    finally:
        await close_executors([e for e, _ in executors.values()])
    results["latency"].update({name: s.figures() for name, s in sampled.items()})


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
    for n in config.concurrency:
        for target in targets:
            _log(f"  throughput {target.name} x{n}")
            figures = await throughput(target, n, config.throughput_s, warmup=5,
                                       parallel=config.start_parallel)
            results["throughput"].setdefault(target.name, {})[str(n)] = figures


async def stream_section(config: BenchConfig, results: dict[str, Any],
                         targets: list[Target]) -> None:
    for target in targets:
        executor = await target.start()
        try:
            await warm(executor, 3)
            results["stream"][target.name] = await stream_delivery(executor, config.stream_lines)
        finally:
            await executor.close()


async def start_section(config: BenchConfig, results: dict[str, Any],
                        targets: list[Target]) -> None:
    for target in targets:
        results["session_start"][target.name] = await session_starts(
            target, config.starts, config.loop_max_s)


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
                             _gateway_settings(config, n + 8))
    raw = RawTarget(tracker)
    mem = results["memory"]
    try:
        await asyncio.sleep(1.0)
        base = memory_kb(gw.pid)
        rest = RestTarget(gw)
        sessions = await open_executors(rest, n, config.start_parallel)
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


def _kernel_summary(kernels: list[dict[str, int]]) -> dict[str, Any]:
    if not kernels:
        return {}
    out: dict[str, Any] = {}
    for key in ("rss", "pss", "uss"):
        values = sorted(k[key] for k in kernels)
        out[f"{key}_median"] = values[len(values) // 2]
        out[f"{key}_total"] = sum(values)
    return out


# ------------------------------------------------------------------ orchestration
async def run(config: BenchConfig, tracker: ProcessTracker, results: dict[str, Any]) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    logs = config.results_dir / "logs"
    raw = RawTarget(tracker)
    gw: GatewayProcess | None = None
    kg: KernelGatewayProcess | None = None
    try:
        gw = await start_gateway(tracker, logs / "gateway.log",
                                 _gateway_settings(config, max(config.concurrency) + 8))
        rest = RestTarget(gw)
        ours: list[Target] = [raw, rest]
        jupyter = JupyterTarget(JUP, gw.port, gw.token, gw.pid)
        available, why = await jupyter.available()
        if available:
            ours.append(jupyter)
        else:
            results["latency"][JUP] = {"skipped": why}
            results["notes"].append(f"{JUP} column skipped: {why}")
        stock: list[Target] = []
        if config.kernel_gateway:
            try:
                results["meta"]["kernel_gateway"] = await ensure_venv(
                    config.kg_venv, logs / "kg-install.log")
                kg = await start_kernel_gateway(tracker, config.kg_venv, logs / "kg.log")
                stock.append(JupyterTarget(KG, kg.port, kg.token, kg.pid))
            except Exception as exc:
                results["errors"]["kernel_gateway_setup"] = f"{type(exc).__name__}: {exc}"
        await _section(results, "latency", latency_section(config, results, ours))
        for target in stock:
            await _section(results, "kg_latency", kg_latency_section(config, results, target))
        await _section(results, "throughput", throughput_section(config, results, ours + stock))
        await _section(results, "stream", stream_section(config, results, ours + stock))
        await _section(results, "session_start", start_section(config, results, ours + stock))
        if config.profile:
            await _section(results, "profile", profile_section(config, results, rest))
    finally:
        if kg is not None:
            await stop_kernel_gateway(tracker, kg)
        if gw is not None:
            await stop_gateway(tracker, gw)
        raw.close()
    await _section(results, "memory", memory_section(config, results, tracker))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts (about a minute)")
    parser.add_argument("--no-kg", action="store_true", help="skip stock jupyter-kernel-gateway")
    parser.add_argument("--profile", action="store_true",
                        help="also sample the gateway with py-spy during an extra REST loop")
    args = parser.parse_args(argv)
    try:
        config = load(args.quick, kernel_gateway=False if args.no_kg else None,
                      profile=True if args.profile else None)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    tracker = ProcessTracker()
    results = new_results(config)
    started = time.perf_counter()
    code = 0
    try:
        asyncio.run(run(config, tracker, results))
    except (KeyboardInterrupt, asyncio.CancelledError):
        _log("interrupted; stopping everything started")
        results["interrupted"] = True
        code = 130
    finally:
        tracker.kill_all()
    results["meta"]["loadavg_after"] = loadavg()
    results["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    results["ratios"], results["targets"] = derive(results)
    path = config.results_dir / "latest.json"
    write_json(results, path)
    print(json.dumps(results, indent=2, default=str))
    print()
    print(table(results))
    print(f"\nJSON: {path}")
    return code or (1 if results["errors"] else 0)


if __name__ == "__main__":
    sys.exit(main())
