"""The measuring loops: latency (interleaved between targets), throughput, session start,
stream delivery. Every loop is bounded by a count and by a time cap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.procs import cpu_seconds
from bench.stats import summarize_ms
from bench.target import BenchError, Executor, Target, check_two

CODE = "1+1"


@dataclass
class Sampled:
    """Latency samples (s) of one target plus the CPU spent by the client and the server."""

    samples: list[float] = field(default_factory=list)
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None

    def figures(self) -> dict[str, Any]:
        out = summarize_ms(self.samples)
        n = len(self.samples)
        if n:
            out["client_cpu_ms_per_call"] = round(self.client_cpu_s * 1000 / n, 4)
            if self.server_cpu_s is not None:
                out["server_cpu_ms_per_call"] = round(self.server_cpu_s * 1000 / n, 4)
        return out


def _server_cpu(pid: int | None) -> float:
    return cpu_seconds(pid) if pid is not None else 0.0


async def _block(executor: Executor, n: int, max_s: float, server_pid: int | None,
                 into: Sampled) -> None:
    """``n`` sequential ``1+1`` calls (fewer if ``max_s`` runs out), recorded into ``into``."""
    cpu0, server0 = time.process_time(), _server_cpu(server_pid)
    deadline = time.perf_counter() + max_s
    for _ in range(n):
        start = time.perf_counter()
        check_two(await executor.execute(CODE))
        end = time.perf_counter()
        into.samples.append(end - start)
        if end > deadline:
            break
    into.client_cpu_s += time.process_time() - cpu0
    if server_pid is not None:
        into.server_cpu_s = (into.server_cpu_s or 0.0) + _server_cpu(server_pid) - server0


async def warm(executor: Executor, calls: int) -> None:
    for _ in range(calls):
        check_two(await executor.execute(CODE))


async def interleaved_latency(
    executors: dict[str, tuple[Executor, int | None]],
    iterations: int, rounds: int, warmup: int, max_s: float,
) -> dict[str, Sampled]:
    """Sequential-call latency of each target, in ``rounds`` alternating blocks (order reversed
    every round) so drift on the machine hits every target alike. ``executors`` maps a name to
    (executor, server pid or None). Each target gets at most ``max_s`` seconds of calls."""
    for executor, _ in executors.values():
        await warm(executor, warmup)
    results = {name: Sampled() for name in executors}
    per_block = max(1, iterations // rounds)
    names = list(executors)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            executor, pid = executors[name]
            await _block(executor, per_block, max_s / rounds, pid, results[name])
    return results


async def open_executors(target: Target, n: int, parallel: int, retries: int = 0
                         ) -> tuple[list[Executor], list[str]]:
    """Start ``n`` sessions/kernels, at most ``parallel`` at a time; up to ``retries`` failed
    starts (in all) are retried. Returns the executors and the failures seen (for the report).
    Raises BenchError beyond that (after closing the ones already started)."""
    gate = asyncio.Semaphore(parallel)
    opened: list[Executor] = []
    failures: list[str] = []

    async def one() -> None:
        async with gate:
            while True:
                try:
                    opened.append(await target.start())
                    return
                except BenchError as exc:
                    failures.append(str(exc))
                    if len(failures) > retries:
                        raise

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await close_executors(opened)
        raise BenchError(f"{target.name}: {len(failures)} starts failed (of {n} needed, "
                         f"{retries} retries allowed): {errors[0]}")
    return opened, failures


async def close_executors(executors: Sequence[Executor], parallel: int = 8) -> None:
    gate = asyncio.Semaphore(parallel)

    async def one(executor: Executor) -> None:
        async with gate:
            await executor.close()

    await asyncio.gather(*(one(e) for e in executors), return_exceptions=True)


async def throughput(executors: Sequence[Executor], server_pid: int | None,
                     duration_s: float) -> dict[str, Any]:
    """Each of ``executors`` (warm) calls ``1+1`` back to back for ``duration_s``: calls/s
    overall, per-call latency under that load, client and server CPU per call."""
    loop = Sampled()
    cpu0, server0 = time.process_time(), _server_cpu(server_pid)
    started = time.perf_counter()
    deadline = started + duration_s

    async def worker(executor: Executor) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            check_two(await executor.execute(CODE))
            loop.samples.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker(e) for e in executors))
    wall = time.perf_counter() - started
    loop.client_cpu_s = time.process_time() - cpu0
    if server_pid is not None:
        loop.server_cpu_s = _server_cpu(server_pid) - server0
    return {"concurrency": len(executors), "calls": len(loop.samples), "wall_s": round(wall, 3),
            "calls_per_s": round(len(loop.samples) / wall, 1), "latency_ms": loop.figures()}


async def one_start(target: Target) -> tuple[float, float]:
    """One start: seconds until the session/kernel is usable, and until the first ``1+1``
    result is back (the headline figure). The session is closed afterwards (untimed)."""
    t0 = time.perf_counter()
    executor = await target.start()
    try:
        t1 = time.perf_counter()
        check_two(await executor.execute(CODE))
        t2 = time.perf_counter()
    finally:
        await executor.close()
    return t1 - t0, t2 - t0


async def interleaved_starts(targets: Sequence[Target], count: int, max_s: float,
                             before_each: Callable[[], Awaitable[None]] | None = None
                             ) -> dict[str, dict[str, Any]]:
    """``count`` starts per target, one target after another in each round (order reversed
    every round); ``before_each`` runs untimed first (e.g. to wait for a full warm pool).
    Stops early after ``max_s``. Per target: ``first_result_ms`` and ``ready_ms``."""
    ready: dict[str, list[float]] = {t.name: [] for t in targets}
    first: dict[str, list[float]] = {t.name: [] for t in targets}
    deadline = time.perf_counter() + max_s
    for r in range(count):
        for target in targets if r % 2 == 0 else list(reversed(targets)):
            if before_each is not None:
                await before_each()
            usable, result = await one_start(target)
            ready[target.name].append(usable)
            first[target.name].append(result)
        if time.perf_counter() > deadline:
            break
    return {t.name: {"first_result_ms": summarize_ms(first[t.name]),
                     "ready_ms": summarize_ms(ready[t.name])} for t in targets}


STREAM_CODE = "for i in range({lines}): print(i, flush=True)"  # one iopub message per line


def _ms_since(start: float, at: float | None) -> float | None:
    return None if at is None else round((at - start) * 1000, 3)


async def stream_delivery(executor: Executor, lines: int) -> dict[str, Any]:
    """Print ``lines`` numbered lines in one cell, each flushed (one message per line): time to
    the first and to the last piece of stdout at the client, to the end of the call, and how
    many lines arrived intact (each number once, in order)."""
    start = time.perf_counter()
    out = await executor.execute(STREAM_CODE.format(lines=lines))
    elapsed = time.perf_counter() - start
    got = out.stdout.splitlines()
    intact = sum(1 for i, line in enumerate(got) if line == str(i))
    return {"lines": lines, "delivered": intact, "complete": intact == lines == len(got),
            "first_line_ms": _ms_since(start, out.first_stdout_at),
            "all_lines_ms": _ms_since(start, out.last_stdout_at),
            "seconds": round(elapsed, 4)}
