"""The reads the checks share within one run (one per node and resource, fetched once, in parallel
where it helps), and the phase a check runs in.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from nodegate.cluster.lock import read_lock
from nodegate.cluster.session import Access
from nodegate.plugin.options import RUN_KEY

if TYPE_CHECKING:
    from nodegate.cluster.ceph import Ceph
    from nodegate.cluster.kube.client import Kube
    from nodegate.cluster.kube.models import NodeStatus, PodSummary
    from nodegate.cluster.nodes.snapshot import NodeSnapshot
    from nodegate.cluster.nodes.ssh import NodeHost
    from nodegate.profile.model import NodeSpec


# Ceph commands of the checks run side by side, this many at a time: each is a `ceph` process in
# the toolbox (about 0.5 s, mostly waiting for the monitor); more would only crowd the toolbox.
CEPH_PARALLEL = 3


class Reads:
    """Reads of the cluster shared by the checks of a session: each taken once, on first use.

    A check reads; it never changes anything, so within one pass of checks a value read once
    stays true. A procedure step that changes the node calls ``forget(node)`` (or ``forget()``)
    before the next checks read again. Node reads are also keyed by the SSH host object, so a
    reconnect after a reboot never hands back the previous boot's answers."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self._cache: dict[tuple, Future] = {}
        self._first_restarts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._ceph_idle: list["Ceph"] = []
        self._ceph_made = 0
        self._ceph_free = threading.Condition(self._lock)
        self._pool: ThreadPoolExecutor | None = None
        self._ceph_pool: ThreadPoolExecutor | None = None
        # a run over several nodes reads the pods and PDBs of the cluster once, not per node
        self.fleet = False
        # nodes whose `apt-get update` this pass asks for: their simulation reads the lists after it
        self._updated_first: set[str] = set()

    def _get(self, key: tuple, read: Callable[[], Any]) -> Any:
        """The cached answer for ``key``, reading it now unless it is read (or being read) already."""
        __tracebackhide__ = True
        owner, future = False, None
        # One try from the registration on: a Ctrl-C that lands anywhere after the Future is in the
        # cache (even as the lock is let go) still completes it, or the read-ahead threads waiting
        # for it would wait for ever and the interpreter, which joins them at exit, would hang.
        try:
            with self._lock:
                future = self._cache.get(key)
                owner = future is None
                if owner:
                    future = self._cache[key] = Future()
            if owner:
                future.set_result(read())
        except BaseException as exc:  # handed to whoever asks for this read (an interrupt: raised again below)
            if not (owner and future is not None and not future.done()):
                raise
            future.set_exception(exc)
        return future.result()

    def prefetch(self, *reads: Callable[[], Any], ceph: bool = False) -> None:
        """Start reads in the background (each a bound method of this object, or a lambda calling
        one): the API server, Ceph and the node answer while other checks run, instead of one
        after the other. A failed read fails the check that uses it, with the same error.
        Ceph reads (``ceph=True``) have threads of their own, as many as may run at once, so
        that they never hold up the API and SSH reads queued behind them."""
        _import_read_modules()   # here, on the main thread, before any read-ahead thread runs
        with self._lock:
            if ceph and self._ceph_pool is None:
                self._ceph_pool = ThreadPoolExecutor(max_workers=CEPH_PARALLEL, thread_name_prefix="nodegate-ceph")
            if not ceph and self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="nodegate-read")
        pool = self._ceph_pool if ceph else self._pool
        for read in reads:
            pool.submit(_quietly, read)

    def close(self) -> None:
        for pool in (self._pool, self._ceph_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def forget(self, node: str | None = None) -> None:
        """Drop cached reads: those of one node (and every cluster-wide read), or all."""
        with self._lock:
            if node is None:
                self._cache.clear()
                return
            for key in list(self._cache):
                if key[0].startswith("cluster:") or (len(key) > 1 and key[1] == node):
                    del self._cache[key]

    # -- nodes (SSH) -----------------------------------------------------------------
    def host(self, name: str) -> "NodeHost":
        return self.access.nodes.host(name)

    def snapshot(self, name: str) -> "NodeSnapshot":
        """Release, packages, audit, pending reboot, kernels, disks, modules, sources: one round trip."""
        from nodegate.cluster.nodes.snapshot import Snapshot

        host = self.host(name)
        return self._get(("snapshot", name, id(host)), lambda: Snapshot(host).take())

    def update_before_upgradable(self, names) -> None:
        """This pass runs `apt-get update` on ``names``: their `apt-get -s dist-upgrade` waits for it.

        While `apt-get update` fetches a list, apt hands the file in /var/lib/apt/lists to its
        sandbox user (`_apt`, mode 0600) and gives it back (root, 0644) when the fetch is done
        (apt-pkg/acquire-worker.cc: Worker::QueueItem, then PrepareFiles), on every node alike.
        The simulation does not wait for apt's lists lock (Debug::NoLocking), so beside an update it
        reads lists half renewed and, as a non-root login, cannot open the one being fetched
        ("can not open …_InRelease - fopen (13: Permission denied)"). After the update it reads the
        lists that update left, which is also what a dist-upgrade would install from."""
        with self._lock:
            self._updated_first.update(names)

    def upgradable(self, name: str):
        """`apt-get -s dist-upgrade` on the node; after this pass's `apt-get update` of it, if one is asked for."""
        host = self.host(name)
        with self._lock:
            update_first = name in self._updated_first
        if update_first:
            try:
                self.apt_update(name)   # runs it, or waits for it when it is under way
            except Exception:  # noqa: BLE001 - a failed update is test_apt_update_clean's to report
                pass
        return self._get(("upgradable", name, id(host)), host.packages.upgradable)

    def apt_update(self, name: str):
        host = self.host(name)
        return self._get(("apt-update", name, id(host)), host.apt.update)

    def etcd_health(self, name: str):
        """`etcdctl endpoint health` on the node (its own etcdctl and /etc/etcd.env)."""
        host = self.host(name)
        return self._get(("etcd-health", name, id(host)), host.etcd.endpoint_health)

    # -- Kubernetes ------------------------------------------------------------------
    def connect(self) -> "Kube":
        """The API client, connected and asked its version once (shared by every thread). Every
        read of the API goes through here: a read started before the connection is made waits
        for it, and fails at once with its error if it failed."""
        return self._get(("connect",), lambda: self.access.kube)

    def node_statuses(self) -> dict[str, "NodeStatus"]:
        """Every node of the cluster by name: one list call serves all the node checks."""
        return self._get(("cluster:nodes",), lambda: {n.name: n for n in self.connect().list_nodes()})

    def node_status(self, name: str) -> "NodeStatus | None":
        return self.node_statuses().get(name)

    def pods_on(self, name: str) -> list["PodSummary"]:
        if self.fleet:
            return self._get(("pods-on", name), lambda: [p for p in self.all_pods() if p.node == name])
        return self._get(("pods-on", name), lambda: self.connect().list_pods(node=name))

    def all_pods(self) -> list["PodSummary"]:
        """Every pod of the cluster: for a run over several nodes, one list instead of one per node
        and purpose (the API server filters by spec.nodeName just as `p.node == name` does)."""
        return self._get(("cluster:pods-all",), lambda: self.connect().list_pods())

    def pdbs(self):
        return self._get(("cluster:pdbs",), lambda: self.connect().list_pdbs())

    def pods(self, namespace: str, selector: str) -> list["PodSummary"]:
        return self._get(("cluster:pods", namespace, selector),
                         lambda: self.connect().list_pods(namespace=namespace, selector=selector))

    def eviction_blockers(self, name: str):
        if self.fleet:
            return self._get(("blockers", name), lambda: self.connect().pods_blocking_eviction(
                name, pods=self.pods_on(name), pdbs=self.pdbs()))
        return self._get(("blockers", name), lambda: self.connect().pods_blocking_eviction(name))

    def csi_discovery(self):
        """The Ceph RBD CSI node plugin(s), found by what they are (nodegate.core.csi)."""
        from nodegate.cluster.storage import csi_node_plugins

        return self._get(("cluster:csi-discovery",),
                         lambda: csi_node_plugins(self.connect(), self.access.profile.ceph))

    def rook_settings(self):
        """managePodBudgets / osdMaintenanceTimeout of the CephCluster (nodegate.core.noout)."""
        from nodegate.cluster.storage import rook_settings

        return self._get(("cluster:rook-settings",),
                         lambda: rook_settings(self.connect(), self.access.profile.ceph.namespace))

    def csi_rbdplugin(self, name: str):
        """The RBD node-plugin pod on Node ``name`` (its health), or None when no node plugin was
        found in the cluster (``csi_discovery()`` says why)."""
        found = self.csi_discovery()
        if not found.plugins:
            return None
        plugin = found.plugins[0]
        if len(found.plugins) > 1:   # several drivers: the plugin that has a pod on this node
            on_node = [p for p in found.plugins
                       if any(q.node == name for q in self.pods(p.namespace, p.label_selector))]
            plugin = on_node[0] if on_node else plugin
        pods = [p for p in self.pods(plugin.namespace, plugin.label_selector) if p.node == name]
        return self._get(("csi", name), lambda: self.connect().csi_rbdplugin(
            name, namespace=plugin.namespace, selector=plugin.label_selector, pods=pods))

    def pod_log(self, namespace: str, name: str, container: str, tail: int = 50) -> str:
        return self._get(("cluster:log", namespace, name, container, tail),
                         lambda: self.connect().pod_log(namespace=namespace, name=name, container=container,
                                                          tail=tail))

    def lock(self):
        return self._get(("cluster:lock",), lambda: read_lock(self.connect()))

    def server_version(self) -> str:
        return self._get(("cluster:version",), lambda: self.connect().server_version())

    def note_restarts(self, pod_ref: str, restarts: int) -> int:
        """The restart count first seen for a pod in this session (to tell whether it rises)."""
        return self._first_restarts.setdefault(pod_ref, restarts)

    # -- Ceph (up to CEPH_PARALLEL commands at once, each on a Ceph of its own: see Access.new_ceph)
    def _ceph(self, read: Callable[[Any], Any]) -> Callable[[], Any]:
        def borrowed() -> Any:
            if self.access.profile.ceph.mode == "toolbox":
                self.connect()   # the toolbox is reached through the API
            # Whatever happens once a Ceph is taken (or a new one counted), an interrupt included,
            # it is given back (or uncounted): a reader waiting for a free one must not wait for ever.
            taken: list = []          # [ceph] once taken; [] while only counted
            counted = False
            try:
                with self._ceph_free:
                    while not self._ceph_idle and self._ceph_made >= CEPH_PARALLEL:
                        self._ceph_free.wait()
                    if self._ceph_idle:
                        # no call between the two (Python checks for signals at the end of calls),
                        # so an interrupt finds the Ceph either still idle or taken
                        taken[:] = self._ceph_idle[-1:]
                        del self._ceph_idle[-1]
                    else:
                        self._ceph_made += 1
                        counted = True
                        first = self._ceph_made == 1
                if not taken:
                    taken.append(self.access.ceph if first else self.access.new_ceph())
                return read(taken[0])
            finally:
                with self._ceph_free:
                    if taken:
                        self._ceph_idle.append(taken[0])
                    elif counted:
                        self._ceph_made -= 1
                    self._ceph_free.notify()
        return borrowed

    def ceph_status(self):
        return self._get(("cluster:ceph-status",), self._ceph(lambda c: c.status()))

    def osd_dump(self):
        return self._get(("cluster:osd-dump",), self._ceph(lambda c: c.osd_flags()))

    def ok_to_stop(self, ids: tuple[int, ...]):
        return self._get(("cluster:ok-to-stop", ids), self._ceph(lambda c: c.ok_to_stop(ids)))

    def osd_tree(self) -> dict[str, tuple[int, ...]]:
        """OSD ids of every CRUSH host: one `ceph osd tree` serves the checks of every node."""
        return self._get(("cluster:osd-tree",), self._ceph(lambda c: c.osd_ids_by_host()))

    def osd_ids(self, host: str) -> tuple[int, ...]:
        return self.osd_tree().get(host, ())

    def osd_metadata_hosts(self) -> dict[int, str]:
        return self._get(("cluster:osd-metadata",), self._ceph(lambda c: c.osd_metadata_hosts()))

    def crush_mapping(self, spec: "NodeSpec"):
        """The node's CRUSH host and OSDs, with the evidence that maps them (nodegate.core.crush):
        its Node's hostname label as Rook normalises it, the OSD pods bound to it, `ceph osd tree`
        and `ceph osd metadata`, and the profile's crush_host / ceph_osds."""
        from nodegate.cluster.storage import OSD_POD_SELECTOR
        from nodegate.core.crush import OSD_HOST_LABEL, OSD_ID_LABEL, OsdPod, map_crush_host

        def read():
            status = self.node_status(spec.kube_node)
            pods = [p for p in self.pods(self.access.profile.ceph.namespace, OSD_POD_SELECTOR)
                    if p.node == spec.kube_node and not p.deleting]
            osd_pods = [OsdPod(p.name, int(p.labels[OSD_ID_LABEL]) if str(p.labels.get(OSD_ID_LABEL, "")).isdigit()
                               else None, p.labels.get(OSD_HOST_LABEL)) for p in pods]
            return map_crush_host(inventory_name=spec.name, node_name=status.name if status else None,
                                  node_labels=status.labels if status else None, crush_hosts=self.osd_tree(),
                                  osd_pods=osd_pods, osd_metadata_hosts=self.osd_metadata_hosts(),
                                  override=spec.crush_host, no_osds_expected=not spec.ceph_osds)
        return self._get(("crush", spec.name), read)


def _import_read_modules() -> None:
    """Every harness module, imported here on the main thread before a read-ahead thread runs
    (nodegate.upgrade.preload says why)."""
    from nodegate.upgrade.preload import import_harness_modules

    import_harness_modules()


def _quietly(read: Callable[[], Any]) -> None:
    try:
        read()
    except BaseException:  # noqa: BLE001 - kept in the cache; raised in the check that reads it
        pass


# The run's one Access and one Reads, kept on the pytest config.
ACCESS_KEY = pytest.StashKey[Access]()
READS_KEY = pytest.StashKey[Reads]()


def access_for(config: pytest.Config) -> Access:
    access = config.stash.get(ACCESS_KEY, None)
    if access is None:
        run = config.stash[RUN_KEY]
        if run.profile is None:
            pytest.fail("no cluster profile was loaded; give --cluster PATH", pytrace=False)
        access = config.stash[ACCESS_KEY] = Access(run.profile)
    return access


def reads_for(config: pytest.Config) -> Reads:
    reads = config.stash.get(READS_KEY, None)
    if reads is None:
        reads = config.stash[READS_KEY] = Reads(access_for(config))
    return reads
