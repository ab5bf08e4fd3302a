"""Figures → ratios against the same-run references, target checks and the JSON file (the
table for humans: ``bench/table.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.density import density_figures
from bench.stats import ratio

REST, RAW, JUP, KG = "gateway_rest", "raw", "gateway_jupyter", "kernel_gateway"
V1 = "gateway_v1_ws"
RAW_GW = "raw_gateway_kernel"  # jupyter_client straight to the gateway's own (shim) kernel
DOCKER, DOCKER_LOCAL = "docker_rest", "local_rest"  # the docker section's two gateways
# the replicas section: sessions created on replica A, called on A (direct) or through B
REPLICA_REST_DIRECT, REPLICA_REST_FORWARDED = "replica_rest_direct", "replica_rest_forwarded"
REPLICA_V1_DIRECT, REPLICA_V1_FORWARDED = "replica_v1_ws_direct", "replica_v1_ws_forwarded"
REPLICA_REST_MEMORY = "replica_rest_memory"  # a gateway on the memory registry, interleaved
REPLICA_REST_PIPE = "replica_rest_pipe"  # to A through a byte pipe process: the relay floor
REPLICA_PAIRS = (("rest", REPLICA_REST_FORWARDED, REPLICA_REST_DIRECT, "REST forwarded"),
                 ("v1ws", REPLICA_V1_FORWARDED, REPLICA_V1_DIRECT, "/v1 WS relayed"))
FRONT_DOORS = ((REST, "rest"), (V1, "v1ws"), (JUP, "jupyter"), (KG, "kg"))


def _get(data: dict[str, Any], *path: str | int) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or str(key) not in node:
            return None
        node = node[str(key)]
    return node


def derive(results: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(ratios, targets) from the measured sections; a missing figure gives None, not an error."""
    lat = results.get("latency", {})
    r: dict[str, Any] = {}
    for q in ("p50", "p90", "p99"):
        r[f"latency_{q}_rest_vs_raw"] = ratio(_get(lat, REST, q), _get(lat, RAW, q))
        r[f"latency_{q}_v1ws_vs_raw"] = ratio(_get(lat, V1, q), _get(lat, RAW, q))
        r[f"latency_{q}_jupyter_vs_raw"] = ratio(_get(lat, JUP, q), _get(lat, RAW, q))
    for q in ("p50", "p99"):
        # the two halves: the gateway's overhead (same kernel) and its kernel's (same client)
        for name, key in FRONT_DOORS[:3]:
            r[f"latency_{q}_{key}_vs_raw_gateway_kernel"] = ratio(_get(lat, name, q),
                                                                  _get(lat, RAW_GW, q))
        r[f"latency_{q}_raw_gateway_kernel_vs_raw"] = ratio(_get(lat, RAW_GW, q),
                                                            _get(lat, RAW, q))
    r["latency_p50_kg_vs_rest"] = ratio(_get(lat, KG, "p50"), _get(lat, REST, "p50"))
    r["latency_p99_kg_vs_rest"] = ratio(_get(lat, KG, "p99"), _get(lat, REST, "p99"))
    r["latency_p50_kg_vs_jupyter"] = ratio(_get(lat, KG, "p50"), _get(lat, JUP, "p50"))
    r["latency_p50_kg_vs_raw"] = ratio(_get(lat, KG, "p50"), _get(lat, RAW, "p50"))
    raw_client_cpu = _get(lat, RAW, "client_cpu_ms_per_call")
    r["server_cpu_per_call_rest_vs_raw_client"] = ratio(
        _get(lat, REST, "server_cpu_ms_per_call"), raw_client_cpu)
    r["server_cpu_per_call_kg_vs_rest"] = ratio(
        _get(lat, KG, "server_cpu_ms_per_call"), _get(lat, REST, "server_cpu_ms_per_call"))
    tput = results.get("throughput", {})
    for n in results.get("config", {}).get("concurrency", []):
        for name, key in FRONT_DOORS:
            r[f"throughput_{n}_{key}_vs_raw"] = ratio(
                _get(tput, name, n, "calls_per_s"), _get(tput, RAW, n, "calls_per_s"))
        r[f"throughput_{n}_rest_vs_raw_gateway_kernel"] = ratio(
            _get(tput, REST, n, "calls_per_s"), _get(tput, RAW_GW, n, "calls_per_s"))
        r[f"throughput_{n}_raw_gateway_kernel_vs_raw"] = ratio(
            _get(tput, RAW_GW, n, "calls_per_s"), _get(tput, RAW, n, "calls_per_s"))
    start = results.get("session_start", {})
    raw_start = _get(start, RAW, "first_result_ms", "p50")
    r["start_p50_rest_vs_raw"] = ratio(_get(start, REST, "first_result_ms", "p50"), raw_start)
    r["start_p50_v1ws_vs_raw"] = ratio(_get(start, V1, "first_result_ms", "p50"), raw_start)
    r["start_p50_kg_vs_raw"] = ratio(_get(start, KG, "first_result_ms", "p50"), raw_start)
    r["start_p50_kg_vs_rest"] = ratio(_get(start, KG, "first_result_ms", "p50"),
                                      _get(start, REST, "first_result_ms", "p50"))
    r["start_p50_rest_pool_vs_raw"] = ratio(_get(start, f"{REST}_pool", "first_result_ms", "p50"),
                                            raw_start)
    r["start_p50_jupyter_pool_vs_raw"] = ratio(
        _get(start, f"{JUP}_pool", "first_result_ms", "p50"), raw_start)
    r["server_rss_per_session_kg_vs_rest"] = ratio(_get(tput, KG, "server_rss_kb_per_session"),
                                                   _get(tput, REST, "server_rss_kb_per_session"))
    stream = results.get("stream", {})
    for name, key in FRONT_DOORS:
        r[f"stream_seconds_{key}_vs_raw"] = ratio(_get(stream, name, "seconds"),
                                                  _get(stream, RAW, "seconds"))
        for figure in ("first_line_ms", "all_lines_ms"):
            r[f"stream_{figure}_{key}_vs_raw"] = ratio(_get(stream, name, figure),
                                                       _get(stream, RAW, figure))
    mem = results.get("memory", {})
    r["idle_session_gateway_rss_vs_kernel_uss"] = ratio(
        _get(mem, "gateway_rss_kb_per_idle_session"), _get(mem, "kernel_kb", "uss_median"))
    r["kernel_uss_gateway_vs_raw"] = ratio(_get(mem, "kernel_kb", "uss_median"),
                                           _get(mem, "raw_kernel_kb", "uss"))
    r["latency_p99_with_idle_sessions_vs_rest"] = ratio(
        _get(mem, "latency_with_idle_sessions", "p99"), _get(lat, REST, "p99"))
    dk = results.get("docker", {})
    dstart, dlat, dmem = dk.get("session_start", {}), dk.get("latency", {}), dk.get("memory", {})
    for q in ("p50", "p90"):
        r[f"docker_start_{q}_vs_local"] = ratio(_get(dstart, DOCKER, "first_result_ms", q),
                                                _get(dstart, DOCKER_LOCAL, "first_result_ms", q))
        r[f"docker_latency_{q}_vs_local"] = ratio(_get(dlat, DOCKER, q),
                                                  _get(dlat, DOCKER_LOCAL, q))
    r["docker_pool_start_p50_vs_cold"] = ratio(
        _get(dstart, f"{DOCKER}_pool", "first_result_ms", "p50"),
        _get(dstart, DOCKER, "first_result_ms", "p50"))
    r["docker_memory_per_session_vs_local"] = ratio(_get(dmem, DOCKER, "per_session_kb"),
                                                    _get(dmem, DOCKER_LOCAL, "per_session_kb"))
    r["docker_kernel_uss_vs_local"] = ratio(_get(dmem, DOCKER, "kernel_kb", "uss_median"),
                                            _get(dmem, DOCKER_LOCAL, "kernel_kb", "uss_median"))
    rlat = _get(results, "replicas", "latency") or {}
    for key, forwarded, direct, _ in REPLICA_PAIRS:
        for q in ("p50", "p90", "p99"):
            r[f"replicas_{q}_{key}_forwarded_vs_direct"] = ratio(_get(rlat, forwarded, q),
                                                                 _get(rlat, direct, q))
        r[f"replicas_server_cpu_{key}_forwarder_vs_owner"] = ratio(
            _get(rlat, forwarded, "server_cpu_ms_per_call"),
            _get(rlat, direct, "server_cpu_ms_per_call"))
    r["replicas_p50_rest_pipe_vs_direct"] = ratio(_get(rlat, REPLICA_REST_PIPE, "p50"),
                                                  _get(rlat, REPLICA_REST_DIRECT, "p50"))
    r["replicas_p50_rest_forwarded_vs_pipe"] = ratio(_get(rlat, REPLICA_REST_FORWARDED, "p50"),
                                                     _get(rlat, REPLICA_REST_PIPE, "p50"))
    r["replicas_p50_rest_direct_vs_memory_rest"] = ratio(_get(rlat, REPLICA_REST_DIRECT, "p50"),
                                                         _get(rlat, REPLICA_REST_MEMORY, "p50"))
    dens = density_figures(results)
    r["density_sessions_per_24gib"] = dens.get("sessions_per_24gib")
    r["density_active_p99_vs_first_step"] = dens.get("active_p99_vs_first_step")
    kc = (results.get("kernel_cost") or {}).get("ratios_shim_vs_stock") or {}
    r["kernel_p50_shim_vs_stock"] = kc.get("p50")
    r["kernel_cpu_shim_vs_stock"] = kc.get("server_cpu_ms_per_call")
    top = max(results.get("config", {}).get("concurrency", [0]) or [0])
    targets = [
        *(_target(f"{label} execute p50 <= 0.7x raw (stock kernel)",
                  r[f"latency_p50_{key}_vs_raw"], "<=", 0.7) for label, key in _GOAL_DOORS),
        *(_target(f"{label} execute p99 <= 1.2x raw (stock kernel)",
                  r[f"latency_p99_{key}_vs_raw"], "<=", 1.2) for label, key in _GOAL_DOORS),
        _target(f"REST throughput at {top} sessions >= 1.5x raw",
                r.get(f"throughput_{top}_rest_vs_raw"), ">=", 1.5),
        _target("forwarded REST p50 <= 1.1x a direct call",
                r["replicas_p50_rest_forwarded_vs_direct"], "<=", 1.1),
        _target("stock KG p50 >= 10x REST p50", r["latency_p50_kg_vs_rest"], ">=", 10.0),
        _target("stock KG p50 >= 10x our Jupyter API p50", r["latency_p50_kg_vs_jupyter"],
                ">=", 10.0),
        _target("warm-pool start p50 <= 50 ms (REST, create + first result)",
                _get(start, f"{REST}_pool", "first_result_ms", "p50"), "<=", 50.0),
        _target("warm-pool start p50 <= 50 ms (Jupyter API, POST + WS + first result)",
                _get(start, f"{JUP}_pool", "first_result_ms", "p50"), "<=", 50.0),
        _target("Docker cold start p50 <= 600 ms (create + first result)",
                _get(dstart, DOCKER, "first_result_ms", "p50"), "<=", 600.0),
        _target("Docker warm-pool start p50 <= 20 ms (create + first result)",
                _get(dstart, f"{DOCKER}_pool", "first_result_ms", "p50"), "<=", 20.0),
        _target("idle Docker sessions per 24 GiB >= 600 (host memory, everything counted)",
                dens.get("sessions_per_24gib"), ">=", 600.0),
        _target("active session p99 < 50 ms at the last density step",
                dens.get("active_p99_ms"), "<=", 50.0),
    ]
    for name in (RAW, REST, V1, JUP, KG):
        complete = _get(stream, name, "complete")
        if complete is not None:
            targets.append({"target": f"{name}: 100% of {stream[name]['lines']} lines delivered",
                            "value": stream[name]["delivered"], "met": bool(complete)})
    return r, targets


_GOAL_DOORS = (("REST", "rest"), ("/v1 WS", "v1ws"), ("Jupyter", "jupyter"))


def _target(label: str, value: float | None, op: str, bound: float) -> dict[str, Any]:
    met = None if value is None else (value <= bound if op == "<=" else value >= bound)
    return {"target": label, "value": value, "bound": f"{op} {bound}", "met": met}


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
