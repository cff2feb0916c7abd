"""The lab's Rook disruption controller: what Rook does with noout when a node is drained.

Written from rook ``pkg/operator/ceph/disruption/clusterdisruption/osd.go`` and ``reconcile.go``:

- it acts only when the CephCluster's ``spec.disruptionManagement.managePodBudgets`` is true;
  ``osdMaintenanceTimeout`` is whole minutes, 0 meaning 30 (``DefaultMaintenanceTimeout``);
- an OSD is down when its Deployment has no ready replica; its failure domain is the
  Deployment's ``topology-location-<domain type>`` label (here: host); its node is the
  ``hostname`` of ``ceph osd metadata``, and a down OSD on an unschedulable node means a drain
  (in a lab with racks the domain is the ``topology-location-rack`` label: the pools' domain);
- PGs are clean when every PG state matches Rook's default ``pgHealthyRegex``;
- OSDs down and PGs not clean: the first drained failure domain becomes the draining one with
  ``set-no-out`` (a down domain without a drain becomes draining without noout); OSDs up and
  PGs clean: the state is reset (``resetPDBConfig``); down but clean: kept while a drain is seen;
- every pass (``updateNoout``): on the draining domain with ``set-no-out``, noout is set and its
  ``<domain>-noout-last-set-at`` stamped; once ``osdMaintenanceTimeout`` has passed since that
  stamp, noout is **unset** while the domain is still draining; on every other failure domain
  noout is unset. Only CRUSH-unit flags (``osd set-group``/``unset-group``) are touched,
  never per-OSD flags.
- the state lives in the ConfigMap ``rook-ceph-pdbstatemap`` as Rook keeps it;
- the OSD budgets (rook ``design/ceph/ceph-managed-disruptionbudgets.md``): while no domain drains,
  the default ``rook-ceph-osd`` (``maxUnavailable: 1`` over every OSD pod); once one does, a blocking
  ``rook-ceph-osd-<type>-<domain>`` (``maxUnavailable: 0``) on every *other* failure domain and no
  default, so the rest of the draining domain may go down too and no other domain may; back to the
  default once the state is reset. The domain type is the lowest the pools enforce: rack in a lab
  with racks (its OSD Deployments carry ``topology-location-rack``), host otherwise.

The lab's CephCluster may carry ``lab.nodegate.io/osd-maintenance-timeout-seconds`` so a test can
use seconds instead of Rook's whole minutes; nothing else differs.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from datetime import datetime, timezone

from nodegate.lab.apiserver import resources

log = logging.getLogger("nodegate.lab.disruption")

CEPHCLUSTERS = resources.find("ceph.rook.io", "v1", "cephclusters")
CONFIGMAPS = resources.find("", "v1", "configmaps")
PDBS = resources.find("policy", "v1", "poddisruptionbudgets")
DEFAULT_PDB = "rook-ceph-osd"
DEPLOYMENTS = resources.find("apps", "v1", "deployments")
NODES = resources.find("", "v1", "nodes")
NAMESPACE = "rook-ceph"
STATE_MAP = "rook-ceph-pdbstatemap"
DRAINING_KEY = "draining-failure-domain"
DRAINING_SINCE_KEY = "draining-failure-domain-duration"
SET_NOOUT_KEY = "set-no-out"
DEFAULT_TIMEOUT_S = 30 * 60.0
SECONDS_ANNOTATION = "lab.nodegate.io/osd-maintenance-timeout-seconds"
PG_HEALTHY = re.compile(r"^active(\+(clean|deep|scrubbing|snaptrim|snaptrim_wait))+$")
DOMAIN_LABEL = "topology-location-host"     # the failure domain of a lab's pools without racks
RACK_LABEL = "topology-location-rack"       # ... and with racks
ACTIVE_EVERY_S = 2.0                        # while a drain or down OSD is in view
IDLE_EVERY_S = 15.0


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(stamp: str) -> float | None:
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


def maintenance_timeout_s(cluster: dict) -> float:
    meta = cluster.get("metadata") or {}
    seconds = (meta.get("annotations") or {}).get(SECONDS_ANNOTATION)
    if seconds:
        try:
            return max(0.0, float(seconds))
        except ValueError:
            pass
    minutes = ((cluster.get("spec") or {}).get("disruptionManagement") or {}).get("osdMaintenanceTimeout") or 0
    try:
        minutes = float(minutes)
    except (TypeError, ValueError):
        minutes = 0.0
    return minutes * 60.0 if minutes > 0 else DEFAULT_TIMEOUT_S


def next_state(data: dict, *, osd_down: bool, pg_clean: bool, drain_domains: list[str], down_domains: list[str],
               now: float) -> dict:
    """The state map after one pass (Rook's switch over osdDown/pgClean, setPDBConfig, resetPDBConfig)."""
    data = dict(data)
    data.setdefault(DRAINING_KEY, "")
    data.setdefault(SET_NOOUT_KEY, "")

    def reset() -> None:
        data[DRAINING_KEY] = ""
        data.pop(DRAINING_SINCE_KEY, None)
        data[SET_NOOUT_KEY] = ""

    if not osd_down and pg_clean:
        reset()
    elif osd_down and pg_clean:
        if not drain_domains:
            reset()
    elif osd_down and not pg_clean:
        current = data[DRAINING_KEY]
        if not current:
            if drain_domains:
                data[DRAINING_KEY], data[SET_NOOUT_KEY] = drain_domains[0], "true"
            elif down_domains:
                data[DRAINING_KEY], data[SET_NOOUT_KEY] = down_domains[0], ""
        elif drain_domains and current not in drain_domains:
            data[DRAINING_KEY], data[SET_NOOUT_KEY] = drain_domains[0], "true"
        elif down_domains and current not in down_domains and not drain_domains:
            data[DRAINING_KEY], data[SET_NOOUT_KEY] = down_domains[0], ""
        data[DRAINING_SINCE_KEY] = _stamp(now)
    return data


def noout_actions(data: dict, *, domains: list[str], flagged: set[str], timeout_s: float,
                  now: float) -> tuple[dict, list[tuple[bool, str]]]:
    """Rook's updateNoout: (new state, [(set?, domain)]) for the flags that must change."""
    data = dict(data)
    actions: list[tuple[bool, str]] = []
    for domain in domains:
        key = f"{domain}-noout-last-set-at"
        if data.get(DRAINING_KEY) == domain and data.get(SET_NOOUT_KEY) == "true":
            if not data.get(key):
                data[key] = _stamp(now)
            since = _parse(data[key]) or now
            want = now - since < timeout_s
        else:
            want = False
            data.pop(key, None)
        if want != (domain in flagged):
            actions.append((want, domain))
    return data, actions


class DisruptionController:
    """Runs inside the lab's API server; ``ceph`` is the lab's LabCeph once Ceph is created."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster          # the API server's Cluster (store, mirror)
        self.store = cluster.store
        self._task: asyncio.Task | None = None
        self._next = 0.0
        self._seen: tuple | None = None

    def kick(self, now: float, ceph) -> None:
        """Run a pass when one is due, or at once when an OSD Deployment's readiness or a Node's
        schedulability changed (Rook's controller is triggered by those watch events)."""
        if ceph is None or (self._task is not None and not self._task.done()):
            return
        cluster, osds, nodes = self._inputs()
        if not ((cluster or {}).get("spec") or {}).get("disruptionManagement", {}).get("managePodBudgets"):
            return   # Rook does not manage disruptions in this cluster
        seen = (tuple(sorted(osds)), tuple(sorted(nodes.items())))
        if now < self._next and seen == self._seen:
            return
        self._seen = seen
        self._task = asyncio.get_running_loop().create_task(self._pass(ceph))

    def _inputs(self) -> tuple[dict | None, list[tuple[str, int, bool]], dict[str, bool]]:
        cluster = self.store.find(CEPHCLUSTERS, NAMESPACE, "rook-ceph")
        osds = []
        deps = self._osd_deployments()
        label = self._domain_label(deps)
        for dep in deps:
            labels = dep["metadata"].get("labels") or {}
            if not labels.get(label):
                continue
            ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
            osds.append((labels[label], int(labels.get("ceph-osd-id", -1)), ready < 1))
        nodes = {n["metadata"]["name"]: bool((n.get("spec") or {}).get("unschedulable"))
                 for n in self.store.peek(NODES)}
        return cluster, osds, nodes

    async def _pass(self, ceph) -> None:
        now = time.time()
        self._next = now + IDLE_EVERY_S
        try:
            cluster, osds, unschedulable = self._inputs()
            dm = ((cluster or {}).get("spec") or {}).get("disruptionManagement") or {}
            if cluster is None or not dm.get("managePodBudgets"):
                return
            timeout = maintenance_timeout_s(cluster)
            down = [(d, i) for d, i, is_down in osds if is_down]
            domains = sorted({d for d, _, _ in osds})
            status, dump, metadata = await asyncio.to_thread(self._read, ceph, bool(down))
            pg_clean = all(PG_HEALTHY.match(s.get("state_name", "")) for s in
                           ((status.get("pgmap") or {}).get("pgs_by_state") or [])) and bool(
                (status.get("pgmap") or {}).get("num_pgs"))
            host_of = {m.get("id"): m.get("hostname") for m in metadata}
            drain = sorted({d for d, i in down if unschedulable.get(host_of.get(i) or "", host_of.get(i) is not None)})
            down_domains = sorted({d for d, _ in down})
            state_map = self._state_map()
            data = next_state(state_map.get("data") or {}, osd_down=bool(down), pg_clean=pg_clean,
                              drain_domains=drain, down_domains=down_domains, now=now)
            flagged = {str(k) for k, v in (dump.get("crush_node_flags") or {}).items() if "noout" in (v or ())}
            data, actions = noout_actions(data, domains=domains, flagged=flagged, timeout_s=timeout, now=now)
            for set_, domain in actions:
                log.info("rook disruption: %s noout on failure domain %s", "setting" if set_ else "unsetting", domain)
                await asyncio.to_thread(ceph.run, "osd", "set-group" if set_ else "unset-group", "noout", domain)
            if data != (state_map.get("data") or {}):
                state_map["data"] = data
                self.store.update(CONFIGMAPS, state_map)
            self._osd_budgets(data.get(DRAINING_KEY) or "", domains)
            if down or data.get(DRAINING_KEY):
                self._next = time.time() + ACTIVE_EVERY_S
        except Exception as exc:  # the next pass retries, as Rook's requeue does
            log.warning("rook disruption pass failed: %s", exc)
            self._next = time.time() + ACTIVE_EVERY_S

    def _osd_deployments(self) -> list[dict]:
        return [d for d in self.store.peek(DEPLOYMENTS, NAMESPACE)
                if (d["metadata"].get("labels") or {}).get("app") == "rook-ceph-osd"]

    @staticmethod
    def _domain_label(deps: list[dict]) -> str:
        return RACK_LABEL if any((d["metadata"].get("labels") or {}).get(RACK_LABEL) for d in deps) else DOMAIN_LABEL

    def _osd_budgets(self, draining: str, domains: list[str]) -> None:
        """Rook's OSD budgets while ``draining`` ('' : none) is the draining failure domain."""
        label = self._domain_label(self._osd_deployments())
        kind = label.rsplit("-", 1)[1]
        wanted = {}
        if draining:
            for domain in domains:
                if domain != draining:
                    wanted[f"{DEFAULT_PDB}-{kind}-{domain}"] = {"selector": {"matchLabels": {label: domain}},
                                                                "maxUnavailable": 0}
        else:
            wanted[DEFAULT_PDB] = {"selector": {"matchLabels": {"app": "rook-ceph-osd"}}, "maxUnavailable": 1}
        changed = False
        for pdb in self.store.peek(PDBS, NAMESPACE):
            name = pdb["metadata"]["name"]
            if (name == DEFAULT_PDB or name.startswith(f"{DEFAULT_PDB}-")) and name not in wanted:
                log.info("rook disruption: deleting PodDisruptionBudget %s", name)
                self.store.delete(PDBS, NAMESPACE, name)
        for name, spec in wanted.items():
            if self.store.find(PDBS, NAMESPACE, name) is None:
                log.info("rook disruption: creating PodDisruptionBudget %s", name)
                self.store.create(PDBS, {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                                         "metadata": {"name": name, "namespace": NAMESPACE,
                                                      "labels": {"app": "rook-ceph-osd", "rook_cluster": NAMESPACE}},
                                         "spec": spec})
                changed = True
        if changed:
            self.cluster.reconcile_pdbs()

    @staticmethod
    def _read(ceph, any_down: bool) -> tuple[dict, dict, list]:
        status = json.loads(ceph.run("status", "-f", "json", check=True).stdout)
        dump = json.loads(ceph.run("osd", "dump", "-f", "json", check=True).stdout)
        metadata = json.loads(ceph.run("osd", "metadata", "-f", "json", check=True).stdout) if any_down else []
        return status, dump, metadata

    def _state_map(self) -> dict:
        found = self.store.find(CONFIGMAPS, NAMESPACE, STATE_MAP)
        if found is not None:
            return json.loads(json.dumps(found))
        return json.loads(json.dumps(self.store.create(CONFIGMAPS, {"metadata": {
            "name": STATE_MAP, "namespace": NAMESPACE}, "data": {DRAINING_KEY: "", SET_NOOUT_KEY: ""}})))
