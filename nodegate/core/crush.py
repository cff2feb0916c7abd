"""Which CRUSH host holds a node's OSDs: pure logic over what the cluster says.

Rook places an OSD under the CRUSH host named after its node's ``kubernetes.io/hostname``
label with every ``.`` replaced by ``-`` (rook ``pkg/daemon/ceph/client/crush.go``
``NormalizeCrushName``, used by ``pkg/operator/ceph/cluster/osd/osd.go`` ``GetLocationWithNode``),
and labels each OSD pod ``ceph-osd-id=<id>`` and ``topology-location-host=<CRUSH host>``
(``pkg/operator/ceph/cluster/osd/labels.go``). With FQDN node names the inventory name, the
Node name, the hostname label and the CRUSH host are four different strings, so the host is
derived from the label and cross-checked against the OSD pods on the node and
``ceph osd metadata`` (hostname) before anything is decided on it.

Nothing found is never read as "no OSDs": a mapping with no CRUSH host is a problem unless
the profile says the node carries no OSDs (``[nodes.<name>] ceph_osds = false``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

HOSTNAME_LABEL = "kubernetes.io/hostname"
OSD_ID_LABEL = "ceph-osd-id"
OSD_HOST_LABEL = "topology-location-host"
NO_OSDS_FIELD = "[nodes.{node}] ceph_osds = false"
OVERRIDE_FIELD = '[nodes.{node}] crush_host = "<CRUSH host>"'


def normalize_crush_name(name: str) -> str:
    """The CRUSH bucket name Rook derives from a hostname: dots become dashes."""
    return name.replace(".", "-")


@dataclass(frozen=True)
class OsdPod:
    """An OSD pod seen on the node: its name and the two labels Rook puts on it."""
    name: str
    osd_id: int | None
    crush_host: str | None      # topology-location-host


@dataclass(frozen=True)
class CrushMapping:
    """The node's CRUSH host and OSDs, how they were found, and what does not agree."""
    inventory_name: str
    node_name: str | None                   # the Kubernetes Node
    hostname_label: str | None
    crush_host: str | None                  # None: no CRUSH host found
    osd_ids: tuple[int, ...]
    source: str                             # how crush_host was chosen
    no_osds_expected: bool = False
    evidence: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()          # non-empty: nothing may be decided on this mapping
    notes: tuple[str, ...] = ()             # disagreements that do not block (shown in evidence)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def has_osds(self) -> bool:
        return bool(self.osd_ids)

    def describe(self) -> str:
        if self.crush_host is None:
            return f"{self.inventory_name}: no CRUSH host ({self.source})"
        ids = ", ".join(f"osd.{i}" for i in self.osd_ids) or "no OSDs"
        return (f"{self.inventory_name} -> Node {self.node_name or '?'} -> {HOSTNAME_LABEL}="
                f"{self.hostname_label or '?'} -> CRUSH host {self.crush_host} ({ids}; {self.source})")

    def rows(self) -> list[list[str]]:
        return [["inventory name", self.inventory_name], ["Kubernetes Node", self.node_name or "(none)"],
                [HOSTNAME_LABEL, self.hostname_label or "(none)"], ["CRUSH host", self.crush_host or "(none)"],
                ["OSDs", ", ".join(f"osd.{i}" for i in self.osd_ids) or "(none)"], ["chosen by", self.source]]


def map_crush_host(*, inventory_name: str, node_name: str | None, node_labels: Mapping[str, str] | None,
                   crush_hosts: Mapping[str, Sequence[int]], osd_pods: Sequence[OsdPod] = (),
                   osd_metadata_hosts: Mapping[int, str] | None = None, override: str | None = None,
                   no_osds_expected: bool = False) -> CrushMapping:
    """Decide the node's CRUSH host.

    ``crush_hosts``: every CRUSH host with its OSD ids (``ceph osd tree``); ``osd_pods``: the
    OSD pods bound to the node (``app=rook-ceph-osd``); ``osd_metadata_hosts``: osd id ->
    ``hostname`` from ``ceph osd metadata``; ``override``: the profile's crush_host.
    """
    labels = dict(node_labels or {})
    label = labels.get(HOSTNAME_LABEL)
    evidence: list[str] = []
    problems: list[str] = []
    notes: list[str] = []
    fields = (f"set {OVERRIDE_FIELD.format(node=inventory_name)} in the profile, or "
              f"{NO_OSDS_FIELD.format(node=inventory_name)} if the node carries no OSDs")

    if node_name is None:
        evidence.append(f"no Kubernetes Node found for inventory name {inventory_name}")
    else:
        evidence.append(f"Node {node_name}: {HOSTNAME_LABEL}={label if label is not None else '(absent)'}")

    pod_hosts = sorted({p.crush_host for p in osd_pods if p.crush_host})
    pod_ids = sorted({p.osd_id for p in osd_pods if p.osd_id is not None})
    if osd_pods:
        evidence.append("OSD pods on the node: " + ", ".join(
            f"{p.name} ({OSD_ID_LABEL}={p.osd_id if p.osd_id is not None else '?'}, "
            f"{OSD_HOST_LABEL}={p.crush_host or '?'})" for p in osd_pods))
    else:
        evidence.append("no OSD pod (app=rook-ceph-osd) is bound to the node")

    # Candidates, strongest first.
    if override:
        host, source = override, "profile crush_host"
    elif label:
        host, source = normalize_crush_name(label), f"{HOSTNAME_LABEL} label with '.' -> '-' (as Rook names it)"
    elif node_name:
        host, source = normalize_crush_name(node_name), "Node name with '.' -> '-' (the node has no hostname label)"
        notes.append(f"Node {node_name} has no {HOSTNAME_LABEL} label; the CRUSH host was derived from its name")
    else:
        host, source = normalize_crush_name(inventory_name), "inventory name with '.' -> '-' (no Node found)"

    if not override and host not in crush_hosts and len(pod_hosts) == 1 and pod_hosts[0] in crush_hosts:
        notes.append(f"CRUSH has no host {host}; the node's OSD pods say {OSD_HOST_LABEL}={pod_hosts[0]}")
        host, source = pod_hosts[0], f"the {OSD_HOST_LABEL} label of the node's OSD pods"

    if host not in crush_hosts:
        evidence.append(f"CRUSH has no host {host} (CRUSH hosts: {', '.join(sorted(crush_hosts)) or 'none'})")
        if osd_pods:
            problems.append(f"{len(osd_pods)} OSD pod(s) run on {node_name or inventory_name} "
                            f"({', '.join(p.name for p in osd_pods)}) but CRUSH has no host {host} "
                            f"(looked for it as the {source})")
        elif override:
            problems.append(f"the profile's crush_host {override!r} for {inventory_name} is not a CRUSH host")
        elif not no_osds_expected:
            problems.append(f"found no CRUSH host for {inventory_name}: looked for {host} ({source}) among "
                            f"{len(crush_hosts)} CRUSH host(s), and no OSD pod is bound to the node")
        if problems:
            problems[-1] += f"; {fields}"
        return CrushMapping(inventory_name, node_name, label, None, (), source if not problems else source,
                            no_osds_expected, tuple(evidence), tuple(problems), tuple(notes))

    ids = tuple(sorted(int(i) for i in crush_hosts[host]))
    evidence.append(f"CRUSH host {host}: {', '.join(f'osd.{i}' for i in ids) or 'no OSDs'}")
    if no_osds_expected and ids:
        problems.append(f"the profile says {inventory_name} carries no OSDs ({NO_OSDS_FIELD.format(node=inventory_name)})"
                        f" but CRUSH host {host} holds {', '.join(f'osd.{i}' for i in ids)}; correct the profile")
    if pod_ids and set(pod_ids) != set(ids):
        problems.append(f"the OSD pods on {node_name or inventory_name} run {', '.join(f'osd.{i}' for i in pod_ids)} "
                        f"but CRUSH host {host} holds {', '.join(f'osd.{i}' for i in ids) or 'none'}; {fields}")
    for pod_host in pod_hosts:
        if pod_host != host:
            notes.append(f"an OSD pod on the node says {OSD_HOST_LABEL}={pod_host}, not {host}")
    names = {n for n in (label, node_name, inventory_name, host) if n}
    names |= {normalize_crush_name(n) for n in list(names)}
    names |= {n.split(".", 1)[0] for n in list(names)}
    for osd_id in ids:
        meta = (osd_metadata_hosts or {}).get(osd_id)
        if meta is None:
            continue
        if meta in names or normalize_crush_name(meta) in names or meta.split(".", 1)[0] in names:
            evidence.append(f"osd.{osd_id}: ceph osd metadata hostname {meta} agrees")
        else:
            notes.append(f"osd.{osd_id}: ceph osd metadata hostname {meta} is none of {', '.join(sorted(names))}")
    return CrushMapping(inventory_name, node_name, label, host, ids, source, no_osds_expected,
                        tuple(evidence), tuple(problems), tuple(notes))


@dataclass(frozen=True)
class NodeMatch:
    """The Kubernetes Node of an inventory host and why."""
    inventory_name: str
    node_name: str | None
    how: str
    candidates: tuple[str, ...] = field(default=())


def match_node(inventory_name: str, address: str | None, nodes: Sequence[Mapping], *,
               override: str | None = None) -> NodeMatch:
    """The Node for an inventory host. ``nodes``: ``{"name", "labels", "addresses"}`` mappings.

    Kubespray names the Node after the inventory host unless ``kube_override_hostname`` is set;
    clusters with FQDN nodes and short inventory names are matched by hostname label, by the
    first DNS label of the Node name, then by InternalIP (the inventory's address)."""
    by_name = {str(n["name"]): n for n in nodes}
    if override:
        return NodeMatch(inventory_name, override if override in by_name else None, "profile kube_node",
                         (override,))
    if inventory_name in by_name:
        return NodeMatch(inventory_name, inventory_name, "Node name = inventory name")
    rules = (
        ("hostname label = inventory name", lambda n: (n.get("labels") or {}).get(HOSTNAME_LABEL) == inventory_name),
        ("first DNS label of the Node name = inventory name", lambda n: str(n["name"]).split(".", 1)[0] == inventory_name),
        ("Node InternalIP = inventory address", lambda n: bool(address) and address in (n.get("addresses") or ())),
    )
    for how, rule in rules:
        found = sorted(str(n["name"]) for n in nodes if rule(n))
        if len(found) == 1:
            return NodeMatch(inventory_name, found[0], how)
        if len(found) > 1:
            return NodeMatch(inventory_name, None, f"{how} matches {len(found)} Nodes", tuple(found))
    return NodeMatch(inventory_name, None, "no Node matches by name, hostname label, DNS label or address")
