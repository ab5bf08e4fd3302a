"""DockerLauncher: each kernel in its own locked-down container (the production sandbox).

One container per kernel launch, created with the docker SDK (every blocking call in a
thread, every call bounded by ``docker_api_timeout_s``): non-root, no network, read-only
root, a size-capped tmpfs ``/tmp``, no capabilities, ``no-new-privileges``, pids, memory
(swap equal) and CPU limits, an init process, and two host paths only: the session's socket
directory, mounted at ``/kernel``, and its workspace, at ``/work``. Deaths are learnt from
ONE engine event stream (``die``/``oom``) read by a background thread, then the container is
inspected for why.

Seccomp: every container gets ``seccomp.json`` (next to this module), or the profile
``docker_seccomp_profile`` names. The bundled one is Docker's default profile (moby/profiles
seccomp v0.2.3, ``default.json`` as vendored in moby/moby b985e2313a) with these names taken
out of every rule and nothing else changed: ptrace, process_vm_readv, process_vm_writev, kcmp,
pidfd_getfd, process_madvise (reading or steering another process: the container's init, a
sibling), personality (turning ASLR off), bpf, perf_event_open. io_uring_*, userfaultfd,
keyctl, add_key and request_key are not in that default at all (Docker 20.10's allowed
io_uring): they fail with EPERM like every call no rule allows.

Socket permissions: the socket directory belongs to the gateway's uid and to a group the
kernel runs with (the gateway's own gid, or ``docker_kernel_gid`` when the gateway is root),
setgid, mode 2770; the kernel's ``umask 007`` makes its sockets group read/write. Once the
five sockets exist the directory goes to 2750, so the kernel cannot write to the host.

Workspace: ``/work`` is the session's workspace directory on the host (gateway/volumes.py:
a loop-mounted image of ``disk_mb`` when the gateway is root), bind-mounted, so it outlives
the container: a restart, an OOM kill or a takeover gives the next container the same files.
The image's Python environment comes from a read-only named volume made once from the image
(gateway/launchers/envvolume.py, ``docker_env_volume``).
It belongs to the kernel's user (``docker_kernel_uid``/gid) when the gateway is root, else to
the gateway with the shared group (setgid, 2770). A started container cannot be given another
mount, so a pooled container comes with a fresh workspace of its own, which a new session
takes; a session that has one already gets a container started for it. The ``/tmp`` tmpfs
counts against the memory limit (so do ``/dev/shm``, sized like it, and the kernel itself).

Labels name the gateway (``instance_id``), the session and kernel, and the socket directory;
a warm-pool kernel is labelled ``session_id=pool`` (labels are fixed at creation). Start-up
(``adopt``) removes the containers of this instance id that no session record claims; other
instance ids are left alone. A replica that takes over a crashed replica's session ``attach``es
to its container, which keeps the first gateway's label. Inside, the hostname is the
container's short id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import docker
import docker.errors

from gateway.errors import GatewayError, KernelStartFailed, LauncherUnavailable
from gateway.kernel import ConnectionInfo
from gateway.launchers import ExitInfo, KernelHandle, LaunchSpec, SandboxRun, docker_exec
from gateway.launchers import docker_container as container
from gateway.launchers.docker_container import (
    DIR_LOCKED,
    KERNEL_DIR,
    SECCOMP_PROFILE,
    make_socket_dir,
    seccomp_option,
)
from gateway.launchers.docker_events import (
    ENGINE_ERRORS,
    LABEL_GATEWAY,
    LABEL_MANAGED,
    LABEL_SOCKET_DIR,
    UNREACHABLE,
    ContainerExits,
    engine_errors,
    exit_info,
)
from gateway.launchers.envvolume import EnvVolume
from gateway.launchers.meters import CgroupFiles, CgroupMeter, cgroup_files
from gateway.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["ENGINE_ERRORS", "SECCOMP_PROFILE", "DockerLauncher", "engine_errors"]

_SOCKET_NAMES = tuple(f"k-{n}" for n in range(1, 6))


class DockerLauncher:
    name = "docker"
    kernels_outlive_gateway = True
    moves_workspace = False  # a running container's mounts are fixed at creation
    workspace_in_kernel: str | None = "/work"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        if os.geteuid() == 0:  # the sandbox's user owns its files
            self.workspace_owner: tuple[int, int] | None = (settings.docker_kernel_uid,
                                                             settings.docker_kernel_gid)
            self.workspace_mode = 0o700
        else:  # the gateway owns them; the kernel writes through the shared group
            self.workspace_owner = None
            self.workspace_mode = 0o2770
        self._runtime_dir = settings.runtime_dir
        self._seccomp = seccomp_option(settings)
        self._client: docker.DockerClient | None = None
        self.env_volume = EnvVolume(settings.docker_image, settings.docker_env_volume)
        self._start_lock = asyncio.Lock()
        self._exits = ContainerExits(settings.docker_api_timeout_s)
        self._cgroups: dict[str, CgroupFiles] = {}  # container id → where its figures are

    # ------------------------------------------------------------------ engine
    def _connect(self) -> docker.DockerClient:
        timeout = self._settings.docker_api_timeout_s
        try:
            if self._settings.docker_host:
                client = docker.DockerClient(base_url=self._settings.docker_host, timeout=timeout)
            else:
                client = docker.DockerClient.from_env(timeout=timeout)
            client.ping()
        except ENGINE_ERRORS as exc:
            raise LauncherUnavailable(f"cannot reach the Docker engine: {exc}") from exc
        return client

    async def _ready(self) -> docker.DockerClient:
        """The shared client, with the event stream running (so no death is missed)."""
        if self._client is not None and self._exits.following:
            return self._client
        async with self._start_lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._connect)
            await self._exits.follow(self._client)
            self.env_volume.start(self._client)  # in the background, once
            return self._client

    async def check(self) -> None:
        client = await self._ready()
        image = self._settings.docker_image
        try:
            with engine_errors("cannot reach the Docker engine"):
                await asyncio.to_thread(client.api.inspect_image, image)
        except LauncherUnavailable as exc:
            if isinstance(exc.__cause__, docker.errors.ImageNotFound):
                raise LauncherUnavailable(
                    f"image {image} not found: run `make kernel-image`") from exc.__cause__
            raise
        try:
            self._runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise LauncherUnavailable(f"cannot create runtime directories: {exc}") from exc

    # ------------------------------------------------------------------ launch
    def _create(self, spec: LaunchSpec, socket_dir: Path, gid: int) -> str:
        """Create (not start) the container; returns its id. Runs in a thread."""
        assert self._client is not None
        api = self._client.api
        # the env volume of the image this tag names now (a rebuilt image has its own); asked
        # at every launch, not cached: only the engine knows where the tag points, and a stale
        # id would mount the old image's environment over a rebuilt image's (~3 ms here)
        env_mounts = (self.env_volume.mounts(self._client, str(
            api.inspect_image(self._settings.docker_image)["Id"]))
            if self._settings.docker_env_volume else [])
        return container.create(api, self._settings, spec, socket_dir, gid, self._seccomp,
                                env_mounts)

    async def launch(self, spec: LaunchSpec) -> KernelHandle:
        """Start the kernel's container and return once its sockets exist (the directory is then
        locked). Raises LauncherUnavailable (engine, image) or KernelStartFailed."""
        client = await self._ready()
        info = ConnectionInfo.for_ipc(f"{KERNEL_DIR}/k")  # the host-side path is set below
        try:
            socket_dir, gid = await asyncio.to_thread(make_socket_dir, self._settings, info)
        except OSError as exc:
            raise KernelStartFailed(f"cannot create the socket directory: {exc}") from exc
        info = info.with_ip(str(socket_dir / "k"))
        container_id: str | None = None
        try:
            # cancelled meanwhile (the pool closing): the thread still creates the container;
            # wait for its id so the cleanup below removes it instead of leaving it behind
            creating = asyncio.ensure_future(
                asyncio.to_thread(self._create, spec, socket_dir, gid))
            try:
                container_id = await asyncio.shield(creating)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    container_id = await creating
                raise
            exited = self._exits.watch(container_id)
            await asyncio.to_thread(client.api.start, container_id)
            await self._wait_for_sockets(socket_dir, exited)
            await asyncio.to_thread(os.chmod, socket_dir, DIR_LOCKED)
        except BaseException as exc:
            if isinstance(exc, _KernelExited) and container_id is not None:
                log.warning("kernel container exited during start-up session_id=%s reason=%s "
                            "output:\n%s", spec.session_id, exc, await self._tail(container_id))
            await self._discard(container_id, socket_dir)
            translated = _launch_error(exc, self._settings.docker_image)
            if translated is None:
                raise
            raise translated from exc
        log.info("kernel started session_id=%s container=%s", spec.session_id, container_id[:12])
        return KernelHandle(
            launcher=self.name,
            kernel_id=spec.kernel_id,
            session_id=spec.session_id,
            ref=container_id,
            socket_dir=str(socket_dir),
            connection=info,
            extra={"image": self._settings.docker_image},
            workspace=spec.workspace or None,
        )

    async def _wait_for_sockets(self, socket_dir: Path, exited: asyncio.Future[ExitInfo]) -> None:
        paths = [socket_dir / name for name in _SOCKET_NAMES]
        delay_s = 0.002
        async with asyncio.timeout(self._settings.kernel_start_timeout_s):
            while not all(os.path.lexists(p) for p in paths):
                if exited.done():
                    raise _KernelExited(exited.result())
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 0.02)

    async def _tail(self, container_id: str, lines: int = 20) -> str:
        """The last lines the container printed (for the operator's log, never for clients)."""
        assert self._client is not None
        try:
            out = await asyncio.to_thread(self._client.api.logs, container_id, tail=lines)
        except ENGINE_ERRORS as exc:
            return f"(no output: {exc})"
        return bytes(out).decode("utf-8", "replace")

    async def _discard(self, container_id: str | None, socket_dir: Path) -> None:
        """Best-effort cleanup after a failed launch."""
        if container_id is not None:
            self._exits.forget(container_id)
            with contextlib.suppress(Exception):
                await self._remove(container_id)
        await asyncio.to_thread(shutil.rmtree, socket_dir, True)

    # ------------------------------------------------------------------ watch / stop
    async def wait_exit(self, handle: KernelHandle) -> ExitInfo:
        exited = self._exits.get(handle.ref)
        if exited is None:  # not started by this process: ask the engine once, then events
            await self._ready()
            exited = self._exits.watch(handle.ref)
            state = await self._exits.state(handle.ref)
            if (state is None or not state.get("Running")) and not exited.done():
                code = state.get("ExitCode") if state else None
                exited.set_result(exit_info(code, bool(state and state.get("OOMKilled"))))
        return await asyncio.shield(exited)

    async def _remove(self, container_id: str) -> None:
        assert self._client is not None
        try:
            await asyncio.to_thread(self._client.api.remove_container, container_id, force=True,
                                    v=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # removal already in progress
                return
            raise

    async def terminate(self, handle: KernelHandle, grace_s: float) -> None:
        """SIGTERM (through the container's init), ``grace_s``, SIGKILL; then remove the container
        and the socket directory. Idempotent; never raises for a container already gone."""
        container_id = handle.ref
        exited = self._exits.get(container_id)
        try:
            client = await self._ready()
            if grace_s > 0 and not (exited is not None and exited.done()):
                with contextlib.suppress(docker.errors.NotFound):
                    await asyncio.to_thread(client.api.stop, container_id,
                                            timeout=math.ceil(grace_s))
            await self._remove(container_id)
        except (*ENGINE_ERRORS, LauncherUnavailable) as exc:
            # the container stays behind, labelled: the next start-up removes it
            log.warning("could not remove container=%s: %s", container_id[:12], exc)
        finally:
            self._exits.forget(container_id)
            self._cgroups.pop(container_id, None)
            if exited is not None and not exited.done():
                exited.set_result(ExitInfo(signal=signal.SIGKILL))
            await asyncio.to_thread(shutil.rmtree, handle.socket_dir, True)

    # ------------------------------------------------------------------ sandbox runs
    def details(self) -> dict[str, str]:
        """``env_volume``: the kernel env volume of the image — off, pending, filling (kernels
        read the image's own files meanwhile: slower starts), ready, none (the image has no
        env path label) or failed."""
        return {"env_volume": self.env_volume.state}

    async def libraries(self, script: str) -> dict[str, str]:
        """See gateway/launchers/docker_exec.py: a throwaway container of the image."""
        return await docker_exec.libraries(await self._ready(), self._settings, script)

    async def run_python(self, handle: KernelHandle, run: SandboxRun) -> int:
        """See gateway/launchers/docker_exec.py: ``docker exec`` in the kernel's container."""
        return await docker_exec.run_python(await self._ready(), self._settings, handle, run)

    async def meter(self, handle: KernelHandle) -> CgroupMeter | None:
        """The container's cgroup: found at the usual places, else through its init's pid
        (one inspect, then cached while the container runs)."""
        files = self._cgroups.get(handle.ref)
        if files is None:
            files = cgroup_files(handle.ref)
        if files is None:
            state = await self._exits.state(handle.ref)
            pid = state.get("Pid") if state else None
            files = cgroup_files(handle.ref, pid) if isinstance(pid, int) and pid > 0 else None
        if files is None:
            return None
        self._cgroups[handle.ref] = files
        return CgroupMeter(files)

    # ------------------------------------------------------------------ orphans
    async def list_ours(self) -> list[dict[str, Any]]:
        """Every container (running or not) carrying this project's label, as the engine's
        summaries (``Id``, ``Labels``, ``State``...), of every gateway. Raises
        LauncherUnavailable."""
        client = await self._ready()
        with engine_errors("cannot list containers"):
            found: list[dict[str, Any]] = await asyncio.to_thread(
                client.api.containers, all=True, filters={"label": f"{LABEL_MANAGED}=true"}
            )
        return found

    async def adopt(self, handles: list[KernelHandle]) -> list[KernelHandle]:
        """Of ``handles`` (from the registry), those whose containers still run. Every other
        container labelled with this gateway's instance id is removed with its socket directory:
        an orphan of an earlier process, or a claimed kernel that died meanwhile. Containers of
        other instance ids are never touched (another gateway may still want them)."""
        claimed = {h.ref: h for h in handles}
        alive: list[KernelHandle] = []
        removed = 0
        for summary in await self.list_ours():
            labels = summary.get("Labels") or {}
            handle = claimed.get(summary["Id"])
            if handle is not None and summary.get("State") == "running":
                alive.append(handle)  # (a replica that took a session over keeps its label)
                continue
            if labels.get(LABEL_GATEWAY) != self._settings.instance_id:
                continue
            with contextlib.suppress(*ENGINE_ERRORS):
                await self._remove(summary["Id"])
                removed += 1
            socket_dir = Path(labels.get(LABEL_SOCKET_DIR, ""))
            if socket_dir.parent == self._runtime_dir and socket_dir.name:
                await asyncio.to_thread(shutil.rmtree, socket_dir, True)
        if removed:
            log.info("removed kernel containers no session claims count=%d", removed)
        return alive

    async def attach(self, handle: KernelHandle) -> bool:
        """Running on this engine, with its socket directory on this host. Raises
        LauncherUnavailable when the engine does not answer (it cannot tell)."""
        client = await self._ready()
        try:
            with engine_errors("cannot inspect container"):
                attrs = await asyncio.to_thread(client.api.inspect_container, handle.ref)
        except LauncherUnavailable as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return False
            raise
        running = bool((attrs.get("State") or {}).get("Running"))
        return running and await asyncio.to_thread(Path(handle.socket_dir).is_dir)

    async def close(self) -> None:
        await self._exits.close()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.env_volume.close, self._client)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._client.close)


class _KernelExited(Exception):
    def __init__(self, info: ExitInfo) -> None:
        super().__init__(info.reason)
        self.info = info


def _launch_error(exc: BaseException, image: str) -> GatewayError | None:
    """Translate a failed launch into what the client should see; None: re-raise as is."""
    if isinstance(exc, docker.errors.ImageNotFound):
        return LauncherUnavailable(f"image {image} not found: run `make kernel-image`")
    if isinstance(exc, UNREACHABLE):
        return LauncherUnavailable(f"cannot reach the Docker engine: {exc}")
    if isinstance(exc, docker.errors.APIError):
        return KernelStartFailed(f"the Docker engine refused the kernel container: "
                                 f"{exc.explanation or exc}")
    if isinstance(exc, _KernelExited):
        return KernelStartFailed(f"the kernel container stopped during start-up: {exc}")
    if isinstance(exc, TimeoutError):
        return KernelStartFailed("the kernel did not open its sockets in time")
    if isinstance(exc, OSError):
        return KernelStartFailed(f"cannot prepare the kernel's socket directory: {exc}")
    return None
