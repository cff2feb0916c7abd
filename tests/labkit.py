"""Plain helpers shared by tests in every folder, imported by name (`from labkit import nodegate`):
a conftest is not importable reliably, so what a test module or a helper module needs lives here.
tests/conftest.py puts this folder on sys.path and offers the same helpers as fixtures (`cli`,
`node_ssh`, `poll`)."""
from __future__ import annotations

import subprocess
import sys
import time

from nodegate.lab.config import LabConfig


def nodegate(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `nodegate` CLI (as `python -m nodegate`) and return its result."""
    result = subprocess.run([sys.executable, "-m", "nodegate", *args], capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"nodegate {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def ssh(config: LabConfig, node: str, command: str, *, check: bool = True, timeout: float = 60,
        multiplex: bool = True) -> subprocess.CompletedProcess:
    """Run one command on a lab node over real ssh with the lab's ssh/config."""
    argv = ["ssh", "-F", str(config.dir / "ssh/config")]
    if not multiplex:
        argv += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    result = subprocess.run([*argv, node, command], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"ssh {node} {command!r} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


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
