"""The Docker engine as the bench sees it: is it (and the kernel image) here, how much memory
does a session's container hold, and removing whatever a bench gateway left behind.

Engine calls go through the docker SDK in threads (they block). Container memory is read
from the container's memory cgroup on this host (v1 or v2): usage minus inactive file cache,
the figure ``docker stats`` shows; the SDK's one-shot stats are the fallback when the cgroup
files are not visible (e.g. a remote engine). The kernel process inside is also read from
/proc (its USS, comparable with a local kernel's), and so is the engine's per-container shim.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path
from typing import Any

from bench.procs import cmdline, descendants, is_kernel, memory_kb, parent_pid

LABEL_MANAGED = "exec-gateway.managed"
LABEL_GATEWAY = "exec-gateway.gateway"
LABEL_SESSION = "exec-gateway.session_id"


def instance_id(what: str) -> str:
    """A gateway instance id unique to this bench run (container names and labels carry it)."""
    return f"bench-{secrets.token_hex(3)}-{what}"


def _client() -> Any:
    import docker  # imported here: the rest of the bench runs without the SDK

    return docker.from_env(timeout=30)


def _check(image: str) -> tuple[bool, str]:
    try:
        client = _client()
    except Exception as exc:  # ImportError, DockerException: no SDK or no engine
        return False, f"Docker engine unavailable ({type(exc).__name__}: {exc})"
    try:
        client.ping()
        engine = client.version().get("Version", "?")
    except Exception as exc:
        return False, f"Docker engine unavailable ({type(exc).__name__}: {exc})"
    try:
        client.images.get(image)
    except Exception as exc:
        return False, f"kernel image {image} missing ({type(exc).__name__}); make kernel-image"
    finally:
        client.close()
    return True, f"engine {engine}, image {image}"


async def available(image: str) -> tuple[bool, str]:
    """(True, engine version and image) or (False, why) when the engine or image is missing."""
    return await asyncio.to_thread(_check, image)


def _cgroup_kb(container_id: str) -> int | None:
    """usage - inactive_file of the container's memory cgroup, KiB (None when not visible)."""
    candidates = [
        (Path(f"/sys/fs/cgroup/memory/docker/{container_id}"), "memory.usage_in_bytes",
         "total_inactive_file"),
        (Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope"), "memory.current",
         "inactive_file"),
        (Path(f"/sys/fs/cgroup/docker/{container_id}"), "memory.current", "inactive_file"),
    ]
    for base, usage_file, inactive_key in candidates:
        try:
            usage = int((base / usage_file).read_text())
            stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
        except (OSError, ValueError):
            continue
        return (usage - int(stat.get(inactive_key, 0))) // 1024
    return None


def _stats_kb(container: Any) -> int | None:
    """The same figure from the engine's one-shot stats (slower, works for a remote engine)."""
    try:
        mem = container.stats(stream=False, one_shot=True).get("memory_stats", {})
    except Exception:
        return None
    if "usage" not in mem:
        return None
    stats = mem.get("stats", {})
    inactive = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    return int((mem["usage"] - inactive) // 1024)


def _container_memory(container: Any) -> dict[str, Any]:
    """One session container: cgroup memory, the kernel's and the init's memory, the shim's."""
    out: dict[str, Any] = {"name": container.name}
    cg = _cgroup_kb(container.id)
    out["cgroup_kb"] = cg if cg is not None else _stats_kb(container)
    out["cgroup_source"] = "cgroup" if cg is not None else "docker stats"
    pid = int(container.attrs.get("State", {}).get("Pid") or 0)
    if pid and Path(f"/proc/{pid}").exists():  # a local engine: its processes are in our /proc
        with contextlib.suppress(OSError, ValueError, IndexError):
            inside = [pid, *descendants(pid)]
            kernels = [p for p in inside if is_kernel(cmdline(p))]
            out["kernel"] = memory_kb(kernels[0]) if kernels else None
            out["processes_uss_kb"] = sum(memory_kb(p)["uss"] for p in inside)
            shim = parent_pid(pid)
            if "containerd-shim" in " ".join(cmdline(shim)):
                out["shim"] = memory_kb(shim)
    return out


def _memory_of(gateway_id: str) -> list[dict[str, Any]]:
    client = _client()
    try:
        found = client.containers.list(filters={"label": [f"{LABEL_MANAGED}=true",
                                                          f"{LABEL_GATEWAY}={gateway_id}"]})
        return [_container_memory(c) for c in found
                if c.labels.get(LABEL_SESSION) != "pool"]
    finally:
        client.close()


async def session_containers_memory(gateway_id: str) -> list[dict[str, Any]]:
    """Memory of every running session container (not pool ones) of gateway ``gateway_id``."""
    return await asyncio.to_thread(_memory_of, gateway_id)


def _remove(gateway_ids: list[str]) -> list[str]:
    client = _client()
    removed: list[str] = []
    try:
        for gid in gateway_ids:
            for c in client.containers.list(all=True, filters={"label": f"{LABEL_GATEWAY}={gid}"}):
                with contextlib.suppress(Exception):  # being removed by the gateway meanwhile
                    c.remove(force=True)
                    removed.append(c.name)
    finally:
        client.close()
    return removed


async def remove_containers(gateway_ids: list[str]) -> list[str]:
    """Force-remove every container (any state) labelled with one of ``gateway_ids``; returns
    the names removed (a gateway that stopped cleanly leaves none)."""
    if not gateway_ids:
        return []
    return await asyncio.to_thread(_remove, gateway_ids)
