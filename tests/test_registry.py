"""The Registry contract, run against both backends (memory, and a real redis-server)."""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.errors import RegistryUnavailable
from gateway.kernel import ConnectionInfo
from gateway.launchers import KernelHandle
from gateway.models import Limits, SessionState
from gateway.registry import Registry, SessionRecord
from gateway.registry.memory import MemoryRegistry
from gateway.registry.redis import RedisRegistry


@pytest.fixture(params=["memory", "redis"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    if request.param == "memory":
        reg: Registry = MemoryRegistry()
    else:
        url = request.getfixturevalue("redis_url")
        reg = RedisRegistry(url, f"test-{secrets.token_hex(4)}:", 5.0)
    yield reg
    await reg.close()


def record(owner: str, sid: str, generation: int = 1) -> SessionRecord:
    now = datetime.now(UTC)
    handle = KernelHandle(launcher="docker", kernel_id="k", session_id=sid, ref="abc",
                          socket_dir="/tmp/x", connection=ConnectionInfo.for_ipc("/tmp/x/k"))
    return SessionRecord(session_id=sid, owner=owner, kernel_id="k-" + sid, gateway_id="gw-a",
                         state=SessionState.idle, generation=generation, created_at=now,
                         last_activity=now, execution_count=3, limits=Limits(memory_mb=256),
                         handle=handle)


async def test_put_get_round_trips_the_whole_record(registry: Registry) -> None:
    rec = record("alice", "s1")
    await registry.put(rec)
    got = await registry.get("alice", "s1")
    assert got == rec
    assert got is not None and got.handle is not None
    assert got.handle.connection.key == rec.handle.connection.key  # type: ignore[union-attr]


async def test_records_are_namespaced_by_owner(registry: Registry) -> None:
    await registry.put(record("alice", "s1"))
    await registry.put(record("bob", "s1", generation=5))
    assert (await registry.get("bob", "s1")).generation == 5  # type: ignore[union-attr]
    assert [r.owner for r in await registry.list("alice")] == ["alice"]
    assert {r.owner for r in await registry.list()} == {"alice", "bob"}


@pytest.mark.parametrize("owner", ["alice:ci", "alice:", "alice%3Aci", "alice/ci"])
async def test_no_owner_sees_another_whose_name_starts_with_its_own(registry: Registry,
                                                                    owner: str) -> None:
    await registry.put(record(owner, "s1"))
    await registry.put(record("alice", "s2"))
    assert [r.session_id for r in await registry.list("alice")] == ["s2"]
    assert [r.session_id for r in await registry.list(owner)] == ["s1"]
    # a session id that spells the rest of the other owner's key finds nothing either
    assert await registry.get("alice", owner.removeprefix("alice") + "s1") is None
    assert await registry.get("alice", owner.removeprefix("alice:") + ":s1") is None
    await registry.claim([(owner, "s1")], "gw-a", 5.0)
    assert (await registry.lookup("alice", owner.removeprefix("alice") + "s1"))[1] is None


async def test_put_replaces_and_delete_removes(registry: Registry) -> None:
    await registry.put(record("alice", "s1"))
    await registry.put(record("alice", "s1", generation=2))
    assert len(await registry.list("alice")) == 1
    await registry.delete("alice", "s1")
    assert await registry.get("alice", "s1") is None
    assert await registry.list() == []
    await registry.delete("alice", "s1")  # idempotent


async def test_ping_reports_unreachable_redis() -> None:
    from tests.conftest import free_port

    reg = RedisRegistry(f"redis://127.0.0.1:{free_port()}/0", "x:", 0.5)
    with pytest.raises(RegistryUnavailable):
        await reg.ping()
    await reg.close()


async def test_a_lease_has_one_holder_until_it_expires(registry: Registry) -> None:
    key = ("alice", "s1")
    assert (await registry.lookup(*key))[1] is None
    assert await registry.claim([key], "gw-a", 0.3) == [True]
    assert (await registry.lookup(*key))[1] == "gw-a"
    assert await registry.claim([key], "gw-b", 5.0) == [False]  # held: not B's to take
    assert await registry.claim([key], "gw-a", 0.3) == [True]  # renewal
    await asyncio.sleep(0.5)  # not renewed: expired
    assert (await registry.lookup(*key))[1] is None
    assert await registry.claim([key], "gw-b", 5.0) == [True]
    assert (await registry.lookup(*key))[1] == "gw-b"


async def test_claim_answers_per_key_in_order(registry: Registry) -> None:
    await registry.claim([("alice", "taken")], "gw-b", 5.0)
    keys = [("alice", "free"), ("alice", "taken"), ("bob", "taken")]
    assert await registry.claim(keys, "gw-a", 5.0) == [True, False, True]
    assert await registry.claim([], "gw-a", 5.0) == []


async def test_lookup_gives_record_and_holder_together(registry: Registry) -> None:
    assert await registry.lookup("alice", "s1") == (None, None)
    await registry.claim([("alice", "s1")], "gw-a", 5.0)
    assert await registry.lookup("alice", "s1") == (None, "gw-a")  # being created
    rec = record("alice", "s1")
    await registry.put(rec)
    assert await registry.lookup("alice", "s1") == (rec, "gw-a")
    await registry.release("alice", "s1", "gw-a")
    assert await registry.lookup("alice", "s1") == (rec, None)  # its holder stopped


async def test_release_only_by_the_holder(registry: Registry) -> None:
    key = ("alice", "s1")
    await registry.claim([key], "gw-a", 5.0)
    await registry.release(*key, "gw-b")
    assert (await registry.lookup(*key))[1] == "gw-a"
    await registry.release(*key, "gw-a")
    assert (await registry.lookup(*key))[1] is None
    await registry.release(*key, "gw-a")  # idempotent


# ------------------------------------------------------------------ password + TLS
@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A redis-server that speaks only TLS (certificate from a CA made here) and wants a
    password: {"url", "password", "ca_file"}."""
    import shutil

    from tests.conftest import free_port, unavailable, wait_until

    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed")
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=exec-gateway test CA", "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    port, password = free_port(), secrets.token_urlsafe(16)
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.pem", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no",
         "--requirepass", password, "--save", "", "--appendonly", "no", "--dir", str(d)],
        cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: socket_open(port), 10)
    yield {"url": f"rediss://127.0.0.1:{port}/0", "password": password,
           "ca_file": str(d / "ca.pem")}
    proc.terminate()
    proc.wait(10)


def socket_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


async def test_redis_over_tls_with_a_password(tls_redis: dict[str, str]) -> None:
    reg = RedisRegistry(tls_redis["url"], "tls:", 5.0, password=tls_redis["password"],
                        ca_file=tls_redis["ca_file"])
    await reg.ping()
    rec = record("alice", "s1")
    await reg.put(rec)
    assert await reg.get("alice", "s1") == rec
    assert await reg.claim([("alice", "s1")], "gw-a", 5.0) == [True]
    await reg.close()


@pytest.mark.parametrize("wrong", ["no password", "bad password", "untrusted certificate"])
async def test_redis_refusals_are_registry_unavailable(tls_redis: dict[str, str],
                                                       wrong: str) -> None:
    options: dict[str, Any] = {"password": tls_redis["password"], "ca_file": tls_redis["ca_file"]}
    if wrong == "no password":
        del options["password"]
    elif wrong == "bad password":
        options["password"] = "not-it"
    else:
        del options["ca_file"]  # the system's CAs never signed this server
    reg = RedisRegistry(tls_redis["url"], "tls:", 2.0, **options)
    with pytest.raises(RegistryUnavailable):
        await reg.ping()
    with pytest.raises(RegistryUnavailable):
        await reg.get("alice", "s1")
    await reg.close()


def test_gateway_uses_redis_over_tls(gateway_factory: Any, tls_redis: dict[str, str]) -> None:
    gw = gateway_factory(registry_url=tls_redis["url"], redis_password=tls_redis["password"],
                         redis_ca_file=tls_redis["ca_file"], redis_key_prefix="tlsgw:",
                         pool_size=0)
    ready = gw.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["registry"] == "ok", ready.text
    assert gw.execute("over-tls", "1 + 1")["outputs"][0]["data"]["text/plain"] == "2"
    assert tls_redis["password"] not in gw.log()


async def test_memory_registry_keeps_no_expired_lease_after_release() -> None:
    reg = MemoryRegistry()
    await reg.claim([("alice", f"s{n}") for n in range(100)], "gw-a", 0.05)
    await asyncio.sleep(0.1)
    for n in range(100):
        await reg.release("alice", f"s{n}", "gw-a")  # expired meanwhile: still dropped
    assert not reg._leases
