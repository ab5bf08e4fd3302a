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


def _headline_rows(results: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """The speed goals' ratios first: each front door against raw jupyter_client on a stock
    kernel, split into the gateway's half (vs raw on the gateway's own kernel) and the
    kernel's half; throughput at the top concurrency; a forwarded call vs a direct one."""
    lat, tput = results.get("latency", {}), results.get("throughput", {})
    rows: list[tuple[str, Any, Any, Any]] = []
    for q in ("p50", "p99"):
        for name in (REST, V1, JUP):
            v, ref = _get(lat, name, q), _get(lat, RAW, q)
            if v is not None:
                rows.append((f"* execute {q} ms: {name} vs raw", v, ref, ratio(v, ref)))
        for name in (REST, V1, JUP):
            v, ref = _get(lat, name, q), _get(lat, RAW_GW, q)
            if v is not None and ref is not None:
                rows.append((f"* execute {q} ms: {name} vs raw on the gateway's kernel", v, ref,
                             ratio(v, ref)))
        v, ref = _get(lat, RAW_GW, q), _get(lat, RAW, q)
        if v is not None:
            rows.append((f"* execute {q} ms: raw on the gateway's kernel vs raw", v, ref,
                         ratio(v, ref)))
    top = max(results.get("config", {}).get("concurrency", [0]) or [0])
    ref = _get(tput, RAW, top, "calls_per_s")
    for name in (REST, V1, JUP, RAW_GW):
        v = _get(tput, name, top, "calls_per_s")
        if v is not None:
            rows.append((f"* calls/s at {top}: {name} vs raw", v, ref, ratio(v, ref)))
    rlat = _get(results, "replicas", "latency") or {}
    for q in ("p50", "p99"):
        v, ref = _get(rlat, REPLICA_REST_FORWARDED, q), _get(rlat, REPLICA_REST_DIRECT, q)
        if v is not None:
            rows.append((f"* replica execute {q} ms: REST forwarded vs direct", v, ref,
                         ratio(v, ref)))
    v, ref = _get(rlat, REPLICA_REST_PIPE, "p50"), _get(rlat, REPLICA_REST_DIRECT, "p50")
    if v is not None:
        rows.append(("* replica execute p50 ms: REST via a byte pipe (the floor) vs direct", v,
                     ref, ratio(v, ref)))
    for name in (REST, V1, JUP):
        v, ref = (_get(lat, name, "server_cpu_ms_per_call"),
                  _get(lat, RAW, "client_cpu_ms_per_call"))
        if v is not None:
            rows.append((f"* gateway CPU ms/call: {name} vs raw client", v, ref, ratio(v, ref)))
    return rows


def _docker_rows(dk: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """Docker launcher vs the local launcher, both measured in the docker section."""
    if dk.get("skipped"):
        return [("docker launcher", "skipped", "", "")]
    rows: list[tuple[str, Any, Any, Any]] = []
    start, lat, mem = dk.get("session_start", {}), dk.get("latency", {}), dk.get("memory", {})
    for q in ("p50", "p90"):
        v, ref = (_get(start, DOCKER, "first_result_ms", q),
                  _get(start, DOCKER_LOCAL, "first_result_ms", q))
        if v is not None:
            rows.append((f"docker cold start {q} ms vs local", v, ref, ratio(v, ref)))
    for q in ("p50", "p90"):
        v = _get(start, f"{DOCKER}_pool", "first_result_ms", q)
        ref = _get(start, DOCKER, "first_result_ms", q)
        if v is not None:
            rows.append((f"docker pooled start {q} ms vs docker cold", v, ref, ratio(v, ref)))
    for q in ("p50", "p90"):
        v, ref = _get(lat, DOCKER, q), _get(lat, DOCKER_LOCAL, q)
        if v is not None:
            rows.append((f"docker execute {q} ms vs local", v, ref, ratio(v, ref)))
    if mem.get("sessions"):
        n = mem["sessions"]
        v, ref = _get(mem, DOCKER, "per_session_kb"), _get(mem, DOCKER_LOCAL, "per_session_kb")
        rows.append((f"docker KiB/idle session ({n}) vs local", v, ref, ratio(v, ref)))
        v = _get(mem, DOCKER, "container_kb_median")
        rows.append(("  docker container (cgroup) KiB vs local kernel USS", v,
                     _get(mem, DOCKER_LOCAL, "kernel_kb", "uss_median"),
                     ratio(v, _get(mem, DOCKER_LOCAL, "kernel_kb", "uss_median"))))
        v = _get(mem, DOCKER, "kernel_kb", "uss_median")
        ref = _get(mem, DOCKER_LOCAL, "kernel_kb", "uss_median")
        rows.append(("  docker kernel USS KiB vs local kernel USS", v, ref, ratio(v, ref)))
        v, ref = (_get(mem, DOCKER, "gateway_rss_kb_per_idle_session"),
                  _get(mem, DOCKER_LOCAL, "gateway_rss_kb_per_idle_session"))
        rows.append(("  gateway RSS KiB/session: docker vs local", v, ref, ratio(v, ref)))
    return rows


def _replicas_rows(rp: dict[str, Any], lat: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """Two replicas on one Redis registry: a call through B (forwarded to A) vs straight to A;
    and A's direct REST vs the main latency section's gateway (memory registry)."""
    if rp.get("skipped"):
        return [("replicas (redis registry)", "skipped", "", "")]
    rlat = rp.get("latency", {})
    rows: list[tuple[str, Any, Any, Any]] = []
    for _, forwarded, direct, label in REPLICA_PAIRS:
        for q in ("p50", "p90", "p99"):
            v, ref = _get(rlat, forwarded, q), _get(rlat, direct, q)
            if v is not None:
                rows.append((f"replica execute {q} ms: {label} vs direct", v, ref,
                             ratio(v, ref)))
    pipe = _get(rlat, REPLICA_REST_PIPE, "p50")
    if pipe is not None:  # the floor: one more process and two loopback hops, nothing done
        v, ref = _get(rlat, REPLICA_REST_DIRECT, "p50"), _get(rlat, REPLICA_REST_FORWARDED, "p50")
        rows.append(("replica execute p50 ms: REST via a byte pipe vs direct", pipe, v,
                     ratio(pipe, v)))
        rows.append(("replica execute p50 ms: REST forwarded vs via a byte pipe", ref, pipe,
                     ratio(ref, pipe)))
    v, ref = _get(rlat, REPLICA_REST_DIRECT, "p50"), _get(rlat, REPLICA_REST_MEMORY, "p50")
    if v is not None:
        rows.append(("REST p50 ms: redis registry vs memory registry", v, ref, ratio(v, ref)))
    for _, forwarded, direct, label in REPLICA_PAIRS:
        v = _get(rlat, forwarded, "server_cpu_ms_per_call")
        ref = _get(rlat, direct, "server_cpu_ms_per_call")
        if v is not None:
            rows.append((f"server CPU ms/call: {label.split()[0]} forwarder B vs owner A", v,
                         ref, ratio(v, ref)))
    return rows


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _files_rows(fr: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """The files API: REST against docker cp (same container), files_changed's cost."""
    if not fr or "skipped" in fr:
        return [("files API", "skipped", "", "")] if fr else []
    rows: list[tuple[str, Any, Any, Any]] = []
    mb = fr.get("size_mb")
    for way in ("upload", "download"):
        v = _get(fr, f"rest_{way}", "mb_per_s")
        ref = _get(fr, "docker_cp", way, "mb_per_s")
        rows.append((f"{mb} MB {way} MB/s: REST vs docker cp", v, ref, ratio(v, ref)))
    for cell, label in (("pure", "1+1"), ("writes", "writing a file")):
        for q in ("p50", "p90"):
            v, ref = _get(fr, f"execute_full_{cell}", q), _get(fr, f"execute_empty_{cell}", q)
            rows.append((f"execute {q} ms, {label}: 10000-file workspace vs empty", v, ref,
                         ratio(v, ref)))
    return rows


def table(results: dict[str, Any]) -> str:
    """The human summary: each row a figure, its same-run reference, and their ratio."""
    lat, tput = results.get("latency", {}), results.get("throughput", {})
    start, mem = results.get("session_start", {}), results.get("memory", {})
    rows: list[tuple[str, Any, Any, Any]] = [("figure", "value", "reference", "ratio")]
    rows.extend(_headline_rows(results))
    for name in (REST, V1, JUP, KG):
        if _get(lat, name, "skipped"):
            rows.append((f"execute {name}", "skipped", "", ""))
            continue
        for q in ("p50", "p90", "p99"):
            v, ref = _get(lat, name, q), _get(lat, RAW, q)
            if v is not None:
                rows.append((f"execute {q} ms: {name} vs raw", v, ref, ratio(v, ref)))
    for q in ("p50", "p99"):
        v, ref = _get(lat, KG, q), _get(lat, REST, q)
        if v is not None:
            rows.append((f"execute {q} ms: stock KG vs REST", v, ref, ratio(v, ref)))
    for n in results.get("config", {}).get("concurrency", []):
        ref = _get(tput, RAW, n, "calls_per_s")
        for name in (REST, V1, JUP, KG, RAW_GW):
            v = _get(tput, name, n, "calls_per_s")
            if v is not None:
                rows.append((f"calls/s at {n}: {name} vs raw", v, ref, ratio(v, ref)))
    ref = _get(start, RAW, "first_result_ms", "p50")
    for name in (REST, V1, JUP, KG, f"{REST}_pool", f"{JUP}_pool"):
        v = _get(start, name, "first_result_ms", "p50")
        kind = "pooled" if name.endswith("_pool") else "cold"
        if v is not None:
            rows.append((f"{kind} start p50 ms: {name.removesuffix('_pool')} vs raw", v, ref,
                         ratio(v, ref)))
    ref = _get(tput, REST, "server_rss_kb_per_session")
    for name in (V1, JUP, KG):
        v = _get(tput, name, "server_rss_kb_per_session")
        if v is not None:
            rows.append((f"server RSS KiB/session: {name} vs REST", v, ref, ratio(v, ref)))
    ref = _get(lat, RAW, "client_cpu_ms_per_call")
    for name in (REST, V1, JUP, KG):
        v = _get(lat, name, "server_cpu_ms_per_call")
        if v is not None:
            rows.append((f"server CPU ms/call: {name} vs raw client", v, ref, ratio(v, ref)))
    stream = results.get("stream", {})
    ref = _get(stream, RAW, "seconds")
    for name in (REST, V1, JUP, KG):
        v = _get(stream, name, "seconds")
        if v is not None:
            rows.append((f"{stream[name]['lines']} lines s: {name} vs raw", v, ref,
                         ratio(v, ref)))
    for figure, label in (("first_line_ms", "first line"), ("all_lines_ms", "all lines")):
        ref = _get(stream, RAW, figure)
        for name in (REST, V1, JUP, KG):
            v = _get(stream, name, figure)
            if v is not None:
                rows.append((f"stream {label} ms: {name} vs raw", v, ref, ratio(v, ref)))
    if mem.get("sessions"):
        uss = _get(mem, "kernel_kb", "uss_median")
        per = mem.get("gateway_rss_kb_per_idle_session")
        rows.append((f"gateway RSS KiB/idle session ({mem['sessions']}) vs kernel USS",
                     per, uss, ratio(per, uss)))
        raw_uss = _get(mem, "raw_kernel_kb", "uss")
        rows.append(("kernel USS KiB: gateway's vs raw", uss, raw_uss, ratio(uss, raw_uss)))
        v, ref = _get(mem, "latency_with_idle_sessions", "p99"), _get(lat, REST, "p99")
        rows.append((f"REST p99 ms with {mem['sessions']} idle vs without", v, ref,
                     ratio(v, ref)))
        rows.append(("gateway idle CPU % of a core", mem.get("idle_cpu_percent"), "", ""))
    rows.extend(_replicas_rows(results.get("replicas", {}), lat))
    rows.extend(_docker_rows(results.get("docker", {})))
    rows.extend(_oneshot_rows(results.get("oneshot", {})))
    rows.extend(_files_rows(results.get("files", {})))
    rows.extend(_packages_rows(results.get("packages", {})))
    kc = results.get("kernel_cost") or {}
    if kc.get("shim"):
        for q in ("p50", "server_cpu_ms_per_call"):
            v, ref = _get(kc, "shim", q), _get(kc, "stock", q)
            rows.append((f"kernel alone {q}: tuned shim vs stock ipykernel", v, ref,
                         ratio(v, ref)))
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


def _packages_rows(packages: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    rows: list[tuple[str, Any, Any, Any]] = []
    for launcher, fig in packages.items():
        if not isinstance(fig, dict):
            continue
        for key, label in (("install_cold_ms", "install, cold (download)"),
                           ("install_warm_ms", "install, warm (cache)"),
                           ("pip_magic_warm_ms", "%pip install cell, warm"),
                           ("import_next_cell_ms", "import in the next cell")):
            rows.append((f"packages: {label} p50 ms ({launcher})", _get(fig, key, "p50"), "", ""))
    return rows


def _oneshot_rows(oneshot: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    rows: list[tuple[str, Any, Any, Any]] = []
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
