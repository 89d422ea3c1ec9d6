"""Shared fixtures: a real nats-server per test module, and the netns gate.

``VIGIL_REQUIRE_NETNS=1`` (set by ``.ci/run``) turns "skip, not root" into a failure, so e2e tests
can never silently skip in CI.
"""

from __future__ import annotations

import os
import shutil

import pytest


def netns_available() -> str | None:
    """None when we can build network namespaces here, else the reason why not."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) for network namespaces"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the '{tool}' command"
    return None


@pytest.fixture
def require_netns() -> None:
    reason = netns_available()
    if reason is None:
        return
    if os.environ.get("VIGIL_REQUIRE_NETNS") == "1":
        pytest.fail(f"VIGIL_REQUIRE_NETNS=1 but {reason}")
    pytest.skip(reason)
