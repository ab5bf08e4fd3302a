"""KernelLibraries: which libraries (and versions) the kernels have, for /healthz — asked of
the launcher once, in the background at start-up (a container run for Docker takes seconds).
"""

from __future__ import annotations

import asyncio
import logging

from gateway import errors
from gateway.launchers import Launcher

log = logging.getLogger(__name__)

# What /healthz reports, by distribution name (as pip names them)
KERNEL_LIBRARIES = ("ipykernel", "numpy", "pandas", "scipy", "sympy", "matplotlib",
                    "scikit-learn")
# Run by the kernel's interpreter: the installed versions, without importing the libraries.
VERSIONS_SCRIPT = (
    "import json, sys\nfrom importlib import metadata\nout = {}\n"
    f"for name in {KERNEL_LIBRARIES!r}:\n"
    "    try:\n        out[name] = metadata.version(name)\n"
    "    except metadata.PackageNotFoundError:\n        pass\n"
    "out['python'] = '.'.join(map(str, sys.version_info[:3]))\n"
    "print(json.dumps(out))\n")


class KernelLibraries:
    def __init__(self, launcher: Launcher) -> None:
        self._launcher = launcher
        self.known: dict[str, str] = {}  # empty until learnt (or when it cannot be learnt)
        self._task: asyncio.Task[None] | None = None

    def learn(self) -> None:
        """Ask the launcher in the background (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._learn())

    async def _learn(self) -> None:
        try:
            self.known = await self._launcher.libraries(VERSIONS_SCRIPT)
        except errors.GatewayError as exc:
            log.warning("could not list the kernels' libraries: %s", exc.message)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
