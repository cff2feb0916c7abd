"""The Allure layer of the plugin: where results go, labels, links, attachments, environment.

Registered as its own pytest11 entry point beside nodegate.plugin.options. Domain code (nodes, kube,
ceph, the upgrade steps) only logs; checks and procedures hand evidence to the `evidence`
fixture, and everything that reaches a result file passes through nodegate.core.secrets.redact —
once when it is attached, and once more over the whole results folder when the run ends
(captured stdout/stderr, tracebacks and parameters are written by allure-pytest itself).

A nodegate run (one given `--node`) writes its results to `reports/runs/<run id>/results`
unless `--alluredir` is given; the run id sorts by time. Under pytest-xdist the workers get the
controller's run id and results folder, and only the controller writes the run-level files.
"""
from __future__ import annotations

import getpass
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nodegate.core.categories import CATEGORIES
from nodegate.core.results import redact_results
from nodegate.core.secrets import (
    install_log_redaction,
    inventory_secrets,
    kubeconfig_file_secrets,
    redact,
    register_secrets,
)

RUN_ID = pytest.StashKey[str]()
RUN_DIR = pytest.StashKey[Path]()
ENVIRONMENT = pytest.StashKey[dict]()
PHASES = ("preflight", "postflight", "procedure")
WORKER_ENV_GLOB = "nodegate-env-*.json"   # environment lines set in xdist workers, merged by the controller

def reports_root(config: pytest.Config) -> Path:
    return Path(os.environ.get("NODEGATE_REPORTS", config.rootpath / "reports"))


def is_nodegate_run(config: pytest.Config) -> bool:
    return bool(_opt(config, "node"))


def run_id(config: pytest.Config) -> str:
    return config.stash[RUN_ID]


def set_environment(config: pytest.Config, key: str, value: Any) -> None:
    """Add a line to environment.properties (source release, Rook and cephcsi versions …).
    Safe to call from xdist workers: their lines are merged by the controller."""
    config.stash.setdefault(ENVIRONMENT, {})[key] = str(value)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


# --------------------------------------------------------------------------- configure

@pytest.hookimpl(tryfirst=True)  # before allure-pytest's own pytest_configure reads the option
def pytest_configure(config: pytest.Config) -> None:
    install_log_redaction()
    from nodegate.core.journal import new_run_id

    workerinput = getattr(config, "workerinput", None)
    config.stash[RUN_ID] = (workerinput or {}).get("nodegate_run_id") or new_run_id()
    if is_nodegate_run(config) and getattr(config.option, "dist", "no") == "load" and not _dist_given(config):
        # `-n N` alone would deal a node's checks out to every worker, and each worker would open
        # its own SSH connection to, and take its own snapshot of, every node: keep one node's
        # checks on one worker instead (the items carry xdist_group(<node>), see below)
        config.option.dist = "loadgroup"
    if is_nodegate_run(config) and not config.option.allure_report_dir and not config.option.collectonly:
        run_dir = reports_root(config) / "runs" / config.stash[RUN_ID]
        config.stash[RUN_DIR] = run_dir
        config.option.allure_report_dir = str(run_dir / "results")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist: every worker writes into the controller's run (same id, same results folder)."""
    node.workerinput["nodegate_run_id"] = node.config.stash[RUN_ID]


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist: deal out whole nodes, one node's checks to one worker (see pytest_configure).
    xdist's own loadgroup reads the group from an "@group" suffix its workers append to the
    nodeids, which pytest 9.2 no longer lets them set (Node.nodeid is read-only now): the checks
    of a node were dealt out to every worker, and each worker read every node. The node is the
    test id's node parameter instead ("…::test_x[node4]"); checks without one go together."""
    if getattr(config.option, "dist", "no") != "loadgroup" or not is_nodegate_run(config):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByNode(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if "@" in nodeid:      # an xdist_group suffix, should xdist set one again
                return nodeid.rsplit("@", 1)[-1]
            found = re.search(r"\[([^\[\]]+)\]$", nodeid)
            return found.group(1) if found else "cluster"

    return ByNode(config, log)


def pytest_sessionstart(session: pytest.Session) -> None:
    """After every pytest_configure (nodegate.plugin.options has read the profile by now): remember the
    cluster's credentials, set the ticket link pattern, note what the run starts from."""
    config = session.config
    profile = getattr(_run(config), "profile", None)
    if profile is not None:
        register_profile_secrets(profile)
    ticket = _opt(config, "ticket")
    if ticket and not any(kind == "issue" for kind, _ in config.option.allure_link_pattern):
        pattern = _ticket_pattern(config)
        if pattern:
            # allure-pytest formats each link of type "issue" through this pattern when it writes a result
            config.option.allure_link_pattern.append(["issue", pattern])


def _run(config: pytest.Config):
    from nodegate.plugin.options import RUN_KEY

    return config.stash.get(RUN_KEY, None)


def _ticket_pattern(config: pytest.Config) -> str | None:
    """The change-ticket link pattern: the profile's [cluster] ticket_link_pattern, else
    $NODEGATE_TICKET_LINK_PATTERN. `{}` or `{ticket}` stands for the ticket id."""
    profile = getattr(_run(config), "profile", None)
    from_profile = getattr(profile, "ticket_link_pattern", None)
    raw = from_profile or os.environ.get("NODEGATE_TICKET_LINK_PATTERN") or None
    if raw is None:
        return None
    pattern = raw.replace("{ticket}", "{}")
    if pattern.count("{}") != 1 or re.search(r"\{(?!\})|(?<!\{)\}", pattern):
        where = (f"[cluster] ticket_link_pattern in {profile.path}" if from_profile
                 else "$NODEGATE_TICKET_LINK_PATTERN")
        raise pytest.UsageError(
            f"{where} is {raw!r}: it must contain the ticket placeholder {{ticket}} (or {{}}) exactly once "
            "and no other braces\n  fix: write it like https://tickets.example.com/browse/{ticket}")
    return pattern


def _read_starting_point(config: pytest.Config, profile: Any) -> None:
    """What the run started from, for environment.properties: the selected nodes' release (from
    the upgrade's journal when there is one, else the API's nodeInfo.osImage: checks change
    nothing) and the Rook and cephcsi versions (the operator's and the CSI plugin's image tags).
    One try per request: the report must neither slow down nor break a run. Values the checks set
    with set_environment win."""
    import logging

    names = {n.name for n in getattr(_run(config), "nodes", ())}
    if not names:
        return
    env = config.stash.setdefault(ENVIRONMENT, {})   # setdefault below: values the checks set win
    target = _opt(config, "target_release")
    if target:
        # a resumed upgrade: the node already runs something newer; its journal kept where it started
        from nodegate.core.journal import Journal

        started = sorted({str(v) for name in names
                          if (v := Journal(root=reports_root(config) / "runs", cluster=profile.name, node=name,
                                           target=target, run_id=config.stash[RUN_ID]).value("source_release"))})
        if started:
            env.setdefault("source.release", ", ".join(started))
    try:
        from nodegate.cluster.kube.client import Kube

        kube = Kube.connect(settings=profile.kube, check=False, attempts=1, retry_limit_s=5.0)
        try:
            kube_names = {n.kube_node for n in profile.nodes if n.name in names} | set(names)
            images = {n.name: n.os_image for n in kube.list_nodes() if n.name in kube_names}
            namespace = profile.ceph.namespace
            from nodegate.cluster.storage import csi_node_plugins

            plugins = csi_node_plugins(kube, profile.ceph).plugins
            versions = {
                "rook.version": _image_tag(kube.list_pods(namespace=namespace, selector="app=rook-ceph-operator"),
                                           "rook-ceph-operator"),
                "cephcsi.version": ", ".join(sorted({p.version or "?" for p in plugins})) or "none found",
            }
        finally:
            kube.close()
    except Exception as exc:  # noqa: BLE001 - facts for the report only; any failure must not stop the run
        logging.getLogger(__name__).info("environment: cluster facts not read (%s)",
                                         str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return
    releases = sorted({m.group(1) for image in images.values() if (m := re.search(r"(\d+\.\d+)", image or ""))})
    if releases:
        env.setdefault("source.release", ", ".join(releases))
    if images:
        env.setdefault("os_image.at_end", ", ".join(f"{k}: {v}" for k, v in sorted(images.items())))
    for key, value in versions.items():
        if value:
            env.setdefault(key, value)


def _image_tag(pods: list, container: str) -> str | None:
    tags = sorted({c.image.rsplit(":", 1)[1] for pod in pods for c in getattr(pod, "containers", ())
                   if c.name == container and ":" in getattr(c, "image", "")})
    return ", ".join(tags) or None


# --------------------------------------------------------------------------- secrets

def register_profile_secrets(profile: Any) -> None:
    """Remember the cluster's credentials (kubeconfig tokens, passwords and keys; inventory
    passwords) so that redact() masks them wherever they would be written."""
    register_secrets(kubeconfig_file_secrets(Path(profile.kube.kubeconfig)))
    register_secrets(inventory_secrets(profile.kubespray.inventory_dir))


# --------------------------------------------------------------------------- labels and links

@pytest.hookimpl(tryfirst=True)   # before xdist's worker turns xdist_group marks into scheduling groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.option.allure_report_dir:
        return   # no results are written: labels would only cost time
    import allure

    ticket = _opt(config, "ticket")
    expression = _opt(config, "markexpr") or ""
    wanted = [p for p in PHASES if re.search(rf"(?<!not )\b{p}\b", expression)]
    # the controller says dist=loadgroup; an xdist worker says loadgroup=True (its dist is "no")
    grouped = getattr(config.option, "dist", "no") == "loadgroup" or bool(getattr(config.option, "loadgroup", False))
    for item in items:
        node = _node_of(item)
        if node:
            item.add_marker(allure.label("node", node))
            # allure-pytest also writes host=<this machine>; a "host" label naming the node is what
            # a reviewer filters on, and Allure keeps the first one it meets
            item.add_marker(allure.label("host", node))
        marked = [p for p in PHASES if item.get_closest_marker(p)]
        # a check marked for both phases ran as the one `-m` asked for (the gates run `-m postflight`)
        phase = next((p for p in wanted if p in marked), marked[0] if marked else None)
        if phase is None and _category_of(item) and Path(str(item.path)).parent.name == "procedures":
            phase = "procedure"
        if phase:
            item.add_marker(allure.label("phase", phase))
            item.add_marker(allure.label("parentSuite", phase))
        category = _category_of(item)
        if category:
            item.add_marker(allure.label("category", category))
            item.add_marker(allure.label("suite", category))
        if node:
            item.add_marker(allure.label("subSuite", node))
        if ticket:
            item.add_marker(allure.link(ticket, link_type="issue", name=ticket))
        if grouped:
            item.add_marker(pytest.mark.xdist_group(node or "cluster"))


@pytest.hookimpl(wrapper=True, trylast=True)   # innermost: the terminal and allure-pytest see the masked report
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Mask secrets in a failure's text and the captured output before anyone prints or stores them."""
    report = yield
    if report.longrepr is not None:
        text = str(report.longrepr)
        cleaned = redact(text)
        if cleaned != text:
            report.longrepr = cleaned
    if report.sections:
        report.sections = [(title, redact(content)) for title, content in report.sections]
    return report


# --------------------------------------------------------------------------- run-level files

# trylast: after pytest's own sessionfinish, which tears the session fixtures down. Reading the
# cluster for environment.properties takes seconds; after Ctrl-C/SIGTERM the procedure's teardown
# (release the upgrade lock, say where the node stands) must not wait behind it.
@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    results = config.option.allure_report_dir
    if not results or config.option.collectonly:
        return
    out = Path(results)
    out.mkdir(parents=True, exist_ok=True)
    if _is_worker(config):
        extra = config.stash.get(ENVIRONMENT, {})
        if extra:
            worker = config.workerinput.get("workerid", "gw")
            (out / WORKER_ENV_GLOB.replace("*", worker)).write_text(json.dumps(extra), encoding="utf-8")
        return
    profile = getattr(_run(config), "profile", None)
    if profile is not None:
        # At the end, in the main thread: a background reader importing the Kubernetes client
        # while the checks import it too handed out half-initialised modules (INTERNALERRORs). The
        # end is also late enough to cost a run nothing before its first check, and the release
        # the run started from is still known: a procedure records it in its journal at the gate.
        _read_starting_point(config, profile)
    for part in sorted(out.glob(WORKER_ENV_GLOB)):
        try:
            for key, value in json.loads(part.read_text(encoding="utf-8")).items():
                config.stash.setdefault(ENVIRONMENT, {})[key] = str(value)
        except (OSError, ValueError):
            pass
        part.unlink(missing_ok=True)
    env = environment(config)
    (out / "environment.properties").write_text(
        "".join(f"{k}={_prop(redact(v))}\n" for k, v in env.items()), encoding="utf-8")
    (out / "categories.json").write_text(json.dumps(CATEGORIES, indent=2), encoding="utf-8")
    (out / "executor.json").write_text(json.dumps({
        "name": "nodegate", "type": "pytest", "buildName": f"nodegate run {config.stash[RUN_ID]}",
        "buildOrder": int(re.sub(r"\D", "", config.stash[RUN_ID][:16]) or 0),
        "reportName": f"nodegate {env.get('cluster', '')} {env.get('nodes', '')}".strip(),
    }, indent=2), encoding="utf-8")
    redact_results(out)


def environment(config: pytest.Config) -> dict[str, str]:
    """The run's environment.properties lines: what a reviewer needs to know the change by."""
    run = _run(config)
    profile = getattr(run, "profile", None)
    nodes = ", ".join(n.name for n in getattr(run, "nodes", ())) or _opt(config, "node") or ""
    extra = dict(config.stash.get(ENVIRONMENT, {}))
    target = _opt(config, "target_release") or ""
    source = extra.pop("source.release", "")
    env = {
        "cluster": getattr(profile, "name", "") or "",
        "nodes": nodes,
        "release": f"{source or '?'} → {target or '?'}" if (source or target) else "",
        "source.release": source,
        "target.release": target,
        "kubespray.version": getattr(getattr(profile, "kubespray", None), "version", "") or "",
        "kube_version": getattr(profile, "kube_version", "") or "",
        "rook.version": extra.pop("rook.version", ""),
        "cephcsi.version": extra.pop("cephcsi.version", ""),
        "nodegate.version": _version(),
        "nodegate.commit": _git_commit(),
        "operator": _operator(),
        "mode": ("execute" if _opt(config, "execute") else "read-only") if _opt(config, "node") else "",
        "ticket": _opt(config, "ticket") or "",
        "run": config.stash[RUN_ID],
        "python": platform.python_version(),
    }
    env.update(extra)
    # how the Kubespray version was found, last: the report's first page shows the first rows
    env["kubespray.version.found"] = getattr(getattr(profile, "kubespray", None), "version_source", "") or ""
    # an unknown value is stated, not left out: a reviewer must see that it was not read
    must = ("cluster", "nodes", "release", "kubespray.version", "kube_version", "rook.version", "cephcsi.version")
    return {k: (v or ("unknown" if k in must else "")) for k, v in env.items() if v or k in must}


# --------------------------------------------------------------------------- evidence

class Evidence:
    """What checks and steps hand to the report: every text is redacted before it is written."""

    def text(self, name: str, text: str) -> None:
        import allure

        allure.attach(redact(text), name=name, attachment_type=allure.attachment_type.TEXT)

    def json(self, name: str, data: Any) -> None:
        import allure

        text = data if isinstance(data, str) else json.dumps(data, indent=2, sort_keys=True, default=str)
        allure.attach(redact(text), name=name, attachment_type=allure.attachment_type.JSON)

    def table(self, name: str, header: list[str], rows: list[list[Any]]) -> None:
        import csv
        import io

        import allure

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        writer.writerows(rows)
        allure.attach(redact(buf.getvalue()), name=name, attachment_type=allure.attachment_type.CSV)

    def command(self, result: Any, *, name: str | None = None) -> None:
        """A command run on a node or against Ceph (nodes.CommandResult, ceph.CephCommandResult):
        where, the command line, its exit code, duration and output, as one attachment."""
        where = getattr(result, "node", None) or getattr(result, "via", None) or "?"
        command = getattr(result, "command", None)
        if not isinstance(command, str):
            args = getattr(result, "args", ())
            command = args if isinstance(args, str) else " ".join(map(str, args))
        duration = getattr(result, "duration", None)
        text = (f"on: {where}\n$ {command}\nexit code: {getattr(result, 'rc', '?')}"
                + (f"   ({duration:.2f} s)" if isinstance(duration, (int, float)) else "")
                + f"\n--- stdout ---\n{getattr(result, 'stdout', '')}\n--- stderr ---\n{getattr(result, 'stderr', '')}\n")
        self.text(name or f"{where}: {command}"[:120], text)

    def step(self, title: str):
        """An Allure step (start, duration, outcome) around a block: `with evidence.step("drain"):`."""
        import allure

        return allure.step(redact(title))


@pytest.fixture(scope="session")
def evidence() -> Evidence:
    """Attach evidence (commands, JSON, tables, text) to the running check or step, redacted."""
    return Evidence()


# --------------------------------------------------------------------------- helpers

def _dist_given(config: pytest.Config) -> bool:
    words = list(config.invocation_params.args) + os.environ.get("PYTEST_ADDOPTS", "").split()
    return any(str(w).startswith(("--dist", "-d")) for w in words)


def _opt(config: pytest.Config, name: str):
    try:
        return config.getoption(name)
    except ValueError:
        return None


def _node_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    value = callspec.params.get("node") or callspec.params.get("node_name")
    return getattr(value, "name", value) if value is not None else None


def _category_of(item: pytest.Item) -> str | None:
    path = Path(str(item.path))
    if path.parent.name not in ("checks", "procedures"):
        return None
    stem = path.stem
    return stem[5:] if stem.startswith("test_") else stem


def _prop(value: str) -> str:
    # java.util.Properties escapes: Allure 2 reads the file with it
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nodegate")
    except PackageNotFoundError:
        return "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
        commit = out.stdout.strip()
        if not commit:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _operator() -> str:
    try:
        return os.environ.get("NODEGATE_OPERATOR") or os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
