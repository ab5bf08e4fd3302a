"""The one Settings class: environment (``GATEWAY_*``) over an optional TOML file over defaults.

Read once by ``__main__`` and passed down; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gateway.models import Limits

CONFIG_FILE_ENV = "GATEWAY_CONFIG_FILE"


def _default_runtime_dir() -> Path:
    # Short on purpose: ZMQ ipc socket paths must stay under 107 bytes.
    return Path(tempfile.gettempdir()) / f"egw-{os.getuid()}"


class Settings(BaseSettings):
    """Every knob of the gateway. Units are in the names (``_s`` seconds, ``_mb`` mebibytes)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="forbid", frozen=True)

    # --- serving
    host: str = "127.0.0.1"
    port: int = Field(8888, ge=0, le=65535)
    public_url: str | None = None  # printed at start-up; defaults to http://host:port/
    # how other replicas reach this one (default http://host:port; the hostname for 0.0.0.0)
    internal_url: str | None = Field(None, pattern=r"^https?://[^/?#\s]+/?$")
    # names this gateway in session records and container labels; stable across restarts so a
    # restarted gateway re-adopts its sessions. Give each replica its own.
    instance_id: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    keep_kernels_on_shutdown: bool | None = None  # None: keep them with redis + docker
    # open HTTP connections at most (WebSockets, once upgraded, are not counted); also kept
    # below RLIMIT_NOFILE less room for every session's kernel. At the cap a new connection
    # replaces the one idle longest (no request yet, or between requests).
    max_connections: int = Field(4096, ge=1)
    header_timeout_s: float = Field(10.0, gt=0)  # a new connection's first request headers
    keepalive_timeout_s: float = Field(60.0, gt=0)  # idle between requests on a connection
    body_timeout_s: float = Field(60.0, gt=0)  # to receive a whole request body

    # --- auth
    token: SecretStr | None = None  # one API key; generated and printed if no key is configured
    keys_file: Path | None = None  # several API keys: lines of "name token"
    allow_unauthenticated: bool = False  # serve without any token (a warning is logged)

    # --- backends
    launcher: Literal["local", "docker"] = "local"
    registry_url: str = "memory://"  # or redis://[:password@]host:port/db, rediss:// for TLS
    redis_key_prefix: str = "exec-gateway:"
    redis_timeout_s: float = Field(5.0, gt=0)  # deadline of each Redis call
    redis_password: SecretStr | None = None  # AUTH password, kept out of the URL
    redis_ca_file: Path | None = None  # CA bundle that signed a rediss:// server's certificate
    # a session's lease: renewed every lease_renew_s by the gateway serving it; one not renewed
    # for lease_ttl_s (a crashed replica) is taken over by the next replica that needs it
    lease_ttl_s: float = Field(15.0, gt=0)
    lease_renew_s: float = Field(5.0, gt=0)

    # --- session lifecycle
    create_on_execute: bool = True  # POST .../execute creates an unknown session
    max_sessions: int = Field(64, ge=1)
    max_sessions_per_key: int = Field(16, ge=1)
    max_queue_per_session: int = Field(16, ge=0)  # waiting calls beyond the running one → 429
    # longest a REST or /v1 WebSocket call waits for its turn behind other cells → 429
    max_queue_wait_s: float = Field(600.0, gt=0, allow_inf_nan=False)
    idle_timeout_s: float = Field(1800.0, ge=0)  # 0 = never reap idle sessions
    max_lifetime_s: float = Field(0.0, ge=0)  # 0 = no lifetime cap
    reap_interval_s: float = Field(30.0, gt=0)
    # what the reaper does with an idle or over-age session: delete it, or hibernate it (its
    # workspace and variables go to the snapshot store; the next call restores them)
    reap_action: Literal["delete", "hibernate"] = "delete"
    hibernate_on_shutdown: bool = False  # a graceful stop hibernates every session first

    # --- snapshots of hibernated sessions
    # file:///path or s3://bucket/prefix; None: file://<work_dir>/snapshots
    snapshot_url: str | None = None
    snapshot_max_mb: int = Field(1024, ge=1)  # one snapshot (workspace + variables) at most
    # a snapshot older than this goes, and its hibernated session with it (0 = kept forever)
    snapshot_retention_s: float = Field(7 * 86400.0, ge=0)
    snapshot_timeout_s: float = Field(300.0, gt=0)  # deadline of one store call, of one save/load
    # S3-compatible store: unset values come from the standard AWS variables and files
    snapshot_s3_endpoint_url: str | None = None
    snapshot_s3_region: str | None = None
    snapshot_s3_access_key_id: str | None = None
    snapshot_s3_secret_access_key: SecretStr | None = None

    pool_size: int = Field(2, ge=0)  # started kernels kept ready for new sessions (0 = off)
    pool_min_free_mb: int = Field(1024, ge=0)  # empty the pool when free memory is below this

    # --- execution
    default_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False)
    max_timeout_s: float = Field(600.0, gt=0, allow_inf_nan=False)
    interrupt_grace_s: float = Field(2.0, gt=0)  # after interrupt, before restart
    kernel_start_timeout_s: float = Field(30.0, gt=0)
    reconnect_timeout_s: float = Field(5.0, gt=0)  # re-adopting a running kernel at start-up
    shutdown_grace_s: float = Field(2.0, ge=0)  # SIGTERM → SIGKILL
    max_code_bytes: int = Field(1_000_000, ge=1)
    max_request_bytes: int = Field(2_000_000, ge=1024)
    max_output_bytes: int = Field(1_000_000, ge=1024)  # per REST result; beyond → truncated
    max_outputs_per_cell: int = Field(1000, ge=1)  # display outputs kept per result
    # a kernel message larger than this (all frames) is dropped and counted
    max_kernel_message_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    max_stdin_lines: int = Field(1000, ge=0)

    # --- one-shot runs (POST /v1/run) and background runs (wait: false)
    max_tests: int = Field(50, ge=0)  # test cases in one /v1/run request
    run_concurrency: int = Field(4, ge=1)  # sandboxes one /v1/run request uses at once
    run_retention_s: float = Field(600.0, gt=0, allow_inf_nan=False)  # finished runs kept
    run_keep_per_session: int = Field(32, ge=1)  # finished runs kept per session (oldest go)
    # modules kernels refuse to import (an audit hook; defense in depth, not a boundary)
    kernel_blocked_modules: list[str] = []
    # ipykernel 7's kernel subshells (a shell-channel thread every message crosses): off for
    # speed; on, kernels advertise "kernel subshells" and accept create_subshell_request
    kernel_subshells: bool = False
    # Jupyter's visual debugger in kernels (ipykernel imports debugpy at start, ~0.15 s): off
    # for faster starts; on, kernels advertise "debugger" and answer debug_request
    kernel_debugger: bool = False

    reap_connected: bool = False  # also reap idle sessions that a WebSocket is watching

    # --- WebSocket
    allowed_origins: list[str] = []  # browser origins allowed for WebSocket and CORS (+ same host)
    ws_replay_events: int = Field(2000, ge=0)  # events kept per session for ?since= replay
    ws_replay_bytes: int = Field(8_000_000, ge=0)  # payload bytes kept per session for replay
    ws_client_queue: int = Field(1000, ge=1)  # events queued per slow client before dropping
    ws_max_message_bytes: int = Field(2_000_000, ge=1024)  # largest client message
    ws_ping_interval_s: float = Field(20.0, ge=0)  # pings to detect dead peers (0 = off)

    # --- Jupyter API
    jupyter_buffer_messages: int = Field(1000, ge=0)  # iopub kept for a disconnected client
    jupyter_client_backlog: int = Field(10000, ge=1)  # unsent messages before a slow client is cut

    # --- sandbox limits: defaults for new sessions, and the most a session may ask for
    default_limits: Limits = Limits(memory_mb=512, cpus=1.0, pids=128, disk_mb=64)
    max_limits: Limits = Limits(memory_mb=4096, cpus=2.0, pids=1024, disk_mb=1024)
    kernel_env: dict[str, str] = {}  # fixed environment given to every kernel
    env_allowlist: list[str] = ["LANG", "LC_ALL", "TZ", "PYTHONHASHSEED"]  # keys clients may set

    # --- session workspaces (the kernel's working directory; the files API)
    # "loop": a fixed-size ext4 image per session, loop-mounted (needs root); "none": a plain
    # directory (disk_mb not enforced on the kernel); "auto": loop when running as root
    workspace_quota: Literal["auto", "loop", "none"] = "auto"
    workspace_preallocate: bool = True  # reserve each image's disk_mb on the host up front
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1)  # one uploaded file → 413 beyond
    max_list_entries: int = Field(10_000, ge=1)  # entries one listing returns (then truncated)
    files_scan_max_entries: int = Field(100_000, ge=1)  # entries walked for files_changed

    # --- packages (POST /v1/sessions/{id}/packages, %pip / !pip in a cell)
    # the index pip downloads from: None = the host's pip configuration; "" = no index (only
    # package_find_links)
    package_index_url: str | None = None
    package_find_links: list[str] = []  # more places to find wheels (directories or URLs)
    package_allowlist: list[str] = []  # names or globs that may be installed ([] = any)
    package_denylist: list[str] = []  # names or globs that never may (wins over the allowlist)
    package_job_timeout_s: float = Field(300.0, gt=0, allow_inf_nan=False)  # download + install
    package_max_mb: int = Field(512, ge=1)  # a session's .packages at most (and within disk_mb)
    package_cache_dir: Path | None = None  # the shared wheel cache; default <state dir>/wheels

    # --- local launcher
    runtime_dir: Path = Field(default_factory=_default_runtime_dir)  # socket dirs (keep short)
    state_dir: Path | None = None  # session workspaces; default <runtime_dir>/work
    kernel_python: str = sys.executable  # interpreter with ipykernel installed
    local_network_isolation: bool = True  # own network namespace when the OS allows it
    local_memory_rlimit: bool = True  # RLIMIT_DATA = memory_mb

    # --- docker launcher
    docker_image: str = "exec-gateway-kernel:latest"
    docker_runtime: str | None = None  # e.g. "runsc" for gVisor
    docker_host: str | None = None  # engine URL; None = the SDK's default (DOCKER_HOST, socket)
    docker_api_timeout_s: float = Field(30.0, gt=0)  # deadline of each engine API call
    docker_kernel_uid: int = Field(1000, ge=1)  # the kernel's uid in the container (never 0)
    # the kernel's group when the gateway runs as root (otherwise the gateway's own gid, so
    # the gateway can reach the kernel's sockets through the setgid socket directory)
    docker_kernel_gid: int = Field(1000, ge=1)
    # seccomp profile (Docker's JSON format) for kernel containers; None: the bundled one,
    # Docker's default less what a Python kernel never needs (see the README)
    docker_seccomp_profile: Path | None = None
    # the image's Python environment (its exec-gateway.env-path label) on a read-only named
    # volume the engine fills once from the image: imports skip copy-on-write storage
    docker_env_volume: bool = True

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _renew_within_ttl(self) -> Settings:
        if self.lease_renew_s >= self.lease_ttl_s:
            raise ValueError("lease_renew_s must be shorter than lease_ttl_s")
        return self

    @model_validator(mode="after")
    def _kernel_is_not_the_gateway(self) -> Settings:
        # a kernel with the gateway's own uid would own its host socket directory: it could
        # chmod it, fill the host disk past every container limit, and plant what it likes
        if self.launcher == "docker" and os.geteuid() != 0 \
                and os.geteuid() == self.docker_kernel_uid:
            raise ValueError(
                f"docker_kernel_uid={self.docker_kernel_uid} is the gateway's own uid: run the "
                "gateway as another user, or set GATEWAY_DOCKER_KERNEL_UID to a uid of its own")
        return self

    @field_validator("docker_seccomp_profile")
    @classmethod
    def _seccomp_profile_is_json(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                profile = json.loads(value.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise ValueError(f"cannot read a JSON seccomp profile from {value}: "
                                 f"{type(exc).__name__}") from None
            if not isinstance(profile, dict) or "defaultAction" not in profile:
                raise ValueError(f"{value} is not a seccomp profile (no defaultAction)")
        return value

    @field_validator("snapshot_url")
    @classmethod
    def _snapshot_scheme(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(file:///.|s3://[^/]+)", value):
            raise ValueError("snapshot_url must be file:///absolute/path or s3://bucket[/prefix]")
        return value

    @field_validator("kernel_blocked_modules")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
                raise ValueError(f"kernel_blocked_modules: {name!r} is not a module name")
        return value

    @field_validator("runtime_dir")
    @classmethod
    def _short_runtime_dir(cls, value: Path) -> Path:
        # <runtime_dir>/<12 hex>/k-<n> must fit the 107-byte AF_UNIX limit.
        if len(str(value).encode()) > 80:
            raise ValueError("runtime_dir must be at most 80 bytes long (AF_UNIX path limit)")
        return value

    @property
    def advertised_url(self) -> str:
        """The URL other replicas forward calls to."""
        if self.internal_url:
            return self.internal_url.rstrip("/")
        # bound to every address: the host's name (a compose service, a DNS name) reaches it
        host = socket.gethostname() if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}" if ":" not in host else f"http://[{host}]:{self.port}"

    @property
    def work_dir(self) -> Path:
        return self.state_dir or self.runtime_dir / "work"

    @property
    def wheel_cache_dir(self) -> Path:
        return self.package_cache_dir or self.work_dir / "wheels"

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Build settings: environment over ``config_file`` (or ``$GATEWAY_CONFIG_FILE``), a TOML
        file, over defaults. Raises FileNotFoundError and pydantic.ValidationError."""
        path = config_file or (Path(p) if (p := os.environ.get(CONFIG_FILE_ENV)) else None)
        if path is None:
            return cls(**overrides)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        toml_file = path

        class _FromFile(cls):  # type: ignore[valid-type,misc]
            @classmethod
            def settings_customise_sources(
                cls,
                settings_cls: type[BaseSettings],
                init_settings: PydanticBaseSettingsSource,
                env_settings: PydanticBaseSettingsSource,
                dotenv_settings: PydanticBaseSettingsSource,
                file_secret_settings: PydanticBaseSettingsSource,
            ) -> tuple[PydanticBaseSettingsSource, ...]:
                toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_file)
                return (init_settings, env_settings, toml)

        return _FromFile(**overrides)


def describe_error(exc: ValidationError) -> str:
    """A settings error as one line per problem, naming the setting but never echoing its value
    (pydantic's own text quotes the input: a token, a password)."""
    problems = exc.errors(include_input=False, include_url=False, include_context=False)
    lines = [f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in problems]
    return "; ".join(lines)
