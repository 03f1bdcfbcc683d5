"""The one simulator the conformance tests replay the recorded probe session against."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.comfysim import launch_comfysim
from tests.simulator import scenarios_basic, scenarios_queue
from tests.simulator.session import ProtocolSession

#: Importing the scenario modules registers their runners with the session.
SCENARIO_MODULES = (scenarios_basic, scenarios_queue)


@pytest.fixture(scope="session")
def protocol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProtocolSession]:
    """A core-catalogue simulator, as the recording server was (no custom nodes installed)."""
    sim = launch_comfysim(tmp_path_factory.mktemp("protocol"), catalog="core", exec_s=0.1).wait_ready()
    session = ProtocolSession(sim)
    try:
        yield session
    finally:
        session.close()
        sim.process.kill()
