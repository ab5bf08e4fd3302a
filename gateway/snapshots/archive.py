"""Archive: a workspace directory to one tar file and back, on the host (blocking: call in a
thread). Packing runs only once the session's sandbox is stopped, reads through directory
file descriptors with O_NOFOLLOW (a symlink is stored as a link, never followed) and keeps
regular files, directories and symlinks only. Unpacking runs before a kernel exists in the
workspace, on a tar whose digest the registry vouched for, through tarfile's ``tar`` filter
(no absolute paths, no ``..``) with every entry owned by the sandbox's user."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from gateway import errors

SNAPSHOT_DIR = ".egw-snapshot"  # where the kernel leaves its namespace in the workspace
PACKAGES_DIR = ".packages"  # installed packages (the packages API), counted apart
_SKIPPED_AT_ROOT = {"lost+found"}  # the ext4 image's own directory
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def workspace_bytes(root: str) -> int:
    """Bytes of the regular files under ``root`` (symlinks not followed)."""
    total = 0
    for top, dirs, files in os.walk(root, followlinks=False):
        if top == root:
            dirs[:] = [d for d in dirs if d not in _SKIPPED_AT_ROOT]
        for name in files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


@dataclass(frozen=True)
class Packed:
    bytes: int
    files: int  # regular files outside .packages and the kernel's snapshot directory
    packages: int  # .dist-info directories under .packages


def pack(root: str | None, dest: Path, max_bytes: int) -> Packed:
    """Write ``root``'s tree (none: an empty tar) to the tar ``dest``. Raises
    SnapshotTooLarge, OSError."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        if root is not None:
            fd = os.open(root, _DIR_FLAGS)
            try:
                _add_dir(tar, fd, "", max_bytes)
            finally:
                os.close(fd)
        files, packages = _count(tar.getmembers())
    return Packed(dest.stat().st_size, files, packages)


def _count(members: list[tarfile.TarInfo]) -> tuple[int, int]:
    files = packages = 0
    for member in members:
        top = member.name.split("/", 1)[0]
        if top == PACKAGES_DIR:
            packages += member.isdir() and member.name.endswith(".dist-info")
        elif top != SNAPSHOT_DIR:
            files += member.isfile()
    return files, packages


def _add_dir(tar: tarfile.TarFile, dir_fd: int, prefix: str, max_bytes: int) -> None:
    for name in sorted(os.listdir(dir_fd)):
        if not prefix and name in _SKIPPED_AT_ROOT:
            continue
        path = f"{prefix}{name}"
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        info = tarfile.TarInfo(path)
        info.mtime, info.mode = int(st.st_mtime), stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dir_fd)
            tar.addfile(info)
        elif stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _add_dir(tar, sub, path + "/", max_bytes)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):  # swapped since the stat: not ours to read
                    continue
                info.size = st.st_size
                tar.addfile(info, fh)
        # fifos, sockets, devices: nothing a workspace needs back
        if tar.offset > max_bytes:
            raise errors.SnapshotTooLarge(
                f"the snapshot is over snapshot_max_mb ({max_bytes // 2**20} MiB)")


def unpack(source: Path, root: str, owner: tuple[int, int] | None) -> tuple[int, int]:
    """Extract the tar ``source`` into the empty workspace ``root``; returns (files,
    packages): regular files outside .packages and the kernel's snapshot directory, and
    .dist-info directories under .packages. Raises tarfile.TarError, OSError."""
    uid, gid = owner if owner is not None else (os.getuid(), os.getgid())

    def owned(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        checked = tarfile.tar_filter(member, path)
        return checked.replace(uid=uid, gid=gid, uname="", gname="", deep=False)

    with tarfile.open(source, "r:") as tar:
        tar.extractall(root, filter=owned)
        return _count(tar.getmembers())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
