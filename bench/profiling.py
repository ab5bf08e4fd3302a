"""Where the gateway's CPU goes on the execute path: py-spy samples the gateway process
(from outside, no code change) while the bench drives REST executes, and the collapsed
stacks are summed by function (self and inclusive) and by package."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.target import BenchError

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_WAIT_FRAMES = {("EpollSelector.select", "selectors.py"), ("select", "selectors.py")}
_PLUMBING = ("asyncio/", "<frozen runpy>", "gateway/__main__.py", "selectors.py")
PACKAGES = ("gateway", "tornado", "zmq", "jupyter_client", "pydantic", "pydantic_core",
            "asyncio", "logging", "json", "prometheus_client", "dateutil", "hmac", "uuid",
            "selectors", "http")


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter or on PATH, if installed."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


async def record(exe: str, pid: int, seconds: float, out: Path, rate_hz: int = 250
                 ) -> asyncio.subprocess.Process:
    """Start sampling ``pid`` for ``seconds`` (non-blocking mode: the target is not paused),
    collapsed stacks to ``out``. The caller awaits ``.wait()``."""
    argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
            "--rate", str(rate_hz), "--nonblocking", "--format", "raw", "--output", str(out)]
    return await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)


def _frame_key(frame: str) -> tuple[str, str]:
    """(function, short file) for a py-spy frame like ``execute (gateway/sessions.py:397)``."""
    m = _FRAME.match(frame)
    if not m:
        return frame, ""
    path = m["file"]
    short = path.split("site-packages/")[-1].split("/lib/python3")[-1]
    short = short.split("/main/")[-1] if "/main/" in short else short
    return m["func"], short


def _package(file: str) -> str:
    first = file.lstrip("/").split("/")[0].removesuffix(".py")
    if first.startswith("python3."):
        first = file.lstrip("/").split("/")[1].removesuffix(".py")
    return first if first in PACKAGES else "other"


def summarize(collapsed: Path, calls: int, top: int = 15) -> dict[str, Any]:
    """Per-function self and inclusive shares and per-package self shares, from py-spy's
    collapsed stacks. Shares are of *busy* samples: those not waiting in the event loop's
    ``select`` (py-spy counts epoll_wait as active). Raises BenchError if nothing was sampled."""
    self_cost: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    by_package: Counter[str] = Counter()
    total = waiting = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";")
                  if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        if frames[-1] in _WAIT_FRAMES:
            waiting += count
            continue
        self_cost[frames[-1]] += count
        by_package[_package(frames[-1][1])] += count
        for key in set(frames):
            if not key[1].startswith(_PLUMBING):
                inclusive[key] += count
    busy = total - waiting
    if busy == 0:
        raise BenchError(f"py-spy recorded no busy samples in {collapsed}")

    def rows(counter: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
        return [{"function": f, "file": file, "share": round(c / busy, 4)}
                for (f, file), c in counter.most_common(top)]

    return {
        "samples": total,
        "busy_samples": busy,
        "loop_wait_share": round(waiting / total, 4),
        "calls": calls,
        "self": rows(self_cost),
        "inclusive": rows(inclusive),
        "self_by_package": {p: round(c / busy, 4) for p, c in by_package.most_common()},
    }
