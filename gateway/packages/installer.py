"""Installer: a job's wheels into the session's ``.packages``, inside its sandbox, offline.

The wheels (hard links into the cache) and ``pip.zip`` are staged in a fresh directory inside
the kernel's socket directory, which the sandbox reads and cannot write (Docker: ``/kernel``).
Then ``INSTALL_SCRIPT`` runs through ``Launcher.run_python``, with the kernel's interpreter,
user, limits and no network: ``pip install --no-index --find-links <stage> --target
<workspace>/.packages``. pip's temporary files go to ``.packages/.tmp`` (same filesystem, so
they count against the quota and the final move is a rename); pip installs everything there
first and moves it into place only when all of it succeeded, so a failed install (over quota,
killed) leaves ``.packages`` as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.launchers import KernelHandle, Launcher, SandboxRun
from gateway.models import Limits, PackageInfo

PACKAGES_DIR = ".packages"  # at the workspace root; kernel_pip.py puts it on sys.path
REPORT_MARK = "\x1eexec-gateway-report "
MAX_OUTPUT_LINE = 2000

# Run in the sandbox as `python -I -c INSTALL_SCRIPT <stage name> <requirement>...`, with the
# workspace as cwd and EXEC_GATEWAY_KERNEL_DIR set. Prints REPORT_MARK + the installed
# [[name, version]] last.
INSTALL_SCRIPT = r"""
import json, os, shutil, sys, tempfile
stage = os.path.join(os.environ["EXEC_GATEWAY_KERNEL_DIR"], sys.argv[1])
target = os.path.join(os.getcwd(), ".packages")
tmp = os.path.join(target, ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
os.makedirs(tmp, exist_ok=True)
os.environ["TMPDIR"] = tempfile.tempdir = tmp
os.environ["PIP_CONFIG_FILE"] = os.devnull
sys.path.insert(0, os.path.join(stage, "pip.zip"))
from pip._internal.cli.main import main
report = os.path.join(tmp, "report.json")
try:
    code = main(["install", "--no-index", "--find-links", stage, "--target", target,
                 "--upgrade", "--no-cache-dir", "--disable-pip-version-check", "--no-input",
                 "--progress-bar", "off", "--no-warn-script-location", "--report", report,
                 "--", *sys.argv[2:]])
    if code == 0:
        with open(report) as fh:
            done = json.load(fh).get("install", [])
        got = [[i["metadata"]["name"], i["metadata"]["version"]] for i in done]
        print("\x1eexec-gateway-report " + json.dumps(got), flush=True)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
sys.exit(code)
"""


@dataclass
class Outcome:
    installed: list[PackageInfo] = field(default_factory=list)
    error: str | None = None


def unpacked_bytes(wheels: list[Path]) -> int:
    """What the wheels take once unpacked (their members' sizes). Blocking."""
    total = 0
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            total += sum(info.file_size for info in zf.infolist())
    return total


def tree_bytes(root: str, limit: int = 200_000) -> int:
    """Bytes of the regular files under ``root`` (never following links; at most ``limit``
    entries looked at). Blocking."""
    total, seen = 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            seen += 1
            if seen > limit:
                return total
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_blocks * 512
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return total


class Stage:
    """A job's wheels and pip, in a directory of the kernel's socket directory. Blocking."""

    def __init__(self, handle: KernelHandle) -> None:
        self.name = f"pkg-{secrets.token_hex(6)}"
        self.path = Path(handle.socket_dir) / self.name

    def fill(self, wheels: list[Path], pip_zip: Path) -> None:
        # setgid like its parent (Docker): the kernel's group reads it; nobody else writes
        self.path.mkdir(mode=0o750)
        os.chmod(self.path, 0o750 | (os.stat(self.path.parent).st_mode & stat.S_ISGID))
        for source in [*wheels, pip_zip]:
            dest = self.path / (source.name if source != pip_zip else "pip.zip")
            try:
                os.link(source, dest)
            except OSError:  # another filesystem: a copy
                shutil.copyfile(source, dest)
                os.chmod(dest, 0o644)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class Installer:
    def __init__(self, launcher: Launcher) -> None:
        self._launcher = launcher

    async def install(self, handle: KernelHandle, limits: Limits, requirements: list[str],
                      wheels: list[Path], pip_zip: Path, timeout_s: float,
                      on_line: Callable[[str], None]) -> Outcome:
        """Install ``requirements`` from ``wheels`` in the sandbox of ``handle``. Raises
        LauncherUnavailable."""
        stage = Stage(handle)
        lines = _Lines(on_line)
        try:
            await asyncio.to_thread(stage.fill, wheels, pip_zip)
            code = await self._launcher.run_python(handle, SandboxRun(
                script=INSTALL_SCRIPT, args=[stage.name, *requirements], limits=limits,
                timeout_s=timeout_s, on_output=lines.feed))
        finally:
            await asyncio.to_thread(stage.remove)
        lines.flush()
        if code == 0 and lines.report is not None:
            return Outcome(installed=lines.report)
        return Outcome(error=_explain(code, lines.errors, timeout_s))


class _Lines:
    """The sandbox's output split into lines: the report taken out, the rest shown."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._partial = b""
        self.errors: list[str] = []
        self.report: list[PackageInfo] | None = None

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        *whole, self._partial = data.split(b"\n")
        if len(self._partial) > MAX_OUTPUT_LINE:
            whole.append(self._partial)
            self._partial = b""
        for raw in whole:
            self._line(raw.decode("utf-8", "replace").rstrip()[:MAX_OUTPUT_LINE])

    def flush(self) -> None:
        if self._partial:
            self._line(self._partial.decode("utf-8", "replace").rstrip())
            self._partial = b""

    def _line(self, line: str) -> None:
        if line.startswith(REPORT_MARK):
            try:
                got = json.loads(line[len(REPORT_MARK):])
                self.report = [PackageInfo(name=str(n)[:200], version=str(v)[:100])
                               for n, v in got][:1000]
            except (ValueError, TypeError):
                self.report = None
            return
        if "ERROR" in line or "Error" in line or "No space left" in line:
            self.errors.append(line)
            del self.errors[:-20]
        if line:
            self._on_line(line)


def _explain(code: int, errors: list[str], timeout_s: float) -> str:
    text = "\n".join(errors)
    if code < 0 or code == 137:
        return f"the install was stopped: it took longer than {timeout_s:.0f} s, or the " \
               "sandbox ran out of memory"
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return "over quota: the packages do not fit in the session's workspace (disk_mb)"
    last = next((e for e in reversed(errors) if e.startswith("ERROR:")), "")
    return f"the install failed in the sandbox: {last.removeprefix('ERROR:').strip()[:500]}" \
        if last else f"the install failed in the sandbox (exit status {code})"
