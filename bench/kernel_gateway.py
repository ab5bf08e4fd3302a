"""Stock jupyter-kernel-gateway from PyPI, in its own venv, started and stopped by the bench.

The venv (``bench/.kg-venv`` unless ``BENCH_KG_VENV`` says otherwise) is created when missing,
with the same ipykernel version as ours so both servers front the same kernel code.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from bench.http_client import HttpConnection, HttpError
from bench.procs import ProcessTracker, free_port
from bench.target import BenchError

START_TIMEOUT_S = 60.0
INSTALL_TIMEOUT_S = 600.0


def _kg_exe(venv: Path) -> Path:
    return venv / "bin" / "jupyter-kernelgateway"


def _install(venv: Path, log_path: Path) -> None:
    """Blocking: make the venv and pip-install KG and our ipykernel version into it."""
    python = venv / "bin" / "python"
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
             [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              "jupyter_kernel_gateway", f"ipykernel=={version('ipykernel')}"]]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        for argv in steps:
            print(f"bench: {' '.join(argv)}", file=sys.stderr, flush=True)
            done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=INSTALL_TIMEOUT_S, check=False)
            if done.returncode != 0:
                raise BenchError(f"{argv[0]} failed ({done.returncode}); see {log_path}")


def _installed_versions(venv: Path) -> str:
    probe = [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; "
             "print(m.version('jupyter_kernel_gateway'), m.version('ipykernel'))"]
    done = subprocess.run(probe, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"kernel gateway venv is broken: {done.stderr.strip()}")
    kg, ipykernel = done.stdout.split()
    return f"jupyter_kernel_gateway {kg}, ipykernel {ipykernel}"


async def ensure_venv(venv: Path, log_path: Path) -> str:
    """Create ``venv`` with jupyter_kernel_gateway if missing; returns the installed versions.
    Raises BenchError."""
    if not _kg_exe(venv).exists():
        await asyncio.to_thread(_install, venv, log_path)
    return await asyncio.to_thread(_installed_versions, venv)


@dataclass
class KernelGatewayProcess:
    port: int
    token: str
    proc: subprocess.Popen[bytes]
    home: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


async def start_kernel_gateway(tracker: ProcessTracker, venv: Path,
                               log_path: Path) -> KernelGatewayProcess:
    """Start KG on 127.0.0.1 with a token and a private Jupyter config/runtime; returns once
    ``GET /api`` answers. Raises BenchError."""
    port, token = free_port(), secrets.token_urlsafe(24)
    home = Path(tempfile.mkdtemp(prefix="bnk-", dir="/tmp"))
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "PYTHONNOUSERSITE": "1",
    }
    argv = [str(_kg_exe(venv)), "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={port}", "--KernelGatewayApp.port_retries=0",
            f"--KernelGatewayApp.auth_token={token}"]
    proc = tracker.spawn(argv, env=env, cwd=home, log_path=log_path)
    kg = KernelGatewayProcess(port, token, proc, home)
    http = HttpConnection("127.0.0.1", port, {"Authorization": f"token {token}"})
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise BenchError(f"kernel gateway exited with {proc.returncode}; see {log_path}")
            try:
                if (await http.request("GET", "/api")).status == 200:
                    return kg
            except HttpError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"kernel gateway not up after {START_TIMEOUT_S}s; see {log_path}")
            await asyncio.sleep(0.1)
    finally:
        await http.close()


async def stop_kernel_gateway(tracker: ProcessTracker, kg: KernelGatewayProcess) -> None:
    """SIGTERM (KG shuts its kernels down), bounded wait, then kill what is left."""
    await asyncio.to_thread(tracker.stop, kg.proc, 20.0)
    shutil.rmtree(kg.home, ignore_errors=True)
