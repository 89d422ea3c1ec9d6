"""Power fencing: run a node's fence agent (the ``fence-agents`` interface) once across
placement replicas, and record the result where every replica sees it.

The protocol, per lost (node, incarnation), in bucket ``<root>_fencing``:

- a replica *claims* the record with a compare-and-set (create, or update of an expired claim)
  before it runs the agent: two replicas never power the node off at once, and the loser
  waits for the winner's record through its watch;
- a success is stored as ``fenced`` (and announced with ``node_fenced``): the rules let the
  node's restart groups run elsewhere;
- a failure is stored with the reason and a claim that lasts the backoff, so the next attempt
  (by any replica) waits for it; an alert goes out on the 1st, 2nd, 4th, 8th... failure.

A claim outlives its agent's timeout: a replica that dies mid-run only delays the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from vigil.wire.cluster import ClusterSpec, Fence
from vigil.wire.events import Alert, NodeFenced
from vigil.wire.records import FenceRecord

from ..core.bus import Bus, compare_and_set, encode
from ..core.kvcache import KVCache
from ..core.subjects import fence_key

log = logging.getLogger(__name__)

CLAIM_SLACK = 10.0  # seconds a claim outlives the agent's timeout
MAX_BACKOFF = 30.0
# option names whose values are secrets: never in a log line, an event or a record
_SECRET = re.compile(r"pass|secret|token|key", re.IGNORECASE)


def agent_input(fence: Fence, node: str, action: str = "off") -> bytes:
    """What the agent reads on stdin: ``action=...`` then the options, one ``key=value`` a
    line, ``{node}`` in a value replaced by the node's name (for ``plug``, say)."""
    lines = [f"action={action}"]
    lines += [f"{k}={v.replace('{node}', node)}" for k, v in fence.options.items()]
    return ("\n".join(lines) + "\n").encode()


def redact(text: str, fence: Fence, node: str) -> str:
    """``text`` with the values of secret options (password, passwd_script, ...) masked."""
    for key, value in fence.options.items():
        value = value.replace("{node}", node)
        if value and _SECRET.search(key):
            text = text.replace(value, "***")
    return text


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failures: 1, 2, 4 ... up to 30."""
    return float(min(MAX_BACKOFF, 2 ** max(0, attempts - 1)))


async def run_agent(fence: Fence, node: str, action: str = "off") -> str | None:
    """Run the agent without a shell, bounded by its timeout: None when it exited 0, else why
    (its last line of stderr, secrets masked; never its input)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            fence.agent,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
    except OSError as exc:
        return f"{fence.agent} failed to run: {exc.strerror or exc}"
    try:
        _, err = await asyncio.wait_for(
            proc.communicate(agent_input(fence, node, action)), fence.timeout
        )
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return f"{fence.agent} timed out after {fence.timeout:g}s"
    if proc.returncode == 0:
        return None
    lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
    tail = redact(lines[-1].strip(), fence, node)[:200] if lines else ""
    tail = tail if tail.isprintable() else tail.encode("unicode_escape").decode("ascii")
    return f"{fence.agent} exited with {proc.returncode}" + (f": {tail}" if tail else "")


AlertCommand = Callable[[str, str, str | None, str], Awaitable[None]]


class Fencer:
    """Runs fences for one placement replica: ``want`` starts what is due, in the background;
    the rules read ``fenced`` and ``errors`` through the snapshot."""

    def __init__(
        self,
        bus: Bus,
        bucket: KeyValue,
        records: KVCache[FenceRecord],
        alert: AlertCommand,
    ) -> None:
        self.bus = bus
        self.bucket = bucket
        self.records = records
        self.alert = alert
        self.running: dict[str, asyncio.Task[None]] = {}

    def fenced(self) -> set[tuple[str, int]]:
        return {(r.node, r.incarnation) for r in self.records.values().values() if r.fenced}

    def errors(self, lost: dict[str, int]) -> dict[str, str]:
        """Lost node -> the last failure of its current fence (for the group's reason)."""
        out = {}
        for node, incarnation in lost.items():
            record = self.records.get(fence_key(node, incarnation))
            if record is not None and not record.fenced and record.error:
                out[node] = record.error
        return out

    def want(
        self, spec: ClusterSpec, wanted: dict[tuple[str, int], list[str]], tg: asyncio.TaskGroup
    ) -> None:
        """Start an attempt for each wanted fence that nobody has done, runs or holds off."""
        if not self.records.ready.is_set():
            return  # not read yet: what another replica recorded is not known
        now = time.time()
        for (node, incarnation), groups in wanted.items():
            key = fence_key(node, incarnation)
            fence = spec.fence(node)
            record = self.records.get(key)
            if fence is None or key in self.running:
                continue
            if record is not None and (record.fenced or record.claimed_until > now):
                continue
            task = tg.create_task(self.attempt(fence, node, incarnation, groups), name=key)
            self.running[key] = task
            task.add_done_callback(functools.partial(self.finished, key))

    def finished(self, key: str, _: asyncio.Task[None]) -> None:
        self.running.pop(key, None)

    async def attempt(self, fence: Fence, node: str, incarnation: int, groups: list[str]) -> None:
        try:
            await self._attempt(fence, node, incarnation, groups)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the bus is failing: the next resync tries again
            log.warning("fence of %s (incarnation %d): %s; will retry", node, incarnation, exc)

    async def _attempt(self, fence: Fence, node: str, incarnation: int, groups: list[str]) -> None:
        key = fence_key(node, incarnation)
        record = self.records.get(key)
        revision = self.records.revision(key)
        if record is not None and (record.fenced or record.claimed_until > time.time()):
            # Another replica's claim reached our cache after ``want`` started this attempt:
            # claiming over it by its revision would run the agent twice at once.
            return
        claim = FenceRecord(
            node,
            incarnation,
            attempts=record.attempts if record else 0,
            claimed_by=self.bus.source,
            claimed_until=time.time() + fence.timeout + CLAIM_SLACK,
            error=record.error if record else "",
        )
        try:
            revision = await compare_and_set(self.bucket, key, claim, revision)
        except KeyWrongLastSequenceError:
            await self.records.reread(key)  # another replica's: its record tells us the rest
            return
        self.records.note(key, revision, claim)
        log.warning("fencing node %s (incarnation %d) with %s", node, incarnation, fence.agent)
        started = time.monotonic()
        error = await run_agent(fence, node)
        if error is None:
            done = msgspec.structs.replace(claim, fenced=True, claimed_until=0.0, error="")
            if not await self.store(key, revision, done):
                return
            log.warning(
                "node %s (incarnation %d) fenced in %.1fs; its restart groups may run elsewhere",
                node,
                incarnation,
                time.monotonic() - started,
            )
            await self.bus.publish(
                self.bus.subjects.node_fenced(node),
                NodeFenced(
                    **self.bus.stamp(),
                    node=node,
                    incarnation=incarnation,
                    agent=fence.agent,
                    attempts=claim.attempts + 1,
                ),
            )
            return
        attempts = claim.attempts + 1
        failed = msgspec.structs.replace(
            claim, attempts=attempts, claimed_until=time.time() + backoff(attempts), error=error
        )
        await self.store(key, revision, failed)
        message = (
            f"fence of node {node} failed ({error}); groups {', '.join(groups)} wait for it "
            f"(attempt {attempts}, next in {backoff(attempts):g}s)"
        )
        log.error("%s", message)
        if attempts & (attempts - 1) == 0:  # 1, 2, 4, 8...: a dead BMC is not a flood
            await self.bus.publish(
                self.bus.subjects.alert(groups[0]),
                Alert(**self.bus.stamp(), kind="fence_failed", group=groups[0], node=node,
                      message=message),
            )  # fmt: skip
            await self.alert("fence_failed", groups[0], node, message)

    async def store(self, key: str, revision: int, record: FenceRecord) -> bool:
        """Compare-and-set on our claim; losing it means the claim expired and another
        replica took over: its record is the one that counts."""
        try:
            new = await self.bucket.update(key, encode(record), last=revision)
        except KeyWrongLastSequenceError:
            await self.records.reread(key)
            return False
        self.records.note(key, new, record)
        return True
