"""The control-plane steps: the etcd gate before an etcd node goes down and after it returns, and
the control plane's static pods Ready before a control-plane node is uncordoned.

etcd is read with the node's own etcdctl and Kubespray's /etc/etcd.env (nodegate.cluster.nodes.
resources.Etcd), which lists every member; the verdicts are nodegate.core.etcd's. A node outside
the inventory's etcd (or kube_control_plane) group has nothing to gate here, and says so.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from nodegate.core import etcd as gate
from nodegate.core import postconditions as post
from nodegate.core.waits import (
    CONTROL_PLANE_PODS_WAIT_S,
    CONTROL_PLANE_POLL_S,
    ETCD_CATCH_UP_WAIT_S,
    ETCD_HEALTHY_WAIT_S,
    Done,
    NotYet,
    WaitTimeout,
    wait_for,
)
from nodegate.upgrade.engine import GateBlocked, Planned, Step, StepFailed, Upgrade, holds, on_node

log = logging.getLogger("nodegate.upgrade")

# kubeadm's control-plane static pods (manifests in /etc/kubernetes/manifests, labels component=<name>
# and tier=control-plane); Kubespray runs etcd as a host service by default, so etcd is read with etcdctl.
CONTROL_PLANE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
CONTROL_PLANE_NAMESPACE = "kube-system"


def _not_etcd(up: Upgrade) -> str | None:
    if up.node.is_etcd:
        return None
    return f"{up.name} is not in the inventory's etcd group: it runs no etcd member, nothing to gate"


def _names(up: Upgrade) -> dict[str, str]:
    return {n.address: n.name for n in up.profile.nodes}


def _wait_verdict(what: str, read, timeout: float, *, blocked: type[StepFailed]) -> post.Verdict:
    """Read ``read()`` (a Verdict) until it holds, at most ``timeout`` seconds; the last verdict's
    text and fix when it never does."""
    last: list[post.Verdict] = []

    def probe() -> Done | NotYet:
        verdict = read()
        last[:] = [verdict]
        return Done(verdict) if verdict.holds else NotYet(verdict.text)

    try:
        return wait_for(probe, what=what, timeout=timeout, interval=CONTROL_PLANE_POLL_S)
    except WaitTimeout as exc:
        verdict = last[0] if last else None
        raise blocked(f"{verdict.text if verdict else exc} (waited {timeout:g}s for {what})",
                      fix=verdict.fix if verdict else exc.fix) from None


class EtcdQuorum(Step):
    name = "etcd_quorum"
    title = "etcd gate: every member healthy, and a quorum left with this node's member down"
    always_run = True      # read-only: asked again on every run, until the node goes down again

    def __init__(self) -> None:
        self._proof: dict[str, str] = {}

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        if _not_etcd(up):
            return (Planned("local", f"nothing: {_not_etcd(up)}"),)
        return (on_node(up, "etcdctl", "member", "list", "-w", "json"),
                on_node(up, "etcdctl", "endpoint", "health", "-w", "json"),
                Planned("local", f"every voting member healthy, and more than half of them healthy without "
                                 f"{up.name}'s (waits ≤ {ETCD_HEALTHY_WAIT_S:g}s)"))

    def already(self, up: Upgrade) -> str | None:
        return _not_etcd(up)

    def run(self, up: Upgrade) -> str:
        verdict = _wait_verdict(f"every etcd member healthy before {up.name} goes down",
                                lambda: self._read(up), ETCD_HEALTHY_WAIT_S, blocked=GateBlocked)
        self._proof[up.name] = verdict.text
        return verdict.text

    def _read(self, up: Upgrade) -> post.Verdict:
        etcd = up.host.etcd
        members, health = etcd.member_list(), etcd.endpoint_health()
        up.keep_json(f"{up.name}: etcdctl member list, endpoint health",
                     {"members": [m.__dict__ for m in members.members], "health": [e.__dict__ for e in health.endpoints]})
        return gate.quorum_before(up.name, up.node.address, health, members, _names(up))

    def verify(self, up: Upgrade) -> str:
        reason = _not_etcd(up)
        if reason:
            return reason
        proof = self._proof.get(up.name)
        return proof if proof else holds(self._read(up))


class EtcdCaughtUp(Step):
    name = "etcd_caught_up"
    title = "etcd gate: this node's member healthy again and caught up with the leader's raft index"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        if _not_etcd(up):
            return (Planned("local", f"nothing: {_not_etcd(up)}"),)
        return (on_node(up, "etcdctl", "endpoint", "health", "-w", "json"),
                on_node(up, "etcdctl", "endpoint", "status", "-w", "json"),
                Planned("local", f"{up.name}'s member healthy, its raftAppliedIndex within {gate.RAFT_LAG_MAX} of "
                                 f"the leader's raftIndex (waits ≤ {ETCD_CATCH_UP_WAIT_S:g}s)"))

    def already(self, up: Upgrade) -> str | None:
        return _not_etcd(up)

    def run(self, up: Upgrade) -> str:
        return _wait_verdict(f"{up.name}'s etcd member healthy and caught up", lambda: self._read(up),
                             ETCD_CATCH_UP_WAIT_S, blocked=StepFailed).text

    def _read(self, up: Upgrade) -> post.Verdict:
        etcd = up.host.etcd
        health, status = etcd.endpoint_health(), etcd.endpoint_status()
        up.keep_json(f"{up.name}: etcdctl endpoint status", [m.__dict__ for m in status.members])
        return gate.caught_up(up.name, up.node.address, health, status)

    def verify(self, up: Upgrade) -> str:
        return _not_etcd(up) or holds(self._read(up))


def control_plane_pods(up: Upgrade) -> post.Verdict:
    """The node's kube-apiserver, kube-controller-manager and kube-scheduler mirror pods, each Ready."""
    pods = [p for p in up.need_kube().list_pods(node=up.kube_name, namespace=CONTROL_PLANE_NAMESPACE) if p.mirror]
    seen, problems = [], []
    for component in CONTROL_PLANE_COMPONENTS:
        found = [p for p in pods if p.labels.get("component") == component]
        if not found:
            problems.append(f"no {component} mirror pod (label component={component}) on {up.kube_name} in "
                            f"{CONTROL_PLANE_NAMESPACE}")
        for pod in found:
            (seen if pod.ready and not pod.deleting else problems).append(
                f"{pod.ref} {'Ready' if pod.ready else 'not Ready'} ({pod.phase}, {pod.restarts} restart(s))")
    if problems:
        return post.Verdict.no(f"the control plane of {up.name} is not Ready: " + "; ".join(problems),
                               fix=f"on {up.name}: `crictl ps -a` / `docker ps -a`, the manifests in "
                                   "/etc/kubernetes/manifests and `journalctl -u kubelet`; the kubelet runs them as "
                                   "static pods")
    return post.Verdict.ok("Ready: " + ", ".join(seen))


class ControlPlanePods(Step):
    name = "control_plane_pods"
    title = "control plane: the node's kube-apiserver, kube-controller-manager and kube-scheduler Ready"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        if not up.node.is_control_plane:
            return (Planned("local", f"nothing: {self.already(up)}"),)
        return (Planned("Kubernetes API", f"mirror pods of {', '.join(CONTROL_PLANE_COMPONENTS)} on {up.kube_name} "
                                          f"in {CONTROL_PLANE_NAMESPACE} Ready (waits ≤ {CONTROL_PLANE_PODS_WAIT_S:g}s)"),)

    def already(self, up: Upgrade) -> str | None:
        if up.node.is_control_plane:
            return None
        return f"{up.name} is not in the inventory's kube_control_plane group: it runs no control-plane static pods"

    def run(self, up: Upgrade) -> str:
        return _wait_verdict(f"the control-plane static pods of {up.name} Ready", lambda: control_plane_pods(up),
                             CONTROL_PLANE_PODS_WAIT_S, blocked=StepFailed).text

    def verify(self, up: Upgrade) -> str:
        return self.already(up) or holds(control_plane_pods(up))
