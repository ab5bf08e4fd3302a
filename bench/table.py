"""The short table for humans: every figure against its same-run reference, the speed goals'
rows first (marked ``*``)."""

from __future__ import annotations

import math
from typing import Any

from bench.density import density_rows
from bench.report import (
    DOCKER,
    DOCKER_LOCAL,
    JUP,
    KG,
    RAW,
    RAW_GW,
    REPLICA_PAIRS,
    REPLICA_REST_DIRECT,
    REPLICA_REST_FORWARDED,
    REPLICA_REST_MEMORY,
    REPLICA_REST_PIPE,
    REST,
    V1,
    _get,
)
from bench.stats import ratio

Row = tuple[str, Any, Any, Any]  # label, value, reference, ratio


def _row(label: str, value: Any, reference: Any) -> Row:
    return label, value, reference, ratio(value, reference)


def _vs(label: str, value: Any, reference: Any) -> list[Row]:
    """``value`` against ``reference`` as one row; none when there is no value."""
    return [] if value is None else [_row(label, value, reference)]


def _headline_rows(results: dict[str, Any]) -> list[Row]:
    """The speed goals' ratios first: each front door against raw jupyter_client on a stock
    kernel, split into the gateway's half (vs raw on the gateway's own kernel) and the
    kernel's half; throughput at the top concurrency; a forwarded call vs a direct one."""
    lat, tput = results.get("latency", {}), results.get("throughput", {})
    rows: list[Row] = []
    for q in ("p50", "p99"):
        for name in (REST, V1, JUP):
            rows += _vs(f"* execute {q} ms: {name} vs raw", _get(lat, name, q), _get(lat, RAW, q))
        if _get(lat, RAW_GW, q) is not None:
            for name in (REST, V1, JUP):
                rows += _vs(f"* execute {q} ms: {name} vs raw on the gateway's kernel",
                            _get(lat, name, q), _get(lat, RAW_GW, q))
        rows += _vs(f"* execute {q} ms: raw on the gateway's kernel vs raw",
                    _get(lat, RAW_GW, q), _get(lat, RAW, q))
    top = max(results.get("config", {}).get("concurrency", [0]) or [0])
    for name in (REST, V1, JUP, RAW_GW):
        rows += _vs(f"* calls/s at {top}: {name} vs raw", _get(tput, name, top, "calls_per_s"),
                    _get(tput, RAW, top, "calls_per_s"))
    rlat = _get(results, "replicas", "latency") or {}
    for q in ("p50", "p99"):
        rows += _vs(f"* replica execute {q} ms: REST forwarded vs direct",
                    _get(rlat, REPLICA_REST_FORWARDED, q), _get(rlat, REPLICA_REST_DIRECT, q))
    rows += _vs("* replica execute p50 ms: REST via a byte pipe (the floor) vs direct",
                _get(rlat, REPLICA_REST_PIPE, "p50"), _get(rlat, REPLICA_REST_DIRECT, "p50"))
    for name in (REST, V1, JUP):
        rows += _vs(f"* gateway CPU ms/call: {name} vs raw client",
                    _get(lat, name, "server_cpu_ms_per_call"),
                    _get(lat, RAW, "client_cpu_ms_per_call"))
    return rows


def _docker_rows(dk: dict[str, Any]) -> list[Row]:
    """Docker launcher vs the local launcher, both measured in the docker section."""
    if dk.get("skipped"):
        return [("docker launcher", "skipped", "", "")]
    rows: list[Row] = []
    start, lat, mem = dk.get("session_start", {}), dk.get("latency", {}), dk.get("memory", {})
    for q in ("p50", "p90"):
        rows += _vs(f"docker cold start {q} ms vs local", _get(start, DOCKER, "first_result_ms", q),
                    _get(start, DOCKER_LOCAL, "first_result_ms", q))
    for q in ("p50", "p90"):
        rows += _vs(f"docker pooled start {q} ms vs docker cold",
                    _get(start, f"{DOCKER}_pool", "first_result_ms", q),
                    _get(start, DOCKER, "first_result_ms", q))
    for q in ("p50", "p90"):
        rows += _vs(f"docker execute {q} ms vs local", _get(lat, DOCKER, q),
                    _get(lat, DOCKER_LOCAL, q))
    if mem.get("sessions"):
        local_uss = _get(mem, DOCKER_LOCAL, "kernel_kb", "uss_median")
        rows += [
            _row(f"docker KiB/idle session ({mem['sessions']}) vs local",
                 _get(mem, DOCKER, "per_session_kb"), _get(mem, DOCKER_LOCAL, "per_session_kb")),
            _row("  docker container (cgroup) KiB vs local kernel USS",
                 _get(mem, DOCKER, "container_kb_median"), local_uss),
            _row("  docker kernel USS KiB vs local kernel USS",
                 _get(mem, DOCKER, "kernel_kb", "uss_median"), local_uss),
            _row("  gateway RSS KiB/session: docker vs local",
                 _get(mem, DOCKER, "gateway_rss_kb_per_idle_session"),
                 _get(mem, DOCKER_LOCAL, "gateway_rss_kb_per_idle_session")),
        ]
    return rows


def _replicas_rows(rp: dict[str, Any], lat: dict[str, Any]) -> list[Row]:
    """Two replicas on one Redis registry: a call through B (forwarded to A) vs straight to A;
    the byte pipe (the floor under forwarding); A's direct REST vs a memory-registry gateway."""
    if rp.get("skipped"):
        return [("replicas (redis registry)", "skipped", "", "")]
    rlat = rp.get("latency", {})
    rows: list[Row] = []
    for _, forwarded, direct, label in REPLICA_PAIRS:
        for q in ("p50", "p90", "p99"):
            rows += _vs(f"replica execute {q} ms: {label} vs direct", _get(rlat, forwarded, q),
                        _get(rlat, direct, q))
    pipe = _get(rlat, REPLICA_REST_PIPE, "p50")
    rows += _vs("replica execute p50 ms: REST via a byte pipe vs direct", pipe,
                _get(rlat, REPLICA_REST_DIRECT, "p50"))
    if pipe is not None:
        rows += [_row("replica execute p50 ms: REST forwarded vs via a byte pipe",
                      _get(rlat, REPLICA_REST_FORWARDED, "p50"), pipe)]
    rows += _vs("REST p50 ms: redis registry vs memory registry",
                _get(rlat, REPLICA_REST_DIRECT, "p50"), _get(rlat, REPLICA_REST_MEMORY, "p50"))
    for _, forwarded, direct, label in REPLICA_PAIRS:
        rows += _vs(f"server CPU ms/call: {label.split()[0]} forwarder B vs owner A",
                    _get(rlat, forwarded, "server_cpu_ms_per_call"),
                    _get(rlat, direct, "server_cpu_ms_per_call"))
    return rows


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _files_rows(fr: dict[str, Any]) -> list[Row]:
    """The files API: REST against docker cp (same container), files_changed's cost."""
    if not fr or "skipped" in fr:
        return [("files API", "skipped", "", "")] if fr else []
    rows = [_row(f"{fr.get('size_mb')} MB {way} MB/s: REST vs docker cp",
                 _get(fr, f"rest_{way}", "mb_per_s"), _get(fr, "docker_cp", way, "mb_per_s"))
            for way in ("upload", "download")]
    for cell, label in (("pure", "1+1"), ("writes", "writing a file")):
        for q in ("p50", "p90"):
            rows.append(_row(f"execute {q} ms, {label}: 10000-file workspace vs empty",
                             _get(fr, f"execute_full_{cell}", q),
                             _get(fr, f"execute_empty_{cell}", q)))
    return rows


def table(results: dict[str, Any]) -> str:
    """The human summary: each row a figure, its same-run reference, and their ratio."""
    lat, tput = results.get("latency", {}), results.get("throughput", {})
    start, mem = results.get("session_start", {}), results.get("memory", {})
    rows: list[Row] = [("figure", "value", "reference", "ratio")]
    rows.extend(_headline_rows(results))
    for name in (REST, V1, JUP, KG):
        if _get(lat, name, "skipped"):
            rows.append((f"execute {name}", "skipped", "", ""))
            continue
        for q in ("p50", "p90", "p99"):
            rows += _vs(f"execute {q} ms: {name} vs raw", _get(lat, name, q), _get(lat, RAW, q))
    for q in ("p50", "p99"):
        rows += _vs(f"execute {q} ms: stock KG vs REST", _get(lat, KG, q), _get(lat, REST, q))
    for n in results.get("config", {}).get("concurrency", []):
        for name in (REST, V1, JUP, KG, RAW_GW):
            rows += _vs(f"calls/s at {n}: {name} vs raw", _get(tput, name, n, "calls_per_s"),
                        _get(tput, RAW, n, "calls_per_s"))
    for name in (REST, V1, JUP, KG, f"{REST}_pool", f"{JUP}_pool"):
        kind = "pooled" if name.endswith("_pool") else "cold"
        rows += _vs(f"{kind} start p50 ms: {name.removesuffix('_pool')} vs raw",
                    _get(start, name, "first_result_ms", "p50"),
                    _get(start, RAW, "first_result_ms", "p50"))
    for name in (V1, JUP, KG):
        rows += _vs(f"server RSS KiB/session: {name} vs REST",
                    _get(tput, name, "server_rss_kb_per_session"),
                    _get(tput, REST, "server_rss_kb_per_session"))
    for name in (REST, V1, JUP, KG):
        rows += _vs(f"server CPU ms/call: {name} vs raw client",
                    _get(lat, name, "server_cpu_ms_per_call"),
                    _get(lat, RAW, "client_cpu_ms_per_call"))
    stream = results.get("stream", {})
    for name in (REST, V1, JUP, KG):
        rows += _vs(f"{_get(stream, name, 'lines')} lines s: {name} vs raw",
                    _get(stream, name, "seconds"), _get(stream, RAW, "seconds"))
    for figure, label in (("first_line_ms", "first line"), ("all_lines_ms", "all lines")):
        for name in (REST, V1, JUP, KG):
            rows += _vs(f"stream {label} ms: {name} vs raw", _get(stream, name, figure),
                        _get(stream, RAW, figure))
    if mem.get("sessions"):
        uss = _get(mem, "kernel_kb", "uss_median")
        rows += [
            _row(f"gateway RSS KiB/idle session ({mem['sessions']}) vs kernel USS",
                 mem.get("gateway_rss_kb_per_idle_session"), uss),
            _row("kernel USS KiB: gateway's vs raw", uss, _get(mem, "raw_kernel_kb", "uss")),
            _row(f"REST p99 ms with {mem['sessions']} idle vs without",
                 _get(mem, "latency_with_idle_sessions", "p99"), _get(lat, REST, "p99")),
            ("gateway idle CPU % of a core", mem.get("idle_cpu_percent"), "", ""),
        ]
    rows.extend(_replicas_rows(results.get("replicas", {}), lat))
    rows.extend(_docker_rows(results.get("docker", {})))
    rows.extend(_oneshot_rows(results.get("oneshot", {})))
    rows.extend(_files_rows(results.get("files", {})))
    rows.extend(_packages_rows(results.get("packages", {})))
    kc = results.get("kernel_cost") or {}
    if kc.get("shim"):
        for q in ("p50", "server_cpu_ms_per_call"):
            rows.append(_row(f"kernel alone {q}: tuned shim vs stock ipykernel",
                             _get(kc, "shim", q), _get(kc, "stock", q)))
    rows.extend(density_rows(results))
    width = max(len(row[0]) for row in rows)
    lines = [f"{row[0]:<{width}}  {_fmt(row[1]):>10}  {_fmt(row[2]):>10}  {_fmt(row[3], 3):>7}"
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    for t in results.get("targets", []):
        mark = {True: "MET ", False: "MISS", None: "n/a "}[t["met"]]
        lines.append(f"[{mark}] {t['target']}: {_fmt(t['value'], 3)}")
    for section, message in results.get("errors", {}).items():
        lines.append(f"[ERR ] {section}: {message}")
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _packages_rows(packages: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for launcher, fig in packages.items():
        if not isinstance(fig, dict):
            continue
        for key, label in (("install_cold_ms", "install, cold (download)"),
                           ("install_warm_ms", "install, warm (cache)"),
                           ("pip_magic_warm_ms", "%pip install cell, warm"),
                           ("import_next_cell_ms", "import in the next cell")):
            rows.append((f"packages: {label} p50 ms ({launcher})", _get(fig, key, "p50"), "", ""))
    return rows


def _oneshot_rows(oneshot: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for launcher, fig in oneshot.items():
        if not isinstance(fig, dict):
            continue
        for key, label in (("run_print1_pool_ready_ms", "pool ready"),
                           ("run_print1_back_to_back_ms", "back to back")):
            for q in ("p50", "p90"):
                rows.append((f"/v1/run print(1) {q} ms, {label} ({launcher})",
                             _get(fig, key, q), "", ""))
        rows.append((f"grading tests/s, 10-test submission ({launcher})",
                     fig.get("grading_tests_per_s"), "", ""))
    return rows
