"""The lab's Rook swaps its OSD PodDisruptionBudgets as Rook does (rook
design/ceph/ceph-managed-disruptionbudgets.md, clusterdisruption/osd.go): the default `rook-ceph-osd`
(maxUnavailable 1) until an OSD of a drained node goes down, then a blocking budget (maxUnavailable 0)
on every other failure domain and no default, so the rest of the draining domain may go and no other;
the default again once the OSDs are back and PGs clean. On a lab with `--racks 2`, every pool on a
rack rule, the failure domain is the rack: node2 and node4 in rack2, node1 and node3 in rack1."""
from __future__ import annotations

import time

import pytest
from labkit import LabAccess, net_beside, nodegate

from nodegate.lab.config import LabConfig

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab_dir = tmp_path_factory.mktemp("budgets") / "lab"
    nodegate("lab", "up", "--dir", str(lab_dir), "--nodes", "4", "--racks", "2", "--manage-pod-budgets",
             "--net", str(net_beside("lab-rook-budgets")), timeout=600)
    access = LabAccess(LabConfig.load(lab_dir))
    try:
        yield access
    finally:
        access.kube.close()
        nodegate("lab", "down", "--dir", str(lab_dir), check=False)


def osd_budgets(lab: LabAccess) -> dict[str, int]:
    return {p.name: p.disruptions_allowed for p in lab.kube.list_pdbs(namespace="rook-ceph")
            if p.name.startswith("rook-ceph-osd")}


def wait(what: str, probe, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        seen = probe()
        if seen:
            return seen
        assert time.monotonic() < deadline, f"{what}: not seen in {timeout:g} s"
        time.sleep(0.5)


def osd_pod(lab: LabAccess, node: str):
    return next(p for p in lab.kube.list_pods(namespace="rook-ceph", selector="app=rook-ceph-osd")
                if p.node == node and not p.deleting)


def test_one_rack_drains_while_the_other_is_blocked_then_the_default_returns(lab: LabAccess):
    assert osd_budgets(lab) == {"rook-ceph-osd": 1}
    for node in ("node4", "node2"):
        lab.kube.cordon(node)
    try:
        first = lab.kube.evict(osd_pod(lab, "node4"))
        assert first.outcome == "evicted", first.describe()
        budgets = wait("blocking budget on rack1, no default",
                       lambda: (b := osd_budgets(lab)) == {"rook-ceph-osd-rack-rack1": 0} and b)
        assert budgets == {"rook-ceph-osd-rack-rack1": 0}
        # the rest of rack2 may go now; rack1 may not
        mate = lab.kube.evict(osd_pod(lab, "node2"))
        assert mate.outcome == "evicted", mate.describe()
        other = lab.kube.evict(osd_pod(lab, "node3"))
        assert other.outcome == "blocked" and other.pdb == "rook-ceph/rook-ceph-osd-rack-rack1", other.describe()
    finally:
        for node in ("node4", "node2"):
            lab.kube.uncordon(node)
    wait("the default budget back once the OSDs are up and PGs clean",
         lambda: osd_budgets(lab) == {"rook-ceph-osd": 1}, timeout=240)
    lab.wait_healthy()
