"""The workload controllers: namespaces, the garbage collector, Deployments own ReplicaSets own
Pods, DaemonSets own one Pod per eligible node, and their status.

Each function takes the Cluster (nodegate.lab.apiserver.cluster) it works on."""
from __future__ import annotations

import json
import logging

from nodegate.lab.apiserver import eviction, resources, status
from nodegate.lab.apiserver.objects import (
    DAEMONSETS,
    DEPLOYMENTS,
    DS_TOLERATIONS,
    NAMESPACES,
    NODES,
    PODS,
    REPLICASETS,
    SERVICEACCOUNTS,
    controller_of,
    is_active,
    owner_ref,
    safe_hash,
)
from nodegate.lab.apiserver.scheduler import node_matches_affinity, tolerates
from nodegate.lab.apiserver.store import now_rfc3339

log = logging.getLogger("nodegate.lab.apiserver.cluster")

# -- namespaces and garbage collection -----------------------------------------------
def reconcile_namespaces(cluster) -> None:
    for ns in cluster.store.list(NAMESPACES):
        if not ns["metadata"].get("deletionTimestamp"):
            # the service account controller: every namespace has a `default` account
            if cluster.store.find(SERVICEACCOUNTS, ns["metadata"]["name"], "default") is None:
                cluster.store.create(SERVICEACCOUNTS, {"metadata": {"name": "default",
                                                                 "namespace": ns["metadata"]["name"]}})
            continue
        name = ns["metadata"]["name"]
        left = 0
        for res in resources.RESOURCES:
            if not res.namespaced:
                continue
            for obj in cluster.store.list(res, name):
                left += 1
                if res.kind == "Pod":
                    if not obj["metadata"].get("deletionTimestamp"):
                        cluster.delete_pod(obj, grace=None)
                else:
                    cluster.store.delete(res, name, obj["metadata"]["name"])
        if left == 0:
            cluster.store.delete(NAMESPACES, "", name)

def garbage_collect(cluster) -> None:
    """Dependents whose controlling owner is gone are deleted (background propagation)."""
    owners = {}
    for res in (DEPLOYMENTS, REPLICASETS, DAEMONSETS):
        for obj in cluster.store.peek(res):
            owners[obj["metadata"]["uid"]] = obj
    for res in (REPLICASETS, PODS):
        for obj in cluster.store.peek(res):
            owner = controller_of(obj)
            if owner is None or owner["kind"] not in ("Deployment", "ReplicaSet", "DaemonSet"):
                continue
            if owner["uid"] in owners:
                continue
            if res is PODS:
                if not obj["metadata"].get("deletionTimestamp"):
                    cluster.delete_pod(obj, grace=None)
            else:
                cluster.store.delete(res, obj["metadata"]["namespace"], obj["metadata"]["name"])

# -- Deployments -> ReplicaSets -------------------------------------------------------
def reconcile_deployments(cluster) -> None:
    all_rs = cluster.store.list(REPLICASETS)
    for dep in cluster.store.list(DEPLOYMENTS):
        if dep["metadata"].get("deletionTimestamp"):
            continue
        ns = dep["metadata"]["namespace"]
        template = dep["spec"]["template"]
        pth = safe_hash(template)
        owned = [rs for rs in all_rs if (controller_of(rs) or {}).get("uid") == dep["metadata"]["uid"]]
        current = next((rs for rs in owned
                        if rs["spec"]["template"]["metadata"].get("labels", {}).get("pod-template-hash") == pth),
                       None)
        replicas = int(dep["spec"].get("replicas", 1))
        revision = max([int((rs["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", 0))
                        for rs in owned] or [0])
        if current is None:
            labels = {**(template["metadata"].get("labels") or {}), "pod-template-hash": pth}
            selector = json.loads(json.dumps(dep["spec"]["selector"]))
            selector.setdefault("matchLabels", {})["pod-template-hash"] = pth
            rs = {"metadata": {"name": f"{dep['metadata']['name']}-{pth}", "namespace": ns, "labels": labels,
                               "annotations": {"deployment.kubernetes.io/desired-replicas": str(replicas),
                                               "deployment.kubernetes.io/max-replicas": str(replicas + 1),
                                               "deployment.kubernetes.io/revision": str(revision + 1)},
                               "ownerReferences": [owner_ref(dep)]},
                  "spec": {"replicas": replicas, "selector": selector,
                           "template": {**json.loads(json.dumps(template)),
                                        "metadata": {**template.get("metadata", {}), "labels": labels}}}}
            rs = cluster.admit(REPLICASETS, rs, old=None)
            try:
                cluster.store.create(REPLICASETS, rs)
                cluster.event(dep, "ScalingReplicaSet", f"Scaled up replica set {rs['metadata']['name']} to {replicas}",
                           component="deployment-controller")
            except status.ApiError:
                pass
        elif int(current["spec"].get("replicas", 0)) != replicas:
            current["spec"]["replicas"] = replicas
            current["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/desired-replicas"] = str(replicas)
            cluster.store.update(REPLICASETS, current)
        for rs in owned:  # older templates are scaled away (the new one is up first)
            if rs is not current and current is not None and int(rs["spec"].get("replicas", 0)) != 0:
                rs["spec"]["replicas"] = 0
                cluster.store.update(REPLICASETS, rs)

# -- ReplicaSets -> Pods ----------------------------------------------------------------
def _owned_pods(cluster, owner: dict, pods: list[dict]) -> list[dict]:
    uid = owner["metadata"]["uid"]
    return [p for p in pods if (controller_of(p) or {}).get("uid") == uid]

def reconcile_replicasets(cluster) -> None:
    pods = cluster.store.peek(PODS)
    for rs in cluster.store.list(REPLICASETS):
        if rs["metadata"].get("deletionTimestamp"):
            continue
        owned = cluster._owned_pods(rs, pods)
        active = [p for p in owned if is_active(p)]
        want = int(rs["spec"].get("replicas", 1))
        for _ in range(want - len(active)):
            cluster._create_pod_from(rs, rs["spec"]["template"], "replicaset-controller")
        if len(active) > want:
            # Prefer deleting unscheduled, then not ready, then the newest pods.
            ranked = sorted(active, key=lambda p: (bool(p["spec"].get("nodeName")), eviction.is_ready(p),
                                                   -int(p["metadata"]["resourceVersion"])))
            for pod in ranked[:len(active) - want]:
                cluster.delete_pod(pod, grace=None)
                cluster.event(rs, "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}",
                           component="replicaset-controller")

def _create_pod_from(cluster, owner: dict, template: dict, component: str, *, node: str | None = None,
                     extra_labels: dict | None = None) -> dict:
    ns = owner["metadata"]["namespace"]
    meta = template.get("metadata") or {}
    spec = json.loads(json.dumps(template["spec"]))
    if node is not None:
        spec["nodeName"] = node
        spec["affinity"] = {**(spec.get("affinity") or {}), "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}
        tolerations = spec.setdefault("tolerations", [])
        for tol in DS_TOLERATIONS:
            if not any(t.get("key") == tol["key"] and t.get("effect") == tol["effect"] for t in tolerations):
                tolerations.append(dict(tol))
    pod = {"metadata": {"generateName": f"{owner['metadata']['name']}-", "namespace": ns,
                        "labels": {**(meta.get("labels") or {}), **(extra_labels or {})},
                        "ownerReferences": [owner_ref(owner)]},
           "spec": spec}
    if meta.get("annotations"):
        pod["metadata"]["annotations"] = dict(meta["annotations"])
    pod = cluster._admit_pod(pod, None, pod["metadata"]["generateName"])
    created = cluster.store.create(PODS, pod)
    cluster.event(owner, "SuccessfulCreate", f"Created pod: {created['metadata']['name']}", component=component)
    return created

# -- DaemonSets -> one Pod per eligible node -----------------------------------------------
def ds_eligible(cluster, ds: dict, node: dict, *, running: bool = False) -> bool:
    """The DaemonSet controller's shouldRun; with `running`, its shouldContinueRunning
    (an existing pod stays unless a NoExecute taint it does not tolerate arrives)."""
    spec = ds["spec"]["template"]["spec"]
    if not node_matches_affinity(spec, node):
        return False
    tolerations = (spec.get("tolerations") or []) + DS_TOLERATIONS
    effects = ("NoExecute",) if running else ("NoSchedule", "NoExecute")
    return all(tolerates(tolerations, t) for t in node["spec"].get("taints") or []
               if t.get("effect") in effects)

def reconcile_daemonsets(cluster) -> None:
    pods = cluster.store.peek(PODS)
    nodes = cluster.store.peek(NODES)
    for ds in cluster.store.list(DAEMONSETS):
        if ds["metadata"].get("deletionTimestamp"):
            continue
        template = ds["spec"]["template"]
        revision = safe_hash(template)
        owned = cluster._owned_pods(ds, pods)
        eligible = {n["metadata"]["name"] for n in nodes if cluster.ds_eligible(ds, n)}
        keep = {n["metadata"]["name"] for n in nodes if cluster.ds_eligible(ds, n, running=True)}
        by_node: dict[str, list[dict]] = {}
        for pod in owned:
            by_node.setdefault(pod["spec"].get("nodeName", ""), []).append(pod)
        for name in sorted(eligible):
            if not any(is_active(p) for p in by_node.get(name, [])):
                cluster._create_pod_from(ds, template, "daemonset-controller", node=name, extra_labels={
                    "controller-revision-hash": revision,
                    "pod-template-generation": str(ds["metadata"].get("generation", 1))})
        for node_name, node_pods in by_node.items():
            if node_name not in keep:
                for pod in node_pods:
                    if is_active(pod):
                        cluster.delete_pod(pod, grace=None)
        # RollingUpdate: an old pod that is not ready is replaced at once (it is unavailable
        # anyway, e.g. a crash-looping csi-rbdplugin); a ready one only within maxUnavailable.
        strategy = ds["spec"].get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            continue
        old = [p for p in owned if is_active(p)
               and p["metadata"].get("labels", {}).get("controller-revision-hash") != revision]
        for pod in old:
            if not eviction.is_ready(pod):
                cluster.delete_pod(pod, grace=None)
        max_unavailable = max(1, eviction.scaled((strategy.get("rollingUpdate") or {}).get("maxUnavailable", 1),
                                                 len(eligible), round_up=True))
        unavailable = sum(1 for name in eligible
                          if not any(is_active(p) and eviction.is_ready(p) for p in by_node.get(name, [])))
        for pod in [p for p in old if eviction.is_ready(p)][:max(0, max_unavailable - unavailable)]:
            cluster.delete_pod(pod, grace=None)

def workload_status(cluster) -> None:
    pods = cluster.store.peek(PODS)
    for rs in cluster.store.list(REPLICASETS):
        owned = [p for p in cluster._owned_pods(rs, pods) if is_active(p)]
        ready = sum(1 for p in owned if eviction.is_ready(p))
        new = {"replicas": len(owned), "fullyLabeledReplicas": len(owned), "readyReplicas": ready,
               "availableReplicas": ready, "observedGeneration": rs["metadata"].get("generation", 1)}
        if not ready:
            new.pop("readyReplicas")
            new.pop("availableReplicas")
        if new != rs.get("status"):
            rs["status"] = new
            cluster.store.update(REPLICASETS, rs)
    all_rs = cluster.store.list(REPLICASETS)
    for dep in cluster.store.list(DEPLOYMENTS):
        owned = [rs for rs in all_rs if (controller_of(rs) or {}).get("uid") == dep["metadata"]["uid"]]
        pth = safe_hash(dep["spec"]["template"])
        current = [rs for rs in owned
                   if rs["spec"]["template"]["metadata"].get("labels", {}).get("pod-template-hash") == pth]
        total = sum(rs["status"].get("replicas", 0) for rs in owned)
        updated = sum(rs["status"].get("replicas", 0) for rs in current)
        ready = sum(rs["status"].get("readyReplicas", 0) for rs in owned)
        want = int(dep["spec"].get("replicas", 1))
        old = dep.get("status") or {}
        max_unavail = eviction.scaled((dep["spec"].get("strategy", {}).get("rollingUpdate") or {})
                                      .get("maxUnavailable", 0), want, round_up=False)
        available = ready >= want - max_unavail
        ts = now_rfc3339()

        def cond(ctype: str, st: str, reason: str, message: str) -> dict:
            prev = next((c for c in old.get("conditions") or [] if c["type"] == ctype), None)
            keep = prev and prev["status"] == st and prev["reason"] == reason
            return {"type": ctype, "status": st, "lastUpdateTime": prev["lastUpdateTime"] if keep else ts,
                    "lastTransitionTime": prev["lastTransitionTime"] if keep else ts,
                    "reason": reason, "message": message}

        rs_name = current[0]["metadata"]["name"] if current else dep["metadata"]["name"]
        new = {"observedGeneration": dep["metadata"].get("generation", 1), "replicas": total,
               "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready,
               "conditions": [
                   cond("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
                   if available else
                   cond("Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability."),
                   cond("Progressing", "True", "NewReplicaSetAvailable",
                        f'ReplicaSet "{rs_name}" has successfully progressed.')]}
        if total - ready > 0:
            new["unavailableReplicas"] = total - ready
        for key in ("readyReplicas", "availableReplicas"):
            if not new[key]:
                new.pop(key)
        if new != old:
            dep["status"] = new
            cluster.store.update(DEPLOYMENTS, dep)
    nodes = cluster.store.peek(NODES)
    for ds in cluster.store.list(DAEMONSETS):
        owned = [p for p in cluster._owned_pods(ds, pods) if is_active(p)]
        revision = safe_hash(ds["spec"]["template"])
        desired = sum(1 for n in nodes if cluster.ds_eligible(ds, n))
        ready = sum(1 for p in owned if eviction.is_ready(p))
        updated = sum(1 for p in owned if p["metadata"].get("labels", {}).get("controller-revision-hash") == revision)
        new = {"currentNumberScheduled": len(owned), "desiredNumberScheduled": desired, "numberMisscheduled": 0,
               "numberReady": ready, "numberAvailable": ready, "updatedNumberScheduled": updated,
               "observedGeneration": ds["metadata"].get("generation", 1)}
        if desired - ready > 0:
            new["numberUnavailable"] = desired - ready
        if not ready:
            new.pop("numberAvailable")
        if new != ds.get("status"):
            ds["status"] = new
            cluster.store.update(DAEMONSETS, ds)
