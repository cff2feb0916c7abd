"""Rollouts: batches of nodes upgraded side by side (--parallel) and the time budget (--window-end,
--window-minutes). Registered by nodegate.plugin.procedures only when one of them is given.

- ``--parallel auto|N``: the nodes are planned into batches (nodegate.upgrade.batches: Ceph's
  ok-to-stop, CRUSH failure domains, PDBs) when the procedures are collected; each step of a batch
  is one test item, ``test_upgrade_batch[b2-node5+node7-03-drain]``, which runs the step on every
  node of the batch side by side (nodegate.upgrade.rollout) and shows one Allure step per node.
  A failure in one node lets the others finish the batch; no later batch starts.
- The time budget: before a batch (or, one at a time, a node) starts, its expected duration (p95 of
  each step still to do, from this cluster's journals: nodegate.core.budget) must end before the
  window does, and its protected stretch fit Rook's osdMaintenanceTimeout; the first that does not
  fit, and every one after it, is left for the next window (their items are skipped, saying so).
- The terminal summary, the Allure report (one attachment per step and node) and
  ``rollout.json`` beside the Allure results show the batches, what is left, and the expected
  against the actual duration of every step.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nodegate.plugin.options import RUN_KEY, NodegateRun, _is_procedure

if TYPE_CHECKING:
    from nodegate.core.budget import StepExpectation, Unit
    from nodegate.upgrade.engine import Upgrade

log = logging.getLogger("nodegate.rollout")

PLUGIN_NAME = "nodegate-batches"
STATE = pytest.StashKey["Rollout"]()
BATCH_TEST = "test_upgrade_batch"


@dataclass(frozen=True)
class Planned:
    """One unit of the rollout: a batch (or, one at a time, a node), as collected."""
    index: int                  # 1-based
    total: int
    nodes: tuple[str, ...]
    why: str

    @property
    def label(self) -> str:
        return f"batch {self.index} of {self.total}" if self.total else f"node {self.nodes[0]}"

    @property
    def id(self) -> str:
        return f"b{self.index}-" + "+".join(self.nodes)

    def __str__(self) -> str:   # how pytest shows it in a test id
        return self.id


@dataclass
class Rollout:
    """The rollout's plan and what happened to it, shared by the hooks of this run."""
    run: NodegateRun
    window_end: float | None = None          # epoch seconds
    window_text: str = ""
    units: list[Planned] = field(default_factory=list)
    batches: bool = False                    # --parallel other than 1: batch items run
    expected: dict[str, "StepExpectation"] = field(default_factory=dict)
    remaining: dict[str, list[str]] = field(default_factory=dict)
    maintenance_timeout_s: float | None = None
    rook_text: str = ""
    started: set[int] = field(default_factory=set)
    failed_unit: int | None = None
    stopped: dict[int, set[str]] = field(default_factory=dict)   # unit -> nodes that stopped in it
    left: list[str] = field(default_factory=list)
    stop_reason: str = ""
    actual: list[dict[str, Any]] = field(default_factory=list)
    prepared: bool = False
    problem: str = ""

    def unit_of_node(self, name: str) -> Planned | None:
        return next((u for u in self.units if name in u.nodes), None)

    def budget_unit(self, unit: Planned) -> "Unit":
        from nodegate.core.budget import NodeEstimate, Unit

        order = list(self.expected)
        return Unit(unit.label, tuple(NodeEstimate.of(n, self.remaining.get(n, order), self.expected, order)
                                      for n in unit.nodes))


# --------------------------------------------------------------------------- set up

def pytest_configure(config: pytest.Config) -> None:
    run = config.stash[RUN_KEY]
    rollout = Rollout(run=run)
    now = dt.datetime.now(dt.timezone.utc)
    if run.options.window_end is not None:
        end = run.options.window_end.resolve(now)
        rollout.window_end, rollout.window_text = end.timestamp(), f"{end.isoformat(timespec='minutes')} " \
                                                                  f"(--window-end {run.options.window_end.text})"
    elif run.options.window_minutes is not None:
        rollout.window_end = now.timestamp() + run.options.window_minutes * 60
        end = dt.datetime.fromtimestamp(rollout.window_end, dt.timezone.utc)
        rollout.window_text = f"{end.isoformat(timespec='seconds')} (--window-minutes {run.options.window_minutes:g})"
    rollout.batches = run.options.parallel != 1
    config.stash[STATE] = rollout


def _prepare(config: pytest.Config) -> Rollout:
    """Plan the batches and read the history and Rook's timeout, once (read-only)."""
    rollout = config.stash[STATE]
    if rollout.prepared:
        return rollout
    rollout.prepared = True
    run = rollout.run
    from nodegate.cluster.session import Access
    from nodegate.core.budget import expectations, remaining_steps, step_samples
    from nodegate.upgrade import STEP_NAMES
    from nodegate.upgrade.rollout import cluster_journals

    journal_dir = _journal_dir(config, run)
    rollout.expected = expectations(STEP_NAMES, step_samples(cluster_journals(journal_dir)))
    target = run.options.target_release
    for node in run.nodes:
        records = cluster_journals_of(journal_dir, node.name, target) if target else []
        rollout.remaining[node.name] = remaining_steps(STEP_NAMES, records)
    access = Access(run.profile)
    try:
        try:
            access.connect_api()
        except Exception as exc:  # noqa: BLE001 - said once, as the reason the rollout cannot be planned
            rollout.problem = f"the Kubernetes API did not answer: {str(exc).splitlines()[0]}"
            access.without_api()
        if access.kube is not None and run.profile.ceph is not None:
            _read_rook(rollout, access, run)
        if rollout.batches and not rollout.problem:
            _plan_batches(rollout, access, run)
    finally:
        access.close(keep_ssh_masters=False)
    if not rollout.batches:
        rollout.units = [Planned(i, 0, (n.name,), "one node at a time") for i, n in enumerate(run.nodes, 1)]
    return rollout


def _read_rook(rollout: Rollout, access: Any, run: NodegateRun) -> None:
    from nodegate.cluster.storage import rook_settings
    from nodegate.core.errors import NodegateError

    try:
        rook = rook_settings(access.kube, run.profile.ceph.namespace)
    except NodegateError as exc:
        rollout.rook_text = f"Rook's settings could not be read ({str(exc).splitlines()[0]}): no osdMaintenanceTimeout limit"
        return
    rollout.rook_text = rook.describe()
    if rook.found and rook.manage_pod_budgets:
        rollout.maintenance_timeout_s = rook.maintenance_timeout_s


def _plan_batches(rollout: Rollout, access: Any, run: NodegateRun) -> None:
    from nodegate.core.errors import NodegateError
    from nodegate.upgrade.batches import plan_batches

    limit = run.options.parallel or None
    try:
        planned = plan_batches(access, run.profile, list(run.nodes), limit)
    except NodegateError as exc:
        rollout.problem = f"the batches could not be planned: {exc}"
        return
    rollout.units = [Planned(i, len(planned), tuple(b.nodes), b.why) for i, b in enumerate(planned, 1)]


def _journal_dir(config: pytest.Config, run: NodegateRun) -> Path:
    from nodegate.core.journal import Journal
    from nodegate.plugin.allure import reports_root

    return Journal(root=reports_root(config) / "runs", cluster=run.profile.name, node="_", target="_",
                   run_id="").path.parent


def cluster_journals_of(journal_dir: Path, node: str, target: str) -> list[Any]:
    from nodegate.core.journal import Journal

    journal = Journal(root=journal_dir.parent.parent, cluster=journal_dir.name, node=node, target=target, run_id="")
    return journal.records()


# --------------------------------------------------------------------------- collection

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "batch" not in metafunc.fixturenames or metafunc.function.__name__ != BATCH_TEST:
        return
    rollout = metafunc.config.stash[STATE]
    if not rollout.batches or not rollout.run.nodes:
        return
    rollout = _prepare(metafunc.config)
    if rollout.problem:
        raise pytest.UsageError(f"--parallel: {rollout.problem}; nothing was changed\n"
                                "  fix: make the cluster answer (the API and Ceph), or run with --parallel 1")
    metafunc.parametrize("batch", rollout.units, ids=[u.id for u in rollout.units], indirect=True, scope="session")


def uses_batch_items(config: pytest.Config) -> bool:
    state = config.stash.get(STATE, None)
    return bool(state is not None and state.batches)


def unit_index(item: pytest.Item) -> int | None:
    """The batch's index of a batch item (None for a node's own item)."""
    callspec = getattr(item, "callspec", None)
    unit = callspec.params.get("batch") if callspec is not None else None
    return unit.index if isinstance(unit, Planned) else None


def continues_batch(item: pytest.Item) -> bool:
    """After a failure: True for the items of the failed node's own batch, whose other nodes finish it."""
    state = item.config.stash.get(STATE, None)
    index = unit_index(item)
    if state is None or index is None or state.failed_unit != index:
        return False
    unit = next(u for u in state.units if u.index == index)
    return bool(set(unit.nodes) - state.stopped.get(index, set()))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(_is_procedure(i, config.rootpath) for i in items):
        _prepare(config)


# --------------------------------------------------------------------------- the budget, before each unit

def _item_unit(item: pytest.Item, rollout: Rollout) -> tuple[Planned | None, str | None]:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None, None
    step = callspec.params.get("step")
    unit = callspec.params.get("batch")
    if isinstance(unit, Planned):
        return unit, step
    node = callspec.params.get("node")
    name = getattr(node, "name", node)
    return (rollout.unit_of_node(name) if name else None), step


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    rollout = item.config.stash.get(STATE, None)
    if rollout is None or not _is_procedure(item, item.config.rootpath):
        return
    unit, _ = _item_unit(item, rollout)
    if unit is None:
        return
    if rollout.left and set(unit.nodes) & set(rollout.left):
        pytest.skip(f"not started: {rollout.stop_reason}. Left for the next window: {', '.join(rollout.left)}")
    if unit.index in rollout.started:
        return
    from nodegate.plugin.procedures import FIRST_FAILURE

    if rollout.failed_unit is not None or item.config.stash.get(FIRST_FAILURE, None):
        return    # nodegate.plugin.procedures skips it, naming the failure
    from nodegate.core.budget import decide

    decision = decide(rollout.budget_unit(unit), now=time.time(), window_end=rollout.window_end,
                      maintenance_timeout_s=rollout.maintenance_timeout_s)
    if not decision.starts:
        rollout.left = [n for u in rollout.units if u.index >= unit.index for n in u.nodes]
        rollout.stop_reason = decision.reason
        log.warning("not starting %s: %s; left for the next window: %s", unit.label, decision.reason,
                    ", ".join(rollout.left))
        pytest.skip(f"not started: {decision.reason}. Left for the next window: {', '.join(rollout.left)}")
    rollout.started.add(unit.index)
    log.info("starting %s: %s%s", unit.label, decision.reason, f" [{unit.why}]" if rollout.batches else "")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """One at a time: the actual duration of a node's step against its expectation (batch items
    record theirs per node in perform_batch)."""
    rollout = item.config.stash.get(STATE, None)
    started = time.monotonic()
    yield
    if rollout is None or rollout.batches or not _is_procedure(item, item.config.rootpath):
        return
    unit, step = _item_unit(item, rollout)
    if unit is not None and step:
        _note_actual(rollout, unit.nodes[0], step, time.monotonic() - started, unit)


def _note_actual(rollout: Rollout, node: str, step: str, seconds: float, unit: Planned) -> None:
    text = f"{node} {step}: " + _note_actual_quiet(rollout, node, step, seconds, unit)
    try:
        import allure

        allure.attach(text, name="expected vs actual", attachment_type=allure.attachment_type.TEXT)
    except Exception:  # noqa: BLE001 - outside a test (no Allure context): the terminal still shows it
        pass


# --------------------------------------------------------------------------- batch fixtures

@dataclass
class BatchGroup:
    unit: Planned
    ups: list["Upgrade"]
    lock: Any


@pytest.fixture(scope="session")
def batch(request: pytest.FixtureRequest) -> Planned:
    """One planned batch (the tests asking for it run once per batch, id b<index>-<node>+<node>)."""
    return request.param


@pytest.fixture(scope="session")
def batch_upgrades(request: pytest.FixtureRequest, batch: Planned, nodegate_run: NodegateRun, upgrade_access):
    """The upgrades of one batch's nodes, sharing one cluster-wide lock, each resumed from its journal."""
    from dataclasses import replace

    from nodegate.cluster.lock import ClusterLock
    from nodegate.core.errors import NodegateError
    from nodegate.plugin.allure import run_id
    from nodegate.plugin.procedures import _build_upgrade
    from nodegate.upgrade.rollout import record_batch

    config = request.config
    rollout = config.stash[STATE]
    rid = run_id(config)
    lock = None
    if upgrade_access.kube is not None:
        lock = ClusterLock(kube=upgrade_access.kube, node=",".join(batch.nodes), run_id=rid,
                           stale_after_s=nodegate_run.profile.upgrade.lock_stale_after_s)
    previous = next((u.nodes[-1] for u in rollout.units if u.index == batch.index - 1), None)
    by_name = {n.name: n for n in nodegate_run.nodes}
    ups = []
    refused = None
    for name in batch.nodes:
        up = _build_upgrade(config, nodegate_run, by_name[name], upgrade_access, rid, with_lock=False)
        up.lock = lock
        up.options = replace(up.options, previous_node=previous)
        try:
            decided = up.begin()
        except NodegateError as exc:
            refused = f"{up.name}: {exc}\n\nnothing was changed on {up.name}; no node of {batch.label} was started"
            break
        log.info("%s: %s", batch.label, decided)
        up.keep_text("journal", f"{decided}\njournal: {up.journal.path}")
        ups.append(up)
    if refused is not None:
        pytest.fail(refused, pytrace=False)
    for up in ups:
        record_batch(up, index=batch.index, total=batch.total, nodes=batch.nodes, why=batch.why)
    group = BatchGroup(batch, ups, lock)
    yield group
    if lock is not None and lock.info is not None:
        how = lock.release()
        for up in ups:
            if not up.journal.completed():
                log.warning("%s: the upgrade stopped before its end (%s); upgrade lock %s. Where it stands: %s",
                            up.name, batch.label, how, up.standing())


@pytest.fixture
def perform_batch(batch_upgrades: BatchGroup, evidence, request: pytest.FixtureRequest):
    """perform_batch(step_name): run one step on every node of the batch still going, side by side."""
    import allure

    from nodegate.core.categories import ERROR_CATEGORY_LABEL
    from nodegate.core.errors import NodegateError
    from nodegate.upgrade.rollout import run_step

    rollout = request.config.stash[STATE]
    group = batch_upgrades
    unit = group.unit

    def _perform(name: str) -> None:
        stopped = rollout.stopped.setdefault(unit.index, set())
        going = [up for up in group.ups if up.name not in stopped]
        if not going:
            pytest.skip(f"every node of {unit.label} has stopped")
        step = going[0].step(name)
        allure.dynamic.title(f"{unit.label} ({', '.join(unit.nodes)}): {step.title}")
        allure.dynamic.label("step", step.name)
        allure.dynamic.label("batch", unit.id)
        results = run_step(going, name)
        failures = []
        for up, result in zip(going, results):
            expected = _note_actual_quiet(rollout, up.name, name, result.seconds, unit)
            try:
                with evidence.step(f"{up.name}: {step.title}"):
                    evidence.text("plan", result.plan)
                    for item in result.evidence:
                        _attach_one(evidence, item)
                    evidence.text("expected vs actual", expected)
                    if result.error is None:
                        outcome = result.outcome
                        evidence.text("outcome", f"{outcome.status}: {outcome.detail}\nproof: {outcome.proof}")
                        continue
                    exc = result.error
                    command = getattr(exc, "result", None)
                    if command is not None and hasattr(command, "stdout"):
                        evidence.command(command)
                    category = getattr(exc, "category", None) if isinstance(exc, NodegateError) else None
                    if category:
                        allure.dynamic.label(ERROR_CATEGORY_LABEL, category)
                    text = str(exc) if isinstance(exc, NodegateError) else f"{type(exc).__name__}: {exc}"
                    failures.append(f"{up.name}: {text}\n\nwhere {up.name} stands: {up.standing()}")
                    raise pytest.fail.Exception(failures[-1], pytrace=False)
            except pytest.fail.Exception:
                stopped.add(up.name)
        if failures:
            rollout.failed_unit = unit.index
            others = [up.name for up in going if up.name not in stopped]
            tail = (f"\n\n{', '.join(others)} go(es) on to the end of {unit.label}; no further batch starts"
                    if others else f"\n\nevery node of {unit.label} has stopped; no further batch starts")
            pytest.fail("\n\n".join(failures) + tail, pytrace=False)
        summary = "; ".join(f"{r.node}: {r.outcome.status} ({r.seconds:.1f}s)" for r in results if r.outcome)
        allure.dynamic.description(summary)

    return _perform


def _note_actual_quiet(rollout: Rollout, node: str, step: str, seconds: float, unit: Planned) -> str:
    exp = rollout.expected.get(step)
    rollout.actual.append({"unit": unit.index, "node": node, "step": step, "actual_s": round(seconds, 2),
                           "p50_s": round(exp.p50, 2) if exp else None, "p95_s": round(exp.p95, 2) if exp else None,
                           "source": exp.source if exp else "unknown step"})
    if exp is None:
        return f"actual {seconds:.1f}s (no expectation for this step)"
    return f"actual {seconds:.1f}s; expected p50 {exp.p50:.1f}s, p95 {exp.p95:.1f}s ({exp.source})"


def _attach_one(evidence: Any, item: Any) -> None:
    from nodegate.plugin.procedures import attach_item

    attach_item(evidence, item)


# --------------------------------------------------------------------------- what the run shows at its end

def summary_lines(rollout: Rollout) -> list[str]:
    from nodegate.core.budget import schedule

    lines = []
    if rollout.window_text:
        lines.append(f"window ends {rollout.window_text}")
    if rollout.rook_text:
        lines.append(f"Rook: {rollout.rook_text}")
    units = [rollout.budget_unit(u) for u in rollout.units]
    plan = schedule(units, now=time.time(), window_end=rollout.window_end,
                    maintenance_timeout_s=rollout.maintenance_timeout_s)
    for planned, unit in zip(rollout.units, units):
        state = _unit_state(rollout, planned)
        lines.append(f"{planned.label}: {', '.join(planned.nodes)}" + (f"  [{planned.why}]" if rollout.batches else "")
                     + f"  expected p50 {unit.p50:.0f}s, p95 {unit.p95:.0f}s  -> {state}")
    if not rollout.started and plan.fits:
        end50 = dt.datetime.fromtimestamp(plan.fits[-1][1], dt.timezone.utc).isoformat(timespec="seconds")
        lines.append(f"expected end (p50) of what fits: {end50}")
    if not rollout.started and plan.left:
        lines.append(f"would not fit the window: {', '.join(n.node for u in plan.left for n in u.nodes)} "
                     f"({plan.stop_reason})")
    if rollout.left:
        lines.append(f"left for the next window: {', '.join(rollout.left)} ({rollout.stop_reason})")
    if rollout.actual:
        lines.append("expected against actual, per step:")
        for row in rollout.actual:
            lines.append(f"  {row['node']:<10} {row['step']:<16} actual {row['actual_s']:>7.1f}s  expected p50 "
                         f"{row['p50_s']:>7.1f}s  p95 {row['p95_s']:>7.1f}s  ({row['source']})")
    return lines


def _unit_state(rollout: Rollout, unit: Planned) -> str:
    if set(unit.nodes) & set(rollout.left):
        return "left for the next window"
    if unit.index not in rollout.started:
        return "not started"
    stopped = rollout.stopped.get(unit.index, set())
    if stopped:
        return f"stopped: {', '.join(sorted(stopped))}"
    return "ran"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rollout = config.stash.get(STATE, None)
    if rollout is None or not rollout.prepared or not rollout.units:
        return
    terminalreporter.write_sep("=", "nodegate rollout" + (" (batches)" if rollout.batches else ""))
    for line in summary_lines(rollout):
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    rollout = session.config.stash.get(STATE, None)
    alluredir = getattr(session.config.option, "allure_report_dir", None)
    if rollout is None or not rollout.prepared or not alluredir:
        return
    out = Path(alluredir).parent / "rollout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"window_end": rollout.window_end, "batches": [{"index": u.index, "nodes": list(u.nodes), "why": u.why,
                                                            "state": _unit_state(rollout, u)} for u in rollout.units],
            "left": rollout.left, "stop_reason": rollout.stop_reason, "steps": rollout.actual}
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
