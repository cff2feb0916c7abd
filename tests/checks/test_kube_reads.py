"""nodegate.cluster.kube.client's requests are plain JSON on the official client's ApiClient, without the
generated CoreV1Api and its models (they cost more to load than a run spends on requests): its
reads must give exactly what the official client's typed calls give, on the lab's real API
server, and neither reads, writes, a watch nor a toolbox exec may load a generated module."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture
def both(lab):
    """(nodegate's Kube, the official client's CoreV1Api) on the lab's kubeconfig."""
    from kubernetes import client, config

    from nodegate.cluster.kube.client import Kube
    from nodegate.profile.load import load_profile

    kube = Kube.connect(settings=load_profile(lab.dir / "cluster.toml").kube)
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(lab.dir / "kubeconfig"), client_configuration=configuration)
    api = client.ApiClient(configuration)
    yield kube, client.CoreV1Api(api), api
    kube.close()
    api.close()


def test_reads_equal_the_official_clients(both):
    from nodegate.cluster.kube.models import pod_summary

    kube, core, api = both
    plain = lambda model: api.sanitize_for_serialization(model)  # noqa: E731 - the model's JSON form
    nodes = kube.list_nodes()
    assert nodes and {n.name for n in nodes} == {n.metadata.name for n in core.list_node().items}
    typed = {n.metadata.name: kube._node_status(plain(n)) for n in core.list_node().items}
    for status in nodes:
        mine, theirs = dataclasses.asdict(status), dataclasses.asdict(typed[status.name])
        mine.pop("raw"), theirs.pop("raw"), mine.pop("resource_version"), theirs.pop("resource_version")
        assert mine == theirs
    assert kube.node("node4").name == "node4"
    pods = sorted(kube.list_pods(), key=lambda p: p.ref)
    assert pods == sorted((pod_summary(plain(p)) for p in core.list_pod_for_all_namespaces().items), key=lambda p: p.ref)
    on4 = kube.list_pods(node="node4")
    assert on4 and all(p.node == "node4" and p in pods for p in on4)
    assert {p.ref for p in on4} == {p.ref for p in pods if p.node == "node4"}
    csi = kube.list_pods(namespace="rook-ceph", selector="app=csi-rbdplugin")
    assert csi and {p.ref for p in csi} == {f"rook-ceph/{p.metadata.name}" for p in
                                            core.list_namespaced_pod("rook-ceph", label_selector="app=csi-rbdplugin").items}
    from kubernetes.client import VersionApi

    assert kube.server_version() == VersionApi(api).get_code().git_version
    pod = csi[0]
    assert kube.pod_log(namespace="rook-ceph", name=pod.name, container=pod.containers[0].name, tail=5) == \
        core.read_namespaced_pod_log(pod.name, "rook-ceph", container=pod.containers[0].name, tail_lines=5)
    assert kube.get_lease("kube-system", "no-such-lease-here") is None


def test_nodegate_never_loads_the_generated_api(lab):
    """Reads, a toolbox exec, node patches, a lease and a watch, without importing CoreV1Api or a model."""
    probe = f"""
import sys
from nodegate.profile.load import load_profile
from nodegate.cluster.kube.client import Kube
from nodegate.cluster.lock import acquire_lock, release_lock
from nodegate.cluster.ceph import Ceph
profile = load_profile({str(lab.dir / 'cluster.toml')!r})
kube = Kube.connect(settings=profile.kube)
assert kube.list_nodes() and kube.list_pods(node="node4") is not None and kube.list_pdbs() is not None
assert Ceph(settings=profile.ceph, kube=kube).status().raw
kube.set_node_annotation("node4", key="perf.nodegate.io/probe", value="1")
assert kube.node_annotation("node4", key="perf.nodegate.io/probe") == "1"
kube.set_node_annotation("node4", key="perf.nodegate.io/probe", value=None)
assert kube.node_annotation("node4", key="perf.nodegate.io/probe") is None
lock = acquire_lock(kube, holder="probe@test", node="node4", run_id="probe", name="perf-probe-lock")
assert release_lock(kube, holder="probe@test", name="perf-probe-lock")
assert kube.wait_node_ready("node4", timeout=30).is_ready
loaded = sorted(m for m in sys.modules if m.startswith("kubernetes.client.api.") or m.startswith("kubernetes.client.models."))
print("LOADED", loaded)
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
