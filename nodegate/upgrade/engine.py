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

from nodegate.cluster.resume import REFUSE, RESTART_OPTION, STALE
from nodegate.core import postconditions as post
from nodegate.core.errors import NodegateError, PermanentError, UsageError
from nodegate.core.incarnation import INCARNATION_KEY
from nodegate.core.interrupts import checkpoint
from nodegate.core.journal import ANNOTATION, Journal, StepRecord, latest_value
from nodegate.core.knowledge import UbuntuRelease, ubuntu_release

if TYPE_CHECKING:
    from nodegate.cluster.ceph import Ceph
    from nodegate.cluster.kube.client import Kube
    from nodegate.cluster.lock import ClusterLock
    from nodegate.cluster.nodes.ssh import NodeHost, Nodes
    from nodegate.cluster.resume import Judgement
    from nodegate.core.incarnation import Agreement, Incarnation
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
        """Decide whether this run resumes an upgrade in progress or starts one; returns what it decided.
        A journal is resumed only when it describes the live node and the cluster's record agrees
        (nodegate.cluster.resume); a stale one is put aside (renamed) and the run starts from the
        gate. With ``record=False`` (plan mode) nothing is written or renamed."""
        records = self.journal.records()
        last_begin = max((i for i, r in enumerate(records) if r.step == "begin"), default=None)
        current = records[last_begin:] if last_begin is not None else []
        complete = any(r.step == "complete" and r.status == "done" for r in current)
        resumable = bool(current) and (not complete or self._live_release() == self.target.version)
        said = ""
        if self.options.restart_journal:      # nothing is judged: a new journal starts from the gate
            if records:
                said = self._set_aside(f"{RESTART_OPTION} was given", record=record, stale=False) + "; "
            resumable = False
        elif current or not records:
            # a finished attempt is judged too: a stale journal is put aside even when it is not resumed
            judged = self._judge(current or None)
            if judged is not None and judged.verdict == REFUSE:
                raise StepFailed(judged.text, fix=judged.fix)
            if judged is not None and judged.verdict == STALE:
                log.warning("%s", judged.text)
                said = self._set_aside(judged.text, record=record, stale=True) + "; "
                resumable = False
            elif judged is not None and resumable:
                self.agreement = judged.agreement
                self._attempt_from = last_begin or 0
                if complete:
                    return (f"{self.name} was upgraded to {self.target.version} by run {current[-1].run_id}: "
                            f"every step is re-verified ({judged.text})")
                where = self._last_step(current)
                return (f"resuming the upgrade of {self.name} to {self.target.version} begun in run "
                        f"{current[0].run_id} (last recorded: {where}); {judged.text}")
        self._attempt_from = len(self.journal.records()) if record else len(records)
        if not record:
            return said + f"would start the upgrade of {self.name} to {self.target.version} from the gate"
        live = self._live_incarnation()
        self.journal.record("begin", "started", detail=f"upgrade of {self.name} to {self.target.version}",
                            target=self.target.version, ticket=self.options.ticket,
                            **{INCARNATION_KEY: live.as_data()})
        self._attempt_from = len(self.journal.records()) - 1
        return said + f"starting the upgrade of {self.name} to {self.target.version} (run {self.options.run_id})"

    def _live_incarnation(self) -> "Incarnation":
        from nodegate.cluster.node_identity import incarnation
        from nodegate.cluster.resume import wait_for_node

        kube = self.need_kube()
        live = wait_for_node(self.nodes, self.name, timeout=self.profile.upgrade.reboot_timeout_s(self.node),
                             read=lambda host: incarnation(host, kube, self.kube_name))
        missing = live.missing()
        if missing:
            raise StepFailed(f"could not read what identifies {self.name}: {', '.join(missing)} (a journal is bound "
                             "to the node it describes)", fix="make the node and the API answer, then run again")
        return live

    def _judge(self, current: "Sequence[StepRecord] | None") -> "Judgement | None":
        """The journal's attempt judged against the live node and the Node annotation; with no
        journal (``current`` None), a refusal when the annotation shows another journal's upgrade."""
        from nodegate.cluster.resume import Judgement, foreign_open_upgrade, judge, read_annotation

        if self.kube is None:    # plan mode without the API: nothing to compare with
            return None
        annotation = read_annotation(self.kube, self.kube_name)
        if current is None:
            foreign = foreign_open_upgrade(annotation, node=self.name, target=self.target.version,
                                           journal_path=str(self.journal.path))
            if foreign is None:
                return None
            from nodegate.core.incarnation import FOREIGN, Agreement

            return Judgement(REFUSE, foreign, live=None, agreement=Agreement(FOREIGN, foreign),  # type: ignore[arg-type]
                             fix=f"run the same command from the machine that holds that journal (or copy it to "
                                 f"{self.journal.path}); or, to start again from the gate here, add {RESTART_OPTION}")
        return judge(records=current, live=self._live_incarnation(), annotation=annotation, node=self.name,
                     target=self.target.version, journal_path=str(self.journal.path))

    def _set_aside(self, reason: str, *, record: bool, stale: bool) -> str:
        what = "the journal is stale" if stale else "the journal is set aside"
        if not record:
            return f"{what} ({reason}): the run would keep it aside, renamed, and start from the gate"
        kept = self.journal.archive(reason)
        log.warning("%s: %s; kept as %s; starting from the gate", self.name, what, kept)
        return f"{what} ({reason}); kept as {kept} (renamed, not deleted); starting from the gate"

    def _live_release(self) -> str | None:
        try:
            return self.host.release.os_release().version_id
        except NodegateError:
            return None

    @staticmethod
    def _last_step(records: Sequence[StepRecord]) -> str:
        last = next((r for r in reversed(records) if r.step != "begin"), None)
        return f"step {last.step} {last.status}" if last else "nothing after the start"

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
