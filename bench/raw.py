"""The reference: jupyter_client's AsyncKernelClient straight to a local ipykernel over ipc.

Kernels are started by jupyter_client's AsyncKernelManager from a kernelspec written here
with the same interpreter and argv the gateway's local launcher uses, a scrubbed environment
like the launcher's, and no heartbeat thread (the gateway runs none either). Readiness is the
gateway's handshake (kernel_info reply + an iopub message for it), not ``wait_for_ready``,
whose 0.2 s iopub flush would make the start reference slower than the floor.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from bench.procs import ProcessTracker
from bench.target import CALL_TIMEOUT_S, BenchError, ExecOutput
from gateway.launchers import policy_env
from gateway.settings import Settings

KERNEL_NAME = "bench-python"
KERNEL_BOOT = Path(__file__).resolve().parent.parent / "gateway" / "kernel_boot.py"
START_TIMEOUT_S = 60.0


def _kernel_env(home: Path, gateway_kernel: bool) -> dict[str, str]:
    """The environment the gateway's local launcher gives a kernel (with ``gateway_kernel``,
    also the kernel policy its boot shim reads, as a default-settings gateway sets it)."""
    python_dir = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{python_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    if gateway_kernel:
        env.update(policy_env(Settings()))
    return env


class RawKernel:
    """One kernel and its AsyncKernelClient; one caller at a time."""

    def __init__(self, km: AsyncKernelManager, workdir: Path) -> None:
        self.km = km
        self.kc = km.client()
        self.workdir = workdir

    @property
    def pid(self) -> int | None:
        provisioner = self.km.provisioner
        return getattr(provisioner, "pid", None) if provisioner is not None else None

    async def handshake(self, timeout_s: float) -> None:
        """Resend kernel_info until its reply and an iopub message parented to it arrive (the
        iopub SUB socket misses what is published before it is connected). Raises BenchError."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg_id = self.kc.kernel_info()
            try:
                while (await self.kc.get_shell_msg(timeout=0.5))["parent_header"].get(
                        "msg_id") != msg_id:
                    pass
                while (await self.kc.get_iopub_msg(timeout=0.5))["parent_header"].get(
                        "msg_id") != msg_id:
                    pass
                return
            except Empty:
                if not await self.km.is_alive():
                    raise BenchError("raw kernel died during start-up") from None
        raise BenchError(f"raw kernel not ready after {timeout_s}s")

    async def execute(self, code: str) -> ExecOutput:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await self._execute(code)
        except TimeoutError as exc:
            raise BenchError(f"raw kernel: no answer in {CALL_TIMEOUT_S}s") from exc

    async def _execute(self, code: str) -> ExecOutput:
        msg_id = self.kc.execute(code, allow_stdin=False)
        text, stdout = "", []
        first = last = None
        while True:  # iopub until this request's idle status (what the gateway waits for too)
            msg: dict[str, Any] = await self.kc.get_iopub_msg(timeout=CALL_TIMEOUT_S)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "execute_result":
                text = content["data"].get("text/plain", "")
            elif kind == "stream" and content.get("name") == "stdout":
                last = time.perf_counter()
                if first is None:
                    first = last
                stdout.append(content["text"])
            elif kind == "status" and content["execution_state"] == "idle":
                break
        while True:
            reply: dict[str, Any] = await self.kc.get_shell_msg(timeout=CALL_TIMEOUT_S)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        if reply["content"]["status"] != "ok":
            raise BenchError(f"raw kernel: execute_reply status {reply['content']['status']}")
        return ExecOutput(text=text, stdout="".join(stdout), first_stdout_at=first,
                          last_stdout_at=last)

    async def close(self) -> None:
        self.kc.stop_channels()
        try:
            async with asyncio.timeout(15):
                await self.km.shutdown_kernel(now=False)
        except (TimeoutError, RuntimeError):
            await self.km.shutdown_kernel(now=True)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


class RawTarget:
    """Starts RawKernels; ``close`` removes the kernelspec and socket directory."""

    server_pid: int | None = None

    def __init__(self, tracker: ProcessTracker, lift_iopub_hwm: bool = False,
                 name: str = "raw") -> None:
        """``lift_iopub_hwm``: run the kernel through the gateway's ``kernel_boot.py`` shim, as
        its local launcher does (iopub's send high-water mark lifted, and the kernel tuned by
        ``kernel_tuning.py``), instead of ``ipykernel_launcher``: stock ipykernel drops iopub
        messages beyond 1000 queued, so a flushed-print stream read by a slower client loses
        lines. Without it (the latency reference): stock ipykernel as shipped."""
        self.name = name
        self._tracker = tracker
        self.lift_iopub_hwm = lift_iopub_hwm
        # short on purpose: ipc socket paths must stay under 107 bytes
        self._dir = Path(tempfile.mkdtemp(prefix="bnr-", dir="/tmp"))
        spec_dir = self._dir / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        argv = ([sys.executable, str(KERNEL_BOOT), "-f", "{connection_file}"] if lift_iopub_hwm
                else [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
        spec = {"argv": argv, "display_name": "bench", "language": "python",
                "interrupt_mode": "message"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        self._specs = KernelSpecManager(kernel_dirs=[str(self._dir / "kernels")])

    async def start(self) -> RawKernel:
        tag = secrets.token_hex(4)
        workdir = self._dir / f"w-{tag}"
        workdir.mkdir()
        km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=self._specs,
                                transport="ipc", ip=str(self._dir / f"k{tag}"),
                                connection_file=str(self._dir / f"k{tag}.json"))
        await km.start_kernel(env=_kernel_env(workdir, self.lift_iopub_hwm), cwd=str(workdir))
        kernel = RawKernel(km, workdir)
        if kernel.pid is not None:
            self._tracker.adopt(kernel.pid)
        kernel.kc.start_channels(hb=False)
        try:
            await kernel.handshake(START_TIMEOUT_S)
        except BaseException:
            await kernel.close()
            raise
        return kernel

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

