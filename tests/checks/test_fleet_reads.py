"""A run over several nodes reads the cluster's pods, PDBs and csi-rbdplugin pods once and hands
each node its share (nodegate.plugin.reads.Reads, `fleet`): each node's answer must be exactly what
the per-node requests of a one-node run give, and the API must be asked once, not per node."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab

PROBE = '''
import pytest

from nodegate.cluster.kube.csi import CSI_RBD_SELECTOR

def test_fleet_reads_match_per_node_reads(reads, kube, node, profile):
    assert reads.fleet
    namespace = profile.ceph.namespace
    assert reads.pods_on(node.name) == kube.list_pods(node=node.name)
    assert reads.eviction_blockers(node.name) == kube.pods_blocking_eviction(node.name)
    assert reads.csi_rbdplugin(node.name) == kube.csi_rbdplugin(node.name, namespace=namespace)
    # the pods of the cluster were listed once for every node: the cached list is the same object
    assert reads.all_pods() is reads.all_pods()
    assert any(p.node == node.name for p in reads.all_pods())
    assert [p for p in reads.pods(namespace, CSI_RBD_SELECTOR) if p.node == node.name], "no csi pod on the node"
'''


def test_fleet_reads_match_per_node_reads(pytester, lab):
    pytester.makepyfile(test_fleet_probe=PROBE)
    result = pytester.runpytest_subprocess("--cluster", str(lab.dir / "cluster.toml"), "--node", "node3,node4",
                                           "-p", "no:randomly", "-p", "no:hypothesispytest", timeout=300)
    result.assert_outcomes(passed=2)
