"""The resource types this server knows, and the discovery documents built from them.

kubectl resolves every name (`po`, `deploy`, `pdb`, `pods/eviction`) through discovery, so
names, singular names, short names, verbs and the eviction subresource's group/version must
be the real ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    has_status: bool = False          # spec/status split: PUT on the object ignores status
    bumps_generation: bool = False    # metadata.generation follows spec changes
    field_selectors: tuple[str, ...] = field(default=("metadata.name", "metadata.namespace"))
    verbs: tuple[str, ...] = tuple(VERBS)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


POD_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy",
              "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
              "status.podIP", "status.nominatedNodeName")
EVENT_FIELDS = ("metadata.name", "metadata.namespace", "involvedObject.kind",
                "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                "involvedObject.apiVersion", "involvedObject.resourceVersion",
                "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type")

RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "namespace", "Namespace", False, ("ns",),
             subresources=("status", "finalize"), has_status=True,
             field_selectors=("metadata.name", "status.phase")),
    Resource("", "v1", "nodes", "node", "Node", False, ("no",), subresources=("status",),
             has_status=True, field_selectors=("metadata.name", "spec.unschedulable")),
    Resource("", "v1", "pods", "pod", "Pod", True, ("po",), ("all",),
             subresources=("status", "eviction", "log", "exec", "binding"), has_status=True,
             field_selectors=POD_FIELDS),
    Resource("", "v1", "events", "event", "Event", True, ("ev",), field_selectors=EVENT_FIELDS),
    # Stored and served as they are (no controller acts on them): what kubectl and tools read.
    Resource("", "v1", "configmaps", "configmap", "ConfigMap", True, ("cm",)),
    Resource("", "v1", "secrets", "secret", "Secret", True, field_selectors=("metadata.name", "metadata.namespace", "type")),
    Resource("", "v1", "services", "service", "Service", True, ("svc",), ("all",), subresources=("status",),
             has_status=True),
    Resource("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, ("sa",)),
    Resource("", "v1", "endpoints", "endpoints", "Endpoints", True, ("ep",)),
    Resource("apps", "v1", "daemonsets", "daemonset", "DaemonSet", True, ("ds",), ("all",),
             subresources=("status",), has_status=True, bumps_generation=True),
    Resource("apps", "v1", "deployments", "deployment", "Deployment", True, ("deploy",), ("all",),
             subresources=("status", "scale"), has_status=True, bumps_generation=True),
    Resource("apps", "v1", "replicasets", "replicaset", "ReplicaSet", True, ("rs",), ("all",),
             subresources=("status", "scale"), has_status=True, bumps_generation=True),
    Resource("policy", "v1", "poddisruptionbudgets", "poddisruptionbudget", "PodDisruptionBudget",
             True, ("pdb",), subresources=("status",), has_status=True, bumps_generation=True),
    Resource("coordination.k8s.io", "v1", "leases", "lease", "Lease", True),
    # Never stored: a POST is answered with the verdict for the requesting user (auth.py).
    Resource("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "", "SelfSubjectAccessReview", False,
             verbs=("create",)),
    # Storage as a Rook cluster has it: read by the harness's storage gates, stored as they are.
    Resource("", "v1", "persistentvolumes", "persistentvolume", "PersistentVolume", False, ("pv",),
             subresources=("status",), has_status=True),
    Resource("storage.k8s.io", "v1", "storageclasses", "storageclass", "StorageClass", False, ("sc",)),
    Resource("storage.k8s.io", "v1", "csidrivers", "csidriver", "CSIDriver", False),
    # Rook's CRD (deploy/examples/crds.yaml: shortName ceph, status subresource); the lab's Rook
    # disruption controller reads its spec.disruptionManagement.
    Resource("ceph.rook.io", "v1", "cephclusters", "cephcluster", "CephCluster", True, ("ceph",),
             subresources=("status",), has_status=True, bumps_generation=True),
)

# group -> versions served, preferred first
GROUPS: dict[str, tuple[str, ...]] = {"apps": ("v1",), "policy": ("v1",),
                                      "coordination.k8s.io": ("v1",), "authorization.k8s.io": ("v1",),
                                      "storage.k8s.io": ("v1",), "ceph.rook.io": ("v1",)}

SUBRESOURCE_VERBS = {
    "status": ["get", "patch", "update"],
    "finalize": ["update"],
    "eviction": ["create"],
    "log": ["get"],
    "exec": ["create", "get"],
    "binding": ["create"],
    "scale": ["get", "patch", "update"],
}


def find(group: str, version: str, plural: str) -> Resource | None:
    for res in RESOURCES:
        if res.group == group and res.version == version and res.plural == plural:
            return res
    return None


def by_kind(kind: str) -> Resource:
    for res in RESOURCES:
        if res.kind == kind:
            return res
    raise KeyError(kind)


def api_versions(server_address: str) -> dict:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group_doc(name: str) -> dict:
    versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in GROUPS[name]]
    return {"name": name, "versions": versions, "preferredVersion": versions[0]}


def api_group_list() -> dict:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group_doc(g) for g in GROUPS]}


def api_group(name: str) -> dict | None:
    if name not in GROUPS:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(name)}


def resource_list(group: str, version: str) -> dict | None:
    if group and version not in GROUPS.get(group, ()):
        return None
    if not group and version != "v1":
        return None
    entries = []
    for res in RESOURCES:
        if res.group != group or res.version != version:
            continue
        entry = {"name": res.plural, "singularName": res.singular, "namespaced": res.namespaced,
                 "kind": res.kind, "verbs": list(res.verbs)}
        if res.short_names:
            entry["shortNames"] = list(res.short_names)
        if res.categories:
            entry["categories"] = list(res.categories)
        entries.append(entry)
        for sub in res.subresources:
            sub_entry = {"name": f"{res.plural}/{sub}", "singularName": "",
                         "namespaced": res.namespaced, "kind": res.kind,
                         "verbs": SUBRESOURCE_VERBS[sub]}
            if sub == "eviction":
                # kubectl drain reads the Eviction group/version from here.
                sub_entry.update(group="policy", version="v1", kind="Eviction")
            elif sub in ("log", "exec"):
                sub_entry["kind"] = {"log": "Pod", "exec": "PodExecOptions"}[sub]
            elif sub == "scale":
                sub_entry.update(group="autoscaling", version="v1", kind="Scale")
            elif sub == "binding":
                sub_entry["kind"] = "Binding"
            entries.append(sub_entry)
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": entries}


# -- OpenAPI v3: only what kubectl asks before it writes ----------------------------------------
# kubectl apply/create -f validates on the server (fieldValidation=Strict) when the PATCH of the
# kind lists that query parameter in /openapi/v3; else it validates on the client and needs full
# schemas. This server accepts the parameter (and ignores it), so it says so, and no more.
def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_v3_root() -> dict:
    gvs = {("", "v1")} | {(g, v) for g, vs in GROUPS.items() for v in vs}
    return {"paths": {_gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}"} for g, v in sorted(gvs)}}


def openapi_v3_gv(gv_path: str) -> dict | None:
    group, version = ("", gv_path.split("/")[1]) if gv_path.startswith("api/") else tuple(gv_path.split("/")[1:3])
    paths = {}
    for res in RESOURCES:
        if res.group != group or res.version != version or "patch" not in res.verbs:
            continue
        base = f"/{_gv_path(group, version)}/" + ("namespaces/{namespace}/" if res.namespaced else "")
        gvk = {"group": group, "version": version, "kind": res.kind}
        params = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                  {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                  {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}}]
        paths[f"{base}{res.plural}/{{name}}"] = {"patch": {"operationId": f"patch{res.kind}",
                                                           "x-kubernetes-action": "patch",
                                                           "x-kubernetes-group-version-kind": gvk,
                                                           "parameters": params, "responses": {}}}
    if not paths:
        return None
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.25.6"}, "paths": paths,
            "components": {"schemas": {}}}
