"""Pure rules of the lab API server: the csi-rbdplugin crash rule, scheduling filters,
selectors and patches (no server, no lab)."""
from __future__ import annotations

from pathlib import Path

import pytest

from nodegate.lab.apiserver import patch, selectors, status
from nodegate.lab.apiserver.cluster import Cluster
from nodegate.lab.apiserver.faults import Faults
from nodegate.lab.apiserver.nodes import NodeView, read_os_release
from nodegate.lab.apiserver.scheduler import node_matches_affinity, tolerates
from nodegate.lab.apiserver.store import Store
from nodegate.lab.config import LabConfig


def csi_pod(version: str, app: str = "csi-rbdplugin") -> dict:
    """An RBD node-plugin pod: recognised by its cephcsi RBD node-server container, whatever its
    label (Rook <= v1.17 app=csi-rbdplugin; ceph-csi-operator app=<driver>-nodeplugin)."""
    return {"metadata": {"labels": {"app": app}},
            "spec": {"containers": [{"name": "driver-registrar", "image": "registrar:v2.11.1"},
                                    {"name": "csi-rbdplugin", "image": f"quay.io/cephcsi/cephcsi:{version}",
                                     "args": ["--type=rbd", "--nodeserver=true",
                                              "--drivername=rook-ceph.rbd.csi.ceph.com"]}]}}


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    config = LabConfig.new(tmp_path, 2, net=250)
    return Cluster(config, Store(), Faults(tmp_path / "faults.json"))


@pytest.mark.parametrize("release, modules, version, crashes", [
    ("24.04", set(), "v3.11.0", True),          # rook #14507: kmod in the image cannot load rbd.ko.zst
    ("24.04", {"rbd"}, "v3.11.0", False),       # the workaround: modprobe rbd on the node
    ("24.04", set(), "v3.12.3", False),         # fixed image
    ("22.04", set(), "v3.11.0", False),
    ("20.04", set(), "v3.9.0", False),
])
def test_csi_crash_rule(cluster, release, modules, version, crashes):
    view = NodeView(node=cluster.config.nodes[1], state="up", os_release={"VERSION_ID": release},
                    modules=frozenset(modules))
    assert cluster.csi_crashing(csi_pod(version), view) is crashes


def test_csi_crash_rule_applies_to_the_ceph_csi_operator_nodeplugin(cluster):
    view = NodeView(node=cluster.config.nodes[1], state="up", os_release={"VERSION_ID": "24.04"},
                    modules=frozenset())
    assert cluster.csi_crashing(csi_pod("v3.11.0", app="rook-ceph.rbd.csi.ceph.com-nodeplugin"), view) is True


def test_csi_broken_fault_crashes_any_release(cluster, tmp_path):
    (tmp_path / "faults.json").write_text('{"csi-rbd-broken": {"nodes": ["node2"], "since": 0}}')
    cluster.faults.refresh()
    view = NodeView(node=cluster.config.nodes[1], state="up", os_release={"VERSION_ID": "22.04"},
                    modules=frozenset({"rbd"}))
    assert cluster.csi_crashing(csi_pod("v3.12.3"), view)
    other = NodeView(node=cluster.config.nodes[0], state="up", os_release={"VERSION_ID": "22.04"})
    assert not cluster.csi_crashing(csi_pod("v3.12.3"), other)


def test_os_release_symlink_resolves_inside_the_node_root(tmp_path):
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/lib/os-release").write_text('PRETTY_NAME="Ubuntu 22.04.5 LTS"\nVERSION_ID="22.04"\n')
    (root / "etc/os-release").symlink_to("/usr/lib/os-release")  # absolute: must not read the host's
    assert read_os_release(root)["PRETTY_NAME"] == "Ubuntu 22.04.5 LTS"


def test_lab_status_reads_the_release_as_the_api_server_does(tmp_path):
    """`nodegate lab status` (NodeRuntime.os_release) shares the server's reader, symlinks resolved inside."""
    from nodegate.lab.node import NodeRuntime

    config = LabConfig.new(tmp_path, 1)
    root = NodeRuntime(config, config.nodes[0]).root
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/lib/os-release").write_text('PRETTY_NAME="Ubuntu 24.04.1 LTS"\nVERSION_ID="24.04"\n')
    (root / "etc/os-release").symlink_to("/usr/lib/os-release")
    assert NodeRuntime(config, config.nodes[0]).os_release() == {"PRETTY_NAME": "Ubuntu 24.04.1 LTS",
                                                                 "VERSION_ID": "24.04"}


def test_taints_tolerations_and_node_affinity():
    taint = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    assert tolerates([{"key": taint["key"], "operator": "Exists", "effect": "NoSchedule"}], taint)
    assert tolerates([{"operator": "Exists"}], taint)
    assert not tolerates([{"key": taint["key"], "operator": "Exists", "effect": "NoExecute"}], taint)
    assert not tolerates([], taint)
    node = {"metadata": {"name": "node4", "labels": {"kubernetes.io/hostname": "node4", "kubernetes.io/os": "linux"}}}
    assert node_matches_affinity({"nodeSelector": {"kubernetes.io/os": "linux"}}, node)
    assert not node_matches_affinity({"nodeSelector": {"kubernetes.io/hostname": "node3"}}, node)
    by_field = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node4"]}]}]}}}}
    assert node_matches_affinity(by_field, node)
    node["metadata"]["name"] = "node3"
    assert not node_matches_affinity(by_field, node)


def test_label_selectors():
    match = selectors.label_selector("app in (web,cache),tier!=db,!legacy,env")
    assert match({"app": "web", "env": "x"})
    assert not match({"app": "web", "env": "x", "legacy": "1"})
    assert not match({"app": "api", "env": "x"})
    assert not match({"app": "web"})
    with pytest.raises(status.ApiError) as info:
        selectors.label_selector("app in")
    assert info.value.code == 400


def test_strategic_merge_keys_lists_by_name():
    pod = {"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}],
                    "tolerations": [{"key": "k"}]}}
    out = patch.strategic_merge_patch(pod, {"spec": {"containers": [{"name": "b", "image": "y:2"}]}})
    assert out["spec"]["containers"] == [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:2"}]
    out = patch.strategic_merge_patch(pod, {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}})
    assert [c["name"] for c in out["spec"]["containers"]] == ["b"]
    assert patch.merge_patch(pod, {"spec": {"tolerations": None}}) == {"spec": {"containers": pod["spec"]["containers"]}}


def test_crash_loop_timeline():
    from nodegate.lab.apiserver.podstate import CrashLoop

    loop = CrashLoop(since=0.0, restarts_before=2)
    # attempt 0 runs 1 s and is restarted at once; attempt 1 then waits 10 s, attempt 2 20 s ...
    assert loop.restarts(0.5)[0] == 0
    assert loop.restarts(1.5)[:3] == (1, 1.0, 2.0)
    assert loop.restarts(11.9)[0] == 1            # backing off 10 s after attempt 1 ended at 2 s
    assert loop.restarts(12.0)[:3] == (2, 12.0, 13.0)
    assert loop.restarts(33.0)[:3] == (3, 33.0, 34.0)
    assert [CrashLoop.backoff_s(n) for n in range(0, 8)] == [0, 10, 20, 40, 80, 160, 300, 300]
