"""Fixtures for the access-layer tests (nodes, kube, ceph, waits) against real lab parts.

Each lab part these tests need runs on its own address octet beside the session's lab
(labkit.NET_OFFSETS): a bare 2-node lab (sshd + apt only), a standalone API server, a standalone Ceph.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from apiservertools import standalone_api_server
from labkit import net_beside, nodegate

from nodegate.lab.config import LabConfig
from nodegate.profile.model import NodeSpec, SSHSettings

NODES_NET = net_beside("access-nodes")
API_NET = net_beside("access-api")
CEPH_NET = net_beside("access-ceph")


def node_specs(config: LabConfig) -> list[NodeSpec]:
    """The lab's nodes as the profile loader sees them, logging in as the lab's user (`ubuntu`
    with sudo by default; root with `lab up --ssh-user root`)."""
    return [NodeSpec(name=n.name, address=n.address, user=config.ssh_user,
                     roles=frozenset(r for r in n.roles if r in ("control-plane", "worker", "etcd")))
            for n in config.nodes]


def ssh_settings(lab: LabConfig, *, with_config: bool = True, **overrides) -> SSHSettings:
    d = lab.dir / "ssh"
    values = dict(config=d / "config" if with_config else None, user=lab.ssh_user, identity_file=d / "id_ed25519",
                  known_hosts=d / "known_hosts")
    values.update(overrides)
    return SSHSettings(**values)


@pytest.fixture(scope="session")
def bare_lab():
    """Two real nodes (sshd as PID 1, dpkg/apt) with no other services; taken down at the end."""
    lab_dir = Path(f"/tmp/nodegate-access-nodes-net{NODES_NET}")
    nodegate("lab", "up", "--dir", str(lab_dir), "--nodes", "2", "--net", str(NODES_NET), "--bare",
             "--boot-delay", "1", timeout=300)
    config = LabConfig.load(lab_dir)
    yield config
    nodegate("lab", "down", "--dir", str(lab_dir), timeout=120, check=False)


@pytest.fixture(scope="session")
def specs_for():
    """node_specs(config) → NodeSpec list for a lab (the profile loader's view, built directly)."""
    return node_specs


@pytest.fixture(scope="session")
def settings_for():
    """ssh_settings(config, with_config=True, **overrides) → SSHSettings for a lab."""
    return ssh_settings


@pytest.fixture(scope="session")
def lab_ceph():
    """A real Ceph cluster (mon, mgr, one OSD per CRUSH host node1..node3), created for the
    session and destroyed at the end; yields (LabConfig, LabCeph)."""
    import shutil

    from nodegate.lab.ceph import LabCeph

    lab_dir = Path(f"/tmp/nodegate-access-ceph-net{CEPH_NET}")
    if lab_dir.exists():
        if (lab_dir / "lab.json").exists():
            LabCeph(LabConfig.load(lab_dir)).destroy()
        shutil.rmtree(lab_dir)
    lab_dir.mkdir(parents=True)
    config = LabConfig.new(lab_dir, 3, net=CEPH_NET)
    config.save()
    ceph = LabCeph(config)
    try:
        ceph.create(timeout=120)
        yield config, ceph
    finally:
        ceph.destroy()


@pytest.fixture(scope="session")
def api_lab():
    """The lab API server (python -m nodegate.lab.apiserver) on net API_NET, 4 nodes up, its
    nodes driven by state.json writes (tests/apiservertools.py)."""
    with standalone_api_server(Path(f"/tmp/nodegate-access-api-net{API_NET}"), net=API_NET) as lab:
        yield lab
