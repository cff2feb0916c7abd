"""Ctrl-C and SIGTERM at every step of node4's upgrade (20.04 → 22.04), and inside its waits.

ONE upgrade, interrupted again and again: the same command an operator types,
`pytest procedures/ --cluster P --node node4 --target-release 22.04 --execute`, is started; when the
chosen moment comes (a step's start, seen in the journal; or the inside of a wait, seen on the node,
in the lab or in the run's own processes) it gets SIGINT — sent to its whole process group, as a
terminal's Ctrl-C — or SIGTERM — sent to the pytest process, as `kill PID` — in turn. Then:

- the run ends by itself (a run still alive EXIT_BOUND_S after its signal is hung: its stacks are
  written into its log and the test fails), with exit status 2 (pytest's "interrupted"), no traceback, and
  a word on where the node stands when it held the lock;
- nothing it started is left running on this machine;
- the journal and node4 agree, read straight from the lab (ssh, the API server, the ceph CLI; see
  interrupttools.disagreements): nothing the journal calls finished is missing on the node, nothing
  changed on the node is missing from the journal, no step is left `started` without an end, the
  Node annotation mirrors the journal, the lock is free;

and the same command runs again, to be interrupted one step further on. The last run is left alone and
must complete: 22.04, packages held at the jammy builds, uncordoned, no noout, HEALTH_OK, lock free,
the journal ending in `complete done`. The interruption points are a schedule over the steps; a signal
aimed at a step boundary may land a little later (the step was quick) — the table at the end says where
each one really landed, and the waits are asserted to have been hit inside.

Points: the boundary into each step (nodegate.upgrade.STEP_NAMES), and the inside of each step that waits — the preflight
and postflight checks (pytest subprocesses), the drain (PDB refusals), apt and do-release-upgrade on
the node, the reboot wait (node down), the Ready wait (node up, not Ready), Kubespray, the Ceph health
wait (HEALTH_WARN injected with the lab's ceph-warn fault). The lock step has no wait: a held lock is
refused at once (tests/scenarios/test_course.py), so it is interrupted at its boundary only.
26 interrupted runs (with 17 steps; the 3 control-plane steps add 3 boundaries) and the last one: 4m46s-7m45s for this file on a developer lab (2 cores, load
average 6-7 from other work); each interrupted run exits in 0.6-9 s.
"""
from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass
from typing import Callable

import pytest
from interrupttools import (
    HELD,
    Interrupter,
    Live,
    Reader,
    Started,
    attempt,
    disagreements,
    end_session,
    last_status,
    session_leftovers,
)
from labkit import fixed_kubespray_checkout
from scenariotools import write_profile

from nodegate.upgrade import STEP_NAMES

LIMITS = dict(reboot_timeout_worker_s=60, storage_timeout_s=60, lock_stale_after_s=60, settle_s=0)
# Not a figure (those are in the table this test prints) but a hang detector: far above the 0.6-9 s an
# interrupted run takes, so that a loaded machine never trips it.
EXIT_BOUND_S = 90.0
STEPS = STEP_NAMES


@dataclass(frozen=True)
class Point:
    """Where to interrupt: ``step`` is the step aimed at, ``where`` says how, ``arm`` blocks until the moment."""
    step: str
    where: str
    arm: Callable[["Scene", Started], None]
    in_wait: bool = False            # a wait: the run must be caught inside it, not before or after


@dataclass
class Outcome:
    point: str
    signal: str
    stopped_in: str
    exit_s: float
    rc: int
    live: str


class Scene:
    def __init__(self, scenario_lab, work) -> None:
        self.lab = scenario_lab
        self.read = Reader(scenario_lab.config)
        self.op = Interrupter(work, scenario_lab.config)
        checkout = fixed_kubespray_checkout(scenario_lab.config, work)
        self.profile = write_profile(scenario_lab.config, work / "fixed.toml", kubespray=checkout, **LIMITS)
        self.before: Live = self.read.live()
        self.outcomes: list[Outcome] = []

    # -- moments ---------------------------------------------------------------------------------
    @staticmethod
    def at_start_of(step: str):
        """Right after the step before it ended (journal), i.e. at the boundary into ``step``."""
        previous = STEPS[STEPS.index(step) - 1] if step != STEPS[0] else "begin"

        def arm(scene: Scene, run: Started) -> None:
            def ready(records):
                return any(r["step"] == previous and r["status"] in ("done", "skipped" if previous != "begin"
                                                                      else "started") for r in records)
            scene.op.wait_for(run, f"the end of step {previous}", ready, interval=0.02)
        return arm

    @staticmethod
    def noted(step: str, key: str, then: Callable[["Scene", Started], bool] | None = None, *, delay: float = 0.0,
              what: str = ""):
        """After ``step`` noted ``key`` in the journal (its change is under way), once ``then`` holds."""
        def arm(scene: Scene, run: Started) -> None:
            scene.op.wait_for(run, f"{step} noting {key}",
                              lambda records: any(r["step"] == step and key in (r.get("data") or {}) for r in records))
            if then is not None:
                deadline = time.monotonic() + 60
                while not then(scene, run):
                    assert run.proc.poll() is None and time.monotonic() < deadline, f"never {what}"
                    time.sleep(0.03)
            time.sleep(delay)
        return arm

    @staticmethod
    def started(step: str, then: Callable[["Scene", Started], bool] | None = None, *, delay: float = 0.0,
                what: str = ""):
        def arm(scene: Scene, run: Started) -> None:
            scene.op.wait_for(run, f"{step} started",
                              lambda records: any(r["step"] == step and r["status"] == "started" for r in records))
            if then is not None:
                deadline = time.monotonic() + 60
                while not then(scene, run):
                    assert run.proc.poll() is None and time.monotonic() < deadline, f"never {what}"
                    time.sleep(0.03)
            time.sleep(delay)
        return arm


def node_down(scene: Scene, run: Started) -> bool:
    return scene.read.lab_state().get("state") == "down"


def up_not_ready(key: str):
    def probe(scene: Scene, run: Started) -> bool:
        state = scene.read.lab_state()
        before = next((r["data"][key] for r in reversed(scene.op.new_records(run)) if key in (r.get("data") or {})), None)
        return state.get("state") == "up" and state.get("boot_id") != before and not scene.read.node_ready()
    return probe


def package_tool(scene: Scene, run: Started) -> bool:
    return scene.read.package_tool_running()


def ansible_running(scene: Scene, run: Started) -> bool:
    return any("ansible-playbook" in p for p in session_leftovers(run.proc.pid))


def checks_running(scene: Scene, run: Started) -> bool:
    return any("/checks" in p and "-m pytest" in p for p in session_leftovers(run.proc.pid))


def cordoned(scene: Scene, run: Started) -> bool:
    return bool(scene.read.node().get("spec", {}).get("unschedulable"))


S = Scene
WAITS = {   # the steps that wait (for the node, a subprocess, the cluster): interrupted inside too
    "gate": ("inside the preflight checks (a pytest subprocess)",
             S.started("gate", checks_running, delay=1.0, what="the preflight checks running")),
    "drain": ("inside the drain wait (evictions refused by the PDB, retried every 5 s)",
              S.noted("drain", "cordoned_by", cordoned, delay=2.0, what="node4 cordoned")),
    "dist_upgrade": ("inside apt on the node (apt-get update / dist-upgrade running)",
                     S.started("dist_upgrade", package_tool, what="apt running on node4")),
    "reboot": ("inside the reboot wait (node down, waiting for SSH)",
               S.noted("reboot", "reboot_boot_id_before", node_down, what="node4 down")),
    "release_upgrade": ("inside do-release-upgrade on the node",
                        S.started("release_upgrade", package_tool, what="do-release-upgrade running on node4")),
    "reboot_release": ("inside the Ready wait (node up again, not yet Ready)",
                       S.noted("reboot_release", "reboot_release_boot_id_before",
                               up_not_ready("reboot_release_boot_id_before"), what="node4 up and not Ready")),
    "kubespray": ("inside Kubespray (ansible-playbook running)",
                  S.started("kubespray", ansible_running, delay=0.5, what="ansible-playbook running")),
    "storage_healthy": ("inside the Ceph health wait (HEALTH_WARN injected)", S.started("storage_healthy", delay=2.0)),
    "postflight": ("inside the postflight checks (a pytest subprocess)",
                   S.started("postflight", checks_running, delay=1.0, what="the postflight checks running")),
}
POINTS = tuple(point for step in STEPS for point in (
    (Point(step, "at the step boundary", S.at_start_of(step)),)
    + ((Point(step, WAITS[step][0], WAITS[step][1], in_wait=True),) if step in WAITS else ())))


def stopped_in(records: list[dict]) -> str:
    """Where the run stopped, from its own journal records."""
    if not records:
        return "before its first journal record"
    last = records[-1]
    if last["status"] == "interrupted":
        return f"{last['step']} (interrupted)"
    if last["status"] in ("done", "skipped"):
        nxt = STEPS[STEPS.index(last["step"]) + 1] if last["step"] in STEPS[:-1] else "the end"
        return f"between {last['step']} and {nxt}"
    return f"{last['step']} ({last['status']})"


@pytest.fixture(scope="module")
def scene(scenario_lab, tmp_path_factory) -> Scene:
    return Scene(scenario_lab, tmp_path_factory.mktemp("interrupts"))


def test_an_interrupt_inside_a_pod_exec_stops_the_run_instead_of_being_retried(scenario_lab):
    """The Kubernetes client's websocket calls (the ceph toolbox exec) turn Ctrl-C/SIGTERM into
    ApiException(status=0); nodegate.cluster.kube.client must hand the interrupt on, not retry it as a transient error."""
    from kubernetes.client.exceptions import ApiException

    calls = []

    def exec_like() -> None:
        calls.append(1)
        try:
            raise KeyboardInterrupt("SIGTERM")
        except (Exception, KeyboardInterrupt, SystemExit) as exc:  # noqa: BLE001 - as kubernetes/stream/ws_client.py does
            raise ApiException(status=0, reason=str(exc))  # noqa: B904 - the same: the cause is dropped upstream

    with pytest.raises(KeyboardInterrupt):
        scenario_lab.kube._call("exec `ceph status` in pod rook-ceph/tools", exec_like)
    assert calls == [1], f"the interrupt was retried {len(calls) - 1} time(s)"


def test_interrupted_at_every_step_and_in_every_wait_then_completed(scene: Scene):
    op, read, lab = scene.op, scene.read, scene.lab
    began = time.monotonic()
    assert scene.before.release == "20.04" and set(scene.before.held) == set(HELD), scene.before
    signals = (signal.SIGINT, signal.SIGTERM)
    problems: list[str] = []
    turns = {False: 0, True: 0}      # SIGINT and SIGTERM in turn, among the boundaries and among the waits
    for point in POINTS:
        records = attempt(op.journal())
        if last_status(records, point.step) in ("done", "skipped"):
            # an earlier signal landed past this point; a wait must not be missed that way
            scene.outcomes.append(Outcome(f"{point.step}: {point.where}", "-", "(passed already)", 0.0, 0, ""))
            if point.in_wait:
                problems.append(f"{point.step}: finished by an earlier run before its wait could be interrupted")
            continue
        sig = signals[turns[point.in_wait] % 2]
        turns[point.in_wait] += 1
        if point.step == "storage_healthy" and point.in_wait:
            lab.fault("ceph-warn")
        run = op.begin(scene.profile)
        try:
            point.arm(scene, run)
            assert run.proc.poll() is None, f"{point.step}: the run ended before the signal:\n{run.log.read_text()[-3000:]}"
            op.send(run, sig)
            rc, seconds, leftovers = op.stop(run, timeout=EXIT_BOUND_S, resend=sig)
        finally:
            end_session(run.proc.pid)
            if point.step == "storage_healthy" and point.in_wait:
                lab.clear("ceph-warn")
        text = run.log.read_text()
        mine = op.new_records(run)
        where = stopped_in(mine)
        live = read.live()
        scene.outcomes.append(Outcome(f"{point.step}: {point.where}", sig.name, where, seconds, rc, live.brief()))
        label = f"{sig.name} aimed at {point.step} ({point.where}), stopped {where}"
        if run.unheeded:
            # Once in ~150 interrupts, before nodegate.core.interrupts: the signal landed while a finalizer
            # ran (at a step's end), Python swallowed the KeyboardInterrupt and the run went on. The
            # second signal only lets the run end so that everything else is still reported.
            scene.outcomes[-1].stopped_in += " UNHEEDED 1st signal"
            problems.append(f"{label}: the first signal was not heeded; the run went on with {run.unheeded} "
                            f"(its stacks then: {run.log})")
            seconds -= 12.0
        if rc == -signal.SIGINT and sig == signal.SIGINT:
            # Ctrl-C reached the process group again while pytest was already ending (after it said
            # where the node stands): Python then dies by the signal. Still an interrupted run.
            scene.outcomes[-1].stopped_in += " (ended by the signal itself)"
        elif rc != 2:
            problems.append(f"{label}: exit status {rc}, not 2 (interrupted)\n{text[-2500:]}")
        if "Traceback (most recent call last)" in text:
            problems.append(f"{label}: a traceback in the output\n{text[-2500:]}")
        if "Exception ignored" in text:    # e.g. a hook wrapper stranded by the signal, closed at exit
            problems.append(f"{label}: Python reported an exception it ignored\n{text[-2500:]}")
        said = re.search(r"Where it stands: (.*)", text)
        if not said or "resumes from the journal" not in said.group(1):
            problems.append(f"{label}: it did not say where the node stands\n{text[-2000:]}")
        else:
            named = re.search(r"stopped in step '(\w+)' \((\w+)\)", said.group(1))
            if named and last_status(attempt(op.journal()), named.group(1)) != named.group(2):
                problems.append(f"{label}: it says {named.group(0)}, the journal says "
                                f"{last_status(attempt(op.journal()), named.group(1))}")
        drift = re.search(r"step (\w+) was done in run \S+ but no longer holds \(([^)]*)\)", text)
        if drift and drift.group(1) == "reboot" and "needs a reboot again" in drift.group(2) \
                and any(r["step"] == "release_upgrade" and r["status"] == "interrupted" for r in attempt(op.journal())):
            # do-release-upgrade cut off on 20.04 after libc6 came in: Ubuntu's upgrader refuses
            # until the node reboots, so the first reboot is rightly done again
            scene.outcomes[-1].stopped_in += " (rerun: rebooted again before do-release-upgrade)"
        elif drift:   # nothing but the procedure touched node4: its own journal misled it
            problems.append(f"{label}: the rerun took its own earlier work for a drift: {drift.group(0)}")
        if leftovers:
            problems.append(f"{label}: still running after the run ended: {leftovers}")
        if point.in_wait and where != f"{point.step} (interrupted)":
            problems.append(f"{label}: the wait was not interrupted from inside")
        for bad in disagreements(op.journal(), live, before=scene.before):
            problems.append(f"{label}: {bad}")
        assert not problems, "\n".join(problems)

    final = op.begin(scene.profile)
    rc, seconds, leftovers = op.stop(final, timeout=600)
    text = final.log.read_text()
    assert rc == 0, text[-4000:]
    assert "but no longer holds" not in text, text[-4000:]
    assert "Traceback (most recent call last)" not in text
    live = read.live()
    journal = op.journal()
    scene.outcomes.append(Outcome("the last run, left alone", "-", "completed", seconds, rc, live.brief()))
    assert journal[-1]["step"] == "complete" and journal[-1]["status"] == "done", journal[-3:]
    assert live.release == "22.04"
    assert set(live.held) == set(HELD) and all("focal" not in v for v in live.held.values()), live.held
    assert all("jammy" in v for n, v in live.held.items() if n.startswith("docker")), live.held
    assert not live.cordoned and not live.noout and live.ready, live
    assert live.health == "HEALTH_OK", live.health
    assert live.lock_holder is None and live.annotation is None and live.audit == "" and not live.legacy_keyring, live
    assert not disagreements(journal, live, before=scene.before)
    assert not leftovers, leftovers
    runs = {r["run_id"] for r in attempt(journal)}
    interrupted = [o for o in scene.outcomes if o.signal not in ("-",)]
    assert len(runs) == len(interrupted) + 1, (len(runs), len(interrupted))
    assert {o.signal for o in interrupted} == {"SIGINT", "SIGTERM"}
    total = time.monotonic() - began
    print(f"\ninterruptions of node4's upgrade ({len(interrupted)} interrupted runs + the last one, {total:.0f}s):")
    print(f"{'aimed at':58} {'signal':8} {'stopped':34} {'exit':>6} {'rc':>3}  node4 afterwards")
    for o in scene.outcomes:
        print(f"{o.point[:58]:58} {o.signal:8} {o.stopped_in[:34]:34} {o.exit_s:5.1f}s {o.rc:3}  {o.live}")

