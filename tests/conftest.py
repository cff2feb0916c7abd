"""Shared lab fixtures for the lab's own tests.

`lab` brings up one default lab (4 nodes) for the whole session, or reuses one already running
in the same directory; it is torn down at the end if this session started it (unless
NODEGATE_KEEP_LAB=1). Environment:
  NODEGATE_TEST_LAB_DIR  lab directory (default /tmp/nodegate-test-lab-net<NET>)
  NODEGATE_TEST_NET      address octet of that lab (default 0: CI); a developer uses their own
  NODEGATE_KEEP_LAB=1    leave the lab running after the session
Labs a test brings up beside it (`make_lab`, the access and lab tests) have octets of their own,
offset from NODEGATE_TEST_NET (labkit.NET_OFFSETS), so they never collide with it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodegate.lab.config import LabConfig

# Helpers test modules import by name live in labkit.py beside this file (a conftest is not
# importable reliably); this folder is put on sys.path explicitly, whatever the import mode.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from labkit import TEST_NET, net_beside, nodegate, preimport_lazy_dependencies, ssh, wait_until

# Before any in-process pytester run (tests/plugin): see preimport_lazy_dependencies for why.
PREIMPORTED = preimport_lazy_dependencies()

TEST_LAB_DIR = Path(os.environ.get("NODEGATE_TEST_LAB_DIR", f"/tmp/nodegate-test-lab-net{TEST_NET}"))
KEEP_LAB = os.environ.get("NODEGATE_KEEP_LAB") == "1"
EXTRA_NET_BASE = net_beside("extra-labs")


def _running(lab_dir: Path) -> bool:
    from nodegate.lab.supervisor import supervisor_pid

    return (lab_dir / "lab.json").exists() and supervisor_pid(lab_dir) is not None


@pytest.fixture(scope="session")
def lab():
    """The session's default lab (4 nodes, every service), started or reused; yields its LabConfig."""
    started_here = False
    if not _running(TEST_LAB_DIR):
        nodegate("lab", "up", "--dir", str(TEST_LAB_DIR), "--nodes", "4", "--net", str(TEST_NET))
        started_here = True
    config = LabConfig.load(TEST_LAB_DIR)
    yield config
    if started_here and not KEEP_LAB:
        nodegate("lab", "down", "--dir", str(TEST_LAB_DIR))


@pytest.fixture(scope="session")
def lab_ssh(lab):
    """ssh(node, command, check=True, timeout=60) on the session's lab."""
    def run(node: str, command: str, **kwargs) -> subprocess.CompletedProcess:
        return ssh(lab, node, command, **kwargs)
    return run


@dataclass
class ExtraLabs:
    """Labs a test brings up beside the session's lab; every one is taken down at the end."""

    base: Path
    started: list[Path]
    next_net: int = EXTRA_NET_BASE

    def up(self, *args: str, nodes: int = 1, bare: bool = True) -> LabConfig:
        lab_dir = self.base / f"lab{len(self.started)}"
        net = self.next_net
        self.next_net += 1
        self.started.append(lab_dir)
        extra = ["--bare"] if bare else []
        nodegate("lab", "up", "--dir", str(lab_dir), "--nodes", str(nodes), "--net", str(net), *extra, *args)
        return LabConfig.load(lab_dir)


@pytest.fixture
def make_lab(tmp_path_factory):
    labs = ExtraLabs(base=tmp_path_factory.mktemp("labs"), started=[])
    yield labs
    for lab_dir in labs.started:
        if (lab_dir / "lab.json").exists():
            nodegate("lab", "down", "--dir", str(lab_dir), check=False)


@pytest.fixture(scope="session")
def cli():
    """nodegate(*args, timeout=600, check=True): the real CLI as a subprocess."""
    return nodegate


@pytest.fixture(scope="session")
def node_ssh():
    """ssh(config, node, command, check=True, timeout=60, multiplex=True) for any lab."""
    return ssh


@pytest.fixture(scope="session")
def poll():
    """wait_until(probe, timeout=…, interval=0.1, what=…): bounded polling that fails the test."""
    return wait_until
