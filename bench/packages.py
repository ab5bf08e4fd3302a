"""The packages section: ``POST /v1/sessions/{id}/packages`` of a small pure-Python wheel,
cold (not in the gateway's wheel cache: pip downloads it over HTTP from a loopback server
serving a find-links directory) and warm (the same wheel again, for another session: a cache
hit, no download), ``%pip install`` of a cached wheel in a cell, and the ``import`` of the
package in the next cell. Local and (when on) Docker. No index is reached.

A job's time is from the POST to the poll that sees it finished (polled every 20 ms).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import http.server
import secrets
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.config import BenchConfig
from bench.gateway_rest import GatewayProcess, start_gateway, stop_gateway
from bench.http_client import HttpConnection
from bench.procs import ProcessTracker
from bench.sections import gateway_settings, log
from bench.stats import summarize_ms
from bench.target import BenchError

POLL_S = 0.02


def make_wheel(dest: Path, name: str) -> Path:
    """A pure-Python wheel of ``name`` 1.0 with one module (a few KiB)."""
    module = name.replace("-", "_")
    files = {f"{module}/__init__.py": b"VALUE = 1\n" + b"# padding\n" * 400,
             f"{module}-1.0.dist-info/METADATA":
                 f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{module}-1.0.dist-info/WHEEL":
                 b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\n"
                 b"Tag: py3-none-any\n"}
    record = [f"{p},sha256={_digest(d)},{len(d)}" for p, d in files.items()]
    files[f"{module}-1.0.dist-info/RECORD"] = (
        "\n".join([*record, f"{module}-1.0.dist-info/RECORD,,"]) + "\n").encode()
    path = dest / f"{module}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return path


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 listing ``root`` (what pip's --find-links reads)."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


async def _call(conn: HttpConnection, method: str, path: str, body: Any = None,
                ok: tuple[int, ...] = (200,)) -> Any:
    r = await conn.request(method, path, body)
    if r.status not in ok:
        raise BenchError(f"{method} {path} answered {r.status}: {r.body[:300]!r}")
    return r.json() if r.body else None


async def _install(conn: HttpConnection, sid: str, name: str) -> float:
    started = time.perf_counter()
    accepted = await _call(conn, "POST", f"/v1/sessions/{sid}/packages",
                           {"packages": [name]}, ok=(202,))
    while True:
        job = await _call(conn, "GET", accepted["status_url"])
        if job["status"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(POLL_S)
    if job["status"] != "succeeded":
        raise BenchError(f"install of {name} failed: {job['error']}")
    return time.perf_counter() - started


async def _figures(config: BenchConfig, gw: GatewayProcess, names: list[str]
                   ) -> dict[str, Any]:
    conn = gw.connection()
    cold: list[float] = []
    warm: list[float] = []
    magic: list[float] = []
    imports: list[float] = []
    sessions: list[str] = []
    try:
        for name in names:
            first, second, third = (f"bpk-{secrets.token_hex(4)}" for _ in range(3))
            for sid in (first, second, third):
                await _call(conn, "POST", "/v1/sessions", {"session_id": sid}, ok=(201,))
                sessions.append(sid)
            cold.append(await _install(conn, first, name))  # not in the cache yet
            warm.append(await _install(conn, second, name))  # the same wheel: a cache hit
            started = time.perf_counter()
            out = await _call(conn, "POST", f"/v1/sessions/{third}/execute",
                              {"code": f"%pip install {name}", "timeout_s": 300})
            magic.append(time.perf_counter() - started)
            if "Successfully installed" not in out["stdout"]:
                raise BenchError(f"%pip install {name}: {out['stdout']!r} {out['stderr']!r}")
            started = time.perf_counter()
            out = await _call(conn, "POST", f"/v1/sessions/{second}/execute",
                              {"code": f"import {name.replace('-', '_')}"})
            imports.append(time.perf_counter() - started)
            if out["status"] != "ok":
                raise BenchError(f"import {name} failed: {out['error']}")
            for sid in (first, second, third):  # room for the next round's three
                await _call(conn, "DELETE", f"/v1/sessions/{sid}", None, ok=(204,))
                sessions.remove(sid)
    finally:
        for sid in sessions:
            with contextlib.suppress(Exception):
                await conn.request("DELETE", f"/v1/sessions/{sid}")
        await conn.close()
    return {"install_cold_ms": summarize_ms(cold), "install_warm_ms": summarize_ms(warm),
            "pip_magic_warm_ms": summarize_ms(magic), "import_next_cell_ms": summarize_ms(imports)}


async def packages_section(config: BenchConfig, results: dict[str, Any],
                           tracker: ProcessTracker) -> None:
    launchers = ["local", "docker"] if config.docker else ["local"]
    rounds = max(3, config.starts)
    with tempfile.TemporaryDirectory(prefix="bpk-") as tmp:
        index = Path(tmp)
        with serve_directory(index) as url:
            for launcher in launchers:
                names = [f"egwbench-{launcher}-{i}-{secrets.token_hex(3)}" for i in range(rounds)]
                for name in names:
                    make_wheel(index, name)
                settings = gateway_settings(config, 16, 0)
                settings.update(package_index_url="", package_find_links=f'["{url}"]')
                if launcher == "docker":
                    settings.update(launcher="docker", instance_id="bench-packages",
                                    docker_image=config.docker_image)
                log(f"packages ({launcher}) ...")
                gw = await start_gateway(
                    tracker, config.results_dir / "logs" / f"packages-{launcher}.log", settings)
                try:
                    results["packages"][launcher] = await _figures(config, gw, names)
                finally:
                    await stop_gateway(tracker, gw)
