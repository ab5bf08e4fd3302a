"""The Python client's overhead: ``s.run("1+1")`` p50 through exec_gateway_client (its REST path
and its WebSocket streaming path) against the bench's own raw HTTP client on the same gateway,
interleaved in the same run. Target: the SDK adds under 10% (ratio <= 1.10).

``python -m bench.client_sdk [--quick]`` runs it alone and prints JSON; ``client_sdk_section``
is the same as a section of ``make bench`` (skipped when the client is not installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from typing import Any

from bench.config import BenchConfig, load
from bench.gateway_rest import GatewayProcess, RestTarget, start_gateway, stop_gateway
from bench.procs import ProcessTracker
from bench.sections import gateway_settings, warm_latency
from bench.target import BenchError, ExecOutput, Target

SDK_REST, SDK_WS, RAW_HTTP = "sdk_rest", "sdk_ws", "gateway_rest"
TARGET_RATIO = 1.10


class SdkExecutor:
    """One session driven through the client: REST (no callbacks) or the WebSocket
    (``on_stdout`` given, so every run streams)."""

    def __init__(self, gw: Any, session: Any, stream: bool) -> None:
        self.gw, self.session, self.stream = gw, session, stream

    async def execute(self, code: str) -> ExecOutput:
        from exec_gateway_client import GatewayError

        try:
            if self.stream:
                result = await self.session.run(code, on_stdout=lambda text: None)
            else:
                result = await self.session.run(code)
        except GatewayError as exc:
            raise BenchError(f"sdk run: {exc}") from exc
        if result.status != "ok":
            raise BenchError(f"sdk run: status {result.status}")
        return ExecOutput(text=result.text or "", stdout=result.stdout)

    async def close(self) -> None:
        try:
            await self.session.delete()
        finally:
            await self.gw.aclose()


class SdkTarget:
    def __init__(self, gw: GatewayProcess, name: str, stream: bool) -> None:
        self.gw, self.name, self.stream = gw, name, stream
        self.server_pid: int | None = gw.pid

    async def start(self) -> SdkExecutor:
        from exec_gateway_client import AsyncGateway

        client = AsyncGateway(self.gw.url, token=self.gw.token)
        session = client.session(f"bench-sdk-{secrets.token_hex(6)}")
        await session.ensure()
        return SdkExecutor(client, session, self.stream)


def _ratios(figures: dict[str, Any]) -> dict[str, Any]:
    raw = figures.get(RAW_HTTP, {}).get("p50")
    out: dict[str, Any] = {}
    for name in (SDK_REST, SDK_WS):
        ours = figures.get(name, {}).get("p50")
        ratio = round(ours / raw, 3) if ours and raw else None
        out[f"p50_{name}_vs_raw_http"] = ratio
        out[f"p50_{name}_met"] = ratio is not None and ratio <= TARGET_RATIO
    return out


async def client_sdk_section(config: BenchConfig, results: dict[str, Any],
                             tracker: ProcessTracker) -> None:
    """Interleaved ``1+1`` latency: raw HTTP vs the SDK's REST and WebSocket paths."""
    section = results.setdefault("client_sdk", {})
    try:
        import exec_gateway_client  # noqa: F401
    except ImportError:
        section["skipped"] = "exec_gateway_client is not installed (pip install ./client)"
        return
    gw = await start_gateway(tracker, config.results_dir / "logs" / "gateway-sdk.log",
                             gateway_settings(config, 8))
    try:
        targets: list[Target] = [RestTarget(gw, RAW_HTTP), SdkTarget(gw, SDK_REST, False),
                                 SdkTarget(gw, SDK_WS, True)]
        figures = await warm_latency(config, targets)
    finally:
        await stop_gateway(tracker, gw)
    section.update(figures)
    section["ratios"] = _ratios(figures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client_sdk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    config = load(parser.parse_args(argv).quick)
    (config.results_dir / "logs").mkdir(parents=True, exist_ok=True)
    tracker = ProcessTracker()
    results: dict[str, Any] = {}
    try:
        asyncio.run(client_sdk_section(config, results, tracker))
    finally:
        tracker.kill_all()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
