"""FsWatch: what was written on a workspace's filesystem since the last look (fanotify).

Finding a cell's ``files_changed`` by walking the whole workspace (``Workspace.scan``) costs a
stat per file: ~15-100 ms for 10,000 files on a busy 2-core VM. fanotify says which files
changed instead. A loop-mounted workspace is a filesystem of its own, so one
``FAN_MARK_FILESYSTEM`` mark sees every write, create, rename and attribute change in it, from
the host or from inside a container (the same superblock). Events report the parent
directory's file handle and the entry's name (``FAN_REPORT_DFID_NAME``): the kernel opens no
file for the gateway (a FIFO the kernel planted is never opened here either). A directory
handle is turned back into a path with ``open_by_handle_at`` (``O_PATH``) and
``/proc/self/fd``; those paths are only hints, each is then resolved safely by ``Workspace``.

Needs CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH (the gateway as root, which the loop quota needs
anyway), Linux >= 5.9, and a workspace that is a mount point; elsewhere, and when the event
queue overflowed or too much changed, ``changes`` answers None (cannot tell) and callers walk.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

FAN_CLOEXEC, FAN_NONBLOCK = 0x1, 0x2
FAN_REPORT_DFID_NAME = 0x400 | 0x800  # FAN_REPORT_DIR_FID | FAN_REPORT_NAME
FAN_MARK_ADD, FAN_MARK_FILESYSTEM = 0x1, 0x100
FAN_MODIFY, FAN_ATTRIB, FAN_MOVED_TO, FAN_CREATE = 0x2, 0x4, 0x80, 0x100
FAN_Q_OVERFLOW, FAN_ONDIR = 0x4000, 0x40000000
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
_MASK = FAN_MODIFY | FAN_ATTRIB | FAN_MOVED_TO | FAN_CREATE | FAN_ONDIR
_READ = 256 * 1024
_META = struct.Struct("=IBBHQii")  # struct fanotify_event_metadata
_INFO = struct.Struct("=BBH")  # struct fanotify_event_info_header
_HANDLE = struct.Struct("=Ii")  # struct file_handle: handle_bytes, handle_type
MAX_CHANGES = 5000  # more changed names than this: a walk is as cheap

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]


@dataclass
class _Watch:
    fanotify_fd: int
    root_fd: int  # the workspace's root: the mount's fd for open_by_handle_at
    root: str


class FsWatch:
    def __init__(self) -> None:
        self._watches: dict[str, _Watch] = {}  # workspace path → its watch
        self._unsupported = False

    def changes(self, path: str) -> set[str] | None:
        """The paths (relative to the workspace at ``path``) of entries written, created,
        renamed or changed since the last call: empty when nothing was; None when that
        cannot be told (no watch yet: the first call sets one up; an overflow; too many)."""
        watch = self._watches.get(path)
        if watch is None:
            self._watch(path)
            return None
        entries: set[tuple[bytes, bytes]] = set()
        overflow = False
        while True:
            try:
                data = os.read(watch.fanotify_fd, _READ)
            except BlockingIOError:
                break
            except OSError:
                self.forget(path)
                return None
            if not data:
                break
            overflow = _parse(data, entries) or overflow
        if overflow or len(entries) > MAX_CHANGES:
            return None
        return _resolve(watch, entries)

    def _watch(self, path: str) -> None:
        if self._unsupported or not os.path.ismount(path):
            return
        fd = _libc.fanotify_init(FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME, os.O_RDONLY)
        if fd < 0:
            self._give_up(ctypes.get_errno())
            return
        if _libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, _MASK, -1,
                               path.encode()) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            self._give_up(err)
            return
        root_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._watches[path] = _Watch(fd, root_fd, os.path.realpath(path))

    def _give_up(self, err: int) -> None:
        if err in (errno.EPERM, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            self._unsupported = True
            log.info("fanotify unavailable (%s): every cell that may have written files walks "
                     "its workspace", os.strerror(err))

    def forget(self, path: str) -> None:
        """Stop watching ``path`` (its workspace is removed)."""
        watch = self._watches.pop(path, None)
        if watch is not None:
            os.close(watch.fanotify_fd)
            os.close(watch.root_fd)

    def close(self) -> None:
        for path in list(self._watches):
            self.forget(path)


def _parse(data: bytes, entries: set[tuple[bytes, bytes]]) -> bool:
    """Add (directory handle, name) of each event in ``data``; True if the queue overflowed."""
    overflow = False
    off = 0
    while off + _META.size <= len(data):
        event_len, _, _, metadata_len, mask, _, _ = _META.unpack_from(data, off)
        if event_len < _META.size:
            return True  # malformed: cannot tell
        overflow = overflow or bool(mask & FAN_Q_OVERFLOW)
        info = off + metadata_len
        while info + _INFO.size <= off + event_len:
            info_type, _, info_len = _INFO.unpack_from(data, info)
            if info_len < _INFO.size:
                return True
            if info_type == FAN_EVENT_INFO_TYPE_DFID_NAME:
                handle = info + _INFO.size + 8  # after the header and the fsid
                size, _ = _HANDLE.unpack_from(data, handle)
                name_at = handle + _HANDLE.size + size
                name_end = data.find(b"\0", name_at, info + info_len)
                name = data[name_at:name_end if name_end >= 0 else info + info_len]
                entries.add((data[handle:name_at], name))
            info += info_len
        off += event_len
    return overflow


def _resolve(watch: _Watch, entries: set[tuple[bytes, bytes]]) -> set[str]:
    """Relative paths of (directory handle, name) entries; a directory that is gone (or not
    in the workspace) drops its entries: nothing of it can be listed now."""
    dirs: dict[bytes, str | None] = {}
    found: set[str] = set()
    for handle, name in entries:
        if handle not in dirs:
            dirs[handle] = _dir_path(watch, handle)
        parent = dirs[handle]
        if parent is None or name in (b"", b"."):
            continue
        rel = os.fsdecode(name) if not parent else f"{parent}/{os.fsdecode(name)}"
        found.add(rel)
    return found


def _dir_path(watch: _Watch, handle: bytes) -> str | None:
    fd = _libc.open_by_handle_at(watch.root_fd, handle, os.O_PATH | os.O_CLOEXEC)
    if fd < 0:
        return None
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    finally:
        os.close(fd)
    if target == watch.root:
        return ""
    if target.startswith(watch.root + "/") and not target.endswith(" (deleted)"):
        return target[len(watch.root) + 1:]
    return None
