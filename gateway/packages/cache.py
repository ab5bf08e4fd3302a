"""WheelCache: the shared, content-addressed wheel cache, and Downloader: real pip
(``pip download --only-binary=:all:``) run by the gateway, never in a sandbox.

The cache lives under the gateway's state directory (``package_cache_dir``, default
``<state_dir>/wheels``): every wheel once, as ``sha256/<hex>``, linked by its file name into
``index/`` (what pip reads with ``--find-links``), so a wheel any session downloaded is found
there by the next job of any session without a download. Wheels only: pip never builds a
source distribution here, so no package's code runs on the gateway's side.

``pip.zip`` (the gateway's own pip, zipped) goes into the sandbox with a job's wheels: the
kernel image has no pip, and the sandbox runs ``python pip.zip/pip install --no-index``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import importlib.util
import logging
import marshal
import os
import re
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name

from gateway.settings import Settings

log = logging.getLogger(__name__)

PLATFORM_PROBE = """
import json, os, platform, sys, sysconfig
soabi = sysconfig.get_config_var("SOABI") or ""
libc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else ""
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "abi": "cp" + soabi.split("-")[1]
                  if soabi.startswith("cpython-") else "", "machine": platform.machine(),
                  "glibc": (libc or "").split(" ")[-1], "os": sys.platform}))
"""


class WheelCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.index = root / "index"
        self._blobs = root / "sha256"

    def prepare(self) -> None:
        """Create the directories (world-readable: wheels are public, and a sandbox with
        another uid reads the ones staged for it through hard links)."""
        for path in (self.root, self.index, self._blobs):
            path.mkdir(mode=0o755, parents=True, exist_ok=True)

    def store(self, wheel: Path) -> tuple[Path, bool]:
        """Take a downloaded wheel into the cache; returns its cached path and whether it was
        there already (a hit). Blocking."""
        digest = hashlib.sha256()
        with open(wheel, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        blob = self._blobs / digest.hexdigest()
        named = self.index / wheel.name
        hit = blob.exists()
        if not hit:
            os.chmod(wheel, 0o644)
            os.replace(wheel, blob)
        if not named.exists():
            with contextlib.suppress(FileExistsError):
                os.link(blob, named)
        return (named if named.exists() and os.path.samefile(named, blob) else blob), hit

    def pip_zip(self) -> Path:
        """The gateway's own pip as a zip a sandbox runs (``python pip.zip/pip``). Blocking."""
        import pip

        tag = sys.implementation.cache_tag
        target = self.root / f"pip-{pip.__version__}-{tag}.zip"
        if target.exists():
            return target
        source = Path(pip.__file__).parent
        partial = target.with_suffix(f".{os.getpid()}.part")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(source.rglob("*")):
                if not path.is_file() or "__pycache__" in path.parts:
                    continue
                name = Path("pip") / path.relative_to(source)
                zf.write(path, name)
                if path.suffix == ".py":  # zipimport cannot cache bytecode: ship it (used by
                    # a sandbox interpreter of this version; another one compiles the source)
                    zf.writestr(str(name.with_suffix(".pyc")), _bytecode(path, str(name)))
        os.chmod(partial, 0o644)
        os.replace(partial, target)
        return target


def _bytecode(path: Path, name: str) -> bytes:
    """``path`` compiled, as an unchecked hash-based .pyc (zipimport then skips the check)."""
    source = path.read_bytes()
    code = compile(source, name, "exec", dont_inherit=True)
    flags = (1).to_bytes(4, "little")  # hash-based, unchecked
    return (importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(source)
            + marshal.dumps(code))


@dataclass
class Download:
    """What one ``pip download`` brought: the cached wheels, hits, new bytes, and on failure
    why, in plain words."""

    wheels: list[Path] = field(default_factory=list)
    hits: int = 0
    new_bytes: int = 0
    error: str | None = None


def platform_args(probe: dict[str, str] | None) -> list[str]:
    """pip's target options for the kernels' interpreter (learnt by ``PLATFORM_PROBE``), so
    the gateway's own Python may differ from the sandbox's."""
    if not probe or not probe.get("python") or not probe.get("abi"):
        return []
    args = ["--python-version", probe["python"], "--implementation", "cp",
            "--abi", probe["abi"], "--abi", "abi3", "--abi", "none"]
    machine, glibc = probe.get("machine", ""), probe.get("glibc", "")
    if probe.get("os") == "linux" and machine and re.fullmatch(r"2\.\d+", glibc):
        newest = int(glibc.split(".")[1])
        args += [f"--platform=manylinux_2_{m}_{machine}" for m in range(newest, 4, -1)]
        args += [f"--platform=manylinux{y}_{machine}" for y in ("2014", "2010", "1")]
        args += [f"--platform=linux_{machine}"]
    return args


class Downloader:
    """Runs ``python -m pip download`` for a job, with the operator's index settings."""

    def __init__(self, settings: Settings, cache: WheelCache) -> None:
        self._settings = settings
        self._cache = cache

    def argv(self, requirements: list[str], dest: Path, platform: list[str]) -> list[str]:
        settings = self._settings
        argv = [sys.executable, "-m", "pip", "download", "-vv", "--only-binary=:all:",
                "--no-cache-dir", "--disable-pip-version-check", "--no-input",
                "--progress-bar", "off", "--dest", str(dest), *platform,
                "--find-links", str(self._cache.index)]
        if settings.package_index_url == "":
            argv.append("--no-index")
        elif settings.package_index_url is not None:
            argv += ["--index-url", settings.package_index_url]
        for link in settings.package_find_links:
            argv += ["--find-links", link]
        return [*argv, "--", *requirements]

    async def download(self, requirements: list[str], dest: Path, platform: list[str],
                       on_line: Callable[[str], None]) -> Download:
        """Download ``requirements`` with their dependencies into ``dest``, then into the
        cache. The caller bounds the time (cancelling kills pip)."""
        # pip's own settings (PIP_*, proxies, certificates) come from the gateway's
        # environment, never the gateway's own (GATEWAY_*: the token)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env["PYTHONNOUSERSITE"] = "1"
        proc = await asyncio.create_subprocess_exec(
            *self.argv(requirements, dest, platform), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            start_new_session=True)
        # pip -vv may print thousands of lines (a link per file of every version): kept are
        # the last ones and those that say why a requirement found nothing
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_KEPT)
        notable: collections.deque[str] = collections.deque(maxlen=TAIL_KEPT)
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                tail.append(line)
                if _NOTABLE.search(line):
                    notable.append(line)
                if _shown(line):
                    on_line(line)
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                await proc.wait()
        if code != 0:
            return Download(error=explain_failure([*notable, *tail]))
        return await asyncio.to_thread(self._take, dest)

    def _take(self, dest: Path) -> Download:
        done = Download()
        for path in sorted(dest.iterdir()):
            if not path.name.endswith(".whl"):  # --only-binary: never expected
                done.error = f"pip brought a file that is not a wheel: {path.name}"
                return done
            size = path.stat().st_size
            cached, hit = self._cache.store(path)
            done.wheels.append(cached)
            if hit:
                done.hits += 1
            else:
                done.new_bytes += size
        return done


TAIL_KEPT = 300
_NOTABLE = re.compile(r"No sources permitted|none of the wheel's tags")
_SHOWN = ("Collecting", "Downloading", "Saved", "File was already downloaded", "Successfully",
          "ERROR", "Looking in", "Requirement already")


def _shown(line: str) -> bool:
    """The lines of pip's verbose output a user wants to see as progress."""
    return line.lstrip().startswith(_SHOWN)


def explain_failure(lines: list[str]) -> str:
    """pip download's failure, in plain words (pip's own ERROR lines say it less plainly)."""
    text = "\n".join(lines)
    missing = re.search(r"Could not find a version that satisfies the requirement (\S+)"
                        r"(?: \(from versions: ([^)]*)\))?", text)
    if missing:
        name = re.split(r"[<>=!~;\[ ]", missing.group(1))[0]
        versions = (missing.group(2) or "").strip()
        if versions and versions != "none":
            return (f"{name}: no version matches {missing.group(1)!r} "
                    f"(available: {versions[:300]})")
        skipped = re.findall(r"No sources permitted for (\S+)", text)  # (--only-binary)
        if canonicalize_name(name) in {canonicalize_name(s.rstrip(":")) for s in skipped}:
            return (f"{name}: no wheel for this platform, only a source distribution "
                    "(source distributions are never built here)")
        if "none of the wheel's tags" in text:
            return (f"{name}: no wheel for this platform (its wheels are for other "
                    "platforms or Python versions)")
        return f"no such package: {name} (not on the configured index)"
    if "ResolutionImpossible" in text or "conflicting dependencies" in text:
        cause = re.search(r"The conflict is caused by:\n((?:.*\n?){1,8})", text)
        detail = " ".join(cause.group(1).split()) if cause else ""
        return "the requirements conflict" + (f": {detail[:500]}" if detail else "")
    errors = [line.strip() for line in lines if line.strip().startswith("ERROR:")]
    return (errors[-1].removeprefix("ERROR:").strip()[:500] if errors
            else "the download failed (pip gave no reason)")

