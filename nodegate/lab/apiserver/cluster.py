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

Each controller is a module of functions taking the Cluster: admission (write paths, deletion,
eviction), nodecontroller, replication (namespaces, GC, Deployments, ReplicaSets, DaemonSets),
budgets (PDBs), scheduler, kubelet (pods, logs, exec), osd; the Cluster holds the state, the
loop and persistence, and names each controller function as one of its methods.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path

from nodegate.lab import shared_files
from nodegate.lab.apiserver import (
    admission,
    budgets,
    kubelet,
    nodecontroller,
    osd,
    replication,
    resources,
    scheduler,
    status,
    workloads,
)
from nodegate.lab.apiserver.faults import Faults
from nodegate.lab.apiserver.nodes import NodeMirror
from nodegate.lab.apiserver.objects import EVENTS, FULL_EVERY_S, MAX_EVENTS, NODES, PODS, POLL_S, SAVE_EVERY_S
from nodegate.lab.apiserver.podstate import PodRuntime
from nodegate.lab.apiserver.store import Store, now_rfc3339
from nodegate.lab.config import LabConfig

log = logging.getLogger(__name__)

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

    # -- the controllers, each in its module (a function taking this Cluster)
    admit = admission.admit
    _pod_spec_defaults = admission._pod_spec_defaults
    _admit_pod = admission._admit_pod
    delete = admission.delete
    delete_pod = admission.delete_pod
    finish_update = admission.finish_update
    evict = admission.evict
    _scale_of = admission._scale_of
    reconcile_nodes = nodecontroller.reconcile_nodes
    static_pods = nodecontroller.static_pods
    node_leases = nodecontroller.node_leases
    _node_events = nodecontroller._node_events
    taint_evictions = nodecontroller.taint_evictions
    reconcile_namespaces = replication.reconcile_namespaces
    garbage_collect = replication.garbage_collect
    reconcile_deployments = replication.reconcile_deployments
    _owned_pods = replication._owned_pods
    reconcile_replicasets = replication.reconcile_replicasets
    _create_pod_from = replication._create_pod_from
    ds_eligible = replication.ds_eligible
    reconcile_daemonsets = replication.reconcile_daemonsets
    workload_status = replication.workload_status
    reconcile_pdb_block = budgets.reconcile_pdb_block
    reconcile_pdbs = budgets.reconcile_pdbs
    schedule = scheduler.schedule
    _unfit = scheduler._unfit
    csi_crashing = kubelet.csi_crashing
    run_kubelets = kubelet.run_kubelets
    _kubelet_reachable = kubelet._kubelet_reachable
    pod_log = kubelet.pod_log
    _log_lines = kubelet._log_lines
    exec = kubelet.exec_in_pod
    _exec_status = staticmethod(kubelet._exec_status)
    _ceph_ready = osd._ceph_ready
    osd_wanted = osd.osd_wanted
    couple_osds = osd.couple_osds
    _set_osd = osd._set_osd
