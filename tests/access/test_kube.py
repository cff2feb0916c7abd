"""nodegate.cluster.kube.client against the lab's real API server over HTTP (the `api_lab` fixture: the server
alone, its nodes driven by state.json writes as the supervisor would). No mocks: every call
goes through the official client to the server, and test set-up that nodegate.cluster.kube does not offer
(creating a PodDisruptionBudget, scaling) is done with plain HTTP requests to the same server
(`api_lab.request`)."""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import pytest
from labkit import wait_until

from nodegate.cluster.kube.client import Kube
from nodegate.cluster.kube.drain import DrainOptions
from nodegate.cluster.kube.errors import DrainError, NotFoundError
from nodegate.cluster.kube.models import CORDONED_BY_ANNOTATION
from nodegate.cluster.lock import LockHeld, LockKeeper, acquire_lock, read_lock, release_lock, renew_lock
from nodegate.core.errors import PermanentError, TransientError, UsageError
from nodegate.core.waits import WaitTimeout

# -- helpers ----------------------------------------------------------------------------------

def fault(api_lab, name: str, *, node: str | None = None, clear: bool = False, **params) -> None:
    """Set or clear a lab fault the way `nodegate lab fault` does (its faults.json, which the API
    server re-reads); the CLI itself insists on a supervisor, which the api_lab server runs without."""
    from nodegate.lab import faults

    with api_lab.faults_applied():   # returns once the server has read the change
        if clear:
            faults.clear_fault(api_lab.config, name, node=node)
        else:
            faults.set_fault(api_lab.config, name, node=node, params=params)


PDBS = "/apis/policy/v1/namespaces/demo/poddisruptionbudgets"


def make_pdb(api_lab, name: str, selector: dict, *, min_available: int) -> None:
    code, out = api_lab.request("POST", PDBS, {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                                               "metadata": {"name": name, "namespace": "demo"},
                                               "spec": {"minAvailable": min_available,
                                                        "selector": {"matchLabels": selector}}})
    assert code == 201, out


def delete_pdb(api_lab, name: str) -> None:
    api_lab.request("DELETE", f"{PDBS}/{name}")


def set_min_available(api_lab, name: str, value: int) -> None:
    code, out = api_lab.request("PATCH", f"{PDBS}/{name}", {"spec": {"minAvailable": value}},
                                content_type="application/merge-patch+json")
    assert code == 200, out


def min_available(api_lab, name: str) -> int:
    code, out = api_lab.request("GET", f"{PDBS}/{name}")
    assert code == 200, out
    return out["spec"]["minAvailable"]


def pdb_allowed(api_lab, name: str) -> int | None:
    code, out = api_lab.request("GET", f"{PDBS}/{name}")
    return (out.get("status") or {}).get("disruptionsAllowed") if code == 200 else None


def ready_pods(kube: Kube, selector: str) -> list:
    return [p for p in kube.list_pods(namespace="demo", selector=selector) if p.ready and not p.deleting]


@pytest.fixture(scope="module")
def kube(api_lab):
    k = Kube.connect(settings=api_lab.settings())
    yield k
    k.close()


@pytest.fixture(scope="module")
def settled(api_lab, kube):
    """Every node Ready and the demo workload (3 web replicas) running before the tests read it."""
    wait_until(lambda: all(n.is_ready for n in kube.list_nodes()) and len(kube.list_nodes()) == 4,
               timeout=20, what="4 Ready nodes")
    wait_until(lambda: len(ready_pods(kube, "app=web")) == 3, timeout=20, what="3 ready web pods")
    return kube


def write_kubeconfig(tmp_path, api_lab, **changes) -> "object":
    import yaml

    data = yaml.safe_load(api_lab.kubeconfig.read_text())
    if "server" in changes:
        data["clusters"][0]["cluster"]["server"] = changes["server"]
    if "token" in changes:
        data["users"][0]["user"]["token"] = changes["token"]
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(data))
    return path


# -- kubeconfig and startup errors ----------------------------------------------------------------

def test_construction_is_free_and_import_does_not_load_the_client(tmp_path):
    """Collecting checks must stay cheap: importing the client module and building a Kube loads
    neither the kubernetes client nor its transport stack. Judged by what gets imported, not by a
    wall-clock budget (a timing assertion fails on a loaded machine; bench/startup.py measures it)."""
    import subprocess
    import sys

    heavy = ("kubernetes", "urllib3", "pydantic", "yaml", "websocket", "paramiko")
    code = ("import sys; import nodegate.cluster.kube.client as k; "
            "from nodegate.profile.model import KubeSettings; "
            "k.Kube(settings=KubeSettings(kubeconfig='/nonexistent')); "
            f"print(' '.join(sorted(m for m in {heavy!r} if m in sys.modules)) or '-')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "-", f"importing nodegate.cluster.kube.client (or building a Kube) loaded {out}"


def test_missing_kubeconfig_is_a_usage_error_naming_the_fix(api_lab, tmp_path):
    kube = Kube(settings=api_lab.settings(kubeconfig=tmp_path / "nope"))
    with pytest.raises(UsageError) as err:
        kube.list_nodes()
    assert f"kubeconfig {tmp_path / 'nope'} does not exist" in str(err.value)
    assert "[kubernetes] kubeconfig" in err.value.fix


def test_kubeconfig_that_is_not_yaml(api_lab, tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nclusters: [unclosed\n")
    with pytest.raises(UsageError) as err:
        Kube.connect(settings=api_lab.settings(kubeconfig=path))
    assert "is not valid YAML" in err.value.message and err.value.fix


def test_kubeconfig_that_is_binary(api_lab, tmp_path):
    path = tmp_path / "kubeconfig.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe\x00binary")
    with pytest.raises(UsageError, match="is not a text file"):
        Kube.connect(settings=api_lab.settings(kubeconfig=path))


def test_kubeconfig_that_is_a_directory(api_lab, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        Kube.connect(settings=api_lab.settings(kubeconfig=tmp_path))


def test_unknown_context_lists_the_known_ones(api_lab):
    with pytest.raises(UsageError) as err:
        Kube.connect(settings=api_lab.settings(context="prod"))
    assert "context 'prod' is not in kubeconfig" in err.value.message
    assert "nodegate-lab" in err.value.message and "[kubernetes] context" in err.value.fix


def test_context_pointing_at_a_missing_cluster_entry(api_lab, tmp_path):
    import yaml

    data = yaml.safe_load(api_lab.kubeconfig.read_text())
    data["contexts"][0]["context"]["cluster"] = "no-such-cluster"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError) as err:
        Kube.connect(settings=api_lab.settings(kubeconfig=path))
    assert "cannot use context 'nodegate-lab'" in err.value.message and "cluster" in err.value.fix


def test_unreachable_cluster_at_startup_is_a_usage_error(api_lab, tmp_path, caplog):
    # Nothing listens on this loopback port: connection refused, the check's few quick tries, then a clear stop.
    from nodegate.core.retry import KUBE_CHECK_ATTEMPTS

    net = api_lab.config.net
    path = write_kubeconfig(tmp_path, api_lab, server=f"http://127.{net}.3.1:1")
    kube = Kube(settings=api_lab.settings(kubeconfig=path))
    kube.load()  # the kubeconfig itself is fine: loading makes no request
    caplog.set_level(logging.WARNING, logger="nodegate.kube")
    with pytest.raises(UsageError) as err:
        kube.check()
    # the check's quick tries, not a request's full retry budget
    assert retry_lines(caplog) == [f"/{KUBE_CHECK_ATTEMPTS} failed"] * (KUBE_CHECK_ATTEMPTS - 1), caplog.text
    assert "cannot be reached" in err.value.message and "refused the connection" in err.value.message
    assert f"http://127.{net}.3.1:1" in err.value.message
    assert "kubectl --kubeconfig" in err.value.fix


def test_wrong_token_is_a_usage_error_and_never_shows_the_token(api_lab, tmp_path, caplog):
    secret = "wrongtoken-" + uuid.uuid4().hex
    path = write_kubeconfig(tmp_path, api_lab, token=secret)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UsageError) as err:
        Kube.connect(settings=api_lab.settings(kubeconfig=path))
    assert "401" in err.value.message and "token" in err.value.fix
    assert secret not in str(err.value) and secret not in caplog.text


# -- nodes --------------------------------------------------------------------------------------

def test_nodes_conditions_and_node_info(api_lab, settled):
    kube = settled
    nodes = {n.name: n for n in kube.list_nodes()}
    assert sorted(nodes) == [n.name for n in api_lab.config.nodes]
    node1 = kube.node("node1")
    assert node1.is_ready and node1.ready == "True" and not node1.pressures
    assert {c.type for c in node1.conditions} >= {"Ready", "MemoryPressure", "DiskPressure", "PIDPressure"}
    # nodeInfo is the kubelet's report: its bootID is the boot the lab node is in now.
    assert node1.info.boot_id == api_lab.state("node1")["boot_id"] == node1.boot_id
    assert node1.info.kubelet_version == api_lab.config.kube_version
    assert node1.info.os_image and node1.info.operating_system == "linux" and node1.info.machine_id
    assert ("InternalIP", api_lab.config.nodes[0].address) in node1.addresses
    assert node1.roles, "the lab's nodes carry node-role labels"
    assert kube.get_node("node99") is None


def test_unknown_node_names_the_known_ones(settled):
    with pytest.raises(NotFoundError) as err:
        settled.node("node99")
    assert "no node 'node99'" in err.value.message and "node1" in err.value.message


def test_cordon_records_who_cordoned_and_uncordon_only_undoes_ours(settled):
    kube = settled
    first = kube.cordon("node2", by="run-a")
    assert first.changed and first.unschedulable and first.cordoned_by == "run-a"
    assert kube.node("node2").unschedulable and kube.node("node2").annotations[CORDONED_BY_ANNOTATION] == "run-a"
    again = kube.cordon("node2", by="run-b")
    assert not again.changed and again.cordoned_by == "run-a" and "already cordoned by run-a" in again.detail
    other = kube.uncordon("node2", only_if_cordoned_by="run-b")
    assert not other.changed and kube.node("node2").unschedulable and "cordoned by run-a" in other.detail
    mine = kube.uncordon("node2", only_if_cordoned_by="run-a")
    assert mine.changed and not kube.node("node2").unschedulable
    assert CORDONED_BY_ANNOTATION not in kube.node("node2").annotations

    # Cordoned by someone else (kubectl cordon: no record): nodegate leaves it cordoned.
    plain = kube.cordon("node2")
    assert plain.changed and plain.cordoned_by is None
    kept = kube.uncordon("node2", only_if_cordoned_by="run-a")
    assert not kept.changed and kube.node("node2").unschedulable and "not cordoned by nodegate" in kept.detail
    assert kube.uncordon("node2").changed and not kube.node("node2").unschedulable
    assert not kube.uncordon("node2").changed


def test_node_annotation_set_get_remove(settled):
    kube = settled
    value = json.dumps({"run": "r1", "step": "drain", "status": "done"})
    kube.set_node_annotation("node3", key="nodegate.io/upgrade", value=value)
    assert json.loads(kube.node_annotation("node3", key="nodegate.io/upgrade"))["step"] == "drain"
    kube.set_node_annotation("node3", key="nodegate.io/upgrade", value=None)
    assert kube.node_annotation("node3", key="nodegate.io/upgrade") is None


def test_watch_returns_once_ready_with_a_new_boot_id(api_lab, settled):
    """The wait returns on the Ready it watches for, with the new boot id; how soon after the API
    server made the node Ready is a figure of `make bench` (ready_latency_s, goal 1 s)."""
    kube = settled
    before = kube.node("node3")
    api_lab.set_state("node3", up=False)
    down = kube.watch_node("node3", until=lambda s: not s.is_ready, timeout=10)
    assert down.ready == "Unknown" and down.boot_id == before.boot_id

    # An independent observer polls the same server every 20 ms and notes when it first sees the
    # new boot Ready; the watch must return within 1 s of that moment.
    seen: dict[str, float] = {}
    stop = threading.Event()

    def observe() -> None:
        while not stop.is_set():
            code, node = api_lab.request("GET", "/api/v1/nodes/node3")
            info, conds = node["status"]["nodeInfo"], node["status"].get("conditions") or []
            if info["bootID"] != before.boot_id and any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                seen.setdefault("ready", time.monotonic())
                return
            time.sleep(0.02)

    observer = threading.Thread(target=observe, daemon=True)
    observer.start()
    written = time.monotonic()
    new = api_lab.set_state("node3", up=True)
    status = kube.wait_node_ready("node3", timeout=15, new_boot_id_than=before.boot_id)
    returned = time.monotonic()
    # The watch may return before the 20 ms poller's next look: let the observer see it too
    # (then the latency is negative: the watch was first).
    observer.join(timeout=5)
    stop.set()
    assert status.is_ready and status.boot_id == new["boot_id"] != before.boot_id
    assert "ready" in seen, "the observer never saw the node Ready"
    latency = returned - seen["ready"]
    print(f"watch latency from Ready to return: {latency * 1000:.0f} ms (boot to return {returned - written:.2f}s)")


def test_wait_for_ready_times_out_naming_what_it_saw(api_lab, settled):
    kube = settled
    api_lab.set_state("node3", up=False)
    try:
        kube.watch_node("node3", until=lambda s: not s.is_ready, timeout=10)
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as err:
            kube.wait_node_ready("node3", timeout=2.5, progress_every=1)
        assert time.monotonic() - started >= 2.4, "it waited out its limit"
        assert "node3" in err.value.last_seen and "Ready=" in err.value.last_seen
        assert "out of band" in err.value.fix
    finally:
        api_lab.set_state("node3", up=True)
        kube.wait_node_ready("node3", timeout=15)


# -- pods, PDBs, drain ---------------------------------------------------------------------------

def test_pods_on_a_node_by_field_selector(settled):
    kube = settled
    everywhere = kube.list_pods()
    for node in ("node1", "node4"):
        here = kube.list_pods(node=node)
        assert here and all(p.node == node for p in here)
        assert {p.ref for p in here} == {p.ref for p in everywhere if p.node == node}
        assert any(p.daemonset for p in here), "kube-proxy/calico run on every node"


def test_csi_rbdplugin_health(settled):
    health = settled.csi_rbdplugin("node1")
    assert health.pod is not None and health.pod.node == "node1"
    assert health.healthy and health.ready and not health.crash_looping, health.describe()
    assert settled.csi_rbdplugin("node1", selector="app=nothing-like-this").pod is None


def test_csi_rbdplugin_crash_loop_is_seen(api_lab, settled):
    kube = settled
    before = kube.csi_rbdplugin("node2")
    assert before.healthy, before.describe()
    fault(api_lab, "csi-rbd-broken", node="node2")
    try:
        broken = wait_until(lambda: (h := kube.csi_rbdplugin("node2")).crash_looping and h,
                            timeout=15, what="csi-rbdplugin CrashLoopBackOff on node2")
        assert not broken.healthy and not broken.ready and broken.crash_looping == ("csi-rbdplugin",)
        assert any("failed to load kernel module rbd" in line for line in broken.error_lines)
        assert "CrashLoopBackOff in csi-rbdplugin" in broken.describe()
        assert kube.csi_rbdplugin("node1").healthy, "only the faulted node's plugin fails"
    finally:
        fault(api_lab, "csi-rbd-broken", node="node2", clear=True)
    healed = wait_until(lambda: (h := kube.csi_rbdplugin("node2")).healthy and h, timeout=15, what="csi-rbdplugin healed")
    assert healed.restarts > before.restarts, "the crash loop left its restarts behind"


@pytest.mark.parametrize("selector, flag", [("run=debug-shell", "--force"),
                                             ("app=cache", "--delete-emptydir-data")])
def test_drain_refuses_up_front_what_the_flags_do_not_allow(settled, selector, flag):
    kube = settled
    pod = kube.list_pods(namespace="demo", selector=selector)[0]  # the unmanaged pod / the emptyDir pod
    target = pod.node
    before = {p.ref: p.uid for p in kube.list_pods(node=target)}
    try:
        with pytest.raises(DrainError) as err:
            kube.drain(target, options=DrainOptions(timeout_s=20))
        message = str(err.value)
        assert f"cannot drain node {target}" in message and flag in message and pod.ref in message
        refused = {o.pod for o in err.value.result.outcomes if o.action == "refused"}
        assert pod.ref in refused
        assert not err.value.result.evicted, "nothing is evicted when the drain is refused"
        after = {p.ref: p.uid for p in kube.list_pods(node=target)}
        assert {r: u for r, u in after.items() if r in before} == before, "no pod was touched"
        assert kube.node(target).unschedulable, "the node is left cordoned"
    finally:
        kube.uncordon(target)


def test_drain_blocked_by_a_pdb_retries_then_times_out_naming_pod_and_pdb(api_lab, settled):
    kube = settled
    web = ready_pods(kube, "app=web")
    target = web[0].node
    original = min_available(api_lab, "web")
    set_min_available(api_lab, "web", 3)  # the demo's own PDB now needs every replica
    try:
        wait_until(lambda: pdb_allowed(api_lab, "web") == 0, timeout=10, what="PDB demo/web allows nothing")
        blockers = kube.pods_blocking_eviction(target)
        assert any(b.pdb.ref == "demo/web" and b.pod.node == target for b in blockers)
        options = DrainOptions(delete_emptydir_data=True, force=True, timeout_s=3.0, pdb_retry_s=1.0)
        started = time.monotonic()
        with pytest.raises(DrainError) as err:
            kube.drain(target, options=options, cordon_by="run-pdb")
        took = time.monotonic() - started
        message = str(err.value)
        print(f"drain timed out after {took:.2f}s: {message}")
        assert took >= 3.0, took  # the limit is waited out
        assert f"drain of node {target} timed out" in message and "limit 3s" in message
        assert "demo/web-" in message and "PodDisruptionBudget demo/web needs 3 healthy pod(s) and has 3" in message
        assert "demo/web" in err.value.fix and "stays cordoned" in err.value.fix
        blocked = [o for o in err.value.result.outcomes if o.action == "blocked"]
        assert blocked and all(o.blocked_by == "demo/web" for o in blocked)
        assert max(o.attempts for o in blocked) >= 3, "a PDB refusal is asked again every pdb_retry_s"
        # and no more often, and not past the limit: 3 s / 1 s, and the first ask at 0 s
        assert max(o.attempts for o in blocked) <= 4, [o.attempts for o in blocked]
        assert kube.node(target).unschedulable and kube.node(target).cordoned_by == "run-pdb"
    finally:
        set_min_available(api_lab, "web", original)
        kube.uncordon(target)


def test_drain_blocked_by_the_lab_pdb_block_fault(api_lab, settled):
    kube = settled
    target = ready_pods(kube, "app=web")[0].node
    fault(api_lab, "pdb-block", node=target)
    try:
        wait_until(lambda: any(b.pdb.name == "nodegate-lab-pdb-block" for b in kube.pods_blocking_eviction(target)),
                   timeout=10, what="the fault's PDB")
        with pytest.raises(DrainError) as err:
            kube.drain(target, options=DrainOptions(delete_emptydir_data=True, force=True, timeout_s=2.0,
                                                    pdb_retry_s=0.5))
        assert "timed out" in err.value.message and "nodegate-lab-pdb-block" in err.value.message
        blocked = {o.pod for o in err.value.result.outcomes if o.action == "blocked"}
        assert blocked and all(ref.startswith(("demo/", "rook-ceph/", "kube-system/")) for ref in blocked)
    finally:
        fault(api_lab, "pdb-block", clear=True)
        kube.uncordon(target)


def test_two_pdbs_on_one_pod_stop_the_drain_at_once(api_lab, settled):
    kube = settled
    target = ready_pods(kube, "app=web")[0].node
    make_pdb(api_lab, "web-extra", {"app": "web"}, min_available=0)
    try:
        with pytest.raises(DrainError) as err:
            kube.drain(target, options=DrainOptions(delete_emptydir_data=True, force=True, timeout_s=30))
        refused = [o for o in err.value.result.outcomes if o.action == "refused"]
        assert refused and all(o.attempts == 1 for o in refused), \
            f"a permanent refusal is not asked again: {[(o.pod, o.attempts) for o in refused]}"
        assert "more than one PodDisruptionBudget" in err.value.message and "demo/web-" in err.value.message
        assert "kubectl get pdb" in err.value.fix
    finally:
        delete_pdb(api_lab, "web-extra")
        kube.uncordon(target)


def test_drain_waits_out_a_pdb_refusal_and_succeeds_when_it_allows(api_lab, settled):
    kube = settled
    wait_until(lambda: len(ready_pods(kube, "app=web")) == 3, timeout=20, what="3 ready web pods")
    web = ready_pods(kube, "app=web")
    target = web[0].node
    original = min_available(api_lab, "web")
    set_min_available(api_lab, "web", 3)
    wait_until(lambda: pdb_allowed(api_lab, "web") == 0, timeout=10, what="PDB demo/web allows nothing")
    # The PDB relents after ~2.5 s (as it would once the workload has more replicas elsewhere).
    release = threading.Timer(2.5, set_min_available, args=(api_lab, "web", original))
    release.start()
    try:
        result = kube.drain(target, options=DrainOptions(delete_emptydir_data=True, force=True, timeout_s=30,
                                                         pdb_retry_s=1.0), cordon_by="run-ok")
    finally:
        release.cancel()
        set_min_available(api_lab, "web", original)
    try:
        assert result.cordon is not None and result.cordon.changed
        assert result.outcomes and not [o for o in result.outcomes if o.action in ("blocked", "pending", "refused")]
        web_outcome = next(o for o in result.outcomes if o.pod == web[0].ref)
        assert web_outcome.action == "evicted" and web_outcome.attempts >= 2 and web_outcome.gone
        assert {o.reason for o in result.skipped} >= {"DaemonSet-managed"}
        assert any("ignoring DaemonSet-managed Pods" in w for w in result.warnings)
        left = [p for p in kube.list_pods(node=target) if not p.daemonset and not p.mirror]
        assert not left, f"evictable pods left on {target}: {[p.ref for p in left]}"
        kube.wait_pods_gone(target, timeout=5)
        print(result.evidence())
        # Each pod's own grace period (2 s for web) is waited out without --grace-period.
        assert web_outcome.seconds - web_outcome.evicted_s >= 1.5, result.evidence()
    finally:
        assert kube.uncordon(target, only_if_cordoned_by="run-ok").changed
    wait_until(lambda: len(ready_pods(kube, "app=web")) == 3, timeout=20, what="web back to 3 ready replicas")


def test_drain_with_every_flag_empties_the_node(api_lab, settled):
    kube = settled
    cache = kube.list_pods(namespace="demo", selector="app=cache")[0]   # emptyDir, from a Deployment
    target = cache.node
    bare = f"scratch-{uuid.uuid4().hex[:6]}"                           # no controller: needs --force
    code, out = api_lab.request("POST", "/api/v1/namespaces/demo/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": bare, "namespace": "demo"},
        "spec": {"nodeName": target, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "sh", "image": "busybox:1.36", "command": ["sleep", "infinity"]}]}})
    assert code == 201, out
    wait_until(lambda: any(p.name == bare and p.ready for p in kube.list_pods(node=target)), timeout=10, what="bare pod")
    pods = {p.ref: p for p in kube.list_pods(node=target)}
    result = kube.drain(target, options=DrainOptions(delete_emptydir_data=True, force=True, timeout_s=60),
                        cordon_by="run-all")
    try:
        actions = {o.pod: o.action for o in result.outcomes}
        assert all(actions[ref] == "skipped" for ref, p in pods.items() if p.daemonset)
        assert all(actions[ref] in ("evicted", "terminating") for ref, p in pods.items() if not p.daemonset)
        assert actions[f"demo/{bare}"] == "evicted" and actions[cache.ref] == "evicted"
        assert any("declare no controller" in w and bare in w for w in result.warnings)
        assert any("local storage" in w and cache.name in w for w in result.warnings)
        kube.wait_pods_gone(target, timeout=5)
        assert not kube.list_pods(namespace="demo", selector=None) or \
            all(p.name != bare for p in kube.list_pods(namespace="demo")), "an unmanaged pod is gone for good"
        print(result.evidence())
    finally:
        kube.uncordon(target, only_if_cordoned_by="run-all")
    # The Deployment brings its cache pod back on another node.
    wait_until(lambda: any(p.ready and p.node != target for p in kube.list_pods(namespace="demo", selector="app=cache")),
               timeout=20, what="cache pod running elsewhere")


def test_drain_grace_period_and_mirror_pods(api_lab, settled):
    kube = settled
    target = ready_pods(kube, "app=web")[0].node
    mirror = f"static-{uuid.uuid4().hex[:6]}-{target}"   # what the kubelet shows for a static pod
    code, out = api_lab.request("POST", "/api/v1/namespaces/kube-system/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": mirror, "namespace": "kube-system",
                     "annotations": {"kubernetes.io/config.mirror": "abc123", "kubernetes.io/config.source": "file"}},
        "spec": {"nodeName": target, "containers": [{"name": "etcd", "image": "quay.io/coreos/etcd:v3.5.6"}]}})
    assert code == 201, out
    pods_grace = {f"{p['metadata']['namespace']}/{p['metadata']['name']}":
                  p["spec"].get("terminationGracePeriodSeconds", 30)
                  for p in api_lab.request("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{target}")[1]["items"]}
    try:
        result = kube.drain(target, options=DrainOptions(delete_emptydir_data=True, force=True, grace_period_s=0,
                                                         timeout_s=60))
        by_pod = {o.pod: o for o in result.outcomes}
        assert by_pod[f"kube-system/{mirror}"].action == "skipped"
        assert "mirror pod" in by_pod[f"kube-system/{mirror}"].reason
        evicted = result.evicted
        assert evicted and all(o.gone for o in evicted)
        # --grace-period=0: pods are deleted at once instead of waiting out their own grace period
        # (2 s for web, 30 s for an OSD): each is gone before its own grace period would have ended.
        for o in evicted:
            own = pods_grace[o.pod]
            assert own == 0 or o.seconds - o.evicted_s < own, (o.pod, own, result.evidence())
        assert any(p.name == mirror for p in kube.list_pods(node=target)), "a mirror pod is left alone"
        print(result.evidence())
    finally:
        api_lab.request("DELETE", f"/api/v1/namespaces/kube-system/pods/{mirror}")
        kube.uncordon(target)
    wait_until(lambda: len(ready_pods(kube, "app=web")) == 3, timeout=20, what="web back to 3 ready replicas")


# -- the lock ----------------------------------------------------------------------------------------

@pytest.fixture
def lock_name():
    name = f"nodegate-test-lock-{uuid.uuid4().hex[:8]}"
    yield name


def test_lock_contention_resume_release(settled, lock_name):
    kube = settled
    a = acquire_lock(kube, holder="alice@laptop", node="node4", run_id="r1", name=lock_name, duration_s=60)
    assert a.held and a.holder == "alice@laptop" and a.node == "node4" and a.run_id == "r1"
    with pytest.raises(LockHeld) as err:
        acquire_lock(kube, holder="bob@desk", node="node3", run_id="r2", name=lock_name)
    assert "alice@laptop" in err.value.message and "node4" in err.value.message and "r1" in err.value.message
    assert "--take-over-stale-lock" in err.value.fix
    # Asking to take over a lock that is alive changes nothing.
    with pytest.raises(LockHeld) as err:
        acquire_lock(kube, holder="bob@desk", node="node3", run_id="r2", name=lock_name, take_over_stale=True)
    assert "looks alive" in err.value.fix
    # The same holder resuming the same node's upgrade gets it back, with its new run id.
    again = acquire_lock(kube, holder="alice@laptop", node="node4", run_id="r3", name=lock_name, duration_s=60)
    assert again.run_id == "r3" and again.acquired_at == a.acquired_at and again.transitions == a.transitions
    # ... but not for another node while node4's upgrade holds it.
    with pytest.raises(LockHeld):
        acquire_lock(kube, holder="alice@laptop", node="node3", run_id="r4", name=lock_name)
    assert not release_lock(kube, holder="bob@desk", name=lock_name), "never release someone else's lock"
    assert read_lock(kube, name=lock_name).holder == "alice@laptop"
    renewed = renew_lock(kube, again)
    assert renewed.renewed_at > again.renewed_at
    assert release_lock(kube, holder="alice@laptop", name=lock_name)
    assert read_lock(kube, name=lock_name) is None
    assert not release_lock(kube, holder="alice@laptop", name=lock_name)


def test_stale_lock_taken_over_only_when_asked(settled, lock_name):
    kube = settled
    acquire_lock(kube, holder="crashed@laptop", node="node4", run_id="r1", name=lock_name, duration_s=1)
    wait_until(lambda: read_lock(kube, name=lock_name).stale(), timeout=30, what="the crashed holder's lock stale")
    with pytest.raises(LockHeld) as err:
        acquire_lock(kube, holder="bob@desk", node="node3", run_id="r2", name=lock_name)
    assert "crashed@laptop" in err.value.message
    taken = acquire_lock(kube, holder="bob@desk", node="node3", run_id="r2", name=lock_name, take_over_stale=True)
    assert taken.holder == "bob@desk" and taken.node == "node3" and taken.transitions == 1
    with pytest.raises(LockHeld) as err:
        renew_lock(kube, replace_holder(taken, "crashed@laptop"))
    assert "lost the upgrade lock" in err.value.message
    assert release_lock(kube, holder="bob@desk", name=lock_name)


def replace_holder(lock, holder):
    from dataclasses import replace

    return replace(lock, holder=holder)


def test_lock_race_has_exactly_one_winner(api_lab, settled, lock_name):
    barrier = threading.Barrier(4)
    outcome: dict[str, object] = {}

    def contend(i: int) -> None:
        k = Kube(settings=api_lab.settings())
        k.list_nodes()  # connect before the start line
        barrier.wait()
        try:
            outcome[f"h{i}"] = acquire_lock(k, holder=f"h{i}", node=f"node{i + 1}", run_id=f"r{i}", name=lock_name)
        except LockHeld as exc:
            outcome[f"h{i}"] = exc
        finally:
            k.close()

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [h for h, v in outcome.items() if not isinstance(v, Exception)]
    assert len(outcome) == 4 and len(winners) == 1, outcome
    assert read_lock(settled, name=lock_name).holder == winners[0]
    assert release_lock(settled, holder=winners[0], name=lock_name)


def test_lock_keeper_renews_while_a_long_step_runs(settled, lock_name):
    kube = settled
    lock = acquire_lock(kube, holder="alice@laptop", node="node4", run_id="r1", name=lock_name, duration_s=2)
    import datetime as dt

    expiry = lock.acquired_at + dt.timedelta(seconds=2)
    with LockKeeper(kube=kube, lock=lock, every_s=0.5) as keeper:
        # past the first lease's end: without renewal it would look stale now
        wait_until(lambda: dt.datetime.now(dt.timezone.utc) > expiry + dt.timedelta(seconds=0.5), timeout=30,
                   what="the first lease's end")
        renewed = read_lock(kube, name=lock_name)
        assert renewed.renewed_at is not None and renewed.renewed_at > expiry - dt.timedelta(seconds=1.5), renewed
        assert not renewed.stale()
        with pytest.raises(LockHeld):
            acquire_lock(kube, holder="bob@desk", node="node3", run_id="r2", name=lock_name, take_over_stale=True)
    assert keeper.lost is None
    assert release_lock(kube, holder="alice@laptop", name=lock_name)


# -- transient failures ------------------------------------------------------------------------------

def retry_lines(caplog) -> list[str]:
    """The "attempt N/M failed" of each retry the client logged: one per try that is tried again."""
    import re

    return [re.search(r"/\d+ failed", r.getMessage()).group(0)
            for r in caplog.records if r.getMessage().startswith("retrying")]


def answer_code(api_lab) -> int:
    """The status of one plain request, 0 when the connection is dropped."""
    try:
        return api_lab.request("GET", "/api/v1/nodes")[0]
    except OSError:
        return 0


def test_flaky_api_is_retried_with_a_log_line_before_each_sleep(api_lab, settled, caplog):
    """api-flaky "mixed": 429 (throttling, no PDB cause), 500, 503 and dropped connections."""
    fault(api_lab, "api-flaky", ratio=0.4, mode="mixed", for_s=120)
    caplog.set_level(logging.WARNING, logger="nodegate.kube")
    kinds = {"429": "answered 429", "500": "answered 500", "503": "answered 503", "drop": "broke"}
    seen: set[str] = set()
    requests = 0
    try:
        kube = Kube(settings=api_lab.settings(), attempts=10)
        while seen != set(kinds) and requests < 200:
            assert len(kube.list_nodes()) == 4
            requests += 1
            retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying")]
            seen = {k for k, text in kinds.items() if any(text in m for m in retries)}
        # An eviction refused by throttling (429 without a DisruptionBudget cause) is retried, not "blocked".
        pod = next(p for p in ready_pods(kube, "app=web"))
        evicted = kube.evict(pod)
        assert evicted.outcome == "evicted" and evicted.pdb is None
        kube.close()
    finally:
        fault(api_lab, "api-flaky", clear=True)
    print(f"{requests} requests under api-flaky mixed 40%: every kind of failure retried")
    assert seen == set(kinds), f"after {requests} requests only saw {seen}"
    assert all("attempt" in r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying"))
    assert api_lab.config.token not in caplog.text
    wait_until(lambda: len(ready_pods(settled, "app=web")) == 3, timeout=20, what="web back to 3 ready replicas")


@pytest.mark.parametrize("mode, said", [("503", "answered 503"), ("outage", "broke")])
def test_lasting_outage_fails_clearly_within_the_bound(api_lab, settled, mode, said, caplog):
    fault(api_lab, "api-flaky", ratio=1.0, mode=mode)
    wait_until(lambda: answer_code(api_lab) in (0, 503), timeout=5, what="the outage to begin")
    try:
        kube = Kube(settings=api_lab.settings(), attempts=4, retry_limit_s=5)
        kube.load()
        caplog.set_level(logging.WARNING, logger="nodegate.kube")
        with pytest.raises(TransientError) as err:
            kube.list_nodes()
        # the bound is the attempts (and the time limit, which on a busy machine may stop it sooner)
        assert 1 <= len(retry_lines(caplog)) <= 3 and set(retry_lines(caplog)) == {"/4 failed"}, caplog.text
        assert said in err.value.message and "list nodes" in err.value.message
        assert "kubectl get nodes" in err.value.fix
    finally:
        fault(api_lab, "api-flaky", clear=True)
    wait_until(lambda: answer_code(api_lab) == 200, timeout=5, what="the outage to end")
    assert settled.list_nodes()


def test_watch_for_ready_rides_out_a_flaky_api(api_lab, settled):
    kube = settled
    before = kube.node("node2")
    fault(api_lab, "api-flaky", ratio=0.3, mode="mixed", for_s=60)
    try:
        api_lab.set_state("node2", up=False)
        kube.watch_node("node2", until=lambda s: not s.is_ready, timeout=20)
        new = api_lab.set_state("node2", up=True)
        status = kube.wait_node_ready("node2", timeout=20, new_boot_id_than=before.boot_id)
        assert status.boot_id == new["boot_id"]
    finally:
        fault(api_lab, "api-flaky", clear=True)


def test_refused_connection_is_transient_and_bounded(api_lab, tmp_path, caplog):
    path = write_kubeconfig(tmp_path, api_lab, server=f"http://127.{api_lab.config.net}.3.1:1")
    kube = Kube(settings=api_lab.settings(kubeconfig=path), attempts=3, retry_limit_s=3)
    kube.load()
    caplog.set_level(logging.WARNING, logger="nodegate.kube")
    with pytest.raises(TransientError, match="refused the connection while trying to list nodes"):
        kube.list_nodes()
    assert 1 <= len(retry_lines(caplog)) <= 2 and set(retry_lines(caplog)) == {"/3 failed"}, caplog.text


def test_dropped_connections_are_retried(api_lab, settled, caplog):
    fault(api_lab, "api-flaky", ratio=0.5, mode="drop", for_s=60)
    caplog.set_level(logging.WARNING, logger="nodegate.kube")
    try:
        kube = Kube(settings=api_lab.settings(), attempts=10)
        for _ in range(10):
            assert kube.node("node1").is_ready
        kube.close()
    finally:
        fault(api_lab, "api-flaky", clear=True)
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying")]
    assert retries and all("connection to the Kubernetes API" in m and "broke" in m for m in retries), retries[:3]


def test_a_server_that_never_answers_times_out_as_transient(api_lab, tmp_path, caplog):
    import socket

    # A real TCP listener that accepts and then says nothing (a hung API server).
    listener = socket.socket()
    listener.bind((f"127.{api_lab.config.net}.3.9", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        path = write_kubeconfig(tmp_path, api_lab, server=f"http://127.{api_lab.config.net}.3.9:{port}")
        kube = Kube(settings=api_lab.settings(kubeconfig=path), attempts=2, request_timeout=(1.0, 0.5))
        kube.load()
        caplog.set_level(logging.WARNING, logger="nodegate.kube")
        with pytest.raises(TransientError, match="did not answer in time while trying to list nodes"):
            kube.list_nodes()
        assert retry_lines(caplog) == ["/2 failed"], caplog.text     # two tries, each ended by its read timeout
    finally:
        listener.close()


def test_permanent_errors_are_not_retried(settled, caplog):
    kube = settled
    caplog.set_level(logging.WARNING, logger="nodegate.kube")
    with pytest.raises(NotFoundError):
        kube.pod_log(namespace="demo", name="no-such-pod")
    with pytest.raises(PermanentError) as err:   # 422: not a valid object name
        acquire_lock(kube, holder="a", node="node1", run_id="r", name="Not_A_Valid_Name")
    assert "invalid" in err.value.message and "422" in err.value.message
    assert retry_lines(caplog) == [], f"404 and 422 must not be retried: {caplog.text}"


# -- exec (the websocket stream API) ---------------------------------------------------------------

def toolbox(kube: Kube) -> str:
    pods = [p for p in kube.list_pods(namespace="rook-ceph", selector="app=rook-ceph-tools") if p.phase == "Running"]
    assert pods, "the lab runs a rook-ceph-tools pod"
    return pods[0].name


def test_exec_in_the_toolbox_returns_output_and_exit_codes(settled):
    kube = settled
    pod = toolbox(kube)
    version = kube.exec(namespace="rook-ceph", pod=pod, command=["ceph", "--version"], timeout=30)
    assert version.rc == 0 and version.stdout.startswith("ceph version 16.2.15"), version
    assert version.command == ("ceph", "--version") and version.duration > 0
    # Arguments go to the command as a list: no shell ever sees them.
    quoted = kube.exec(namespace="rook-ceph", pod=pod, command=["ceph", "--no-such-option; echo hacked"], timeout=30)
    assert quoted.rc != 0 and "hacked" not in quoted.stdout
    missing = kube.exec(namespace="rook-ceph", pod=pod, command=["no-such-binary"], timeout=30)
    assert missing.rc == 126 and "executable file not found" in missing.stdout


def test_exec_opening_is_retried_on_a_flaky_api(api_lab, settled, caplog):
    kube = Kube(settings=api_lab.settings(), attempts=10)
    pod = toolbox(kube)
    fault(api_lab, "api-flaky", ratio=0.5, mode="mixed", for_s=60)
    caplog.set_level(logging.WARNING, logger="nodegate.kube")
    try:
        for _ in range(6):
            out = kube.exec(namespace="rook-ceph", pod=pod, command=["rados", "--version"], timeout=30)
            assert out.rc == 0 and "16.2.15" in out.stdout
    finally:
        fault(api_lab, "api-flaky", clear=True)
        kube.close()
    assert any(r.getMessage().startswith("retrying exec `rados --version`") for r in caplog.records)


def test_exec_into_a_missing_pod_is_not_found(settled):
    with pytest.raises(NotFoundError):
        settled.exec(namespace="rook-ceph", pod="rook-ceph-tools-gone", command=["ceph", "--version"], timeout=10)


# -- pure logic (no server) -------------------------------------------------------------------------

def pod_like(**changes):
    from nodegate.cluster.kube.models import PodSummary

    values = dict(namespace="demo", name="p", uid="u", node="node1", phase="Running", owner_kind="ReplicaSet",
                  owner_name="rs", daemonset=False, mirror=False, uses_emptydir=False, ready=True, restarts=0,
                  deleting=False, labels={"app": "web"})
    values.update(changes)
    return PodSummary(**values)


def test_label_selector_semantics():
    from nodegate.cluster.kube.models import selector_matches

    labels = {"app": "web", "tier": "front"}
    assert not selector_matches(None, labels) and selector_matches({}, labels)
    assert selector_matches({"matchLabels": {"app": "web"}}, labels)
    assert not selector_matches({"matchLabels": {"app": "db"}}, labels)
    expr = lambda op, *values: {"matchExpressions": [{"key": "tier", "operator": op, "values": list(values)}]}  # noqa: E731
    assert selector_matches(expr("In", "front", "back"), labels) and not selector_matches(expr("NotIn", "front"), labels)
    assert selector_matches(expr("Exists"), labels) and not selector_matches(expr("DoesNotExist"), labels)


def test_eviction_answers_are_told_apart():
    from nodegate.cluster.kube.drain import _eviction_refusal

    pdb = json.dumps({"kind": "Status", "status": "Failure", "code": 429, "reason": "TooManyRequests",
                      "message": "Cannot evict pod as it would violate the pod's disruption budget.",
                      "details": {"causes": [{"reason": "DisruptionBudget", "message":
                                              "The disruption budget web needs 2 healthy pods and has 2 currently"}]}})
    blocked = _eviction_refusal(pod_like(name="web-1"), 429, pdb)
    assert blocked.outcome == "blocked" and blocked.pdb == "demo/web" and (blocked.pdb_needs, blocked.pdb_has) == (2, 2)
    throttled = json.dumps({"kind": "Status", "code": 429, "reason": "TooManyRequests", "message": "Too many requests"})
    assert _eviction_refusal(pod_like(), 429, throttled) is None, "throttling is retried, not a PDB refusal"
    assert _eviction_refusal(pod_like(), 404, "{}").outcome == "gone"
    assert _eviction_refusal(pod_like(), 500, "{}") is None


def test_drain_verdicts_follow_kubectl_filters():
    from nodegate.cluster.kube.drain import _drain_verdict

    plain, every = DrainOptions(ignore_daemonsets=False), DrainOptions(delete_emptydir_data=True, force=True)
    assert _drain_verdict(pod_like(daemonset=True, owner_kind="DaemonSet"), plain)[0] == "refuse"
    assert _drain_verdict(pod_like(daemonset=True, owner_kind="DaemonSet"), every) == ("skip", "DaemonSet-managed")
    assert _drain_verdict(pod_like(mirror=True, owner_kind="Node"), plain)[0] == "skip"
    assert _drain_verdict(pod_like(owner_kind=None, phase="Succeeded"), plain) == ("evict", "")
    assert "--delete-emptydir-data" in _drain_verdict(pod_like(uses_emptydir=True), plain)[1]
    assert "--force" in _drain_verdict(pod_like(owner_kind=None), plain)[1]
    verdict, warning = _drain_verdict(pod_like(owner_kind=None, uses_emptydir=True), every)
    assert verdict == "evict" and "local storage" in warning and "no controller" in warning


def test_lock_staleness_and_exec_status():
    import datetime as dt

    from nodegate.cluster.kube.exec import _exec_rc
    from nodegate.cluster.lock import LockInfo

    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
    lock = LockInfo(namespace="kube-system", name="l", holder="a", node="node4", run_id="r", duration_s=60,
                    acquired_at=now - dt.timedelta(seconds=300), renewed_at=now - dt.timedelta(seconds=90),
                    transitions=0, resource_version="1")
    assert lock.stale(now=now) and not lock.stale(after_s=120, now=now)
    assert lock.age_s(now) == 90
    assert _exec_rc("", "x") == 0 and _exec_rc('{"status": "Success"}', "x") == 0
    assert _exec_rc(json.dumps({"status": "Failure", "details": {"causes": [
        {"reason": "ExitCode", "message": "16"}]}}), "x") == 16
    with pytest.raises(PermanentError, match="container not found"):
        _exec_rc(json.dumps({"status": "Failure", "message": "container not found"}), "x")


def test_closing_the_client_stops_a_read_retrying_in_another_thread(api_lab, settled, caplog):
    """A run refused before its first check closes its client while reads started ahead are still
    retrying a failing API (a node down: 500 from its kubelet): they stop at their next attempt, with
    no more "retrying" lines after the error, instead of keeping the process alive for 20 s."""
    from nodegate.cluster.kube.errors import ClientClosed

    fault(api_lab, "api-flaky", ratio=1.0, mode="503")
    wait_until(lambda: answer_code(api_lab) == 503, timeout=5, what="the outage to begin")
    kube = Kube(settings=api_lab.settings(), attempts=6, retry_limit_s=30)
    kube.load()
    outcome: dict = {}

    def read_ahead() -> None:
        try:
            kube.list_nodes()
        except BaseException as exc:  # noqa: BLE001 - what ended the read is the point
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    try:
        with caplog.at_level("WARNING", logger="nodegate.kube"):
            thread = threading.Thread(target=read_ahead, daemon=True)
            thread.start()
            wait_until(lambda: any(r.getMessage().startswith("retrying") for r in caplog.records), timeout=10,
                       what="the read retrying")
            retries_before = len(retry_lines(caplog))
            kube.close()
            thread.join(timeout=40)    # the read's own budget is 6 attempts within 30 s
            assert not thread.is_alive(), "the read went on retrying after close()"
            # it stopped at its next attempt (ClientClosed), not at the end of its budget (the API's 503)
            assert isinstance(outcome["error"], ClientClosed), outcome["error"]
            # at most the retry line that was being written as close() came, none after
            assert len(retry_lines(caplog)) <= retries_before + 1, caplog.text
    finally:
        fault(api_lab, "api-flaky", clear=True)
    wait_until(lambda: answer_code(api_lab) == 200, timeout=5, what="the outage to end")
