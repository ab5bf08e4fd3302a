"""The bench's knobs: defaults for a full run, smaller ones for ``--quick``, ``BENCH_*`` env
over both."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BenchConfig:
    iterations: int = 1000  # timed sequential executes per latency figure (raw, REST, Jupyter)
    rounds: int = 10  # latency blocks, alternating between targets
    warmup: int = 100  # untimed executes before the latency loop
    kg_iterations: int = 300  # timed executes against stock kernel_gateway (slower)
    loop_max_s: float = 90.0  # time cap per latency figure
    concurrency: tuple[int, ...] = (1, 4, 16)  # sessions/kernels for throughput
    throughput_s: float = 4.0  # seconds of calls per throughput level
    starts: int = 10  # session starts per target (cold, and from the warm pool)
    pool_size: int = 2  # the gateway's warm pool for the pooled-start figures
    idle_sessions: int = 100  # idle sessions for the memory figures
    idle_window_s: float = 5.0  # gateway CPU measured this long with the idle sessions
    stream_lines: int = 10_000  # one-line prints in one cell, per front door
    start_parallel: int = 4  # sessions/kernels started at once when opening many
    kernel_gateway: bool = True  # run the stock jupyter-kernel-gateway comparison
    replicas: bool = True  # two gateways on one redis-server: forwarded vs direct calls
    docker: bool = True  # the Docker launcher section (skipped with a note without engine/image)
    docker_image: str = "exec-gateway-kernel:latest"  # the kernel image the docker gateways run
    docker_idle_sessions: int = 10  # idle sessions per launcher for the Docker memory figures
    files: bool = True  # the files API section (throughput vs docker cp, files_changed cost)
    density: bool = True  # sessions per machine: idle docker sessions opened in steps
    density_steps: tuple[int, ...] = (50, 100, 200, 400, 600)  # idle sessions at each step
    density_max_s: float = 300.0  # the density section stops opening sessions after this
    density_min_free_mb: int = 3072  # ... or when the host's MemAvailable falls below this
    density_sample: int = 20  # containers whose cgroup/shim/storage daemon are read per step
    density_latency_calls: int = 200  # 1+1 on the active session at each step
    file_mb: int = 100  # size of the file uploaded and downloaded
    file_rounds: int = 3  # timed uploads/downloads per way
    file_scan_iterations: int = 300  # executes per session for the files_changed cost
    hibernate: bool = True  # the hibernation section (hibernate/restore times, memory)
    hibernate_rounds: int = 5  # hibernate + restore cycles of the 10 MB + 50 MB session
    hibernate_sessions: int = 10  # small sessions hibernated for the memory figures
    profile: bool = False  # sample the gateway with py-spy during an extra REST loop
    profile_s: float = 10.0
    gateway_log_level: str = "INFO"  # the gateway's default; every request is logged at INFO
    kg_venv: Path = BENCH_DIR / ".kg-venv"
    results_dir: Path = BENCH_DIR / "results"


QUICK = BenchConfig(iterations=300, rounds=4, warmup=30, kg_iterations=100, loop_max_s=30.0,
                    throughput_s=2.0, starts=4, idle_sessions=20, idle_window_s=2.0,
                    docker_idle_sessions=3, profile_s=5.0, file_mb=50, file_rounds=2,
                    file_scan_iterations=100, density_steps=(10, 20), density_max_s=60.0,
                    density_latency_calls=100, hibernate_rounds=3,
                    hibernate_sessions=5)


def _parse(current: object, text: str) -> object:
    """``text`` converted to the type of the field's ``current`` value. Raises ValueError."""
    if isinstance(current, bool):
        return text.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(current, Path):
        return Path(text)
    if isinstance(current, tuple):
        return tuple(int(x) for x in text.split(",") if x.strip())
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    return text


def load(quick: bool, environ: Mapping[str, str] = os.environ, **overrides: object
         ) -> BenchConfig:
    """Defaults (full or quick), then ``BENCH_<FIELD>`` from ``environ``, then ``overrides``.
    Raises ValueError on an unparsable value."""
    config = QUICK if quick else BenchConfig()
    values: dict[str, object] = {}
    for f in fields(BenchConfig):
        text = environ.get(f"BENCH_{f.name.upper()}")
        if text is not None:
            try:
                values[f.name] = _parse(getattr(config, f.name), text)
            except ValueError as exc:
                raise ValueError(f"BENCH_{f.name.upper()}={text!r}: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(config, **values)  # type: ignore[arg-type]
