"""checks/test_etcd.py against the lab's real etcd 3.4 members, read with the node's own etcdctl
and Kubespray's /etc/etcd.env: passes on a healthy cluster; with node3's member stopped it fails
on node1 and node2, naming node3's endpoint and the lost quorum margin."""
from __future__ import annotations

import pytest

from nodegate.lab.etcd import LabEtcd

pytestmark = pytest.mark.lab

ETCD_CHECK = ("-k", "test_etcd_healthy")


def test_healthy_etcd_passes(catalogue):
    run = catalogue("-m", "preflight", *ETCD_CHECK, node="node1,node4")
    assert run.outcomes == {"test_etcd_healthy[node1]": "PASSED", "test_etcd_healthy[node4]": "SKIPPED"}, \
        run.stdout[-4000:] + run.stderr[-2000:]
    assert run.ret == 0


def test_stopped_member_fails_naming_it(catalogue, lab):
    etcd = LabEtcd(lab)
    node3 = lab.node("node3")
    etcd.stop_member("node3")
    try:
        run = catalogue("-m", "preflight", *ETCD_CHECK, node="node1,node2")
    finally:
        etcd.start_member("node3")
        etcd.wait_healthy(30)
    run.assert_failed_exactly({"test_etcd_healthy[node1]", "test_etcd_healthy[node2]"})
    for node in ("node1", "node2"):
        section = run.section(f"test_etcd_healthy[{node}]")
        assert f"http://{node3.address}:2379 (node3)" in section, section
        assert "1 of 3 member(s) unhealthy" in section, section
        assert f"without {node}'s member only 1 healthy member(s)" in section, section
        assert "fix: bring the unhealthy member(s) back" in section, section
    print(f"check with node3's member stopped: {run.seconds:.1f} s")


def test_etcd_gate_reads_the_real_members(lab):
    """The procedure's etcd gate (nodegate.core.etcd over the node resource Etcd): with every member
    up, node2 may go and node3's member is caught up; with node3's member stopped, node2 may not go
    (node3 named, quorum margin lost) and node3 is not caught up, named by its endpoint; back, it is."""
    from labkit import LabAccess

    from nodegate.core.etcd import caught_up, quorum_before

    access = LabAccess(lab)
    names = {n.address: n.name for n in access.profile.nodes}
    node2, node3 = lab.node("node2"), lab.node("node3")
    etcd2 = access.nodes.host("node2").etcd
    before = quorum_before("node2", node2.address, etcd2.endpoint_health(), etcd2.member_list(), names)
    assert before.holds and "with node2's member down 2 of 3 remain (quorum 2)" in before.text, before
    assert caught_up("node3", node3.address, etcd2.endpoint_health(), etcd2.endpoint_status()).holds
    etcd = LabEtcd(lab)
    etcd.stop_member("node3")
    try:
        blocked = quorum_before("node2", node2.address, etcd2.endpoint_health(), etcd2.member_list(), names)
        behind = caught_up("node3", node3.address, etcd2.endpoint_health(), etcd2.endpoint_status())
    finally:
        etcd.start_member("node3")
        etcd.wait_healthy(30)
    assert not blocked.holds and f"http://{node3.address}:2379 (node3)" in blocked.text, blocked
    assert "with node2's member down only 1 healthy member(s) would be left" in blocked.text, blocked
    assert not behind.holds and f"node3's etcd member http://{node3.address}:2379 is not healthy" in behind.text
    back = caught_up("node3", node3.address, etcd2.endpoint_health(), etcd2.endpoint_status())
    assert back.holds and "caught up" in back.text, back
    access.kube.close()
