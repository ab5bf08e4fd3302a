"""Meters: CPU time and peak memory of a real process over one call, and cgroup files of
both layouts read and reset as the kernel exposes them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.launchers.meters import CgroupFiles, CgroupMeter, ProcMeter, cgroup_files

CHILD = """
import sys
for line in sys.stdin:
    if line.startswith('alloc'):
        b = b'x' * (100 << 20); sum(b[::4096]); del b
    print('done', flush=True)
"""


def test_proc_meter_sees_a_100_mb_burst_and_resets_its_peak() -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        meter = ProcMeter(proc.pid)
        meter.start()
        proc.stdin.write("alloc\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "done\n"
        burst = meter.stop()
        assert burst.memory_peak_mb is not None and burst.memory_peak_mb >= 100
        assert burst.cpu_ms is not None and burst.cpu_ms > 5
        meter.start()
        proc.stdin.write("idle\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "done\n"
        idle = meter.stop()
        assert idle.memory_peak_mb is not None and idle.memory_peak_mb < 60
    finally:
        proc.kill()
        proc.wait()


def test_proc_meter_of_a_gone_process_reads_nothing() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    meter = ProcMeter(proc.pid)
    meter.start()
    assert meter.stop().cpu_ms is None


def _v1(root: Path, cid: str) -> None:
    mem = root / "memory" / "docker" / cid
    cpu = root / "cpu,cpuacct" / "docker" / cid
    mem.mkdir(parents=True)
    cpu.mkdir(parents=True)
    (mem / "memory.max_usage_in_bytes").write_text(str(300 << 20))
    (mem / "memory.usage_in_bytes").write_text(str(50 << 20))
    (cpu / "cpuacct.usage").write_text("1000000000")


def test_cgroup_v1_layout_is_found_and_its_peak_reset(tmp_path: Path) -> None:
    _v1(tmp_path, "abc")
    files = cgroup_files("abc", root=tmp_path)
    assert files is not None and not files.v2
    meter = CgroupMeter(files)
    meter.start()
    assert files.peak.read_text() == "0", "the lifetime peak was reset to start the call"
    files.peak.write_text(str(120 << 20))
    files.cpu.write_text("1250000000")
    usage = meter.stop()
    assert (usage.cpu_ms, usage.memory_peak_mb) == (250.0, 120.0)


def test_cgroup_v2_layout_is_found_and_read_through_its_reset_descriptor(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory")
    d = tmp_path / "system.slice" / "docker-abc.scope"
    d.mkdir(parents=True)
    (d / "cpu.stat").write_text("usage_usec 1000\nuser_usec 800\n")
    (d / "memory.peak").write_text(str(300 << 20))
    (d / "memory.current").write_text(str(40 << 20))
    files = cgroup_files("abc", root=tmp_path)
    assert files == CgroupFiles(d / "cpu.stat", d / "memory.peak", d / "memory.current", True)
    meter = CgroupMeter(files)
    meter.start()  # a regular file takes the "reset" write: reads then go through that fd
    (d / "memory.peak").write_text(str(300 << 20))
    (d / "cpu.stat").write_text("usage_usec 51000\n")
    (d / "memory.current").write_text(str(60 << 20))
    usage = meter.stop()
    assert usage.cpu_ms == 50.0 and usage.memory_peak_mb == 300.0
    assert cgroup_files("other", root=tmp_path) is None
