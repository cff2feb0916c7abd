"""The API server's write paths: admission (defaults and validation, as the registry
strategies apply them), deletion with graceful termination and finalizers, and eviction.

Each function takes the Cluster (nodegate.lab.apiserver.cluster) it works on."""
from __future__ import annotations

import json
import logging
import time

from nodegate.lab.apiserver import eviction, status
from nodegate.lab.apiserver.objects import (
    BLOCK_PDB,
    DEFAULT_TOLERATIONS,
    DEPLOYMENTS,
    PDBS,
    PODS,
    REPLICASETS,
    TERMINATE_CAP_S,
    controller_of,
    image_tag,
    is_terminal,
)
from nodegate.lab.apiserver.podstate import PodRuntime
from nodegate.lab.apiserver.selectors import match_label_selector

log = logging.getLogger("nodegate.lab.apiserver.cluster")

# ------------------------------------------------------------------ admission
def admit(cluster, res, obj: dict, *, old: dict | None) -> dict:
    """Defaults and validation, as the API server's registry strategies apply them."""
    kind = res.kind
    meta = obj.setdefault("metadata", {})
    name = meta.get("name") or meta.get("generateName") or ""
    if kind == "Pod":
        return cluster._admit_pod(obj, old, name)
    if kind == "Namespace":
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        if old is None:
            obj["status"] = {"phase": "Active"}
        return obj
    if kind in ("Deployment", "ReplicaSet", "DaemonSet"):
        spec = obj.setdefault("spec", {})
        selector = spec.get("selector")
        tmpl_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        causes = []
        if not selector:
            causes.append(("FieldValueRequired", "spec.selector", "Required value"))
        elif not match_label_selector(selector, tmpl_labels):
            causes.append(("FieldValueInvalid", "spec.template.metadata.labels",
                           f"Invalid value: {json.dumps(tmpl_labels)}: `selector` does not match template `labels`"))
        if not ((spec.get("template") or {}).get("spec") or {}).get("containers"):
            causes.append(("FieldValueRequired", "spec.template.spec.containers", "Required value"))
        if causes:
            raise status.invalid(kind, res.group, meta.get("name", ""), causes)
        spec["template"]["spec"] = cluster._pod_spec_defaults(spec["template"]["spec"])
        spec.setdefault("revisionHistoryLimit", 10)
        if kind != "DaemonSet":
            spec.setdefault("replicas", 1)
        if kind == "Deployment":
            spec.setdefault("strategy", {"type": "RollingUpdate",
                                         "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
            spec.setdefault("progressDeadlineSeconds", 600)
        if kind == "DaemonSet":
            spec.setdefault("updateStrategy", {"type": "RollingUpdate",
                                               "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        if old is None:
            obj["status"] = ({"currentNumberScheduled": 0, "desiredNumberScheduled": 0, "numberMisscheduled": 0,
                              "numberReady": 0} if kind == "DaemonSet" else {"replicas": 0})
        return obj
    if kind == "PodDisruptionBudget":
        spec = obj.setdefault("spec", {})
        if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
            raise status.invalid(kind, res.group, meta.get("name", ""), [(
                "FieldValueInvalid", "spec", "Invalid value: policy.PodDisruptionBudgetSpec{...}: "
                "minAvailable and maxUnavailable cannot be both set")])
        if old is None:
            obj["status"] = {"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0,
                             "expectedPods": 0}
        return obj
    if kind == "Event":
        obj.setdefault("involvedObject", {})
        return obj
    if kind == "Secret":
        # stringData is write-only: the registry folds it into data (base64) and drops it
        import base64

        for key, value in (obj.pop("stringData", None) or {}).items():
            obj.setdefault("data", {})[key] = base64.b64encode(str(value).encode()).decode()
        if not obj.get("type"):
            obj["type"] = "Opaque"
        return obj
    return obj

def _pod_spec_defaults(cluster, spec: dict) -> dict:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for c in spec.get("containers") or []:
        image = c.get("image", "")
        c.setdefault("imagePullPolicy", "Always" if image_tag(image) == "latest" else "IfNotPresent")
        c.setdefault("resources", {})
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
    return spec

def _admit_pod(cluster, obj: dict, old: dict | None, name: str) -> dict:
    spec = obj.setdefault("spec", {})
    if old is None:
        containers = spec.get("containers") or []
        causes = []
        if not containers:
            causes.append(("FieldValueRequired", "spec.containers", "Required value"))
        for i, c in enumerate(containers):
            if not c.get("name"):
                causes.append(("FieldValueRequired", f"spec.containers[{i}].name", "Required value"))
            if not c.get("image"):
                causes.append(("FieldValueRequired", f"spec.containers[{i}].image", "Required value"))
        if causes:
            raise status.invalid("Pod", "", obj["metadata"].get("name", ""), causes)
        cluster._pod_spec_defaults(spec)
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("priority", 2000001000 if spec.get("priorityClassName") == "system-node-critical"
                        else 2000000000 if spec.get("priorityClassName") == "system-cluster-critical" else 0)
        tolerations = spec.setdefault("tolerations", [])
        for tol in DEFAULT_TOLERATIONS:
            if not any(t.get("key") == tol["key"] and t.get("effect") in (tol["effect"], None, "")
                       for t in tolerations) and not any(t.get("operator") == "Exists" and not t.get("key")
                                                        for t in tolerations):
                tolerations.append(dict(tol))
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        return obj
    # Pod updates may change only images, activeDeadlineSeconds and added tolerations.
    old_spec = old.get("spec") or {}
    comparable_new = json.loads(json.dumps(spec))
    comparable_old = json.loads(json.dumps(old_spec))
    for s in (comparable_new, comparable_old):
        for c in s.get("containers") or []:
            c.pop("image", None)
        s.pop("activeDeadlineSeconds", None)
        s.pop("tolerations", None)
    if comparable_new != comparable_old:
        raise status.invalid("Pod", "", old["metadata"]["name"], [(
            "FieldValueForbidden", "spec",
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, "
            "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` "
            "(only additions to existing tolerations) or `spec.terminationGracePeriodSeconds` "
            "(allow it to be set to 1 if it was previously negative)")])
    return obj

# ------------------------------------------------------------------ deletion
def delete(cluster, res, namespace: str, name: str, *, grace: int | None, propagation: str | None) -> dict:
    """DELETE as the registry does it; the response body the real server sends."""
    current = cluster.store.get(res, namespace, name)
    if res.kind == "Pod":
        return cluster.delete_pod(current, grace=grace)
    if res.kind == "Namespace":
        if name in ("default", "kube-system", "kube-public"):
            raise status.ApiError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                                  {"name": name, "kind": "namespaces"})
        if current["metadata"].get("deletionTimestamp"):
            return current
        current["status"] = {"phase": "Terminating"}
        cluster.store.update(res, current)
        return cluster.store.mark_deleting(res, namespace, name, grace_s=0)
    if propagation == "Orphan":
        for dep_res in (REPLICASETS, PODS):
            for dep in cluster.store.list(dep_res, namespace):
                refs = dep["metadata"].get("ownerReferences") or []
                kept = [r for r in refs if r.get("uid") != current["metadata"]["uid"]]
                if len(kept) != len(refs):
                    dep["metadata"]["ownerReferences"] = kept
                    if not kept:
                        dep["metadata"].pop("ownerReferences")
                    cluster.store.update(dep_res, dep)
    gone = cluster.store.delete(res, namespace, name)
    if res.kind == "Node":
        return gone
    details = {"name": name}
    if res.group:
        details["group"] = res.group
    details.update(kind=res.plural, uid=gone["metadata"]["uid"])
    return status.status_body(code=200, reason="", message="", details=details, status="Success")

def delete_pod(cluster, pod: dict, *, grace: int | None) -> dict:
    meta = pod["metadata"]
    ns, name = meta["namespace"], meta["name"]
    if grace is None:
        grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
    bound = bool(pod["spec"].get("nodeName"))
    rt = cluster.runtimes.get(meta["uid"])
    if grace <= 0 or not bound or is_terminal(pod):
        if meta.get("finalizers"):
            # The registry only marks it: the object stays, Terminating, until whoever owns
            # each finalizer removes it (finish_update deletes it then). Its kubelet, if any,
            # stops its containers on the next pass.
            return cluster.store.mark_deleting(PODS, ns, name, grace_s=0)
        cluster.runtimes.pop(meta["uid"], None)
        gone = cluster.store.delete(PODS, ns, name)
        return gone
    out = cluster.store.mark_deleting(PODS, ns, name, grace_s=grace)
    rt = cluster.runtimes.setdefault(meta["uid"], PodRuntime())
    view = cluster.mirror.views.get(pod["spec"]["nodeName"])
    if view is not None and view.up:
        cluster.event(out, "Killing", f"Stopping container {pod['spec']['containers'][0]['name']}",
                   host=view.node.kube_name)
        at = time.time() + min(grace, TERMINATE_CAP_S)
        rt.terminate_at = at if rt.terminate_at is None else min(at, rt.terminate_at)
        cluster.due(rt.terminate_at)
    return out

def finish_update(cluster, res, obj: dict) -> dict:
    """After a write: a terminating pod whose last finalizer was just removed and whose
    containers are gone (grace 0) is deleted now, as the registry deletes it during the update."""
    meta = obj["metadata"]
    if res.kind != "Pod" or not meta.get("deletionTimestamp") or meta.get("finalizers") \
            or meta.get("deletionGracePeriodSeconds", 0) != 0:
        return obj
    cluster.runtimes.pop(meta["uid"], None)
    return cluster.store.delete(PODS, meta["namespace"], meta["name"])

# ------------------------------------------------------------------ eviction
async def evict(cluster, namespace: str, name: str, body: dict, *, dry_run: bool = False) -> tuple[int, dict]:
    pod = cluster.store.get(PODS, namespace, name)
    if body and (body.get("metadata") or {}).get("name") not in (None, name):
        raise status.bad_request("name in URL does not match name in Eviction object")
    options = body.get("deleteOptions") or {}
    grace = options.get("gracePeriodSeconds")
    dry_run = bool(options.get("dryRun")) or dry_run
    success = status.status_body(code=201, reason="", message="", status="Success")
    if pod["metadata"].get("deletionTimestamp") or pod["status"].get("phase") in ("Succeeded", "Failed", "Pending"):
        # canIgnorePDB: terminal, pending or already terminating pods are evicted freely.
        if not dry_run:
            cluster.delete_pod(pod, grace=grace)
        cluster.kick()
        return 201, success
    pdbs = [p for p in cluster.store.peek(PDBS, namespace)
            if eviction.matching_pods(p, [pod])]
    blocking = [p for p in pdbs if p["metadata"]["name"] == BLOCK_PDB]
    if blocking:
        pdbs = blocking  # the fault's budget decides alone (it overlaps the pod's own)
    if len(pdbs) > 1:
        raise status.ApiError(500, "InternalError", "This pod has more than one PodDisruptionBudget, which the "
                                                    "eviction subresource does not support.")
    if pdbs:
        pdb = pdbs[0]
        budget = eviction.compute(pdb, cluster.store.peek(PODS, namespace), cluster._scale_of)
        pdb_name = pdb["metadata"]["name"]
        if budget.disruptions_allowed <= 0 and not (
                not eviction.is_ready(pod) and budget.current_healthy >= budget.desired_healthy > 0):
            raise status.ApiError(
                429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.",
                {"causes": [{"reason": "DisruptionBudget",
                             "message": f"The disruption budget {pdb_name} needs {budget.desired_healthy} "
                                        f"healthy pods and has {budget.current_healthy} currently"}]})
    if dry_run:  # `kubectl drain --dry-run=server`: every check, no change
        return 201, success
    cluster.delete_pod(pod, grace=grace)
    cluster.reconcile_pdbs()
    cluster.kick()
    return 201, success

def _scale_of(cluster, pod: dict) -> int | None:
    owner = controller_of(pod)
    if owner is None or owner["kind"] != "ReplicaSet":
        return None
    rs = cluster.store.by_uid(REPLICASETS, owner["uid"])
    if rs is None:
        return None
    dep_owner = controller_of(rs)
    if dep_owner and dep_owner["kind"] == "Deployment":
        dep = cluster.store.by_uid(DEPLOYMENTS, dep_owner["uid"])
        if dep is not None:
            return int(dep["spec"].get("replicas", 1))
    return int(rs["spec"].get("replicas", 1))
