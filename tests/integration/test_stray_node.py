"""A node service whose node the applied cluster file does not list touches nothing: it waits,
logs one clear error, and `vigil status` lists the node until the file names it."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from vigil.address.service import AddressService
from vigil.core import status
from vigil.core.clusterconfig import store
from vigil.core.subjects import Subjects
from vigil.supervisor.service import Supervisor

from .conftest import Services, make_spec


async def strays_become(services: Services, want: list[str], timeout: float = 10) -> None:
    bus = await services.bus("cli", "status")
    deadline = time.monotonic() + timeout
    while (view := await status.read(bus)).strays != want:
        assert time.monotonic() < deadline, f"strays {view.strays}, not {want}"
        await asyncio.sleep(0.1)


async def test_a_node_missing_from_the_file_touches_nothing_and_is_listed(
    client: Client,
    services: Services,
    subjects: Subjects,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cli = await services.bus("cli", "test")
    await store(cli, make_spec(["n1", "n2"]))
    # An interface that does not exist: touching it would crash the service.
    address = AddressService(await services.bus("address", "n9"), "n9", "nosuchif0")
    services.spawn(address.run(), "address-n9")
    supervisor = Supervisor(await services.bus("supervisor", "n9"), "n9", tmp_path)
    services.spawn(supervisor.run(), "supervisor-n9")

    with caplog.at_level(logging.ERROR, logger="vigil.core.stray"):
        await strays_become(services, ["n9"])
    assert address.netlink is None and address.heart is None
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors  # one per service, the next only a minute later
    assert all("'n9' is not in the applied cluster file (nodes: n1, n2)" in e for e in errors)
    view = await status.read(await services.bus("cli", "status"))
    assert "n9: heartbeating but not in the cluster file" in status.render_table(view)

    # Listed now: the supervisor gets to work and the record goes (the address service here
    # would go on to its interface, which this test does not have: stop it first).
    task = next(t for t in services.tasks if t.get_name() == "address-n9")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    services.tasks.remove(task)
    await store(cli, make_spec(["n1", "n2", "n9"]))
    await strays_become(services, [])
