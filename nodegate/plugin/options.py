"""The nodegate pytest plugin: one option group, markers, early validation, node parametrization.

Registered by the pytest11 entry point, so it is loaded in every pytest run in this
environment: with no nodegate option it registers markers and options and does nothing else
(no profile read, no client imported). With options, every problem with the input (profile,
inventory, node names, contradicting options) is reported before anything runs, as a
pytest.UsageError: one message naming the problem and the fix, no traceback.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:   # imported lazily at run time: keep startup cheap
    from nodegate.core.budget import WindowEnd
    from nodegate.core.knowledge import UbuntuRelease
    from nodegate.profile.model import NodeSpec, Profile

MARKERS = {
    "preflight": "read-only check run before a change to a node",
    "postflight": "read-only check run after a change to a node",
    "procedure": "a step that changes a node; runs only with --node and --execute",
    "lab": "a test of the rehearsal lab itself (needs root and the lab's packages)",
}
TARGET_RELEASES = ("22.04", "24.04")   # kept in step with knowledge.TARGET_RELEASES (checked by a test)
_TICKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/#:-]{0,63}$")


@dataclass(frozen=True)
class RunOptions:
    """The nodegate command-line options, validated."""
    cluster: str | None = None
    node: str | None = None
    target_release: str | None = None
    execute: bool = False
    ticket: str | None = None
    trust_new_host_keys: bool = False
    take_over_stale_lock: bool = False
    drain_timeout_s: float | None = None
    restart_journal: bool = False
    become_password_env: str | None = None   # the NAME of the variable, never its value
    ask_become_pass: bool = False            # read sudo's password once from the terminal
    parallel: int = 1                        # nodes upgraded side by side at most; 0: as many as is safe (auto)
    window_end: WindowEnd | None = None      # --window-end, resolved when the run starts
    window_minutes: float | None = None      # --window-minutes

    @property
    def active(self) -> bool:
        """Any nodegate option given: then the profile is read and checked up front."""
        return any((self.cluster, self.node, self.target_release, self.execute, self.ticket,
                    self.trust_new_host_keys, self.take_over_stale_lock, self.drain_timeout_s is not None,
                    self.restart_journal, self.become_password_env, self.ask_become_pass, self.parallel != 1, self.window_end,
                    self.window_minutes))

    @property
    def rollout(self) -> bool:
        """Batches or a time budget were asked for (nodegate.plugin.batches runs the procedures then)."""
        return self.parallel != 1 or self.window_end is not None or self.window_minutes is not None


@dataclass(frozen=True)
class NodegateRun:
    """Everything a run was asked to do: options, the loaded profile, the selected nodes (rolling order)."""
    options: RunOptions
    profile: Profile | None = None
    nodes: tuple[NodeSpec, ...] = ()
    profile_source: str | None = None      # how the profile was found: --cluster, …, the running lab

    @property
    def target(self) -> UbuntuRelease | None:
        from nodegate.core.knowledge import ubuntu_release

        return ubuntu_release(self.options.target_release) if self.options.target_release else None


RUN_KEY = pytest.StashKey[NodegateRun]()


# --------------------------------------------------------------------------- options and markers

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nodegate", "nodegate: gated OS release upgrades of Kubespray nodes")
    group.addoption("--cluster", metavar="PATH", default=None,
                    help="cluster profile (TOML); default $NODEGATE_CLUSTER, then ./nodegate.toml, then "
                         "./.lab/cluster.toml while that lab runs")
    group.addoption("--node", metavar="NAME[,NAME...]", default=None,
                    help="nodes to check or upgrade: names from the inventory, or all, workers, control-plane "
                         "(upgraded workers first, control plane last)")
    group.addoption("--target-release", metavar="22.04|24.04", default=None,
                    help="the Ubuntu release to upgrade to (the next LTS after the node's)")
    group.addoption("--execute", action="store_true", default=False,
                    help="really run the procedures (changes nodes); needs --node and --target-release")
    group.addoption("--ticket", metavar="CHG-...", default=None,
                    help="change ticket recorded in the journal, the lock and the report")
    group.addoption("--trust-new-host-keys", action="store_true", default=False,
                    help="accept SSH host keys not yet in known_hosts (verified against it by default)")
    group.addoption("--become-password-env", metavar="NAME", default=None,
                    help="read the nodes' sudo password from environment variable NAME (passed to sudo on stdin, "
                         "never logged); without it, sudo must not ask for a password")
    group.addoption("--ask-become-pass", "-K", action="store_true", default=False,
                    help="ask once, on the terminal, for the nodes' sudo password (as Ansible's -K); passed to sudo "
                         "on stdin, never logged, masked in reports")
    group.addoption("--take-over-stale-lock", action="store_true", default=False,
                    help="take over the upgrade lock when its holder is gone and it is older than the profile allows")
    group.addoption("--restart-journal", action="store_true", default=False,
                    help="keep the node's upgrade journal aside (renamed, never deleted) and start again from the "
                         "gate: the way out when a journal cannot be resumed")
    group.addoption("--drain-timeout", metavar="SECONDS", default=None,
                    help="give up draining a node after this many seconds (default from the profile)")
    group.addoption("--parallel", metavar="auto|N", default=1, type=parallel_value,
                    help="upgrade up to N nodes side by side, in batches Ceph and the PodDisruptionBudgets allow "
                         "(auto: as many as they allow); default 1, one node at a time")
    group.addoption("--window-end", metavar="HH:MM TZ", default=None, type=window_end_value,
                    help="the maintenance window ends at HH:MM in a time zone (23:30+01:00, 23:30 Europe/Berlin): "
                         "a node or batch not expected (p95) to finish by then is not started")
    group.addoption("--window-minutes", metavar="N", default=None, type=window_minutes_value,
                    help="the maintenance window ends N minutes after the run starts (see --window-end)")


def parallel_value(text: str) -> int:
    """--parallel: "auto" (0 inside nodegate) or a whole number of nodes >= 1."""
    if isinstance(text, int):
        return text
    if text.strip().lower() == "auto":
        return 0
    if not re.fullmatch(r"\d{1,4}", text.strip()) or int(text) < 1:
        raise pytest.UsageError(
            f"--parallel {text!r} is not auto or a whole number of nodes\n"
            "  fix: give --parallel auto (as many nodes side by side as Ceph and the PDBs allow) or --parallel N "
            "(N >= 1; 1 is one node at a time, the default)")
    return int(text)


def window_end_value(text: str) -> "WindowEnd":
    from nodegate.core.budget import parse_window_end

    try:
        return parse_window_end(text)
    except ValueError as exc:
        raise pytest.UsageError(f"--window-end {exc}\n  fix: give the end of the maintenance window with its time "
                                "zone, e.g. --window-end 23:30+01:00 or --window-end '23:30 Europe/Berlin'") from None


def window_minutes_value(text: str) -> float:
    from nodegate.core.budget import parse_window_minutes

    try:
        return parse_window_minutes(text)
    except ValueError as exc:
        raise pytest.UsageError(f"--window-minutes {exc}\n  fix: give how many minutes the window has left, "
                                "e.g. --window-minutes 90") from None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if config.option.help or config.option.version:
        return
    options = _read_options(config)
    run = NodegateRun(options=options)
    if options.active:
        run = _load(options, Path(config.invocation_params.dir), worker=hasattr(config, "workerinput"))
    config.stash[RUN_KEY] = run


def _read_options(config: pytest.Config) -> RunOptions:
    get = config.getoption
    target = get("target_release")
    if target is not None and target not in TARGET_RELEASES:
        raise pytest.UsageError(
            f"--target-release {target!r} is not a release nodegate upgrades to\n"
            f"  fix: use --target-release {' or '.join(TARGET_RELEASES)} (the next LTS after the node's "
            "release: 20.04 → 22.04 → 24.04, one step at a time)")
    drain = get("drain_timeout")
    drain_s = None
    if drain is not None:
        try:
            drain_s = float(str(drain).removesuffix("s"))
        except ValueError:
            drain_s = -1.0
        if not drain_s > 0 or drain_s != drain_s or drain_s == float("inf"):
            raise pytest.UsageError(
                f"--drain-timeout {drain!r} is not a positive number of seconds\n"
                "  fix: give a finite timeout such as --drain-timeout 600 (a drain blocked by a "
                "PodDisruptionBudget must end in a clear failure, not wait forever)")
    ticket = get("ticket")
    if ticket is not None and not _TICKET.match(ticket):
        raise pytest.UsageError(
            f"--ticket {ticket!r} is not a ticket id\n"
            "  fix: give the change ticket id only, e.g. --ticket CHG-1234 (letters, digits, . _ / # : -)")
    node = get("node")
    if node is not None and not node.strip():
        raise pytest.UsageError("--node is empty\n  fix: give --node NAME[,NAME...] or all, workers, control-plane")
    become_env = get("become_password_env")
    if become_env is not None:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", become_env):
            raise pytest.UsageError(
                f"--become-password-env {become_env!r} is not an environment variable name\n"
                "  fix: give the variable's NAME (e.g. --become-password-env NODEGATE_BECOME_PASSWORD), not the password")
        if not os.environ.get(become_env):
            raise pytest.UsageError(
                f"--become-password-env {become_env}: the environment variable {become_env} is not set or empty\n"
                f"  fix: export {become_env} with the nodes' sudo password (e.g. `read -s {become_env}; export "
                f"{become_env}`), or drop the option if sudo needs no password")
    ask = bool(get("ask_become_pass"))
    if ask and become_env is not None:
        raise pytest.UsageError(
            "--ask-become-pass and --become-password-env both say where sudo's password comes from\n"
            "  fix: give one of them: --ask-become-pass asks on the terminal, --become-password-env NAME reads "
            "the environment variable NAME")
    options = RunOptions(cluster=get("cluster"), node=node, target_release=target, execute=bool(get("execute")),
                         ticket=ticket, trust_new_host_keys=bool(get("trust_new_host_keys")),
                         take_over_stale_lock=bool(get("take_over_stale_lock")), drain_timeout_s=drain_s,
                         restart_journal=bool(get("restart_journal")), become_password_env=become_env,
                         ask_become_pass=ask, parallel=get("parallel"), window_end=get("window_end"),
                         window_minutes=get("window_minutes"))
    if options.window_end is not None and options.window_minutes is not None:
        raise pytest.UsageError(
            "--window-end and --window-minutes both say when the window ends\n"
            "  fix: give only one of them")
    if options.execute and not options.node:
        raise pytest.UsageError(
            "--execute needs --node: nodegate changes only the nodes it is told to\n"
            "  fix: add --node NAME (or workers, control-plane, all) to say which nodes to upgrade")
    if options.execute and not options.target_release:
        raise pytest.UsageError(
            "--execute needs --target-release: the release to upgrade to must be stated\n"
            f"  fix: add --target-release {' or '.join(TARGET_RELEASES)}")
    if options.take_over_stale_lock and not options.execute:
        raise pytest.UsageError(
            "--take-over-stale-lock only makes sense with --execute (only procedures take the lock)\n"
            "  fix: drop --take-over-stale-lock, or run the procedure with --execute")
    return options


# Where a password read with --ask-become-pass is kept for this run's own processes (xdist workers,
# the procedure's check runs, Kubespray's become helper): they inherit it instead of asking again.
ASKED_BECOME_PASSWORD_ENV = "NODEGATE_ASKED_BECOME_PASSWORD"


def ask_become_password(*, worker: bool) -> str:
    """sudo's password, read once from the controlling terminal (getpass: no echo). An xdist worker
    takes the one its controller read. No terminal: a UsageError naming --become-password-env."""
    import getpass

    asked = os.environ.get(ASKED_BECOME_PASSWORD_ENV)
    if worker and asked:
        return asked
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise pytest.UsageError(
            "--ask-become-pass: there is no terminal to ask on (no controlling tty)\n"
            "  fix: put the password in an environment variable and give its name with --become-password-env NAME"
        ) from None
    try:
        password = getpass.getpass("BECOME password (sudo on the nodes): ")
    except (EOFError, KeyboardInterrupt):
        raise pytest.UsageError("--ask-become-pass: no password was entered\n"
                                "  fix: run again and type the nodes' sudo password at the prompt") from None
    if not password:
        raise pytest.UsageError("--ask-become-pass: the password entered is empty\n"
                                "  fix: type the nodes' sudo password, or drop --ask-become-pass if sudo needs none")
    return password


def _load(options: RunOptions, cwd: Path, *, worker: bool = False) -> NodegateRun:
    """Read the profile and select the nodes; any problem becomes a pytest.UsageError."""
    from nodegate.core.errors import UsageError
    from nodegate.profile.load import find_profile, load_profile

    try:
        path, source = find_profile(options.cluster, cwd=cwd)
        profile = load_profile(path)
        nodes = profile.select(options.node) if options.node else ()
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    if options.trust_new_host_keys:
        profile = replace(profile, ssh=replace(profile.ssh, trust_new_host_keys=True))
    if options.drain_timeout_s is not None:
        profile = replace(profile, upgrade=replace(profile.upgrade, drain_timeout_s=options.drain_timeout_s))
    if options.ask_become_pass:
        from nodegate.core.secrets import register_secret

        password = ask_become_password(worker=worker)
        register_secret(password)
        os.environ[ASKED_BECOME_PASSWORD_ENV] = password
        # from here on the run holds it as if given with --become-password-env: the procedure's
        # check runs get that option with this variable's name, never the value
        options = replace(options, become_password_env=ASKED_BECOME_PASSWORD_ENV)
    if options.become_password_env:
        from nodegate.core.secrets import register_secret

        password = os.environ[options.become_password_env]
        register_secret(password)   # before anything can print it
        profile = replace(profile, ssh=replace(profile.ssh, become_password=password))
    return NodegateRun(options=options, profile=profile, nodes=nodes, profile_source=source)


def pytest_sessionstart(session: pytest.Session) -> None:
    # Ctrl-C (and SIGTERM while executing) must stop the run even when Python loses the interrupt in
    # a finalizer (nodegate.core.interrupts). After every plugin's pytest_configure, so the hook noting a
    # swallowed interrupt sits in front of pytest's own unraisable-exception hook, not behind it.
    run = session.config.stash.get(RUN_KEY, None)
    if run is not None and run.options.active:
        from nodegate.core import interrupts

        interrupts.watch(sigterm=run.options.execute)


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    interrupts = sys.modules.get("nodegate.core.interrupts")   # loaded only by a nodegate run
    if interrupts is not None:
        interrupts.stopping()


def pytest_unconfigure(config: pytest.Config) -> None:
    interrupts = sys.modules.get("nodegate.core.interrupts")
    if interrupts is not None:
        interrupts.unwatch()


def pytest_report_header(config: pytest.Config) -> str | None:
    run = config.stash.get(RUN_KEY, None)
    if run is None or run.profile is None:
        return None
    nodes = ", ".join(n.name for n in run.nodes) or "none selected"
    target = run.options.target_release or "not given"
    mode = "EXECUTE (changes nodes)" if run.options.execute else "read-only"
    return f"nodegate: profile: {_shown_profile(config, run)}; nodes: {nodes}; target: {target}; {mode}"


def _shown_profile(config: pytest.Config, run: NodegateRun) -> str:
    """'/path/c.toml (mycluster, from --cluster)'; the running lab's by the relative path the user
    can see in the folder they are in: '.lab/cluster.toml (the running lab)'."""
    from nodegate.profile.load import RUNNING_LAB

    assert run.profile is not None
    path = run.profile.path
    if run.profile_source == RUNNING_LAB:
        try:
            path = path.relative_to(Path(config.invocation_params.dir))
        except ValueError:
            pass
        return f"{path} ({RUNNING_LAB})"
    source = f", from {run.profile_source}" if run.profile_source else ""
    return f"{path} ({run.profile.name}{source})"


# --------------------------------------------------------------------------- collection

def _is_ours(fixturedefs) -> bool:
    """True when the closest definition of a fixture comes from nodegate's plugins (this one or
    nodegate.plugin.fixtures); a project's own `node` or `profile` fixture (a conftest's) is left alone."""
    module = getattr(fixturedefs[-1].func, "__module__", None) if fixturedefs else None
    return isinstance(module, str) and module.startswith("nodegate.") and not module.startswith("nodegate.lab")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "node" not in metafunc.fixturenames:
        return
    if not _is_ours(metafunc._arg2fixturedefs.get("node")):
        return
    run = metafunc.config.stash.get(RUN_KEY, None)
    if run is None or not run.nodes:
        return   # reported for all such tests at once in pytest_collection_modifyitems
    metafunc.parametrize("node", run.nodes, ids=[n.name for n in run.nodes], indirect=True, scope="session")


def _needs(item: pytest.Item, name: str) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and name in info.names_closure and _is_ours(info.name2fixturedefs.get(name))


def _is_procedure(item: pytest.Item, rootpath: Path) -> bool:
    if item.get_closest_marker("procedure") is not None:
        return True
    try:
        parts = item.path.relative_to(rootpath).parts
    except ValueError:
        return False
    return bool(parts) and parts[0] == "procedures"


def _procedures_allowed(run: NodegateRun) -> bool:
    # A procedure changes nodes: it runs only when told which nodes and told to execute.
    return bool(run.options.execute and run.nodes)


@pytest.hookimpl(trylast=True)   # after -m/-k deselection, so only what will run is judged
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return
    if not _procedures_allowed(run):
        kept, dropped = [], []
        for item in items:
            (dropped if _is_procedure(item, config.rootpath) else kept).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
    if run.options.active:
        _check_markers(config, items)
    needs_profile = [i for i in items if _needs(i, "profile") or _needs(i, "node") or _needs(i, "nodegate_run")]
    if needs_profile and run.profile is None:
        # no nodegate option was given, but collected tests need the cluster: read it now, still
        # before anything runs, so a missing profile is one clear message
        run = _load(replace(run.options, cluster=run.options.cluster), Path(config.invocation_params.dir))
        config.stash[RUN_KEY] = run
    unparametrized = [i for i in items if _needs(i, "node") and "node" not in getattr(i, "callspec", _NO_PARAMS).params]
    if unparametrized:
        names = ", ".join(i.name for i in unparametrized[:5]) + (" …" if len(unparametrized) > 5 else "")
        known = run.profile.known_names() if run.profile else "see the inventory"
        raise pytest.UsageError(
            f"{len(unparametrized)} selected test(s) check a node, but no --node was given: {names}\n"
            f"  fix: add --node NAME[,NAME...] (or all, workers, control-plane); known nodes: {known}")


class _NoParams:
    params: dict = {}


_NO_PARAMS = _NoParams()


def _check_markers(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A mistyped marker in `-m` selects nothing and passes silently: refuse it up front."""
    known = {line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")}
    known |= {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}
    expression = config.getoption("markexpr", "") or ""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expression)) - {"and", "or", "not"}
    unknown = sorted(words - known)
    if unknown:
        raise pytest.UsageError(
            f"-m {expression!r} names unknown marker(s): {', '.join(unknown)}\n"
            f"  fix: use the nodegate markers {', '.join(MARKERS)}")


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def nodegate_run(request: pytest.FixtureRequest) -> NodegateRun:
    """The validated options, the profile and the selected nodes of this run."""
    return request.config.stash[RUN_KEY]


@pytest.fixture(scope="session")
def profile(nodegate_run: NodegateRun) -> Profile:
    """The cluster profile (read before collection ended, so it is always there for tests that ask)."""
    if nodegate_run.profile is None:   # unreachable through pytest's normal flow; stated, not assumed
        pytest.fail("no cluster profile was loaded; give --cluster PATH", pytrace=False)
    return nodegate_run.profile


@pytest.fixture(scope="session")
def selected_nodes(nodegate_run: NodegateRun) -> tuple[NodeSpec, ...]:
    """The --node selection in rolling order (workers first, control plane last)."""
    return nodegate_run.nodes


@pytest.fixture(scope="session")
def node(request: pytest.FixtureRequest) -> NodeSpec:
    """One selected node; tests asking for it run once per --node entry, with the name as id."""
    if not hasattr(request, "param"):
        pytest.fail("this test checks a node: give --node NAME", pytrace=False)
    return request.param


@pytest.fixture(scope="session")
def target_release(nodegate_run: NodegateRun) -> UbuntuRelease | None:
    """The --target-release as a knowledge.UbuntuRelease (None when not given)."""
    return nodegate_run.target


# The fixtures that reach the cluster (host, nodes, kube, ceph, reads) are nodegate.plugin.fixtures.
