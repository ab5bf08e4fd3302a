"""Python run in the Docker sandbox beside the kernel: the image's interpreter in a throwaway
container (``libraries``: what the kernels can import) and ``docker exec`` in a live kernel's
container (``run_python``: package installs), with that container's user, network (none),
limits, seccomp profile and environment. See gateway/launchers/docker.py for the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal

import docker
import docker.errors

from gateway.errors import LauncherUnavailable
from gateway.launchers import KERNEL_DIR_ENV, KernelHandle, SandboxRun
from gateway.launchers.docker_container import KERNEL_DIR
from gateway.launchers.docker_events import ENGINE_ERRORS, UNREACHABLE, engine_errors
from gateway.settings import Settings

PROBE_LABEL = "exec-gateway.probe"  # a throwaway container of ``libraries`` (not a kernel's)


async def libraries(client: docker.DockerClient, settings: Settings, script: str
                    ) -> dict[str, str]:
    """``script`` run by the image's interpreter in a throwaway container (no network, no
    capabilities, the kernel's uid). The engine removes the container when it exits
    (``AutoRemove``, as ``docker run --rm``), so a gateway stopped mid-run leaves none behind;
    its output is read on an attach made before it starts. One created but never started
    (its gateway stopped in between) is removed by the next listing of that gateway."""
    api = client.api

    def run() -> bytes:
        # one of an earlier process stopped between create and start was never started
        for stale in api.containers(all=True, filters={
                "label": f"{PROBE_LABEL}={settings.instance_id}", "status": "created"}):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(stale["Id"], force=True)
        created = api.create_container(
            settings.docker_image, ["-I", "-c", script], entrypoint="/opt/kernel/bin/python",
            user=str(settings.docker_kernel_uid), network_disabled=True,
            labels={PROBE_LABEL: settings.instance_id},
            host_config=api.create_host_config(
                auto_remove=True, network_mode="none", cap_drop=["ALL"],
                security_opt=["no-new-privileges"], pids_limit=64, mem_limit="512m"))
        try:
            output = api.attach(created["Id"], stdout=True, stderr=False, stream=True,
                                logs=True)
            api.start(created["Id"])
        except BaseException:
            with contextlib.suppress(docker.errors.DockerException, *UNREACHABLE):
                api.remove_container(created["Id"], force=True)
            raise
        return b"".join(output)

    try:
        return dict(json.loads(await asyncio.to_thread(run)))
    except (docker.errors.DockerException, *UNREACHABLE, ValueError) as exc:
        raise LauncherUnavailable(f"cannot list the image's libraries: {exc}") from exc


async def run_python(client: docker.DockerClient, settings: Settings, handle: KernelHandle,
                     run: SandboxRun) -> int:
    """``docker exec`` in the kernel's container, as the container's user: same network
    (none), cgroup limits, seccomp profile, capabilities (none) and environment. Past
    ``run.timeout_s`` (or when cancelled) the process is killed (``timeout -s KILL`` in
    the container, and its host pid as well)."""
    api = client.api
    loop = asyncio.get_running_loop()
    seconds = max(1, math.ceil(run.timeout_s))
    with engine_errors("cannot run a command in the kernel's container"):
        attrs = await asyncio.to_thread(api.inspect_container, handle.ref)
        user = (attrs.get("Config") or {}).get("User") or str(settings.docker_kernel_uid)
        exec_id = (await asyncio.to_thread(
            api.exec_create, handle.ref,
            ["timeout", "-s", "KILL", str(seconds), "/opt/kernel/bin/python", "-I", "-c",
             run.script, *run.args],
            stdout=True, stderr=True, user=user, workdir="/work",
            environment={KERNEL_DIR_ENV: KERNEL_DIR}))["Id"]

    def stream() -> None:
        for chunk in api.exec_start(exec_id, stream=True):
            loop.call_soon_threadsafe(run.on_output, bytes(chunk))

    reading = asyncio.ensure_future(asyncio.to_thread(stream))
    try:
        with engine_errors("the command in the kernel's container failed"):
            await asyncio.wait_for(asyncio.shield(reading), seconds + 5)
            state = await asyncio.to_thread(api.exec_inspect, exec_id)
        code = state.get("ExitCode")
        return int(code) if isinstance(code, int) else -signal.SIGKILL
    except TimeoutError:
        return -signal.SIGKILL
    finally:
        if not reading.done():
            with contextlib.suppress(*ENGINE_ERRORS, OSError, ValueError):
                pid = (await asyncio.to_thread(api.exec_inspect, exec_id)).get("Pid")
                if isinstance(pid, int) and pid > 0:
                    os.killpg(pid, signal.SIGKILL)  # timeout and its child
