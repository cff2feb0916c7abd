"""Plain helpers shared by tests in every folder, imported by name (`from labkit import wait_until`):
a conftest is not importable reliably, so what a test module or a helper module needs lives here.
tests/conftest.py puts this folder on sys.path and offers the same helpers as fixtures (`poll`)."""
from __future__ import annotations

import time


def wait_until(probe, *, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll probe() until it returns something truthy (and return that); fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout} s (last: {last!r})")
