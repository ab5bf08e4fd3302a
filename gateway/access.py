"""The access log: one line per answered request, without the query string (browsers and
Jupyter clients put tokens there)."""

from __future__ import annotations

import logging

from tornado.log import access_log


def log_access(status: int, method: str | None, path: str, seconds: float) -> None:
    level = logging.INFO if status < 400 else logging.WARNING
    access_log.log(level, "%d %s %s %.2fms", status, method, path, 1000.0 * seconds)
