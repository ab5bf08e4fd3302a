"""What the kernel itself costs per ``1+1``: stock ``ipykernel_launcher`` against the gateway's
tuned boot shim (``gateway/kernel_boot.py`` + ``kernel_tuning.py``), both started and read
raw with jupyter_client (``bench.raw``), in interleaved rounds. ``server_cpu_ms_per_call`` is
the kernel process's own CPU (all its threads) per call.

    .venv/bin/python -m bench.kernel_cost [--quick]   # prints JSON

Part of ``make bench`` too (``kernel_cost`` in the JSON, ratios ``kernel_*_shim_vs_stock``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from bench.config import BenchConfig, load
from bench.loops import interleaved_latency
from bench.procs import ProcessTracker
from bench.raw import RawKernel, RawTarget
from bench.stats import ratio

STOCK, SHIM = "stock", "shim"


async def kernel_cost(config: BenchConfig, tracker: ProcessTracker) -> dict[str, Any]:
    """Figures per kernel (``stock``, ``shim``) and their ratios."""
    targets = {STOCK: RawTarget(tracker), SHIM: RawTarget(tracker, lift_iopub_hwm=True)}
    kernels: dict[str, RawKernel] = {}
    try:
        for name, target in targets.items():
            kernels[name] = await target.start()
        sampled = await interleaved_latency(
            {name: (k, k.pid) for name, k in kernels.items()},
            config.iterations, config.rounds, config.warmup, config.loop_max_s)
    finally:
        for kernel in kernels.values():
            await kernel.close()
        for target in targets.values():
            target.close()
    out: dict[str, Any] = {name: s.figures() for name, s in sampled.items()}
    out["kernels"] = {STOCK: "python -m ipykernel_launcher",
                      SHIM: "python gateway/kernel_boot.py (kernel_tuning applied)"}
    stock, shim = out[STOCK], out[SHIM]
    ratios: dict[str, float | None] = {}
    for key in ("p50", "p90", "p99", "server_cpu_ms_per_call"):
        ratios[key] = ratio(shim.get(key), stock.get(key))
    out["ratios_shim_vs_stock"] = ratios
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.kernel_cost", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    tracker = ProcessTracker()
    try:
        print(json.dumps(asyncio.run(kernel_cost(load(args.quick), tracker)), indent=2))
    finally:
        tracker.kill_all()


if __name__ == "__main__":
    main()
