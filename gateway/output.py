"""OutputCollector: folds one cell's iopub messages into an ExecuteResult, within a byte cap.

Whatever the kernel prints or displays, the collector holds at most ``max_bytes`` (measured by
``gateway.bounds``: data, metadata and a per-output overhead, so empty or metadata-only outputs
cost too) and at most ``max_outputs`` outputs; the rest is dropped and the result says
``truncated: true``.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.bounds import OUTPUT_OVERHEAD, clean_text, cut_text, sanitized, text_size
from gateway.models import ErrorInfo, Output

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MAX_TRACEBACK_LINES = 200
MAX_ENAME_BYTES = 1000
MAX_LINE_BYTES = 10_000


def plain_traceback(lines: list[Any]) -> list[str]:
    """Traceback lines without terminal colour codes, at most 200 of them, each bounded."""
    return [cut_text(_ANSI.sub("", clean_text(str(line))), MAX_LINE_BYTES)[0]
            for line in lines[:MAX_TRACEBACK_LINES]]


def error_info(content: dict[str, Any]) -> ErrorInfo:
    """The ErrorInfo of a kernel's ``error`` message or error reply, bounded and cleaned."""
    raw = content.get("traceback")
    return ErrorInfo(
        ename=cut_text(clean_text(str(content.get("ename", ""))), MAX_ENAME_BYTES)[0],
        evalue=cut_text(clean_text(str(content.get("evalue", ""))), MAX_LINE_BYTES)[0],
        traceback=plain_traceback(raw if isinstance(raw, list) else []),
    )


class OutputCollector:
    """Called for each iopub message of one execute request, in order."""

    def __init__(self, max_bytes: int, max_outputs: int) -> None:
        self.max_bytes = max_bytes
        self.max_outputs = max_outputs
        self.used = 0
        self.truncated = False
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.outputs: list[Output] = []
        self.error: ErrorInfo | None = None

    def _take(self, size: int) -> bool:
        if self.used + size > self.max_bytes:
            self.truncated = True
            return False
        self.used += size
        return True

    def add(self, msg_type: str, content: dict[str, Any]) -> None:
        if msg_type == "stream":
            self._add_stream(str(content.get("name", "stdout")),
                             clean_text(str(content.get("text", ""))))
        elif msg_type in ("execute_result", "display_data"):
            self._add_output(msg_type, content)
        elif msg_type == "error":
            self.error = error_info(content)
        elif msg_type == "clear_output":
            self.stdout.clear()
            self.stderr.clear()
            self.outputs.clear()
            self.used = 0

    def _add_output(self, msg_type: str, content: dict[str, Any]) -> None:
        raw_data, raw_metadata = content.get("data") or {}, content.get("metadata") or {}
        if not isinstance(raw_data, dict) or not isinstance(raw_metadata, dict):
            return  # not an output a client could read
        if len(self.outputs) >= self.max_outputs:
            self.truncated = True
            return
        data, data_size = sanitized(raw_data)
        metadata, metadata_size = sanitized(raw_metadata)
        if self._take(data_size + metadata_size + OUTPUT_OVERHEAD):
            self.outputs.append(Output(type=msg_type, data=data, metadata=metadata))  # type: ignore[arg-type]

    def _add_stream(self, name: str, text: str) -> None:
        parts = self.stderr if name == "stderr" else self.stdout
        size = text_size(text)
        room = self.max_bytes - self.used
        if size <= room:
            self.used += size
            parts.append(text)
            return
        self.truncated = True
        if room > 0:
            parts.append(cut_text(text, room)[0])
            self.used = self.max_bytes

    @property
    def stdout_text(self) -> str:
        return "".join(self.stdout)

    @property
    def stderr_text(self) -> str:
        return "".join(self.stderr)
