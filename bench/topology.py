"""Node-loss failover on one NATS server vs three (R3), with and without a control-plane fault.

``python -m bench.topology [--rounds N]`` (root): for each topology, one lab of two groups on
three nodes; each round kills the node that serves web1 (``Lab.kill``, the fault time taken
just before it), measures until the client in the client namespace is served by another node,
revives the node and waits until it is up again. Odd rounds first hold one NATS server down
(three-server lab only) and kill membership-1 (restarted by its keeper). Prints one line per
round and a summary (median and max per topology and fault).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time

from vigil.lab.lab import Lab, wait_for
from vigil.lab.specs import generated

TARGET = "10.213.0.101:8080"


class Probe:
    """``vigil.lab.probe`` in the client namespace: (time, served-by node) of each answer."""

    def __init__(self, prefix: str) -> None:
        self.answers: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", f"{prefix}-client", sys.executable, "-m", "vigil.lab.probe",
             "--target", TARGET, "--interval", "0.01", "--timeout", "0.05", "--duration", "3600"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            raw = json.loads(line)
            body = raw.get("body") or ""
            if raw["ok"] and body.startswith("served by "):
                self.answers.append((raw["t"], body.split()[2]))

    def served_not_by(self, node: str, since: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((t for t, who in list(self.answers) if t >= since and who != node), None)
            if hit is not None:
                return hit
            time.sleep(0.01)
        return None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)


def current_node(probe: Probe) -> str:
    """Who served the client last (a status read may stall while JetStream elects leaders)."""
    deadline = time.monotonic() + 30
    while not probe.answers:
        if time.monotonic() > deadline:
            raise TimeoutError("the client was never served")
        time.sleep(0.05)
    return probe.answers[-1][1]


def wait_all_up(lab: Lab) -> None:
    async def go() -> None:
        bus = await lab.connect(lab.state(), "bench")
        try:
            await wait_for(bus, lambda v: all(n.state == "up" for n in v.nodes), 30, "all up")
        finally:
            await bus.close()

    deadline = time.monotonic() + 60
    while True:
        try:
            return asyncio.run(go())
        except Exception:  # a JetStream request timed out during a leader election: ask again
            if time.monotonic() > deadline:
                raise


def run(nats_servers: int, rounds: int) -> list[tuple[str, float | None]]:
    lab = Lab(f"vbtopo{nats_servers}")
    lab.down()
    lab.up(generated(3, groups=2), nats_servers=nats_servers)
    probe = Probe(lab.prefix)
    out: list[tuple[str, float | None]] = []
    try:
        for i in range(rounds):
            faulted = i % 2 == 1
            if faulted:
                if nats_servers == 3:
                    lab.kill_process("nats-2", restart=False)
                lab.kill_process("membership-1")
            victim = current_node(probe)
            t0 = time.time()
            lab.kill(victim)
            served = probe.served_not_by(victim, t0, 30)
            took = None if served is None else served - t0
            fault = ("nats-2 down + " if nats_servers == 3 else "") + "membership-1 killed"
            kind = fault if faulted else "clean"
            out.append((kind, took))
            shown = "never" if took is None else f"{took * 1000:.0f} ms"
            print(f"nats={nats_servers} round {i + 1} ({kind}): {victim} lost, served in {shown}")
            lab.revive(victim)
            if faulted and nats_servers == 3:
                lab.start_process("nats-2")
            wait_all_up(lab)
            time.sleep(2)  # every lease renewed and settled before the next fault
    finally:
        probe.stop()
        lab.down()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--nats-servers", type=int, choices=[1, 3], action="append")
    args = parser.parse_args()
    results = {n: run(n, args.rounds) for n in args.nats_servers or [1, 3]}
    print("\nfailover: node killed -> client served by another node")
    for n, rows in results.items():
        for kind in sorted({k for k, _ in rows}):
            times = [t for k, t in rows if k == kind and t is not None]
            missed = sum(1 for k, t in rows if k == kind and t is None)
            if times:
                print(
                    f"  {n} NATS, {kind}: median {statistics.median(times) * 1000:.0f} ms, "
                    f"max {max(times) * 1000:.0f} ms over {len(times)} runs"
                    + (f", {missed} never served" if missed else "")
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
