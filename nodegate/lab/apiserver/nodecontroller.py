"""The node lifecycle: Node objects mirror the lab's nodes (nodes.NodeMirror), static pods,
the kubelets' node leases, node events, and the NoExecute taint evictions.

Each function takes the Cluster (nodegate.lab.apiserver.cluster) it works on."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from nodegate.lab.apiserver import workloads
from nodegate.lab.apiserver.nodes import LOST, READY, NodeView, desired_taints
from nodegate.lab.apiserver.objects import LEASES, NODE_LEASE_RENEW_S, NODES, PODS, _ts_epoch, is_active
from nodegate.lab.apiserver.scheduler import tolerates

log = logging.getLogger("nodegate.lab.apiserver.cluster")

# -- nodes ---------------------------------------------------------------------------
def reconcile_nodes(cluster, now: float) -> None:
    for name, view in cluster.mirror.views.items():
        node = cluster.store.find(NODES, "", name)
        if node is None:  # deleted by a client: the kubelet registers it again when it runs
            if not view.up:
                continue
            node = cluster.mirror.initial_node(view, tainted_control_plane=cluster.tainted_control_plane)
            node["status"] = {}
            node = cluster.store.create(NODES, node)
            cluster.event(node, "RegisteredNode", f"Node {name} event: Registered Node {name} in Controller",
                       component="node-controller")
        new = json.loads(json.dumps(node))
        new["status"] = cluster.mirror.node_status(view, node.get("status") or {}, now)
        taints = desired_taints(node.get("spec") or {}, view)
        if taints:
            new["spec"]["taints"] = taints
        else:
            new["spec"].pop("taints", None)
        if new != node:
            node = cluster.store.update(NODES, new)
        cluster._node_events(node, view)

def static_pods(cluster) -> None:
    """The control plane's static pods, as mirror pods the kubelet of each control-plane
    node posts (Kubespray runs etcd on the host, so there is no etcd pod)."""
    for view in cluster.mirror.views.values():
        if not view.up or not view.node.control_plane or not view.kubelet_boot_id:
            continue
        node = cluster.store.find(NODES, "", view.node.kube_name)
        if node is None:
            continue
        for spec in workloads.static_pods(cluster.config, view.node):
            if cluster.store.find(PODS, "kube-system", spec["metadata"]["name"]) is not None:
                continue
            spec["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": view.node.kube_name,
                                                    "uid": node["metadata"]["uid"], "controller": True}]
            spec = cluster._admit_pod(spec, None, spec["metadata"]["name"])
            cluster.store.create(PODS, spec)

def node_leases(cluster, now: float) -> None:
    """kube-node-lease/<node>: the kubelet's heartbeat, renewed every 10 s while it runs."""
    for name, view in cluster.mirror.views.items():
        if not view.up:
            continue
        lease = cluster.store.find(LEASES, "kube-node-lease", name)
        renewed = _ts_epoch((lease or {}).get("spec", {}).get("renewTime")) if lease else None
        if renewed is not None and now - renewed < NODE_LEASE_RENEW_S:
            continue
        spec = {"holderIdentity": name, "leaseDurationSeconds": 40,
                "renewTime": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        if lease is None:
            node = cluster.store.find(NODES, "", name)
            if node is None:
                continue
            ref = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}
            cluster.store.create(LEASES, {"metadata": {"name": name, "namespace": "kube-node-lease",
                                                    "ownerReferences": [ref]}, "spec": spec})
        else:
            lease["spec"] = {**lease.get("spec", {}), **spec}
            cluster.store.update(LEASES, lease)
        cluster.due(now + NODE_LEASE_RENEW_S)

def _node_events(cluster, node: dict, view: NodeView) -> None:
    name = view.node.kube_name
    if view.up and view.kubelet_boot_id and cluster.node_boot_seen.get(name) != view.kubelet_boot_id:
        if cluster.node_boot_seen.get(name):
            cluster.event(node, "Rebooted", f"Node {name} has been rebooted, boot id: {view.kubelet_boot_id}",
                       type_="Warning", host=name)
        cluster.event(node, "Starting", "Starting kubelet.", host=name)
        cluster.node_boot_seen[name] = view.kubelet_boot_id
    phase_text = "ready" if view.phase == READY else "lost" if view.phase == LOST else ""
    if phase_text and cluster.node_phase_seen.get(name) != phase_text:
        if phase_text == "ready":
            cluster.event(node, "NodeReady", f"Node {name} status is now: NodeReady", host=name)
        elif cluster.node_phase_seen.get(name):
            cluster.event(node, "NodeNotReady", f"Node {name} status is now: NodeNotReady",
                       component="node-controller")
        cluster.node_phase_seen[name] = phase_text
    cordoned = bool(node["spec"].get("unschedulable"))
    if cluster.cordon_seen.get(name, False) != cordoned:
        if name in cluster.cordon_seen:
            cluster.event(node, "NodeNotSchedulable" if cordoned else "NodeSchedulable",
                       f"Node {name} status is now: {'NodeNotSchedulable' if cordoned else 'NodeSchedulable'}",
                       host=name)
        cluster.cordon_seen[name] = cordoned

# -- NoExecute taints (the taint manager) ---------------------------------------------
def taint_evictions(cluster, now: float) -> None:
    """A pod on a node with a NoExecute taint it does not tolerate is deleted; one that
    tolerates it for tolerationSeconds (300 s by default: not-ready, unreachable) is deleted
    when that time has passed since the taint was added."""
    tainted = {}
    for node in cluster.store.peek(NODES):
        taints = [t for t in node["spec"].get("taints") or [] if t.get("effect") == "NoExecute"]
        if taints:
            tainted[node["metadata"]["name"]] = taints
    if not tainted:
        return
    for pod in cluster.store.peek(PODS):
        taints = tainted.get(pod["spec"].get("nodeName") or "")
        if not taints or not is_active(pod):
            continue
        tolerations = pod["spec"].get("tolerations") or []
        for taint in taints:
            matching = [t for t in tolerations if tolerates([t], taint)]
            if not matching:
                delay = 0.0
            elif any(t.get("tolerationSeconds") is None for t in matching):
                continue
            else:
                delay = float(min(t["tolerationSeconds"] for t in matching))
            added = _ts_epoch(taint.get("timeAdded")) or now
            if now >= added + delay:
                cluster.event(pod, "TaintManagerEviction", f"Marking for deletion Pod {pod['metadata']['namespace']}/"
                                                        f"{pod['metadata']['name']}", component="taint-controller")
                cluster.delete_pod(pod, grace=None)
                break
            cluster.due(added + delay)
