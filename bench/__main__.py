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
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench import (
    client_sdk,
    density,
    files,
    hibernate,
    kernel_cost,
    oneshot,
    packages,
    replicas,
    sections,
)
from bench.config import BenchConfig, load
from bench.gateway_rest import ROOT, GatewayProcess, RestTarget, start_gateway, stop_gateway
from bench.jupyter_ws import JupyterTarget
from bench.kernel_gateway import (
    KernelGatewayProcess,
    ensure_venv,
    start_kernel_gateway,
    stop_kernel_gateway,
)
from bench.procs import ProcessTracker, loadavg
from bench.raw import RawTarget
from bench.report import JUP, KG, RAW_GW, derive, write_json
from bench.sections import gateway_settings, log
from bench.table import table
from bench.target import Target
from bench.v1_ws import V1WsTarget

HTTP_CLIENT_NOTE = ("REST: bench.http_client (asyncio streams, HTTP/1.1 keep-alive, one write "
                    "per request); /v1 WS and Jupyter: tornado websocket client, TCP_NODELAY "
                    "on our side")


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


def _revision() -> str:
    """The work tree's commit, with ``+dirty`` when it has changes (figures belong to code)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, text=True,
                               capture_output=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def new_results(config: BenchConfig) -> dict[str, Any]:
    return {
        "meta": {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "revision": _revision(),
            "cpus": os.cpu_count(), "cpu_model": _cpu_model(),
            "python": platform.python_version(), "versions": _versions(),
            "http_client": HTTP_CLIENT_NOTE, "loadavg_before": loadavg(),
        },
        "config": dataclasses.asdict(config),
        "latency": {}, "throughput": {}, "session_start": {}, "stream": {}, "memory": {},
        "replicas": {}, "docker": {}, "oneshot": {}, "files": {}, "packages": {},
        "density": {}, "kernel_cost": {}, "hibernate": {},
        "errors": {}, "notes": [], "section_seconds": {},
    }


async def _section(results: dict[str, Any], name: str, work: Awaitable[None]) -> None:
    """Run one section; an Exception is recorded (not raised) so later sections still run."""
    log(f"{name} ...")
    started = time.perf_counter()
    try:
        await work
    except Exception as exc:
        results["errors"][name] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    results["section_seconds"][name] = round(time.perf_counter() - started, 1)


# ------------------------------------------------------------------ orchestration
async def _our_targets(gw: GatewayProcess, raw: RawTarget, results: dict[str, Any]
                       ) -> tuple[RestTarget, list[Target]]:
    """raw, REST, the /v1 WebSocket, and our Jupyter API unless it answers 404."""
    rest = RestTarget(gw)
    targets: list[Target] = [raw, rest, V1WsTarget(gw)]
    jupyter = JupyterTarget(JUP, gw.port, gw.token, gw.pid)
    available, why = await jupyter.available()
    if available:
        targets.append(jupyter)
    else:
        results["latency"][JUP] = {"skipped": why}
        results["notes"].append(f"{JUP} column skipped: {why}")
    return rest, targets


async def _start_stock(config: BenchConfig, tracker: ProcessTracker, results: dict[str, Any]
                       ) -> KernelGatewayProcess | None:
    """Stock kernel_gateway (venv made if missing), or None when off or when it fails."""
    if not config.kernel_gateway:
        return None
    logs = config.results_dir / "logs"
    try:
        results["meta"]["kernel_gateway"] = await ensure_venv(config.kg_venv,
                                                               logs / "kg-install.log")
        return await start_kernel_gateway(tracker, config.kg_venv, logs / "kg.log")
    except Exception as exc:
        results["errors"]["kernel_gateway_setup"] = f"{type(exc).__name__}: {exc}"
        return None


async def run(config: BenchConfig, tracker: ProcessTracker, results: dict[str, Any]) -> None:
    """Every section in order; servers shared by several sections live for those only."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    raw = RawTarget(tracker)
    # the gateway's own kernel (its boot shim), read raw: the gateway's overhead alone
    raw_gw = RawTarget(tracker, lift_iopub_hwm=True, name=RAW_GW)
    raw_stream = RawTarget(tracker, lift_iopub_hwm=True)  # the gateway's kernel, read raw
    gw: GatewayProcess | None = None
    kg: KernelGatewayProcess | None = None
    try:
        gw = await start_gateway(tracker, config.results_dir / "logs" / "gateway.log",
                                 gateway_settings(config, 3 * max(config.concurrency) + 8))
        rest, ours = await _our_targets(gw, raw, results)
        kg = await _start_stock(config, tracker, results)
        stock: list[Target] = [] if kg is None else [JupyterTarget(KG, kg.port, kg.token, kg.pid)]
        every = ours + stock
        await _section(results, "latency",
                       sections.latency_section(config, results, [*ours, raw_gw]))
        for target in stock:
            await _section(results, "kg_latency",
                           sections.kg_latency_section(config, results, target))
        await _section(results, "throughput",
                       sections.throughput_section(config, results, [*every, raw_gw]))
        await _section(results, "stream", sections.stream_section(
            config, results, [raw_stream if t is raw else t for t in every]))
        await _section(results, "session_start", sections.start_section(config, results, every))
        if config.profile:
            await _section(results, "profile", sections.profile_section(config, results, rest))
    finally:
        if kg is not None:
            await stop_kernel_gateway(tracker, kg)
        if gw is not None:
            await stop_gateway(tracker, gw)
        raw.close()
        raw_gw.close()
        raw_stream.close()
    await _section(results, "kernel_cost", _kernel_cost(config, tracker, results))
    await _section(results, "pool_start", sections.pool_start_section(config, results, tracker))
    await _section(results, "client_sdk", client_sdk.client_sdk_section(config, results, tracker))
    await _section(results, "memory", sections.memory_section(config, results, tracker))
    await _section(results, "oneshot", oneshot.oneshot_section(config, results, tracker))
    await _section(results, "packages", packages.packages_section(config, results, tracker))
    if config.replicas:
        await _section(results, "replicas", replicas.replicas_section(config, results, tracker))
    else:
        results["replicas"]["skipped"] = "turned off (--no-replicas or BENCH_REPLICAS=0)"
    if config.docker:
        await _section(results, "docker", sections.docker_section(config, results, tracker))
    else:
        results["docker"]["skipped"] = "turned off (--no-docker or BENCH_DOCKER=0)"
    if config.files:
        await _section(results, "files", files.files_section(config, results, tracker))
    else:
        results["files"]["skipped"] = "turned off (--no-files or BENCH_FILES=0)"
    if config.density and config.docker:
        await _section(results, "density", density.density_section(config, results, tracker))
    else:
        results["density"]["skipped"] = "turned off (--no-density, --no-docker or BENCH_DENSITY=0)"
    if config.hibernate:
        await _section(results, "hibernate",
                       hibernate.hibernate_section(config, results, tracker))
    else:
        results["hibernate"]["skipped"] = "turned off (BENCH_HIBERNATE=0)"


async def _kernel_cost(config: BenchConfig, tracker: ProcessTracker, results: dict[str, Any]
                       ) -> None:
    """The kernel alone: stock ipykernel_launcher vs the gateway's tuned boot shim, read raw."""
    results["kernel_cost"].update(await kernel_cost.kernel_cost(config, tracker))


async def run_files(config: BenchConfig, tracker: ProcessTracker, results: dict[str, Any]
                    ) -> None:
    await _section(results, "files", files.files_section(config, results, tracker))


async def run_packages(config: BenchConfig, tracker: ProcessTracker, results: dict[str, Any]
                       ) -> None:
    await _section(results, "packages", packages.packages_section(config, results, tracker))


async def run_replicas(config: BenchConfig, tracker: ProcessTracker, results: dict[str, Any]
                       ) -> None:
    await _section(results, "replicas", replicas.replicas_section(config, results, tracker))


async def run_hibernate(config: BenchConfig, tracker: ProcessTracker, results: dict[str, Any]
                        ) -> None:
    await _section(results, "hibernate", hibernate.hibernate_section(config, results, tracker))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts (about two minutes)")
    parser.add_argument("--no-kg", action="store_true", help="skip stock jupyter-kernel-gateway")
    parser.add_argument("--no-docker", action="store_true", help="skip the Docker launcher")
    parser.add_argument("--no-replicas", action="store_true",
                        help="skip the two-replica (Redis registry) forwarding section")
    parser.add_argument("--no-files", action="store_true",
                        help="skip the files API section (throughput, files_changed cost)")
    parser.add_argument("--no-density", action="store_true",
                        help="skip the sessions-per-machine section (idle docker sessions)")
    parser.add_argument("--only-density", action="store_true",
                        help="run the sessions-per-machine section only")
    parser.add_argument("--only-files", action="store_true",
                        help="run the files API section only")
    parser.add_argument("--only-packages", action="store_true",
                        help="run the packages section only (pip install cold, warm, import)")
    parser.add_argument("--only-replicas", action="store_true",
                        help="run the two-replica forwarding section only")
    parser.add_argument("--only-hibernate", action="store_true",
                        help="run the hibernation section only")
    parser.add_argument("--profile", action="store_true",
                        help="also sample the gateway with py-spy during an extra REST loop")
    args = parser.parse_args(argv)
    try:
        config = load(args.quick, kernel_gateway=False if args.no_kg else None,
                      docker=False if args.no_docker else None,
                      replicas=False if args.no_replicas else None,
                      profile=True if args.profile else None,
                      files=False if args.no_files else None,
                      density=False if args.no_density else None)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    tracker = ProcessTracker()
    results = new_results(config)
    busy = results["meta"]["loadavg_before"][0]
    if busy > 0.5:
        results["notes"].append(f"the machine was busy at the start (1-min load {busy}): "
                                "other work shares these cores, figures are noisier")
    started = time.perf_counter()
    code = 0
    try:
        asyncio.run(run_files(config, tracker, results) if args.only_files
                    else run_hibernate(config, tracker, results) if args.only_hibernate
                    else run_packages(config, tracker, results) if args.only_packages
                    else run_replicas(config, tracker, results) if args.only_replicas
                    else _section(results, "density",
                                  density.density_section(config, results, tracker))
                    if args.only_density else run(config, tracker, results))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; stopping everything started")
        results["interrupted"] = True
        code = 130
    finally:
        tracker.kill_all()
    results["meta"]["loadavg_after"] = loadavg()
    results["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    results["ratios"], results["targets"] = derive(results)
    path = config.results_dir / "latest.json"
    write_json(results, path)
    stamp = results["meta"]["started_at"].replace(":", "").replace("+0000", "Z")
    write_json(results, config.results_dir / f"run-{stamp}.json")  # kept to compare runs
    print(json.dumps(results, indent=2, default=str))
    print()
    print(table(results))
    print(f"\nJSON: {path}")
    return code or (1 if results["errors"] else 0)


if __name__ == "__main__":
    sys.exit(main())
