"""Meters: the CPU time and peak memory of one kernel's sandbox during one call.

``start()`` right before a cell is sent, ``stop()`` right after its reply: both read small
kernel pseudo-files (/proc, cgroupfs), microseconds each, on the event loop on purpose (a
thread hop would cost more than the read). A figure that cannot be read is None.

- ``ProcMeter`` (local launcher): the kernel process. CPU = the process's CPU-time clock
  (every thread, ended ones too, in nanoseconds: ``clock_gettime`` on the clock id
  ``clock_getcpuclockid(pid)`` gives, no file read) plus the CPU of the children it waited for
  (cutime+cstime of ``/proc/<pid>/stat``, 1/CLK_TCK = 10 ms steps). Memory = peak resident
  set size (``VmHWM``) of the kernel process alone (not its children), reset to the current
  RSS at ``start()`` by writing 5 to ``/proc/<pid>/clear_refs``. Its /proc files stay open
  between calls (``pread`` at offset 0 reads them afresh): a launcher keeps one meter per
  kernel and closes it when the kernel exits.
- ``CgroupMeter`` (Docker launcher): the container's cgroup, every process in it. CPU =
  ``cpuacct.usage`` (v1) or ``cpu.stat`` ``usage_usec`` (v2). Memory = the cgroup's peak
  charge, which includes page cache and the tmpfs files of ``/tmp`` and ``/work``:
  ``memory.max_usage_in_bytes`` reset by writing 0 (v1), or ``memory.peak`` reset through
  its own file descriptor (v2, Linux 6.12+).

Where the peak cannot be reset (an older v2 kernel, no clear_refs), the figure is the
lifetime peak if that grew during the call (then it is the call's peak), otherwise the
larger of the usage at start and at end: a lower bound.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Usage:
    cpu_ms: float | None = None
    memory_peak_mb: float | None = None


def _read_int(path: Path | str) -> int:
    with open(path, "rb") as fh:
        return int(fh.read().split()[0])


def _field_kb(status: bytes, name: bytes) -> int:
    """The number after ``name`` in a /proc status file (``kB`` values). Raises ValueError."""
    start = status.index(name) + len(name)
    return int(status[start:status.index(b"kB", start)])


def _process_cpu_clock(pid: int) -> int:
    """Linux's CPU-time clock id of process ``pid`` (``clock_getcpuclockid``, which Python
    does not wrap): ``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``."""
    return ((~pid) << 3) | 2


class ProcMeter:
    """One local kernel process (see the module docstring). ``close()`` when it is gone."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._clock = _process_cpu_clock(pid)
        self._stat: int | None = None  # fds of /proc/<pid>/stat, status, clear_refs
        self._status: int | None = None
        self._clear_refs: int | None = None
        self._cpu0: int | None = None
        self._rss0: int | None = None
        self._hwm0: int | None = None
        self._reset = False

    def _open(self) -> tuple[int, int]:
        """The stat and status fds (opened once). Raises OSError."""
        if self._stat is None or self._status is None:
            self.close()
            base = f"/proc/{self._pid}/"
            self._stat = os.open(base + "stat", os.O_RDONLY | os.O_CLOEXEC)
            self._status = os.open(base + "status", os.O_RDONLY | os.O_CLOEXEC)
            with contextlib.suppress(OSError):  # (then the peak is not reset: a lower bound)
                self._clear_refs = os.open(base + "clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        return self._stat, self._status

    def _cpu(self, stat_fd: int) -> int:
        """CPU ns: the process's clock plus its waited-for children's ticks."""
        threads = time.clock_gettime_ns(self._clock)
        fields = os.pread(stat_fd, 4096, 0).rsplit(b")", 1)[1].split()
        children = int(fields[13]) + int(fields[14])  # cutime cstime
        return threads + children * _TICK_NS

    @staticmethod
    def _status_kb(status_fd: int) -> tuple[int, int]:
        """(VmHWM, VmRSS) in KiB. Raises ValueError when the file lacks them."""
        status = os.pread(status_fd, 8192, 0)
        return _field_kb(status, b"\nVmHWM:"), _field_kb(status, b"\nVmRSS:")

    def start(self) -> None:
        try:
            stat_fd, status_fd = self._open()
            self._cpu0 = self._cpu(stat_fd)
            self._reset = False
            if self._clear_refs is not None:
                with contextlib.suppress(OSError):
                    os.write(self._clear_refs, b"5")
                    self._reset = True
            # after a reset the peak at stop() is the call's own: no need to read it now
            self._hwm0, self._rss0 = (0, 0) if self._reset else self._status_kb(status_fd)
        except (OSError, KeyError, ValueError, IndexError):
            self._cpu0 = None

    def stop(self) -> Usage:
        if self._cpu0 is None or self._hwm0 is None or self._rss0 is None \
                or self._stat is None or self._status is None:
            return Usage()
        try:
            cpu_ns = max(self._cpu(self._stat) - self._cpu0, 0)
            hwm, rss = self._status_kb(self._status)
        except (OSError, KeyError, ValueError, IndexError):
            return Usage()
        if self._reset or hwm > self._hwm0:
            peak_kb = hwm
        else:
            peak_kb = max(self._rss0, rss)
        return Usage(cpu_ms=round(cpu_ns / 1e6, 3), memory_peak_mb=round(peak_kb / 1024, 1))

    def close(self) -> None:
        """Close the /proc files (idempotent; a later ``start()`` opens them again)."""
        for fd in (self._stat, self._status, self._clear_refs):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._stat = self._status = self._clear_refs = None


@dataclass(frozen=True)
class CgroupFiles:
    """Where one container's figures are read (cgroup v1 or v2)."""

    cpu: Path  # v1 cpuacct.usage (ns) or v2 cpu.stat (usage_usec)
    peak: Path  # v1 memory.max_usage_in_bytes or v2 memory.peak
    current: Path  # v1 memory.usage_in_bytes or v2 memory.current
    v2: bool


def cgroup_files(container_id: str, pid: int | None = None,
                 root: Path = CGROUP_ROOT) -> CgroupFiles | None:
    """The cgroup files of a Docker container: the usual places for the cgroupfs and systemd
    drivers, else (given the container's ``pid``) where /proc/<pid>/cgroup says."""
    if (root / "cgroup.controllers").exists():
        dirs = [root / "system.slice" / f"docker-{container_id}.scope",
                root / "docker" / container_id]
        if pid is not None:
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                    if line.startswith("0::"):
                        dirs.append(root / line[3:].lstrip("/"))
        for d in dirs:
            if (d / "memory.peak").exists():
                return CgroupFiles(d / "cpu.stat", d / "memory.peak", d / "memory.current", True)
        return None
    v1: dict[str, Path] = {}
    relative = [Path("docker") / container_id,
                Path("system.slice") / f"docker-{container_id}.scope"]
    if pid is not None:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                relative.append(Path(line.split(":", 2)[2].lstrip("/")))
    for rel in relative:
        memory = root / "memory" / rel
        cpu = next((root / name / rel for name in ("cpuacct", "cpu,cpuacct")
                    if (root / name / rel / "cpuacct.usage").exists()), None)
        if (memory / "memory.max_usage_in_bytes").exists() and cpu is not None:
            v1 = {"cpu": cpu / "cpuacct.usage", "peak": memory / "memory.max_usage_in_bytes",
                  "current": memory / "memory.usage_in_bytes"}
            break
    if not v1:
        return None
    return CgroupFiles(v1["cpu"], v1["peak"], v1["current"], False)


class CgroupMeter:
    """One container's cgroup (see the module docstring)."""

    def __init__(self, files: CgroupFiles) -> None:
        self._files = files
        self._cpu0: int | None = None
        self._peak_fd: int | None = None  # v2: the descriptor the reset applies to
        self._peak0 = 0
        self._current0 = 0
        self._reset = False

    def _cpu_ns(self) -> int:
        if not self._files.v2:
            return _read_int(self._files.cpu)
        for line in self._files.cpu.read_bytes().splitlines():
            if line.startswith(b"usage_usec "):
                return int(line.split()[1]) * 1000
        raise ValueError("no usage_usec in cpu.stat")

    def start(self) -> None:
        self._close()
        try:
            self._cpu0 = self._cpu_ns()
            self._current0 = _read_int(self._files.current)
            self._peak0 = _read_int(self._files.peak)
            self._reset = self._reset_peak()
        except (OSError, ValueError, IndexError):
            self._cpu0 = None

    def _reset_peak(self) -> bool:
        if not self._files.v2:
            try:
                self._files.peak.write_bytes(b"0")
                return True
            except OSError:
                return False
        try:
            fd = os.open(self._files.peak, os.O_RDWR)
        except OSError:
            return False
        try:
            os.write(fd, b"reset\n")
        except OSError:
            os.close(fd)
            return False
        self._peak_fd = fd
        return True

    def _peak(self) -> int:
        if self._peak_fd is not None:
            return int(os.pread(self._peak_fd, 64, 0).split()[0])
        return _read_int(self._files.peak)

    def stop(self) -> Usage:
        try:
            if self._cpu0 is None:
                return Usage()
            cpu_ns = max(self._cpu_ns() - self._cpu0, 0)
            peak = self._peak()
            if not self._reset and peak <= self._peak0:
                peak = max(self._current0, _read_int(self._files.current))
            return Usage(cpu_ms=round(cpu_ns / 1e6, 3), memory_peak_mb=round(peak / MIB, 1))
        except (OSError, ValueError, IndexError):
            return Usage()
        finally:
            self._close()

    def _close(self) -> None:
        if self._peak_fd is not None:
            os.close(self._peak_fd)
            self._peak_fd = None
