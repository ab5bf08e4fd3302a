"""What one kernel container is: its socket directory on the host and the container the engine
creates for it — no network, read-only root, no capabilities, ``no-new-privileges``, the
seccomp profile, limits, an init, labels, and the only host paths it sees (the socket directory
at ``/kernel``, the workspace at ``/work``, the kernel environment's read-only volume).
See gateway/launchers/docker.py for why each is so."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from docker.types import LogConfig, Mount, Ulimit

from gateway.kernel import ConnectionInfo
from gateway.launchers import LaunchSpec, policy_env
from gateway.launchers.docker_events import (
    LABEL_GATEWAY,
    LABEL_KERNEL,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_SESSION,
    LABEL_SOCKET_DIR,
)
from gateway.settings import Settings

KERNEL_DIR = "/kernel"  # where the socket directory appears inside the container
DIR_OPEN = 0o2770  # setgid: the kernel's sockets join the directory's group
DIR_LOCKED = 0o2750  # after start-up: the kernel may connect, not create
_LOG_MAX = "1m"  # the container's stdout/stderr log on the host; a kernel may print a lot
SECCOMP_PROFILE = Path(__file__).with_name("seccomp.json")


def seccomp_option(settings: Settings) -> str:
    """The ``security_opt`` entry: the engine takes the profile itself, not a path (compact:
    it is in every container's HostConfig); settings checked the file is a JSON profile."""
    profile = json.loads((settings.docker_seccomp_profile or SECCOMP_PROFILE).read_text())
    return "seccomp=" + json.dumps(profile, separators=(",", ":"))


def make_socket_dir(settings: Settings, info: ConnectionInfo) -> tuple[Path, int]:
    """Make a fresh socket directory holding the kernel's connection file; returns it and
    the gid the kernel must run with. Raises OSError."""
    runtime_dir = settings.runtime_dir
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = runtime_dir / secrets.token_hex(6)
    path.mkdir(mode=0o700)
    if os.geteuid() == 0:
        # root reaches any socket; give the kernel a group of its own, never gid 0
        os.chown(path, 0, settings.docker_kernel_gid)
    os.chmod(path, DIR_OPEN)  # after chown, which clears the setgid bit
    try:
        # read-only for the kernel (through the group); the paths as the kernel sees them
        fd = os.open(path / "connection.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "w") as fh:
            json.dump(info.with_ip(f"{KERNEL_DIR}/k").model_dump(), fh)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path, os.stat(path).st_gid


def labels(settings: Settings, spec: LaunchSpec, socket_dir: Path) -> dict[str, str]:
    return {
        LABEL_MANAGED: "true",
        LABEL_GATEWAY: settings.instance_id,
        LABEL_SESSION: spec.session_id,
        LABEL_KERNEL: spec.kernel_id,
        LABEL_OWNER: spec.owner,
        LABEL_SOCKET_DIR: str(socket_dir),
    }


def create(api: Any, settings: Settings, spec: LaunchSpec, socket_dir: Path, gid: int,
           seccomp: str, env_mounts: list[Mount]) -> str:
    """Create (not start) the kernel's container with the engine's low-level ``api``;
    returns its id. Blocking: run it in a thread."""
    limits = spec.limits
    disk = f"size={limits.disk_mb}m" if limits.disk_mb else ""
    uid = settings.docker_kernel_uid
    host_config = api.create_host_config(
        network_mode="none",
        read_only=True,
        tmpfs={  # noexec as Docker's default: nothing written is run as a program
            "/tmp": f"rw,noexec,nosuid,nodev,mode=1777,{disk}".rstrip(","),
            **({} if spec.workspace else {"/work": f"rw,noexec,nosuid,nodev,uid={uid},"
                                                   f"gid={gid},mode=0700,{disk}".rstrip(",")}),
        },
        shm_size=f"{limits.disk_mb}m" if limits.disk_mb else None,
        mounts=[Mount(target=KERNEL_DIR, source=str(socket_dir), type="bind"),
                *([Mount(target="/work", source=spec.workspace, type="bind")]
                  if spec.workspace else []),
                *env_mounts],  # read-only
        cap_drop=["ALL"],
        security_opt=["no-new-privileges", seccomp],
        pids_limit=limits.pids,
        mem_limit=f"{limits.memory_mb}m" if limits.memory_mb else None,
        memswap_limit=f"{limits.memory_mb}m" if limits.memory_mb else None,
        nano_cpus=int(limits.cpus * 1e9) if limits.cpus else None,
        init=True,
        ulimits=[Ulimit(name="core", soft=0, hard=0)],
        log_config=LogConfig(type="json-file", config={"max-size": _LOG_MAX, "max-file": "1"}),
        runtime=settings.docker_runtime,
    )
    env = {
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        **settings.kernel_env,
        **spec.env,
        **policy_env(settings),
    }
    created = api.create_container(
        settings.docker_image,
        name=f"egw-{settings.instance_id}-{socket_dir.name}",
        user=f"{uid}:{gid}",
        working_dir="/work",
        environment=env,
        labels=labels(settings, spec, socket_dir),
        host_config=host_config,
        network_disabled=True,
    )
    return str(created["Id"])
