"""Workspace: file operations in a session's working directory that nothing the kernel planted
can fool.

The kernel controls what is in its workspace, so every path is resolved from a directory fd
of the workspace root one component at a time (``openat`` with ``O_NOFOLLOW|O_DIRECTORY``):
a symlink is never followed, in the middle of a path or at its end, and a directory swapped
for a symlink between two calls is refused at the moment of use, never checked beforehand.
A file to read is first opened ``O_PATH|O_NOFOLLOW`` (which opens nothing: no FIFO can block,
no device is touched), checked with ``fstat`` to be a regular file, and only then reopened
for reading through ``/proc/self/fd``: the same inode, no second lookup. Writes go to a fresh
temporary file (``O_CREAT|O_EXCL|O_NOFOLLOW``) renamed over the target, so a half-written
upload is never seen and a symlink at the target is replaced, not written through.

Every method blocks (system calls on a local filesystem): callers run them in a thread.
Errors are the API's: InvalidPath (400), FileNotFound (404), NotAFile / NotADirectory (409),
WorkspaceFull (507).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway import errors
from gateway.models import FileInfo

MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255
MAX_DEPTH = 64  # directory levels a listing or scan descends (each holds an fd while walked)
UPLOAD_PREFIX = ".egw-upload-"  # in-flight uploads: never listed, never reported as changed

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def split_path(path: str, *, root_ok: bool = False) -> list[str]:
    """The components of an API path (relative, ``/``-separated). Raises InvalidPath for an
    absolute path, ``.`` or ``..``, an empty segment, NUL or control characters, over 1024
    bytes in all or 255 in a segment; ``""`` (the workspace itself) only with ``root_ok``."""
    if path == "" and root_ok:
        return []
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise errors.InvalidPath("path must not contain NUL or control characters")
    if path.startswith("/"):
        raise errors.InvalidPath("path must be relative to the workspace")
    encoded = path.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_PATH_BYTES:
        raise errors.InvalidPath(f"path is longer than {MAX_PATH_BYTES} bytes")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise errors.InvalidPath("path must not have empty, '.' or '..' segments")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise errors.InvalidPath(f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    return parts


def file_info(path: str, st: os.stat_result) -> FileInfo:
    is_dir = stat.S_ISDIR(st.st_mode)
    return FileInfo(path=path, type="directory" if is_dir else "file",
                    size=None if is_dir else st.st_size,
                    modified_at=datetime.fromtimestamp(st.st_mtime, UTC))


def _listed(name: str, st: os.stat_result) -> bool:
    """Regular files and directories only: the API never serves anything else."""
    return not name.startswith(UPLOAD_PREFIX) and (
        stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))


@dataclass
class Scan:
    """One walk of the whole workspace (``Workspace.scan``)."""

    changed: list[FileInfo]
    truncated: bool  # more changed files than listed, or the walk stopped at its limit
    used_bytes: int  # space taken by the files walked


class Workspace:
    """A session's workspace at ``root`` (a host directory). ``owner`` (uid, gid): what the
    gateway's own files and directories are chowned to (the sandbox's user), or None."""

    def __init__(self, root: str, owner: tuple[int, int] | None = None) -> None:
        self.root = root
        self.owner = owner

    # ------------------------------------------------------------------ resolution
    def _open_root(self) -> int:
        try:
            return os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise errors.FileNotFound("the session has no workspace now") from exc

    def _open_dir(self, parts: list[str], *, create: bool = False) -> int:
        """A directory fd for ``parts`` below the root, component by component, never
        following a symlink; ``create`` makes missing directories. The caller closes it."""
        fd = self._open_root()
        for i, name in enumerate(parts):  # each step closes the fd it was given
            fd = self._step(fd, name, create=create, where="/".join(parts[:i + 1]))
        return fd

    def _step(self, fd: int, name: str, *, create: bool, where: str) -> int:
        """Open directory ``name`` in ``fd`` (closing ``fd``)."""
        try:
            for _ in range(2):
                try:
                    return os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o770, dir_fd=fd)
                        self._chown(name, fd)
            raise FileNotFoundError(errno.ENOENT, where)
        except FileNotFoundError as exc:
            raise errors.FileNotFound(f"no such directory: {where}") from exc
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise errors.NotADirectory(f"not a directory: {where}") from exc
            if exc.errno in _FULL:
                raise errors.WorkspaceFull("the session's workspace is full") from exc
            raise errors.FileNotFound(f"cannot open directory: {where}") from exc
        finally:
            os.close(fd)

    def _chown(self, name: str, dir_fd: int) -> None:
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=dir_fd, follow_symlinks=False)

    # ------------------------------------------------------------------ queries
    def stat(self, path: str) -> FileInfo:
        """What ``path`` is. Raises FileNotFound, NotADirectory (a parent), InvalidPath."""
        parts = split_path(path, root_ok=True)
        if not parts:
            with _closing(self._open_root()) as fd:
                return file_info("", os.fstat(fd))
        with _closing(self._open_dir(parts[:-1])) as dfd:
            try:
                st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError as exc:
                raise errors.FileNotFound(f"no such file: {path}") from exc
        if not _listed(parts[-1], st):
            raise errors.NotAFile(f"not a regular file or directory: {path}")
        return file_info(path, st)

    def list(self, path: str, *, recursive: bool, limit: int) -> tuple[list[FileInfo], bool]:
        """The entries of directory ``path`` (``""``: the workspace), sorted; at most
        ``limit`` (then truncated=True). Raises FileNotFound, NotADirectory."""
        fd = self._open_dir(split_path(path, root_ok=True))
        found: list[FileInfo] = []
        truncated = False
        with _closing(fd):
            for rel, st in _walk(fd, path, recursive=recursive):
                if len(found) >= limit:
                    truncated = True
                    break
                found.append(file_info(rel, st))
        found.sort(key=lambda f: f.path)
        return found, truncated

    def open_read(self, path: str) -> tuple[int, FileInfo]:
        """An fd open for reading the regular file at ``path``, and what it is; the caller
        closes it. Raises FileNotFound, NotAFile (a directory, symlink, FIFO, socket,
        device), NotADirectory."""
        parts = split_path(path)
        with _closing(self._open_dir(parts[:-1])) as dfd:
            try:
                pfd = os.open(parts[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except FileNotFoundError as exc:
                raise errors.FileNotFound(f"no such file: {path}") from exc
        with _closing(pfd):
            st = os.fstat(pfd)
            if not stat.S_ISREG(st.st_mode):
                raise errors.NotAFile(f"not a regular file: {path}")
            # the inode just checked, reopened: no lookup by name, so nothing to swap
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        again = os.fstat(fd)
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):  # cannot happen; be sure
            os.close(fd)
            raise errors.NotAFile(f"not a regular file: {path}")
        return fd, file_info(path, st)

    def scan(self, since_ns: int, *, limit: int, max_entries: int) -> Scan:
        """Regular files changed (mtime or ctime) at or after ``since_ns`` (CLOCK_REALTIME),
        the first ``limit`` by path, and the space used; the walk stops after
        ``max_entries`` entries (a workspace of millions of files costs bounded time)."""
        changed: list[FileInfo] = []
        used = walked = 0
        truncated = False
        with _closing(self._open_root()) as fd:
            for rel, st in _walk(fd, "", recursive=True):
                walked += 1
                used += st.st_blocks * 512
                if walked > max_entries:
                    truncated = True
                    break
                if stat.S_ISREG(st.st_mode) and max(st.st_mtime_ns, st.st_ctime_ns) >= since_ns:
                    changed.append(file_info(rel, st))
        changed.sort(key=lambda f: f.path)
        return Scan(changed[:limit], truncated or len(changed) > limit, used)

    def scan_paths(self, paths: set[str], since_ns: int, *, limit: int, max_entries: int
                   ) -> Scan:
        """``scan`` restricted to ``paths`` (hints of what changed, e.g. from fanotify) and
        what directories among them hold; gone or unreachable paths are skipped. The space
        used is not measured (0)."""
        changed: dict[str, FileInfo] = {}
        walked = 0
        truncated = False
        for path in sorted(paths):
            parts = path.split("/")
            try:
                with _closing(self._open_dir(parts[:-1])) as dfd:
                    st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
                    if not _listed(parts[-1], st):
                        continue
                    found = [(path, st)]
                    if stat.S_ISDIR(st.st_mode):  # moved in whole: what it holds changed too
                        with _closing(self._step(os.dup(dfd), parts[-1], create=False,
                                                 where=path)) as sub:
                            found += _walk(sub, path, recursive=True)
            except (errors.GatewayError, OSError):
                continue
            for rel, entry in found:
                walked += 1
                if walked > max_entries:
                    truncated = True
                    break
                if stat.S_ISREG(entry.st_mode) and \
                        max(entry.st_mtime_ns, entry.st_ctime_ns) >= since_ns:
                    changed[rel] = file_info(rel, entry)
        files = sorted(changed.values(), key=lambda f: f.path)
        return Scan(files[:limit], truncated or len(files) > limit, 0)

    # ------------------------------------------------------------------ changes
    def check_target(self, path: str) -> None:
        """Fail early for an upload to ``path`` (its parent directories are created).
        Raises InvalidPath, NotAFile (a directory is there), NotADirectory, WorkspaceFull."""
        parts = split_path(path)
        with _closing(self._open_dir(parts[:-1], create=True)) as dfd:
            _not_a_directory(dfd, parts[-1], path)

    def upload(self) -> Upload:
        """A new upload, staged in the workspace (its path is given at ``commit``)."""
        fd = self._open_root()
        try:
            return Upload(self, fd)
        except BaseException:
            os.close(fd)
            raise

    def delete(self, path: str, *, recursive: bool) -> FileInfo:
        """Remove a file (or a planted symlink, FIFO...), or a directory with ``recursive``
        (never following a symlink inside it); returns what it was. Raises FileNotFound,
        NotAFile (a directory without ``recursive``), NotADirectory."""
        parts = split_path(path)
        with _closing(self._open_dir(parts[:-1])) as dfd:
            name = parts[-1]
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=dfd)
                elif not recursive:
                    raise errors.NotAFile(f"{path} is a directory: delete it with recursive=true")
                else:
                    shutil.rmtree(name, dir_fd=dfd)  # fd-based: immune to symlink swaps
                return file_info(path, st)
            except FileNotFoundError as exc:
                raise errors.FileNotFound(f"no such file: {path}") from exc
            except IsADirectoryError as exc:  # swapped for a directory meanwhile
                raise errors.NotAFile(f"{path} is a directory") from exc


class Upload:
    """One file being written: a temporary file in the workspace's root, renamed into place
    by ``commit`` (same filesystem: atomic, and counted against the quota while written).
    Used from one thread at a time."""

    def __init__(self, workspace: Workspace, root_fd: int) -> None:
        self._workspace = workspace
        self._root_fd = root_fd
        self.size = 0
        self._tmp = f"{UPLOAD_PREFIX}{secrets.token_hex(8)}"
        try:
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                               | os.O_CLOEXEC, 0o660, dir_fd=root_fd)
        except OSError as exc:
            if exc.errno in _FULL:
                raise errors.WorkspaceFull("the session's workspace is full") from exc
            raise
        if workspace.owner is not None:
            os.fchown(self._fd, *workspace.owner)

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``. Raises WorkspaceFull (the upload is aborted then)."""
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self.size += n
        except OSError as exc:
            self.abort()
            if exc.errno in _FULL:
                raise errors.WorkspaceFull("the session's workspace is full") from exc
            raise

    def commit(self, path: str) -> tuple[FileInfo, bool]:
        """Put the file at ``path`` (parents created; atomically replacing a file, or a
        planted symlink, that was there); returns its info and whether it is new. Raises
        InvalidPath, NotAFile (a directory is there), NotADirectory; aborts on failure."""
        try:
            parts = split_path(path)
            with _closing(self._workspace._open_dir(parts[:-1], create=True)) as dfd:
                created = _not_a_directory(dfd, parts[-1], path)
                st = os.fstat(self._fd)
                try:
                    os.rename(self._tmp, parts[-1], src_dir_fd=self._root_fd, dst_dir_fd=dfd)
                except OSError as exc:
                    if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                        raise errors.NotAFile(f"{path} is a directory") from exc
                    if exc.errno == errno.ENOENT:  # the kernel removed the directory meanwhile
                        raise errors.FileNotFound(
                            f"{path}: its directory went away while the file was written"
                        ) from exc
                    if exc.errno == errno.ENOTDIR:
                        raise errors.NotADirectory(f"a parent of {path} is not a directory"
                                                   ) from exc
                    raise
        except BaseException:
            self.abort()
            raise
        self._close()
        return file_info(path, st), created

    def abort(self) -> None:
        """Drop the temporary file (idempotent)."""
        if self._root_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._tmp, dir_fd=self._root_fd)
        self._close()

    def _close(self) -> None:
        for fd in (self._fd, self._root_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._root_fd = -1


def _not_a_directory(dir_fd: int, name: str, path: str) -> bool:
    """Whether nothing is at ``name`` yet. Raises NotAFile if a directory is there."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    if stat.S_ISDIR(st.st_mode):
        raise errors.NotAFile(f"{path} is a directory")
    return False


def _walk(fd: int, prefix: str, *, recursive: bool, depth: int = 0
          ) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of what directory ``fd`` holds that the API lists, depth
    first, at most MAX_DEPTH levels down; subdirectories are opened with O_NOFOLLOW, so a
    symlink is never entered."""
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:  # removed meanwhile
                continue
            if not _listed(entry.name, st):
                continue
            rel = f"{prefix}/{entry.name}" if prefix else entry.name
            yield rel, st
            if recursive and stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
                try:
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                except OSError:  # swapped for something else or removed meanwhile: skip it
                    continue
                with _closing(sub):
                    yield from _walk(sub, rel, recursive=True, depth=depth + 1)


@contextlib.contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)
