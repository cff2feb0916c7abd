"""Fixtures that reach the cluster, for checks and procedures: `nodes`/`host` (SSH through
nodegate.nodes, one reused connection per node, a fresh one after `nodes.reconnect`), `kube`
(nodegate.kube), `ceph` (nodegate.ceph), and `reads`: the reads the checks share, each taken
once per session (`reads.forget()` drops them after a step changed something).

Registered by the pytest11 entry point `nodegate_fixtures`. Nothing here connects anywhere at
import or collection time unless a nodegate run selected tests that need the cluster: then the
API server and every selected node are reached once, right after collection, so an unreachable
cluster, a refused or failing SSH login or an unknown host key is one clear message before any
test runs (a pytest.UsageError, no traceback). Those first connections are kept and reused.
"""
from __future__ import annotations

import functools
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from nodegate.plugin import RUN_KEY, NodegateRun, _is_ours

if TYPE_CHECKING:
    from nodegate.ceph import Ceph
    from nodegate.knowledge import UbuntuRelease
    from nodegate.kube import Kube, NodeStatus, PodSummary
    from nodegate.nodes import NodeHost, Nodes, NodeSnapshot
    from nodegate.parsing import OsRelease
    from nodegate.profile import NodeSpec, Profile

PHASES = ("preflight", "postflight")
# Ceph commands of the checks run side by side, this many at a time: each is a `ceph` process in
# the toolbox (about 0.5 s, mostly waiting for the monitor); more would only crowd the toolbox.
CEPH_PARALLEL = 3


class NodegateNotice(UserWarning):
    """Something an operator should see that does not block: a condition the procedure itself
    fixes (naming the step), or a fact worth knowing (an end-of-life Kubernetes minor)."""


# --------------------------------------------------------------------------- connections

class Access:
    """The connections of one run, each built on first use from the profile."""

    def __init__(self, profile: "Profile") -> None:
        self.profile = profile

    @functools.cached_property
    def nodes(self) -> "Nodes":
        from nodegate.nodes import Nodes

        return Nodes(settings=self.profile.ssh, nodes=self.profile.nodes)

    @functools.cached_property
    def kube(self) -> "Kube":
        from nodegate.kube import Kube

        return Kube.connect(settings=self.profile.kube, check=True)

    @functools.cached_property
    def ceph(self) -> "Ceph":
        return self.new_ceph()

    def new_ceph(self) -> "Ceph":
        """Another Ceph (one per command running at once), on the run's API client: Kube.exec opens
        its own websocket per command and leaves the shared client alone, so execs and reads can
        run side by side on it."""
        from nodegate.ceph import Ceph

        ceph = Ceph(settings=self.profile.ceph, kube=self.kube if self.profile.ceph.mode == "toolbox" else None)
        first = self.__dict__.get("ceph")
        if first is not None:
            ceph._toolbox_pod = first._toolbox_pod   # found once; a replaced pod is looked up again
        return ceph

    def close(self) -> None:
        if "kube" in self.__dict__:
            self.kube.close()
        if "nodes" in self.__dict__ and self.profile.ssh.config is None:
            # paramiko transports end with the process anyway; an ssh_config's ControlPersist is
            # the operator's choice (it makes the next run's first command fast), so it is kept.
            self.nodes.close()


ACCESS_KEY = pytest.StashKey[Access]()
READS_KEY = pytest.StashKey["Reads"]()


def access_for(config: pytest.Config) -> Access:
    access = config.stash.get(ACCESS_KEY, None)
    if access is None:
        run = config.stash[RUN_KEY]
        if run.profile is None:
            pytest.fail("no cluster profile was loaded; give --cluster PATH", pytrace=False)
        access = config.stash[ACCESS_KEY] = Access(run.profile)
    return access


def reads_for(config: pytest.Config) -> "Reads":
    reads = config.stash.get(READS_KEY, None)
    if reads is None:
        reads = config.stash[READS_KEY] = Reads(access_for(config))
    return reads


# --------------------------------------------------------------------------- shared reads

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

    def _get(self, key: tuple, read: Callable[[], Any]) -> Any:
        """The cached answer for ``key``, reading it now unless it is read (or being read) already."""
        __tracebackhide__ = True
        with self._lock:
            future = self._cache.get(key)
            owner = future is None
            if owner:
                future = self._cache[key] = Future()
        if owner:
            try:
                future.set_result(read())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for this read
                future.set_exception(exc)
        return future.result()

    def prefetch(self, *reads: Callable[[], Any], ceph: bool = False) -> None:
        """Start reads in the background (each a bound method of this object, or a lambda calling
        one): the API server, Ceph and the node answer while other checks run, instead of one
        after the other. A failed read fails the check that uses it, with the same error.
        Ceph reads (``ceph=True``) have threads of their own, as many as may run at once, so
        that they never hold up the API and SSH reads queued behind them."""
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
        from nodegate.nodes import Snapshot

        host = self.host(name)
        return self._get(("snapshot", name, id(host)), lambda: Snapshot(host).take())

    def upgradable(self, name: str):
        host = self.host(name)
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
        return self._get(("cluster:lock",), lambda: self.connect().read_lock())

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
            with self._ceph_free:
                while not self._ceph_idle and self._ceph_made >= CEPH_PARALLEL:
                    self._ceph_free.wait()
                ceph = self._ceph_idle.pop() if self._ceph_idle else None
                if ceph is None:
                    self._ceph_made += 1
                    first = self._ceph_made == 1
            if ceph is None:
                try:
                    ceph = self.access.ceph if first else self.access.new_ceph()
                except BaseException:
                    with self._ceph_free:
                        self._ceph_made -= 1
                        self._ceph_free.notify()
                    raise
            try:
                return read(ceph)
            finally:
                with self._ceph_free:
                    self._ceph_idle.append(ceph)
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


def _quietly(read: Callable[[], Any]) -> None:
    try:
        read()
    except BaseException:  # noqa: BLE001 - kept in the cache; raised in the check that reads it
        pass


# --------------------------------------------------------------------------- phase and releases

def _phase_matches(config: pytest.Config) -> tuple[bool, bool]:
    """Whether the -m expression selects tests marked only preflight / only postflight."""
    return _expression_phases(config.getoption("markexpr", "") or "")


@functools.lru_cache(maxsize=8)
def _expression_phases(expression: str) -> tuple[bool, bool]:
    # asked for every check (the phase fixture): compiled once per expression, not per check
    if not expression:
        return True, True
    from _pytest.mark.expression import Expression

    try:
        compiled = Expression.compile(expression)
    except Exception:  # noqa: BLE001 - pytest reports a bad -m itself
        return True, True
    return (compiled.evaluate(lambda name, **_: name == "preflight"),
            compiled.evaluate(lambda name, **_: name == "postflight"))


def item_phase(item: pytest.Item) -> str | None:
    """The phase a check runs in: its only phase marker, or, for a check marked both, the one
    the -m expression chose (preflight when it chose both or neither)."""
    marked = [p for p in PHASES if item.get_closest_marker(p) is not None]
    if len(marked) == 1:
        return marked[0]
    if not marked:
        return None
    pre, post = _phase_matches(item.config)
    return "postflight" if post and not pre else "preflight"


@pytest.fixture
def phase(request: pytest.FixtureRequest) -> str:
    """'preflight' (before the change) or 'postflight' (after it) for the running check."""
    return item_phase(request.node) or "preflight"


@dataclass(frozen=True)
class ReleasePlan:
    """The releases a check compares the node with."""
    phase: str
    current: "UbuntuRelease | None"    # what the node's /etc/os-release says now
    source: "UbuntuRelease | None"     # the release before the change
    target: "UbuntuRelease | None"     # the release after the change

    @property
    def expected(self) -> "UbuntuRelease | None":
        """The release the node should run in this phase."""
        return self.source if self.phase == "preflight" else self.target


def previous_release(release: "UbuntuRelease") -> "UbuntuRelease | None":
    from nodegate.knowledge import UBUNTU_RELEASES

    index = UBUNTU_RELEASES.index(release)
    return UBUNTU_RELEASES[index - 1] if index > 0 else None


@pytest.fixture
def releases(node: "NodeSpec", phase: str, target_release: "UbuntuRelease | None", reads: Reads) -> ReleasePlan:
    from nodegate.knowledge import next_release, ubuntu_release

    osr = reads.snapshot(node.name).os_release
    current = ubuntu_release(osr.version_id or "") if (osr.id or "").lower() == "ubuntu" else None
    if phase == "preflight":
        target = target_release or (next_release(current.version) if current else None)
        return ReleasePlan(phase=phase, current=current, source=current, target=target)
    return ReleasePlan(phase=phase, current=current, source=previous_release(target_release) if target_release else None,
                       target=target_release)


# --------------------------------------------------------------------------- failing a check

def fail_check(problem: str, *, fix: str, details: Iterable[str] = ()) -> None:
    """Fail the running check with what is wrong (numbers included), details, and the usual fix;
    no Python traceback: the message is the report."""
    __tracebackhide__ = True
    lines = [problem, *(f"  - {d}" for d in details), f"  fix: {fix}"]
    pytest.fail("\n".join(lines), pytrace=False)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def access(request: pytest.FixtureRequest) -> Access:
    return access_for(request.config)


@pytest.fixture(scope="session")
def nodes(access: Access) -> "Nodes":
    """Every node of the profile, each reached through one reused SSH connection
    (`nodes.host(name)`; `nodes.reconnect(name)` after a reboot)."""
    return access.nodes


@pytest.fixture(scope="session")
def kube(access: Access) -> "Kube":
    """The Kubernetes API of the profile's kubeconfig (nodegate.kube.Kube)."""
    return access.kube


@pytest.fixture(scope="session")
def ceph(access: Access) -> "Ceph":
    """The cluster's Ceph, through the toolbox pod or the profile's command (nodegate.ceph.Ceph)."""
    return access.ceph


@pytest.fixture(scope="session")
def reads(request: pytest.FixtureRequest) -> Reads:
    """Cached reads shared by the checks (see Reads)."""
    return reads_for(request.config)


class _HostFixture:
    """`host` lives on a plugin object registered at configure time: pytest-testinfra (loaded
    after this module) defines its own `host`, and of two plugin fixtures the later one wins."""

    @pytest.fixture
    def host(self, nodes: "Nodes", node: "NodeSpec") -> "NodeHost":
        """The node's SSH host (nodegate.nodes.NodeHost; `.testinfra` is the testinfra Host).
        Function-scoped on purpose: after `nodes.reconnect(name)` the next test gets the new one."""
        return nodes.host(node.name)


@pytest.fixture
def notice(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """notice(text): show a non-blocking finding as a warning in the terminal summary and as
    evidence in the report; the check still passes."""
    def emit(text: str) -> None:
        from nodegate.reporting import Evidence

        Evidence().text("notice", text)
        # Attributed to the check (not a source line): the summary shows the finding, not code.
        warnings.warn_explicit(NodegateNotice(text), NodegateNotice, filename=request.node.nodeid, lineno=0,
                               module="nodegate")
    return emit


# --------------------------------------------------------------------------- hooks

def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_HostFixture(), "nodegate-host-fixture")
    config.addinivalue_line("filterwarnings", "always::nodegate.fixtures.NodegateNotice")
    run = config.stash.get(RUN_KEY, None)
    if run is not None and run.options.active and config.args_source in (pytest.Config.ArgsSource.TESTPATHS,
                                                                           pytest.Config.ArgsSource.INVOCATION_DIR):
        # `pytest --cluster PATH --node node4 -m preflight` with no test path means the catalogue
        # (and the procedures), not the project's own tests. The invocation directory is looked at
        # first: pytest picks its rootdir before the --cluster option is known, so the profile's
        # path counts as a test path there and the rootdir can be the profile's folder.
        for base in (config.invocation_params.dir, config.rootpath):
            roots = [str(base / d) for d in ("checks", "procedures") if (base / d).is_dir()]
            if (base / "checks").is_dir():
                config.args[:] = roots
                break


def pytest_unconfigure(config: pytest.Config) -> None:
    reads = config.stash.get(READS_KEY, None)
    if reads is not None:
        reads.close()
    access = config.stash.get(ACCESS_KEY, None)
    if access is not None:
        try:
            access.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


_SSH_FIXTURES = ("host", "nodes", "reads", "releases")
_KUBE_FIXTURES = ("kube", "ceph", "reads")


def _uses(item: pytest.Item, names: Iterable[str]) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(name in info.names_closure and _is_ours(info.name2fixturedefs.get(name)) for name in names)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]):
    result = yield   # the plugin has deselected, loaded the profile and checked --node by now
    run = config.stash.get(RUN_KEY, None)
    if run is None or run.profile is None or not items or config.option.collectonly:
        return result
    from nodegate.errors import NodegateError

    phases = {item_phase(i) for i in items} - {None}
    _refuse_postflight_without_target(run, phases)
    try:
        validate_access(config, run, items, phases)
    except NodegateError as exc:
        raise pytest.UsageError(f"before running any check: {exc}") from None
    return result


def _refuse_postflight_without_target(run: NodegateRun, phases: set[str]) -> None:
    if "postflight" in phases and run.options.target_release is None:
        raise pytest.UsageError(
            "postflight checks compare the node with the release it was upgraded to, but no --target-release "
            "was given\n  fix: add --target-release 22.04 or 24.04 (the release the node was upgraded to)")


def _connect_or_refuse(reads: "Reads", run: NodegateRun) -> None:
    from nodegate.errors import TransientError, UsageError

    try:
        reads.connect()
    except TransientError as exc:
        raise UsageError(f"the cluster of kubeconfig {run.profile.kube.kubeconfig} is unreachable: {exc.message}",
                         fix=exc.fix or "check the API server address in the kubeconfig") from None


def _xdist_controller(config: pytest.Config) -> bool:
    """The process that deals the checks out to xdist workers: it collects nothing itself."""
    return getattr(config, "workerinput", None) is None and config.pluginmanager.has_plugin("dsession")


@pytest.hookimpl(tryfirst=True)   # before xdist's own pytest_sessionstart starts the workers
def pytest_sessionstart(session: pytest.Session) -> None:
    """Under xdist the workers collect, so the checks of validate_access would run there, and a bad
    input found by a worker ends as an INTERNALERROR (one worker) or as a page of failed checks
    (several). The controller checks the input first, as a run without xdist does: every selected
    node answers SSH (address, host key, user key) and runs the release --target-release follows
    from, and the API server answers."""
    config = session.config
    run = config.stash.get(RUN_KEY, None)
    if run is None or run.profile is None or not run.nodes or not _xdist_controller(config):
        return
    from nodegate.errors import NodegateError

    pre, post = _phase_matches(config)
    phases = {name for name, chosen in (("preflight", pre), ("postflight", post)) if chosen}
    _refuse_postflight_without_target(run, phases)
    reads = reads_for(config)
    try:
        hosts = [reads.host(spec.name) for spec in run.nodes]          # built here, in one thread
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="nodegate-check") as pool:
            kube = pool.submit(_connect_or_refuse, reads, run)
            releases = list(pool.map(lambda host: host.release.os_release(), hosts))
            kube.result()
        if phases == {"preflight"} and run.target is not None:
            for spec, release in zip(run.nodes, releases):
                _check_target(spec, release, run)
    except NodegateError as exc:
        raise pytest.UsageError(f"before running any check: {exc}") from None
    config.stash[CHECKED_BY_CONTROLLER] = True


CHECKED_BY_CONTROLLER = pytest.StashKey[bool]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist: tell the workers that the controller has checked the input (see pytest_sessionstart)."""
    node.workerinput["nodegate_checked"] = node.config.stash.get(CHECKED_BY_CONTROLLER, False)


def validate_access(config: pytest.Config, run: NodegateRun, items: list[pytest.Item], phases: set[str]) -> None:
    """Reach the API server and every selected node once, before any test runs; then start the
    reads the selected checks will make, so they are answered while the first checks run."""
    needs_kube = any(_uses(i, _KUBE_FIXTURES) for i in items)
    needs_ssh = bool(run.nodes) and any(_uses(i, _SSH_FIXTURES) for i in items)
    workerinput = getattr(config, "workerinput", None)
    # under xdist the controller has checked every node before starting the workers (else the
    # first worker does: xdist starts no test before every worker has collected); a worker reads
    # only the nodes dealt to it
    validating = workerinput is None or (workerinput.get("workerid", "gw0") == "gw0"
                                         and not workerinput.get("nodegate_checked"))
    reads = reads_for(config)
    reads.fleet = len(run.nodes) > 1
    if needs_ssh:
        for spec in run.nodes:
            reads.host(spec.name)          # built here, in one thread
    if needs_kube:
        reads.prefetch(reads.connect)   # importing the client and the first request: ~0.5 s
    if needs_ssh and validating and len(run.nodes) > 1:
        reads.prefetch(*[functools.partial(reads.snapshot, spec.name) for spec in run.nodes[1:]])
    # an xdist worker runs only its share of the checks: reading everything ahead in every
    # worker would multiply the load on the nodes, the API server and Ceph
    ahead = workerinput is None
    if ahead and needs_kube:
        # the API and Ceph reads start now (each waits for the client, and fails with its error):
        # the Ceph commands, one ok-to-stop per node, are the longest chain of a fleet's preflight
        _prefetch(reads, run, items, phases, needs_kube=True, needs_ssh=False)
    if not ahead:
        # an xdist worker reads ahead node by node, as the nodes are dealt to it (pytest_runtest_protocol)
        config.stash[WORKER_AHEAD_KEY] = WorkerAhead(run=run, items=items, phases=phases, needs_kube=needs_kube,
                                                     needs_ssh=needs_ssh)
    snapshots = {spec.name: reads.snapshot(spec.name) for spec in run.nodes} if needs_ssh and validating else {}
    for spec in run.nodes:
        if spec.name in snapshots and phases == {"preflight"} and run.target is not None:
            _check_target(spec, snapshots[spec.name].os_release, run)
    if ahead and needs_ssh:
        # the nodes' reads (apt-get update: seconds) start now, while the API client still loads
        _prefetch(reads, run, items, phases, needs_kube=False, needs_ssh=True)
    if needs_kube:
        _connect_or_refuse(reads, run)


@dataclass
class WorkerAhead:
    """What an xdist worker reads ahead, and for which nodes it has started already."""
    run: NodegateRun
    items: list[pytest.Item]
    phases: set[str]
    needs_kube: bool
    needs_ssh: bool
    started: set[str] = field(default_factory=set)


WORKER_AHEAD_KEY = pytest.StashKey[WorkerAhead]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Under xdist: when a worker starts a node's first check (and when the next check it holds
    belongs to another node), that node's reads start side by side, as a run without xdist
    starts every node's at once. Only the dealt-out nodes are read: no node is read twice."""
    ahead = item.config.stash.get(WORKER_AHEAD_KEY, None)
    if ahead is None:
        return
    reads = reads_for(item.config)
    for it in (item, nextitem):
        spec = getattr(getattr(it, "callspec", None), "params", {}).get("node") if it is not None else None
        name = getattr(spec, "name", None)
        if name is None or name in ahead.started:
            continue
        ahead.started.add(name)
        if ahead.needs_ssh:
            reads.prefetch(functools.partial(reads.snapshot, name))
        _prefetch(reads, ahead.run, ahead.items, ahead.phases, needs_kube=ahead.needs_kube,
                  needs_ssh=ahead.needs_ssh, only=[spec])


def _prefetch(reads: Reads, run: NodegateRun, items: list[pytest.Item], phases: set[str], *,
              needs_kube: bool, needs_ssh: bool, only: "Sequence[NodeSpec] | None" = None) -> None:
    """Start what the selected checks will read (by check name, so `-k` on one check stays lean);
    ``only``: the reads of these nodes (and the cluster's, each taken once)."""
    selected = {getattr(i, "originalname", i.name) for i in items}
    specs = list(only) if only is not None else list(run.nodes)
    names = [spec.name for spec in specs]
    wanted: list[Callable[[], Any]] = []
    if needs_kube and selected & {"test_node_ready", "test_node_no_pressure", "test_node_schedulable",
                                  "test_kubelet_version", "test_os_release_matches_phase", "test_other_nodes_ready",
                                  "test_one_node_at_a_time", "test_control_plane_can_lose_node"}:
        wanted.append(reads.node_statuses)
    storage = {"test_ceph_healthy", "test_node_osds_up", "test_osds_ok_to_stop", "test_noout_as_expected"}
    if needs_kube and selected & storage:
        # side by side (see CEPH_PARALLEL); each node's ok-to-stop waits for the one OSD tree
        ceph_reads: list[Callable[[], Any]] = [reads.osd_tree, reads.ceph_status, reads.osd_dump,
                                               reads.osd_metadata_hosts]
        if "test_osds_ok_to_stop" in selected:
            def ok_to_stop(spec: "NodeSpec") -> None:
                ids = reads.crush_mapping(spec).osd_ids
                if ids:
                    reads.ok_to_stop(tuple(ids))
            ceph_reads += [functools.partial(ok_to_stop, spec) for spec in specs]
        reads.prefetch(*ceph_reads, ceph=True)
    if needs_kube and selected & {"test_csi_rbdplugin_healthy", "test_rbd_module"}:
        wanted += [functools.partial(reads.csi_rbdplugin, spec.kube_node) for spec in specs]
    if needs_kube and "test_upgrade_lock_free" in selected:
        wanted.append(reads.lock)
    if needs_kube and "test_pods_evictable" in selected:
        wanted += [functools.partial(reads.eviction_blockers, spec.kube_node) for spec in specs]
    if needs_ssh and "test_apt_update_clean" in selected:
        wanted += [functools.partial(reads.apt_update, n) for n in names]
    if needs_ssh and "test_nothing_upgradable" in selected:
        wanted += [functools.partial(reads.upgradable, n) for n in names]
    if needs_ssh and "test_etcd_healthy" in selected:
        wanted += [functools.partial(reads.etcd_health, spec.name) for spec in specs if spec.is_etcd]
    if wanted:
        reads.prefetch(*wanted)


def _check_target(spec: "NodeSpec", osr: "OsRelease", run: NodegateRun) -> None:
    """--target-release must be the next LTS after the node's release (do-release-upgrade goes one step)."""
    from nodegate.errors import UsageError
    from nodegate.knowledge import next_release, ubuntu_release

    target = run.target
    current = ubuntu_release(osr.version_id or "") if (osr.id or "").lower() == "ubuntu" else None
    if current is None:
        raise UsageError(f"--target-release {target.version}: {spec.name} runs {osr.label}, which is not an "
                         "Ubuntu release nodegate upgrades (20.04, 22.04)",
                         fix=f"check that {spec.name} is the node you mean; nodegate upgrades Ubuntu LTS nodes only")
    if current == target:
        raise UsageError(f"--target-release {target.version}: {spec.name} runs {current.version} "
                         f"({current.codename}) already",
                         fix="to check the node after its upgrade, run -m postflight with the same --target-release")
    following = next_release(current.version)
    if following != target:
        nxt = f"the next is {following.version} ({following.codename})" if following else "it is the newest LTS known"
        raise UsageError(f"--target-release {target.version} is not the next release for {spec.name}, which runs "
                         f"Ubuntu {current.version} ({current.codename}): {nxt}; do-release-upgrade moves one LTS "
                         "at a time",
                         fix=(f"use --target-release {following.version} first" if following
                              else "there is nothing to upgrade to"))
