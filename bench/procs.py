"""Child processes of the bench: spawn, stop, and read their CPU time and memory from /proc.

Every process the bench starts is registered with a ``ProcessTracker``; ``kill_all`` is the
last-resort cleanup that runs whatever happened (Ctrl-C, SIGTERM, an error).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (there is a small race until the server binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads), seconds; 10 ms resolution."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def parent_pid(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (shared pages counted in full)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_kb(pid: int) -> dict[str, int]:
    """``rss`` (shared pages in full), ``pss`` (shared pages split among sharers) and ``uss``
    (pages only this process has) of ``pid``, in KiB, from /proc/<pid>/smaps_rollup."""
    fields = {"Rss:": "rss", "Pss:": "pss", "Private_Clean:": "uss", "Private_Dirty:": "uss"}
    out = {"rss": 0, "pss": 0, "uss": 0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in fields:
            out[fields[parts[0]]] += int(parts[1])
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def is_kernel(argv: list[str]) -> bool:
    """A Jupyter kernel command line: ``... -f <connection>.json`` (ipykernel_launcher, the
    gateway's kernel_boot.py shim, or any other launcher of that shape)."""
    if "-f" not in argv:
        return False
    index = argv.index("-f")
    return index + 1 < len(argv) and argv[index + 1].endswith(".json")


def kernel_pids(parent: int) -> list[int]:
    """The kernel processes below ``parent``."""
    return [p for p in descendants(parent) if is_kernel(cmdline(p))]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, IndexError, ValueError):
        return False


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


class ProcessTracker:
    """Remembers every process the bench started, to stop them and their children at the end."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._pids: set[int] = set()

    def spawn(self, argv: list[str], *, env: dict[str, str], cwd: Path,
              log_path: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session with output to ``log_path``. Raises OSError."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs.append(proc)
        return proc

    def adopt(self, pid: int) -> None:
        """Track a process started by a library (e.g. a raw kernel) for last-resort cleanup."""
        self._pids.add(pid)

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> int | None:
        """SIGTERM, wait ``grace_s``, SIGKILL; then kill any child it left behind. Blocking."""
        below = descendants(proc.pid) if proc.poll() is None else []
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(10)
        _kill_pids(below, grace_s=2.0)
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode

    def kill_all(self) -> None:
        """Last resort, idempotent: SIGKILL every tracked process and its descendants."""
        pids = set(self._pids)
        for proc in self._procs:
            if proc.poll() is None:
                pids.add(proc.pid)
                pids.update(descendants(proc.pid))
        for pid in list(self._pids):
            if alive(pid):
                pids.update(descendants(pid))
        _kill_pids(sorted(pids), grace_s=0.0)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._procs.clear()
        self._pids.clear()


def _kill_pids(pids: list[int], grace_s: float) -> None:
    live = [p for p in pids if alive(p)]
    if grace_s > 0:
        for pid in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p) for p in live):
            time.sleep(0.05)
    for pid in live:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
