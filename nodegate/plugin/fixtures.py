"""Fixtures that reach the cluster, for checks and procedures: `nodes`/`host` (SSH through
nodegate.cluster.nodes.ssh, one reused connection per node, a fresh one after `nodes.reconnect`), `kube`
(nodegate.cluster.kube.client), `ceph` (nodegate.cluster.ceph), and `reads`: the reads the checks share, each taken
once per session (`reads.forget()` drops them after a step changed something).

Registered by the pytest11 entry point `nodegate_fixtures`. Nothing here connects anywhere at
import or collection time unless a nodegate run selected tests that need the cluster: then the
API server and every selected node are reached once, right after collection, so an unreachable
cluster, a refused or failing SSH login or an unknown host key is one clear message before any
test runs (a pytest.UsageError, no traceback). Those first connections are kept and reused.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from nodegate.cluster.session import Access
from nodegate.plugin.options import RUN_KEY
from nodegate.plugin.reads import ACCESS_KEY, READS_KEY, Reads, access_for, reads_for
from nodegate.plugin.validation import (
    CHECKED_BY_CONTROLLER,
    WORKER_AHEAD_KEY,
    _check_target,
    _connect_or_refuse,
    _prefetch,
    _refuse_postflight_without_target,
    _xdist_controller,
    validate_access,
)

if TYPE_CHECKING:
    from nodegate.cluster.ceph import Ceph
    from nodegate.cluster.kube.client import Kube
    from nodegate.cluster.nodes.ssh import NodeHost, Nodes
    from nodegate.core.knowledge import UbuntuRelease
    from nodegate.profile.model import NodeSpec

PHASES = ("preflight", "postflight")


class NodegateNotice(UserWarning):
    """Something an operator should see that does not block: a condition the procedure itself
    fixes (naming the step), or a fact worth knowing (an end-of-life Kubernetes minor)."""


# --------------------------------------------------------------------------- connections

# --------------------------------------------------------------------------- shared reads


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
    from nodegate.core.knowledge import UBUNTU_RELEASES

    index = UBUNTU_RELEASES.index(release)
    return UBUNTU_RELEASES[index - 1] if index > 0 else None


@pytest.fixture
def releases(node: "NodeSpec", phase: str, target_release: "UbuntuRelease | None", reads: Reads) -> ReleasePlan:
    from nodegate.core.knowledge import next_release, ubuntu_release

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
    """The Kubernetes API of the profile's kubeconfig (nodegate.cluster.kube.client.Kube)."""
    return access.kube


@pytest.fixture(scope="session")
def ceph(access: Access) -> "Ceph":
    """The cluster's Ceph, through the toolbox pod or the profile's command (nodegate.cluster.ceph.Ceph)."""
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
        """The node's SSH host (nodegate.cluster.nodes.ssh.NodeHost; `.testinfra` is the testinfra Host).
        Function-scoped on purpose: after `nodes.reconnect(name)` the next test gets the new one."""
        return nodes.host(node.name)


@pytest.fixture
def notice(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """notice(text): show a non-blocking finding as a warning in the terminal summary and as
    evidence in the report; the check still passes."""
    def emit(text: str) -> None:
        from nodegate.plugin.allure import Evidence

        Evidence().text("notice", text)
        # Attributed to the check (not a source line): the summary shows the finding, not code.
        warnings.warn_explicit(NodegateNotice(text), NodegateNotice, filename=request.node.nodeid, lineno=0,
                               module="nodegate")
    return emit


# --------------------------------------------------------------------------- hooks

def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_HostFixture(), "nodegate-host-fixture")
    config.addinivalue_line("filterwarnings", "always::nodegate.plugin.fixtures.NodegateNotice")
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


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]):
    result = yield   # the plugin has deselected, loaded the profile and checked --node by now
    run = config.stash.get(RUN_KEY, None)
    if run is None or run.profile is None or not items or config.option.collectonly:
        return result
    from nodegate.core.errors import NodegateError

    phases = {item_phase(i) for i in items} - {None}
    _refuse_postflight_without_target(run, phases)
    try:
        validate_access(config, run, items, phases)
    except NodegateError as exc:
        raise pytest.UsageError(f"before running any check: {exc}") from None
    return result


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
    from nodegate.core.errors import NodegateError

    pre, post = _phase_matches(config)
    phases = {name for name, chosen in (("preflight", pre), ("postflight", post)) if chosen}
    _refuse_postflight_without_target(run, phases)
    reads = reads_for(config)
    try:
        hosts = [reads.host(spec.name) for spec in run.nodes]          # built here, in one thread
        from nodegate.upgrade.preload import import_harness_modules

        import_harness_modules()     # before the pool: see nodegate.upgrade.preload
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="nodegate-check") as pool:
            kube = pool.submit(_connect_or_refuse, reads, run)
            releases = list(pool.map(lambda host: host.release.os_release(), hosts))
            list(pool.map(lambda host: host.privilege(), hosts))
            kube.result()
        if phases == {"preflight"} and run.target is not None:
            for spec, release in zip(run.nodes, releases):
                _check_target(spec, release, run)
    except NodegateError as exc:
        raise pytest.UsageError(f"before running any check: {exc}") from None
    config.stash[CHECKED_BY_CONTROLLER] = True


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist: tell the workers that the controller has checked the input (see pytest_sessionstart)."""
    node.workerinput["nodegate_checked"] = node.config.stash.get(CHECKED_BY_CONTROLLER, False)


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


