"""The files API: a large file's upload and download throughput through REST against
``docker cp`` into the same container in the same run, and what ``files_changed`` costs an
execute on a workspace of 10,000 files.

Throughput: one Docker gateway (pool off) and one session with room for three copies of the
file (a replacing PUT holds the old and the new copy at once); rounds alternate REST PUT,
``docker cp`` in, REST GET, ``docker cp`` out (a tar on stdout), each timed end to end from
the client, the file on the host's disk. REST goes through curl when it is installed (a native
client, like the docker CLI; httpx otherwise). Without the engine, REST runs against a local
gateway and the ``docker cp`` figures are skipped.
files_changed: a local gateway, a session whose workspace holds 10,000 files (100 dirs x
100) and one whose workspace is empty; a cell that writes nothing (``1+1``) and one that
writes one file run in rounds on both.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from bench import docker_sandbox
from bench.config import BenchConfig
from bench.gateway_rest import GatewayProcess, start_gateway, stop_gateway
from bench.procs import ProcessTracker
from bench.sections import gateway_settings, log
from bench.stats import summarize_ms

MiB = 2**20
CHUNK = MiB
FILES = 10_000


def _client(gw: GatewayProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gw.url, timeout=600,
                             headers={"Authorization": f"Bearer {gw.token}"})


async def _execute(client: httpx.AsyncClient, sid: str, code: str) -> dict[str, Any]:
    r = await client.post(f"/v1/sessions/{sid}/execute", json={"code": code})
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    if result["status"] != "ok":
        raise RuntimeError(f"{code!r}: {result['status']} {result.get('error')}")
    return result


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    fh = await asyncio.to_thread(path.open, "rb")
    try:
        while data := await asyncio.to_thread(fh.read, CHUNK):
            yield data
    finally:
        fh.close()


def _random_file(path: Path, size_mb: int) -> None:
    with open(path, "wb") as fh:
        for _ in range(size_mb):
            fh.write(os.urandom(MiB))


async def _curl(gw: GatewayProcess, size: int, *args: str) -> float:
    """One curl run (a native client, like the docker CLI it is compared with), checked to
    have moved ``size`` bytes."""
    started = time.perf_counter()
    done = await asyncio.to_thread(
        subprocess.run, ["curl", "-sS", "--fail", "-H", f"Authorization: Bearer {gw.token}",
                         "-w", "%{size_upload} %{size_download}", *args],
        capture_output=True, timeout=600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"curl failed: {done.stderr.decode(errors='replace')}")
    moved = max(int(float(n)) for n in done.stdout.split()[-2:])
    if moved != size:
        raise RuntimeError(f"curl moved {moved} of {size} bytes")
    return seconds


async def _rest_up(client: httpx.AsyncClient, gw: GatewayProcess, path: Path) -> float:
    url = f"{gw.url}/v1/sessions/files/files/rest.bin"
    if shutil.which("curl"):
        return await _curl(gw, path.stat().st_size, "-T", str(path), "-o", "/dev/null", url)
    started = time.perf_counter()
    r = await client.put(url, content=_chunks(path),
                         headers={"Content-Length": str(path.stat().st_size)})
    r.raise_for_status()
    return time.perf_counter() - started


async def _rest_down(client: httpx.AsyncClient, gw: GatewayProcess, size: int) -> float:
    url = f"{gw.url}/v1/sessions/files/files/rest.bin"
    if shutil.which("curl"):
        return await _curl(gw, size, "-o", "/dev/null", url)
    started = time.perf_counter()
    got = 0
    async with client.stream("GET", url) as r:
        r.raise_for_status()
        async for data in r.aiter_bytes(CHUNK):
            got += len(data)
    if got != size:
        raise RuntimeError(f"downloaded {got} of {size} bytes")
    return time.perf_counter() - started


async def _docker_cp(*args: str) -> float:
    started = time.perf_counter()
    done = await asyncio.to_thread(subprocess.run, ["docker", "cp", *args],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"docker cp failed: {done.stderr.decode(errors='replace')}")
    return time.perf_counter() - started


def _mb_s(size: int, seconds: list[float]) -> dict[str, Any]:
    rates = [size / MiB / s for s in seconds]
    return {"mb_per_s": round(statistics.median(rates), 1), "runs": len(rates),
            "seconds": [round(s, 3) for s in seconds]}


async def _throughput(config: BenchConfig, tracker: ProcessTracker, fr: dict[str, Any]
                      ) -> None:
    docker_ok, why = (await docker_sandbox.available(config.docker_image) if config.docker
                      else (False, "docker section turned off"))
    size = config.file_mb * MiB
    settings = {**gateway_settings(config, 4), "max_upload_bytes": str(size + MiB)}
    ids: list[str] = []
    if docker_ok:
        ids.append(docker_sandbox.instance_id("files"))
        settings.update(launcher="docker", instance_id=ids[0], docker_image=config.docker_image)
    else:
        fr["docker_cp"] = {"skipped": why}
    logs = config.results_dir / "logs"
    gw = await start_gateway(tracker, logs / "gateway-files.log", settings)
    tmp = Path(tempfile.mkdtemp(prefix="bnf-", dir="/tmp"))
    try:
        source = tmp / "file.bin"
        await asyncio.to_thread(_random_file, source, config.file_mb)
        async with _client(gw) as client:
            r = await client.post("/v1/sessions", json={
                "session_id": "files", "limits": {"disk_mb": 3 * config.file_mb + 64}})
            r.raise_for_status()
            host = (await _execute(client, "files", "import socket\nprint(socket.gethostname())"
                                   ))["stdout"].strip()
            up, down, cp_in, cp_out = [], [], [], []
            for _ in range(config.file_rounds):
                up.append(await _rest_up(client, gw, source))
                if docker_ok:
                    cp_in.append(await _docker_cp(str(source), f"{host}:/work/cp.bin"))
                down.append(await _rest_down(client, gw, size))
                if docker_ok:
                    cp_out.append(await _docker_cp(f"{host}:/work/cp.bin", "-"))
        fr["size_mb"] = config.file_mb
        fr["launcher"] = "docker" if docker_ok else "local"
        fr["rest_upload"], fr["rest_download"] = _mb_s(size, up), _mb_s(size, down)
        if docker_ok:
            fr["docker_cp"] = {"upload": _mb_s(size, cp_in), "download": _mb_s(size, cp_out)}
    finally:
        await stop_gateway(tracker, gw)
        for path in tmp.iterdir():
            path.unlink()
        tmp.rmdir()
        if ids:
            await docker_sandbox.remove_containers(ids)


async def _changed_cost(config: BenchConfig, tracker: ProcessTracker, fr: dict[str, Any]
                        ) -> None:
    gw = await start_gateway(tracker, config.results_dir / "logs" / "gateway-files-scan.log",
                             gateway_settings(config, 4))
    try:
        async with _client(gw) as client:
            await _execute(client, "full", f"import os\nfor d in range(100):\n"
                                           f"    os.makedirs(f'd{{d}}')\n"
                                           f"    for f in range({FILES // 100}):\n"
                                           f"        open(f'd{{d}}/f{{f}}', 'w').close()")
            await _execute(client, "empty", "1")
            # a cell that writes nothing, and one that rewrites one file, in each workspace
            cells = {"pure": ("1+1", 0), "writes": ("open('one.txt', 'w').write('x')", 1)}
            samples: dict[str, list[float]] = {f"{sid}_{cell}": [] for sid in ("full", "empty")
                                               for cell in cells}
            per_round = max(1, config.file_scan_iterations // config.rounds)
            for _ in range(config.rounds):
                for key in samples:
                    sid, cell = key.split("_")
                    code, changed = cells[cell]
                    for _ in range(per_round):
                        started = time.perf_counter()
                        result = await _execute(client, sid, code)
                        samples[key].append(time.perf_counter() - started)
                        if len(result["files_changed"]) != changed:
                            raise RuntimeError(f"{code!r} changed {result['files_changed']}")
        for key, values in samples.items():
            fr[f"execute_{key}"] = summarize_ms(values)
        fr["files_in_workspace"] = FILES
    finally:
        await stop_gateway(tracker, gw)


async def files_section(config: BenchConfig, results: dict[str, Any],
                        tracker: ProcessTracker) -> None:
    fr = results.setdefault("files", {})
    log(f"  upload/download of {config.file_mb} MB")
    await _throughput(config, tracker, fr)
    log(f"  files_changed on {FILES} files")
    await _changed_cost(config, tracker, fr)
