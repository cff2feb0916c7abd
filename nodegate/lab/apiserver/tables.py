"""Server-side printing (`Accept: ...;as=Table;g=meta.k8s.io`): the columns kubectl shows.

kubectl prints only NAME and AGE for objects it gets back as plain JSON, so `get pods -o wide`
needs these tables to show STATUS, NODE and the rest.
"""
from __future__ import annotations

import time
from datetime import datetime


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration."""
    s = int(seconds)
    if s < 0:
        s = 0
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if h < 24 * 365 * 2:
        return f"{d}d"
    return f"{d // 365}y{d % 365}d" if d % 365 else f"{d // 365}y"


def age(obj: dict) -> str:
    created = _ts(obj["metadata"].get("creationTimestamp"))
    return "<unknown>" if created is None else human_duration(time.time() - created)


def _col(name: str, type_: str = "string", priority: int = 0, fmt: str = "") -> dict:
    return {"name": name, "type": type_, "format": fmt, "description": name, "priority": priority}


def pod_status_text(pod: dict) -> str:
    """The STATUS column, following kubectl's printPod reasoning."""
    meta, st = pod["metadata"], pod.get("status", {})
    reason = st.get("reason") or st.get("phase", "Unknown")
    for cs in st.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
    if meta.get("deletionTimestamp"):
        reason = "Terminating"
    return reason


def pod_row(pod: dict) -> list:
    st = pod.get("status", {})
    statuses = st.get("containerStatuses") or []
    total = len(pod.get("spec", {}).get("containers") or [])
    ready = sum(1 for cs in statuses if cs.get("ready"))
    restarts = sum(cs.get("restartCount", 0) for cs in statuses)
    return [pod["metadata"]["name"], f"{ready}/{total}", pod_status_text(pod), restarts, age(pod),
            st.get("podIP") or "<none>", pod.get("spec", {}).get("nodeName") or "<none>",
            st.get("nominatedNodeName") or "<none>", "<none>"]


POD_COLUMNS = [_col("Name", fmt="name"), _col("Ready"), _col("Status"), _col("Restarts", "string"),
               _col("Age"), _col("IP", priority=1), _col("Node", priority=1),
               _col("Nominated Node", priority=1), _col("Readiness Gates", priority=1)]


def node_row(node: dict) -> list:
    st = node.get("status", {})
    ready = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), None)
    text = "Ready" if ready and ready["status"] == "True" else "NotReady" if ready else "Unknown"
    if node.get("spec", {}).get("unschedulable"):
        text += ",SchedulingDisabled"
    labels = node["metadata"].get("labels", {})
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    info = st.get("nodeInfo", {})
    internal = next((a["address"] for a in st.get("addresses") or [] if a["type"] == "InternalIP"), "<none>")
    return [node["metadata"]["name"], text, ",".join(roles) or "<none>", age(node),
            info.get("kubeletVersion", ""), internal, "<none>", info.get("osImage", ""),
            info.get("kernelVersion", ""), info.get("containerRuntimeVersion", "")]


NODE_COLUMNS = [_col("Name", fmt="name"), _col("Status"), _col("Roles"), _col("Age"), _col("Version"),
                _col("Internal-IP", priority=1), _col("External-IP", priority=1),
                _col("OS-Image", priority=1), _col("Kernel-Version", priority=1),
                _col("Container-Runtime", priority=1)]


def _images(obj: dict) -> tuple[str, str]:
    containers = obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    return ",".join(c["name"] for c in containers), ",".join(c.get("image", "") for c in containers)


def deployment_row(obj: dict) -> list:
    st = obj.get("status", {})
    names, images = _images(obj)
    return [obj["metadata"]["name"], f"{st.get('readyReplicas', 0)}/{obj['spec'].get('replicas', 1)}",
            st.get("updatedReplicas", 0), st.get("availableReplicas", 0), age(obj), names, images]


DEPLOYMENT_COLUMNS = [_col("Name", fmt="name"), _col("Ready"), _col("Up-to-date", "integer"),
                      _col("Available", "integer"), _col("Age"), _col("Containers", priority=1),
                      _col("Images", priority=1)]


def daemonset_row(obj: dict) -> list:
    st = obj.get("status", {})
    names, images = _images(obj)
    selector = obj["spec"].get("template", {}).get("spec", {}).get("nodeSelector") or {}
    return [obj["metadata"]["name"], st.get("desiredNumberScheduled", 0), st.get("currentNumberScheduled", 0),
            st.get("numberReady", 0), st.get("updatedNumberScheduled", 0), st.get("numberAvailable", 0),
            ",".join(f"{k}={v}" for k, v in selector.items()) or "<none>", age(obj), names, images]


DAEMONSET_COLUMNS = [_col("Name", fmt="name"), _col("Desired", "integer"), _col("Current", "integer"),
                     _col("Ready", "integer"), _col("Up-to-date", "integer"), _col("Available", "integer"),
                     _col("Node Selector"), _col("Age"), _col("Containers", priority=1),
                     _col("Images", priority=1)]


def pdb_row(obj: dict) -> list:
    spec, st = obj.get("spec", {}), obj.get("status", {})
    return [obj["metadata"]["name"], str(spec.get("minAvailable", "N/A")), str(spec.get("maxUnavailable", "N/A")),
            st.get("disruptionsAllowed", 0), age(obj)]


PDB_COLUMNS = [_col("Name", fmt="name"), _col("Min Available"), _col("Max Unavailable"),
               _col("Allowed Disruptions", "integer"), _col("Age")]

def event_row(obj: dict) -> list:
    inv = obj.get("involvedObject") or {}
    last = _ts(obj.get("lastTimestamp")) or _ts(obj.get("eventTime")) or _ts(obj["metadata"].get("creationTimestamp"))
    seen = "<unknown>" if last is None else human_duration(time.time() - last)
    return [seen, obj.get("type", ""), obj.get("reason", ""), f"{inv.get('kind', '').lower()}/{inv.get('name', '')}",
            (obj.get("source") or {}).get("component", ""), obj.get("message", ""),
            obj.get("firstTimestamp") or "", obj.get("count", 1), obj["metadata"]["name"]]


EVENT_COLUMNS = [_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Subobject", priority=1),
                 _col("Message"), _col("First Seen", priority=1), _col("Count", "integer", priority=1),
                 _col("Name", priority=1)]


def replicaset_row(obj: dict) -> list:
    st = obj.get("status", {})
    names, images = _images(obj)
    return [obj["metadata"]["name"], obj["spec"].get("replicas", 1), st.get("replicas", 0),
            st.get("readyReplicas", 0), age(obj), names, images]


REPLICASET_COLUMNS = [_col("Name", fmt="name"), _col("Desired", "integer"), _col("Current", "integer"),
                      _col("Ready", "integer"), _col("Age"), _col("Containers", priority=1), _col("Images", priority=1)]


def namespace_row(obj: dict) -> list:
    return [obj["metadata"]["name"], (obj.get("status") or {}).get("phase", ""), age(obj)]


NAMESPACE_COLUMNS = [_col("Name", fmt="name"), _col("Status"), _col("Age")]


def lease_row(obj: dict) -> list:
    return [obj["metadata"]["name"], (obj.get("spec") or {}).get("holderIdentity") or "", age(obj)]


LEASE_COLUMNS = [_col("Name", fmt="name"), _col("Holder"), _col("Age")]

def service_row(obj: dict) -> list:
    spec = obj.get("spec") or {}
    ports = ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []) or "<none>"
    selector = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items()) or "<none>"
    return [obj["metadata"]["name"], spec.get("type", "ClusterIP"), spec.get("clusterIP", "<none>"), "<none>",
            ports, age(obj), selector]


SERVICE_COLUMNS = [_col("Name", fmt="name"), _col("Type"), _col("Cluster-IP"), _col("External-IP"),
                   _col("Port(s)"), _col("Age"), _col("Selector", priority=1)]

PRINTERS = {
    "Service": (SERVICE_COLUMNS, service_row),
    "Event": (EVENT_COLUMNS, event_row),
    "ReplicaSet": (REPLICASET_COLUMNS, replicaset_row),
    "Namespace": (NAMESPACE_COLUMNS, namespace_row),
    "Lease": (LEASE_COLUMNS, lease_row),
    "Pod": (POD_COLUMNS, pod_row),
    "Node": (NODE_COLUMNS, node_row),
    "Deployment": (DEPLOYMENT_COLUMNS, deployment_row),
    "DaemonSet": (DAEMONSET_COLUMNS, daemonset_row),
    "PodDisruptionBudget": (PDB_COLUMNS, pdb_row),
}
DEFAULT = ([_col("Name", fmt="name"), _col("Created At", "date")],
           lambda obj: [obj["metadata"]["name"], obj["metadata"].get("creationTimestamp", "")])


def table(kind: str, api_version: str, items: list[dict], resource_version: str, include: str) -> dict:
    columns, row = PRINTERS.get(kind, DEFAULT)
    rows = []
    for obj in items:
        entry: dict = {"cells": row(obj)}
        if include == "Object":
            entry["object"] = {"kind": kind, "apiVersion": api_version, **obj}
        elif include != "None":
            entry["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                               "metadata": obj["metadata"]}
        rows.append(entry)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": columns, "rows": rows}
