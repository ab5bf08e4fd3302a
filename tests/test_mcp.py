"""End to end: exec-gateway-mcp driven by the mcp SDK's own client, over stdio and over streamable
HTTP, against a real gateway and real kernels."""

from __future__ import annotations

import base64
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.conftest import Gateway as GatewayProc
from tests.conftest import free_port, start_gateway, wait_until
from tests.test_client import PNG, SHOW_PNG

MCP = str(Path(sys.executable).parent / "exec-gateway-mcp")
TOOLS = {"execute_python", "list_sessions", "restart_session", "delete_session"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    gateway = start_gateway(tmp_path_factory.mktemp("gw"))
    yield gateway
    gateway.stop()
    shutil.rmtree(gateway.env["GATEWAY_RUNTIME_DIR"], ignore_errors=True)


def start_http_mcp(server: GatewayProc, log: Path, prefix: str
                   ) -> tuple[subprocess.Popen[bytes], str]:
    """``exec-gateway-mcp --transport http`` on a free port, once it listens: (process, URL)."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([MCP, "--transport", "http", "--port", str(port), "--url",
                                 server.url, f"--token={server.token}", "--session-prefix",
                                 prefix], stdout=out, stderr=subprocess.STDOUT)

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"exec-gateway-mcp exited:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_until(listening, 30)
    return proc, f"http://127.0.0.1:{port}/mcp"


@pytest.fixture(scope="module")
def http_mcp(server: GatewayProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_http_mcp(server, tmp_path_factory.mktemp("mcp") / "mcp.log", "mcphttp")
    yield url
    proc.terminate()
    proc.wait(30)


def sessions_named(server: GatewayProc, prefix: str) -> list[str]:
    return [s["id"] for s in server.http.get("/v1/sessions").json()["sessions"]
            if s["id"].startswith(prefix)]


def stdio(server: GatewayProc, prefix: str = "mcpstdio") -> StdioServerParameters:
    return StdioServerParameters(command=MCP, args=["--url", server.url, "--session-prefix",
                                                    prefix],
                                 env={"EXEC_GATEWAY_TOKEN": server.token})


@asynccontextmanager
async def connect(request: pytest.FixtureRequest, server: GatewayProc, transport: str,
                  ) -> AsyncIterator[Client]:
    target: Any = (stdio(server) if transport == "stdio"
                   else request.getfixturevalue("http_mcp"))
    mode = "legacy" if transport == "http-legacy" else "auto"
    async with Client(target, mode=mode) as client:
        yield client


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    return await client.call_tool(tool, arguments)


@pytest.mark.parametrize("transport", ["stdio", "http", "http-legacy"])
async def test_tools_state_images_and_tool_errors(
    request: pytest.FixtureRequest, server: GatewayProc, transport: str
) -> None:
    async with connect(request, server, transport) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        described = tools["execute_python"].description or ""
        assert "persist" in described and "timeout" in described
        assert tools["execute_python"].input_schema["required"] == ["code"]

        first = await call(client, "execute_python", code="x = 41\nprint('set')")
        assert not first.is_error and text_of(first) == "set"
        second = await call(client, "execute_python", code="x + 1")
        assert not second.is_error and text_of(second) == "Out: 42"  # state kept

        shown = await call(client, "execute_python", code=SHOW_PNG)
        images = [block for block in shown.content if block.type == "image"]
        assert len(images) == 1 and images[0].mime_type == "image/png"
        assert base64.b64decode(images[0].data) == PNG

        failed = await call(client, "execute_python", code="print('before')\n1 / 0")
        assert failed.is_error
        assert "before" in text_of(failed) and "ZeroDivisionError" in text_of(failed)
        assert "Traceback" in text_of(failed)


async def test_session_tools_list_restart_and_delete_named_sessions(
    request: pytest.FixtureRequest, server: GatewayProc
) -> None:
    named = f"mcp-named-{secrets.token_hex(3)}"
    async with connect(request, server, "stdio") as client:
        await call(client, "execute_python", code="y = 1", session_id=named)
        listing = text_of(await call(client, "list_sessions"))
        assert named in listing and "state=idle" in listing
        restarted = await call(client, "restart_session", session_id=named)
        assert not restarted.is_error and "generation 2" in text_of(restarted)
        after = await call(client, "execute_python", code="'y' in globals()", session_id=named)
        assert text_of(after) == "Out: False"
        slow = await call(client, "execute_python", code="import time; time.sleep(30)",
                          session_id=named, timeout_s=0.5)
        assert slow.is_error and "timeout" in text_of(slow)
        deleted = await call(client, "delete_session", session_id=named)
        assert not deleted.is_error
        assert named not in text_of(await call(client, "list_sessions"))
        bad = await call(client, "execute_python", code="1", session_id="not a valid id!")
        assert bad.is_error and "400" in text_of(bad)


async def test_each_connection_gets_its_own_default_session_deleted_at_the_end(
    server: GatewayProc,
) -> None:
    prefix = f"mcpconn{secrets.token_hex(2)}"
    async with Client(stdio(server, prefix)) as a, Client(stdio(server, prefix)) as b:
        await call(a, "execute_python", code="v = 'from a'")
        other = await call(b, "execute_python", code="'v' in globals()")
        assert text_of(other) == "Out: False"
        mine = await call(a, "execute_python", code="v")
        assert text_of(mine) == "Out: 'from a'"
        assert len(sessions_named(server, prefix)) == 2
    wait_until(lambda: not sessions_named(server, prefix), 30)


async def test_sigterm_stops_the_http_server_gracefully_and_deletes_its_default_sessions(
    server: GatewayProc, tmp_path: Path
) -> None:
    prefix = f"mcpterm{secrets.token_hex(2)}"
    proc, url = start_http_mcp(server, tmp_path / "mcp.log", prefix)
    try:
        async with Client(url) as client:
            await call(client, "execute_python", code="t = 1")
        assert len(sessions_named(server, prefix)) == 1
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not sessions_named(server, prefix)


async def test_http_mcp_sessions_are_apart_by_mcp_session_id(
    http_mcp: str, server: GatewayProc
) -> None:
    async with Client(http_mcp, mode="legacy") as a, Client(http_mcp, mode="legacy") as b:
        await call(a, "execute_python", code="w = 1")
        assert text_of(await call(b, "execute_python", code="'w' in globals()")) == "Out: False"
        assert text_of(await call(a, "execute_python", code="w")) == "Out: 1"
