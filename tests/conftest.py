"""Shared fixtures: the netns gate.

``VIGIL_REQUIRE_NETNS=1`` (set by ``.ci/run``) turns "skip, not root" into a failure, so e2e tests
can never silently skip in CI.
"""

from __future__ import annotations

import pytest

from vigil.testing.netns import netns_gate


@pytest.fixture
def require_netns() -> None:
    netns_gate()
