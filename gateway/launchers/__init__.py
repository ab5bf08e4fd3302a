"""The Launcher protocol: start a kernel in a sandbox, watch it, stop it.

Implementations live in sibling modules (``local``, ``docker``); ``make_launcher`` picks one
from settings. Backends take data and return data: a ``LaunchSpec`` in, a serialisable
``KernelHandle`` out (stored in the registry so another process can find the kernel again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from gateway.kernel import ConnectionInfo

if TYPE_CHECKING:
    from gateway.launchers.meters import Usage
    from gateway.models import Limits
    from gateway.settings import Settings


BLOCKED_MODULES_ENV = "EXEC_GATEWAY_BLOCKED_MODULES"  # read by kernel_boot.py
SUBSHELLS_ENV = "EXEC_GATEWAY_KERNEL_SUBSHELLS"  # read by kernel_tuning.py
DEBUGGER_ENV = "EXEC_GATEWAY_KERNEL_DEBUGGER"  # read by kernel_tuning.py


def policy_env(settings: Settings) -> dict[str, str]:
    """What every kernel's environment carries for the operator's kernel policy: the module
    policy, whether kernel subshells and the debugger are on (set last: neither ``kernel_env``
    nor a client may change them)."""
    env = {SUBSHELLS_ENV: "1" if settings.kernel_subshells else "0",
           DEBUGGER_ENV: "1" if settings.kernel_debugger else "0"}
    if settings.kernel_blocked_modules:
        env[BLOCKED_MODULES_ENV] = ",".join(settings.kernel_blocked_modules)
    return env


@dataclass(frozen=True)
class LaunchSpec:
    """What to start: whose kernel, with which limits and (already allowlisted) environment."""

    session_id: str
    kernel_id: str
    owner: str
    limits: Limits
    env: dict[str, str] = field(default_factory=dict)
    workspace: str = ""  # host path of the session's workspace: the kernel's working directory


KERNEL_DIR_ENV = "EXEC_GATEWAY_KERNEL_DIR"  # a sandbox run's view of the socket directory


@dataclass(frozen=True)
class SandboxRun:
    """A Python script to run beside a live kernel, in its sandbox (see Launcher.run_python)."""

    script: str
    args: list[str]
    limits: Limits
    timeout_s: float
    on_output: Callable[[bytes], None]  # stdout and stderr, as they come


class KernelHandle(BaseModel):
    """A started kernel, as the launcher that started it can find it again."""

    launcher: str
    kernel_id: str
    session_id: str
    ref: str  # pid or container id
    socket_dir: str
    connection: ConnectionInfo  # host-side paths; holds the HMAC key
    extra: dict[str, Any] = {}
    workspace: str | None = None  # host path of the workspace the kernel works in


class ExitInfo(BaseModel):
    """Why a kernel stopped, in words a user can act on."""

    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    vanished: bool = False  # the sandbox was gone when the gateway looked for it

    @property
    def reason(self) -> str:
        if self.vanished:
            return "the sandbox could not be found again after its gateway stopped"
        if self.oom_killed:
            return "memory limit exceeded (killed by the out-of-memory killer)"
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        return f"exited with code {self.exit_code}"


class Meter(Protocol):
    """A sandbox's CPU time and peak memory over one call (see ``launchers.meters``)."""

    def start(self) -> None:
        """Mark the start of a call (and reset the peak where the system allows it)."""

    def stop(self) -> Usage:
        """The figures since ``start()``; None where they cannot be read."""


class Launcher(Protocol):
    name: str
    kernels_outlive_gateway: bool  # kernels keep running when the gateway process stops
    # a started kernel can be moved into another workspace (a silent os.chdir): the warm pool
    # then also serves restarts of sessions that have a workspace already
    moves_workspace: bool
    workspace_in_kernel: str | None  # where the kernel sees its workspace (None: the host path)
    workspace_owner: tuple[int, int] | None  # (uid, gid) workspaces are given to, or None
    workspace_mode: int  # mode of a workspace's root directory

    async def check(self) -> None:
        """Raise LauncherUnavailable if kernels cannot be started now (readiness)."""

    def details(self) -> dict[str, str]:
        """What /healthz says of the launcher's own state beyond its name (may be empty)."""

    async def launch(self, spec: LaunchSpec) -> KernelHandle:
        """Start a kernel; returns once its sockets may appear. Raises KernelStartFailed."""

    async def wait_exit(self, handle: KernelHandle) -> ExitInfo:
        """Resolve when the kernel's sandbox stops, with why."""

    async def terminate(self, handle: KernelHandle, grace_s: float) -> None:
        """Stop the kernel (SIGTERM, ``grace_s``, SIGKILL) and remove its sandbox. Idempotent."""

    async def meter(self, handle: KernelHandle) -> Meter | None:
        """A meter of the kernel's sandbox, or None if its figures cannot be read here."""

    async def libraries(self, script: str) -> dict[str, str]:
        """Run ``script`` (Python printing one JSON object of name → version) with the kernels'
        interpreter and return what it printed. Raises LauncherUnavailable."""

    async def run_python(self, handle: KernelHandle, run: SandboxRun) -> int:
        """Run ``python -I -c run.script *run.args`` with the kernel's interpreter in the
        sandbox of ``handle``'s live kernel: its user, no network, its limits, the workspace
        as working directory, the kernels' environment plus ``EXEC_GATEWAY_KERNEL_DIR`` (the
        socket directory as the sandbox sees it, readable, not writable). Returns the exit
        status (killed past ``run.timeout_s`` or when cancelled). Raises LauncherUnavailable."""

    async def adopt(self, handles: list[KernelHandle]) -> list[KernelHandle]:
        """Of ``handles`` (every handle the registry holds), those whose kernels still run;
        every kernel labelled as this gateway's that no handle claims is removed. Called once
        at start-up."""

    async def attach(self, handle: KernelHandle) -> bool:
        """Whether the kernel of ``handle``, started by another gateway process, still runs
        and can be reached from here (taking over the session of a crashed replica)."""

    async def close(self) -> None:
        """Release the launcher's own resources (not the kernels)."""


def make_launcher(settings: Settings) -> Launcher:
    if settings.launcher == "docker":
        from gateway.launchers.docker import DockerLauncher

        return DockerLauncher(settings)  # type: ignore[no-any-return]
    from gateway.launchers.local import LocalLauncher

    return LocalLauncher(settings)
