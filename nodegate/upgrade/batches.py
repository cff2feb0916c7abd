"""Which candidate nodes may be upgraded together: batches chosen from the cluster's own answers.

Read-only. A batch is a set of nodes whose OSDs Ceph says may stop together (`ceph osd ok-to-stop
IDS --max N`), that lie in different CRUSH hosts (and in one failure domain above host only where
Ceph lets that domain stop), and whose pods can all be evicted at once under the
PodDisruptionBudgets (their disruptionsAllowed spent across the batch). etcd and control-plane
nodes always go alone, and ``limit 1`` is the one-node-at-a-time run. The decisions are
nodegate.core.batching's; this module reads the cluster once and asks Ceph once per batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodegate.core import batching
from nodegate.core.crush import OSD_HOST_LABEL, OSD_ID_LABEL, OsdPod, map_crush_host
from nodegate.core.drainpreview import BLOCKS, LOSES, WAITS, DrainIssue
from nodegate.core.drainpreview import preview as drain_issues
from nodegate.core.errors import UsageError

if TYPE_CHECKING:
    from nodegate.cluster.ceph import Ceph
    from nodegate.cluster.kube.client import Kube
    from nodegate.cluster.kube.models import PdbSummary, PodSummary
    from nodegate.cluster.session import Access
    from nodegate.profile.model import NodeSpec, Profile

ROOK_OSD_PDB = "rook-ceph-osd"      # Rook's budget over every OSD pod, swapped while a domain drains


@dataclass(frozen=True)
class Batch:
    """Nodes upgraded side by side (profile node names, in rolling order) and, in one line, what
    made them a batch."""
    nodes: tuple[str, ...]
    why: str


def alone_reason(node: "NodeSpec") -> str | None:
    """Why ``node`` never shares a batch (None: it may)."""
    if node.is_control_plane:
        return "control plane alone"
    if node.is_etcd:
        return "etcd member alone"
    return None


def one_at_a_time(candidates: Sequence["NodeSpec"]) -> list[Batch]:
    return [Batch((n.name,), f"{n.name}: {alone_reason(n) or 'one node at a time'}") for n in candidates]


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"a batch limit is a whole number of nodes of at least 1, or None for auto, not {limit!r}",
                         fix="use --parallel auto, or --parallel N with N >= 1")


@dataclass(frozen=True)
class ClusterView:
    """What the planner and the drain preview read, once: CRUSH, pools, pods, budgets, Rook."""
    tree: batching.CrushTree
    pools: tuple[batching.PoolDomain, ...]
    pods: tuple[batching.BudgetPod, ...]
    budgets: tuple[batching.Budget, ...]
    rook_manages: bool
    candidates: tuple[batching.Candidate, ...]

    @property
    def domain(self) -> str:
        """The failure domain Rook's OSD budgets follow: the lowest any pool's rule enforces."""
        return batching.lowest_domain(self.pools)

    def osd_domain(self, pod: batching.BudgetPod) -> str | None:
        label = pod.labels.get(batching.ROOK_DOMAIN_LABEL.format(type=self.domain))
        if label:
            return f"{self.domain} {label}"
        host = pod.labels.get(OSD_HOST_LABEL)
        bucket = self.tree.bucket(host, self.domain) if host else None
        return f"{self.domain} {bucket}" if bucket else None

    def refused(self, kube_nodes: Sequence[str]) -> list[batching.BudgetShortfall]:
        return batching.simulate_evictions(self.pods, self.budgets, kube_nodes, rook_manages=self.rook_manages,
                                           osd_domain=self.osd_domain)


def budget_pods(pods: Sequence["PodSummary"]) -> tuple[batching.BudgetPod, ...]:
    """The pods a drain would evict (not DaemonSet, mirror, finished or leaving), as the planner sees them."""
    return tuple(batching.BudgetPod(ref=p.ref, namespace=p.namespace, node=p.node or "", labels=p.labels,
                                    owner=f"{p.owner_kind} {p.owner_name}" if p.owner_kind else "none",
                                    unmanaged=p.unmanaged, uses_emptydir=p.uses_emptydir,
                                    grace_period_s=p.grace_period_s)
                 for p in pods if p.node and not (p.daemonset or p.mirror or p.finished or p.deleting))


def budgets_of(pdbs: Sequence["PdbSummary"], namespace: str) -> tuple[batching.Budget, ...]:
    """The PodDisruptionBudgets as the planner sees them (Rook's OSD budget in ``namespace`` marked)."""
    from nodegate.cluster.kube.models import selector_matches

    def matcher(selector):
        return lambda pod: selector_matches(selector, pod.labels)

    return tuple(batching.Budget(ref=b.ref, namespace=b.namespace, matches=matcher(b.selector),
                                 disruptions_allowed=b.disruptions_allowed, expected_pods=b.expected_pods,
                                 rook_osd=b.namespace == namespace and b.name == ROOK_OSD_PDB) for b in pdbs)


def read_view(kube: "Kube", ceph: "Ceph", profile: "Profile", candidates: Sequence["NodeSpec"]) -> ClusterView:
    """One reading of the cluster for a plan: `ceph osd tree`, pools and rules, every Node, pod and PDB."""
    from nodegate.cluster.storage import rook_settings

    tree, pools = ceph.crush_layout()
    namespace = profile.ceph.namespace
    nodes = {n.name: n for n in kube.list_nodes()}
    all_pods = kube.list_pods()
    osd_pods = [p for p in all_pods if p.namespace == namespace and p.labels.get("app") == batching.ROOK_OSD_APP
                and not p.deleting]
    pods = budget_pods(all_pods)
    budgets = budgets_of(kube.list_pdbs(), namespace)
    rook = rook_settings(kube, namespace)
    above = sorted({p.domain for p in pools if p.domain not in batching.HOST_TYPES})
    planned = []
    for spec in candidates:
        status = nodes.get(spec.kube_node)
        mine = [OsdPod(p.name, int(p.labels[OSD_ID_LABEL]) if str(p.labels.get(OSD_ID_LABEL, "")).isdigit() else None,
                       p.labels.get(OSD_HOST_LABEL)) for p in osd_pods if p.node == spec.kube_node]
        mapping = map_crush_host(inventory_name=spec.name, node_name=status.name if status else None,
                                 node_labels=status.labels if status else None, crush_hosts=tree.host_osds,
                                 osd_pods=mine, override=spec.crush_host, no_osds_expected=not spec.ceph_osds)
        alone = alone_reason(spec)
        if alone is None and status is None:
            alone = f"alone: no Kubernetes Node {spec.kube_node} found"
        elif alone is None and not mapping.ok:
            alone = "alone: its OSDs are not known (" + "; ".join(mapping.problems) + ")"
        host = mapping.crush_host
        planned.append(batching.Candidate(
            name=spec.name, kube_node=spec.kube_node, alone=alone, host=host, osds=mapping.osd_ids,
            domains={d: b for d in above if host and (b := tree.bucket(host, d))}))
    return ClusterView(tree=tree, pools=tuple(pools), pods=pods, budgets=budgets,
                       rook_manages=rook.found and rook.manage_pod_budgets, candidates=tuple(planned))


def plan_batches(access: "Access", profile: "Profile", candidates: Sequence["NodeSpec"],
                 limit: int | None) -> list[Batch]:
    """The candidates (in the order a rolling run takes them) in batches. ``limit`` None: as large
    as the cluster allows; N: at most N nodes a batch; 1: one node at a time (nothing is read).
    Reads only; without the Kubernetes API or Ceph every node goes alone, and the why says so."""
    check_limit(limit)
    if limit == 1 or len(candidates) < 2:
        return one_at_a_time(candidates)
    kube, ceph = access.kube, access.ceph
    if kube is None or ceph is None:
        return [Batch((n.name,), f"{n.name}: {alone_reason(n) or 'alone: the Kubernetes API and Ceph cannot be read'}")
                for n in candidates]
    view = read_view(kube, ceph, profile, candidates)
    return batches_from(view, ceph, limit)


def batches_from(view: ClusterView, ceph: "Ceph", limit: int | None) -> list[Batch]:
    # Ceph is asked for as many OSDs as the cluster has: its answer may hold OSDs of nodes that are
    # not candidates (control plane, not selected), and any subset of it may stop too, so the
    # limit is applied to the candidates taken from it, never to the question.
    cap = len({i for osds in view.tree.host_osds.values() for i in osds})

    def may_stop(osds: tuple[int, ...]) -> batching.StopAnswer:
        reading = ceph.ok_to_stop(osds, max_osds=max(cap, len(osds)))
        answer = reading.value
        return batching.StopAnswer(ok=answer.ok, osds=tuple(answer.osds), command=reading.result.command.replace(
            " -f json", ""), reason=answer.reason)

    grouped = batching.group(view.candidates, limit=limit, pools=view.pools, may_stop=may_stop,
                             budgets_refuse=view.refused)
    return [Batch(g.names, g.why) for g in grouped]


@dataclass(frozen=True)
class Preview:
    """What would block, stall or be lost draining ``nodes`` at once (a node, or a planned batch)."""
    nodes: tuple[str, ...]
    issues: tuple[DrainIssue, ...]

    @property
    def blocking(self) -> tuple[DrainIssue, ...]:
        return tuple(i for i in self.issues if i.severity == BLOCKS)

    def lines(self) -> list[str]:
        counts = {kind: sum(i.severity == kind for i in self.issues) for kind in (BLOCKS, WAITS, LOSES)}
        head = f"drain {', '.join(self.nodes)}: " + (", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
                                                     or "nothing blocks, waits or is lost")
        return [head, *(f"  {i.describe()}" for i in self.issues)]


def preview_drains(view: ClusterView, profile: "Profile", groups: Sequence[Sequence[str]]) -> list[Preview]:
    """The drain preview of each group of profile node names (single nodes or batches)."""
    kube_of = {c.name: c.kube_node for c in view.candidates}
    kube_of.update({n.name: n.kube_node for n in profile.nodes if n.name not in kube_of})
    found = []
    for names in groups:
        issues = drain_issues(view.pods, view.budgets, [kube_of.get(n, n) for n in names],
                              drain_timeout_s=profile.upgrade.drain_timeout_s, rook_manages=view.rook_manages,
                              osd_domain=view.osd_domain)
        found.append(Preview(tuple(names), tuple(issues)))
    return found


def plan_preview(access: "Access", profile: "Profile", candidates: Sequence["NodeSpec"],
                 batches: Sequence[Batch], *, view: ClusterView | None = None) -> list[Preview]:
    """Plan mode's drain preview: every candidate on its own, then every batch of more than one node.
    Read-only; empty when the API or Ceph cannot be read (plan mode says so itself)."""
    kube, ceph = access.kube, access.ceph
    if kube is None or ceph is None or not candidates:
        return []
    view = view or read_view(kube, ceph, profile, candidates)
    groups = [(n.name,) for n in candidates] + [b.nodes for b in batches if len(b.nodes) > 1]
    return preview_drains(view, profile, groups)


def plan_with_preview(access: "Access", profile: "Profile", candidates: Sequence["NodeSpec"],
                      limit: int | None) -> tuple[list[Batch], list[Preview]]:
    """plan_batches and plan_preview on one reading of the cluster (plan mode)."""
    check_limit(limit)
    kube, ceph = access.kube, access.ceph
    if kube is None or ceph is None or not candidates:
        return plan_batches(access, profile, candidates, limit), []
    view = read_view(kube, ceph, profile, candidates)
    if limit == 1 or len(candidates) < 2:
        batches = one_at_a_time(candidates)
    else:
        batches = batches_from(view, ceph, limit)
    return batches, plan_preview(access, profile, candidates, batches, view=view)


def node_drain_issues(profile: "Profile", kube_node: str, pods: Sequence["PodSummary"], pdbs: Sequence["PdbSummary"],
                      *, rook_manages: bool) -> list[DrainIssue]:
    """The drain preview of one node from pods and budgets already read (the preflight's)."""
    return drain_issues(budget_pods(pods), budgets_of(pdbs, profile.ceph.namespace), [kube_node],
                        drain_timeout_s=profile.upgrade.drain_timeout_s, rook_manages=rook_manages)
