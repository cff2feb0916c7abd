"""PodDisruptionBudgets: their status (the disruption controller's arithmetic, shared with
eviction) and the lab's pdb-block fault.

Each function takes the Cluster (nodegate.lab.apiserver.cluster) it works on."""
from __future__ import annotations

import logging

from nodegate.lab.apiserver import eviction
from nodegate.lab.apiserver.faults import PDB_BLOCK
from nodegate.lab.apiserver.objects import BLOCK_PDB, PDBS, PODS, controller_of, is_active
from nodegate.lab.apiserver.store import clone, now_rfc3339

log = logging.getLogger("nodegate.lab.apiserver.cluster")

# -- the pdb-block fault ---------------------------------------------------------------
def reconcile_pdb_block(cluster) -> None:
    """While `pdb-block` is on for a node, every evictable pod there carries the block
    label and a real PDB in its namespace needs all of them healthy."""
    short = {n.name: n.kube_name for n in cluster.config.nodes}   # faults name the short lab node
    blocked_nodes = {short.get(n, n) for n in cluster.faults.nodes(PDB_BLOCK)}
    per_ns: dict[str, int] = {}
    for pod in cluster.store.peek(PODS):
        labels = pod["metadata"].get("labels") or {}
        owner = controller_of(pod)
        want = (pod["spec"].get("nodeName") in blocked_nodes and is_active(pod)
                and not (owner and owner["kind"] == "DaemonSet"))
        has = labels.get(eviction.BLOCK_LABEL) == pod["spec"].get("nodeName")
        if want:
            per_ns[pod["metadata"]["namespace"]] = per_ns.get(pod["metadata"]["namespace"], 0) + 1
        if want and not has:
            pod = clone(pod)
            pod["metadata"].setdefault("labels", {})[eviction.BLOCK_LABEL] = pod["spec"]["nodeName"]
            cluster.store.update(PODS, pod)
        elif has and not want and eviction.BLOCK_LABEL in labels:
            pod = clone(pod)
            del pod["metadata"]["labels"][eviction.BLOCK_LABEL]
            cluster.store.update(PODS, pod)
    for ns, count in per_ns.items():
        pdb = cluster.store.find(PDBS, ns, BLOCK_PDB)
        spec = {"minAvailable": count, "selector": {"matchExpressions": [
            {"key": eviction.BLOCK_LABEL, "operator": "In", "values": sorted(blocked_nodes)}]}}
        if pdb is None:
            obj = cluster.admit(PDBS, {"metadata": {"name": BLOCK_PDB, "namespace": ns, "labels": {
                "lab.nodegate.io/fault": PDB_BLOCK}}, "spec": spec}, old=None)
            cluster.store.create(PDBS, obj)
        elif pdb["spec"] != spec:
            pdb["spec"] = spec
            cluster.store.update(PDBS, pdb)
    for pdb in cluster.store.list(PDBS):
        if pdb["metadata"]["name"] == BLOCK_PDB and pdb["metadata"]["namespace"] not in per_ns:
            cluster.store.delete(PDBS, pdb["metadata"]["namespace"], BLOCK_PDB)

# -- PDB status and workload status ------------------------------------------------------
def reconcile_pdbs(cluster) -> None:
    pods = cluster.store.peek(PODS)
    ts = now_rfc3339()
    for pdb in cluster.store.list(PDBS):
        budget = eviction.compute(pdb, pods, cluster._scale_of)
        new = eviction.pdb_status(pdb, budget, ts, pdb.get("status") or {})
        if new != pdb.get("status"):
            pdb["status"] = new
            cluster.store.update(PDBS, pdb)
