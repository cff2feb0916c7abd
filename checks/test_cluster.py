"""The rest of the cluster: one node at a time, nobody else holding the upgrade lock, the control
plane able to lose this node, and the node's pods evictable now."""
from __future__ import annotations

import pytest

from nodegate.plugin.fixtures import fail_check


@pytest.mark.preflight
@pytest.mark.postflight
def test_other_nodes_ready(node, reads, evidence):
    statuses = reads.node_statuses()
    others = {name: s for name, s in statuses.items() if name != node.kube_node}
    evidence.table("nodes", ["node", "Ready", "cordoned", "osImage", "kubelet"],
                   [[s.name, s.ready, s.unschedulable, s.os_image, s.kubelet_version] for s in statuses.values()])
    down = [s for s in others.values() if not s.is_ready]
    if down:
        fail_check(f"{len(down)} of {len(others)} other node(s) are not Ready: {', '.join(s.name for s in down)}",
                   details=[s.describe() for s in down],
                   fix=f"bring them back before taking {node.name} out: the cluster would lose more capacity "
                       "(and Ceph more OSDs) than it can spare")


@pytest.mark.preflight
@pytest.mark.postflight
def test_one_node_at_a_time(node, reads):
    cordoned = [s for name, s in reads.node_statuses().items() if name != node.kube_node and s.unschedulable]
    if cordoned:
        details = [f"{s.name} is cordoned" + (f" by nodegate run {s.cordoned_by}" if s.cordoned_by else "")
                   for s in cordoned]
        fail_check(f"{len(cordoned)} other node(s) are cordoned: {', '.join(s.name for s in cordoned)}; nodes are "
                   "upgraded one at a time", details=details,
                   fix="finish (or undo) that node's change first; if nothing is in progress there, "
                       f"`kubectl uncordon {cordoned[0].name}`")


@pytest.mark.preflight
def test_upgrade_lock_free(node, reads, profile, notice):
    from nodegate.cluster.lock import this_holder

    lock = reads.lock()
    if lock is None or not lock.held:
        return
    if lock.holder == this_holder() and lock.node == node.name:
        # an interrupted run of this operator, here, for this node: the procedure takes it back
        notice(f"{lock.describe()}: an interrupted upgrade of {node.name} from this machine; running the "
               "procedure again resumes it and takes the lock back")
        return
    if lock.stale(after_s=profile.upgrade.lock_stale_after_s):
        # Not blocking: the procedure's gate runs these checks, and a blocking stale lock would keep
        # --take-over-stale-lock from ever being used. The lock step refuses it without the option.
        notice(f"a stale upgrade lock: {lock.describe()}; its holder is gone (not renewed for longer than the "
               "profile's lock_stale_after_s): the procedure takes it over only with --take-over-stale-lock")
        return
    fail_check(f"another nodegate run holds the upgrade lock: {lock.describe()}",
               fix="wait for that run to finish (or stop it); one node is upgraded at a time")


@pytest.mark.preflight
def test_control_plane_can_lose_node(node, reads, profile):
    """A control-plane or etcd node may go only if the rest of the control plane is healthy and
    etcd keeps quorum without this node's member."""
    if not (node.is_control_plane or node.is_etcd):
        return   # a worker: the control plane does not depend on it
    statuses = reads.node_statuses()
    problems = []
    for other in profile.nodes:
        if other.name == node.name or not (other.is_control_plane or other.is_etcd):
            continue
        status = statuses.get(other.kube_node)
        if status is None or not status.is_ready:
            problems.append(f"{other.name} ({', '.join(sorted(other.roles))}) is "
                            f"{'missing from the cluster' if status is None else 'not Ready'}")
    members = [n for n in profile.nodes if n.is_etcd]
    if node.is_etcd:
        healthy_others = sum(1 for n in members if n.name != node.name
                             and statuses.get(n.kube_node) is not None and statuses[n.kube_node].is_ready)
        quorum = len(members) // 2 + 1
        if healthy_others < quorum:
            problems.append(f"etcd has {len(members)} member(s), quorum {quorum}; without {node.name} only "
                            f"{healthy_others} member node(s) are Ready")
    if problems:
        fail_check(f"the control plane cannot spare {node.name} now", details=problems,
                   fix="bring the other control-plane/etcd nodes back first; upgrade control-plane nodes last, one "
                       "at a time")


@pytest.mark.preflight
def test_pods_evictable(node, reads, profile, evidence, notice):
    """The drain preview of the node: what would block its drain (a budget with no disruption left,
    a single-replica budget, Rook's OSD budgets while another failure domain is down, a grace period
    longer than the drain timeout) fails; what would only wait or be lost for good is a notice."""
    from nodegate.core.drainpreview import BLOCKS
    from nodegate.upgrade.batches import node_drain_issues

    blockers = reads.eviction_blockers(node.kube_node)
    pods = reads.pods_on(node.kube_node)
    evidence.table(f"{node.name}: pods", ["pod", "owner", "ready", "restarts"],
                   [[p.ref, p.owner_kind or "none", p.ready, p.restarts] for p in pods])
    rook = reads.rook_settings()
    issues = node_drain_issues(profile, node.kube_node, pods, reads.pdbs(),
                               rook_manages=rook.found and rook.manage_pod_budgets)
    evidence.table(f"{node.name}: drain preview", ["severity", "pod", "owner", "what", "fix"],
                   [[i.severity, i.pod, i.owner, i.what, i.fix] for i in issues])
    for issue in issues:
        if issue.severity != BLOCKS:
            notice(f"drain of {node.name}: {issue.describe()}")
    blocking = [i for i in issues if i.severity == BLOCKS]
    if blockers:
        fail_check(f"{len(blockers)} pod(s) on {node.name} cannot be evicted now: their PodDisruptionBudget "
                   "allows no disruption, so a drain would hang",
                   details=[str(b) for b in blockers] + [i.describe() for i in blocking],
                   fix="make the PDB's pods healthy elsewhere (scale up, fix the unhealthy replicas) or relax the "
                       "PodDisruptionBudget before draining")
    if blocking:
        fail_check(f"{len(blocking)} pod(s) on {node.name} would block its drain "
                   f"(timeout {profile.upgrade.drain_timeout_s:g} s)", details=[i.describe() for i in blocking],
                   fix="; ".join(dict.fromkeys(i.fix for i in blocking)))


@pytest.mark.preflight
def test_api_permissions(kube, profile, evidence):
    """One SelfSubjectAccessReview per request the upgrade makes: a user who may cordon but not
    evict (or exec into the Ceph toolbox, or take the lock) is stopped here, not mid-drain."""
    from nodegate.cluster.lock import LOCK_NAMESPACE
    from nodegate.cluster.permissions import missing, required

    needed = required(lock_namespace=LOCK_NAMESPACE,
                      ceph_toolbox_namespace=profile.ceph.namespace if profile.ceph.mode == "toolbox" else None)
    answers = {p: kube.may(p.verb, p.resource, group=p.group, subresource=p.subresource, namespace=p.namespace)
               for p in needed}
    evidence.table("API permissions of the kubeconfig's user", ["permission", "allowed", "used to"],
                   [[p.name, answers[p], p.why] for p in needed])
    lacking = missing(answers.__getitem__, needed)
    if lacking:
        fail_check(f"the kubeconfig's user lacks {len(lacking)} of the {len(needed)} API permissions the upgrade "
                   "uses: " + "; ".join(p.name for p in lacking),
                   details=[f"the user of {kube.origin}"] + [f"{p.name}: needed to {p.why}" for p in lacking],
                   fix="bind the user to a role that grants them (or use the cluster's admin kubeconfig, "
                       "Kubespray's artifacts/admin.conf); `kubectl auth can-i --list` shows what it has")
