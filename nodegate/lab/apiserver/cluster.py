"""The cluster behind the API: the controllers, scheduler and kubelets a drain talks to.

One reconcile loop (`run`) keeps every object honest with the lab:
- nodes mirror `DIR/nodes/*/state.json` (nodes.NodeMirror) with the controller-managed taints;
- Deployments own ReplicaSets own Pods; DaemonSets own one Pod per eligible node;
- a scheduler binds unbound pods to a Ready, schedulable node whose taints they tolerate;
- a kubelet per node starts pods after the node is up, restarts them after a reboot, finishes
  graceful deletions and crash-loops csi-rbdplugin where cephcsi cannot load `rbd`;
- the disruption controller keeps PDB status; eviction uses the same arithmetic;
- an OSD runs iff its node is up and its rook-ceph-osd pod runs (LabCeph.start_osd/stop_osd).
Everything a client can see goes through the store, so every change is a watch event.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from aiohttp import WSMsgType, web

from nodegate.lab.apiserver import eviction, resources, status, workloads
from nodegate.lab.apiserver.faults import CSI_RBD_BROKEN, PDB_BLOCK, Faults
from nodegate.lab.apiserver.nodes import LOST, READY, NodeMirror, NodeView, desired_taints
from nodegate.lab.apiserver.podstate import (CSI_CONTAINER, CrashLoop, PodRuntime, pending_unscheduled, pod_ip,
                                             pod_status)
from nodegate.lab.apiserver.selectors import match_label_selector
from nodegate.lab.apiserver.store import Store, clone, now_rfc3339
from nodegate.lab import shared_files
from nodegate.lab.config import LabConfig

log = logging.getLogger(__name__)

NAMESPACES = resources.find("", "v1", "namespaces")
NODES = resources.find("", "v1", "nodes")
PODS = resources.find("", "v1", "pods")
EVENTS = resources.find("", "v1", "events")
DAEMONSETS = resources.find("apps", "v1", "daemonsets")
DEPLOYMENTS = resources.find("apps", "v1", "deployments")
REPLICASETS = resources.find("apps", "v1", "replicasets")
PDBS = resources.find("policy", "v1", "poddisruptionbudgets")
LEASES = resources.find("coordination.k8s.io", "v1", "leases")
SERVICEACCOUNTS = resources.find("", "v1", "serviceaccounts")

POLL_S = 0.2                 # state.json and faults.json are read this often (the contract's bound)
SAVE_EVERY_S = 2.0            # objects are saved this often when they changed
FULL_EVERY_S = 2.0           # a full reconcile at least this often, whatever changed
POD_START_S = 1.0            # a bound pod's containers run this long after its node can run them
TERMINATE_CAP_S = 3.0        # containers exit on SIGTERM: a pod is gone after its grace or this
MAX_EVENTS = 600
NODE_LEASE_RENEW_S = 10.0    # the kubelet's node lease renew interval (leaseDuration 40 s)
CEPHCSI_FIXED = (3, 12)      # cephcsi from v3.12 loads rbd.ko.zst on Ubuntu 24.04 (rook #14507)
TOOLBOX_LABEL = ("app", "rook-ceph-tools")
TOOLBOX_BINARIES = ("ceph", "rados", "rbd")
BLOCK_PDB = "nodegate-lab-pdb-block"
HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
DS_TOLERATIONS = [  # what the DaemonSet controller adds to every DaemonSet pod
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]
DEFAULT_TOLERATIONS = [  # the DefaultTolerationSeconds admission plugin
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
]


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def image_tag(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def safe_hash(data: object, n: int = 10) -> str:
    raw = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).digest()
    return "".join(HASH_ALPHABET[b % len(HASH_ALPHABET)] for b in raw[:n])


def controller_of(obj: dict) -> dict | None:
    return next((o for o in obj["metadata"].get("ownerReferences") or [] if o.get("controller")), None)


def owner_ref(owner: dict) -> dict:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


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


def _ts_epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def is_terminal(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def is_active(pod: dict) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and not is_terminal(pod)


class Cluster:
    def __init__(self, config: LabConfig, store: Store, faults: Faults, *, ceph_factory=None) -> None:
        self.config = config
        self.store = store
        self.faults = faults
        self.mirror = NodeMirror(config)
        self.runtimes: dict[str, PodRuntime] = {}      # pod uid -> what its kubelet knows
        self.ip_counter: dict[str, int] = {}
        self._wake: asyncio.Event | None = None
        self._due: float = 0.0                         # earliest pending timer
        self._ceph_factory = ceph_factory
        self._ceph = None
        self._osd_tasks: dict[str, asyncio.Task] = {}
        self._osd_state: dict[str, bool] = {}          # node -> OSD last made running (True) / stopped
        self._osd_checked = 0.0
        from nodegate.lab.apiserver.disruption import DisruptionController

        self.disruption = DisruptionController(self)
        self._sched_messages: dict[str, str] = {}      # pod uid -> last FailedScheduling message
        self._event_keys: dict[tuple, tuple[str, str]] = {}  # (uid, reason, message, source) -> event
        self.node_phase_seen: dict[str, str] = {}
        self.node_boot_seen: dict[str, str] = {}
        self.cordon_seen: dict[str, bool] = {}
        self.tainted_control_plane = any("worker" in n.roles for n in config.nodes)
        self.started = time.time()
        # The first pass finds a cluster that was running before this server started: pods on
        # Ready nodes are running already (a restarted API server must not bounce the OSDs).
        self.warm = True
        self._saved_rv = 0

    # ------------------------------------------------------------------ setup
    def seed(self) -> None:
        """Create the seed cluster's objects (namespaces, nodes, workloads), as if the
        cluster had been running before the lab started."""
        for kind, obj in workloads.seed_objects(self.config):
            res = resources.by_kind(kind)
            obj = self.admit(res, obj, old=None)
            self.store.create(res, obj)
        now = time.time()
        self.mirror.poll(now)
        for view in self.mirror.views.values():
            node = self.mirror.initial_node(view, tainted_control_plane=self.tainted_control_plane)
            node["status"] = self.mirror.node_status(view, {})
            self.store.create(NODES, node)

    # -- persistence: the supervisor restarts a crashed server; the cluster must not reset
    @property
    def state_path(self):
        return self.config.dir / "apiserver-state.json"

    def _lab_id(self) -> str:
        """Which run of the lab the saved state belongs to: this lab's token and directory and
        the supervisor that runs it (its PID and start time), so a server restarted by the same
        supervisor restores, and a new `lab up` in the same directory (same token) starts fresh."""
        supervisor = ""
        try:
            pid = int((self.config.dir / "supervisor.pid").read_text().split()[0])
            stat = Path(f"/proc/{pid}/stat").read_text()
            supervisor = f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22: start time
        except (OSError, ValueError, IndexError):
            pass
        return hashlib.sha256(f"{self.config.token}|{self.config.dir}|{supervisor}".encode()).hexdigest()

    def save(self) -> None:
        data = {"lab": self._lab_id(), "saved_at": time.time(), "store": self.store.dump()}
        shared_files.write_json(self.state_path, data, mode=0o600, indent=None)   # holds Secrets' data
        self._saved_rv = self.store.rv

    def restore(self) -> bool:
        """Load the objects a previous server of this lab saved; False if there are none."""
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return False
        if data.get("lab") != self._lab_id():
            return False
        try:
            self.store.load(data["store"], {r.key: r for r in resources.RESOURCES})
        except (KeyError, TypeError, ValueError) as exc:  # a damaged file must not keep the API down
            log.error("ignoring unreadable %s (%s): starting from the seed", self.state_path, exc)
            self.store.__init__()
            return False
        self._saved_rv = self.store.rv
        for pod in self.store.peek(PODS):  # new pod IPs continue after the restored ones
            ip, node = (pod.get("status") or {}).get("podIP") or "", pod["spec"].get("nodeName") or ""
            if ip.startswith("10.233.") and node:
                self.ip_counter[node] = max(self.ip_counter.get(node, 0), int(ip.rsplit(".", 1)[1]) - 10)
        for node in self.store.peek(NODES):
            name = node["metadata"]["name"]
            self.cordon_seen[name] = bool(node["spec"].get("unschedulable"))
            self.node_boot_seen[name] = (node.get("status") or {}).get("nodeInfo", {}).get("bootID", "")
            ready = next((c["status"] for c in (node.get("status") or {}).get("conditions") or []
                          if c["type"] == "Ready"), "")
            self.node_phase_seen[name] = "ready" if ready == "True" else "lost" if ready == "Unknown" else ""
        log.info("restored %d objects saved %.0f s ago", sum(len(b) for b in self.store.objects.values()),
                 time.time() - data.get("saved_at", time.time()))
        return True

    def kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def due(self, at: float) -> None:
        """Ask for a reconcile at `at` (a pod starting, a grace period ending, ...)."""
        if self._due <= time.time() or at < self._due:
            self._due = at

    async def run(self) -> None:
        self._wake = asyncio.Event()
        last_full = 0.0
        self._last_save = 0.0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
            kicked = self._wake.is_set()
            self._wake.clear()
            now = time.time()
            try:
                changed = self.faults.refresh()
                changed |= self.mirror.poll(now)
                for view in self.mirror.views.values():
                    changed |= self.mirror.refresh_modules(view)
                if kicked or changed or now >= self._due > 0 or now - last_full >= FULL_EVERY_S:
                    self._due = 0.0
                    last_full = now
                    self.reconcile(now)
                    self.warm = False
                    self.couple_osds(now)
                self.disruption.kick(now, self._ceph_ready())
                if self.store.rv != self._saved_rv and now - self._last_save >= SAVE_EVERY_S:
                    self._last_save = now
                    self.save()
            except Exception:  # a bug in one pass must not stop the cluster; log it loudly
                log.exception("reconcile failed")
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ admission
    def admit(self, res, obj: dict, *, old: dict | None) -> dict:
        """Defaults and validation, as the API server's registry strategies apply them."""
        kind = res.kind
        meta = obj.setdefault("metadata", {})
        name = meta.get("name") or meta.get("generateName") or ""
        if kind == "Pod":
            return self._admit_pod(obj, old, name)
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
            spec["template"]["spec"] = self._pod_spec_defaults(spec["template"]["spec"])
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

    def _pod_spec_defaults(self, spec: dict) -> dict:
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

    def _admit_pod(self, obj: dict, old: dict | None, name: str) -> dict:
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
            self._pod_spec_defaults(spec)
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
    def delete(self, res, namespace: str, name: str, *, grace: int | None, propagation: str | None) -> dict:
        """DELETE as the registry does it; the response body the real server sends."""
        current = self.store.get(res, namespace, name)
        if res.kind == "Pod":
            return self.delete_pod(current, grace=grace)
        if res.kind == "Namespace":
            if name in ("default", "kube-system", "kube-public"):
                raise status.ApiError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                                      {"name": name, "kind": "namespaces"})
            if current["metadata"].get("deletionTimestamp"):
                return current
            current["status"] = {"phase": "Terminating"}
            self.store.update(res, current)
            return self.store.mark_deleting(res, namespace, name, grace_s=0)
        if propagation == "Orphan":
            for dep_res in (REPLICASETS, PODS):
                for dep in self.store.list(dep_res, namespace):
                    refs = dep["metadata"].get("ownerReferences") or []
                    kept = [r for r in refs if r.get("uid") != current["metadata"]["uid"]]
                    if len(kept) != len(refs):
                        dep["metadata"]["ownerReferences"] = kept
                        if not kept:
                            dep["metadata"].pop("ownerReferences")
                        self.store.update(dep_res, dep)
        gone = self.store.delete(res, namespace, name)
        if res.kind == "Node":
            return gone
        details = {"name": name}
        if res.group:
            details["group"] = res.group
        details.update(kind=res.plural, uid=gone["metadata"]["uid"])
        return status.status_body(code=200, reason="", message="", details=details, status="Success")

    def delete_pod(self, pod: dict, *, grace: int | None) -> dict:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if grace is None:
            grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        bound = bool(pod["spec"].get("nodeName"))
        rt = self.runtimes.get(meta["uid"])
        if grace <= 0 or not bound or is_terminal(pod):
            if meta.get("finalizers"):
                # The registry only marks it: the object stays, Terminating, until whoever owns
                # each finalizer removes it (finish_update deletes it then). Its kubelet, if any,
                # stops its containers on the next pass.
                return self.store.mark_deleting(PODS, ns, name, grace_s=0)
            self.runtimes.pop(meta["uid"], None)
            gone = self.store.delete(PODS, ns, name)
            return gone
        out = self.store.mark_deleting(PODS, ns, name, grace_s=grace)
        rt = self.runtimes.setdefault(meta["uid"], PodRuntime())
        view = self.mirror.views.get(pod["spec"]["nodeName"])
        if view is not None and view.up:
            self.event(out, "Killing", f"Stopping container {pod['spec']['containers'][0]['name']}",
                       host=view.node.kube_name)
            at = time.time() + min(grace, TERMINATE_CAP_S)
            rt.terminate_at = at if rt.terminate_at is None else min(at, rt.terminate_at)
            self.due(rt.terminate_at)
        return out

    def finish_update(self, res, obj: dict) -> dict:
        """After a write: a terminating pod whose last finalizer was just removed and whose
        containers are gone (grace 0) is deleted now, as the registry deletes it during the update."""
        meta = obj["metadata"]
        if res.kind != "Pod" or not meta.get("deletionTimestamp") or meta.get("finalizers") \
                or meta.get("deletionGracePeriodSeconds", 0) != 0:
            return obj
        self.runtimes.pop(meta["uid"], None)
        return self.store.delete(PODS, meta["namespace"], meta["name"])

    # ------------------------------------------------------------------ eviction
    async def evict(self, namespace: str, name: str, body: dict, *, dry_run: bool = False) -> tuple[int, dict]:
        pod = self.store.get(PODS, namespace, name)
        if body and (body.get("metadata") or {}).get("name") not in (None, name):
            raise status.bad_request("name in URL does not match name in Eviction object")
        options = body.get("deleteOptions") or {}
        grace = options.get("gracePeriodSeconds")
        dry_run = bool(options.get("dryRun")) or dry_run
        success = status.status_body(code=201, reason="", message="", status="Success")
        if pod["metadata"].get("deletionTimestamp") or pod["status"].get("phase") in ("Succeeded", "Failed", "Pending"):
            # canIgnorePDB: terminal, pending or already terminating pods are evicted freely.
            if not dry_run:
                self.delete_pod(pod, grace=grace)
            self.kick()
            return 201, success
        pdbs = [p for p in self.store.peek(PDBS, namespace)
                if eviction.matching_pods(p, [pod])]
        blocking = [p for p in pdbs if p["metadata"]["name"] == BLOCK_PDB]
        if blocking:
            pdbs = blocking  # the fault's budget decides alone (it overlaps the pod's own)
        if len(pdbs) > 1:
            raise status.ApiError(500, "InternalError", "This pod has more than one PodDisruptionBudget, which the "
                                                        "eviction subresource does not support.")
        if pdbs:
            pdb = pdbs[0]
            budget = eviction.compute(pdb, self.store.peek(PODS, namespace), self._scale_of)
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
        self.delete_pod(pod, grace=grace)
        self.reconcile_pdbs()
        self.kick()
        return 201, success

    def _scale_of(self, pod: dict) -> int | None:
        owner = controller_of(pod)
        if owner is None or owner["kind"] != "ReplicaSet":
            return None
        rs = self.store.by_uid(REPLICASETS, owner["uid"])
        if rs is None:
            return None
        dep_owner = controller_of(rs)
        if dep_owner and dep_owner["kind"] == "Deployment":
            dep = self.store.by_uid(DEPLOYMENTS, dep_owner["uid"])
            if dep is not None:
                return int(dep["spec"].get("replicas", 1))
        return int(rs["spec"].get("replicas", 1))

    # ------------------------------------------------------------------ events
    def event(self, obj: dict, reason: str, message: str, *, type_: str = "Normal", component: str = "kubelet",
              host: str | None = None) -> None:
        meta = obj["metadata"]
        ts = now_rfc3339()
        involved = {"kind": obj.get("kind", ""), "name": meta["name"], "uid": meta.get("uid", ""),
                    "apiVersion": obj.get("apiVersion", ""), "resourceVersion": meta.get("resourceVersion", "")}
        if meta.get("namespace"):
            involved["namespace"] = meta["namespace"]
        ns = meta.get("namespace") or "default"
        source = {"component": component}
        if host:
            source["host"] = host
        key = (meta.get("uid", ""), reason, message, component)
        seen = self._event_keys.get(key)
        if seen is not None:
            # The event recorder aggregates repeats: one Event whose count and lastTimestamp grow.
            existing = self.store.find(EVENTS, *seen)
            if existing is not None:
                existing["count"] = int(existing.get("count") or 1) + 1
                existing["lastTimestamp"] = ts
                self.store.update(EVENTS, existing)
                return
        ev = {"metadata": {"name": f"{meta['name']}.{hashlib.sha1(f'{time.time_ns()}{reason}'.encode()).hexdigest()[:16]}",
                           "namespace": ns},
              "involvedObject": involved, "reason": reason, "message": message, "source": source,
              "firstTimestamp": ts, "lastTimestamp": ts, "count": 1, "type": type_, "eventTime": None,
              "reportingComponent": component, "reportingInstance": host or ""}
        try:
            self.store.create(EVENTS, ev)
        except status.ApiError:
            return
        self._event_keys[key] = (ns, ev["metadata"]["name"])
        bucket = self.store.objects.get(EVENTS.key) or {}
        if len(bucket) > MAX_EVENTS:
            oldest = sorted(bucket.items(), key=lambda kv: int(kv[1]["metadata"]["resourceVersion"]))
            for (ens, ename), _ in oldest[:len(bucket) - MAX_EVENTS]:
                self.store.delete(EVENTS, ens, ename)

    # ------------------------------------------------------------------ the loop body
    def reconcile(self, now: float) -> None:
        self.reconcile_nodes(now)
        self.node_leases(now)
        self.static_pods()
        self.reconcile_namespaces()
        self.garbage_collect()
        self.reconcile_deployments()
        self.reconcile_replicasets()
        self.reconcile_daemonsets()
        self.reconcile_pdb_block()
        self.taint_evictions(now)
        self.schedule(now)
        self.run_kubelets(now)
        self.reconcile_pdbs()
        self.workload_status()

    # -- nodes ---------------------------------------------------------------------------
    def reconcile_nodes(self, now: float) -> None:
        for name, view in self.mirror.views.items():
            node = self.store.find(NODES, "", name)
            if node is None:  # deleted by a client: the kubelet registers it again when it runs
                if not view.up:
                    continue
                node = self.mirror.initial_node(view, tainted_control_plane=self.tainted_control_plane)
                node["status"] = {}
                node = self.store.create(NODES, node)
                self.event(node, "RegisteredNode", f"Node {name} event: Registered Node {name} in Controller",
                           component="node-controller")
            new = json.loads(json.dumps(node))
            new["status"] = self.mirror.node_status(view, node.get("status") or {}, now)
            taints = desired_taints(node.get("spec") or {}, view)
            if taints:
                new["spec"]["taints"] = taints
            else:
                new["spec"].pop("taints", None)
            if new != node:
                node = self.store.update(NODES, new)
            self._node_events(node, view)

    def static_pods(self) -> None:
        """The control plane's static pods, as mirror pods the kubelet of each control-plane
        node posts (Kubespray runs etcd on the host, so there is no etcd pod)."""
        for view in self.mirror.views.values():
            if not view.up or not view.node.control_plane or not view.kubelet_boot_id:
                continue
            node = self.store.find(NODES, "", view.node.kube_name)
            if node is None:
                continue
            for spec in workloads.static_pods(self.config, view.node):
                if self.store.find(PODS, "kube-system", spec["metadata"]["name"]) is not None:
                    continue
                spec["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": view.node.kube_name,
                                                        "uid": node["metadata"]["uid"], "controller": True}]
                spec = self._admit_pod(spec, None, spec["metadata"]["name"])
                self.store.create(PODS, spec)

    def node_leases(self, now: float) -> None:
        """kube-node-lease/<node>: the kubelet's heartbeat, renewed every 10 s while it runs."""
        for name, view in self.mirror.views.items():
            if not view.up:
                continue
            lease = self.store.find(LEASES, "kube-node-lease", name)
            renewed = _ts_epoch((lease or {}).get("spec", {}).get("renewTime")) if lease else None
            if renewed is not None and now - renewed < NODE_LEASE_RENEW_S:
                continue
            spec = {"holderIdentity": name, "leaseDurationSeconds": 40,
                    "renewTime": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
            if lease is None:
                node = self.store.find(NODES, "", name)
                if node is None:
                    continue
                ref = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}
                self.store.create(LEASES, {"metadata": {"name": name, "namespace": "kube-node-lease",
                                                        "ownerReferences": [ref]}, "spec": spec})
            else:
                lease["spec"] = {**lease.get("spec", {}), **spec}
                self.store.update(LEASES, lease)
            self.due(now + NODE_LEASE_RENEW_S)

    def _node_events(self, node: dict, view: NodeView) -> None:
        name = view.node.kube_name
        if view.up and view.kubelet_boot_id and self.node_boot_seen.get(name) != view.kubelet_boot_id:
            if self.node_boot_seen.get(name):
                self.event(node, "Rebooted", f"Node {name} has been rebooted, boot id: {view.kubelet_boot_id}",
                           type_="Warning", host=name)
            self.event(node, "Starting", "Starting kubelet.", host=name)
            self.node_boot_seen[name] = view.kubelet_boot_id
        phase_text = "ready" if view.phase == READY else "lost" if view.phase == LOST else ""
        if phase_text and self.node_phase_seen.get(name) != phase_text:
            if phase_text == "ready":
                self.event(node, "NodeReady", f"Node {name} status is now: NodeReady", host=name)
            elif self.node_phase_seen.get(name):
                self.event(node, "NodeNotReady", f"Node {name} status is now: NodeNotReady",
                           component="node-controller")
            self.node_phase_seen[name] = phase_text
        cordoned = bool(node["spec"].get("unschedulable"))
        if self.cordon_seen.get(name, False) != cordoned:
            if name in self.cordon_seen:
                self.event(node, "NodeNotSchedulable" if cordoned else "NodeSchedulable",
                           f"Node {name} status is now: {'NodeNotSchedulable' if cordoned else 'NodeSchedulable'}",
                           host=name)
            self.cordon_seen[name] = cordoned

    # -- namespaces and garbage collection -----------------------------------------------
    def reconcile_namespaces(self) -> None:
        for ns in self.store.list(NAMESPACES):
            if not ns["metadata"].get("deletionTimestamp"):
                # the service account controller: every namespace has a `default` account
                if self.store.find(SERVICEACCOUNTS, ns["metadata"]["name"], "default") is None:
                    self.store.create(SERVICEACCOUNTS, {"metadata": {"name": "default",
                                                                     "namespace": ns["metadata"]["name"]}})
                continue
            name = ns["metadata"]["name"]
            left = 0
            for res in resources.RESOURCES:
                if not res.namespaced:
                    continue
                for obj in self.store.list(res, name):
                    left += 1
                    if res.kind == "Pod":
                        if not obj["metadata"].get("deletionTimestamp"):
                            self.delete_pod(obj, grace=None)
                    else:
                        self.store.delete(res, name, obj["metadata"]["name"])
            if left == 0:
                self.store.delete(NAMESPACES, "", name)

    def garbage_collect(self) -> None:
        """Dependents whose controlling owner is gone are deleted (background propagation)."""
        owners = {}
        for res in (DEPLOYMENTS, REPLICASETS, DAEMONSETS):
            for obj in self.store.peek(res):
                owners[obj["metadata"]["uid"]] = obj
        for res in (REPLICASETS, PODS):
            for obj in self.store.peek(res):
                owner = controller_of(obj)
                if owner is None or owner["kind"] not in ("Deployment", "ReplicaSet", "DaemonSet"):
                    continue
                if owner["uid"] in owners:
                    continue
                if res is PODS:
                    if not obj["metadata"].get("deletionTimestamp"):
                        self.delete_pod(obj, grace=None)
                else:
                    self.store.delete(res, obj["metadata"]["namespace"], obj["metadata"]["name"])

    # -- Deployments -> ReplicaSets -------------------------------------------------------
    def reconcile_deployments(self) -> None:
        all_rs = self.store.list(REPLICASETS)
        for dep in self.store.list(DEPLOYMENTS):
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
                rs = self.admit(REPLICASETS, rs, old=None)
                try:
                    self.store.create(REPLICASETS, rs)
                    self.event(dep, "ScalingReplicaSet", f"Scaled up replica set {rs['metadata']['name']} to {replicas}",
                               component="deployment-controller")
                except status.ApiError:
                    pass
            elif int(current["spec"].get("replicas", 0)) != replicas:
                current["spec"]["replicas"] = replicas
                current["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/desired-replicas"] = str(replicas)
                self.store.update(REPLICASETS, current)
            for rs in owned:  # older templates are scaled away (the new one is up first)
                if rs is not current and current is not None and int(rs["spec"].get("replicas", 0)) != 0:
                    rs["spec"]["replicas"] = 0
                    self.store.update(REPLICASETS, rs)

    # -- ReplicaSets -> Pods ----------------------------------------------------------------
    def _owned_pods(self, owner: dict, pods: list[dict]) -> list[dict]:
        uid = owner["metadata"]["uid"]
        return [p for p in pods if (controller_of(p) or {}).get("uid") == uid]

    def reconcile_replicasets(self) -> None:
        pods = self.store.peek(PODS)
        for rs in self.store.list(REPLICASETS):
            if rs["metadata"].get("deletionTimestamp"):
                continue
            owned = self._owned_pods(rs, pods)
            active = [p for p in owned if is_active(p)]
            want = int(rs["spec"].get("replicas", 1))
            for _ in range(want - len(active)):
                self._create_pod_from(rs, rs["spec"]["template"], "replicaset-controller")
            if len(active) > want:
                # Prefer deleting unscheduled, then not ready, then the newest pods.
                ranked = sorted(active, key=lambda p: (bool(p["spec"].get("nodeName")), eviction.is_ready(p),
                                                       -int(p["metadata"]["resourceVersion"])))
                for pod in ranked[:len(active) - want]:
                    self.delete_pod(pod, grace=None)
                    self.event(rs, "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}",
                               component="replicaset-controller")

    def _create_pod_from(self, owner: dict, template: dict, component: str, *, node: str | None = None,
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
        pod = self._admit_pod(pod, None, pod["metadata"]["generateName"])
        created = self.store.create(PODS, pod)
        self.event(owner, "SuccessfulCreate", f"Created pod: {created['metadata']['name']}", component=component)
        return created

    # -- DaemonSets -> one Pod per eligible node -----------------------------------------------
    def ds_eligible(self, ds: dict, node: dict, *, running: bool = False) -> bool:
        """The DaemonSet controller's shouldRun; with `running`, its shouldContinueRunning
        (an existing pod stays unless a NoExecute taint it does not tolerate arrives)."""
        spec = ds["spec"]["template"]["spec"]
        if not node_matches_affinity(spec, node):
            return False
        tolerations = (spec.get("tolerations") or []) + DS_TOLERATIONS
        effects = ("NoExecute",) if running else ("NoSchedule", "NoExecute")
        return all(tolerates(tolerations, t) for t in node["spec"].get("taints") or []
                   if t.get("effect") in effects)

    def reconcile_daemonsets(self) -> None:
        pods = self.store.peek(PODS)
        nodes = self.store.peek(NODES)
        for ds in self.store.list(DAEMONSETS):
            if ds["metadata"].get("deletionTimestamp"):
                continue
            template = ds["spec"]["template"]
            revision = safe_hash(template)
            owned = self._owned_pods(ds, pods)
            eligible = {n["metadata"]["name"] for n in nodes if self.ds_eligible(ds, n)}
            keep = {n["metadata"]["name"] for n in nodes if self.ds_eligible(ds, n, running=True)}
            by_node: dict[str, list[dict]] = {}
            for pod in owned:
                by_node.setdefault(pod["spec"].get("nodeName", ""), []).append(pod)
            for name in sorted(eligible):
                if not any(is_active(p) for p in by_node.get(name, [])):
                    self._create_pod_from(ds, template, "daemonset-controller", node=name, extra_labels={
                        "controller-revision-hash": revision,
                        "pod-template-generation": str(ds["metadata"].get("generation", 1))})
            for node_name, node_pods in by_node.items():
                if node_name not in keep:
                    for pod in node_pods:
                        if is_active(pod):
                            self.delete_pod(pod, grace=None)
            # RollingUpdate: an old pod that is not ready is replaced at once (it is unavailable
            # anyway, e.g. a crash-looping csi-rbdplugin); a ready one only within maxUnavailable.
            strategy = ds["spec"].get("updateStrategy") or {}
            if strategy.get("type", "RollingUpdate") != "RollingUpdate":
                continue
            old = [p for p in owned if is_active(p)
                   and p["metadata"].get("labels", {}).get("controller-revision-hash") != revision]
            for pod in old:
                if not eviction.is_ready(pod):
                    self.delete_pod(pod, grace=None)
            max_unavailable = max(1, eviction.scaled((strategy.get("rollingUpdate") or {}).get("maxUnavailable", 1),
                                                     len(eligible), round_up=True))
            unavailable = sum(1 for name in eligible
                              if not any(is_active(p) and eviction.is_ready(p) for p in by_node.get(name, [])))
            for pod in [p for p in old if eviction.is_ready(p)][:max(0, max_unavailable - unavailable)]:
                self.delete_pod(pod, grace=None)

    # -- the pdb-block fault ---------------------------------------------------------------
    def reconcile_pdb_block(self) -> None:
        """While `pdb-block` is on for a node, every evictable pod there carries the block
        label and a real PDB in its namespace needs all of them healthy."""
        short = {n.name: n.kube_name for n in self.config.nodes}   # faults name the short lab node
        blocked_nodes = {short.get(n, n) for n in self.faults.nodes(PDB_BLOCK)}
        per_ns: dict[str, int] = {}
        for pod in self.store.peek(PODS):
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
                self.store.update(PODS, pod)
            elif has and not want and eviction.BLOCK_LABEL in labels:
                pod = clone(pod)
                del pod["metadata"]["labels"][eviction.BLOCK_LABEL]
                self.store.update(PODS, pod)
        for ns, count in per_ns.items():
            pdb = self.store.find(PDBS, ns, BLOCK_PDB)
            spec = {"minAvailable": count, "selector": {"matchExpressions": [
                {"key": eviction.BLOCK_LABEL, "operator": "In", "values": sorted(blocked_nodes)}]}}
            if pdb is None:
                obj = self.admit(PDBS, {"metadata": {"name": BLOCK_PDB, "namespace": ns, "labels": {
                    "lab.nodegate.io/fault": PDB_BLOCK}}, "spec": spec}, old=None)
                self.store.create(PDBS, obj)
            elif pdb["spec"] != spec:
                pdb["spec"] = spec
                self.store.update(PDBS, pdb)
        for pdb in self.store.list(PDBS):
            if pdb["metadata"]["name"] == BLOCK_PDB and pdb["metadata"]["namespace"] not in per_ns:
                self.store.delete(PDBS, pdb["metadata"]["namespace"], BLOCK_PDB)

    # -- NoExecute taints (the taint manager) ---------------------------------------------
    def taint_evictions(self, now: float) -> None:
        """A pod on a node with a NoExecute taint it does not tolerate is deleted; one that
        tolerates it for tolerationSeconds (300 s by default: not-ready, unreachable) is deleted
        when that time has passed since the taint was added."""
        tainted = {}
        for node in self.store.peek(NODES):
            taints = [t for t in node["spec"].get("taints") or [] if t.get("effect") == "NoExecute"]
            if taints:
                tainted[node["metadata"]["name"]] = taints
        if not tainted:
            return
        for pod in self.store.peek(PODS):
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
                    self.event(pod, "TaintManagerEviction", f"Marking for deletion Pod {pod['metadata']['namespace']}/"
                                                            f"{pod['metadata']['name']}", component="taint-controller")
                    self.delete_pod(pod, grace=None)
                    break
                self.due(added + delay)

    # -- scheduler ---------------------------------------------------------------------------
    def schedule(self, now: float) -> None:
        nodes = self.store.peek(NODES)
        pods = self.store.peek(PODS)
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
                reason = self._unfit(spec, node)
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
                    self.store.update(PODS, pod)
                if self._sched_messages.get(pod["metadata"]["uid"]) != message:
                    self._sched_messages[pod["metadata"]["uid"]] = message
                    self.event(pod, "FailedScheduling", message, type_="Warning", component="default-scheduler")
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
            bound = self.store.update(PODS, pod)
            pods = [bound if p["metadata"]["uid"] == bound["metadata"]["uid"] else p for p in pods]
            self._sched_messages.pop(pod["metadata"]["uid"], None)
            self.event(bound, "Scheduled", f"Successfully assigned {bound['metadata']['namespace']}/"
                                           f"{bound['metadata']['name']} to {target}", component="default-scheduler")

    def _unfit(self, spec: dict, node: dict) -> str:
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

    # -- kubelets ----------------------------------------------------------------------------
    def csi_crashing(self, pod: dict, view: NodeView) -> bool:
        """Whether this RBD node-plugin pod's plugin container fails on its node (rook #14507).
        Recognised by what it runs (the csi-rbdplugin container, cephcsi as an RBD node server),
        so Rook's csi-rbdplugin and ceph-csi-operator's <driver>-nodeplugin crash alike."""
        container = next((c for c in pod["spec"].get("containers") or [] if c["name"] == CSI_CONTAINER), None)
        if container is None or not {"--type=rbd", "--nodeserver=true"} <= set(container.get("args") or ()):
            return False
        if view.node.name in self.faults.nodes(CSI_RBD_BROKEN):
            return True
        on_noble = view.version_id.startswith("24.04")
        old_csi = version_tuple(image_tag(container.get("image", ""))) < CEPHCSI_FIXED
        return on_noble and old_csi and "rbd" not in view.modules

    def run_kubelets(self, now: float) -> None:
        live = set()
        for pod in self.store.peek(PODS):
            uid = pod["metadata"]["uid"]
            live.add(uid)
            node_name = pod["spec"].get("nodeName")
            view = self.mirror.views.get(node_name or "")
            if view is None:
                continue  # unbound, or bound to a node no kubelet runs on
            rt = self.runtimes.get(uid)
            if rt is None:
                rt = self.runtimes[uid] = PodRuntime()
                rt.ip = (pod.get("status") or {}).get("podIP") or ""
                for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                    # A pod from before this server started keeps its counts (and its IP).
                    rt.restarts[cs["name"]] = int(cs.get("restartCount") or 0)
                    if cs.get("lastState"):
                        rt.last_state[cs["name"]] = cs["lastState"]
            if rt.bound_at is None:
                rt.bound_at = now
            if view.up and view.kubelet_boot_id and rt.boot_id != view.kubelet_boot_id:
                if rt.started_at is not None and rt.stopped_at is None:  # the node rebooted under the pod: its containers died
                    for c in pod["spec"]["containers"]:
                        rt.restarts[c["name"]] = rt.restarts.get(c["name"], 0) + 1
                        rt.last_state[c["name"]] = {"terminated": {
                            "exitCode": 255, "reason": "Error", "startedAt": now_rfc3339(rt.started_at),
                            "finishedAt": now_rfc3339(view.changed_at)}}
                rt.started_at = None
                rt.crash = None
                rt.boot_id = view.kubelet_boot_id
            if pod["metadata"].get("deletionTimestamp"):
                if view.up and (rt.terminate_at is None or rt.started_at is None):
                    # The kubelet (back) on the node finds a deleted pod: it stops it at once.
                    at = now + (0.0 if rt.started_at is None else min(
                        float(pod["metadata"].get("deletionGracePeriodSeconds", 0)), TERMINATE_CAP_S))
                    rt.terminate_at = at if rt.terminate_at is None else min(at, rt.terminate_at)
                if view.up and rt.terminate_at is not None and now >= rt.terminate_at:
                    if not pod["metadata"].get("finalizers"):
                        self.runtimes.pop(uid, None)
                        self.store.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
                        continue
                    if rt.stopped_at is None:
                        # Its containers have ended; the kubelet's final delete (grace 0) cannot
                        # remove an object with finalizers: it stays Terminating until they go.
                        rt.stopped_at = now
                        pod = self.store.mark_deleting(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"],
                                                       grace_s=0)
                elif rt.terminate_at is not None:
                    self.due(rt.terminate_at)
            if view.up and rt.started_at is None and not pod["metadata"].get("deletionTimestamp"):
                can_run_since = view.changed_at if pod["spec"].get("hostNetwork") else view.ready_since
                if can_run_since is not None and view.phase in ("starting", READY):
                    start_at = max(rt.bound_at, can_run_since) + POD_START_S
                    if self.warm and view.phase == READY:
                        start_at = now
                    if now >= start_at:
                        rt.started_at = start_at
                        if not (self.warm and rt.ip):  # a new sandbox, a new address
                            counter = self.ip_counter.get(view.node.name, 0) + 1
                            self.ip_counter[view.node.name] = counter
                            rt.ip = pod_ip(pod, view, counter)
                        self.event(pod, "Started", f"Started container {pod['spec']['containers'][0]['name']}",
                                   host=view.node.kube_name)
                    else:
                        self.due(start_at)
            crashing = False
            if view.up and rt.started_at is not None:
                crashing = self.csi_crashing(pod, view)
                if crashing and rt.crash is None:
                    rt.crash = CrashLoop(since=max(rt.started_at, now), restarts_before=rt.restarts.get(CSI_CONTAINER, 0))
                    rt.backoff_seen = -1
                elif not crashing and rt.crash is not None:
                    # The cause is gone: the next restart succeeds.
                    count, start, end, _, _ = rt.crash.restarts(now)
                    total = rt.crash.restarts_before + count + 1
                    rt.restarts[CSI_CONTAINER] = total
                    rt.last_state[CSI_CONTAINER] = {"terminated": {
                        "exitCode": 1, "reason": "Error", "startedAt": now_rfc3339(start),
                        "finishedAt": now_rfc3339(min(end, now))}}
                    rt.crash = None
                if rt.crash is not None:
                    count, start, end, _, _ = rt.crash.restarts(now)
                    self.due(end if now < end else end + rt.crash.backoff_s(count))
                    if count != rt.backoff_seen and now >= end:
                        rt.backoff_seen = count
                        self.event(pod, "BackOff", "Back-off restarting failed container", type_="Warning",
                                   host=view.node.kube_name)
            if pod["spec"].get("nodeName") and (view.up or rt.started_at is not None or view.phase == LOST):
                new_status = pod_status(pod, rt, view, now, crashing)
                if new_status != pod.get("status"):
                    pod = clone(pod)
                    pod["status"] = new_status
                    self.store.update(PODS, pod)
        for uid in list(self.runtimes):
            if uid not in live:
                del self.runtimes[uid]

    # -- PDB status and workload status ------------------------------------------------------
    def reconcile_pdbs(self) -> None:
        pods = self.store.peek(PODS)
        ts = now_rfc3339()
        for pdb in self.store.list(PDBS):
            budget = eviction.compute(pdb, pods, self._scale_of)
            new = eviction.pdb_status(pdb, budget, ts, pdb.get("status") or {})
            if new != pdb.get("status"):
                pdb["status"] = new
                self.store.update(PDBS, pdb)

    def workload_status(self) -> None:
        pods = self.store.peek(PODS)
        for rs in self.store.list(REPLICASETS):
            owned = [p for p in self._owned_pods(rs, pods) if is_active(p)]
            ready = sum(1 for p in owned if eviction.is_ready(p))
            new = {"replicas": len(owned), "fullyLabeledReplicas": len(owned), "readyReplicas": ready,
                   "availableReplicas": ready, "observedGeneration": rs["metadata"].get("generation", 1)}
            if not ready:
                new.pop("readyReplicas")
                new.pop("availableReplicas")
            if new != rs.get("status"):
                rs["status"] = new
                self.store.update(REPLICASETS, rs)
        all_rs = self.store.list(REPLICASETS)
        for dep in self.store.list(DEPLOYMENTS):
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
                self.store.update(DEPLOYMENTS, dep)
        nodes = self.store.peek(NODES)
        for ds in self.store.list(DAEMONSETS):
            owned = [p for p in self._owned_pods(ds, pods) if is_active(p)]
            revision = safe_hash(ds["spec"]["template"])
            desired = sum(1 for n in nodes if self.ds_eligible(ds, n))
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
                self.store.update(DAEMONSETS, ds)

    # ------------------------------------------------------------------ OSDs follow pods
    def _ceph_ready(self):
        """LabCeph once the supervisor has created the cluster (before that, creation owns the OSDs)."""
        if self._ceph is not None:
            return self._ceph
        try:
            book = json.loads((self.config.dir / "supervisor-status.json").read_text())
        except (OSError, ValueError):
            return None
        if (book.get("ceph") or {}).get("state") != "created":
            return None
        if self._ceph_factory is not None:
            self._ceph = self._ceph_factory(self.config)
        else:
            from nodegate.lab.ceph import LabCeph

            self._ceph = LabCeph(self.config)
        return self._ceph

    def osd_wanted(self) -> dict[str, bool]:
        """node -> whether its OSD should run: node up and its rook-ceph-osd pod running."""
        want = {n.name: False for n in self.config.nodes}
        for pod in self.store.peek(PODS, "rook-ceph"):
            labels = pod["metadata"].get("labels") or {}
            if labels.get("app") != "rook-ceph-osd":
                continue
            node = pod["spec"].get("nodeName")
            view = self.mirror.views.get(node or "")
            rt = self.runtimes.get(pod["metadata"]["uid"])
            if view is None or not view.up or rt is None or rt.started_at is None:
                continue
            if pod["metadata"].get("deletionTimestamp"):
                continue  # SIGTERM went to ceph-osd with the deletion
            want[view.node.name] = True
        return want

    def couple_osds(self, now: float) -> None:
        ceph = self._ceph_ready()
        if ceph is None:
            return
        want = self.osd_wanted()
        recheck = now - self._osd_checked >= 5.0  # catch an OSD that died or was started behind our back
        if recheck:
            self._osd_checked = now
        for node, run in want.items():
            task = self._osd_tasks.get(node)
            if task is not None and not task.done():
                continue
            if self._osd_state.get(node) == run and not recheck:
                continue
            self._osd_state[node] = run
            self._osd_tasks[node] = asyncio.get_running_loop().create_task(self._set_osd(ceph, node, run))

    async def _set_osd(self, ceph, node: str, run: bool) -> None:
        try:
            running = await asyncio.to_thread(ceph.osd_running, node)
            if run and not running:
                log.info("starting the OSD of %s", node)
                await asyncio.to_thread(ceph.start_osd, node)
            elif not run and running:
                log.info("stopping the OSD of %s", node)
                await asyncio.to_thread(ceph.stop_osd, node)
        except Exception as exc:  # the next pass retries
            log.error("OSD of %s (%s): %s", node, "start" if run else "stop", exc)
            self._osd_state.pop(node, None)

    # ------------------------------------------------------------------ logs
    def _kubelet_reachable(self, pod: dict) -> None:
        """Logs and exec go through the kubelet on the pod's node: a down node refuses, as the
        API server's proxy to port 10250 reports it."""
        view = self.mirror.views.get(pod["spec"].get("nodeName") or "")
        if view is not None and not view.up:
            raise status.ApiError(500, "InternalError", f"Internal error occurred: error dialing backend: dial tcp "
                                                        f"{view.node.address}:10250: connect: connection refused")

    def pod_log(self, namespace: str, name: str, query) -> str:
        pod = self.store.get(PODS, namespace, name)
        self._kubelet_reachable(pod)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container")
        if not container:
            if len(containers) > 1:
                raise status.bad_request(f"a container name must be specified for pod {name}, "
                                         f"choose one of: [{' '.join(containers)}]")
            container = containers[0]
        if container not in containers:
            raise status.bad_request(f"container {container} is not valid for pod {name}")
        rt = self.runtimes.get(pod["metadata"]["uid"])
        previous = query.get("previous") in ("true", "1")
        if rt is None or (rt.started_at is None and not previous):
            reason = "ContainerCreating"
            raise status.bad_request(f'container "{container}" in pod "{name}" is waiting to start: {reason}')
        crash = rt.crash if container == CSI_CONTAINER else None
        if previous and not rt.last_state.get(container) and not (crash and crash.restarts(time.time())[0]):
            raise status.bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
        lines = self._log_lines(pod, container, rt, previous)
        if query.get("timestamps") in ("true", "1"):
            lines = [f"{now_rfc3339(t)[:-1]}.000000000Z {text}" for t, text in lines]
        else:
            lines = [text for _, text in lines]
        tail = query.get("tailLines")
        if tail is not None and tail.lstrip("-").isdigit() and int(tail) >= 0:
            lines = lines[-int(tail):] if int(tail) else []
        text = "".join(line + "\n" for line in lines)
        limit = query.get("limitBytes")
        if limit and limit.isdigit():
            text = text[:int(limit)]
        return text

    def _log_lines(self, pod: dict, container: str, rt: PodRuntime, previous: bool) -> list[tuple[float, str]]:
        """What the container printed, in the shape its real image prints it."""
        node = pod["spec"].get("nodeName", "")
        now = time.time()
        start = rt.started_at or now
        klog = lambda t, lvl, src, msg: f"{lvl}{time.strftime('%m%d %H:%M:%S', time.gmtime(t))}.{int(t % 1 * 1e6):06d}       1 {src}] {msg}"  # noqa: E731
        image = next(c.get("image", "") for c in pod["spec"]["containers"] if c["name"] == container)
        crash = rt.crash
        crashed_before = (rt.last_state.get(container) or {}).get("terminated", {}).get("exitCode") == 1
        if container == CSI_CONTAINER and (crash is not None or (previous and crashed_before)):
            since = crash.restarts(now)[1] if crash else start
            return [(since, klog(since, "I", "cephcsi.go:196", f"Driver version: {image_tag(image)} and Git version: "
                                                                f"{safe_hash(image, 40)}")),
                    (since, klog(since, "I", "cephcsi.go:274", "Initial PID limit is set to 4194304")),
                    (since, klog(since, "E", "rbd_util.go:303", "modprobe failed (an error (exit status 1) occurred while "
                                                               "running modprobe args: [rbd]): \"modprobe: ERROR: could not "
                                                               "insert 'rbd': Exec format error\\n\"")),
                    (since, klog(since, "F", "driver.go:150", "failed to load kernel module rbd"))]
        if container == "driver-registrar":
            lines = [(start, klog(start, "I", "main.go:167", "Version: v2.11.1")),
                     (start, klog(start, "I", "main.go:168", "Running node-driver-registrar in mode="))]
            if crash is not None:
                t = start + 1.0
                while t < now:
                    lines.append((t, klog(t, "W", "connection.go:234", "Still connecting to unix:///csi/csi.sock")))
                    t += 10
            else:
                lines.append((start, klog(start, "I", "main.go:102", "Received GetInfo call: &InfoRequest{}")))
                lines.append((start, klog(start, "I", "main.go:109", "\"Kubelet registration probe created\" "
                                                                    "path=\"/var/lib/kubelet/plugins/rook-ceph.rbd.csi.ceph.com/registration\"")))
            return lines
        if container == "osd":
            return [(start, f"debug {now_rfc3339(start)} 7f0000000000  0 set uid:gid to 167:167 (ceph:ceph)"),
                    (start, f"debug {now_rfc3339(start)} 7f0000000000  0 ceph version 16.2.15 "
                            "(618f440892089921c3e944a991122ddc44e60516) pacific (stable), process ceph-osd, pid 1"),
                    (start, f"debug {now_rfc3339(start)} 7f0000000000  1 osd.{pod['metadata'].get('labels', {}).get('ceph-osd-id', '0')} "
                            f"start on host {node}")]
        return [(start, f"{container} started on {node} ({image})")]

    # ------------------------------------------------------------------ exec
    async def exec(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        """pods/exec over the websocket streaming protocol (v4.channel.k8s.io): channel 1 stdout,
        2 stderr, 3 the final Status. The toolbox's ceph/rados/rbd run on the host against the
        lab's Ceph with CEPH_CONF set; argv goes to exec directly, never through a shell."""
        pod = self.store.get(PODS, namespace, name)
        q = request.query
        command = q.getall("command", [])
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = q.get("container") or (containers[0] if len(containers) == 1 else "")
        if not container:
            raise status.bad_request(f"a container name must be specified for pod {name}, "
                                     f"choose one of: [{' '.join(containers)}]")
        if container not in containers:
            raise status.bad_request(f"container {container} is not valid for pod {name}")
        if not command:
            raise status.bad_request("you must specify at least 1 command")
        self._kubelet_reachable(pod)
        rt = self.runtimes.get(pod["metadata"]["uid"])
        if rt is None or rt.started_at is None or (pod.get("status") or {}).get("phase") != "Running":
            raise status.bad_request(f"unable to upgrade connection: container not found (\"{container}\")")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise status.bad_request("Upgrade request required")
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        # v4 is what a 1.25 API server speaks (and the python client offers it); kubectl from
        # 1.30 offers only v5 (v4 plus a stdin-close signal) before falling back to SPDY.
        protocol = "v4.channel.k8s.io" if "v4.channel.k8s.io" in offered else \
            "v5.channel.k8s.io" if "v5.channel.k8s.io" in offered else "channel.k8s.io"
        ws = web.WebSocketResponse(protocols=(protocol,), autoping=True)
        await ws.prepare(request)
        want_stdin = q.get("stdin") in ("true", "1")

        async def send(channel: int, data: bytes) -> None:
            if data and not ws.closed:
                await ws.send_bytes(bytes([channel]) + data)

        labels = pod["metadata"].get("labels") or {}
        binary = shutil.which(command[0]) if command[0] in TOOLBOX_BINARIES else None
        is_toolbox = labels.get(TOOLBOX_LABEL[0]) == TOOLBOX_LABEL[1]
        conf = self.config.dir / "ceph.conf"
        if not (is_toolbox and binary):
            msg = (f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{command[0]}": '
                   "executable file not found in $PATH: unknown\r\n")
            await send(1, msg.encode())
            await send(3, json.dumps(self._exec_status(126)).encode())
            await ws.close()
            return ws
        env = {"CEPH_CONF": str(conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
        proc = await asyncio.create_subprocess_exec(
            binary, *command[1:], env=env, cwd="/tmp",
            stdin=asyncio.subprocess.PIPE if want_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)

        async def pump(stream, channel: int) -> None:
            while True:
                chunk = await stream.read(65536)
                if not chunk:
                    return
                await send(channel, chunk)

        async def feed() -> None:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY and msg.data[:2] == b"\xff\x00" and proc.stdin is not None:
                    proc.stdin.close()  # v5: the client closed stdin
                elif msg.type == WSMsgType.BINARY and msg.data[:1] == b"\x00" and proc.stdin is not None:
                    proc.stdin.write(msg.data[1:])
                    await proc.stdin.drain()
                elif msg.type == WSMsgType.TEXT and msg.data[:1] == "0" and proc.stdin is not None:
                    proc.stdin.write(msg.data[1:].encode())
                    await proc.stdin.drain()
            if proc.returncode is None:  # the client went away: so does the command
                proc.kill()

        feeder = asyncio.create_task(feed())
        try:
            await asyncio.gather(pump(proc.stdout, 1), pump(proc.stderr, 2))
            rc = await proc.wait()
            await send(3, json.dumps(self._exec_status(rc)).encode())
        finally:
            feeder.cancel()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if not ws.closed:
                await ws.close()
        return ws

    @staticmethod
    def _exec_status(rc: int) -> dict:
        if rc == 0:
            return {"metadata": {}, "status": "Success"}
        return {"metadata": {}, "status": "Failure",
                "message": f"command terminated with non-zero exit code: Error executing in Docker Container: {rc}",
                "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]}}

