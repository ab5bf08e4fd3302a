"""Namespace: the gateway's side of saving and loading a session's variables — it sends
``kernel_side.py`` as one silent cell (no history, no output) and reads its JSON report back
from a user expression, bounded and validated: the kernel is hostile, its report is data."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from gateway.errors import KernelDied, KernelTimeout
from gateway.kernel import KernelConnection
from gateway.models import SkippedVariable

SOURCE = (Path(__file__).parent / "kernel_side.py").read_text()
REPORT = "_egw_snapshot_report"
MAX_REPORT_CHARS = 4_000_000


class NamespaceFailed(Exception):
    """The kernel did not save or load its namespace (its reason, for the answer)."""


class NamespaceReport(BaseModel):
    variables: list[str] = Field([], max_length=2000)
    skipped: list[SkippedVariable] = Field([], max_length=2000)
    bytes: int = 0


async def save(conn: KernelConnection, directory: str, budget: int,
               timeout_s: float) -> NamespaceReport:
    """Have the kernel pickle its globals under ``directory`` (at most ``budget`` bytes).
    Raises NamespaceFailed."""
    return await _run(conn, f"save(_shell, {directory!r}, {int(budget)})", timeout_s)


async def load(conn: KernelConnection, directory: str, timeout_s: float) -> NamespaceReport:
    """Have the kernel load the globals saved under ``directory``. Raises NamespaceFailed."""
    return await _run(conn, f"load(_shell, {directory!r})", timeout_s)


async def _run(conn: KernelConnection, call: str, timeout_s: float) -> NamespaceReport:
    # the module runs in a private dict: nothing but the report (popped at once) reaches
    # the user namespace
    code = (f"{REPORT} = (lambda _g: (exec({SOURCE!r}, _g), "
            f"eval({call!r}, _g, {{'_shell': __import__('IPython').get_ipython()}}))[1])({{}})")
    msg = conn.session.msg("execute_request", {
        "code": code, "silent": True, "store_history": False, "allow_stdin": False,
        "stop_on_error": False, "user_expressions": {"r": f"globals().pop({REPORT!r}, '')"}})
    try:
        reply = await conn.request("shell", msg, wait_idle=True, timeout_s=timeout_s)
    except KernelTimeout:
        raise NamespaceFailed(f"the kernel did not answer within {timeout_s:g}s") from None
    except KernelDied as exc:
        raise NamespaceFailed(f"the kernel died: {exc}") from None
    content: dict[str, Any] = reply["content"]
    if content.get("status") != "ok":
        raise NamespaceFailed(f"{str(content.get('ename'))[:100]}: "
                              f"{str(content.get('evalue'))[:300]}")
    try:
        text = content["user_expressions"]["r"]["data"]["text/plain"]
        if not isinstance(text, str) or len(text) > MAX_REPORT_CHARS:
            raise ValueError("no report")
        return NamespaceReport.model_validate(json.loads(ast.literal_eval(text)))
    except (KeyError, TypeError, ValueError, SyntaxError, ValidationError, MemoryError,
            RecursionError):
        raise NamespaceFailed("the kernel's report was unreadable") from None
