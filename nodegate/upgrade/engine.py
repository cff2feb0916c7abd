"""The upgrade of one node to the next Ubuntu LTS, as an ordered list of steps.

Each step is a small class over nodegate.cluster.nodes.ssh / kube / ceph:
- ``plan(up)``      the exact commands it would run and where (plan mode, no change);
- ``already(up)``   reads live state first: a reason when its effect is already there (then it is
                    skipped, after ``verify`` proves it), or None;
- ``run(up)``       makes the change (domain code: it only logs, and hands evidence to ``up``);
- ``verify(up)``    the step's post-condition, read back from the node/cluster; raises if it
                    does not hold.

``Upgrade.perform(step)`` is the only way a step runs: it consults the journal (what earlier
runs of this upgrade did), records ``started`` before changing anything and ``done`` / ``failed``
/ ``interrupted`` after, and mirrors the summary on the Node as an annotation. A step finished in
an earlier run is not repeated: it is re-verified (unless a later finished step undid it on
purpose, e.g. the hold after the unhold) and redone only if its effect has gone. So the same
command after a failure or an interruption continues where the node really is.

Allure and pytest live in nodegate.plugin.procedures; this module never imports them.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodegate.cluster.resume import RESTART_OPTION
from nodegate.core import postconditions as post
from nodegate.core.errors import NodegateError, PermanentError, UsageError
from nodegate.core.interrupts import checkpoint
from nodegate.core.journal import ANNOTATION, Journal, StepRecord, latest_value
from nodegate.core.knowledge import UbuntuRelease, ubuntu_release

if TYPE_CHECKING:
    from nodegate.cluster.ceph import Ceph
    from nodegate.cluster.kube.client import Kube
    from nodegate.cluster.lock import ClusterLock
    from nodegate.cluster.nodes.ssh import NodeHost, Nodes
    from nodegate.core.incarnation import Agreement
    from nodegate.profile.model import NodeSpec, Profile

log = logging.getLogger("nodegate.upgrade")

STORAGE_TIMEOUT_S = 900.0


class StepFailed(PermanentError):
    """A step's post-condition does not hold, or its change failed for a known reason."""


class GateBlocked(StepFailed):
    """The checks before (or after) the change did not pass."""


class NodeDidNotComeBack(StepFailed):
    """The node did not answer (SSH with a new boot id, then Ready) within its reboot timeout."""

    category = "Node did not come back"


@contextlib.contextmanager
def heartbeat(what: str, *, limit: float, every: float = 5.0) -> Iterator[None]:
    """Log "still <what> (elapsed/limit)" every ``every`` seconds while a long command runs (a
    dist-upgrade, a release upgrade, the checks catalogue): the terminal never sits silent."""
    stop = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not stop.wait(every):
            log.info("still %s (%.0fs/%gs)", what, time.monotonic() - started, limit)

    thread = threading.Thread(target=beat, name="nodegate-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1.0)


# -- results --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Planned:
    """One command a step would run, and where."""
    where: str              # "node4 (ssh root@127.0.1.4)", "Kubernetes API", "ceph (toolbox)", "local"
    command: str

    def __str__(self) -> str:
        return f"[{self.where}] {self.command}"


@dataclass(frozen=True)
class StepPlan:
    step: str
    title: str
    commands: tuple[Planned, ...]
    note: str = ""          # e.g. "done in run X (will be re-verified)"


@dataclass(frozen=True)
class StepOutcome:
    step: str
    status: str             # "done" (changed something) or "skipped" (already so, verified)
    detail: str
    proof: str = ""


@dataclass(frozen=True)
class CheckRun:
    """A run of the checks catalogue (preflight or postflight) for one node."""
    phase: str
    passed: bool
    rc: int
    command: str
    failed: tuple[str, ...] = ()      # "test id: first line of its message"
    counts: str = ""
    output: str = ""


@dataclass(frozen=True)
class EvidenceItem:
    kind: str               # "text", "json" or "command"
    name: str
    payload: Any


@dataclass(frozen=True)
class UpgradeOptions:
    run_id: str
    ticket: str = ""
    take_over_stale_lock: bool = False
    restart_journal: bool = False        # put the journal aside (renamed) and start from the gate
    previous_node: str | None = None     # in a rolling run: the node upgraded just before this one
    storage_timeout_s: float = STORAGE_TIMEOUT_S


CheckRunner = Callable[[str], CheckRun]


# -- the upgrade of one node ------------------------------------------------------------------------

class Upgrade:
    """Everything one node's upgrade needs, and the runner of its steps."""

    def __init__(self, *, profile: "Profile", node: "NodeSpec", target: UbuntuRelease, journal: Journal,
                 nodes: "Nodes", kube: "Kube | None", ceph: "Ceph | None", lock: "ClusterLock | None",
                 options: UpgradeOptions, check_runner: CheckRunner | None) -> None:
        self.profile = profile
        self.node = node
        self.name = node.name
        self.kube_name = node.kube_node     # the Kubernetes Node (may differ from the inventory name)
        self.target = target
        self.journal = journal
        self.nodes = nodes
        self.kube = kube
        self.ceph = ceph
        self.lock = lock
        self.options = options
        self.check_runner = check_runner
        from nodegate.upgrade import STEPS  # the chain imports this module: read it at run time

        self.steps: tuple[Step, ...] = STEPS
        self._evidence: list[EvidenceItem] = []
        self._attempt_from = 0
        self._drifted = False
        self.agreement: "Agreement | None" = None    # the Node annotation against the journal (resumes only)
        self.gate_note = ""                           # why the gate ran although the journal records later steps
        self.gate_proof = ""                          # what proved the node mid-upgrade when the gate was skipped

    # -- connections ----------------------------------------------------------------------------
    @property
    def host(self) -> "NodeHost":
        return self.nodes.host(self.name)

    def need_kube(self) -> "Kube":
        if self.kube is None:
            raise UsageError("this step needs the Kubernetes API, and no kubeconfig was usable",
                             fix="set [kubernetes] kubeconfig in the cluster profile")
        return self.kube

    def need_ceph(self) -> "Ceph":
        if self.ceph is None:
            raise UsageError("this step needs Ceph, and the profile gives no way to reach it",
                             fix="set [ceph] in the cluster profile")
        return self.ceph

    # -- evidence (handed to the plugin layer, which attaches it) -------------------------------
    def keep_text(self, name: str, text: str) -> None:
        self._evidence.append(EvidenceItem("text", name, text))

    def keep_json(self, name: str, data: Any) -> None:
        self._evidence.append(EvidenceItem("json", name, data))

    def keep_command(self, result: Any) -> None:
        self._evidence.append(EvidenceItem("command", getattr(result, "command", "command"), result))

    def take_evidence(self) -> list[EvidenceItem]:
        items, self._evidence = self._evidence, []
        return items

    # -- the journal, limited to the current attempt ---------------------------------------------
    def begin(self, *, record: bool = True) -> str:
        """Decide whether this run resumes an upgrade in progress or starts one; returns what it
        decided (nodegate.upgrade.attempt). With ``record=False`` (plan mode) nothing is written."""
        from nodegate.upgrade.attempt import begin_attempt

        return begin_attempt(self, record=record)

    def start_attempt_at(self, index: int) -> None:
        """The journal records from ``index`` on are this attempt's (records() returns them)."""
        self._attempt_from = index

    def live_release(self) -> str | None:
        """The node's VERSION_ID now, or None when it cannot be read."""
        try:
            return self.host.release.os_release().version_id
        except NodegateError:
            return None

    def records(self) -> list[StepRecord]:
        return self.journal.records()[self._attempt_from:]

    def finished(self, step: str) -> StepRecord | None:
        latest = None
        for rec in self.records():
            if rec.step == step:
                latest = rec
        return latest if latest is not None and latest.status in ("done", "skipped") else None

    def records_of(self, step: str) -> list[StepRecord]:
        return [r for r in self.records() if r.step == step]

    def value(self, key: str, default: Any = None) -> Any:
        return latest_value(self.records(), key, default)

    def note(self, step: str, detail: str = "", **data: Any) -> None:
        """Record what a running step has learnt (before acting on it), so a rerun can use it."""
        self.journal.record(step, "started", detail=detail, **data)

    def _annotate(self) -> None:
        if self.kube is None:
            return
        summary = self.journal.summary()
        try:
            self.kube.set_node_annotation(self.kube_name, key=ANNOTATION, value=json.dumps(summary, sort_keys=True))
        except NodegateError as exc:   # the journal file is the record; the annotation mirrors it
            log.warning("could not mirror the journal on node %s: %s", self.name, str(exc).splitlines()[0])

    def clear_annotation(self) -> None:
        if self.kube is None:
            return
        try:
            self.kube.set_node_annotation(self.kube_name, key=ANNOTATION, value=None)
        except NodegateError as exc:
            log.warning("could not remove the upgrade annotation from %s: %s", self.name, str(exc).splitlines()[0])

    # -- running a step --------------------------------------------------------------------------
    def step(self, name: str) -> "Step":
        for step in self.steps:
            if step.name == name:
                return step
        raise UsageError(f"no upgrade step named {name!r}", fix="steps: " + ", ".join(s.name for s in self.steps))

    def perform(self, name: str) -> StepOutcome:
        """Run one step (or skip it, proven, when its effect is there already); every end of it —
        done, skipped, failed, interrupted — is in the journal and mirrored on the Node."""
        step = self.step(name)
        try:
            checkpoint()   # a Ctrl-C a finalizer swallowed at the last step's end stops the run here
            return self._perform(step)
        except KeyboardInterrupt:
            # The signal may land after the step's end was written (while it is mirrored on the
            # Node): the step is finished then, and the journal must go on saying so.
            last = self.journal.last()
            ended = last is not None and last.run_id == self.options.run_id and (
                last.step == "complete" or (last.step == step.name and last.status in ("done", "skipped")))
            if not ended:
                self.journal.record(step.name, "interrupted", detail="interrupted by the operator (SIGINT/SIGTERM)")
            if ended and last.step == "complete":
                self.clear_annotation()
            else:
                self._annotate()
            raise
        except BaseException as exc:
            self.journal.record(step.name, "failed", detail=str(exc)[:2000])
            self._annotate()
            raise

    def _perform(self, step: "Step") -> StepOutcome:
        if self.lock is not None and self.lock.info is not None and not self.lock.held:
            # the keeper could not renew it (or another run took it over): nothing more is changed
            raise StepFailed(f"this run lost the upgrade lock before step {step.name}",
                             fix="find out who holds it now (`kubectl -n kube-system get lease "
                                 "nodegate-upgrade-lock -o yaml`), then run the same command again")
        # Once a finished step is found undone, the journal no longer describes the node (someone
        # changed it since): every later step decides from the live state alone.
        earlier = self.finished(step.name) if not (step.always_run or self._drifted) else None
        if earlier is not None:
            if step.superseded_by and self.finished(step.superseded_by):
                # its own postcondition was undone on purpose by a later step: what must hold now is
                # that later step's postcondition, seen on the node
                try:
                    later = self.step(step.superseded_by).verify(self)
                except StepFailed as exc:
                    log.warning("step %s was superseded by step %s, which no longer holds (%s): deciding this and "
                                "every later step from the live state", step.name, step.superseded_by,
                                str(exc).splitlines()[0])
                    self._drifted = True
                else:
                    outcome = StepOutcome(step.name, "skipped", f"done in run {earlier.run_id} (its effect was later "
                                          f"superseded on purpose by step {step.superseded_by}, which holds)", later)
                    self.journal.record(step.name, "skipped", detail=outcome.detail)
                    self._annotate()     # the Node mirrors every end of a step, this one too
                    return outcome
            if not self._drifted:
                try:
                    proof = step.verify(self)
                except StepFailed as exc:
                    log.warning("step %s was done in run %s but no longer holds (%s): doing it again, and deciding "
                                "every later step from the live state", step.name, earlier.run_id,
                                str(exc).splitlines()[0])
                    self._drifted = True
                else:
                    outcome = StepOutcome(step.name, "skipped", f"done in run {earlier.run_id}; still holds: {proof}",
                                          proof)
                    self.journal.record(step.name, "skipped", detail=outcome.detail)
                    self._annotate()
                    return outcome
        reason = step.already(self)
        if reason:
            proof = step.verify(self)
            self.journal.record(step.name, "skipped", detail=reason)
            self._annotate()
            log.info("%s: %s already — %s", self.name, step.title, reason)
            return StepOutcome(step.name, "skipped", reason, proof)
        self.journal.record(step.name, "started", detail=step.title)
        self._annotate()
        log.info("%s: %s", self.name, step.title)
        detail = step.run(self)
        proof = step.verify(self)
        self.journal.record(step.name, "done", detail=detail)
        if step is self.steps[-1]:
            self.journal.record("complete", "done", detail=f"{self.name} upgraded to {self.target.version}")
            self.clear_annotation()
        else:
            self._annotate()
        return StepOutcome(step.name, "done", detail, proof)

    def plan(self) -> list[StepPlan]:
        """Each step with the commands it would run, reading only the journal and cheap live facts."""
        plans = []
        for step in self.steps:
            try:
                commands = tuple(step.plan(self))
            except NodegateError as exc:
                commands = (Planned("?", f"(could not read what this step would do: {str(exc).splitlines()[0]})"),)
            earlier = self.finished(step.name)
            note = f"done in run {earlier.run_id}: will be re-verified" if earlier and not step.always_run else ""
            plans.append(StepPlan(step.name, step.title, commands, note))
        return plans

    # -- where the node stands (for a failure message) ------------------------------------------
    def standing(self) -> str:
        recs = self.records()
        # a step's latest record says where it is: a `started` note of a step that ended later is history
        latest = {r.step: r for r in recs if r.step != "begin"}
        failed = max((r for r in latest.values() if r.status in ("failed", "interrupted", "started")),
                     key=lambda r: r.at, default=None)
        parts = []
        if failed is not None:
            parts.append(f"{self.name} stopped in step '{failed.step}' ({failed.status})")
        elif recs and recs[-1].step != "begin":
            parts.append(f"{self.name} stopped after step '{recs[-1].step}' ({recs[-1].status})")
        done = [r.step for r in recs if r.status in ("done", "skipped") and r.step != "begin"]
        if done:
            parts.append("steps finished: " + ", ".join(dict.fromkeys(done)))
        holds = []
        if self.value("cordoned_by") and not self.finished("uncordon"):
            holds.append(f"the node is still cordoned (by this upgrade, run {self.value('cordoned_by')})")
        elif self.records_of("drain") and not self.finished("uncordon"):
            holds.append("the node is cordoned (it was before this upgrade)")
        if self.value("noout_by_us") and not self.finished("unset_noout"):
            holds.append(f"ceph noout is set for the OSDs of {self.name} ({self.value('noout_kind')}: "
                         f"{self.value('noout_host')} {self.value('noout_osds')})")
        held = self.value("held_before")
        if held and not self.finished("hold"):
            holds.append("these packages are NOT held: " + ", ".join(sorted(held)))
        if holds:
            parts.append("; ".join(holds))
        parts.append("the upgrade lock is released; fix the cause and run the same command again: it resumes "
                     f"from the journal {self.journal.path}, proving each finished step on the node (to start "
                     f"again from the gate instead, add {RESTART_OPTION}: the journal is kept, renamed)")
        return ". ".join(parts)

    # -- shared readers ------------------------------------------------------------------------
    def source_release(self) -> UbuntuRelease:
        """The release the node starts from (recorded at the first step that saw it)."""
        recorded = self.value("source_release")
        release = ubuntu_release(recorded) if recorded else None
        if release is None:
            raise StepFailed(f"the journal of {self.name} has no source release recorded",
                             fix="run the procedure from the start (the gate records it)")
        return release

    def where(self) -> str:
        return f"{self.name} (ssh {self.host.user}@{self.host.target})"


# -- steps ----------------------------------------------------------------------------------------

class Step:
    name = ""
    title = ""
    always_run = False            # read-only steps and the lock: run every time
    superseded_by: str | None = None  # a later step after which this one's post-condition no longer holds, on purpose

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return ()

    def already(self, up: Upgrade) -> str | None:
        return None

    def run(self, up: Upgrade) -> str:
        raise NotImplementedError

    def verify(self, up: Upgrade) -> str:
        return ""


def holds(verdict: "post.Verdict") -> str:
    """A postcondition's proof (nodegate.core.postconditions), or StepFailed naming why it does not hold."""
    if not verdict.holds:
        raise StepFailed(verdict.text, fix=verdict.fix)
    return verdict.text


def on_node(up: Upgrade, *args: str, root: bool = True) -> Planned:
    """A command a step would run on the upgrade's node over SSH (for its plan); `root`: it needs
    root, so a non-root login runs it through sudo."""
    user = up.node.user or up.profile.ssh.user
    sudo = root and user != up.node.become_user
    return Planned(f"{up.name} (ssh {user}@{up.node.address}" + (f", as {up.node.become_user} via sudo)" if sudo else ")"),
                   ("sudo " if sudo else "") + shlex.join(args))
