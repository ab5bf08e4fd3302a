"""Workspace (safe file operations) and MultipartReader, without a gateway: paths, planted
symlinks, FIFOs, devices, a swap between check and use, uploads, and streaming multipart."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from gateway import errors
from gateway.multipart import END, MultipartReader, Part, boundary_of
from gateway.workspace import Workspace, split_path


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "secret").write_text("host secret")
    return Workspace(str(root))


@pytest.mark.parametrize("bad", [
    "/etc/passwd", "../x", "a/../../x", "a/./b", ".", "..", "a//b", "a/", "nul\x00x",
    "tab\tx", "del\x7fx", "x" * 256, "/".join(["abcdefgh"] * 120), "",
])
def test_bad_paths_are_refused(bad: str) -> None:
    with pytest.raises(errors.InvalidPath):
        split_path(bad)


def test_good_paths_split_into_segments() -> None:
    assert split_path("data/sales.csv") == ["data", "sales.csv"]
    assert split_path("ünïcode dir/ä b.txt") == ["ünïcode dir", "ä b.txt"]
    assert split_path("", root_ok=True) == []
    assert split_path("x" * 255) == ["x" * 255]


def read_all(ws: Workspace, path: str) -> bytes:
    fd, _ = ws.open_read(path)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def upload(ws: Workspace, path: str, data: bytes) -> tuple[str, bool]:
    ws.check_target(path)
    up = ws.upload()
    up.write(data)
    info, created = up.commit(path)
    return info.path, created


def test_upload_creates_parents_replaces_atomically_and_reads_back(ws: Workspace) -> None:
    assert upload(ws, "a/b/c.bin", b"one") == ("a/b/c.bin", True)
    assert upload(ws, "a/b/c.bin", b"two") == ("a/b/c.bin", False)
    assert read_all(ws, "a/b/c.bin") == b"two"
    files, truncated = ws.list("", recursive=True, limit=100)
    assert [(f.path, f.type, f.size) for f in files] == [
        ("a", "directory", None), ("a/b", "directory", None), ("a/b/c.bin", "file", 3)]
    assert not truncated
    assert not [n for n in os.listdir(ws.root) if n.startswith(".egw")]  # no temp file left


def test_planted_symlinks_are_never_followed(ws: Workspace, tmp_path: Path) -> None:
    root = Path(ws.root)
    (root / "real").mkdir()
    (root / "real" / "f").write_text("mine")
    os.symlink(tmp_path / "secret", root / "abs")
    os.symlink("../secret", root / "rel")
    os.symlink(tmp_path, root / "dirlink")
    os.symlink("real", root / "reldirlink")
    for path in ("abs", "rel"):
        with pytest.raises(errors.NotAFile):
            read_all(ws, path)
    for path in ("dirlink/secret", "reldirlink/f"):
        with pytest.raises(errors.NotADirectory):
            read_all(ws, path)
        with pytest.raises(errors.NotADirectory):
            upload(ws, path, b"evil")
    with pytest.raises(errors.NotADirectory):
        ws.list("dirlink", recursive=False, limit=10)
    names = [f.path for f in ws.list("", recursive=True, limit=100)[0]]
    assert names == ["real", "real/f"]  # symlinks are not listed, nor entered
    ws.delete("dirlink", recursive=True)  # removes the link, not what it points to
    assert (tmp_path / "secret").read_text() == "host secret"
    # a PUT onto a symlink replaces the link; the target is untouched
    upload(ws, "abs", b"new")
    assert (tmp_path / "secret").read_text() == "host secret"
    assert read_all(ws, "abs") == b"new"


def test_fifo_socket_and_device_are_never_opened(ws: Workspace) -> None:
    root = Path(ws.root)
    os.mkfifo(root / "pipe")
    started = time.monotonic()
    with pytest.raises(errors.NotAFile):
        read_all(ws, "pipe")  # would block forever if it were opened for reading
    assert time.monotonic() - started < 1
    if os.geteuid() == 0:
        os.mknod(root / "null", 0o600 | 0o020000, os.makedev(1, 3))
        with pytest.raises(errors.NotAFile):
            read_all(ws, "null")
    assert ws.list("", recursive=False, limit=10)[0] == []


def test_a_directory_swapped_for_a_symlink_never_leaks(ws: Workspace, tmp_path: Path) -> None:
    """A thread swaps ``d`` between a directory holding ``secret`` and a symlink to the
    directory holding the host's ``secret``, as fast as it can, while reads go on."""
    root = Path(ws.root)
    (root / "safe").mkdir()
    (root / "safe" / "secret").write_text("workspace")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            with __import__("contextlib").suppress(OSError):
                os.symlink(tmp_path, root / "tmp-link")
                os.replace(root / "tmp-link", root / "d")  # d -> host
                os.rename(root / "d", root / "old")
                os.rename(root / "safe", root / "d")  # d is the real directory
                os.rename(root / "d", root / "safe")
                os.unlink(root / "old")

    swapper = threading.Thread(target=swap)
    swapper.start()
    seen: set[bytes] = set()
    try:
        for _ in range(3000):
            try:
                seen.add(read_all(ws, "d/secret"))
            except (errors.NotADirectory, errors.FileNotFound, errors.NotAFile):
                pass
    finally:
        stop.set()
        swapper.join()
    assert b"host secret" not in seen


def test_upload_beyond_a_full_filesystem_is_workspace_full(ws: Workspace) -> None:
    up = ws.upload()
    up._fd, real = os.open("/dev/full", os.O_WRONLY), up._fd  # ENOSPC on every write
    os.close(real)
    with pytest.raises(errors.WorkspaceFull):
        up.write(b"x")
    assert not [n for n in os.listdir(ws.root) if n.startswith(".egw")]


def test_delete_refuses_a_directory_without_recursive(ws: Workspace) -> None:
    upload(ws, "d/f", b"x")
    with pytest.raises(errors.NotAFile):
        ws.delete("d", recursive=False)
    ws.delete("d/f", recursive=False)
    ws.delete("d", recursive=True)
    with pytest.raises(errors.FileNotFound):
        ws.delete("d", recursive=True)


def test_scan_finds_what_changed_since_and_bounds_the_list(ws: Workspace) -> None:
    upload(ws, "old", b"x")
    since = time.clock_gettime_ns(5)
    time.sleep(0.02)
    for i in range(5):
        upload(ws, f"new/{i}", b"y" * 10)
    scan = ws.scan(since, limit=3, max_entries=1000)
    assert [f.path for f in scan.changed] == ["new/0", "new/1", "new/2"]
    assert scan.truncated and scan.used_bytes > 0


# ---------------------------------------------------------------------- multipart
BODY = (b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\""
        b"\r\nContent-Type: application/octet-stream\r\n\r\n" + bytes(range(256)) * 3 +
        b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\nin/dir"
        b"\r\n--XyZ--\r\nepilogue")


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 10_000])
def test_multipart_is_parsed_whatever_the_chunking(chunk: int) -> None:
    reader = MultipartReader(boundary_of('multipart/form-data; boundary="XyZ"'))
    events = []
    for i in range(0, len(BODY), chunk):
        events += reader.feed(BODY[i:i + chunk])
    reader.close()
    parts: list[tuple[Part, bytes]] = []
    for event in events:
        if isinstance(event, Part):
            parts.append((event, b""))
        elif event is not END:
            part, data = parts[-1]
            parts[-1] = (part, data + event)
    assert parts == [(Part("file", "a.bin"), bytes(range(256)) * 3),
                     (Part("path", None), b"in/dir")]


def test_multipart_that_ends_early_or_is_not_multipart_is_refused() -> None:
    reader = MultipartReader(b"XyZ")
    reader.feed(BODY[:100])
    with pytest.raises(errors.BadRequest):
        reader.close()
    with pytest.raises(errors.BadRequest):
        boundary_of("application/json")


def test_scan_paths_looks_only_at_the_hints_and_inside_moved_directories(ws: Workspace,
                                                                         tmp_path: Path) -> None:
    since = time.clock_gettime_ns(5)
    time.sleep(0.02)
    upload(ws, "a/new.txt", b"x")
    upload(ws, "moved/inner.txt", b"y")
    upload(ws, "unhinted.txt", b"z")
    os.symlink(tmp_path / "secret", Path(ws.root) / "link")
    scan = ws.scan_paths({"a/new.txt", "moved", "gone/x", "link", "a"}, since, limit=10,
                         max_entries=100)
    assert [f.path for f in scan.changed] == ["a/new.txt", "moved/inner.txt"]
    assert not scan.truncated
