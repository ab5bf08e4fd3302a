"""Volumes: where session workspaces live on the host, and what bounds them.

A workspace is a host directory ``<work_dir>/<instance_id>/ws-<24 hex>`` that the kernel
uses as its working directory (the local launcher starts the kernel in it; the Docker
launcher bind-mounts it at ``/work``). It belongs to the session, not to a kernel: it is
kept across kernel restarts, deaths, container replacements, gateway restarts and takeovers
(its path is in the session record) and removed with the session.

Quota (``workspace_quota``):

- ``loop``: the directory is the mount point of a fixed-size ext4 image of ``disk_mb``
  (``<dir>.img``, preallocated with ``fallocate`` unless ``workspace_preallocate`` is off),
  loop-mounted ``nosuid,nodev`` (not ``noexec``: native extensions of the packages
  installed in ``.packages`` must load). The Linux kernel enforces the size: a cell writing
  past it gets ENOSPC, an upload 507, and the host disk never holds more than the images.
  Needs root with CAP_SYS_ADMIN (``mount``); ``auto`` picks it then. A gateway in a
  container must also share these mounts with the engine's host (the state dir bind-mounted
  at the same path with ``rshared`` propagation), else the kernel would not see them: the
  compose file sets ``none``.
- ``none``: a plain directory. Nothing bounds what the kernel writes (the local launcher's
  RLIMIT_FSIZE bounds one file); uploads are checked against ``disk_mb`` by the gateway.

Every method may block on a subprocess or the filesystem: they run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from gateway import errors
from gateway.fswatch import FsWatch
from gateway.settings import Settings

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ws-[0-9a-f]{24}$")
# not noexec: packages installed in .packages carry native extensions (mmap PROT_EXEC)
_MOUNT_OPTIONS = "loop,nosuid,nodev"
_TOOL_TIMEOUT_S = 60.0
_CAP_SYS_ADMIN = 21
_TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # where mount and mkfs live, whatever PATH says


def quota_mode(settings: Settings) -> str:
    """``loop`` or ``none``: what ``workspace_quota`` means on this host for this process."""
    if settings.workspace_quota != "auto":
        return settings.workspace_quota
    tools = all(shutil.which(t, path=_TOOL_PATH) for t in ("mount", "umount", "mkfs.ext4"))
    return "loop" if tools and _can_mount() else "none"


def _can_mount() -> bool:
    """Root with CAP_SYS_ADMIN (not so in an unprivileged container)."""
    if os.geteuid() != 0:
        return False
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << _CAP_SYS_ADMIN))
    except (OSError, ValueError):
        pass
    return False


def _run(*argv: str) -> None:
    """Run a tool; raises OSError with its message when it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, timeout=_TOOL_TIMEOUT_S,
                              env={"PATH": _TOOL_PATH, "LANG": "C"})
    except (subprocess.SubprocessError, OSError) as exc:
        raise OSError(f"{argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise OSError(f"{argv[0]} failed: {done.stderr.decode(errors='replace').strip()}")


class Volumes:
    def __init__(self, settings: Settings, owner: tuple[int, int] | None,
                 dir_mode: int = 0o700) -> None:
        """``owner``: (uid, gid) the workspace root is given to (the sandbox's user), or None
        for the gateway's own; ``dir_mode``: the root's mode (the launcher says which)."""
        self._settings = settings
        self.root = settings.work_dir / settings.instance_id
        self.mode = quota_mode(settings)
        self.owner = owner
        self.dir_mode = dir_mode
        self._watch = FsWatch()
        if self.mode == "none":
            log.warning("workspace quota off (workspace_quota=%s, euid=%d): disk_mb is not "
                        "enforced on what kernels write", settings.workspace_quota, os.geteuid())

    @staticmethod
    def is_workspace(path: str) -> bool:
        """Whether ``path`` looks like a workspace this module made (on any replica)."""
        return bool(_NAME.match(Path(path).name)) and Path(path).is_absolute()

    # ------------------------------------------------------------------ create / remove
    async def create(self, disk_mb: int | None) -> str:
        """A new, empty workspace bounded to ``disk_mb``; returns its path. Raises
        WorkspaceFull when the host cannot hold it, KernelStartFailed if it cannot be made."""
        path = self.root / f"ws-{secrets.token_hex(12)}"
        made = asyncio.ensure_future(asyncio.to_thread(self._create, path, disk_mb))
        try:
            await asyncio.shield(made)
        except asyncio.CancelledError:  # the thread goes on: undo what it made, then stop
            with contextlib.suppress(Exception):
                await made
            await asyncio.to_thread(self._remove, path)
            raise
        except OSError as exc:
            await asyncio.to_thread(self._remove, path)
            if exc.errno is not None and exc.errno in (28, 122):  # ENOSPC, EDQUOT
                raise errors.WorkspaceFull(f"no room on the host for a workspace: {exc}") \
                    from exc
            raise errors.KernelStartFailed(f"could not create the workspace: {exc}") from exc
        self._watch.changes(str(path))  # watched from the start: its first cell is seen too
        return str(path)

    def _create(self, path: Path, disk_mb: int | None) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
        if self.mode == "loop" and disk_mb:
            image = self._image(path)
            with open(image, "xb") as fh:
                size = disk_mb * 1024 * 1024
                if self._settings.workspace_preallocate:
                    os.posix_fallocate(fh.fileno(), 0, size)
                else:
                    fh.truncate(size)
            _run("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E",
                 "root_owner=0:0", str(image))
            self._mount(path)
            (path / "lost+found").rmdir()
        if self.owner is not None:
            os.chown(path, *self.owner)
        os.chmod(path, self.dir_mode)

    @staticmethod
    def _image(path: Path) -> Path:
        return path.with_name(path.name + ".img")

    def _mount(self, path: Path) -> None:
        _run("mount", "-t", "ext4", "-o", _MOUNT_OPTIONS, str(self._image(path)), str(path))

    async def ensure(self, path: str) -> bool:
        """Make sure the workspace at ``path`` is there (mounted again after a host reboot,
        checked first); False if it is gone (its directory was removed from the host).
        Raises KernelStartFailed when it cannot be mounted."""
        try:
            return await asyncio.to_thread(self._ensure, Path(path))
        except OSError as exc:
            raise errors.KernelStartFailed(f"the session's workspace is unusable: {exc}") \
                from exc

    def _ensure(self, path: Path) -> bool:
        image = self._image(path)
        if image.exists() and not os.path.ismount(path):
            path.mkdir(mode=0o700, exist_ok=True)
            _run("e2fsck", "-p", str(image))
            self._mount(path)
            return True
        return image.exists() or path.is_dir()

    async def remove(self, path: str) -> None:
        """Delete a workspace and its image (idempotent; never raises)."""
        if not self.is_workspace(path):
            log.warning("not removing %s: not a workspace path", path)
            return
        self._watch.forget(path)
        await asyncio.to_thread(self._remove, Path(path))

    def _remove(self, path: Path) -> None:
        if os.path.ismount(path):
            try:  # lazy: a process still inside does not keep the mount (nor the space) long
                _run("umount", "--lazy", str(path))
            except OSError as exc:
                log.warning("could not unmount workspace %s: %s", path.name, exc)
                return
        shutil.rmtree(path, ignore_errors=True)  # fd-based: safe from planted symlinks
        with contextlib.suppress(FileNotFoundError):
            self._image(path).unlink()

    async def collect(self, keep: set[str]) -> int:
        """Remove this instance's workspaces that no session (``keep``: paths) uses: those of
        sessions that ended while no gateway ran, and of pooled kernels. Returns how many."""
        return await asyncio.to_thread(self._collect, keep)

    def _collect(self, keep: set[str]) -> int:
        if not self.root.is_dir():
            return 0
        removed = 0
        for entry in self.root.iterdir():
            name = entry.name.removesuffix(".img")
            path = self.root / name
            if _NAME.match(name) and str(path) not in keep and (entry == path or not
                                                                 path.exists()):
                self._remove(path)
                removed += 1
        return removed

    # ------------------------------------------------------------------ usage
    def changes(self, path: str) -> set[str] | None:
        """Relative paths of what was written in the workspace since the last call (None:
        cannot tell; see gateway/fswatch.py). Never blocks on the kernel's files."""
        return self._watch.changes(path)

    def close(self) -> None:
        self._watch.close()

    def capacity(self, path: str) -> tuple[int, int] | None:
        """(used, total) bytes of a quota'd workspace, or None without a quota."""
        if not os.path.ismount(path):
            return None
        st = os.statvfs(path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize
