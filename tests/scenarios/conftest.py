"""Fixtures of the scenario suite (the tools are in scenariotools.py)."""
from __future__ import annotations

import pytest
from scenariotools import Lab


@pytest.fixture(scope="module")
def scenario_lab(lab) -> Lab:
    """The session's lab with node4 fresh at the start and put back at the end."""
    view = Lab(lab)
    view.restore()
    yield view
    view.restore()
    view.kube.close()
