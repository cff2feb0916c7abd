"""Will a drain get through? The pods that would block or stall draining a node, or a batch of nodes
drained at once, each with its owner and the fix: pure decisions over pods and budgets read once.

The procedure drains as Kubespray and kubectl do with ``--ignore-daemonsets --delete-emptydir-data
--force`` and a finite timeout (field-facts.md: Kubespray's ``drain_timeout``; kubectl's PDB refusals
are HTTP 429, asked again every 5 s). So:

- a PodDisruptionBudget with no disruption left blocks the drain until it times out (a single-replica
  budget never has one: the pod must run twice to leave once); one with fewer disruptions left than
  the batch evicts makes the drain wait until the first pods' replacements are Ready elsewhere
  (Rook's OSD pods, pinned to their node, never are: that waits for ever);
- Rook's ``rook-ceph-osd-<type>-<bucket>`` budgets (``maxUnavailable: 0``) exist while Rook holds
  another failure domain down (rook ``clusterdisruption/osd.go``): they block until that domain is
  back and PGs are clean; with ``managePodBudgets`` a batch over two failure domains blocks on them;
- a pod no controller recreates is deleted for good (``--force``), and emptyDir data is deleted
  (``--delete-emptydir-data``): the drain goes on, the loss is the operator's to accept first;
- a pod whose terminationGracePeriodSeconds is longer than the drain timeout outlasts the drain: it
  fails on its timeout.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nodegate.core.batching import Budget, BudgetPod, simulate_evictions

BLOCKS = "blocks"     # the drain cannot finish before its timeout
WAITS = "waits"       # the drain finishes later: evictions wait for replacements elsewhere
LOSES = "loses"       # the drain finishes and something is gone for good


@dataclass(frozen=True)
class DrainIssue:
    severity: str          # BLOCKS, WAITS or LOSES
    pod: str               # namespace/name (or several, comma-separated, for a budget)
    owner: str
    node: str
    what: str
    fix: str

    def describe(self) -> str:
        return f"{self.severity}: {self.pod} ({self.owner}) on {self.node}: {self.what}; fix: {self.fix}"


def preview(pods: Sequence[BudgetPod], budgets: Sequence[Budget], nodes: Sequence[str], *, drain_timeout_s: float,
            rook_manages: bool = False, osd_domain: Callable[[BudgetPod], str | None] = lambda p: None,
            ) -> list[DrainIssue]:
    """Every issue of draining ``nodes`` (Kubernetes Node names) at once, blocking ones first."""
    chosen = set(nodes)
    mine = [p for p in pods if p.node in chosen]
    by_ref = {p.ref: p for p in mine}
    issues: list[DrainIssue] = []
    for short in simulate_evictions(mine, budgets, nodes, rook_manages=rook_manages, osd_domain=osd_domain):
        budget = next(b for b in budgets if b.ref == short.budget)
        owners = sorted({by_ref[r].owner for r in short.pods if r in by_ref})
        if budget.rook_osd and rook_manages:
            fix = "upgrade nodes of one failure domain per batch (plan the batch again), as Rook allows"
        elif budget.ref.split("/", 1)[-1].startswith("rook-ceph-osd-"):
            fix = ("Rook holds another failure domain down: bring its OSDs back up and wait for PGs active+clean "
                   "(ceph status) before this drain")
        elif budget.expected_pods <= 1:
            fix = (f"a single-replica budget never lets its pod go: scale {', '.join(owners)} to 2 or more "
                   f"replicas, or relax PodDisruptionBudget {budget.ref} for the window")
        elif len(short.nodes) > 1:
            fix = (f"upgrade {', '.join(short.nodes)} in different batches, or let {budget.ref} allow "
                   f"{len(short.pods)} disruptions (more replicas, or a larger maxUnavailable)")
        else:
            fix = (f"make the pods of {budget.ref} healthy elsewhere (scale up, fix unready replicas) or relax "
                   "the budget before the drain")
        single = " (single replica)" if budget.expected_pods <= 1 and not budget.rook_osd else ""
        pinned = budget.rook_osd or budget.ref.split("/", 1)[-1].startswith("rook-ceph-osd")
        severity = WAITS if short.allowed >= 1 and not pinned else BLOCKS
        if budget.rook_osd and not rook_manages:
            fix = ("Rook does not manage this budget (managePodBudgets false) and OSD pods cannot run elsewhere: "
                   "upgrade these nodes in different batches")
        issues.append(DrainIssue(severity, ", ".join(short.pods), ", ".join(owners), ", ".join(short.nodes),
                                 f"PodDisruptionBudget {budget.ref}{single} {short.detail}", fix))
    for pod in mine:
        if pod.grace_period_s is not None and pod.grace_period_s > drain_timeout_s:
            issues.append(DrainIssue(BLOCKS, pod.ref, pod.owner, pod.node,
                                     f"terminationGracePeriodSeconds {pod.grace_period_s} is longer than the drain "
                                     f"timeout ({drain_timeout_s:g} s)",
                                     "lower the pod's terminationGracePeriodSeconds, or raise [upgrade] "
                                     "drain_timeout_s above it"))
        if pod.unmanaged:
            issues.append(DrainIssue(LOSES, pod.ref, "no controller", pod.node,
                                     "no controller recreates it: the drain (--force) deletes it for good",
                                     "run it under a Deployment/StatefulSet, or delete or move it yourself before "
                                     "the window"))
        if pod.uses_emptydir:
            issues.append(DrainIssue(LOSES, pod.ref, pod.owner, pod.node,
                                     "its emptyDir (local storage) is deleted with it (--delete-emptydir-data)",
                                     "keep what must survive on a PersistentVolume, or accept losing the emptyDir"))
    order = {BLOCKS: 0, WAITS: 1, LOSES: 2}
    return sorted(issues, key=lambda i: order[i.severity])
