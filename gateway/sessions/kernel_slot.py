"""KernelSlot: the one kernel a session has at a time (jupyter_client's KernelManager, for one
session): start (from the warm pool or booted), reconnect, replace, and the shutdown ladder.

``Kernels`` is what every slot shares: the launcher, the pool, the workspaces, the ZMQ context
and the deadlines. A slot reports its kernel's death through ``on_exit``, never by reaching up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from gateway.volumes import Volumes

log = logging.getLogger(__name__)

POLITE_SHUTDOWN_S = 1.0  # how long a shutdown_request may take before the sandbox is stopped
MOVE_TIMEOUT_S = 10.0  # the silent cell that moves a pooled kernel into a workspace


@dataclass
class Kernels:
    """The shared means of starting kernels (built once by the SessionManager)."""

    settings: Settings
    launcher: Launcher
    pool: KernelPool
    zmq: zmq.asyncio.Context
    metrics: Metrics
    volumes: Volumes

    async def start(self, spec: LaunchSpec, *, pooled: bool) -> StartedKernel:
        """A started, connected kernel working in ``spec.workspace`` (a new workspace when
        that is empty: the session's first kernel); a pooled one if ``pooled`` and the pool
        has one. Raises KernelStartFailed, WorkspaceFull."""
        if spec.workspace and not await self.volumes.ensure(spec.workspace):
            log.warning("workspace of session_id=%s is gone from this host; starting with a "
                        "new, empty one", spec.session_id)
            spec = dataclasses.replace(spec, workspace="")
        movable = not spec.workspace or self.launcher.moves_workspace
        kernel = self.pool.take() if pooled and movable else None
        if kernel is not None and spec.workspace and kernel.handle.workspace != spec.workspace:
            kernel = await self._move(kernel, spec.workspace)
        if kernel is not None:
            return kernel
        workspace = spec.workspace or await self.volumes.create(spec.limits.disk_mb)
        try:
            return await boot_kernel(self.launcher, dataclasses.replace(spec, workspace=workspace),
                                     self.zmq, self.metrics, self.settings.kernel_start_timeout_s)
        except BaseException:
            if not spec.workspace:
                await self.volumes.remove(workspace)
            raise

    async def _move(self, kernel: StartedKernel, workspace: str) -> StartedKernel | None:
        """Move a pooled kernel into ``workspace`` (its own, fresh one is removed); None if
        the kernel did not do it (it is stopped then)."""
        code = (f"import os as _o, sys as _s; _o.chdir({workspace!r}); "
                f"_o.environ['HOME'] = {workspace!r}; _p = _s.modules.get('kernel_pip'); "
                f"_p and _p.add_to_path({workspace!r}); del _o, _s, _p")  # .packages moves too
        msg = kernel.conn.session.msg("execute_request", {
            "code": code, "silent": True, "store_history": False, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": False})
        old = kernel.handle.workspace
        try:
            reply = await kernel.conn.request("shell", msg, wait_idle=True,
                                              timeout_s=MOVE_TIMEOUT_S)
            moved = reply["content"].get("status") == "ok"
        except (KernelDied, KernelTimeout):
            moved = False
        if not moved:
            log.warning("a pooled kernel could not be moved into its session's workspace")
            kernel.conn.close()
            await self.launcher.terminate(kernel.handle, 0)
        if old and old != workspace:
            await self.volumes.remove(old)
        if not moved:
            return None
        kernel.handle = kernel.handle.model_copy(update={"workspace": workspace})
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
