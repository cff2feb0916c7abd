"""Which nodes may be upgraded together: pure decisions over what Ceph and the API say.

- CRUSH: ``ceph osd tree`` gives each host's bucket of every type above it (rack, room, ...);
  ``ceph osd crush rule dump`` and ``ceph osd pool ls detail`` give the bucket type each pool
  places its copies across (its failure domain: the type of the rule's ``choose``/``chooseleaf`` step).
- Ceph decides which OSDs may stop together: ``ceph osd ok-to-stop IDS --max N`` answers a larger
  set that keeps every PG at min_size (ceph/ceph #39455, #39726). A subset of a set Ceph lets stop
  may stop too (fewer copies down), so a batch's OSDs are read from one such answer.
- PodDisruptionBudgets decide whose pods may go together: a drain of every node of a batch evicts
  every evictable pod there, so each PDB's ``disruptionsAllowed`` is spent across the whole batch,
  not per node. Rook's OSD budgets are the exception Rook makes of them (rook
  ``pkg/operator/ceph/disruption/clusterdisruption/osd.go``): with ``managePodBudgets`` Rook lets
  the OSDs of one failure domain go down together and blocks every other failure domain (it swaps
  its ``rook-ceph-osd`` budget for ``maxUnavailable: 0`` budgets on the other domains), so a batch
  may take OSD pods of one failure domain only.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from nodegate.core.errors import PermanentError

ROOK_OSD_APP = "rook-ceph-osd"
ROOK_DOMAIN_LABEL = "topology-location-{type}"   # Rook's label on OSD pods, one per CRUSH level
HOST_TYPES = ("osd", "host")                      # failure domains at or below a node


# -- CRUSH ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CrushTree:
    """Each CRUSH host's OSDs and the buckets above it (type -> bucket name, host itself included)."""
    host_osds: Mapping[str, tuple[int, ...]]
    host_buckets: Mapping[str, Mapping[str, str]]

    def bucket(self, host: str, type_: str) -> str | None:
        return (self.host_buckets.get(host) or {}).get(type_)


def parse_crush_tree(text: str) -> CrushTree:
    """`ceph osd tree -f json`."""
    try:
        nodes = {n["id"]: n for n in json.loads(text or "{}").get("nodes", [])}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise PermanentError(f"`ceph osd tree -f json` gave no readable tree ({exc})") from None
    parent = {child: n["id"] for n in nodes.values() for child in n.get("children") or ()}

    def osds(node_id: int, seen: frozenset[int] = frozenset()) -> list[int]:
        node = nodes.get(node_id)
        if node is None or node_id in seen:
            return []
        if node.get("type") == "osd":
            return [node_id]
        return [i for child in node.get("children") or () for i in osds(child, seen | {node_id})]

    host_osds: dict[str, tuple[int, ...]] = {}
    host_buckets: dict[str, dict[str, str]] = {}
    for node_id, node in nodes.items():
        if node.get("type") != "host":
            continue
        name = str(node["name"])
        host_osds[name] = tuple(sorted(osds(node_id)))
        above: dict[str, str] = {"host": name}
        at, hops = parent.get(node_id), 0
        while at is not None and at in nodes and hops < 16:
            above.setdefault(str(nodes[at].get("type")), str(nodes[at]["name"]))
            at, hops = parent.get(at), hops + 1
        host_buckets[name] = above
    return CrushTree(host_osds=host_osds, host_buckets=host_buckets)


@dataclass(frozen=True)
class PoolDomain:
    pool: str
    rule: str
    domain: str          # the CRUSH type the rule spreads copies over: host, rack, ... (osd: none)
    size: int
    min_size: int

    def describe(self) -> str:
        return f"pool {self.pool} (rule {self.rule}: copies on different {self.domain}s, size {self.size}, " \
               f"min_size {self.min_size})"


def rule_domain(rule: Mapping) -> str:
    """The bucket type of a rule's last choose/chooseleaf step ('osd' when it picks OSDs directly)."""
    domain = "osd"
    for step in rule.get("steps") or ():
        if str(step.get("op", "")).startswith("choose") and step.get("type"):
            domain = str(step["type"])
    return domain


def pool_domains(pools_text: str, rules_text: str) -> list[PoolDomain]:
    """`ceph osd pool ls detail -f json` and `ceph osd crush rule dump -f json`."""
    try:
        pools = json.loads(pools_text or "[]")
        rules = {int(r["rule_id"]): r for r in json.loads(rules_text or "[]")}
    except (ValueError, TypeError, KeyError) as exc:
        raise PermanentError(f"the pools or CRUSH rules gave no readable JSON ({exc})") from None
    found = []
    for pool in pools:
        rule = rules.get(int(pool.get("crush_rule", -1)))
        if rule is None:
            raise PermanentError(f"pool {pool.get('pool_name')} uses CRUSH rule {pool.get('crush_rule')}, "
                                 "which `ceph osd crush rule dump` does not list")
        found.append(PoolDomain(pool=str(pool.get("pool_name")), rule=str(rule.get("rule_name")),
                                domain=rule_domain(rule), size=int(pool.get("size") or 0),
                                min_size=int(pool.get("min_size") or 0)))
    return found


# -- PodDisruptionBudgets -------------------------------------------------------------------------
@dataclass(frozen=True)
class BudgetPod:
    """A pod a drain would evict: where it runs, its labels and what makes its eviction costly."""
    ref: str              # namespace/name
    namespace: str
    node: str             # the Kubernetes Node
    labels: Mapping[str, str]
    owner: str            # "ReplicaSet web-6d4…" or "none"
    unmanaged: bool = False          # no controller recreates it
    uses_emptydir: bool = False      # local storage the drain deletes
    grace_period_s: int | None = None


@dataclass(frozen=True)
class Budget:
    """A PodDisruptionBudget as the API reports it now."""
    ref: str
    namespace: str
    matches: Callable[[BudgetPod], bool] = field(compare=False)
    disruptions_allowed: int
    expected_pods: int = 0
    rook_osd: bool = False     # Rook's own budget over its OSD pods


@dataclass(frozen=True)
class BudgetShortfall:
    """A budget that would refuse some of a batch's evictions."""
    budget: str
    allowed: int
    pods: tuple[str, ...]       # the batch's pods it covers
    nodes: tuple[str, ...]      # where they run
    detail: str

    def describe(self) -> str:
        return f"PodDisruptionBudget {self.budget}: {self.detail}"


def simulate_evictions(pods: Sequence[BudgetPod], budgets: Sequence[Budget], nodes: Sequence[str], *,
                       rook_manages: bool = False, osd_domain: Callable[[BudgetPod], str | None] = lambda p: None,
                       ) -> list[BudgetShortfall]:
    """The budgets that would refuse evicting, at once, every pod of ``pods`` on ``nodes``: each
    budget's disruptionsAllowed is spent across the batch. With ``rook_manages`` Rook's OSD budget
    allows the OSD pods of one failure domain (``osd_domain``) and refuses a second domain."""
    batch = [p for p in pods if p.node in set(nodes)]
    short = []
    for budget in budgets:
        covered = [p for p in batch if p.namespace == budget.namespace and budget.matches(p)]
        if not covered:
            continue
        where = tuple(sorted({p.node for p in covered}))
        refs = tuple(p.ref for p in covered)
        if budget.rook_osd and rook_manages:
            domains = sorted({osd_domain(p) or f"host of {p.node}" for p in covered})
            if len(domains) > 1:
                short.append(BudgetShortfall(budget.ref, budget.disruptions_allowed, refs, where,
                                             f"Rook lets the OSDs of one failure domain down at a time and the batch "
                                             f"takes OSD pods in {', '.join(domains)}"))
            continue
        if len(covered) > budget.disruptions_allowed:
            short.append(BudgetShortfall(budget.ref, budget.disruptions_allowed, refs, where,
                                         f"allows {budget.disruptions_allowed} disruption(s) now and the batch would "
                                         f"evict {len(covered)} of its pods ({', '.join(refs)}) on {', '.join(where)}"))
    return short


# -- grouping -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A node to upgrade, as the planner sees it."""
    name: str                        # the profile's node name
    kube_node: str
    alone: str | None = None         # why it never shares a batch (control plane, etcd, unknown OSDs)
    host: str | None = None          # its CRUSH host (None: it carries no OSDs)
    osds: tuple[int, ...] = ()
    domains: Mapping[str, str] = field(default_factory=dict)   # failure-domain type -> bucket


@dataclass(frozen=True)
class Grouped:
    names: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class StopAnswer:
    """Ceph's answer to `ok-to-stop IDS --max N`: may ``osds`` stop together, and why not."""
    ok: bool
    osds: tuple[int, ...]
    command: str
    reason: str = ""


def _ids(osds: Sequence[int]) -> str:
    return ", ".join(f"osd.{i}" for i in sorted(osds)) or "no OSDs"


def group(candidates: Sequence[Candidate], *, limit: int | None, pools: Sequence[PoolDomain],
          may_stop: Callable[[tuple[int, ...]], StopAnswer],
          budgets_refuse: Callable[[tuple[str, ...]], list[BudgetShortfall]]) -> list[Grouped]:
    """Batches in rolling order: each starts with the first node not yet planned and takes the later
    ones (in order, up to ``limit``) whose OSDs Ceph's answer for the batch lets stop too, whose
    failure domains the pools allow down together, and whose pods the budgets let go with the
    batch's. ``may_stop(osds)`` asks Ceph once per batch (with --max); ``budgets_refuse(kube
    nodes)`` simulates the drains of a batch."""
    left = list(candidates)
    batches: list[Grouped] = []
    above_host = sorted({p.domain for p in pools if p.domain not in HOST_TYPES})
    while left:
        seed = left.pop(0)
        if seed.alone or limit == 1:
            batches.append(Grouped((seed.name,), f"{seed.name}: {seed.alone or 'one node at a time (limit 1)'}"))
            continue
        members = [seed]
        answer: StopAnswer | None = None
        notes: list[str] = []
        for other in list(left):
            if limit is not None and len(members) >= limit:
                break
            if other.alone:
                continue
            osds = tuple(sorted({i for m in (*members, other) for i in m.osds}))
            if other.osds:
                if answer is None:   # once a batch: grown by Ceph from the OSDs the batch has so far
                    answer = may_stop(tuple(sorted({i for m in members for i in m.osds})) or other.osds)
                if not answer.ok or not set(osds) <= set(answer.osds):
                    if len(notes) < 3:
                        notes.append(f"{other.name}: Ceph would not stop {_ids(other.osds)} with the batch "
                                     f"({answer.command} {'let ' + _ids(answer.osds) if answer.ok else answer.reason})")
                    continue
            shared = [m.name for m in members if m.host and m.host == other.host]
            if shared:
                notes.append(f"{other.name}: shares CRUSH host {other.host} with {', '.join(shared)}")
                continue
            refused = budgets_refuse(tuple(m.kube_node for m in (*members, other)))
            if refused:
                if len(notes) < 3:
                    notes.append(f"{other.name}: " + "; ".join(r.describe() for r in refused))
                continue
            members.append(other)
            left.remove(other)
        batches.append(Grouped(tuple(m.name for m in members), _why(members, answer, above_host, notes)))
    return batches


def _why(members: list[Candidate], answer: StopAnswer | None, above_host: list[str], notes: list[str]) -> str:
    names = ", ".join(m.name for m in members)
    osds = tuple(i for m in members for i in m.osds)
    if len(members) == 1:
        why = f"{names} alone"
        if notes:
            why += ": " + "; ".join(notes)
        elif not osds:
            why += ": no other candidate left"
        return why
    parts = [f"{names} together"]
    if osds:
        parts.append(f"Ceph lets {_ids(osds)} stop together ({answer.command if answer else 'ok-to-stop'})")
    for domain in above_host:
        buckets = sorted({m.domains.get(domain) or "?" for m in members if m.osds})
        if buckets:
            where = f"one {domain} ({buckets[0]})" if len(buckets) == 1 else f"{domain}s {', '.join(buckets)}"
            parts.append(f"{where}, the pools' failure domain")
    parts.append("the PodDisruptionBudgets let their pods go together")
    return "; ".join(parts)
