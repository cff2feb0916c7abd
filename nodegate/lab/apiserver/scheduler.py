"""The scheduler: binds unbound pods to a Ready, schedulable node whose taints they tolerate
and whose node affinity they match.

Each function takes the Cluster (nodegate.lab.apiserver.cluster) it works on."""
from __future__ import annotations

import logging

from nodegate.lab.apiserver.objects import NODES, PODS, controller_of, is_active
from nodegate.lab.apiserver.podstate import pending_unscheduled
from nodegate.lab.apiserver.store import clone, now_rfc3339

log = logging.getLogger("nodegate.lab.apiserver.cluster")

def tolerates(tolerations: list[dict], taint: dict) -> bool:
    for tol in tolerations or []:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol["key"] == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False

def node_matches_affinity(pod_spec: dict, node: dict) -> bool:
    labels = node["metadata"].get("labels") or {}
    for key, value in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    for term in terms:  # terms are ORed, requirements inside a term ANDed
        ok = True
        for expr in term.get("matchExpressions") or []:
            ok &= _node_requirement(expr, labels.get(expr["key"]), expr["key"] in labels)
        for expr in term.get("matchFields") or []:
            value = node["metadata"]["name"] if expr["key"] == "metadata.name" else None
            ok &= _node_requirement(expr, value, value is not None)
        if ok:
            return True
    return False

def _node_requirement(expr: dict, value: str | None, present: bool) -> bool:
    op, values = expr.get("operator"), expr.get("values") or []
    if op == "In":
        return present and value in values
    if op == "NotIn":
        return not present or value not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and values:
        try:
            return int(value) > int(values[0]) if op == "Gt" else int(value) < int(values[0])
        except ValueError:
            return False
    return False

def preferred_score(pod_spec: dict, node: dict) -> int:
    labels = node["metadata"].get("labels") or {}
    score = 0
    for pref in (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                 .get("preferredDuringSchedulingIgnoredDuringExecution") or []):
        exprs = (pref.get("preference") or {}).get("matchExpressions") or []
        if all(_node_requirement(e, labels.get(e["key"]), e["key"] in labels) for e in exprs):
            score += int(pref.get("weight", 0))
    return score

# -- scheduler ---------------------------------------------------------------------------
def schedule(cluster, now: float) -> None:
    nodes = cluster.store.peek(NODES)
    pods = cluster.store.peek(PODS)
    count_on: dict[str, int] = {}
    for p in pods:
        if p["spec"].get("nodeName") and is_active(p):
            count_on[p["spec"]["nodeName"]] = count_on.get(p["spec"]["nodeName"], 0) + 1
    for pod in pods:
        if pod["spec"].get("nodeName") or not is_active(pod):
            continue
        spec = pod["spec"]
        reasons: dict[str, int] = {}
        fits = []
        for node in nodes:
            reason = cluster._unfit(spec, node)
            if reason:
                reasons[reason] = reasons.get(reason, 0) + 1
            else:
                fits.append(node)
        if not fits:
            total = len(nodes)
            text = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items(), key=lambda kv: kv[0]))
            message = (f"0/{total} nodes are available: {text}. preemption: 0/{total} nodes are available: "
                       f"{total} Preemption is not helpful for scheduling.")
            new_status = pending_unscheduled(pod, message, now)
            if pod.get("status") != new_status:
                pod = clone(pod)
                pod["status"] = new_status
                cluster.store.update(PODS, pod)
            if cluster._sched_messages.get(pod["metadata"]["uid"]) != message:
                cluster._sched_messages[pod["metadata"]["uid"]] = message
                cluster.event(pod, "FailedScheduling", message, type_="Warning", component="default-scheduler")
            continue
        owner = (controller_of(pod) or {}).get("uid")

        def score(node: dict) -> tuple:
            name = node["metadata"]["name"]
            same = sum(1 for p in pods if p["spec"].get("nodeName") == name and is_active(p)
                       and owner and (controller_of(p) or {}).get("uid") == owner)
            return (-preferred_score(spec, node), same, count_on.get(name, 0), name)

        target = min(fits, key=score)["metadata"]["name"]
        pod = clone(pod)
        pod["spec"]["nodeName"] = target
        count_on[target] = count_on.get(target, 0) + 1
        pod["status"] = {"phase": "Pending", "qosClass": "BestEffort", "conditions": [
            {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
             "lastTransitionTime": now_rfc3339(now)}]}
        bound = cluster.store.update(PODS, pod)
        pods = [bound if p["metadata"]["uid"] == bound["metadata"]["uid"] else p for p in pods]
        cluster._sched_messages.pop(pod["metadata"]["uid"], None)
        cluster.event(bound, "Scheduled", f"Successfully assigned {bound['metadata']['namespace']}/"
                                       f"{bound['metadata']['name']} to {target}", component="default-scheduler")

def _unfit(cluster, spec: dict, node: dict) -> str:
    if node["spec"].get("unschedulable") and not tolerates(
            spec.get("tolerations") or [], {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}):
        return "node(s) were unschedulable"
    for taint in node["spec"].get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if taint.get("key") == "node.kubernetes.io/unschedulable":
            continue
        if not tolerates(spec.get("tolerations") or [], taint):
            return f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
    if not node_matches_affinity(spec, node):
        return "node(s) didn't match Pod's node affinity/selector"
    return ""
