"""The upgrade of one node to the next Ubuntu LTS, as an ordered list of steps.

Each step is a small class over nodegate.nodes / kube / ceph:
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

Allure and pytest live in nodegate.procedure_plugin; this module never imports them.
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

from nodegate.errors import NodegateError, PermanentError, UsageError
from nodegate.interrupts import checkpoint
from nodegate.journal import ANNOTATION, Journal, StepRecord
from nodegate.knowledge import UbuntuRelease, next_release, ubuntu_release
from nodegate.waits import Done, NotYet, WaitTimeout, wait_for

if TYPE_CHECKING:
    from nodegate.ceph import Ceph
    from nodegate.kube import Kube, PodSummary
    from nodegate.lock import ClusterLock
    from nodegate.nodes import NodeHost, Nodes
    from nodegate.profile import NodeSpec, Profile

log = logging.getLogger("nodegate.upgrade")

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C", "NEEDRESTART_MODE": "a"}
# Keep every existing config file (the operator's, or Kubespray's) and take the package's
# default only where nobody changed the file: the unattended equivalent of answering "N".
DPKG_KEEP_CONFIG = ("-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold")
DIST_UPGRADE = ("apt-get", "-y", "-q", *DPKG_KEEP_CONFIG, "dist-upgrade")
APT_UPDATE = ("apt-get", "update")
KEYRINGS_DIR = "/etc/apt/keyrings"
LEGACY_KEYRING = "/etc/apt/trusted.gpg"
MODULES_LOAD_FILE = "/etc/modules-load.d/rbd.conf"
STORAGE_TIMEOUT_S = 900.0
RELEASE_UPGRADE_TIMEOUT_S = 3 * 3600.0
DIST_UPGRADE_TIMEOUT_S = 3600.0
PDB_RETRY_S = 5.0          # kubectl drain retries a 429 every 5 s


class StepFailed(PermanentError):
    """A step's post-condition does not hold, or its change failed for a known reason."""


class GateBlocked(StepFailed):
    """The checks before (or after) the change did not pass."""


class NodeDidNotComeBack(StepFailed):
    """The node did not answer (SSH with a new boot id, then Ready) within its reboot timeout."""


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
        self.steps: tuple[Step, ...] = STEPS
        self._evidence: list[EvidenceItem] = []
        self._attempt_from = 0
        self._drifted = False

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
        With ``record=False`` (plan mode) nothing is written."""
        records = self.journal.records()
        last_begin = max((i for i, r in enumerate(records) if r.step == "begin"), default=None)
        current = records[last_begin:] if last_begin is not None else []
        complete = any(r.step == "complete" and r.status == "done" for r in current)
        if current and not complete:
            self._attempt_from = last_begin or 0
            where = self._last_step(current)
            return (f"resuming the upgrade of {self.name} to {self.target.version} begun in run {current[0].run_id}"
                    f" (last recorded: {where})")
        if current and complete:
            release = self._live_release()
            if release == self.target.version:
                self._attempt_from = last_begin or 0
                return (f"{self.name} was upgraded to {self.target.version} by run {current[-1].run_id}: "
                        "every step is re-verified")
        self._attempt_from = len(records)
        if not record:
            return f"would start the upgrade of {self.name} to {self.target.version}"
        self.journal.record("begin", "started", detail=f"upgrade of {self.name} to {self.target.version}",
                            target=self.target.version, ticket=self.options.ticket)
        return f"starting the upgrade of {self.name} to {self.target.version} (run {self.options.run_id})"

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
        found = default
        for rec in self.records():
            if key in rec.data:
                found = rec.data[key]
        return found

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
                outcome = StepOutcome(step.name, "skipped", f"done in run {earlier.run_id} "
                                      f"(its effect was later superseded on purpose by step {step.superseded_by})")
                self.journal.record(step.name, "skipped", detail=outcome.detail)
                self._annotate()     # the Node mirrors every end of a step, this one too
                return outcome
            try:
                proof = step.verify(self)
            except StepFailed as exc:
                log.warning("step %s was done in run %s but no longer holds (%s): doing it again, and deciding "
                            "every later step from the live state", step.name, earlier.run_id, str(exc).splitlines()[0])
                self._drifted = True
            else:
                outcome = StepOutcome(step.name, "skipped", f"done in run {earlier.run_id}; still holds", proof)
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
        if step.name == STEP_NAMES[-1]:
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
                     f"from the journal {self.journal.path}")
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


def _ssh(up: Upgrade, *args: str) -> Planned:
    return Planned(f"{up.name} (ssh {up.node.user or up.profile.ssh.user}@{up.node.address})", shlex.join(args))


def _run_checks(up: Upgrade, phase: str) -> CheckRun:
    if up.check_runner is None:
        raise UsageError("no checks runner was given to the procedure")
    result = up.check_runner(phase)
    up.keep_text(f"{phase} checks: {result.command}"[:120], result.output or "(no output)")
    return result


class Gate(Step):
    name = "gate"
    title = "gate: the preflight checks for the node pass"
    always_run = True     # until the node is changed, the preflight is asked again on every run

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        cmds = []
        if up.options.previous_node:
            cmds.append(Planned("Kubernetes API + ceph", f"wait for the cluster gate after {up.options.previous_node}: "
                                "all nodes Ready, ceph HEALTH_OK, csi-rbdplugin Ready everywhere; then settle "
                                f"{up.profile.upgrade.settle_s:g}s"))
        cmds.append(Planned("local", f"pytest checks/ -m preflight --node {up.name} --target-release {up.target.version}"))
        return cmds

    def already(self, up: Upgrade) -> str | None:
        # A resumed upgrade is past its gate: the node is cordoned, maybe on the new release, so
        # the preflight (written for an untouched node) no longer applies; each finished step is
        # re-verified instead, and the postflight judges the end result.
        later = [r.step for r in up.records() if r.step not in ("begin", self.name, "lock")]
        if later:
            return f"the upgrade is past its gate (recorded: {', '.join(dict.fromkeys(later))}); resuming"
        return None

    def run(self, up: Upgrade) -> str:
        release = up.host.release.os_release()
        current = release.version_id or "?"
        if next_release(current) != up.target and current != up.target.version:
            raise GateBlocked(f"{up.name} runs {release.label}: {up.target.version} is not the next LTS release after it",
                              fix=f"use --target-release {next_release(current).version if next_release(current) else '?'}"
                                  " (one release at a time)")
        up.note(self.name, source_release=current)
        if up.options.previous_node:
            _cluster_gate(up)
        result = _run_checks(up, "preflight")
        if not result.passed:
            raise GateBlocked(
                f"the preflight checks for {up.name} did not pass ({result.counts or f'rc {result.rc}'}); nothing was "
                "changed. Blocking:\n" + "\n".join(f"  - {f}" for f in result.failed[:20]),
                fix="fix what the failing checks name (their messages say how), then run the same command again")
        return f"preflight passed ({result.counts})"

    def verify(self, up: Upgrade) -> str:
        return "the preflight checks passed before anything on the node was changed"


def _cluster_gate(up: Upgrade) -> None:
    """Between two nodes of a rolling run: all nodes Ready, storage healthy, CSI Ready everywhere."""
    kube = up.need_kube()

    def probe() -> Done | NotYet:
        not_ready = [n.name for n in kube.list_nodes() if not n.is_ready]
        if not_ready:
            return NotYet("nodes not Ready: " + ", ".join(not_ready))
        if up.ceph is not None:
            status = up.ceph.status()
            if not status.healthy_in_full:
                return NotYet("ceph: " + "; ".join(status.reasons()))
        csi = [p for plugin in rbd_node_plugins(up).plugins
               for p in kube.list_pods(namespace=plugin.namespace, selector=plugin.label_selector) if not p.ready]
        if csi:
            return NotYet("RBD node plugin not Ready: " + ", ".join(p.ref for p in csi))
        return Done(True)

    wait_for(probe, what=f"the cluster gate after {up.options.previous_node}", timeout=up.options.storage_timeout_s,
             interval=1.0, fix="look at the node and storage state; the next node is not touched until this holds")
    settle = up.profile.upgrade.settle_s
    if settle > 0:
        log.info("cluster gate passed; settling %gs before %s", settle, up.name)
        time.sleep(settle)


class Lock(Step):
    name = "lock"
    title = "take the cluster-wide upgrade lock"
    always_run = True

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        from nodegate.kube import LOCK_NAME, LOCK_NAMESPACE

        return (Planned("Kubernetes API", f"take Lease {LOCK_NAMESPACE}/{LOCK_NAME} (holder <user@machine>, "
                                          f"node {up.name}, run {up.options.run_id}) and renew it while running"),)

    def already(self, up: Upgrade) -> str | None:
        if up.lock is not None and up.lock.held:
            return "this run holds it already"
        return None

    def run(self, up: Upgrade) -> str:
        if up.lock is None:
            raise UsageError("no lock was given to the procedure")
        return "lock " + up.lock.acquire(take_over_stale=up.options.take_over_stale_lock)

    def verify(self, up: Upgrade) -> str:
        assert up.lock is not None
        info = up.lock.state()
        if info is None or info.holder != up.lock.holder or info.node != up.name:
            raise StepFailed("the upgrade lock is not held for this run: "
                             + (info.describe() if info is not None else "there is no lock"))
        return info.describe()


def _evictable(pod: "PodSummary") -> bool:
    # kubectl drain --ignore-daemonsets: DaemonSet pods stay; mirror (static) pods cannot be
    # evicted; finished pods are not running anything.
    return not (pod.daemonset or pod.mirror or pod.finished)


class Drain(Step):
    name = "drain"
    title = "cordon and drain the node (Eviction API)"
    superseded_by = "uncordon"

    def options(self, up: Upgrade) -> Any:
        from nodegate.kube import DrainOptions

        # The procedure's drain is kubectl's `--ignore-daemonsets --delete-emptydir-data --force`
        # with a finite timeout: the node is about to reboot, so emptyDir data and unmanaged pods
        # would be lost anyway.
        return DrainOptions(ignore_daemonsets=True, delete_emptydir_data=True, force=True,
                            timeout_s=up.profile.upgrade.drain_timeout_s)

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (Planned("Kubernetes API", f"cordon {up.kube_name} (annotated nodegate.io/cordoned-by={up.options.run_id})"),
                Planned("Kubernetes API", f"kubectl drain {up.kube_name} {self.options(up).flags()} through the Eviction "
                                          f"API (PDB refusals asked again every {PDB_RETRY_S:g}s)"))

    def already(self, up: Upgrade) -> str | None:
        kube = up.need_kube()
        status = kube.node(up.kube_name)
        left = [p for p in kube.list_pods(node=up.kube_name) if _evictable(p)]
        if status.unschedulable and not left:
            return "the node is cordoned and has no evictable pod left"
        return None

    def run(self, up: Upgrade) -> str:
        from nodegate.kube import DrainError

        kube = up.need_kube()
        ours = up.value("cordoned_by")
        if not ours and kube.node(up.kube_name).unschedulable:
            log.info("%s was cordoned before this upgrade: it will be left cordoned at the end", up.name)
        elif not ours:
            # Noted before the write: an interruption between the two must not forget that the
            # cordon is ours (the worst case is an uncordon the node was going to get anyway).
            up.note(self.name, cordoned_by=up.options.run_id)
        try:
            result = kube.drain(up.kube_name, options=self.options(up), cordon_by=ours or up.options.run_id)
        except DrainError as exc:
            up.keep_text("drain", exc.result.evidence())
            raise
        up.keep_text("drain", result.evidence())
        how = "cordoned by this upgrade" if result.cordon and result.cordon.changed else (
            result.cordon.detail if result.cordon else "cordoned")
        return f"{how}; evicted {len(result.evicted)} pod(s) in {result.duration_s:.1f}s"

    def verify(self, up: Upgrade) -> str:
        kube = up.need_kube()
        status = kube.node(up.kube_name)
        left = [p.ref for p in kube.list_pods(node=up.kube_name) if _evictable(p)]
        if not status.unschedulable:
            raise StepFailed(f"{up.name} is not cordoned")
        if left:
            raise StepFailed(f"{up.name} still runs evictable pods: {', '.join(left)}")
        return f"{up.name} is cordoned and runs no evictable pod"


def storage_facts(up: Upgrade) -> "StorageFacts":
    """The node's CRUSH host, Rook's disruption settings and the noout policy, read once per run."""
    facts = getattr(up, "_storage_facts", None)
    if facts is None:
        from nodegate.cluster.storage import crush_mapping, rook_settings
        from nodegate.core.noout import decide_noout

        kube, ceph = up.need_kube(), up.need_ceph()
        mapping = crush_mapping(up.node, kube=kube, ceph=ceph, namespace=up.profile.ceph.namespace)
        rook = rook_settings(kube, up.profile.ceph.namespace)
        facts = StorageFacts(mapping=mapping, rook=rook, policy=decide_noout(rook))
        up._storage_facts = facts   # type: ignore[attr-defined]
    return facts


@dataclass(frozen=True)
class StorageFacts:
    mapping: Any            # nodegate.core.crush.CrushMapping
    rook: Any               # nodegate.core.noout.RookDisruption
    policy: Any             # nodegate.core.noout.NooutPolicy

    def need_mapping(self) -> Any:
        if not self.mapping.ok:
            raise StepFailed(f"the node's CRUSH host cannot be told: {'; '.join(self.mapping.problems)}",
                             fix="set [nodes.<name>] crush_host (or ceph_osds = false) in the profile")
        return self.mapping


def expected_node_upgrade_s(up: Upgrade) -> tuple[float, str]:
    """How long the node's OSDs are expected to be protected: the longest noout -> unset_noout
    window of earlier runs in this cluster's journals, else a stated default."""
    from nodegate.core.noout import expected_duration

    journals = []
    for journal in up.journal.siblings():
        try:
            journals.append(journal.records())
        except (OSError, ValueError):
            continue
    return expected_duration(journals, control_plane=up.node.is_control_plane)


class Noout(Step):
    name = "noout"
    title = "ceph: keep the node's OSDs from being marked out (per-OSD noout, or the CRUSH host's group flag)"
    superseded_by = "unset_noout"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        facts = storage_facts(up)
        m = facts.mapping
        lines = [Planned("mapping", m.describe() if m.ok else "CRUSH host unknown: " + "; ".join(m.problems)),
                 Planned("rook", facts.rook.describe()), Planned("policy", facts.policy.reason)]
        from nodegate.core.noout import duration_warning

        expected, source = expected_node_upgrade_s(up)
        warning = duration_warning(facts.rook, expected, source=source)
        if warning:
            lines.append(Planned("warning", warning))
        for command in facts.policy.commands(crush_host=m.crush_host or "?", osd_ids=m.osd_ids):
            lines.append(Planned("ceph", "ceph " + " ".join(command)))
        return tuple(lines)

    def _flags_hold(self, up: Upgrade, facts: StorageFacts) -> bool:
        from nodegate.core.noout import PER_OSD

        flags = up.need_ceph().osd_flags().value
        m = facts.mapping
        if facts.policy.kind == PER_OSD:
            return all("noout" in flags.osd_flags.get(i, frozenset()) for i in m.osd_ids)
        return "noout" in flags.crush_node_flags.get(m.crush_host, frozenset())

    def already(self, up: Upgrade) -> str | None:
        facts = storage_facts(up)
        m = facts.need_mapping()
        if not m.osd_ids:
            return f"{up.name} carries no OSDs (the profile says so: [nodes.{up.name}] ceph_osds = false)"
        if self._flags_hold(up, facts):
            by = "by this upgrade" if up.value("noout_by_us") else "before this upgrade (left as it is)"
            return f"noout already holds for {', '.join(f'osd.{i}' for i in m.osd_ids)} ({facts.policy.kind}, set {by})"
        return None

    def run(self, up: Upgrade) -> str:
        facts = storage_facts(up)
        m = facts.need_mapping()
        up.keep_text("Node <-> CRUSH host", "\n".join([m.describe(), *m.evidence, *m.notes]))
        up.keep_text("noout policy", f"{facts.rook.describe()}\n{facts.policy.reason}")
        # Recorded before acting: a run stopped right after the command still undoes it.
        up.note(self.name, noout_by_us=True, noout_kind=facts.policy.kind, noout_osds=list(m.osd_ids),
                noout_host=m.crush_host)
        done = []
        for command in facts.policy.commands(crush_host=m.crush_host, osd_ids=m.osd_ids):
            result = up.need_ceph().run(command)
            up.keep_command(result)
            done.append(f"`{result.command}` rc {result.rc}")
        return "; ".join(done) + f" (CRUSH host {m.crush_host}, {facts.policy.kind})"

    def verify(self, up: Upgrade) -> str:
        facts = storage_facts(up)
        m = facts.need_mapping()
        if not m.osd_ids:
            return f"{up.name} carries no OSDs"
        if not self._flags_hold(up, facts):
            flags = up.need_ceph().osd_flags().value
            raise StepFailed(f"noout does not hold for {', '.join(f'osd.{i}' for i in m.osd_ids)} on CRUSH host "
                             f"{m.crush_host} (per-OSD flags: {dict(flags.osd_flags)}, crush node flags: "
                             f"{dict(flags.crush_node_flags)})")
        return f"noout holds for {', '.join(f'osd.{i}' for i in m.osd_ids)} on CRUSH host {m.crush_host} ({facts.policy.kind})"


class Unhold(Step):
    name = "unhold"
    title = "record the held packages and their versions; apt-mark unhold them"
    # Kubespray's docker role holds the docker packages again (before the hold step pins them):
    # after it, held packages are expected, not a drift to undo by unholding and upgrading again
    superseded_by = "kubespray"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        held = up.value("held_before")
        if not held:
            try:
                held = up.host.packages.held()
            except NodegateError:
                held = {n: "?" for n in up.profile.expect.held_packages}
        names = sorted(held) or list(up.profile.expect.held_packages)
        return (_ssh(up, "dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package} ${Version}\\n"),
                _ssh(up, "apt-mark", "unhold", "--", *names))

    def already(self, up: Upgrade) -> str | None:
        held = up.value("held_before")
        if held and not set(held) & set(up.host.packages.held()):
            return "the recorded packages are not held any more: " + ", ".join(sorted(held))
        return None

    def run(self, up: Upgrade) -> str:
        packages = up.host.packages
        held = up.value("held_before")
        if not held:
            live = packages.held()
            expected = [n for n in up.profile.expect.held_packages if n not in live]
            held = dict(live)
            held.update(packages.versions(expected))   # the expected set, even if someone unheld one
            source = up.host.release.os_release()
            up.note(self.name, held_before=held, source_codename=source.version_codename or "")
            up.keep_json("held packages before the upgrade", held)
        now_held = sorted(set(held) & set(packages.held()))
        if now_held:
            up.keep_command(packages.unhold(now_held))
        return "unheld " + (", ".join(f"{n}={v}" for n, v in sorted(held.items())) or "nothing (none was held)")

    def verify(self, up: Upgrade) -> str:
        held = up.value("held_before") or {}
        still = sorted(set(held) & set(up.host.packages.held()))
        if still:
            raise StepFailed(f"still held on {up.name}: {', '.join(still)}")
        return "recorded and not held: " + ", ".join(sorted(held))


class DistUpgrade(Step):
    name = "dist_upgrade"
    title = "apt-get update and a non-interactive dist-upgrade keeping config files"
    superseded_by = "release_upgrade"   # the new release's sources bring new candidates

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        env = [f"{k}={v}" for k, v in APT_ENV.items()]
        return (_ssh(up, *APT_UPDATE), _ssh(up, "env", *env, *DIST_UPGRADE))

    def already(self, up: Upgrade) -> str | None:
        if not up.finished("unhold"):
            return None
        _wait_package_tools(up)
        if up.host.packages.audit():
            return None      # an earlier run was cut off inside dpkg: run() finishes it first
        pending = up.host.packages.upgradable()
        if not pending.names:
            return "nothing is upgradable"
        return None

    def run(self, up: Upgrade) -> str:
        repaired = _settle_dpkg(up)
        update = up.host.apt.update()
        up.keep_command(update.result)
        if update.report.errors:
            raise StepFailed(f"`apt-get update` on {up.name} failed: " + "; ".join(update.report.errors[:5]),
                             fix="fix the apt sources or the network of the node, then run again")
        with heartbeat(f"running apt-get dist-upgrade on {up.name}", limit=DIST_UPGRADE_TIMEOUT_S):
            result = up.host.run(list(DIST_UPGRADE), sudo=True, env=APT_ENV, timeout=DIST_UPGRADE_TIMEOUT_S)
        up.keep_command(result)
        return (f"{repaired}; " if repaired else "") + f"dist-upgrade rc {result.rc} in {result.duration:.0f}s"

    def verify(self, up: Upgrade) -> str:
        _wait_package_tools(up)   # a package run still going (after a lost connection) is judged when it ends
        audit = up.host.packages.audit()
        if audit:
            raise StepFailed(f"dpkg on {up.name} is not consistent (`dpkg --audit`): {audit.splitlines()[0]}",
                             fix="run the same command again: it finishes dpkg's work with `dpkg --configure -a`")
        pending = up.host.packages.upgradable()
        if pending.names:
            raise StepFailed(f"still upgradable (or kept back) on {up.name} after dist-upgrade: "
                             + ", ".join(pending.names),
                             fix="a held package is kept back: check `apt-mark showhold` on the node")
        return "nothing upgradable"


PACKAGE_TOOLS = frozenset({"apt-get", "apt", "dpkg", "do-release-upgr", "unattended-upgr"})   # comm, ≤ 15 chars


def _wait_package_tools(up: Upgrade) -> None:
    """Wait (bounded) until no apt/dpkg/do-release-upgrade runs on the node. After a lost SSH
    connection the command the earlier run started may still be going: it owns dpkg's lock and
    its outcome is not known yet."""
    def probe() -> Done | NotYet:
        out = up.host.run(["ps", "-e", "-o", "pid=,comm="])
        running = [" ".join(fields) for fields in (line.split(None, 1) for line in out.stdout.splitlines())
                   if len(fields) == 2 and fields[1].strip() in PACKAGE_TOOLS]
        return NotYet("still running on the node: " + ", ".join(running)) if running else Done(True)

    wait_for(probe, what=f"apt/dpkg started by an earlier run to end on {up.name}", timeout=DIST_UPGRADE_TIMEOUT_S,
             interval=1.0, progress_every=5.0,
             fix="look at what apt/dpkg does on the node (`ps -ef`, /var/log/apt/term.log)")


def _pending_now(up: Upgrade) -> str:
    """What apt would upgrade on the node now, in words for a failure message (do-release-upgrade
    judges from the same package lists): an update published, or a package downgraded, since the
    dist-upgrade step."""
    try:
        pending = up.host.packages.upgradable()
    except NodegateError as exc:
        return f"could not read what is upgradable: {str(exc).splitlines()[0]}"
    if not pending.names:
        return "apt lists nothing upgradable now"
    shown = [f"{p.name} {p.current_version or '?'} -> {p.new_version}" for p in pending.packages]
    shown += [f"{name} (kept back)" for name in pending.kept_back if name not in {p.name for p in pending.packages}]
    return "upgradable now: " + ", ".join(shown)


def _settle_dpkg(up: Upgrade) -> str:
    """After a lost connection the package run on the node either went on to its end or was cut
    off inside dpkg ("dpkg was interrupted"): wait for it, then finish what dpkg left half done."""
    _wait_package_tools(up)
    audit = up.host.packages.audit()
    if not audit:
        return ""
    log.warning("%s: dpkg was left half done by an interrupted run (%s): dpkg --configure -a", up.name,
                audit.splitlines()[0])
    result = up.host.run(["dpkg", "--force-confdef", "--force-confold", "--configure", "-a"], sudo=True, env=APT_ENV,
                         timeout=DIST_UPGRADE_TIMEOUT_S)
    up.keep_command(result)
    return "finished the interrupted dpkg run (dpkg --configure -a)"


class Reboot(Step):
    title_suffix = ""

    def __init__(self, name: str, title: str) -> None:
        self.name = name
        self.title = title

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        timeout = up.profile.upgrade.reboot_timeout_s(up.node)
        return (_ssh(up, "sh", "-c", "(sleep 1; shutdown -r now || reboot) </dev/null >/dev/null 2>&1 &"),
                Planned("local", f"wait ≤ {timeout:g}s for SSH with a new boot id, then Node {up.kube_name} Ready"))

    def run(self, up: Upgrade) -> str:
        from nodegate.nodes import SshConnectError

        key = f"{self.name}_boot_id_before"
        before = up.value(key)
        rebooted_already = False
        if before:
            try:
                rebooted_already = up.nodes.reconnect(up.name).boot.boot_id() != before
            except SshConnectError:
                rebooted_already = True   # down right now: the reboot asked for earlier is under way
            else:
                if rebooted_already and self._needed_again(up):
                    log.info("%s rebooted since boot id %s but needs a reboot again: rebooting", up.name, before)
                    rebooted_already = False
        if rebooted_already:
            log.info("%s was already asked to reboot (boot id %s before): waiting for it", up.name, before)
        else:
            _wait_package_tools(up)   # never reboot under a running apt/dpkg/do-release-upgrade
            before = up.host.boot.boot_id()
            up.note(self.name, **{key: before})
            up.host.boot.request_reboot()
        after = wait_rebooted(up, before)
        return f"rebooted: boot id {before} → {after}"

    def _needed_again(self, up: Upgrade) -> bool:
        """The first reboot is there so that do-release-upgrade may run: when the node needs one
        again (a kernel installed since), a rerun reboots again instead of refusing at the next
        step on every run."""
        # A node already on the target release (do-release-upgrade got that far before an
        # interruption) needs the reboot of step reboot_release, not this one again.
        return (self.name == "reboot" and not up.finished("release_upgrade") and up.host.boot.reboot_required().required
                and up.host.release.os_release().version_id != up.target.version)

    def verify(self, up: Upgrade) -> str:
        before = up.value(f"{self.name}_boot_id_before")
        boot_id = up.host.boot.boot_id()
        if before and boot_id == before:
            raise StepFailed(f"{up.name} has not rebooted (boot id still {boot_id})")
        if self._needed_again(up):
            packages = ", ".join(up.host.boot.reboot_required().packages) or "reboot-required"
            raise StepFailed(f"{up.name} needs a reboot again ({packages})",
                             fix="run the same command again: it reboots the node before do-release-upgrade")
        if up.kube is not None:
            status = up.kube.node(up.kube_name)
            if not status.is_ready:
                raise StepFailed(f"{up.name} is not Ready after the reboot: {status.describe()}")
        return f"{up.name} answers over SSH with boot id {boot_id} and is Ready"


def wait_rebooted(up: Upgrade, before: str) -> str:
    """Wait (bounded by the node's role) for SSH with a boot id other than ``before``, then Ready."""
    from nodegate.nodes import CommandFailed

    timeout = up.profile.upgrade.reboot_timeout_s(up.node)
    started = time.monotonic()
    oob = (f"reach it out of band through its BMC at {up.node.bmc}" if up.node.bmc else
           "reach it out of band (BMC/IPMI/iRMC console; the profile names no BMC address for it: add "
           f"[nodes.{up.name}] bmc = \"…\")")
    def probe() -> Done | NotYet:
        try:
            host = up.nodes.reconnect(up.name)
            boot_id = host.boot.boot_id()
        except CommandFailed as exc:
            # ssh itself ending with 255 and no message: the connection closed under us while the
            # node went down or came up — the same "not yet" as a refused connection.
            if exc.result.rc == 255:
                return NotYet("ssh exited 255 without a message (connection closed: the node is going down or "
                              "coming up)")
            raise
        if boot_id == before:
            return NotYet(f"SSH answers but boot id is still {boot_id} (not rebooted yet)")
        return Done(boot_id)

    try:
        boot_id = wait_for(probe, what=f"SSH on {up.name} after a reboot (new boot id)", timeout=timeout,
                           interval=0.5, progress_every=5.0)
        if up.kube is not None:
            left = max(1.0, timeout - (time.monotonic() - started))
            up.kube.wait_node_ready(up.kube_name, timeout=left, new_boot_id_than=before)
    except WaitTimeout as exc:
        raise NodeDidNotComeBack(
            f"{up.name} did not come back within {timeout:g}s after the reboot (role "
            f"{'control-plane' if up.node.is_control_plane else 'worker'} limit); last seen: {exc.last_seen}",
            fix=f"{oob} and see why it does not boot; then run the same command again to resume") from None
    log.info("%s is back with boot id %s after %.1fs", up.name, boot_id, time.monotonic() - started)
    return boot_id


class ReleaseUpgrade(Step):
    name = "release_upgrade"
    title = "do-release-upgrade to the target release"

    def command(self, up: Upgrade) -> list[str]:
        argv = ["do-release-upgrade", "-f", "DistUpgradeViewNonInteractive"]
        if up.profile.upgrade.devel_release:
            argv.append("-d")
        return argv

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (_ssh(up, *self.command(up)),)

    def already(self, up: Upgrade) -> str | None:
        # An earlier run's do-release-upgrade may still be going (it outlives a lost SSH
        # connection, as under screen): never judge, let alone reboot, while it runs.
        _wait_package_tools(up)
        release = up.host.release.os_release()
        if release.version_id == up.target.version and not up.host.packages.audit():
            return f"{up.name} runs {release.label} already"
        return None

    def run(self, up: Upgrade) -> str:
        from nodegate.nodes import CommandFailed

        repaired = _settle_dpkg(up)
        release = up.host.release.os_release()
        if release.version_id == up.target.version:
            # an earlier do-release-upgrade was cut off after the release moved: finish its
            # package work the way Ubuntu says to (dpkg --configure -a, then apt)
            for argv in (["apt-get", "-y", "-q", *DPKG_KEEP_CONFIG, "-f", "install"], list(DIST_UPGRADE)):
                up.keep_command(up.host.run(argv, sudo=True, env=APT_ENV, timeout=DIST_UPGRADE_TIMEOUT_S))
            return (f"{repaired}; " if repaired else "") + f"finished the interrupted release upgrade ({release.label})"
        if next_release(release.version_id or "") != up.target:
            raise StepFailed(f"{up.name} runs {release.label}; do-release-upgrade would not reach {up.target.version}")
        pending = up.host.boot.reboot_required()
        if pending.required:
            raise StepFailed(f"{up.name} needs a reboot first ({', '.join(pending.packages) or 'reboot-required'}); "
                             "do-release-upgrade refuses until then", fix="run again: the reboot step comes first")
        try:
            with heartbeat(f"running do-release-upgrade on {up.name}", limit=RELEASE_UPGRADE_TIMEOUT_S, every=10.0):
                result = up.host.run(self.command(up), sudo=True, env=APT_ENV, timeout=RELEASE_UPGRADE_TIMEOUT_S)
        except CommandFailed as exc:
            up.keep_command(exc.result)
            text = exc.result.output
            if "Please install all available updates" in text:
                raise StepFailed(f"do-release-upgrade on {up.name} refused: Please install all available updates for "
                                 f"your release before upgrading ({_pending_now(up)})",
                                 fix="run the same command again: its dist-upgrade step finds these updates and "
                                     "installs them (apt-get dist-upgrade, keeping config files), then the release "
                                     "upgrade follows; a held package among them must be unheld first (`apt-mark "
                                     "showhold` on the node)") from None
            if "reboot" in text.lower() and "before upgrading" in text.lower():
                raise StepFailed(f"do-release-upgrade on {up.name} refused: Please reboot before upgrading",
                                 fix="run again: the reboot step comes first") from None
            raise
        up.keep_command(result)
        return f"do-release-upgrade rc {result.rc} in {result.duration:.0f}s"

    def verify(self, up: Upgrade) -> str:
        release = up.host.release.os_release()
        if release.version_id != up.target.version:
            raise StepFailed(f"{up.name} runs {release.label}, not {up.target.version}, after do-release-upgrade")
        audit = up.host.packages.audit()
        if audit:
            raise StepFailed(f"dpkg on {up.name} is not consistent after do-release-upgrade: {audit.splitlines()[0]}",
                             fix="run the same command again: it finishes dpkg's work with `dpkg --configure -a`")
        return f"/etc/os-release: {release.label}"


# The repair runs as one small Python program on the node (python3 is there: Ansible needs it),
# so reading, editing and writing each file is atomic and needs no quoting through a shell.
_REPAIR_SOURCES = r'''
import os, re, sys
old, new = sys.argv[1], sys.argv[2]
changed = []
d = "/etc/apt/sources.list.d"
for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
    path = os.path.join(d, name)
    if not name.endswith(".list") or not os.path.isfile(path):
        continue
    text = open(path).read()
    out = []
    for line in text.splitlines():
        m = re.match(r"^#\s*(deb(?:-src)?\s.*?)\s*#\s*disabled on upgrade to \S+\s*$", line)
        if m:
            words = m.group(1).split()
            i = 1
            if len(words) > 1 and words[1].startswith("["):
                while i < len(words) and not words[i].endswith("]"):
                    i += 1
                i += 1
            # words[i] is the URI, words[i+1] the suite: move it to the new codename
            if i + 1 < len(words):
                words[i + 1] = re.sub("^" + re.escape(old) + r"(?=$|-)", new, words[i + 1])
            line = " ".join(words)
        out.append(line)
    new_text = "\n".join(out) + ("\n" if text.endswith("\n") else "")
    if new_text != text:
        tmp = path + ".nodegate-tmp"
        open(tmp, "w").write(new_text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        changed.append(path)
print("\n".join(changed))
'''

_MOVE_KEYS = r'''
import os, re, shutil, sys
legacy, keyrings = "/etc/apt/trusted.gpg", "/etc/apt/keyrings"
urls = [u.rstrip("/") for u in sys.argv[1:]]
if not os.path.isfile(legacy):
    print("no legacy keyring"); sys.exit(0)
os.makedirs(keyrings, mode=0o755, exist_ok=True)
files = ["/etc/apt/sources.list"] + sorted(
    os.path.join("/etc/apt/sources.list.d", n) for n in os.listdir("/etc/apt/sources.list.d") if n.endswith(".list"))
done = []
for path in files:
    if not os.path.isfile(path):
        continue
    text = open(path).read()
    stem = os.path.basename(path)[:-len(".list")]
    key = os.path.join(keyrings, stem + ".gpg")
    out, touched = [], False
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in ("deb", "deb-src"):
            opts, rest = [], words[1:]
            if rest and rest[0].startswith("["):
                while rest:
                    w = rest.pop(0)
                    opts.append(w.strip("[]"))
                    if w.endswith("]"):
                        break
            opts = [o for o in opts if o]
            uri = rest[0].rstrip("/") if rest else ""
            if any(uri == u or uri.startswith(u + "/") for u in urls) and \
                    not any(o.startswith("signed-by=") for o in opts):
                opts.append("signed-by=" + key)
                line = " ".join([words[0], "[" + " ".join(opts) + "]"] + rest)
                touched = True
        out.append(line)
    if touched:
        if not os.path.exists(key):
            shutil.copyfile(legacy, key)
            os.chmod(key, 0o644)
        tmp = path + ".nodegate-tmp"
        open(tmp, "w").write("\n".join(out) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        done.append(path + " -> " + key)
# Every source that used the legacy keyring now names its own key file: retire the legacy one
# (kept beside it for the record; apt does not read that name).
os.replace(legacy, legacy + ".nodegate-moved")
print("\n".join(done) or "no source used the legacy keyring")
'''


class Repair(Step):
    name = "repair"
    title = "repair after the release upgrade: third-party sources, keys to /etc/apt/keyrings, rbd module"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        old = (up.value("source_codename") or "<old codename>")
        return (_ssh(up, "python3", "-c", "<re-enable '# disabled on upgrade to' sources>", old, up.target.codename),
                _ssh(up, *APT_UPDATE),
                _ssh(up, "python3", "-c", "<add signed-by=/etc/apt/keyrings/<source>.gpg to the sources whose key is in "
                     "/etc/apt/trusted.gpg; retire that keyring>", "<urls>"),
                _ssh(up, "modprobe", "--", "rbd"),
                _ssh(up, "sh", "-c", f"echo rbd > {MODULES_LOAD_FILE}"),
                _ssh(up, *APT_UPDATE))

    def already(self, up: Upgrade) -> str | None:
        # the cheap reads only: `verify` (run right after) adds the `apt-get update` proof
        if not self._problems(up, update=False):
            return "no source disabled on upgrade or left on the old codename, no legacy keyring, rbd loaded and persisted"
        return None

    def run(self, up: Upgrade) -> str:
        host = up.host
        old = up.value("source_codename") or (up.source_release().codename)
        new = up.target.codename
        done = []
        out = host.run(["python3", "-c", _REPAIR_SOURCES, old, new], sudo=True)
        up.keep_command(out)
        if out.stdout.strip():
            done.append("re-enabled for " + new + ": " + ", ".join(out.stdout.split()))
        update = host.apt.update()
        up.keep_command(update.result)
        if update.report.legacy_keyring:
            urls = sorted({_repo_url(u) for u in update.report.legacy_keyring})
            moved = host.run(["python3", "-c", _MOVE_KEYS, *urls], sudo=True)
            up.keep_command(moved)
            done.append("keys moved: " + "; ".join(moved.stdout.splitlines()))
        elif host.exists(LEGACY_KEYRING):
            moved = host.run(["python3", "-c", _MOVE_KEYS], sudo=True)
            up.keep_command(moved)
            done.append("legacy keyring retired (no source used it)")
        if not host.modules.is_loaded("rbd"):
            up.keep_command(host.modules.load("rbd"))
            done.append("rbd loaded")
        persisted = host.run(["sh", "-c", f"grep -qx rbd {shlex.quote(MODULES_LOAD_FILE)} 2>/dev/null || "
                                          f"{{ mkdir -p /etc/modules-load.d && echo rbd > {shlex.quote(MODULES_LOAD_FILE)}"
                                          " && echo written; }"], sudo=True)
        if "written" in persisted.stdout:
            done.append(f"rbd persisted in {MODULES_LOAD_FILE}")
        return "; ".join(done) or "nothing needed repair"

    def verify(self, up: Upgrade) -> str:
        problems = self._problems(up, update=True)
        if problems:
            raise StepFailed(f"after the release upgrade {up.name} still needs repair:\n"
                             + "\n".join(f"  - {p}" for p in problems))
        return "apt-get update clean; no source disabled on upgrade; keys in /etc/apt/keyrings; rbd loaded and persisted"

    def _problems(self, up: Upgrade, *, update: bool) -> list[str]:
        host = up.host
        old = up.value("source_codename")
        problems = []
        for f in host.apt.source_files():
            for s in f.sources:
                if s.disabled_on_upgrade_to:
                    problems.append(f"{f.path}: `{s.raw.strip()}` is still disabled on upgrade")
                elif s.enabled and old and (s.suite == old or s.suite.startswith(old + "-")):
                    problems.append(f"{f.path}: `{s.raw.strip()}` still points at {old}")
        if host.exists(LEGACY_KEYRING):
            problems.append(f"{LEGACY_KEYRING} still exists (legacy keyring)")
        if not host.modules.is_loaded("rbd"):
            problems.append("the rbd module is not loaded")
        persisted = host.run(["sh", "-c", "cat /etc/modules-load.d/*.conf 2>/dev/null"], expect=(0, 1)).stdout
        if "rbd" not in [w.strip() for w in persisted.splitlines()]:
            problems.append("rbd is not persisted in /etc/modules-load.d/")
        if update:
            result = host.apt.update()
            up.keep_command(result.result)
            report = result.report
            if not report.clean:
                problems.append("`apt-get update` is not clean: " + "; ".join(
                    [*report.errors, *report.warnings, *(f"NO_PUBKEY {k}" for k in report.no_pubkey)][:5]))
        return problems


def _repo_url(url: str) -> str:
    # "http://127.0.2.1/linux/ubuntu/dists/focal/InRelease" -> "http://127.0.2.1/linux/ubuntu"
    return url.split("/dists/", 1)[0]


class Kubespray(Step):
    name = "kubespray"
    title = "Kubespray upgrade-cluster.yml limited to the node"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        from nodegate import kubespray

        return (Planned("local", kubespray.describe_upgrade(profile=up.profile, node=up.name)),)

    def run(self, up: Upgrade) -> str:
        from nodegate import kubespray

        try:
            result = kubespray.upgrade_node(profile=up.profile, node=up.name)   # it logs its tasks as they run
        except (kubespray.KubesprayFailed, kubespray.KubesprayTimeout) as exc:
            up.keep_text(f"kubespray output (rc {exc.result.rc})", f"$ {exc.result.command}\n{exc.result.output}")
            raise
        up.keep_text(f"kubespray output (rc {result.rc})", f"$ {result.command}\n{result.output}")
        up.note(self.name, kubespray_recap=result.recap_line)
        return result.summary

    def verify(self, up: Upgrade) -> str:
        kube = up.need_kube()
        status = kube.node(up.kube_name)
        want = up.profile.kube_version
        if not status.is_ready:
            raise StepFailed(f"{up.name} is not Ready after Kubespray: {status.describe()}")
        if want and status.kubelet_version and status.kubelet_version != want:
            raise StepFailed(f"{up.name} runs kubelet {status.kubelet_version}, the cluster's kube_version is {want}")
        recap = up.value("kubespray_recap") or ""
        return f"{up.name} Ready, kubelet {status.kubelet_version}" + (f"; recap {recap}" if recap else "")


class Hold(Step):
    name = "hold"
    title = "hold the recorded packages again at the same versions (target release builds)"

    def wanted(self, up: Upgrade, *, live: bool = False) -> dict[str, str]:
        """Recorded held package -> the same version's build for the target release. With
        ``live`` (plan mode, nothing recorded yet) the node's current holds stand in for the record."""
        held = up.value("held_before") or {}
        old = up.value("source_codename") or ""
        if not held and live:
            held = up.host.packages.held()
            old = up.host.release.os_release().version_codename or ""
        new = up.target.codename
        out = {}
        for name, version in held.items():
            expected = up.profile.expect.version_for(name, new)
            out[name] = expected or (version.replace(old, new) if old else version)
        return out

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        wanted = self.wanted(up, live=True)
        names = sorted(wanted) or list(up.profile.expect.held_packages)
        pins = [f"{n}={v}" for n, v in sorted(wanted.items())] or [f"{n}=<recorded version, {up.target.codename} build>"
                                                                   for n in names]
        env = [f"{k}={v}" for k, v in APT_ENV.items()]
        return (_ssh(up, "env", *env, "apt-get", "install", "-y", "--allow-downgrades", "--allow-change-held-packages",
                     *DPKG_KEEP_CONFIG, *pins) ,
                _ssh(up, "apt-mark", "hold", "--", *names))

    def already(self, up: Upgrade) -> str | None:
        try:
            return self.verify(up)
        except StepFailed:
            return None

    def run(self, up: Upgrade) -> str:
        packages = up.host.packages
        wanted = self.wanted(up)
        if not wanted:
            return "no package was held before the upgrade: nothing to hold"
        installed = packages.versions(list(wanted))
        wrong = {n: v for n, v in wanted.items() if installed.get(n) != v}
        if wrong:
            argv = ["apt-get", "install", "-y", "-q", "--allow-downgrades", "--allow-change-held-packages",
                    *DPKG_KEEP_CONFIG, *(f"{n}={v}" for n, v in sorted(wrong.items()))]
            with heartbeat(f"installing the {up.target.codename} builds on {up.name}", limit=DIST_UPGRADE_TIMEOUT_S):
                up.keep_command(up.host.run(argv, sudo=True, env=APT_ENV, timeout=DIST_UPGRADE_TIMEOUT_S))
        up.keep_command(packages.hold(sorted(wanted)))
        return "held " + ", ".join(f"{n}={v}" for n, v in sorted(wanted.items())) + (
            f" (installed {', '.join(sorted(wrong))} at those versions first)" if wrong else "")

    def verify(self, up: Upgrade) -> str:
        wanted = self.wanted(up)
        held = up.host.packages.held()
        problems = []
        for name, version in sorted(wanted.items()):
            if name not in held:
                problems.append(f"{name} is not held")
            elif held[name] != version:
                problems.append(f"{name} is held at {held[name]}, expected {version}")
        if problems:
            raise StepFailed(f"held package drift on {up.name}: " + "; ".join(problems))
        return "held: " + ", ".join(f"{n}={v}" for n, v in sorted(wanted.items()))


class Uncordon(Step):
    name = "uncordon"
    title = "uncordon the node (only if this upgrade cordoned it)"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (Planned("Kubernetes API", f"uncordon {up.kube_name} only if nodegate.io/cordoned-by names this upgrade"),)

    def already(self, up: Upgrade) -> str | None:
        if not up.value("cordoned_by"):
            return "left as found: the node was cordoned before this upgrade, so it stays cordoned"
        if not up.need_kube().node(up.kube_name).unschedulable:
            return "the node is schedulable"
        return None

    def run(self, up: Upgrade) -> str:
        result = up.need_kube().uncordon(up.kube_name, only_if_cordoned_by=up.value("cordoned_by"))
        if not result.changed and result.unschedulable:
            raise StepFailed(f"{up.name} was not uncordoned: {result.detail}",
                             fix="someone else cordoned it meanwhile; find out who before uncordoning it by hand")
        return f"{up.name} uncordoned"

    def verify(self, up: Upgrade) -> str:
        status = up.need_kube().node(up.kube_name)
        if up.value("cordoned_by") and status.unschedulable:
            raise StepFailed(f"{up.name} is still cordoned")
        return status.describe()


class UnsetNoout(Step):
    name = "unset_noout"
    title = "ceph: undo the noout flags this upgrade set (only those)"

    def _ours(self, up: Upgrade) -> tuple[str | None, tuple[int, ...], str | None]:
        if not up.value("noout_by_us"):
            return None, (), None
        return up.value("noout_kind"), tuple(int(i) for i in up.value("noout_osds") or ()), up.value("noout_host")

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        kind, ids, host = self._ours(up)
        if kind is None:
            facts = storage_facts(up)
            m = facts.mapping
            return tuple(Planned("ceph", "ceph " + " ".join(c) + " (if this upgrade set it)")
                         for c in facts.policy.commands(crush_host=m.crush_host or "?", osd_ids=m.osd_ids, set_=False))
        from nodegate.core.noout import NooutPolicy

        return tuple(Planned("ceph", "ceph " + " ".join(c))
                     for c in NooutPolicy(kind, "").commands(crush_host=host or "?", osd_ids=ids, set_=False))

    def _left(self, up: Upgrade) -> list[str]:
        from nodegate.core.noout import PER_OSD

        kind, ids, host = self._ours(up)
        flags = up.need_ceph().osd_flags().value
        if kind == PER_OSD:
            return [f"osd.{i}" for i in ids if "noout" in flags.osd_flags.get(i, frozenset())]
        if kind is not None and host and "noout" in flags.crush_node_flags.get(host, frozenset()):
            return [f"CRUSH host {host}"]
        return []

    def already(self, up: Upgrade) -> str | None:
        kind, _, _ = self._ours(up)
        if kind is None:
            return "this upgrade set no noout flag: nothing of nodegate's to undo (others' flags are left as they are)"
        if not self._left(up):
            return "the noout flags this upgrade set are gone"
        return None

    def run(self, up: Upgrade) -> str:
        from nodegate.core.noout import NooutPolicy

        kind, ids, host = self._ours(up)
        done = []
        for command in NooutPolicy(kind, "").commands(crush_host=host or "", osd_ids=ids, set_=False):
            result = up.need_ceph().run(command)
            up.keep_command(result)
            done.append(f"`{result.command}` rc {result.rc}")
        return "; ".join(done) or "nothing to undo"

    def verify(self, up: Upgrade) -> str:
        left = self._left(up)
        if left:
            raise StepFailed(f"noout set by this upgrade is still there: {', '.join(left)}")
        return "no noout flag of this upgrade is left"


def rbd_node_plugins(up: Upgrade) -> Any:
    """The RBD node plugin(s), found by what they are; fails closed when none is found and the
    profile does not say the cluster has none."""
    from nodegate.cluster.storage import csi_node_plugins

    found = csi_node_plugins(up.need_kube(), up.profile.ceph)
    if not found.ok:
        raise StepFailed(found.problems[0], fix="restore the RBD node plugin, or set [ceph] csi_rbd_daemonset / "
                                                "[ceph] csi_rbd = false in the profile")
    return found


class StorageHealthy(Step):
    name = "storage_healthy"
    title = "wait for ceph HEALTH_OK (in full) and the RBD node plugin Ready on the node"
    always_run = True

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (Planned("ceph", "ceph status -f json (every 0.5s until HEALTH_OK, mgr up, all OSDs up/in, "
                                f"all PGs active+clean; ≤ {up.options.storage_timeout_s:g}s)"),
                Planned("Kubernetes API", f"the RBD node plugin's pod on {up.kube_name} Ready (the DaemonSet running "
                                          "cephcsi --type=rbd --nodeserver=true for the cluster's RBD driver)"))

    def run(self, up: Upgrade) -> str:
        ceph, kube = up.need_ceph(), up.need_kube()
        found = rbd_node_plugins(up)
        plugin = found.plugins[0] if found.plugins else None
        on_node = [p for p in found.plugins
                   if any(q.node == up.kube_name for q in kube.list_pods(namespace=p.namespace, selector=p.label_selector))]
        plugin = on_node[0] if on_node else plugin

        def probe() -> Done | NotYet:
            status = ceph.status()
            if not status.healthy_in_full:
                return NotYet("ceph: " + "; ".join(status.reasons()))
            if plugin is not None:
                csi = kube.csi_rbdplugin(up.kube_name, namespace=plugin.namespace, selector=plugin.label_selector,
                                         log_lines=0)
                if not (csi.pod is not None and csi.ready and not csi.crash_looping):
                    return NotYet(f"{plugin.ref}: " + csi.describe())
            return Done(status)

        # A 0.5 s poll reacts within a second of the change; `ceph status` itself is the cost.
        status = wait_for(probe, what=f"ceph HEALTH_OK and the RBD node plugin Ready on {up.kube_name}",
                          timeout=up.options.storage_timeout_s, interval=0.5, progress_every=5.0,
                          fix="look at `ceph health detail` and the RBD node plugin pod's log on the node")
        up.keep_json("ceph status", getattr(status, "raw", ""))
        return "ceph healthy in full" + (f"; {plugin.ref} Ready on {up.kube_name}" if plugin is not None else
                                         "; no Ceph RBD CSI (the profile says [ceph] csi_rbd = false)")

    def verify(self, up: Upgrade) -> str:
        status = up.need_ceph().status()
        if not status.healthy_in_full:
            raise StepFailed("ceph is not healthy: " + "; ".join(status.reasons()))
        return "ceph HEALTH_OK with mgr, all OSDs up and in, all PGs active+clean"


class Postflight(Step):
    name = "postflight"
    title = "the postflight checks for the node pass"
    always_run = True

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (Planned("local", f"pytest checks/ -m postflight --node {up.name} --target-release {up.target.version}"),)

    def run(self, up: Upgrade) -> str:
        result = _run_checks(up, "postflight")
        if not result.passed:
            raise GateBlocked(
                f"the postflight checks for {up.name} did not pass ({result.counts or f'rc {result.rc}'}):\n"
                + "\n".join(f"  - {f}" for f in result.failed[:20]),
                fix="fix what the failing checks name, then run the same command again (finished steps are "
                    "re-verified, not repeated)")
        return f"postflight passed ({result.counts})"


class Unlock(Step):
    name = "unlock"
    title = "release the upgrade lock; the upgrade is complete"
    always_run = True

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        from nodegate.kube import LOCK_NAME, LOCK_NAMESPACE

        return (Planned("Kubernetes API", f"delete Lease {LOCK_NAMESPACE}/{LOCK_NAME} (if this run holds it)"),)

    def run(self, up: Upgrade) -> str:
        how = up.lock.release() if up.lock is not None else "no lock"
        return f"lock {how}"

    def verify(self, up: Upgrade) -> str:
        if up.lock is not None:
            info = up.lock.state()
            if info is not None and info.held and info.holder == up.lock.holder and info.node == up.name:
                raise StepFailed(f"the upgrade lock is still held for this node: {info.describe()}")
        return "lock released"


STEPS: tuple[Step, ...] = (
    Gate(), Lock(), Drain(), Noout(), Unhold(), DistUpgrade(),
    Reboot("reboot", "reboot into the newest kernel and wait for SSH and Ready"),
    ReleaseUpgrade(),
    Reboot("reboot_release", "reboot into the new release and wait for SSH and Ready"),
    Repair(), Kubespray(), Hold(), Uncordon(), UnsetNoout(), StorageHealthy(), Postflight(), Unlock(),
)
STEP_NAMES = tuple(s.name for s in STEPS)

__all__ = ["Upgrade", "UpgradeOptions", "Step", "STEPS", "STEP_NAMES", "StepOutcome", "StepPlan", "Planned",
           "CheckRun", "EvidenceItem", "StepFailed", "GateBlocked", "NodeDidNotComeBack"]
