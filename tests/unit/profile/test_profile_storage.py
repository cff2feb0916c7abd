"""Profile fields of the storage gates: the Kubernetes Node of an inventory host (Kubespray's
kube_override_hostname, roles/kubernetes/node/defaults/main.yml; or [nodes.X] kube_node), the
CRUSH host override and "no OSDs here", "no Ceph RBD CSI", "kernel not from dpkg"."""
from __future__ import annotations

import pytest
from clusterfiles import LAB_HOSTS_YAML, write_cluster

from nodegate.core.errors import UsageError
from nodegate.core.journal import StepRecord
from nodegate.core.noout import expected_duration
from nodegate.profile.load import load_profile

FQDN_INVENTORY = LAB_HOSTS_YAML.replace("      ip: 127.9.1.4\n",
                                        "      ip: 127.9.1.4\n      kube_override_hostname: node4.example.internal\n")


def test_kube_override_hostname_names_the_node(tmp_path):
    p = load_profile(write_cluster(tmp_path, inventory=FQDN_INVENTORY), environ={})
    assert p.node("node4").kube_node == "node4.example.internal" and p.node("node3").kube_node == "node3"


def test_node_table_overrides(tmp_path):
    extra = ('[nodes.node3]\nkube_node = "n3.example.com"\ncrush_host = "n3-example-com"\n'
             '[nodes.node1]\nceph_osds = false\n[ceph]\ncsi_rbd = false\n[expect]\nkernel_packages = false\n')
    p = load_profile(write_cluster(tmp_path, extra_toml=extra), environ={})
    n3, n1 = p.node("node3"), p.node("node1")
    assert (n3.kube_node, n3.crush_host, n3.ceph_osds) == ("n3.example.com", "n3-example-com", True)
    assert n1.ceph_osds is False and p.ceph.csi_rbd is False and p.expect.kernel_packages is False


@pytest.mark.parametrize("extra, named", [
    ('[nodes.node1]\nceph_osds = "no"\n', "ceph_osds"),
    ('[ceph]\ncsi_rbd_daemonset = "just-a-name"\n', "csi_rbd_daemonset"),
    ('[expect]\nkernel_packages = 0\n', "kernel_packages"),
])
def test_bad_storage_fields_are_usage_errors(tmp_path, extra, named):
    with pytest.raises(UsageError) as err:
        load_profile(write_cluster(tmp_path, extra_toml=extra), environ={})
    assert named in str(err.value)


def test_expected_duration_from_earlier_runs_else_the_stated_default():
    rec = lambda step, at: StepRecord(step=step, status="done", at=at, run_id="r", detail="", data={})  # noqa: E731
    seconds, source = expected_duration([[rec("noout", 100.0), rec("unset_noout", 2500.0)], []], control_plane=False)
    assert seconds == 2400 and "journals" in source
    assert expected_duration([], control_plane=True)[0] == 2 * expected_duration([], control_plane=False)[0]
