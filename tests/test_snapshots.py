"""The snapshot stores against real backends: a directory, and an S3-compatible server
(s3s-fs on loopback). Same verbs, same answers."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway import errors
from gateway.settings import Settings
from gateway.snapshots import SnapshotStore, archive, make_store, new_key, owner_prefix
from gateway.snapshots.file import FileStore


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "file":
        settings = Settings(snapshot_url=(tmp_path / "store").as_uri())
    else:
        server = request.getfixturevalue("s3_server")
        settings = Settings(**server.settings(f"unit-{os.getpid()}-{time.monotonic_ns()}"))
    made = make_store(settings)
    assert made.name == request.param
    return made


async def test_a_stored_snapshot_comes_back_byte_for_byte(store: SnapshotStore,
                                                          tmp_path: Path) -> None:
    source = tmp_path / "snap.tar"
    source.write_bytes(os.urandom(300_000))
    key = new_key("alice", "s1")
    await store.put(key, source)
    dest = tmp_path / "back.tar"
    assert await store.get(key, dest, 1_000_000)
    assert dest.read_bytes() == source.read_bytes()
    await store.close()


async def test_get_refuses_a_snapshot_over_the_size_asked(store: SnapshotStore,
                                                         tmp_path: Path) -> None:
    source = tmp_path / "snap.tar"
    source.write_bytes(b"x" * 5000)
    key = new_key("alice", "s1")
    await store.put(key, source)
    assert not await store.get(key, tmp_path / "back.tar", 4999)
    assert not (tmp_path / "back.tar").exists()


async def test_a_deleted_or_unknown_snapshot_is_absent(store: SnapshotStore,
                                                      tmp_path: Path) -> None:
    source = tmp_path / "snap.tar"
    source.write_bytes(b"data")
    key = new_key("alice", "s1")
    await store.put(key, source)
    await store.delete(key)
    await store.delete(key)  # absent is fine
    assert not await store.get(key, tmp_path / "back.tar", 100)
    assert not await store.get(new_key("alice", "never"), tmp_path / "back.tar", 100)


async def test_keys_are_namespaced_by_a_hash_of_the_api_key(store: SnapshotStore) -> None:
    a, b = new_key("alice", "s1"), new_key("bob", "s1")
    assert a.split("/")[0] == owner_prefix("alice") != owner_prefix("bob") == b.split("/")[0]
    assert "alice" not in a
    assert a != new_key("alice", "s1")  # each hibernation writes a key of its own


async def test_older_than_lists_only_snapshots_written_before_the_cutoff(
        store: SnapshotStore, tmp_path: Path) -> None:
    source = tmp_path / "snap.tar"
    source.write_bytes(b"data")
    key = new_key("alice", "s1")
    await store.put(key, source)
    assert key in await store.older_than(datetime.now(UTC) + timedelta(seconds=5))
    assert key not in await store.older_than(datetime.now(UTC) - timedelta(hours=1))


async def test_an_unreachable_s3_store_is_a_typed_error(tmp_path: Path) -> None:
    settings = Settings(snapshot_url="s3://bucket/p", snapshot_timeout_s=3,
                        snapshot_s3_endpoint_url="http://127.0.0.1:9",
                        snapshot_s3_access_key_id="k", snapshot_s3_secret_access_key="s",
                        snapshot_s3_region="us-east-1")
    store = make_store(settings)
    source = tmp_path / "snap.tar"
    source.write_bytes(b"data")
    with pytest.raises(errors.SnapshotStoreUnavailable):
        await store.put(new_key("alice", "s1"), source)
    await store.close()


def test_snapshot_url_must_name_a_file_path_or_a_bucket() -> None:
    with pytest.raises(ValueError):
        Settings(snapshot_url="ftp://x/y")
    with pytest.raises(ValueError):
        Settings(snapshot_url="file://relative")
    assert Settings(snapshot_url="s3://b").snapshot_url == "s3://b"


def test_the_default_store_is_a_directory_under_the_state_dir(tmp_path: Path) -> None:
    store = make_store(Settings(state_dir=tmp_path))
    assert store.name == "file"
    assert isinstance(store, FileStore) and store.root == tmp_path / "snapshots"
    asyncio.run(store.close())


# ------------------------------------------------------------------ archive
def test_pack_keeps_files_dirs_and_symlinks_as_links_and_counts_packages(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "a.txt").write_text("hello")
    (ws / ".packages" / "six-1.17.0.dist-info").mkdir(parents=True)
    (ws / ".packages" / "six.py").write_text("")
    (ws / "lost+found").mkdir()
    secret = tmp_path / "secret"
    secret.write_text("gateway-only")
    (ws / "link").symlink_to(secret)
    os.mkfifo(ws / "fifo")
    packed = archive.pack(str(ws), tmp_path / "s.tar", 10_000_000)
    assert (packed.files, packed.packages) == (1, 1)
    with tarfile.open(tmp_path / "s.tar") as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert names["link"].issym() and names["link"].linkname == str(secret)
    assert "fifo" not in names and "lost+found" not in names
    out = tmp_path / "out"
    out.mkdir()
    assert archive.unpack(tmp_path / "s.tar", str(out), None) == (1, 1)
    assert (out / "sub" / "a.txt").read_text() == "hello"
    assert os.readlink(out / "link") == str(secret)  # a link again, never the secret's bytes


def test_pack_stops_over_the_cap(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "big").write_bytes(b"x" * 200_000)
    with pytest.raises(errors.SnapshotTooLarge):
        archive.pack(str(ws), tmp_path / "s.tar", 100_000)


def test_unpack_refuses_a_member_outside_the_workspace(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(tarfile.TarError):
        archive.unpack(evil, str(out), None)
    assert not (tmp_path / "escaped").exists()
