"""Storage: Ceph healthy in the full sense, this node's OSDs (through its CRUSH host), noout, and\nits RBD CSI node-plugin pod."""
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


def _mapping(node, reads, evidence):
    """The node's CRUSH host, shown as evidence; a mapping that cannot be trusted fails here."""
    mapping = reads.crush_mapping(node)
    evidence.table(f"{node.name}: Node <-> CRUSH host", ["", ""], mapping.rows())
    evidence.text(f"{node.name}: how the CRUSH host was found", "\n".join([*mapping.evidence, *mapping.notes]))
    if not mapping.ok:
        fail_check(f"the OSDs of {node.name} cannot be told: {mapping.problems[0]}", details=mapping.problems[1:],
                   fix=f"set [nodes.{node.name}] crush_host = \"<host in `ceph osd tree`>\" in the profile, or "
                       f"[nodes.{node.name}] ceph_osds = false if the node carries no OSDs")
    return mapping


@pytest.mark.preflight
@pytest.mark.postflight
def test_node_osds_up(node, reads, evidence):
    mapping = _mapping(node, reads, evidence)
    ids = mapping.osd_ids
    if not ids:
        evidence.text(f"{node.name}: OSDs", "none: the profile says this node carries no OSDs "
                                            f"([nodes.{node.name}] ceph_osds = false) and none were found")
        return
    states = _osd_states(reads)
    rows = [[f"osd.{i}", states.get(i, {}).get("up"), states.get(i, {}).get("in")] for i in ids]
    evidence.table(f"{node.name}: OSDs (CRUSH host {mapping.crush_host})", ["osd", "up", "in"], rows)
    bad = [f"osd.{i} is {'up' if states.get(i, {}).get('up') == 1 else 'down'} and "
           f"{'in' if states.get(i, {}).get('in') == 1 else 'out'}"
           for i in ids if states.get(i, {}).get("up") != 1 or states.get(i, {}).get("in") != 1]
    if bad:
        fail_check(f"{len(bad)} of {len(ids)} OSD(s) on CRUSH host {mapping.crush_host} are not up and in",
                   details=bad,
                   fix=f"look at the OSD pods on {node.kube_node} (`kubectl -n rook-ceph get pods -l app=rook-ceph-osd "
                       "-o wide`) and `ceph osd tree`; bring them up before changing the node")


@pytest.mark.preflight
def test_osds_ok_to_stop(node, reads, evidence):
    mapping = _mapping(node, reads, evidence)
    ids = mapping.osd_ids
    if not ids:
        evidence.text(f"{node.name}: ok-to-stop", f"no OSDs: the profile says so ([nodes.{node.name}] ceph_osds = "
                                                  "false) and none were found")
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
def test_noout_as_expected(node, reads, phase, evidence):
    """noout (group flag on the node's CRUSH host, or per-OSD flags on its OSDs) is set by the
    procedure only while it changes the node and unset before it ends."""
    mapping = _mapping(node, reads, evidence)
    flags = reads.osd_dump().value
    host = mapping.crush_host
    problems = []
    if "noout" in flags.global_flags:
        problems.append("the cluster-wide noout flag is set (OSDs anywhere would never be marked out)")
    if host and "noout" in flags.crush_node_flags.get(host, frozenset()):
        problems.append(f"CRUSH host {host} has noout set (`ceph osd set-group noout {host}`)")
    own = [i for i in mapping.osd_ids if "noout" in flags.osd_flags.get(i, frozenset())]
    if own:
        problems.append(f"{', '.join(f'osd.{i}' for i in own)} have their own noout flag (`ceph osd add-noout`)")
    if problems:
        when = "left from an earlier change" if phase == "preflight" else "still set after the upgrade"
        undo = [f"ceph osd unset-group noout {host}"] if host else []
        if own:
            undo.append("ceph osd rm-noout " + " ".join(f"osd.{i}" for i in own))
        fail_check(f"noout is {when}", details=problems,
                   fix="if no maintenance is under way: " + " / ".join(f"`{u}`" for u in [*undo, "ceph osd unset noout"]))


@pytest.mark.preflight
def test_noout_outlasts_rook(node, reads, profile, notice, evidence, pytestconfig):
    """Rook (managePodBudgets) takes its noout on a drained node back after osdMaintenanceTimeout
    (rook clusterdisruption/osd.go); a longer upgrade is warned about: the procedure then relies on
    per-OSD flags, which Rook never clears."""
    from nodegate.core.journal import Journal
    from nodegate.core.noout import decide_noout, duration_warning, expected_duration
    from nodegate.plugin.allure import reports_root

    rook = reads.rook_settings()
    journal = Journal(root=reports_root(pytestconfig) / "runs", cluster=profile.name, node=node.name, target="x",
                      run_id="x")
    expected, source = expected_duration([j.records() for j in journal.siblings()], control_plane=node.is_control_plane)
    policy = decide_noout(rook)
    evidence.text(f"{node.name}: noout policy", f"{rook.describe()}\n{policy.reason}\nexpected protected window: "
                                                f"{expected / 60:.0f} min ({source})")
    warning = duration_warning(rook, expected, source=source)
    if warning:
        notice(f"{node.name}: {warning}")


@pytest.mark.preflight
@pytest.mark.postflight
def test_csi_rbdplugin_healthy(node, reads, evidence):
    """The RBD node plugin (found by what it is: Rook's csi-rbdplugin, ceph-csi-operator's
    <driver>-nodeplugin, the ceph-csi chart) crash-loops on 24.04 with cephcsi < v3.12 (its kmod
    cannot load rbd.ko.zst); the registrar then logs `Still connecting to unix:///csi/csi.sock`."""
    from nodegate.core.knowledge import CSI_SOCKET_SYMPTOM

    found = reads.csi_discovery()
    evidence.text("Ceph RBD CSI node plugin", "\n".join([*found.evidence, f"looked for: {found.looked_for}"]))
    if not found.ok:
        fail_check(found.problems[0], details=found.problems[1:],
                   fix="restore the RBD node plugin DaemonSet (Rook recreates it from its operator), or tell nodegate "
                       "where it is ([ceph] csi_rbd_daemonset = \"<namespace>/<name>\") or that there is none "
                       "([ceph] csi_rbd = false)")
    if not found.plugins:
        evidence.text(f"{node.name}: RBD node plugin", "none: the profile says the cluster has no Ceph RBD CSI "
                                                       "([ceph] csi_rbd = false) and none was found")
        return
    health = reads.csi_rbdplugin(node.kube_node)
    if health is None or health.pod is None:
        refs = ", ".join(p.ref for p in found.plugins)
        fail_check(f"no pod of the RBD node plugin {refs} runs on {node.kube_node}",
                   fix="check the DaemonSet's node selector/tolerations and the node's taints: without it the node "
                       "cannot mount RBD volumes")
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
        fail_check(f"the RBD node plugin {pod.ref} on {node.kube_node} is not healthy", details=problems,
                   fix="on Ubuntu 24.04 with cephcsi < v3.12: `modprobe rbd` on the node (and persist it in "
                       "/etc/modules-load.d), then move to Rook >= v1.15 (cephcsi >= v3.12); otherwise "
                       f"`kubectl -n {pod.namespace} logs {pod.name} -c csi-rbdplugin --previous`")
