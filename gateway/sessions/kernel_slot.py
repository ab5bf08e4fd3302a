"""KernelSlot: the one kernel a session has at a time (jupyter_client's KernelManager, for one
session): start (from the warm pool or booted), reconnect, replace, and the shutdown ladder.

``Kernels`` is what every slot shares: the launcher, the pool, the ZMQ context and the
deadlines. A slot reports its kernel's death through ``on_exit``, never by reaching up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import zmq.asyncio

from gateway.errors import KernelDied, KernelTimeout
from gateway.kernel import KernelConnection, Message
from gateway.launchers import ExitInfo, KernelHandle, Launcher, LaunchSpec, Meter
from gateway.metrics import Metrics
from gateway.pool import KernelPool, StartedKernel, boot_kernel
from gateway.settings import Settings

log = logging.getLogger(__name__)

POLITE_SHUTDOWN_S = 1.0  # how long a shutdown_request may take before the sandbox is stopped


@dataclass
class Kernels:
    """The shared means of starting kernels (built once by the SessionManager)."""

    settings: Settings
    launcher: Launcher
    pool: KernelPool
    zmq: zmq.asyncio.Context
    metrics: Metrics

    async def start(self, spec: LaunchSpec, *, pooled: bool) -> StartedKernel:
        """A started, connected kernel: a pooled one if ``pooled`` and the pool has one.
        Raises KernelStartFailed."""
        kernel = self.pool.take() if pooled else None
        if kernel is None:
            kernel = await boot_kernel(self.launcher, spec, self.zmq, self.metrics,
                                       self.settings.kernel_start_timeout_s)
        return kernel


class KernelSlot:
    def __init__(self, kernels: Kernels, tap: Callable[[Message], None]) -> None:
        self._kernels = kernels
        self._tap = tap  # sees every iopub message of every kernel this slot holds
        self.on_exit: Callable[[ExitInfo], None] = lambda info: None  # its kernel died
        self.generation = 0
        self.handle: KernelHandle | None = None
        self.exit_info: ExitInfo | None = None
        self._conn: KernelConnection | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        return self._conn is not None and not self._conn.dead

    def connection(self) -> KernelConnection:
        """The kernel's connection. Raises KernelDied if there is no live kernel."""
        if self._conn is None or self._conn.dead:
            raise KernelDied(self.exit_info.reason if self.exit_info else "no kernel")
        return self._conn

    async def start(self, spec: LaunchSpec, *, pooled: bool) -> None:
        """A fresh interpreter (generation + 1). Raises KernelStartFailed."""
        kernel = await self._kernels.start(spec, pooled=pooled)
        self._hold(kernel.handle, kernel.conn, kernel.exited)
        self.generation += 1

    async def reconnect(self, handle: KernelHandle) -> bool:
        """Reach a kernel a previous gateway process started; False if it does not answer."""
        conn = KernelConnection(handle.connection, self._kernels.zmq)
        exited = asyncio.ensure_future(self._kernels.launcher.wait_exit(handle))
        try:
            await conn.connect(self._kernels.settings.reconnect_timeout_s, exited)
        except (KernelDied, KernelTimeout, OSError) as exc:
            log.warning("could not re-adopt kernel kernel_id=%s: %s", handle.kernel_id, exc)
            conn.close()
            exited.cancel()
            return False
        self._hold(handle, conn, exited)
        return True

    def _hold(self, handle: KernelHandle, conn: KernelConnection,
              exited: asyncio.Future[ExitInfo]) -> None:
        conn.iopub_tap = self._tap
        conn.max_message_bytes = self._kernels.settings.max_kernel_message_bytes
        conn.on_reject = lambda reason: self._kernels.metrics.kernel_messages_rejected.labels(
            reason).inc()
        self.handle, self._conn, self.exit_info = handle, conn, None
        self._watcher = asyncio.create_task(self._watch(conn, exited))

    async def _watch(self, conn: KernelConnection, exited: asyncio.Future[ExitInfo]) -> None:
        info = await exited
        if self._conn is not conn:
            return
        self.exit_info = info
        conn.mark_dead(info.reason)
        self._kernels.metrics.kernel_deaths.labels("oom" if info.oom_killed else "exit").inc()
        self.on_exit(info)

    def mark_vanished(self) -> None:
        """The sandbox could not be found again: the next call starts a fresh one."""
        self.handle = None
        self.exit_info = ExitInfo(vanished=True)

    def let_go(self) -> None:
        """Stop watching and talking to the kernel, leaving it running (another gateway
        process serves it now, or will)."""
        conn, watcher = self._conn, self._watcher
        self._conn = self._watcher = None
        if watcher is not None:
            watcher.cancel()
        if conn is not None:
            conn.close()

    async def stop(self, *, grace_s: float) -> None:
        """The shutdown ladder: a polite shutdown_request, then the sandbox stopped (SIGTERM,
        ``grace_s``, SIGKILL) and removed. Idempotent."""
        conn, handle = self._conn, self.handle
        if conn is not None and not conn.dead and grace_s > 0:
            await conn.shutdown(min(POLITE_SHUTDOWN_S, grace_s))
        self.let_go()
        if handle is not None:
            await self._kernels.launcher.terminate(handle, grace_s)

    async def meter(self) -> Meter | None:
        """A meter of the current kernel's sandbox (CPU time, peak memory), if readable."""
        if self.handle is None or not self.live:
            return None
        return await self._kernels.launcher.meter(self.handle)

    async def interrupt(self) -> None:
        """Interrupt the running cell over the control channel (best effort)."""
        if self.live:
            with contextlib.suppress(KernelDied, KernelTimeout):
                await self.connection().interrupt(self._kernels.settings.interrupt_grace_s)
