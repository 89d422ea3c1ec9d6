"""Micro-measurements that explain a hop: what one fence renewal costs on this machine.

The address service renews its kernel fence (``vigil.address.fence.Fence.renew``, one
nftables transaction) on every heartbeat and, before adding an address, on the failover's
critical path. Measured in a scratch namespace with a veth pair, nothing else in it.

    python -m bench.micro fence --count 50      (inside a network namespace)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

from vigil.address.fence import Fence
from vigil.lab.netns import ip

from .stats import Summary


async def fence_renewals(count: int) -> list[float]:
    fence = Fence("eth0", table="vbench")
    vips = [IPv4Address("10.213.0.101")]
    await fence.install(vips)
    try:
        out = []
        for _ in range(count):
            t = time.perf_counter()
            await fence.renew(vips, 400, vips)
            out.append(time.perf_counter() - t)
        return out
    finally:
        await fence.remove()


def measure_fence(prefix: str, count: int) -> Summary:
    """Build a scratch namespace, time ``count`` renewals in it, remove it."""
    ns = f"{prefix}-scratch"
    ip("netns", "del", ns, check=False)
    ip("netns", "add", ns)
    try:
        ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1", ns=ns)
        ip("link", "set", "eth0", "up", ns=ns)
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "bench.micro", "fence",
             "--count", str(count)],
            capture_output=True, text=True, timeout=120, check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )  # fmt: skip
        return Summary.of(json.loads(proc.stdout))
    finally:
        ip("netns", "del", ns, check=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("what", choices=["fence"])
    p.add_argument("--count", type=int, default=50)
    args = p.parse_args()
    print(json.dumps(asyncio.run(fence_renewals(args.count))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
