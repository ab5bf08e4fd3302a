"""KernelPool: started, connected kernels waiting for a session, so a new session is instant.

Python's imports make a kernel's start cost ~0.5 s (more in a container); the pool pays that
ahead of time, in the background, one kernel at a time. A pooled kernel serves exactly one
session and is never reused after it. The pool counts against ``max_sessions`` (sessions +
pooled kernels never exceed it) and empties itself when free memory runs low. Each pooled
kernel works in a fresh workspace of its own (default ``disk_mb``), which the session that
takes it keeps; a discarded pooled kernel's workspace is removed with it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq.asyncio

from gateway import errors
from gateway.errors import KernelDied, KernelTimeout
from gateway.kernel import KernelConnection
from gateway.launchers import ExitInfo, KernelHandle, Launcher, LaunchSpec
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.volumes import Volumes

log = logging.getLogger(__name__)


@dataclass
class StartedKernel:
    handle: KernelHandle
    conn: KernelConnection
    exited: asyncio.Future[ExitInfo]


async def boot_kernel(
    launcher: Launcher, spec: LaunchSpec, context: zmq.asyncio.Context, metrics: Metrics,
    timeout_s: float,
) -> StartedKernel:
    """Launch a kernel and wait until it answers, counted in the kernel start metrics (pooled
    or not). Raises KernelStartFailed."""
    started = time.perf_counter()
    handle = await launcher.launch(spec)
    conn = KernelConnection(handle.connection, context)
    exited = asyncio.ensure_future(launcher.wait_exit(handle))
    try:
        await conn.connect(timeout_s, exited)
    except BaseException as exc:
        conn.close()
        exited.cancel()
        await launcher.terminate(handle, 0)
        if isinstance(exc, (KernelDied, KernelTimeout)):
            raise errors.KernelStartFailed(f"the kernel did not start: {exc}") from exc
        raise
    metrics.kernel_starts.labels(launcher.name).inc()
    metrics.kernel_start_seconds.observe(time.perf_counter() - started)
    return StartedKernel(handle, conn, exited)


def mem_available_mb() -> int | None:
    """MemAvailable from /proc/meminfo, or None where there is no such file."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return None


class KernelPool:
    def __init__(
        self,
        settings: Settings,
        launcher: Launcher,
        context: zmq.asyncio.Context,
        metrics: Metrics,
        room: Callable[[], int],
        volumes: Volumes,
    ) -> None:
        self.settings = settings
        self.launcher = launcher
        self.volumes = volumes
        self.context = context
        self.metrics = metrics
        self.room = room  # how many more kernels capacity allows (max_sessions - sessions)
        self._ready: collections.deque[StartedKernel] = collections.deque()
        self._filler: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._ready)

    def target(self) -> int:
        free = mem_available_mb()
        if free is not None and free < self.settings.pool_min_free_mb:
            return 0
        return max(0, min(self.settings.pool_size, self.room()))

    def take(self) -> StartedKernel | None:
        """A ready kernel for a session with the default profile, or None (a miss)."""
        while self._ready:
            kernel = self._ready.popleft()
            if not kernel.exited.done() and not kernel.conn.dead:
                self.metrics.pool_hits.inc()
                self._changed()
                return kernel
            self._discard(kernel)
        if self.settings.pool_size:
            self.metrics.pool_misses.inc()
        self._changed()
        return None

    def _changed(self) -> None:
        self.metrics.pool_size.set(len(self._ready))
        self.refill()

    def refill(self) -> None:
        """Start the background filler if the pool is below its target (and trim above it)."""
        if self._closed:
            return
        target = self.target()
        while len(self._ready) > target:
            self._discard(self._ready.pop())
        if len(self._ready) < target and (self._filler is None or self._filler.done()):
            self._filler = asyncio.create_task(self._fill())

    async def _fill(self) -> None:
        failures = 0
        while not self._closed and len(self._ready) < self.target():
            try:
                workspace = await self.volumes.create(self.settings.default_limits.disk_mb)
                spec = LaunchSpec(session_id="pool", kernel_id=str(uuid.uuid4()), owner="",
                                  limits=self.settings.default_limits, workspace=workspace)
                try:
                    kernel = await boot_kernel(self.launcher, spec, self.context, self.metrics,
                                               self.settings.kernel_start_timeout_s)
                except BaseException:
                    await self.volumes.remove(workspace)
                    raise
            except errors.GatewayError as exc:
                failures += 1
                log.warning("pool: kernel start failed (%s); retrying", exc.message)
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))
                continue
            if self._closed:
                self._discard(kernel)
                return
            try:
                await self._warm(kernel)
            except BaseException:  # closed while warming: this kernel is no one's
                kernel.conn.close()
                await self._stop(kernel)
                raise
            self._ready.append(kernel)
            self.metrics.pool_size.set(len(self._ready))

    async def _warm(self, kernel: StartedKernel) -> None:
        """Run one silent cell: an interpreter's first cell costs ~40 ms more than the next
        (lazy imports); pay it here, not on the user's first call. Silent cells leave the
        execution count and history alone."""
        msg = kernel.conn.session.msg("execute_request", {
            "code": "pass", "silent": True, "store_history": False, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": False})
        with contextlib.suppress(KernelDied, KernelTimeout):
            await kernel.conn.request("shell", msg, wait_idle=True, timeout_s=10)

    def _discard(self, kernel: StartedKernel) -> None:
        kernel.conn.close()
        task = asyncio.create_task(self._stop(kernel))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self.metrics.pool_size.set(len(self._ready))

    async def _stop(self, kernel: StartedKernel) -> None:
        await self.launcher.terminate(kernel.handle, 0)
        if kernel.handle.workspace:
            await self.volumes.remove(kernel.handle.workspace)

    async def close(self) -> None:
        self._closed = True
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._filler
        kernels = list(self._ready)
        self._ready.clear()
        for kernel in kernels:
            kernel.conn.close()
        await asyncio.gather(*(self._stop(k) for k in kernels), return_exceptions=True)
