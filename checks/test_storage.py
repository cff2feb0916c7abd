"""Storage: Ceph healthy in the full sense, this node's OSDs, noout, and its csi-rbdplugin pod."""
from __future__ import annotations

import json

import pytest

from nodegate.plugin.fixtures import fail_check


@pytest.mark.preflight
@pytest.mark.postflight
def test_ceph_healthy(reads, evidence):
    """HEALTH_OK alone is not enough: a fresh mon says it with no mgr and no OSD."""
    status = reads.ceph_status()
    evidence.text("ceph status", status.raw)
    reasons = status.reasons()
    if reasons:
        fail_check(f"Ceph is not healthy: {status.health}, {status.num_up}/{status.num_osds} OSDs up, "
                   f"{status.num_in}/{status.num_osds} in, {status.pgs_active_clean}/{status.pgs_total} PGs "
                   f"active+clean, mgr {'available' if status.mgr_available else 'unavailable'}",
                   details=reasons,
                   fix="wait for recovery or fix the cause (`ceph health detail`); take no node out while Ceph "
                       "is degraded")


def _osd_states(reads) -> dict[int, dict]:
    dump = reads.osd_dump()
    try:
        data = json.loads(dump.raw)
    except ValueError:
        return {}
    return {o["osd"]: o for o in data.get("osds") or [] if isinstance(o, dict) and isinstance(o.get("osd"), int)}


@pytest.mark.preflight
@pytest.mark.postflight
def test_node_osds_up(node, reads, evidence):
    ids = reads.osd_ids(node.name)
    states = _osd_states(reads)
    rows = [[f"osd.{i}", states.get(i, {}).get("up"), states.get(i, {}).get("in")] for i in ids]
    evidence.table(f"{node.name}: OSDs (CRUSH host {node.name})", ["osd", "up", "in"], rows)
    bad = [f"osd.{i} is {'up' if states.get(i, {}).get('up') == 1 else 'down'} and "
           f"{'in' if states.get(i, {}).get('in') == 1 else 'out'}"
           for i in ids if states.get(i, {}).get("up") != 1 or states.get(i, {}).get("in") != 1]
    if bad:
        fail_check(f"{len(bad)} of {len(ids)} OSD(s) on CRUSH host {node.name} are not up and in", details=bad,
                   fix=f"look at the OSD pods on {node.name} (`kubectl -n rook-ceph get pods -l app=rook-ceph-osd -o "
                       "wide`) and `ceph osd tree`; bring them up before changing the node")


@pytest.mark.preflight
def test_osds_ok_to_stop(node, reads, evidence):
    ids = reads.osd_ids(node.name)
    if not ids:
        evidence.text(f"{node.name}: ok-to-stop", f"CRUSH host {node.name} has no OSDs")
        return
    answer = reads.ok_to_stop(tuple(ids))
    evidence.text(f"{node.name}: ceph osd ok-to-stop {' '.join(map(str, ids))}", answer.raw or answer.result.stderr)
    if not answer.ok:
        fail_check(f"Ceph says the OSDs of {node.name} ({', '.join(f'osd.{i}' for i in ids)}) are not ok to stop: "
                   f"{answer.reason} ({answer.num_not_ok_pgs} PG(s) not ok, {answer.num_ok_pgs} ok)",
                   fix="wait until every PG is active+clean with enough replicas elsewhere; stopping them now "
                       "would make data unavailable")


@pytest.mark.preflight
@pytest.mark.postflight
def test_noout_as_expected(node, reads, phase):
    """noout is set by the procedure only while the node is down (step 4) and unset in step 13."""
    flags = reads.osd_dump().value
    problems = []
    if "noout" in flags.global_flags:
        problems.append("the cluster-wide noout flag is set (OSDs anywhere would never be marked out)")
    if "noout" in flags.crush_node_flags.get(node.name, frozenset()):
        problems.append(f"CRUSH host {node.name} has noout set (`ceph osd set-group noout {node.name}`)")
    if problems:
        when = "left from an earlier change" if phase == "preflight" else "still set after the upgrade"
        fail_check(f"noout is {when}", details=problems,
                   fix=f"if no maintenance is under way: `ceph osd unset-group noout {node.name}` / `ceph osd unset "
                       "noout`")


@pytest.mark.preflight
@pytest.mark.postflight
def test_csi_rbdplugin_healthy(node, reads, profile, evidence):
    """csi-rbdplugin crash-loops on 24.04 with cephcsi < v3.12 (its kmod cannot load rbd.ko.zst);
    the registrar then logs `Still connecting to unix:///csi/csi.sock`."""
    from nodegate.core.knowledge import CSI_SOCKET_SYMPTOM

    health = reads.csi_rbdplugin(node.name)
    all_plugins = reads.pods(profile.ceph.namespace, "app=csi-rbdplugin")
    if health.pod is None:
        if all_plugins:
            fail_check(f"no csi-rbdplugin pod runs on {node.name} although {len(all_plugins)} other node(s) have one",
                       fix="check the csi-rbdplugin DaemonSet's node selector/tolerations and the node's taints")
        evidence.text(f"{node.name}: csi-rbdplugin", "the cluster runs no csi-rbdplugin")
        return
    pod = health.pod
    first = reads.note_restarts(pod.uid, pod.restarts)
    evidence.table(f"{node.name}: {pod.ref}", ["container", "ready", "state", "reason", "restarts", "image"],
                   [[c.name, c.ready, c.state, c.reason, c.restarts, c.image] for c in pod.containers])
    problems = []
    if not health.ready:
        problems.append(f"pod {pod.ref} is not Ready (phase {pod.phase})")
    for name in health.crash_looping:
        container = pod.container(name)
        problems.append(f"container {name} is in CrashLoopBackOff ({container.restarts if container else '?'} restarts)")
    if pod.restarts > first:
        problems.append(f"restarts rose from {first} to {pod.restarts} during this run")
    stuck = list(health.stuck_lines)
    if pod.container("driver-registrar") is not None and not stuck:
        text = reads.pod_log(pod.namespace, pod.name, "driver-registrar")
        stuck = [line for line in (text or "").splitlines() if CSI_SOCKET_SYMPTOM in line]
    if stuck:
        problems.append(f"{len(stuck)} recent log line(s) say '{CSI_SOCKET_SYMPTOM}' (last: {stuck[-1].strip()})")
    if problems:
        fail_check(f"csi-rbdplugin on {node.name} is not healthy", details=problems,
                   fix="on Ubuntu 24.04 with cephcsi < v3.12: `modprobe rbd` on the node (and persist it in "
                       "/etc/modules-load.d), then move to Rook >= v1.15 (cephcsi >= v3.12); otherwise "
                       f"`kubectl -n {pod.namespace} logs {pod.name} -c csi-rbdplugin --previous`")
