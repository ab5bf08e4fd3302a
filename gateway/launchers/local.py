"""LocalLauncher: the kernel as a child process (the embedded default; not a security boundary).

Each kernel works in its session's workspace (its cwd and HOME; IPython's and matplotlib's
own files go to the socket directory instead, so they never show up among the user's files),
gets an environment built from an allowlist (never the gateway's own), rlimits, its own process
group, a parent-death signal, and its own network namespace where the OS allows unprivileged
ones. A pooled kernel is started in a workspace of its own, which a new session takes over;
for a session that already has one, the kernel is moved into it (``moves_workspace``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import resource
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from gateway.errors import KernelStartFailed, LauncherUnavailable
from gateway.kernel import ConnectionInfo
from gateway.launchers import (
    KERNEL_DIR_ENV,
    ExitInfo,
    KernelHandle,
    LaunchSpec,
    SandboxRun,
    policy_env,
)
from gateway.launchers.meters import ProcMeter
from gateway.settings import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
KERNEL_BOOT = Path(__file__).resolve().parent.parent / "kernel_boot.py"
_NETNS_PROBES = (["unshare", "--net"], ["unshare", "--user", "--map-current-user", "--net"])


def _probe_netns() -> list[str]:
    """The command prefix that gives a child its own network namespace here, or []."""
    for prefix in _NETNS_PROBES:
        if shutil.which(prefix[0]) is None:
            return []
        try:
            done = subprocess.run(
                [*prefix, "true"], capture_output=True, timeout=5, env={"PATH": os.defpath}
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return prefix
    return []


class LocalLauncher:
    name = "local"
    kernels_outlive_gateway = False  # parent-death signal
    moves_workspace = True  # same user, same filesystem: an os.chdir moves a kernel
    workspace_in_kernel: str | None = None  # the host path itself
    workspace_owner: tuple[int, int] | None = None  # the gateway's own user
    workspace_mode = 0o700

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._runtime_dir = settings.runtime_dir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._exits: dict[str, asyncio.Future[ExitInfo]] = {}
        self._meters: dict[str, ProcMeter] = {}  # kept per kernel: their /proc files stay open
        self._netns: list[str] | None = None
        log.warning(
            "local launcher: kernels run as this user on this machine; this is NOT a security "
            "boundary for untrusted code (use GATEWAY_LAUNCHER=docker for that)"
        )

    async def check(self) -> None:
        if not Path(self._settings.kernel_python).exists():
            raise LauncherUnavailable(
                f"kernel interpreter not found: {self._settings.kernel_python}"
            )
        try:
            self._runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise LauncherUnavailable(f"cannot create runtime directories: {exc}") from exc

    async def _netns_prefix(self) -> list[str]:
        if self._netns is None:
            self._netns = (
                await asyncio.to_thread(_probe_netns)
                if self._settings.local_network_isolation
                else []
            )
            if self._settings.local_network_isolation and not self._netns:
                log.warning("local launcher: no network namespace available; kernels share the "
                            "host network")
        return self._netns

    def _env(self, spec: LaunchSpec, workdir: Path, socket_dir: Path) -> dict[str, str]:
        python_dir = str(Path(self._settings.kernel_python).parent)
        env = {
            "PATH": f"{python_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "PYTHONNOUSERSITE": "1",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            # the tools' own state lives with the kernel (removed with it), not among the files
            "IPYTHONDIR": str(socket_dir / "ipython"),
            "MPLCONFIGDIR": str(socket_dir / "matplotlib"),
            "XDG_CACHE_HOME": str(socket_dir / "cache"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "JUPYTER_CONFIG_DIR": str(socket_dir / "jupyter"),
            "JUPYTER_DATA_DIR": str(socket_dir / "jupyter"),
        }
        env.update(self._settings.kernel_env)
        env.update(spec.env)
        env.update(policy_env(self._settings))
        return env

    def _preexec(self, spec: LaunchSpec) -> None:
        # Runs in the child between fork and exec: only async-signal-safe-ish calls here.
        limits = spec.limits
        if limits.disk_mb:
            size = limits.disk_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        if limits.memory_mb and self._settings.local_memory_rlimit:
            size = limits.memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_DATA, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.umask(0o077)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    async def launch(self, spec: LaunchSpec) -> KernelHandle:
        netns = await self._netns_prefix()
        if not spec.workspace:
            raise KernelStartFailed("no workspace for the kernel")
        socket_dir = self._runtime_dir / secrets.token_hex(6)
        workdir = Path(spec.workspace)
        try:
            self._runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            socket_dir.mkdir(mode=0o700)
            info = ConnectionInfo.for_ipc(str(socket_dir / "k"))
            conn_file = socket_dir / "connection.json"
            fd = os.open(conn_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(info.model_dump(), fh)
            argv = [*netns, self._settings.kernel_python, str(KERNEL_BOOT), "-f", str(conn_file)]
            # Popen on the loop thread on purpose: PDEATHSIG is tied to the forking thread.
            proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=self._env(spec, workdir, socket_dir),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=lambda: self._preexec(spec),
            )
        except OSError as exc:
            shutil.rmtree(socket_dir, ignore_errors=True)
            raise KernelStartFailed(f"could not start the kernel process: {exc}") from exc
        self._watch(spec.kernel_id, proc)
        log.info("kernel started session_id=%s pid=%d netns=%s", spec.session_id, proc.pid,
                 bool(netns))
        return KernelHandle(
            launcher=self.name,
            kernel_id=spec.kernel_id,
            session_id=spec.session_id,
            ref=str(proc.pid),
            socket_dir=str(socket_dir),
            connection=info,
            workspace=spec.workspace,
        )

    def _watch(self, kernel_id: str, proc: subprocess.Popen[bytes]) -> None:
        """Resolve an exit future when the process ends: a pidfd on the loop, no thread, no poll."""
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[ExitInfo] = loop.create_future()
        key = str(proc.pid)
        self._procs[key] = proc
        self._exits[key] = exited
        pidfd = os.pidfd_open(proc.pid)

        def on_exit() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            code = proc.wait()
            self._procs.pop(key, None)
            meter = self._meters.pop(key, None)
            if meter is not None:
                meter.close()
            info = ExitInfo(signal=-code) if code < 0 else ExitInfo(exit_code=code)
            if not exited.done():
                exited.set_result(info)

        loop.add_reader(pidfd, on_exit)

    async def wait_exit(self, handle: KernelHandle) -> ExitInfo:
        exited = self._exits.get(handle.ref)
        if exited is None:
            return ExitInfo(exit_code=None)
        return await asyncio.shield(exited)

    async def terminate(self, handle: KernelHandle, grace_s: float) -> None:
        proc = self._procs.get(handle.ref)
        exited = self._exits.get(handle.ref)
        if proc is not None and exited is not None:
            for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    await asyncio.wait_for(asyncio.shield(exited), wait_s)
                    break
                except TimeoutError:
                    continue
        self._exits.pop(handle.ref, None)
        await asyncio.to_thread(shutil.rmtree, handle.socket_dir, True)

    def details(self) -> dict[str, str]:
        return {}

    async def libraries(self, script: str) -> dict[str, str]:
        """``script`` run by ``kernel_python`` (isolated mode, 30 s at most)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self._settings.kernel_python, "-I", "-c", script, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={"PATH": os.defpath})
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            return dict(json.loads(out))
        except (OSError, TimeoutError, ValueError) as exc:
            raise LauncherUnavailable(f"cannot run {self._settings.kernel_python}: {exc}"
                                      ) from exc

    async def run_python(self, handle: KernelHandle, run: SandboxRun) -> int:
        """A child like the kernel: a network namespace of its own, the same rlimits and
        environment (without the session's own keys), the workspace as cwd."""
        if not handle.workspace:
            raise LauncherUnavailable("the kernel has no workspace")
        spec = LaunchSpec(session_id=handle.session_id, kernel_id=handle.kernel_id, owner="",
                          limits=run.limits, workspace=handle.workspace)
        env = self._env(spec, Path(handle.workspace), Path(handle.socket_dir))
        env[KERNEL_DIR_ENV] = handle.socket_dir
        argv = [*await self._netns_prefix(), self._settings.kernel_python, "-I", "-c",
                run.script, *run.args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=handle.workspace, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=lambda: self._preexec(spec))
        except OSError as exc:
            raise LauncherUnavailable(f"cannot start {argv[0]}: {exc}") from exc
        try:
            async with asyncio.timeout(run.timeout_s):
                assert proc.stdout is not None
                while chunk := await proc.stdout.read(65536):
                    run.on_output(chunk)
                return await proc.wait()
        except TimeoutError:
            return -signal.SIGKILL
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()

    async def meter(self, handle: KernelHandle) -> ProcMeter | None:
        if handle.ref not in self._procs:
            return None
        meter = self._meters.get(handle.ref)
        if meter is None:
            meter = self._meters[handle.ref] = ProcMeter(int(handle.ref))
        return meter

    async def adopt(self, handles: list[KernelHandle]) -> list[KernelHandle]:
        return []  # local kernels die with the gateway (parent-death signal)

    async def attach(self, handle: KernelHandle) -> bool:
        return False  # ... and with it, the gateway that started them

    async def close(self) -> None:
        return None
