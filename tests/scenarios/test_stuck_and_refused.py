"""Two faults (a stuck step, a refused one) on one upgrade of node4 (20.04 → 22.04), run as an operator runs it
(`pytest procedures/ … --execute`, the same command every time), each scenario asserting where
the node, the cluster and the journal stand afterwards — not only the exit code:

1. A pod that never terminates: a pod on node4 accepts its eviction but never goes away (a
   finalizer nobody removes; the lab API server keeps such a pod Terminating, as a real one does).
   The drain fails after its timeout naming the pod as terminating (not blocked by a PDB), the
   node stays cordoned and says so, the lock is released, the journal records the failure.
2. The finalizer is removed; the same command passes the drain step and goes on — and
   do-release-upgrade refuses because of pending updates: an update shows up while the node
   reboots before it (the lab's `pending-updates` fault, set while the run is held between the
   dist-upgrade and the release upgrade; set before the run, the dist-upgrade step would simply
   install it, which the preflight's notice says). The run stops at the release-upgrade step naming
   the cause, the packages and the fix; node stated, lock released.
3. The same command again, as the refusal's fix says: its dist-upgrade step installs the pending
   update (what clearing the fault does by hand) and the upgrade completes: node4 on 22.04, its
   packages held again, uncordoned, no noout, lock free, journal complete; clearing the lab's
   fault afterwards has nothing left to undo.

The scenarios share the upgrade (one whole upgrade costs minutes) and run in file order.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request

import pytest
from labkit import fixed_kubespray_checkout
from scenariotools import NODE, Lab, Operator, leaked_secrets, lock_free, no_traceback, write_profile

from nodegate.lab import apiclient

pytestmark = pytest.mark.usefixtures("scenario_lab")
HELD = ("containerd.io", "docker-ce", "docker-ce-cli")
# The reboot limit leaves room for the run being held (SIGSTOP) while the fault is set over SSH.
LIMITS = dict(reboot_timeout_worker_s=90, storage_timeout_s=30, lock_stale_after_s=120, settle_s=0)
DRAIN_TIMEOUT_S = 8
STUCK = ("default", "never-terminates")
FINALIZER = "example.com/cleanup-that-never-runs"
OUTCOMES: dict[str, str] = {}     # scenario -> what happened (printed at the end)


class Course:
    def __init__(self, lab: Lab, work) -> None:
        self.lab = lab
        self.op = Operator(work, lab.config)
        self.checkout = fixed_kubespray_checkout(lab.config, work)   # the operator's fix for kubespray #9114
        self.profile = write_profile(lab.config, work / "fixed.toml", kubespray=self.checkout, **LIMITS)
        self.held_before = lab.standing().held
        self.seconds: dict[str, float] = {}


@pytest.fixture(scope="module")
def course(scenario_lab, tmp_path_factory) -> Course:
    clear_stuck_pod(scenario_lab)          # left by an interrupted earlier session
    made = Course(scenario_lab, tmp_path_factory.mktemp("stuck"))
    yield made
    clear_stuck_pod(scenario_lab)          # never leave a pod behind that blocks the next drain
    shutil.rmtree(made.op.control, ignore_errors=True)


# --------------------------------------------------------------------------- helpers

def stuck_pod(lab: Lab) -> dict | None:
    namespace, name = STUCK
    found = [p for p in lab._api("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
             if p["metadata"]["name"] == name]
    return found[0] if found else None


def clear_stuck_pod(lab: Lab) -> None:
    """What the finalizer's owner would do: remove it (the pod then goes at once)."""
    namespace, name = STUCK
    if stuck_pod(lab) is None:
        return
    merge_patch(lab, f"/api/v1/namespaces/{namespace}/pods/{name}", {"metadata": {"finalizers": None}})
    if stuck_pod(lab) is not None and not stuck_pod(lab)["metadata"].get("deletionTimestamp"):
        lab._api("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}?gracePeriodSeconds=0")
    deadline = time.monotonic() + 15
    while stuck_pod(lab) is not None:
        assert time.monotonic() < deadline, f"pod {namespace}/{name} still there after its finalizer was removed"
        time.sleep(0.2)


def node_state(lab: Lab) -> tuple[str, int]:
    """(state, boot_count) of node4 as the lab's supervisor records it (read on this machine)."""
    data = json.loads((lab.config.dir / "nodes" / NODE / "state.json").read_text())
    return data["state"], int(data["boot_count"])


def merge_patch(lab: Lab, path: str, body: dict) -> dict:
    """A JSON merge patch through the lab's API, as `kubectl patch --type=merge` sends it."""
    request = urllib.request.Request(f"{lab.config.api_url}{path}", method="PATCH", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/merge-patch+json"})
    with apiclient.urlopen(lab.config, request) as response:
        return json.load(response)


# --------------------------------------------------------------------------- 1: a pod that never terminates

def test_a_pod_that_never_terminates_fails_the_drain(course: Course):
    op, lab = course.op, course.lab
    namespace, name = STUCK
    # A bare pod (kubectl drain needs --force for it: the procedure drains with --force) whose
    # finalizer nobody removes: the Eviction API accepts it, its containers stop, the pod stays.
    lab._api("POST", f"/api/v1/namespaces/{namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}, "finalizers": [FINALIZER]},
        "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 2,
                 "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "infinity"]}]}})
    deadline = time.monotonic() + 30
    while not any(c["type"] == "Ready" and c["status"] == "True"
                  for c in (stuck_pod(lab) or {}).get("status", {}).get("conditions", [])):
        assert time.monotonic() < deadline, f"pod {namespace}/{name} never became Ready on {NODE}"
        time.sleep(0.2)

    run = op.run(course.profile, "--drain-timeout", str(DRAIN_TIMEOUT_S))
    course.seconds["stuck drain"] = run.seconds
    no_traceback(run)
    assert run.rc == 1 and run.outcomes.get("gate") == "passed", run.text[-3000:]
    assert run.failed_step() == "drain", run.text[-3000:]
    message = run.message()
    first = message.splitlines()[0]
    assert f"{namespace}/{name}" in first and "terminating" in first, message
    assert f"after {DRAIN_TIMEOUT_S}s" in first or f"after {DRAIN_TIMEOUT_S + 1}s" in first, message
    assert "no PodDisruptionBudget holds them" in first and "finalizer" in message, message
    assert "still cordoned" in message and "lock is released" in message, message
    # where things stand: the pod is there, Terminating; the node cordoned by this upgrade,
    # nothing else changed; the lock free; the journal says the drain failed
    pod = stuck_pod(lab)
    assert pod is not None and pod["metadata"].get("deletionTimestamp"), pod
    standing = lab.standing()
    assert standing.cordoned and standing.cordoned_by, standing
    assert f"{namespace}/{name}" in standing.evictable_pods, standing.evictable_pods
    assert not standing.noout and standing.held == course.held_before and standing.release == "20.04"
    assert standing.annotation is not None
    lock_free(lab)
    drain = [r for r in op.journal() if r["step"] == "drain"][-1]
    assert drain["status"] == "failed" and f"{namespace}/{name}" in drain["detail"], op.journal()[-3:]
    OUTCOMES["a pod that never terminates"] = (
        f"drain failed after the {DRAIN_TIMEOUT_S} s timeout naming {namespace}/{name} as still terminating "
        "(finalizers named as the likely cause, no PDB blamed); node cordoned and said so; lock released; "
        f"journal: drain failed ({run.seconds:.0f} s)")


# --------------------------------------------------------------------------- 2: the rerun passes the drain; do-release-upgrade refuses

def test_rerun_passes_the_drain_then_do_release_upgrade_refuses_pending_updates(course: Course):
    op, lab = course.op, course.lab
    clear_stuck_pod(lab)
    since = len(op.journal())
    _, boots_before = node_state(lab)
    started = time.monotonic()
    proc, junit, log = op.start(course.profile, "--drain-timeout", str(DRAIN_TIMEOUT_S))
    # Hold the run (SIGSTOP) once its first reboot step has begun: an update turns up on the node
    # while it reboots (the fault is set once it is back), i.e. after the dist-upgrade step
    # installed everything and before do-release-upgrade looks.
    op.wait_journal(lambda r: r["step"] == "reboot" and r["status"] == "started", proc=proc, timeout=400,
                    since=since)
    os.kill(proc.pid, signal.SIGSTOP)
    held_at = time.monotonic()
    try:
        # The reboot request may have gone out just before the stop: then wait for the node to be
        # back; if it did not, the node stays up and reboots after the run goes on.
        rebooting = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            state, boots = node_state(lab)
            if state != "up" or boots != boots_before:
                rebooting = True
                break
            time.sleep(0.1)
        if rebooting:
            deadline = time.monotonic() + 60
            while True:
                state, boots = node_state(lab)
                if state == "up" and boots > boots_before and lab.ssh("true", check=False).returncode == 0:
                    break
                assert time.monotonic() < deadline, f"{NODE} did not come back from its reboot: {state}"
                time.sleep(0.3)
        lab.fault("pending-updates", "--node", NODE)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    held_s = time.monotonic() - held_at
    from nodegate.lab.faults import FaultBook

    package = FaultBook(lab.config.dir).data["pending-updates"]["restore"][NODE]["package"]
    run = op.finish(proc, junit, log, timeout=600)
    course.seconds["refused release upgrade (whole run)"] = time.monotonic() - started
    no_traceback(run)
    journal = op.journal()[since:]
    ends = {(r["step"], r["status"]) for r in journal}
    # the drain step passed this time: the node is cordoned and no evictable pod is left
    assert ("drain", "skipped") in ends or ("drain", "done") in ends, journal
    for step in ("drain", "noout", "unhold", "dist_upgrade", "reboot"):
        assert run.outcomes.get(step) == "passed", (step, run.text[-3000:])
    assert run.rc == 1 and run.failed_step() == "release_upgrade", run.text[-3000:]
    message = run.message()
    first = message.splitlines()[0]
    assert "Please install all available updates" in first and f"upgradable now: {package}" in first, message
    assert "run the same command again" in message and "dist-upgrade" in message, message
    assert "still cordoned" in message and "noout" in message and "NOT held" in message, message
    # where things stand: still 20.04, cordoned, drained, noout set, the docker packages unheld
    # (as the message says), the update pending, the lock free, the journal at the refusal
    standing = lab.standing()
    assert standing.release == "20.04" and standing.cordoned and not standing.evictable_pods, standing
    assert standing.noout and not (set(standing.held) & set(HELD)) and standing.audit == "", standing
    assert package in lab.host().packages.upgradable().names
    lock_free(lab)
    refused = [r for r in journal if r["step"] == "release_upgrade"][-1]
    assert refused["status"] == "failed" and "Please install all available updates" in refused["detail"], journal[-3:]
    OUTCOMES["the rerun after the stuck pod is cleared"] = "passed the drain step (cordoned, nothing left to evict)"
    OUTCOMES["do-release-upgrade refuses: pending updates"] = (
        f"release_upgrade failed quoting the refusal and naming {package} and the fix (rerun: its dist-upgrade step "
        "installs it); node on 20.04, cordoned, noout set, docker packages unheld, all stated; lock released; "
        f"journal: release_upgrade failed (run held {held_s:.0f} s while the fault was set, "
        f"{'after' if rebooting else 'before'} the reboot had been asked for)")


# --------------------------------------------------------------------------- 3: the rerun completes

def test_the_same_command_again_installs_the_update_and_completes(course: Course):
    """What the refusal's fix says: run the same command again. Its dist-upgrade step (re-verified)
    finds the pending update and installs it — the operator's manual `apt-get dist-upgrade`, the
    fault's clearing, done by the procedure — and the release upgrade follows to the end."""
    op, lab = course.op, course.lab
    since = len(op.journal())
    run = op.run(course.profile)
    course.seconds["completing rerun"] = run.seconds
    no_traceback(run)
    assert run.rc == 0, run.text[-4000:]
    journal = op.journal()[since:]
    ends = {(r["step"], r["status"]) for r in journal}
    assert ("dist_upgrade", "done") in ends, journal            # redone: the update was pending again
    assert ("release_upgrade", "done") in ends and ("drain", "skipped") in ends, journal
    assert journal[-1]["step"] == "complete" and journal[-1]["status"] == "done", journal[-3:]
    standing = lab.standing()
    assert standing.release == "22.04" and standing.audit == ""
    assert set(standing.held) == set(HELD), standing.held
    assert all("jammy" in v or v == course.held_before.get(k) for k, v in standing.held.items()), standing.held
    assert not standing.cordoned and not standing.cordoned_by and not standing.noout
    assert standing.annotation is None and standing.ceph_healthy
    # nothing pending but the held packages' newer builds (held at Kubespray's versions, on purpose)
    assert not lab.host().packages.upgradable().packages, lab.host().packages.upgradable()
    assert stuck_pod(lab) is None
    lock_free(lab)
    # the lab's fault is cleared: the update it made pending is installed, nothing to undo
    cleared = lab.cli("fault", "pending-updates", "--clear", "--node", NODE)
    assert "already" in cleared.stdout + cleared.stderr, cleared.stdout + cleared.stderr
    leaks = leaked_secrets(lab.config, op)
    assert not leaks, leaks
    OUTCOMES["the same command again after the refusal"] = (
        f"completed ({run.seconds:.0f} s): its dist-upgrade step installed the pending update, then the release "
        "upgrade and the rest; node4 on 22.04, held at the jammy builds, uncordoned, no noout, ceph healthy, lock "
        "free, journal complete; clearing the lab fault afterwards had nothing to undo")


def test_stuck_and_refused_outcomes(course: Course, record_property):
    for name, outcome in OUTCOMES.items():
        print(f"scenario: {name}: {outcome}")
        record_property(name, outcome)
    for what, seconds in course.seconds.items():
        print(f"time: {what}: {seconds:.0f} s")
    assert len(OUTCOMES) == 4, f"scenarios that did not report: only {sorted(OUTCOMES)}"
