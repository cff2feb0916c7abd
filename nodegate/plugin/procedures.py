"""The pytest layer of the procedures: ordering, gating, stop-at-first-failure, plan mode, evidence.

Design (kept small on purpose):
- ``procedures/test_upgrade.py`` is one test parametrized by step (nodegate.upgrade.STEP_NAMES)
  and, through the ``node`` fixture, by node: ``test_upgrade[node4-03-drain]``. Items are ordered
  node-major (the --node selection's rolling order: workers first, control plane last), steps in
  order within a node.
- The session-scoped ``upgrade`` fixture (one per node) builds a nodegate.upgrade.engine.Upgrade over the
  shared SSH/API/Ceph connections, decides "resume or start" from the journal, and on teardown —
  after a failure or Ctrl-C/SIGTERM too — releases the lock if the run still holds it.
- Each step test calls ``perform(name)``: one Allure step with the plan of the step, its evidence
  (commands with output, JSON) and its outcome. A failed step stops the run: every later procedure
  item (this node's and the next nodes') is skipped naming the failed step, and the failure message
  says where the node was left.
- The gate and the postflight run the checks catalogue (``checks/ -m preflight|postflight``) as a
  pytest subprocess for the node, writing into the same Allure results directory; its failing
  checks become the step's failure message.
- Without ``--execute`` (nodegate.plugin.options deselects the procedures then), giving --node while
  collecting procedures prints the plan — every step with the exact commands and where they run —
  and writes it to the run's Allure results; nothing is changed.
- SIGTERM is turned into KeyboardInterrupt while executing (nodegate.core.interrupts, set up by
  nodegate.plugin.options), so the journal records the step as interrupted and the fixtures' teardown
  runs, exactly as for Ctrl-C.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nodegate.cluster.session import Access
from nodegate.core.categories import ERROR_CATEGORY_LABEL
from nodegate.plugin.options import RUN_KEY, NodegateRun, _is_procedure

if TYPE_CHECKING:
    from nodegate.upgrade.engine import CheckRun, Upgrade

log = logging.getLogger("nodegate.procedures")

PLAN_REQUESTED = pytest.StashKey[bool]()
PLAN_TEXT = pytest.StashKey[str]()
FIRST_FAILURE = pytest.StashKey[str]()
CHECKS_TIMEOUT_S = 1800


def _executing(run: NodegateRun | None) -> bool:
    return bool(run is not None and run.options.execute and run.nodes)


# --------------------------------------------------------------------------- configuration

def pytest_configure(config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is not None and run.nodes and run.options.rollout:
        # batches and the time budget: a plugin of their own, loaded only when asked for
        from nodegate.plugin import batches

        config.pluginmanager.register(batches, batches.PLUGIN_NAME)
    if not _executing(run):
        return
    # Progress of long steps and waits must reach the terminal while they run.
    if config.getoption("log_cli_level", None) is None:
        config.option.log_cli_level = "INFO"
        config.option.log_cli_format = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
        config.option.log_cli_date_format = "%H:%M:%S"


@pytest.hookimpl(tryfirst=True)
def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Drop traceback entries without a line number before pytest renders where Ctrl-C/SIGTERM
    landed: Python 3.11 leaves tb_lineno None for a frame interrupted between two lines, and
    pytest's rendering then crashes (TypeError, exit 1, a traceback instead of the operator's message)."""
    from _pytest._code.code import Traceback

    entries = [entry for entry in excinfo.traceback if getattr(entry, "_rawentry", None) is None
               or entry._rawentry.tb_lineno is not None]
    if len(entries) != len(excinfo.traceback):
        excinfo.traceback = Traceback(entries)


# --------------------------------------------------------------------------- collection

@pytest.hookimpl(hookwrapper=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]):
    wanted = [i for i in items if _is_procedure(i, config.rootpath)]
    yield
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return
    if wanted and not run.options.execute and run.nodes:
        config.stash[PLAN_REQUESTED] = True
    procedures = [i for i in items if _is_procedure(i, config.rootpath)]
    if not procedures:
        return
    from nodegate.plugin.batches import BATCH_TEST, unit_index, uses_batch_items

    # one node at a time: the node's own items; batches (--parallel): the batch items
    batched = uses_batch_items(config)
    unused = [i for i in procedures if (getattr(i, "originalname", i.name) == BATCH_TEST) != batched]
    if unused:
        config.hook.pytest_deselected(items=unused)
        procedures = [i for i in procedures if i not in unused]
        items[:] = [i for i in items if i not in unused]
    rank = {n.name: i for i, n in enumerate(run.nodes)}
    position = {id(item): i for i, item in enumerate(items)}

    def key(item: pytest.Item) -> tuple[int, int]:
        index = unit_index(item)
        if index is not None:
            return (index, position[id(item)])
        node = _node_name(item)
        return (rank.get(node, len(rank)), position[id(item)])

    others = [i for i in items if not _is_procedure(i, config.rootpath)]
    items[:] = others + sorted(procedures, key=key)


def _node_name(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    value = callspec.params.get("node") if callspec is not None else None
    return getattr(value, "name", value)


# --------------------------------------------------------------------------- stop at the first failure

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    failed = item.config.stash.get(FIRST_FAILURE, None)
    if failed and _is_procedure(item, item.config.rootpath) and not _finishes_its_batch(item):
        pytest.skip(f"not run: {failed} failed, and a procedure stops at its first failure")


def _finishes_its_batch(item: pytest.Item) -> bool:
    """The other nodes of a batch in which one node failed go on to the batch's end."""
    if item.config.pluginmanager.get_plugin("nodegate-batches") is None:
        return False
    from nodegate.plugin.batches import continues_batch

    return continues_batch(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _is_procedure(item, item.config.rootpath) and FIRST_FAILURE not in item.config.stash:
        item.config.stash[FIRST_FAILURE] = item.nodeid.split("::")[-1]


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def upgrade_access(profile, nodegate_run: NodegateRun):
    from nodegate.upgrade.preload import import_harness_modules

    import_harness_modules()    # before the heartbeat, the lock keeper and a batch's threads start
    access = Access(profile)
    failure = None
    try:
        access.connect_api()
    except Exception as exc:  # noqa: BLE001 - reported as the reason, once, without a traceback
        failure = str(exc)
    if failure is not None:   # outside the except: no "During handling of the above exception" twice
        pytest.fail(failure, pytrace=False)
    yield access
    access.close(keep_ssh_masters=False)


@pytest.fixture(scope="session")
def upgrade(request: pytest.FixtureRequest, node, nodegate_run: NodegateRun, upgrade_access: Access) -> "Upgrade":
    """The upgrade of one node (one instance per --node entry), resumed from its journal."""
    from nodegate.core.errors import NodegateError
    from nodegate.plugin.allure import run_id

    config = request.config
    up = _build_upgrade(config, nodegate_run, node, upgrade_access, run_id(config), with_lock=True)
    refused = None
    try:
        decided = up.begin()
        log.info("%s", decided)
        up.keep_text("journal", f"{decided}\njournal: {up.journal.path}")
    except NodegateError as exc:   # a journal the node or the cluster contradicts: nothing was changed
        refused = f"{up.name}: {exc}\n\nnothing was changed on {up.name}"
    except KeyboardInterrupt:
        # Ctrl-C/SIGTERM while the run was starting: it changed nothing, but say where the node stands
        log.warning("%s: interrupted while the run was starting; it changed nothing. Where it stands: %s", up.name,
                    up.standing())
        raise
    if refused is not None:   # outside the except: no "During handling of the above exception"
        pytest.fail(refused, pytrace=False)
    yield up
    if up.lock is not None and up.lock.info is not None:   # also when its keeper could not renew it
        how = up.lock.release()
        # after Ctrl-C/SIGTERM this is the only word the operator gets: say where the node stands
        log.warning("%s: the upgrade stopped before its end; upgrade lock %s. Where it stands: %s", up.name, how,
                    up.standing())
    elif request.session.exitstatus == pytest.ExitCode.INTERRUPTED and not up.journal.completed():
        # interrupted before the lock was taken (the gate, or between the gate and the lock): the
        # operator still needs the word on where the node stands
        log.warning("%s: the upgrade was interrupted before its end. Where it stands: %s", up.name, up.standing())


def _build_upgrade(config: pytest.Config, run: NodegateRun, node, access: Access, run_id: str, *,
                   with_lock: bool) -> "Upgrade":
    from nodegate.cluster.lock import ClusterLock
    from nodegate.core.journal import Journal
    from nodegate.core.knowledge import next_release
    from nodegate.plugin.allure import reports_root
    from nodegate.upgrade.engine import Upgrade, UpgradeOptions

    profile = run.profile
    target = run.target
    if target is None:   # plan mode without --target-release: the next LTS after the node's
        current = access.nodes.host(node.name).release.os_release().version_id or ""
        target = next_release(current)
        if target is None:
            raise pytest.UsageError(f"{node.name} runs {current or 'an unknown release'}: no next LTS is known\n"
                                    "  fix: give --target-release")
    index = [n.name for n in run.nodes].index(node.name) if node.name in [n.name for n in run.nodes] else 0
    previous = run.nodes[index - 1].name if index > 0 else None
    journal = Journal(root=reports_root(config) / "runs", cluster=profile.name, node=node.name,
                      target=target.version, run_id=run_id)
    lock = None
    if with_lock and access.kube is not None:
        lock = ClusterLock(kube=access.kube, node=node.name, run_id=run_id,
                           stale_after_s=profile.upgrade.lock_stale_after_s)
    options = UpgradeOptions(run_id=run_id, ticket=run.options.ticket or "",
                             take_over_stale_lock=run.options.take_over_stale_lock, previous_node=previous,
                             restart_journal=run.options.restart_journal,
                             storage_timeout_s=profile.upgrade.storage_timeout_s)
    return Upgrade(profile=profile, node=node, target=target, journal=journal, nodes=access.nodes, kube=access.kube,
                   ceph=access.ceph, lock=lock, options=options,
                   check_runner=lambda phase: run_checks(config, run, node.name, target.version, phase))


@pytest.fixture
def perform(upgrade: "Upgrade", evidence):
    """perform(step_name): run one upgrade step as one Allure step with its plan, evidence and outcome."""
    import allure

    from nodegate.core.errors import NodegateError

    def _perform(name: str) -> None:
        step = upgrade.step(name)
        allure.dynamic.title(f"{upgrade.name}: {step.title}")
        allure.dynamic.label("step", step.name)
        failure: str | None = None
        with evidence.step(f"{upgrade.name}: {step.title}"):
            try:
                evidence.text("plan", "\n".join(str(c) for c in step.plan(upgrade)) or "(no command)")
            except NodegateError as exc:
                evidence.text("plan", f"(could not read what this step would do: {exc})")
            try:
                outcome = upgrade.perform(name)
            except NodegateError as exc:
                result = getattr(exc, "result", None)
                if result is not None and hasattr(result, "stdout"):
                    evidence.command(result)
                failure = f"{exc}\n\nwhere {upgrade.name} stands: {upgrade.standing()}"
                if exc.category:
                    allure.dynamic.label(ERROR_CATEGORY_LABEL, exc.category)
            finally:
                _attach(evidence, upgrade)
            if failure is None:
                evidence.text("outcome", f"{outcome.status}: {outcome.detail}\nproof: {outcome.proof}")
                allure.dynamic.description(f"{outcome.status}: {outcome.detail}\n\nproof: {outcome.proof}")
            else:
                # inside the Allure step, so that the step shows as failed too, not only the test
                pytest.fail(failure, pytrace=False)

    return _perform


def _attach(evidence, upgrade: "Upgrade") -> None:
    for item in upgrade.take_evidence():
        attach_item(evidence, item)


def attach_item(evidence, item) -> None:
    """One piece of a step's evidence (a command, JSON or text) as an Allure attachment."""
    if item.kind == "command":
        evidence.command(item.payload)
    elif item.kind == "json":
        evidence.json(item.name, item.payload)
    else:
        evidence.text(item.name, str(item.payload))


# --------------------------------------------------------------------------- the checks catalogue

def checks_dir(config: pytest.Config) -> Path:
    """Where the checks catalogue is: $NODEGATE_CHECKS_DIR, else ./checks under the rootdir, else the
    one shipped beside the nodegate package."""
    env = os.environ.get("NODEGATE_CHECKS_DIR")
    if env:
        return Path(env)
    local = config.rootpath / "checks"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parent.parent / "checks"


def run_checks(config: pytest.Config, run: NodegateRun, node: str, target: str, phase: str) -> "CheckRun":
    """Run `pytest CHECKS -m PHASE` for one node in a subprocess, into this run's Allure results."""
    from nodegate.upgrade.engine import CheckRun, heartbeat

    where = checks_dir(config)
    assert run.profile is not None
    with tempfile.TemporaryDirectory(prefix="nodegate-checks-") as tmp:
        junit = Path(tmp) / "junit.xml"
        argv = [sys.executable, "-m", "pytest", str(where), "-m", phase, "--cluster", str(run.profile.path),
                "--node", node, "--target-release", target, "-p", "no:cacheprovider", "-q", "-rfE",
                "--color=no", f"--junitxml={junit}"]
        alluredir = getattr(config.option, "allure_report_dir", None)
        if alluredir:
            argv.append(f"--alluredir={alluredir}")
        if run.options.ticket:
            argv += ["--ticket", run.options.ticket]
        if run.options.trust_new_host_keys:
            argv.append("--trust-new-host-keys")
        if run.options.become_password_env:
            argv += ["--become-password-env", run.options.become_password_env]   # the name; the value is inherited
        shown = " ".join(argv[1:])
        log.info("running the %s checks for %s: %s", phase, node, shown)
        started = time.monotonic()
        try:
            with heartbeat(f"running the {phase} checks for {node}", limit=CHECKS_TIMEOUT_S):
                done = subprocess.run(argv, cwd=str(where.parent), capture_output=True, text=True,
                                      timeout=CHECKS_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return CheckRun(phase=phase, passed=False, rc=-1, command=shown,
                            failed=(f"the {phase} checks did not finish within {CHECKS_TIMEOUT_S}s",))
        failed, counts = _junit_failures(junit)
    output = (done.stdout + ("\n" + done.stderr if done.stderr.strip() else "")).strip()
    log.info("%s checks for %s: rc %d (%s) in %.1fs", phase, node, done.returncode, counts or "no summary",
             time.monotonic() - started)
    if done.returncode == 5:
        failed = (f"no {phase} checks were collected from {where}",)
    elif done.returncode != 0 and not failed:
        tail = output.splitlines()[-5:]
        failed = (f"the {phase} checks could not run (rc {done.returncode}): " + " / ".join(tail),)
    return CheckRun(phase=phase, passed=done.returncode == 0, rc=done.returncode, command=shown, failed=failed,
                    counts=counts, output=output)


def _junit_failures(path: Path) -> tuple[tuple[str, ...], str]:
    if not path.exists():
        return (), ""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return (), ""
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0) or 0) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        for kind in ("failure", "error"):
            bad = case.find(kind)
            if bad is not None:
                message = (bad.get("message") or bad.text or "").strip().splitlines()
                first = next((line for line in message if line.strip()), "")
                # the check's own fix (fail_check's "  fix: …" line), so the gate says it too
                everything = message + (bad.text or "").splitlines()
                fix = next((line.strip()[5:].strip() for line in everything if line.strip().startswith("fix: ")), "")
                failed.append(f"{case.get('name')}: {first[:600]}" + (f" (fix: {fix[:600]})" if fix else ""))
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    counts = f"{passed} passed, {total['failures']} failed, {total['errors']} errors, {total['skipped']} skipped"
    return tuple(failed), counts


# --------------------------------------------------------------------------- plan mode

def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not config.stash.get(PLAN_REQUESTED, False) or config.option.collectonly:
        return
    run = config.stash[RUN_KEY]
    try:
        text, plans = build_plan(config, run)
    except Exception as exc:  # noqa: BLE001 - plan mode must say why it could not read the cluster
        text, plans = f"could not build the plan: {exc}", {}
    config.stash[PLAN_TEXT] = text
    _write_plan(config, text, plans)
    if session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK


def build_plan(config: pytest.Config, run: NodegateRun) -> tuple[str, dict]:
    from nodegate.plugin.allure import run_id

    access = Access(run.profile)
    try:
        access.connect_api()
    except Exception as exc:  # noqa: BLE001 - the plan can still be shown without the API
        log.warning("plan without the Kubernetes API: %s", str(exc).splitlines()[0])
        access.without_api()
    lines = [f"nodegate plan for {', '.join(n.name for n in run.nodes)} (nothing was changed; "
             "run the same command with --execute to do it)"]
    plans: dict[str, list] = {}
    try:
        for node in run.nodes:
            up = _build_upgrade(config, run, node, access, run_id(config), with_lock=False)
            decided = up.begin(record=False)
            lines.append("")
            lines.append(f"== {node.name} → Ubuntu {up.target.version} ({up.target.codename}): {decided}")
            plans[node.name] = up.plan()
            for i, step in enumerate(plans[node.name], 1):
                lines.append(f"{i:2d}. {step.title}" + (f"   [{step.note}]" if step.note else ""))
                for cmd in step.commands:
                    lines.append(f"      {cmd}")
        lines += _drain_preview_lines(access, run)
    finally:
        access.close(keep_ssh_masters=False)
    return "\n".join(lines), plans


def _drain_preview_lines(access: Access, run: NodegateRun) -> list[str]:
    """The batches (with --parallel) and what would block, wait or be lost draining each node and
    each batch, read before the window (nodegate.upgrade.batches)."""
    from nodegate.upgrade.batches import plan_with_preview

    if access.kube is None or access.ceph is None:
        return ["", "== drain preview: not read (the Kubernetes API could not be reached)"]
    parallel = getattr(run.options, "parallel", 1)
    try:
        batches, previews = plan_with_preview(access, run.profile, list(run.nodes), None if parallel == 0 else parallel)
    except Exception as exc:  # noqa: BLE001 - the plan is still shown; the preview says why it is missing
        return ["", f"== drain preview: could not be read: {exc}"]
    lines = ["", "== batches"]
    lines += [f"{i:2d}. {b.why}" for i, b in enumerate(batches, 1)]
    lines += ["", "== drain preview (read now; nothing was changed)"]
    for found in previews:
        lines += found.lines()
    return lines


def _write_plan(config: pytest.Config, text: str, plans: dict) -> None:
    from nodegate.core.secrets import redact

    alluredir = getattr(config.option, "allure_report_dir", None)
    if not alluredir:
        return
    out = Path(alluredir)
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / "plan.txt").write_text(redact(text) + "\n", encoding="utf-8")
    now = int(time.time() * 1000)
    for node, steps in (plans or {"(none)": []}).items():
        attachment = f"{uuid.uuid4()}-attachment.txt"
        (out / attachment).write_text(redact(text), encoding="utf-8")
        result = {
            "uuid": str(uuid.uuid4()), "historyId": f"nodegate-plan-{node}", "name": f"{node}: upgrade plan",
            "fullName": f"procedures.plan.{node}", "status": "skipped", "stage": "finished",
            "statusDetails": {"message": "plan mode: nothing was changed (run with --execute to perform it)"},
            "start": now, "stop": now,
            "labels": [{"name": "node", "value": node}, {"name": "host", "value": node},
                       {"name": "phase", "value": "procedure"}, {"name": "parentSuite", "value": "procedure"},
                       {"name": "suite", "value": "plan"}],
            "attachments": [{"name": "plan", "source": attachment, "type": "text/plain"}],
            "steps": [{"name": f"{i}. {s.title}" + (f" [{s.note}]" if s.note else ""), "status": "skipped",
                       "stage": "finished", "start": now, "stop": now,
                       "steps": [{"name": redact(str(c)), "status": "skipped", "stage": "finished", "start": now,
                                  "stop": now} for c in s.commands]}
                      for i, s in enumerate(steps, 1)],
        }
        (out / f"{result['uuid']}-result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    text = config.stash.get(PLAN_TEXT, None)
    if text is None:
        return
    terminalreporter.write_sep("=", "nodegate upgrade plan (nothing was changed)")
    for line in text.splitlines():
        terminalreporter.write_line(line)
