"""Two gateway replicas sharing one Redis registry: what forwarding a call costs.

A real ``redis-server`` (loopback, no persistence, its own directory) and two gateways A and
B (local launcher, pool off, same token, distinct instance ids, one key prefix). Every session
is created on A; the *direct* targets talk to A, the *forwarded* ones to B, which forwards each
REST call on its replica link to A (and relays each ``/v1`` WebSocket frame). Whether B really
forwarded is checked from both gateways' ``gateway_executes_total``: B must have executed
nothing. The *pipe* target talks to A through a byte pipe in its own process (``bench.pipe``):
what any forwarder costs at the least on this machine, before it does anything.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.config import BenchConfig
from bench.gateway_rest import (
    GatewayProcess,
    RestTarget,
    start_gateway,
    stop_gateway,
)
from bench.pipe import start_pipe
from bench.procs import ProcessTracker, free_port
from bench.report import (
    REPLICA_REST_DIRECT,
    REPLICA_REST_FORWARDED,
    REPLICA_REST_MEMORY,
    REPLICA_REST_PIPE,
    REPLICA_V1_DIRECT,
    REPLICA_V1_FORWARDED,
)
from bench.sections import gateway_settings, log, warm_latency
from bench.target import BenchError, Target
from bench.v1_ws import V1WsTarget

REDIS_START_TIMEOUT_S = 10.0


@dataclass
class RedisProcess:
    """A running ``redis-server`` on 127.0.0.1 (no persistence) and its directory."""

    port: int
    proc: subprocess.Popen[bytes]
    home: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


async def _pong(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        async with asyncio.timeout(1.0):
            return (await reader.readline()).startswith(b"+PONG")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def start_redis(tracker: ProcessTracker, binary: str, log_path: Path) -> RedisProcess:
    """``redis-server`` on a free loopback port, nothing saved; returns once it answers PING.
    Raises BenchError."""
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="bnr-", dir="/tmp"))
    proc = tracker.spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(home)],
                         env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home)},
                         cwd=home, log_path=log_path)
    redis = RedisProcess(port, proc, home)
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while not await _pong(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            await stop_redis(tracker, redis)
            raise BenchError(f"redis-server did not answer PING within "
                             f"{REDIS_START_TIMEOUT_S}s (exit {proc.returncode}); see {log_path}")
        await asyncio.sleep(0.05)
    return redis


async def stop_redis(tracker: ProcessTracker, redis: RedisProcess) -> None:
    await asyncio.to_thread(tracker.stop, redis.proc, 10.0)
    shutil.rmtree(redis.home, ignore_errors=True)


async def _get(gw: GatewayProcess, path: str) -> str:
    conn = gw.connection()
    try:
        r = await conn.request("GET", path)
    finally:
        await conn.close()
    if r.status != 200:
        raise BenchError(f"GET {path}: HTTP {r.status}: {r.body[:200]!r}")
    return r.body.decode()


async def executes_total(gw: GatewayProcess) -> float:
    """Cells this gateway executed itself (``gateway_executes_total``, every status)."""
    text = await _get(gw, "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("gateway_executes_total{"))


async def replicas_section(config: BenchConfig, results: dict[str, Any],
                           tracker: ProcessTracker) -> None:
    """Sequential ``1+1`` on sessions created on replica A, called on A (direct) and through
    replica B (forwarded), REST and ``/v1`` WS, interleaved in rounds like ``latency``. The
    server CPU per call is that of the replica the client talks to (B alone for forwarded
    calls: the cost of forwarding, not A's share)."""
    out = results["replicas"]
    binary = shutil.which("redis-server")
    if binary is None:
        out["skipped"] = "redis-server is not installed (scripts/test-deps.sh installs it)"
        results["notes"].append(f"replicas section skipped: {out['skipped']}")
        return
    logs, tag = config.results_dir / "logs", secrets.token_hex(3)
    redis: RedisProcess | None = None
    gws: list[GatewayProcess] = []
    try:
        redis = await start_redis(tracker, binary, logs / "redis.log")
        shared = {**gateway_settings(config, 8), "registry_url": redis.url,
                  "token": secrets.token_urlsafe(24), "redis_key_prefix": f"bench-{tag}:"}
        ids = {name: f"bench-{tag}-{name}" for name in ("a", "b")}
        for name, instance in ids.items():
            gws.append(await start_gateway(tracker, logs / f"gateway-replica-{name}.log",
                                           {**shared, "instance_id": instance}))
        a, b = gws
        gws.append(await start_gateway(tracker, logs / "gateway-memory-registry.log",
                                       gateway_settings(config, 8)))
        gws.append(await start_pipe(tracker, a, logs / "pipe.log"))
        out.update(instance_ids=ids, key_prefix=shared["redis_key_prefix"],
                   registry=json.loads(await _get(a, "/healthz"))["registry"])
        # the REST calls direct, forwarded and piped all go to one session on A: each kernel
        # has a speed of its own (two sessions on one gateway differ by up to 10 % in p50
        # here), which would be in the ratio otherwise
        rest = await RestTarget(a).start()
        targets: list[Target] = [
            RestTarget(a, REPLICA_REST_DIRECT, session_id=rest.session_id),
            RestTarget(b, REPLICA_REST_FORWARDED, session_id=rest.session_id),
            RestTarget(gws[3], REPLICA_REST_PIPE, session_id=rest.session_id),  # the floor
            V1WsTarget(a, REPLICA_V1_DIRECT), V1WsTarget(b, REPLICA_V1_FORWARDED, owner=a),
            RestTarget(gws[2], REPLICA_REST_MEMORY),  # what the Redis registry costs A
        ]
        before = [await executes_total(gw) for gw in gws[:2]]
        log("  replicas: direct vs forwarded latency")
        try:
            # blocks of 10 calls: this machine's speed drifts within seconds (block medians
            # from 2.2 to 4.9 ms in one run), and a ratio of near-equal figures needs the drift
            # to hit every target alike
            out["latency"] = await warm_latency(
                replace(config, rounds=max(config.rounds, config.iterations // 10)), targets)
        finally:
            await rest.close()
        served = [await executes_total(gw) - n for gw, n in zip(gws[:2], before, strict=True)]
        out["executes_served"] = {"a": int(served[0]), "b": int(served[1])}
        if served[1]:
            results["notes"].append(f"replicas: B executed {served[1]:.0f} cells itself; the "
                                    "forwarded figures are not all forwarded calls")
    finally:
        for gw in gws:
            await stop_gateway(tracker, gw)
        if redis is not None:
            await stop_redis(tracker, redis)

