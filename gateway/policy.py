"""Request policy: session ids, kernel ids, limits, kernel env and execute timeouts.

Pure functions of a request and the settings; every one raises a GatewayError subclass (400)
on input a client must fix. Called by the session layer before anything is started.
"""

from __future__ import annotations

import math
import re
import uuid

from gateway import errors
from gateway.models import SESSION_ID_RE, ExecuteRequest, Limits
from gateway.settings import Settings

KERNEL_ID_NAMESPACE = uuid.UUID("6f1c9a52-43c8-4c36-9b8e-2d2f3f0c5e11")
EOF_INPUT = "\x04"  # ipykernel raises EOFError in input() for this reply
MAX_ENV_VALUE_CHARS = 4096


def kernel_id_for(owner: str, session_id: str) -> str:
    """Stable, UUID-shaped kernel id for a session (Jupyter routes require UUIDs)."""
    return str(uuid.uuid5(KERNEL_ID_NAMESPACE, f"{owner}/{session_id}"))


def check_session_id(session_id: str) -> str:
    """``session_id`` itself. Raises InvalidSessionId."""
    if not SESSION_ID_RE.match(session_id):
        raise errors.InvalidSessionId(
            "session_id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
        )
    return session_id


def resolve_limits(settings: Settings, asked: Limits | None) -> Limits:
    """The server defaults overlaid with what a client asked for. Raises LimitOutOfRange."""
    values = settings.default_limits.model_dump()
    for name, value in (asked.model_dump() if asked else {}).items():
        if value is None:
            continue
        top = getattr(settings.max_limits, name)
        if top is not None and value > top:
            raise errors.LimitOutOfRange(
                f"limits.{name}={value} is above this server's maximum of {top}"
            )
        values[name] = value
    return Limits(**values)


def resolve_env(settings: Settings, asked: dict[str, str] | None, *, strict: bool = True
                ) -> dict[str, str]:
    """The allowlisted part of a client's kernel env. ``strict`` refuses keys outside the
    allowlist (REST); otherwise they are dropped (Jupyter clients send many ``KERNEL_*`` keys
    of their own). Raises ValidationFailed."""
    env: dict[str, str] = {}
    allowed = set(settings.env_allowlist)
    for key, value in (asked or {}).items():
        if key not in allowed:
            if not strict:
                continue
            raise errors.ValidationFailed(
                f"env key {key!r} is not allowed; allowed keys: {sorted(allowed)}"
            )
        if len(value) > MAX_ENV_VALUE_CHARS or any(ord(ch) < 32 for ch in value):
            raise errors.ValidationFailed(f"env value for {key!r} is too long or has "
                                          "control characters")
        if key == "PYTHONHASHSEED" and not _hash_seed(value):
            # Python refuses to start with any other value: a 400, not a failed kernel (503)
            raise errors.ValidationFailed(
                "PYTHONHASHSEED must be 'random' or an integer of at most 9 digits")
        env[key] = value
    return env


HASH_SEED_PATTERN = r"^(random|[0-9]{1,9})$"  # (Python takes up to 2**32 - 1; 9 digits suffice)


def _hash_seed(value: str) -> bool:
    return re.fullmatch(HASH_SEED_PATTERN, value) is not None


def execute_timeout(settings: Settings, req: ExecuteRequest) -> float:
    """Validate a cell's sizes and timeout; returns the timeout in seconds. Raises
    PayloadTooLarge, ValidationFailed."""
    if len(req.code.encode("utf-8", "surrogatepass")) > settings.max_code_bytes:
        raise errors.PayloadTooLarge(
            f"code is larger than max_code_bytes={settings.max_code_bytes}"
        )
    if req.stdin is not None and len(req.stdin) > settings.max_stdin_lines:
        raise errors.ValidationFailed(f"stdin has more than {settings.max_stdin_lines} lines")
    timeout = req.timeout_s if req.timeout_s is not None else settings.default_timeout_s
    if not math.isfinite(timeout) or not 0 < timeout <= settings.max_timeout_s:
        raise errors.ValidationFailed(f"timeout_s must be > 0 and <= {settings.max_timeout_s}")
    return timeout
