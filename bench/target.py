"""What every measured system offers the loops: start an executor, run cells on it, close it.

An *executor* is one session or kernel used by one caller at a time; a *target* is the
system under test (raw jupyter_client, the gateway's REST API, a Jupyter-API server).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

CALL_TIMEOUT_S = 60.0  # one cell; far above any figure measured here


class BenchError(Exception):
    """A target answered wrongly (bad status, wrong result, timeout)."""


@dataclass(frozen=True)
class ExecOutput:
    """What a cell produced: its ``text/plain`` result and its stdout, and when (perf_counter)
    the client got the first and the last piece of stdout (None when it had none)."""

    text: str
    stdout: str
    first_stdout_at: float | None = None
    last_stdout_at: float | None = None


class Executor(Protocol):
    async def execute(self, code: str) -> ExecOutput:
        """Run one cell and wait for its reply and the kernel's idle status. Raises BenchError."""

    async def close(self) -> None:
        """Stop the session/kernel (best effort, bounded)."""


class Target(Protocol):
    name: str
    server_pid: int | None  # the process whose CPU per call is measured, if any

    async def start(self) -> Executor:
        """Create one session/kernel, ready to execute. Raises BenchError."""


def check_two(out: ExecOutput) -> None:
    """The check every timed ``1+1`` goes through. Raises BenchError."""
    if out.text != "2":
        raise BenchError(f"1+1 gave {out.text!r}")
