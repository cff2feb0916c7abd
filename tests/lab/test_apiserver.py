"""The lab's Kubernetes API server through kubectl and the official client.

One real server (`python -m nodegate.lab.apiserver`) for the module, over a lab directory whose
nodes exist as the supervisor's state.json files and a root with /etc/os-release: node boots,
reboots and release upgrades are file writes, exactly what the server reads from a real lab.
The coupling with real nodes and real Ceph is in test_apiserver_lab.py; the server is started
and driven by tests/apiservertools.py (shared with the access tests' `api_lab`).
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from apiservertools import standalone_api_server, start_server, stop_server
from labkit import net_beside, wait_until

from nodegate.lab import apiclient

pytestmark = pytest.mark.lab

NET = net_beside("lab-apiserver")   # one of the two modules at a time in a session
FOCAL = 'NAME="Ubuntu"\nVERSION_ID="20.04"\nPRETTY_NAME="Ubuntu 20.04.6 LTS"\nID=ubuntu\n'
NOBLE = 'NAME="Ubuntu"\nVERSION_ID="24.04"\nPRETTY_NAME="Ubuntu 24.04.1 LTS"\nID=ubuntu\n'


@pytest.fixture(scope="module")
def fake_lab():
    # Rook v1.14.12 ships cephcsi v3.11.0: the csi-rbdplugin crash on 24.04 applies.
    with standalone_api_server(Path(f"/tmp/nodegate-test-apiserver-net{NET}"), net=NET, os_release=FOCAL,
                               rook_version="v1.14.12") as lab:
        yield lab


@pytest.fixture(scope="module")
def k8s(fake_lab):
    """(core, apps, policy, coordination, api_client) of the official client on the kubeconfig."""
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(fake_lab.kubeconfig), client_configuration=cfg)
    api = client.ApiClient(cfg)
    yield (client.CoreV1Api(api), client.AppsV1Api(api), client.PolicyV1Api(api),
           client.CoordinationV1Api(api), api)
    api.close()


def settled(core) -> bool:
    """Every pod that can run is Running and Ready (the controllers have caught up)."""
    pods = core.list_pod_for_all_namespaces().items
    return bool(pods) and all(p.status.phase == "Running" and any(c.type == "Ready" and c.status == "True"
                                                                  for c in p.status.conditions or [])
                              for p in pods if p.metadata.deletion_timestamp is None and p.spec.node_name)


def api_error(call, *args, **kwargs):
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as info:
        call(*args, **kwargs)
    return info.value.status, json.loads(info.value.body)


# -- discovery, version, nodes ------------------------------------------------------------------
def test_discovery_and_version(fake_lab, k8s):
    from kubernetes import client

    core, _, _, _, api = k8s
    info = client.VersionApi(api).get_code()
    assert (info.git_version, info.major, info.minor) == ("v1.25.6", "1", "25")
    resources = fake_lab.kubectl("api-resources", "--no-headers").stdout
    for row in (["pods", "po", "v1", "true", "Pod"], ["poddisruptionbudgets", "pdb", "policy/v1", "true"],
                ["leases", "coordination.k8s.io/v1", "true", "Lease"], ["daemonsets", "ds", "apps/v1"]):
        assert any(line.split()[:len(row)] == row for line in resources.splitlines()), (row, resources)
    v1 = json.loads(fake_lab.kubectl("get", "--raw", "/api/v1").stdout)
    eviction = next(r for r in v1["resources"] if r["name"] == "pods/eviction")
    assert (eviction["group"], eviction["version"], eviction["kind"]) == ("policy", "v1", "Eviction")


def test_nodes_mirror_the_lab(fake_lab, k8s):
    core = k8s[0]
    wait_until(lambda: settled(core), timeout=20, what="seed workloads running")
    out = fake_lab.kubectl("get", "nodes", "-o", "wide").stdout
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATUS", "ROLES"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == ["node1", "node2", "node3", "node4"]
    assert all(" Ready " in row and "v1.25.6" in row and "Ubuntu 20.04.6 LTS" in row for row in rows.values()), out
    assert "control-plane" in rows["node1"] and "<none>" in rows["node4"].split()[2]
    node1 = core.read_node("node1")
    info = node1.status.node_info
    state = json.loads((fake_lab.node_dir("node1") / "state.json").read_text())
    assert info.boot_id == state["boot_id"]
    assert info.kubelet_version == "v1.25.6" and info.os_image == "Ubuntu 20.04.6 LTS"
    assert all(getattr(info, f) for f in ("machine_id", "system_uuid", "kernel_version", "container_runtime_version",
                                           "kube_proxy_version", "operating_system", "architecture"))
    assert "node-role.kubernetes.io/control-plane" in node1.metadata.labels
    assert [(t.key, t.effect) for t in node1.spec.taints] == [("node-role.kubernetes.io/control-plane", "NoSchedule")]
    leases = {lease.metadata.name: lease for lease in k8s[3].list_namespaced_lease("kube-node-lease").items}
    assert sorted(leases) == ["node1", "node2", "node3", "node4"]
    assert leases["node1"].spec.holder_identity == "node1" and leases["node1"].spec.renew_time is not None


def test_pods_wide_and_selectors(fake_lab, k8s):
    core = k8s[0]
    out = fake_lab.kubectl("get", "pods", "-A", "-o", "wide").stdout
    header = out.splitlines()[0].split()
    assert header[:8] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    for ds in ("kube-proxy", "calico-node", "nodelocaldns", "csi-rbdplugin"):
        nodes = {line.split()[7] for line in out.splitlines() if line.split()[1].startswith(ds + "-")}
        assert nodes == {"node1", "node2", "node3", "node4"}, (ds, out)
    on4 = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node4").items
    assert on4 and all(p.spec.node_name == "node4" for p in on4)
    assert any(p.metadata.name.startswith("rook-ceph-osd-3-") for p in on4)
    web = core.list_namespaced_pod("demo", label_selector="app=web").items
    assert len(web) == 3
    mixed = core.list_namespaced_pod("demo", label_selector="app in (web,cache),app!=cache").items
    assert sorted(p.metadata.name for p in mixed) == sorted(p.metadata.name for p in web)
    status, body = api_error(core.list_pod_for_all_namespaces, field_selector="spec.color=red")
    assert status == 400 and body["reason"] == "BadRequest" and "spec.color" in body["message"]


def test_kubectl_reads_everything_an_operator_looks_at(fake_lab, k8s):
    wait_until(lambda: settled(k8s[0]), timeout=20, what="workloads settled")
    described = fake_lab.kubectl("describe", "node", "node4").stdout
    assert "Non-terminated Pods:" in described and "rook-ceph-osd-3-" in described and "Events:" in described
    fake_lab.kubectl("wait", "--for=condition=Ready", "node/node1", "--timeout=10s")
    assert "successfully rolled out" in fake_lab.kubectl("rollout", "status", "-n", "rook-ceph", "ds/csi-rbdplugin",
                                                         "--timeout=20s").stdout
    heads = {
        ("get", "pdb", "-A"): ["NAMESPACE", "NAME", "MIN", "AVAILABLE", "MAX", "UNAVAILABLE", "ALLOWED", "DISRUPTIONS", "AGE"],
        ("get", "ds", "-A"): ["NAMESPACE", "NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE"],
        ("get", "events", "-A"): ["NAMESPACE", "LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        ("get", "deploy", "-n", "demo"): ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
    }
    for args, head in heads.items():
        out = fake_lab.kubectl(*args).stdout.splitlines()
        assert out[0].split()[:len(head)] == head, (args, out[0])
        assert len(out) > 1
    pdbs = fake_lab.kubectl("get", "pdb", "-n", "rook-ceph", "rook-ceph-osd").stdout.splitlines()[1].split()
    assert pdbs[:4] == ["rook-ceph-osd", "N/A", "1", "1"]
    # a server-side dry run checks everything and changes nothing
    core = k8s[0]
    before = sorted(p.metadata.uid for p in core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node4").items)
    dry = fake_lab.kubectl("drain", "node4", "--ignore-daemonsets", "--delete-emptydir-data", "--dry-run=server")
    assert "node/node4 drained (server dry run)" in dry.stdout
    assert not core.read_node("node4").spec.unschedulable
    after = sorted(p.metadata.uid for p in core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node4").items
                   if p.metadata.deletion_timestamp is None)
    assert after == before


def test_kubectl_create_generators_send_protobuf(fake_lab, k8s):
    """kubectl's typed clients write protobuf: namespace, configmap, secret and serviceaccount decode."""
    import base64

    core = k8s[0]
    fake_lab.kubectl("create", "namespace", "made-by-kubectl")
    try:
        fake_lab.kubectl("create", "configmap", "-n", "made-by-kubectl", "cfg", "--from-literal=a=1")
        fake_lab.kubectl("create", "secret", "generic", "-n", "made-by-kubectl", "pw", "--from-literal=pw=hunter2")
        fake_lab.kubectl("create", "serviceaccount", "-n", "made-by-kubectl", "bot")
        assert core.read_namespace("made-by-kubectl").metadata.labels["kubernetes.io/metadata.name"] == "made-by-kubectl"
        assert core.read_namespaced_config_map("cfg", "made-by-kubectl").data == {"a": "1"}
        secret = core.read_namespaced_secret("pw", "made-by-kubectl")
        assert base64.b64decode(secret.data["pw"]) == b"hunter2" and secret.type == "Opaque"
        assert {sa.metadata.name for sa in core.list_namespaced_service_account("made-by-kubectl").items} == {"bot", "default"}
        refused = fake_lab.kubectl("create", "deployment", "-n", "made-by-kubectl", "web", "--image=nginx", check=False)
        assert refused.returncode != 0 and "unknown format" in refused.stderr  # 415: kinds it cannot decode
    finally:
        fake_lab.kubectl("delete", "namespace", "made-by-kubectl")


def test_kubectl_apply_and_delete_a_manifest(fake_lab, k8s, tmp_path):
    core = k8s[0]
    manifest = tmp_path / "hello.yaml"
    manifest.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: hello\n  namespace: demo\n"
                        "spec:\n  replicas: 2\n  selector:\n    matchLabels: {app: hello}\n  template:\n"
                        "    metadata:\n      labels: {app: hello}\n    spec:\n      containers:\n"
                        "      - name: hello\n        image: nginx:1.25\n")
    assert "deployment.apps/hello created" in fake_lab.kubectl("apply", "-f", str(manifest)).stdout

    def running(n: int) -> bool:
        pods = [p for p in core.list_namespaced_pod("demo", label_selector="app=hello").items
                if not p.metadata.deletion_timestamp]
        return len(pods) == n and all(p.status.phase == "Running" for p in pods)
    wait_until(lambda: running(2), timeout=10, what="2 hello pods")
    manifest.write_text(manifest.read_text().replace("replicas: 2", "replicas: 1"))
    assert "deployment.apps/hello configured" in fake_lab.kubectl("apply", "-f", str(manifest)).stdout
    wait_until(lambda: running(1), timeout=10, what="1 hello pod")
    fake_lab.kubectl("delete", "-f", str(manifest))
    wait_until(lambda: not core.list_namespaced_pod("demo", label_selector="app=hello").items, timeout=15,
               what="hello pods gone with their Deployment")


# -- CRUD, errors, patch, watch, leases ----------------------------------------------------------
def test_status_bodies_for_errors(fake_lab, k8s):
    core, _, _, coord, _ = k8s
    status, body = api_error(core.read_namespaced_pod, "p1", "demo")
    assert (status, body) == (404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                    "message": 'pods "p1" not found', "reason": "NotFound",
                                    "details": {"name": "p1", "kind": "pods"}, "code": 404})
    status, body = api_error(core.create_namespaced_pod, "demo", {
        "metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    assert status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    status, body = fake_lab.request("POST", "/api/v1/namespaces/demo/pods", {"metadata": {"name": "empty"}, "spec": {}})
    assert status == 422 and body["message"] == 'Pod "empty" is invalid: spec.containers: Required value'
    status, body = api_error(core.create_namespaced_pod, "nowhere", {
        "metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    assert status == 404 and body["message"] == 'namespaces "nowhere" not found'
    status, body = api_error(coord.read_namespaced_lease, "none", "kube-system")
    assert body["details"] == {"name": "none", "group": "coordination.k8s.io", "kind": "leases"}


def test_lease_lock_create_conflict_replace_delete(k8s):
    from kubernetes import client

    coord = k8s[3]
    lease = coord.create_namespaced_lease("kube-system", client.V1Lease(
        metadata=client.V1ObjectMeta(name="nodegate-test-lock"),
        spec=client.V1LeaseSpec(holder_identity="run-a", lease_duration_seconds=30)))
    assert lease.metadata.uid and lease.metadata.creation_timestamp and lease.metadata.resource_version
    status, body = api_error(coord.create_namespaced_lease, "kube-system", client.V1Lease(
        metadata=client.V1ObjectMeta(name="nodegate-test-lock")))
    assert (status, body["reason"]) == (409, "AlreadyExists")
    lease.spec.holder_identity = "run-b"
    taken = coord.replace_namespaced_lease("nodegate-test-lock", "kube-system", lease)
    assert taken.spec.holder_identity == "run-b"
    assert int(taken.metadata.resource_version) > int(lease.metadata.resource_version)
    status, body = api_error(coord.replace_namespaced_lease, "nodegate-test-lock", "kube-system", lease)
    assert (status, body["reason"]) == (409, "Conflict")
    status, body = api_error(coord.delete_namespaced_lease, "nodegate-test-lock", "kube-system",
                             body=client.V1DeleteOptions(preconditions=client.V1Preconditions(
                                 resource_version=lease.metadata.resource_version)))
    assert status == 409
    coord.delete_namespaced_lease("nodegate-test-lock", "kube-system", body=client.V1DeleteOptions(
        preconditions=client.V1Preconditions(resource_version=taken.metadata.resource_version)))
    assert api_error(coord.read_namespaced_lease, "nodegate-test-lock", "kube-system")[0] == 404


def test_patch_strategic_merge_and_json(fake_lab, k8s):
    core = k8s[0]
    core.patch_node("node3", {"metadata": {"labels": {"nodegate.io/test": "smp"}}})  # strategic merge
    assert core.read_node("node3").metadata.labels["nodegate.io/test"] == "smp"
    assert core.read_node("node3").metadata.labels["kubernetes.io/hostname"] == "node3"
    status, _ = fake_lab.request("PATCH", "/api/v1/nodes/node3", {"metadata": {"labels": {"nodegate.io/test": None}}},
                                 content_type="application/merge-patch+json")
    assert status == 200
    assert "nodegate.io/test" not in core.read_node("node3").metadata.labels
    core.patch_node("node3", [{"op": "add", "path": "/metadata/annotations/nodegate.io~1step", "value": "drain"}])
    assert core.read_node("node3").metadata.annotations["nodegate.io/step"] == "drain"
    status, body = api_error(core.patch_node, "node3", [{"op": "test", "path": "/spec/podCIDR", "value": "x"}])
    assert status == 422 and body["reason"] == "Invalid"
    core.patch_node("node3", [{"op": "remove", "path": "/metadata/annotations/nodegate.io~1step"}])


def test_watch_sees_changes_after_a_list(k8s):
    from kubernetes import client, watch

    core, coord = k8s[0], k8s[3]
    listing = coord.list_namespaced_lease("default")
    seen: list[tuple[str, str]] = []

    def follow() -> None:
        w = watch.Watch()
        for event in w.stream(coord.list_namespaced_lease, "default", resource_version=listing.metadata.resource_version,
                              field_selector="metadata.name=watched", timeout_seconds=10):
            seen.append((event["type"], event["object"].spec.holder_identity or ""))
            if event["type"] == "DELETED":
                w.stop()

    thread = threading.Thread(target=follow)
    thread.start()
    # no wait for the watch to connect: it resumes from the listing's resourceVersion, so the
    # server replays whatever happened before it did
    coord.create_namespaced_lease("default", client.V1Lease(metadata=client.V1ObjectMeta(name="ignored")))
    coord.create_namespaced_lease("default", client.V1Lease(metadata=client.V1ObjectMeta(name="watched"),
                                                            spec=client.V1LeaseSpec(holder_identity="a")))
    coord.patch_namespaced_lease("watched", "default", {"spec": {"holderIdentity": "b"}})
    coord.delete_namespaced_lease("watched", "default")
    coord.delete_namespaced_lease("ignored", "default")
    thread.join(timeout=15)
    assert seen == [("ADDED", "a"), ("MODIFIED", "b"), ("DELETED", "b")]
    assert core.list_namespaced_event("default").items is not None


def test_filtered_watch_reports_objects_entering_and_leaving(k8s):
    from kubernetes import client, watch

    coord = k8s[3]
    listing = coord.list_namespaced_lease("default")
    seen: list[str] = []

    def follow() -> None:
        w = watch.Watch()
        for event in w.stream(coord.list_namespaced_lease, "default", label_selector="team=a",
                              resource_version=listing.metadata.resource_version, timeout_seconds=10):
            seen.append(event["type"])
            if len(seen) == 3:
                w.stop()

    thread = threading.Thread(target=follow)
    thread.start()
    # no wait for the watch to connect: it resumes from the listing's resourceVersion, so the
    # server replays whatever happened before it did
    coord.create_namespaced_lease("default", client.V1Lease(metadata=client.V1ObjectMeta(
        name="teamed", labels={"team": "a"})))
    coord.patch_namespaced_lease("teamed", "default", {"metadata": {"labels": {"team": "b"}}})
    coord.patch_namespaced_lease("teamed", "default", {"metadata": {"labels": {"team": "a"}}})
    thread.join(timeout=15)
    coord.delete_namespaced_lease("teamed", "default")
    assert seen == ["ADDED", "DELETED", "ADDED"]


def test_logs_are_text_plain_and_name_containers(fake_lab, k8s):
    core = k8s[0]
    pod = core.list_namespaced_pod("demo", label_selector="run=debug-shell").items[0]
    with apiclient.urlopen(fake_lab.config, f"/api/v1/namespaces/demo/pods/{pod.metadata.name}/log") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert resp.read().decode().strip()
    csi = core.list_namespaced_pod("rook-ceph", label_selector="app=csi-rbdplugin").items[0]
    status, body = api_error(core.read_namespaced_pod_log, csi.metadata.name, "rook-ceph")
    assert status == 400 and "choose one of: [driver-registrar csi-rbdplugin liveness-prometheus]" in body["message"]
    bad = urllib.request.Request(f"{fake_lab.config.api_url}/api/v1/nodes",
                                 headers={"Authorization": "Bearer wrong"})
    with pytest.raises(urllib.error.HTTPError) as info:
        apiclient.urlopen(fake_lab.config, bad)
    assert info.value.code == 401


def test_exec_runs_argv_and_returns_exit_codes(k8s):
    from kubernetes.stream import stream

    core = k8s[0]
    tools = core.list_namespaced_pod("rook-ceph", label_selector="app=rook-ceph-tools").items[0].metadata.name
    ws = stream(core.connect_get_namespaced_pod_exec, tools, "rook-ceph", command=["ceph", "--version"],
                stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    ws.run_forever(timeout=30)
    assert ws.returncode == 0 and ws.read_stdout().startswith("ceph version 16.2.")
    # argv is never given to a shell: `;` is an argument, not a separator
    ws = stream(core.connect_get_namespaced_pod_exec, tools, "rook-ceph", command=["ceph", "--version;", "id"],
                stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    ws.run_forever(timeout=30)
    assert ws.returncode != 0 and "uid=" not in ws.read_stdout()
    ws = stream(core.connect_get_namespaced_pod_exec, tools, "rook-ceph", command=["sh", "-c", "id"],
                stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    ws.run_forever(timeout=30)
    assert ws.returncode == 126 and "executable file not found" in ws.read_stdout()


def test_kubectl_exec_and_scale(fake_lab, k8s):
    core = k8s[0]
    tools = core.list_namespaced_pod("rook-ceph", label_selector="app=rook-ceph-tools").items[0].metadata.name
    out = fake_lab.kubectl("exec", "-n", "rook-ceph", tools, "--", "ceph", "--version")
    assert out.stdout.startswith("ceph version 16.2.")
    failed = fake_lab.kubectl("exec", "-n", "rook-ceph", tools, "--", "ceph", "--no-such-flag", check=False)
    assert failed.returncode != 0 and "command terminated with exit code" in failed.stderr
    fake_lab.kubectl("scale", "-n", "demo", "deployment/web", "--replicas=4")
    wait_until(lambda: len(core.list_namespaced_pod("demo", label_selector="app=web").items) == 4, timeout=10,
               what="4 web pods")
    scale = json.loads(fake_lab.kubectl("get", "--raw", "/apis/apps/v1/namespaces/demo/deployments/web/scale").stdout)
    assert (scale["kind"], scale["spec"]["replicas"], scale["status"]["selector"]) == ("Scale", 4, "app=web")
    fake_lab.kubectl("scale", "-n", "demo", "deployment/web", "--replicas=3")
    wait_until(lambda: len([p for p in core.list_namespaced_pod("demo", label_selector="app=web").items
                            if not p.metadata.deletion_timestamp]) == 3, timeout=10, what="back to 3 web pods")


# -- drain, eviction, controllers ---------------------------------------------------------------
def test_drain_retries_a_pdb_refusal_then_moves_pods(fake_lab, k8s):
    core = k8s[0]
    wait_until(lambda: settled(core), timeout=20, what="workloads settled")
    before = {p.metadata.name: p for p in core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node4").items}
    ds_before = {n for n, p in before.items() if p.metadata.owner_references[0].kind == "DaemonSet"}
    movable = {n for n, p in before.items() if p.metadata.owner_references[0].kind == "ReplicaSet"
               and not n.startswith("rook-ceph-osd-")}
    assert movable and any(n.startswith("cache-") for n in movable)
    # The seed's bare pod is on node3: node3 needs --force, node4 exactly the two flags.
    refused = fake_lab.kubectl("drain", "node3", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=5s",
                               check=False)
    assert refused.returncode != 0 and "declare no controller (use --force to override): demo/debug-shell" in refused.stderr
    fake_lab.kubectl("uncordon", "node3")

    fake_lab.set_faults({"pdb-block": {"nodes": ["node4"], "since": time.time()}})
    wait_until(lambda: core.list_pod_for_all_namespaces(label_selector="lab.nodegate.io/pdb-block=node4").items,
               timeout=5, what="pdb-block labels")
    block = k8s[2].read_namespaced_pod_disruption_budget("nodegate-lab-pdb-block", "demo")
    wait_until(lambda: k8s[2].read_namespaced_pod_disruption_budget("nodegate-lab-pdb-block", "demo")
               .status.disruptions_allowed == 0 and block.spec.min_available >= 1, timeout=5, what="block PDB status")
    clear_at = time.monotonic() + 6
    timer = threading.Timer(6, fake_lab.set_faults, args=({},))
    timer.start()
    try:
        out = fake_lab.kubectl("drain", "node4", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s",
                               timeout=90)
    finally:
        timer.cancel()
        fake_lab.set_faults({})
    text = out.stdout + out.stderr
    assert "Cannot evict pod as it would violate the pod's disruption budget." in text
    assert "(will retry after 5s)" in text
    assert time.monotonic() >= clear_at - 0.5, "drained only once the block was cleared"
    assert "node/node4 drained" in out.stdout
    # cleared: no block PDB and no block labels are left behind
    assert not [p for p in k8s[2].list_pod_disruption_budget_for_all_namespaces().items
                if p.metadata.name == "nodegate-lab-pdb-block"]
    assert not core.list_pod_for_all_namespaces(label_selector="lab.nodegate.io/pdb-block").items
    after = {p.metadata.name: p for p in core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node4").items}
    assert set(after) == ds_before  # DaemonSet pods stay; everything else left
    def replaced() -> bool:
        pods = core.list_namespaced_pod("demo").items
        cache = [p for p in pods if p.metadata.name.startswith("cache-")]
        return len(cache) == 1 and cache[0].spec.node_name == "node3" and cache[0].status.phase == "Running"
    wait_until(replaced, timeout=10, what="cache replaced on node3")
    osd = [p for p in core.list_namespaced_pod("rook-ceph", label_selector="app=rook-ceph-osd,osd=3").items]
    assert len(osd) == 1 and osd[0].spec.node_name is None and osd[0].status.phase == "Pending"
    assert "node(s) were unschedulable" in osd[0].status.conditions[0].message
    fake_lab.kubectl("uncordon", "node4")
    wait_until(lambda: (core.list_namespaced_pod("rook-ceph", label_selector="osd=3").items[0].spec.node_name == "node4"),
               timeout=10, what="OSD 3 back on node4 after uncordon")
    assert "SchedulingDisabled" not in fake_lab.kubectl("get", "node", "node4").stdout


def test_eviction_is_graceful_and_respects_the_budget(fake_lab, k8s):
    from kubernetes import client

    core, _, policy, _, _ = k8s
    wait_until(lambda: settled(core), timeout=20, what="workloads settled")
    web = core.list_namespaced_pod("demo", label_selector="app=web").items
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=web[0].metadata.name, namespace="demo"))
    core.create_namespaced_pod_eviction(web[0].metadata.name, "demo", body)
    evicted = core.read_namespaced_pod(web[0].metadata.name, "demo")
    assert evicted.metadata.deletion_timestamp is not None and evicted.metadata.deletion_grace_period_seconds == 2
    # minAvailable 2 of 3 and one terminating: the next one must wait for the replacement.
    second = web[1].metadata.name
    status, body2 = api_error(core.create_namespaced_pod_eviction, second, "demo", client.V1Eviction(
        metadata=client.V1ObjectMeta(name=second, namespace="demo")))
    assert status == 429
    assert body2["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert body2["reason"] == "TooManyRequests"
    assert body2["details"]["causes"] == [{"reason": "DisruptionBudget",
                                           "message": "The disruption budget web needs 2 healthy pods and has 2 currently"}]
    pdb = policy.read_namespaced_pod_disruption_budget("web", "demo")
    assert (pdb.status.disruptions_allowed, pdb.status.current_healthy, pdb.status.desired_healthy) == (0, 2, 2)
    t0 = time.monotonic()
    wait_until(lambda: not [p for p in core.list_namespaced_pod("demo", label_selector="app=web").items
                            if p.metadata.name == web[0].metadata.name], timeout=10, what="evicted pod gone")
    assert time.monotonic() - t0 > 0.5  # gone after its grace period, not at once
    wait_until(lambda: settled(core), timeout=10, what="replacement ready")
    core.create_namespaced_pod_eviction(second, "demo", client.V1Eviction(
        metadata=client.V1ObjectMeta(name=second, namespace="demo")))
    # policy/v1beta1 Eviction bodies are still accepted (kubectl before 1.22 sends them)
    wait_until(lambda: settled(core), timeout=10, what="second replacement ready")
    third = [p for p in core.list_namespaced_pod("demo", label_selector="app=web").items
             if not p.metadata.deletion_timestamp][0].metadata.name
    code, body3 = raw_eviction(fake_lab, third)
    assert (code, body3) == (201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
    assert api_error(core.create_namespaced_pod_eviction, "nope", "demo", client.V1Eviction(
        metadata=client.V1ObjectMeta(name="nope", namespace="demo")))[0] == 404


def raw_eviction(fake_lab, name: str) -> tuple[int, dict]:
    return apiclient.request(fake_lab.config, "POST", f"/api/v1/namespaces/demo/pods/{name}/eviction",
                             {"apiVersion": "policy/v1beta1", "kind": "Eviction",
                              "metadata": {"name": name, "namespace": "demo"}})


# -- the node lifecycle and csi-rbdplugin -------------------------------------------------------
def node_ready(core, name: str) -> str:
    node = core.read_node(name)
    return next(c.status for c in node.status.conditions if c.type == "Ready")


def test_reboot_goes_unknown_then_ready_with_a_new_boot_id(fake_lab, k8s):
    core = k8s[0]
    old_boot = core.read_node("node3").status.node_info.boot_id
    proxy = [p for p in core.list_namespaced_pod("kube-system", label_selector="k8s-app=kube-proxy").items
             if p.spec.node_name == "node3"][0]
    # A pod tolerating the unreachable taint for 1 s only is evicted by the taint manager.
    core.create_namespaced_pod("demo", {"metadata": {"name": "short-toleration"}, "spec": {
        "nodeName": "node3", "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": "busybox:1.36"}],
        "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                         "tolerationSeconds": 1}]}})
    wait_until(lambda: core.read_namespaced_pod("short-toleration", "demo").status.phase == "Running", timeout=5,
               what="short-toleration running")
    fake_lab.set_state("node3", up=False)
    wait_until(lambda: node_ready(core, "node3") == "Unknown", timeout=30, what="node3 Ready=Unknown")
    assert "NotReady" in fake_lab.kubectl("get", "node", "node3").stdout
    taints = {(t.key, t.effect) for t in core.read_node("node3").spec.taints or []}
    assert ("node.kubernetes.io/unreachable", "NoExecute") in taints
    status, body = api_error(core.read_namespaced_pod_log, proxy.metadata.name, "kube-system")
    assert status == 500 and "dial tcp" in body["message"] and ":10250: connect: connection refused" in body["message"]
    wait_until(lambda: core.read_namespaced_pod("short-toleration", "demo").metadata.deletion_timestamp, timeout=5,
               what="taint manager marks short-toleration for deletion")
    assert proxy.metadata.name in {p.metadata.name for p in core.list_namespaced_pod("kube-system").items
                                   if p.metadata.deletion_timestamp is None}
    # The Kubespray stand-in records the kubelet it installed (and restarts it): the node reports that version.
    (fake_lab.node_dir("node3") / "root/etc/kubernetes").mkdir(parents=True, exist_ok=True)
    (fake_lab.node_dir("node3") / "root/etc/kubernetes/kubelet-version").write_text("v1.25.16\n")
    new_boot = fake_lab.set_state("node3", up=True, new_boot=True)["boot_id"]
    wait_until(lambda: node_ready(core, "node3") == "True", timeout=5, what="node3 Ready again")
    info = core.read_node("node3").status.node_info
    assert info.boot_id == new_boot != old_boot
    assert info.kubelet_version == "v1.25.16"
    # The DaemonSet pod stayed on its node and was restarted by the new boot.
    def proxy_back():
        pod = core.read_namespaced_pod(proxy.metadata.name, "kube-system")
        return pod.status.phase == "Running" and pod.status.container_statuses[0].restart_count == 1 and \
            pod.status.container_statuses[0].ready
    wait_until(proxy_back, timeout=10, what="kube-proxy restarted on node3")
    # the kubelet back on the node finishes the deletion it could not do while down
    wait_until(lambda: "short-toleration" not in {p.metadata.name for p in core.list_namespaced_pod("demo").items},
               timeout=10, what="short-toleration gone once node3 is back")
    reasons = {e.reason for e in core.list_namespaced_event("default", field_selector="involvedObject.name=node3").items}
    assert {"Rebooted", "NodeNotReady", "NodeReady"} <= reasons


def csi_on(core, node: str):
    return [p for p in core.list_namespaced_pod("rook-ceph", label_selector="app=csi-rbdplugin").items
            if p.spec.node_name == node][0]


def plugin_status(pod):
    return next(c for c in pod.status.container_statuses if c.name == "csi-rbdplugin")


def test_csi_rbdplugin_crash_loops_on_noble_with_old_cephcsi(fake_lab, k8s):
    core = k8s[0]
    fake_lab.set_release("node2", NOBLE)
    fake_lab.set_state("node2", up=False)
    wait_until(lambda: node_ready(core, "node2") != "True", timeout=10, what="node2 seen down by the server")
    fake_lab.set_state("node2", up=True, new_boot=True)
    wait_until(lambda: core.read_node("node2").status.node_info.os_image == "Ubuntu 24.04.1 LTS", timeout=5,
               what="osImage read at boot")

    def crashing():
        st = plugin_status(csi_on(core, "node2"))
        return st.restart_count >= 1 and not st.ready and st.state.waiting is not None and \
            st.state.waiting.reason == "CrashLoopBackOff"
    wait_until(crashing, timeout=20, what="csi-rbdplugin CrashLoopBackOff on node2")
    pod = csi_on(core, "node2")
    assert "CrashLoopBackOff" in fake_lab.kubectl("get", "pod", "-n", "rook-ceph", pod.metadata.name).stdout
    backoff = [e for e in core.list_namespaced_event("rook-ceph", field_selector=f"involvedObject.name={pod.metadata.name}").items
               if e.reason == "BackOff"]
    assert len(backoff) == 1 and backoff[0].type == "Warning" and backoff[0].count >= 1  # aggregated, not repeated
    log = core.read_namespaced_pod_log(pod.metadata.name, "rook-ceph", container="driver-registrar")
    assert "Still connecting to unix:///csi/csi.sock" in log
    assert "could not insert 'rbd'" in core.read_namespaced_pod_log(pod.metadata.name, "rook-ceph",
                                                                     container="csi-rbdplugin", previous=True)
    # Elsewhere (20.04) the plugin runs; the csi-rbd-broken fault breaks it whatever the release.
    assert plugin_status(csi_on(core, "node1")).ready
    fake_lab.set_faults({"csi-rbd-broken": {"nodes": ["node1"], "since": time.time()}})
    wait_until(lambda: not plugin_status(csi_on(core, "node1")).ready, timeout=5, what="fault breaks node1's plugin")
    fake_lab.set_faults({})
    wait_until(lambda: plugin_status(csi_on(core, "node1")).ready, timeout=5, what="node1's plugin back")
    assert plugin_status(csi_on(core, "node1")).restart_count >= 1
    # The fix: cephcsi v3.12 (Rook v1.15). The DaemonSet rolls; the crash-looping pod is replaced first.
    apps = k8s[1]
    apps.patch_namespaced_daemon_set("csi-rbdplugin", "rook-ceph", {"spec": {"template": {"spec": {"containers": [
        {"name": "csi-rbdplugin", "image": "quay.io/cephcsi/cephcsi:v3.12.3"}]}}}})

    def rolled() -> bool:
        ds = apps.read_namespaced_daemon_set("csi-rbdplugin", "rook-ceph")
        return ds.status.updated_number_scheduled == 4 and ds.status.number_ready == 4
    wait_until(rolled, timeout=40, what="csi-rbdplugin rolled to v3.12.3 and ready everywhere")
    assert plugin_status(csi_on(core, "node2")).ready
    assert core.read_node("node2").status.node_info.os_image == "Ubuntu 24.04.1 LTS"


def test_api_flaky_fails_requests_then_recovers(fake_lab, k8s):
    url = "/api/v1/namespaces"
    fake_lab.set_faults({"api-flaky": {"nodes": [], "since": time.time(), "ratio": 1.0, "mode": "503"}})
    with pytest.raises(urllib.error.HTTPError) as info:
        apiclient.urlopen(fake_lab.config, url, timeout=5)
    assert info.value.code == 503 and json.loads(info.value.read())["reason"] == "ServiceUnavailable"
    fake_lab.set_faults({"api-flaky": {"nodes": [], "since": time.time(), "ratio": 1.0, "mode": "drop"}})
    with pytest.raises((ConnectionError, urllib.error.URLError, http_client_errors())):
        apiclient.urlopen(fake_lab.config, url, timeout=5)
    fake_lab.set_faults({"api-flaky": {"nodes": [], "since": time.time() - 10, "ratio": 1.0, "for_s": 5}})
    # expired: answered again
    with apiclient.urlopen(fake_lab.config, url, timeout=5) as resp:
        assert json.loads(resp.read())["kind"] == "NamespaceList"
    fake_lab.set_faults({})


def http_client_errors():
    import http.client

    return http.client.HTTPException


def test_restarted_server_keeps_the_cluster(fake_lab, k8s):
    """The supervisor restarts a crashed server: objects come back from DIR/apiserver-state.json."""
    from kubernetes.client.exceptions import ApiException

    core = k8s[0]
    wait_until(lambda: settled(core), timeout=20, what="workloads settled")
    fake_lab.kubectl("cordon", "node2")
    pods = {p.metadata.name: (p.metadata.uid, p.status.pod_ip) for p in core.list_pod_for_all_namespaces().items}
    old_rv = core.list_namespace().metadata.resource_version
    stop_server(fake_lab.proc)  # SIGTERM: it saves on the way out
    fake_lab.proc = start_server(fake_lab.config)
    try:
        assert core.read_node("node2").spec.unschedulable
        wait_until(lambda: settled(core), timeout=10, what="pods running after the restart")
        again = {p.metadata.name: (p.metadata.uid, p.status.pod_ip) for p in core.list_pod_for_all_namespaces().items}
        assert again == pods  # same pods, same addresses: nothing restarted
        assert int(core.list_namespace().metadata.resource_version) > int(old_rv)
        with pytest.raises(ApiException) as info:
            core.list_namespace(watch=True, resource_version=old_rv, timeout_seconds=1)
        assert info.value.status == 410
        wait_until(lambda: settled(core), timeout=10, what="pods still running after the restart")
    finally:
        fake_lab.kubectl("uncordon", "node2")
