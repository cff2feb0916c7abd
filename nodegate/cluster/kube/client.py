"""The only package that talks to the Kubernetes API (through the official ``kubernetes`` client).

Everything the harness reads or changes in the cluster goes through ``Kube``: nodes (status,
conditions, nodeInfo, cordon, annotations, a watch for Ready), pods (by node, eviction, drain
with kubectl's semantics, logs, exec into the Ceph toolbox), PodDisruptionBudgets, the
csi-rbdplugin health and the cluster-wide upgrade lock (a coordination.k8s.io/v1 Lease).
Results are frozen dataclasses, never client models, so callers do not depend on the
client's generated classes.

Startup cost matters (``pytest --collect-only`` must stay fast), so neither the client nor the
kubeconfig is loaded on import or construction: ``Kube(settings=…)`` is free, the first request
(or ``check()``, which the plugin calls once to validate the profile) loads both.

Errors (nodegate.core.errors):
- ``UsageError``: the kubeconfig is missing, unreadable or not YAML, the context is not in it,
  or the cluster cannot be reached when ``check()`` validates it; the message names the fix.
- ``TransientError``: connection refused/reset, timeouts, 5xx, a 429 that is throttling (no
  PodDisruptionBudget cause). Retried here with bounded exponential backoff, logging before each
  sleep; re-raised when the bound is reached. ``ConflictError`` (409) is transient but *not*
  retried here: the caller must re-read and decide again.
- ``PermanentError``: 401/403, 404 where an object must exist (``NotFoundError``), 422 and
  every other refusal; a drain refused or timed out (``DrainError``), a lock held by someone
  else (``LockHeld``).
The bearer token is registered with nodegate.core.secrets, so no log line or report shows it.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nodegate.cluster.kube.csi import CsiCalls
from nodegate.cluster.kube.drain import DrainCalls
from nodegate.cluster.kube.errors import ConflictError, NotFoundError
from nodegate.cluster.kube.exec import ExecCalls
from nodegate.cluster.kube.models import (
    CORDONED_BY_ANNOTATION,
    CordonResult,
    LeaseInfo,
    NodeCondition,
    NodeInfo,
    NodeStatus,
    PodSummary,
    Taint,
    _lease_info,
    _leases,
    _micro,
    _now,
    _q,
    _stamp,
    pod_summary,
)
from nodegate.cluster.kube.transport import KubeTransport
from nodegate.cluster.kube.watch import NodeWatch
from nodegate.cluster.lock import LOCK_DURATION_S
from nodegate.core.retry import CONFLICT_REREADS

if TYPE_CHECKING:
    pass

log = logging.getLogger("nodegate.kube")


class Kube(KubeTransport, NodeWatch, DrainCalls, ExecCalls, CsiCalls):
    """One cluster's API server, as named by the profile's kubeconfig and context.

    Construction is free; the kubeconfig and the client are loaded at the first request.
    ``attempts``/``retry_limit_s`` bound the retries of one request on transient errors (by
    default nodegate.core.retry.KUBE_REQUEST, which says why ten).

    The calls live by concern: KubeTransport (requests, retries, errors), NodeWatch, DrainCalls,
    ExecCalls, CsiCalls; this class adds the reads and writes of nodes, pods and Leases."""

    # -- server -------------------------------------------------------------------------
    def server_version(self, *, attempts: int | None = None) -> str:
        """The API server's gitVersion, e.g. 'v1.25.6'."""
        info = self._get("read the server version", "/version", attempts=attempts)
        return str(info.get("gitVersion") or "")

    def list_objects(self, path: str, *, what: str, missing_ok: bool = False) -> list[Mapping[str, Any]]:
        """The items of a list path as the API's JSON (``/apis/apps/v1/daemonsets``,
        ``/apis/ceph.rook.io/v1/namespaces/rook-ceph/cephclusters``). ``missing_ok``: a path the
        server does not serve (a CRD that is not installed) lists nothing instead of NotFoundError."""
        try:
            answer = self._get(what, path)
        except NotFoundError:
            if missing_ok:
                return []
            raise
        return list(answer.get("items") or ())

    # -- nodes -----------------------------------------------------------------------------
    def get_node(self, name: str) -> NodeStatus | None:
        """The node's status, or None if the cluster has no such node."""
        try:
            return self.node(name)
        except NotFoundError:
            return None

    def node(self, name: str) -> NodeStatus:
        """The node's status; NotFoundError (naming the nodes there are) if there is none."""
        try:
            node = self._get(f"read node {name}", f"/api/v1/nodes/{_q(name)}")
        except NotFoundError:
            known = ", ".join(n.name for n in self.list_nodes()) or "(none)"
            raise NotFoundError(f"the cluster has no node {name!r} (nodes: {known})",
                                fix="use the node name `kubectl get nodes` shows (the inventory name)") from None
        return self._node_status(node)

    def list_nodes(self, *, selector: str | None = None) -> list[NodeStatus]:
        nodes = self._get("list nodes", "/api/v1/nodes", query=[("labelSelector", selector)] if selector else ())
        return [self._node_status(n) for n in nodes.get("items") or ()]

    def cordon(self, name: str, *, by: str | None = None) -> CordonResult:
        """Mark the node unschedulable (``kubectl cordon``). ``changed`` says whether this call did
        it; with ``by`` (a run id) the node also records, in the same write, that nodegate did —
        so only nodes nodegate cordoned are uncordoned by it later."""
        for _ in range(CONFLICT_REREADS):
            current = self.node(name)
            if current.unschedulable:
                return CordonResult(node=name, unschedulable=True, changed=False, cordoned_by=current.cordoned_by,
                                    detail="already cordoned" + (f" by {current.cordoned_by}" if current.cordoned_by
                                                                 else " (not by nodegate)"))
            patch: dict[str, Any] = {"metadata": {"resourceVersion": current.resource_version},
                                     "spec": {"unschedulable": True}}
            if by is not None:
                patch["metadata"]["annotations"] = {CORDONED_BY_ANNOTATION: by}
            try:
                done = self._patch_node(f"cordon node {name}", name, patch)
            except ConflictError:
                continue  # the node changed since we read it (the kubelet posts status): read again
            status = self._node_status(done)
            log.info("cordoned node %s%s", name, f" (recorded as {by})" if by else "")
            return CordonResult(node=name, unschedulable=True, changed=True, cordoned_by=status.cordoned_by)
        raise ConflictError(f"node {name} kept changing while cordoning it (3 tries)")

    def uncordon(self, name: str, *, only_if_cordoned_by: str | None = None) -> CordonResult:
        """Mark the node schedulable (``kubectl uncordon``) and drop the cordoned-by record.
        With ``only_if_cordoned_by``, leave the node alone unless that run cordoned it."""
        for _ in range(CONFLICT_REREADS):
            current = self.node(name)
            if only_if_cordoned_by is not None and current.cordoned_by != only_if_cordoned_by:
                return CordonResult(node=name, unschedulable=current.unschedulable, changed=False,
                                    cordoned_by=current.cordoned_by,
                                    detail=(f"left as it is: cordoned by {current.cordoned_by}"
                                            if current.cordoned_by else "left as it is: not cordoned by nodegate"
                                            if current.unschedulable else "not cordoned"))
            if not current.unschedulable and current.cordoned_by is None:
                return CordonResult(node=name, unschedulable=False, changed=False, cordoned_by=None,
                                    detail="already schedulable")
            # None removes the field, as kubectl uncordon does.
            patch = {"metadata": {"resourceVersion": current.resource_version,
                                  "annotations": {CORDONED_BY_ANNOTATION: None}},
                     "spec": {"unschedulable": None}}
            try:
                self._patch_node(f"uncordon node {name}", name, patch)
            except ConflictError:
                continue
            log.info("uncordoned node %s", name)
            return CordonResult(node=name, unschedulable=False, changed=current.unschedulable, cordoned_by=None)
        raise ConflictError(f"node {name} kept changing while uncordoning it (3 tries)")

    def namespace_uid(self, name: str) -> str:
        """The namespace's metadata.uid ("" if it has none): kube-system's identifies the cluster,
        new whenever a cluster is built again, whatever its name."""
        found = self._get(f"read namespace {name}", f"/api/v1/namespaces/{_q(name)}")
        return str((found.get("metadata") or {}).get("uid") or "")

    def node_annotation(self, name: str, *, key: str) -> str | None:
        return self.node(name).annotations.get(key)

    def set_node_annotation(self, name: str, *, key: str, value: str | None) -> None:
        """Set (or with None remove) one annotation on the node (e.g. nodegate.io/upgrade)."""
        verb = (f"set annotation {key} on node {name}" if value is not None
                else f"remove annotation {key} from node {name}")
        self._patch_node(verb, name, {"metadata": {"annotations": {key: value}}})


    def _node_status(self, node: Mapping[str, Any]) -> NodeStatus:
        """A Node as the API's JSON has it (camelCase keys) reduced to what the checks decide on."""
        meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
        conditions = tuple(NodeCondition(type=c.get("type") or "", status=c.get("status") or "",
                                         reason=c.get("reason") or "", message=c.get("message") or "",
                                         last_transition=_stamp(c.get("lastTransitionTime")))
                           for c in status.get("conditions") or ())
        ready = next((c.status for c in conditions if c.type == "Ready"), "Unknown")
        info = status.get("nodeInfo")
        return NodeStatus(
            name=meta.get("name") or "",
            ready=ready,
            conditions=conditions,
            unschedulable=bool(spec.get("unschedulable")),
            taints=tuple(Taint(key=t.get("key") or "", effect=t.get("effect") or "", value=t.get("value") or "")
                         for t in spec.get("taints") or ()),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            info=NodeInfo(
                kubelet_version=info.get("kubeletVersion") or "", kube_proxy_version=info.get("kubeProxyVersion") or "",
                os_image=info.get("osImage") or "", kernel_version=info.get("kernelVersion") or "",
                operating_system=info.get("operatingSystem") or "", architecture=info.get("architecture") or "",
                container_runtime_version=info.get("containerRuntimeVersion") or "", boot_id=info.get("bootID") or "",
                machine_id=info.get("machineID") or "", system_uuid=info.get("systemUUID") or "",
            ) if info is not None else NodeInfo(),
            addresses=tuple((a.get("type") or "", a.get("address") or "") for a in status.get("addresses") or ()),
            resource_version=meta.get("resourceVersion") or "",
            raw=node,
        )

    # -- pods ------------------------------------------------------------------------------
    def list_pods(self, *, node: str | None = None, namespace: str | None = None,
                  selector: str | None = None) -> list[PodSummary]:
        """Pods, narrowed on the server: by node (field selector spec.nodeName), namespace, labels."""
        query: list[tuple[str, str]] = []
        if node:
            query.append(("fieldSelector", f"spec.nodeName={node}"))
        if selector:
            query.append(("labelSelector", selector))
        where = " ".join(filter(None, [f"on node {node}" if node else "",
                                       f"in namespace {namespace}" if namespace else "",
                                       f"matching {selector}" if selector else ""]))
        what = f"list pods {where}".strip()
        path = f"/api/v1/namespaces/{_q(namespace)}/pods" if namespace else "/api/v1/pods"
        pods = self._get(what, path, query=query)
        return [pod_summary(p) for p in pods.get("items") or ()]


    def pod_log(self, *, namespace: str, name: str, container: str | None = None, tail: int = 200) -> str:
        query: list[tuple[str, Any]] = [("tailLines", tail)]
        if container:
            query.insert(0, ("container", container))
        return self._get(f"read the log of pod {namespace}/{name}",
                         f"/api/v1/namespaces/{_q(namespace)}/pods/{_q(name)}/log", query=query, text=True)


    def may(self, verb: str, resource: str, *, group: str = "", subresource: str = "", namespace: str = "") -> bool:
        """One SelfSubjectAccessReview: may this kubeconfig's user do that (RBAC's answer)?"""
        attrs = {"verb": verb, "resource": resource, "group": group}
        if subresource:
            attrs["subresource"] = subresource
        if namespace:
            attrs["namespace"] = namespace
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attrs}}
        answer = self._request(f"ask whether this user may {verb} {resource}{'/' + subresource if subresource else ''}",
                               "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=body)
        return bool((answer.get("status") or {}).get("allowed"))

    # -- Leases (the primitives; the upgrade lock's policy is built on them) ------------------
    def get_lease(self, namespace: str, name: str) -> LeaseInfo | None:
        """The Lease, or None if there is none."""
        try:
            lease = self._get(f"read lease {namespace}/{name}", f"{_leases(namespace)}/{_q(name)}")
        except NotFoundError:
            return None
        return _lease_info(lease)

    def create_lease(self, *, namespace: str, name: str, holder: str, duration_s: int,
                     annotations: Mapping[str, str] | None = None) -> LeaseInfo:
        """Create the Lease held by ``holder``; ConflictError if it exists already (409)."""
        stamp = _micro(_now())
        body = ({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, "annotations": dict(annotations or {})},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": int(duration_s), "acquireTime": stamp,
                     "renewTime": stamp, "leaseTransitions": 0}})
        return _lease_info(self._request(f"create lease {namespace}/{name}", "POST", _leases(namespace), body=body))

    def replace_lease(self, lease: LeaseInfo, *, holder: str, duration_s: int | None = None,
                      annotations: Mapping[str, str] | None = None) -> LeaseInfo:
        """Write the Lease as read in ``lease`` (its resourceVersion guards the write): another
        holder takes it over (acquireTime now, one more transition), the same holder renews it
        (renewTime now). ConflictError if it changed since it was read."""
        now = _micro(_now())
        taken_over = holder != lease.holder
        body = ({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease.name, "namespace": lease.namespace, "resourceVersion": lease.resource_version,
                         "annotations": dict(annotations if annotations is not None else lease.annotations)},
            "spec": {"holderIdentity": holder,
                     "leaseDurationSeconds": int(duration_s if duration_s is not None else lease.duration_s or
                                                 LOCK_DURATION_S),
                     "acquireTime": now if taken_over or lease.acquire_time is None else _micro(lease.acquire_time),
                     "renewTime": now,
                     "leaseTransitions": lease.transitions + (1 if taken_over and lease.holder else 0)}})
        return _lease_info(self._request(f"replace lease {lease.namespace}/{lease.name}", "PUT",
                                         f"{_leases(lease.namespace)}/{_q(lease.name)}", body=body))

    def delete_lease(self, namespace: str, name: str, *, resource_version: str | None = None) -> bool:
        """Delete the Lease (only if unchanged since ``resource_version``, when given).
        False if it was already gone; ConflictError if it changed."""
        options = {"preconditions": {"resourceVersion": resource_version}} if resource_version else None
        try:
            self._request(f"delete lease {namespace}/{name}", "DELETE", f"{_leases(namespace)}/{_q(name)}",
                          body=options)
        except NotFoundError:
            return False
        return True


# -- helpers ------------------------------------------------------------------------------------


