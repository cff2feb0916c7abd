"""The obstacle course: node4's upgrade 20.04 → 22.04 in the lab, run the way an operator runs it,
through one fault after another. Each test is one scenario: it sets a fault (or interrupts),
runs `pytest procedures/ … --execute`, and asserts where the node, the cluster and the journal
stand — not only the exit code; the next scenario clears the fault and reruns the same command,
which resumes from the journal. The ceph-warn scenario completes the upgrade and checks the end
state. Then the last leg on the same node4: with Rook downgraded to v1.14.12 (cephcsi
v3.11.0) the 24.04 target is refused at the gate with nothing changed; with Rook back at v1.15.9
(cephcsi v3.12.3) node4 goes 22.04 → 24.04, verified on the node (measured: 37 s at load ~3).

The scenarios share one upgrade on purpose (a whole upgrade per scenario would cost minutes
each): they run in file order and each starts where the previous one left node4. Limits are
short through the profile ([upgrade] reboot/storage/lock timeouts) and --drain-timeout.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
from labkit import fixed_kubespray_checkout, wait_until
from scenariotools import NODE, TARGET, Lab, Operator, leaked_secrets, lock_free, no_traceback, write_profile

pytestmark = pytest.mark.usefixtures("scenario_lab")
HELD = ("containerd.io", "docker-ce", "docker-ce-cli")
LIMITS = dict(reboot_timeout_worker_s=20, storage_timeout_s=20, lock_stale_after_s=60, settle_s=0)
OUTCOMES: dict[str, str] = {}     # scenario -> what happened (printed at the end)


class Course:
    def __init__(self, lab: Lab, work) -> None:
        self.lab = lab
        self.op = Operator(work, lab.config)
        self.plain = write_profile(lab.config, work / "plain.toml", **LIMITS)   # the lab's checkout as is
        self.checkout = fixed_kubespray_checkout(lab.config, work)
        self.fixed = write_profile(lab.config, work / "fixed.toml", kubespray=self.checkout, **LIMITS)
        self.held_before = lab.standing().held


@pytest.fixture(scope="module")
def course(scenario_lab, tmp_path_factory) -> Course:
    made = Course(scenario_lab, tmp_path_factory.mktemp("course"))
    yield made
    shutil.rmtree(made.op.control, ignore_errors=True)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _wait_for_child(pid: int, word: str, *, timeout: float) -> int:
    """The child process of `pid` whose command line contains `word` (the gate's checks run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in _children(pid):
            try:
                if word in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
                    return child
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"no child process of {pid} with {word!r} within {timeout}s")


def _wait_until_ended(pid: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running after {timeout}s")


# --------------------------------------------------------------------------- 1: another run holds the lock

def test_another_run_holds_the_lock(course: Course):
    op, lab = course.op, course.lab
    before = lab.standing()
    lab.plant_lock(holder="alice@other-laptop", node="node3", run_id="20261129T000000Z-beef", renewed_s_ago=1)
    run = op.run(course.fixed)
    no_traceback(run)
    # refused by the gate (its preflight sees the lock while node4 is still untouched) or, past
    # the gate, by the lock step: either way before anything on the node changes
    assert run.rc == 1 and run.failed_step() in ("gate", "lock"), run.text[-3000:]
    assert "alice@other-laptop" in run.message() and "node3" in run.message(), run.message()
    after = lab.standing()
    assert (after.lock_holder, after.lock_node) == ("alice@other-laptop", "node3")   # not touched
    assert (after.cordoned, after.noout, after.held) == (before.cordoned, before.noout, before.held)
    assert op.last(run.failed_step()) == "failed"
    OUTCOMES["another run holds the lock"] = (f"refused at the {run.failed_step()} step naming holder and node; "
                                              "nothing changed, the other run's lock untouched")


# --------------------------------------------------------------------------- 2: a stale lock

def test_a_stale_lock_is_taken_over_only_when_asked(course: Course):
    op, lab = course.op, course.lab
    lab.plant_lock(holder="bob@vanished-host", node="node2", run_id="20261128T000000Z-dead", renewed_s_ago=7200)
    run = op.run(course.fixed)
    no_traceback(run)
    assert run.outcomes.get("gate") == "passed", run.text[-3000:]   # a stale lock is a notice, not a block
    assert run.failed_step() == "lock", run.text[-3000:]
    assert "--take-over-stale-lock" in run.message() and "looks gone" in run.message(), run.message()
    standing = lab.standing()
    assert standing.lock_holder == "bob@vanished-host" and not standing.cordoned
    OUTCOMES["stale lock without the option"] = "gate passed with a notice; lock step refused, naming --take-over-stale-lock"


# --------------------------------------------------------------------------- 3: drain blocked by a PDB

def test_drain_blocked_by_a_pdb_past_the_drain_timeout(course: Course):
    op, lab = course.op, course.lab
    namespace, name, spec = lab.node4_pdb()
    course.pdb = (namespace, name, spec)
    since = len(op.journal())
    proc, junit, log = op.start(course.fixed, "--take-over-stale-lock", "--drain-timeout", "8")
    # The gate would refuse a PDB that blocks already (its preflight checks evictions): this one
    # tightens after the gate, as Rook tightens its OSD budgets when another node goes down.
    # Race-free on a loaded machine: once the gate's preflight process runs, the run is held
    # (SIGSTOP) until that process has finished, the PDB is tightened, and the run goes on: the
    # change lands after the gate's checks and before the drain.
    op.wait_journal(lambda r: r["step"] == "gate" and r["status"] == "started", proc=proc, timeout=300, since=since)
    checks = _wait_for_child(proc.pid, "preflight", timeout=120)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        _wait_until_ended(checks, timeout=240)
        lab.set_pdb(namespace, name, {"maxUnavailable": 0})
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    run = op.finish(proc, junit, log, timeout=240)
    no_traceback(run)
    assert run.outcomes.get("lock") == "passed", run.text[-3000:]          # the stale lock was taken over
    assert "taking over stale lock" in run.text
    assert run.failed_step() == "drain", run.text[-3000:]
    message = run.message()
    assert f"PodDisruptionBudget {namespace}/{name}" in message and "timed out after 8s" in message, message
    standing = lab.standing()
    assert standing.cordoned and standing.cordoned_by, "the node is cordoned, as the failure message states"
    assert "still cordoned" in message
    assert standing.evictable_pods, "the PDB-protected pod is still on the node"
    assert not standing.noout and standing.held == course.held_before
    lock_free(lab)
    assert op.last("drain") == "failed"
    OUTCOMES["drain blocked by PDB"] = (f"failed after the 8 s drain timeout naming the PDB and pod; node cordoned, "
                                        f"{len(standing.evictable_pods)} pod left, stale lock taken over then released")


# --------------------------------------------------------------------------- 4: SIGINT inside a wait

def test_sigint_inside_the_drain_wait(course: Course):
    op, lab = course.op, course.lab
    since = len(op.journal())
    proc, junit, log = op.start(course.fixed, "--drain-timeout", "120")
    op.wait_journal(lambda r: r["step"] == "drain" and r["status"] == "started", proc=proc, timeout=120, since=since)
    # inside the wait: node4 cordoned and its evictions refused by the PDB (retried every 5 s)
    wait_until(lambda: proc.poll() is not None or lab.kube.node(NODE).unschedulable, timeout=60,
               what=f"{NODE} cordoned by the drain")
    # A race on purpose: aim the signal into the eviction retries rather than at their start. On a busy
    # machine it may land earlier in the drain; what is asserted holds either way (drain interrupted).
    time.sleep(1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    # Known open defect: rarely a SIGINT is not acted on. Send it again after 12 s
    # and say so, rather than wait out the 120 s drain limit; every other assertion still holds.
    try:
        proc.wait(timeout=12)
    except subprocess.TimeoutExpired:
        warnings.warn("SIGINT was not acted on within 12 s; sent again (known open defect)", stacklevel=2)
        proc.send_signal(signal.SIGINT)
    run = op.finish(proc, junit, log)
    no_traceback(run)
    assert run.rc != 0
    assert op.last("drain") == "interrupted", op.journal()[-3:]
    standing = lab.standing()
    assert standing.cordoned and not standing.noout and standing.held == course.held_before
    lock_free(lab)
    assert "still cordoned" in run.text and "resumes from the journal" in run.text, run.text[-2000:]
    namespace, name, spec = course.pdb
    lab.set_pdb(namespace, name, {"maxUnavailable": spec.get("maxUnavailable", 1)})
    OUTCOMES["SIGINT inside the drain wait"] = "journal: drain interrupted; node cordoned (said so); lock released"


# --------------------------------------------------------------------------- 5: SIGTERM at a step boundary

def test_sigterm_at_a_step_boundary(course: Course):
    op, lab = course.op, course.lab
    since = len(op.journal())
    proc, junit, log = op.start(course.fixed)
    op.wait_journal(lambda r: r["step"] == "drain" and r["status"] == "done", proc=proc, timeout=300, since=since)
    proc.send_signal(signal.SIGTERM)                # between the drain and the noout step
    run = op.finish(proc, junit, log)
    no_traceback(run)
    assert run.rc != 0
    journal = op.journal()
    last = journal[-1]
    # the journal and the node agree: nothing is left 'started' without its end, and the node
    # shows what the journal says was done
    assert last["status"] in ("done", "skipped", "interrupted"), journal[-4:]
    standing = lab.standing()
    lock_free(lab)
    assert standing.cordoned and not standing.evictable_pods          # the drain was done
    if op.last("noout") == "done":
        assert standing.noout
    if op.last("unhold") is None:
        assert standing.held == course.held_before
    assert "KeyboardInterrupt: SIGTERM" in run.text and "Where it stands" in run.text, run.text[-2000:]
    OUTCOMES["SIGTERM at a step boundary"] = (f"stopped at {last['step']} ({last['status']}) right after the drain; "
                                              f"journal and node agree (noout={standing.noout}); lock released")


# --------------------------------------------------------------------------- 5b: a lasting API outage

def test_a_lasting_api_outage_fails_cleanly(course: Course):
    """Every API request answered 503 for 45 s, from just after the lock was taken: the next step
    retries within its bounds, then fails saying the API is unreachable; the run ends in bounded
    time, and the lock it could not release is taken back by the rerun (same holder, same node)."""
    op, lab = course.op, course.lab
    since = len(op.journal())
    proc, junit, log = op.start(course.fixed)
    op.wait_journal(lambda r: r["step"] == "lock" and r["status"] == "done", proc=proc, timeout=120, since=since)
    lab.fault("api-flaky", "--ratio", "1", "--mode", "503", "--for", "45")
    started = time.monotonic()
    run = op.finish(proc, junit, log, timeout=180)
    took = time.monotonic() - started
    lab.clear("api-flaky")
    no_traceback(run)
    assert run.rc == 1, run.text[-3000:]
    step = run.failed_step()
    assert step in ("drain", "noout", "unhold"), run.text[-3000:]
    assert re.search(r"503|Service Unavailable|unreachable|cannot be reached", run.message()), run.message()
    assert op.last(step) == "failed"
    OUTCOMES["a lasting API outage"] = (f"step {step} failed after bounded retries ({took:.0f}s) naming the "
                                        "unavailable API; the rerun took its lock back")


# --------------------------------------------------------------------------- 6: SSH drops during dist-upgrade

SLOW_DPKG = "/etc/dpkg/dpkg.cfg.d/zz-nodegate-slow"
NO_PTY = "/etc/apt/apt.conf.d/99nodegate-no-pty"


def test_ssh_drop_during_dist_upgrade_with_a_flaky_api(course: Course):
    op, lab = course.op, course.lab
    # A slow maintainer step (every dpkg call waits 3 s first) makes a window inside the upgrade
    # where the packages are unpacked but not yet configured; without apt's pty in between, dpkg
    # writes straight into the dropped connection and is cut off there ("dpkg was interrupted").
    lab.ssh(f"echo 'pre-invoke=sleep 3' > {SLOW_DPKG}; echo 'Dpkg::Use-Pty \"0\";' > {NO_PTY}")
    lab.fault("api-flaky", "--ratio", "0.3", "--for", "25")
    proc, junit, log = op.start(course.fixed)
    deadline = time.monotonic() + 240
    dropped = []
    while time.monotonic() < deadline and proc.poll() is None:
        if any("--configure" in cmd and "dpkg" in cmd for _, cmd in lab.node_processes()):
            dropped = lab.drop_ssh()
            break
        time.sleep(0.05)
    assert dropped, f"dpkg --configure never ran on {NODE}: {op.journal()[-3:]}"
    run = op.finish(proc, junit, log, timeout=180)
    no_traceback(run)
    lab.clear("api-flaky")
    assert run.failed_step() == "dist_upgrade", run.text[-3000:]
    assert re.search(r"SSH connection to node4 .*(ended|closed|broke)", run.message()), run.message()
    assert "unexpected exit code 255" not in run.message()
    for step in ("drain", "noout", "unhold"):   # done through the flaky API: transient errors retried
        assert run.outcomes.get(step) == "passed", (step, run.text[-3000:])
    assert re.search(r"nodegate\.kube: retrying", run.text), "no API request was retried: was the API flaky?"
    # dpkg, cut off from its output, ends by itself
    wait_until(lambda: not any("dpkg" in cmd for _, cmd in lab.node_processes()), timeout=60,
               what=f"dpkg on {NODE} ending after the dropped connection")
    standing = lab.standing()
    assert standing.cordoned and standing.noout and not (set(standing.held) & set(HELD))
    lock_free(lab)
    assert "unpacked but not yet configured" in standing.audit, f"dpkg was not cut off: {standing.audit!r}"
    lab.ssh(f"rm -f {SLOW_DPKG} {NO_PTY}")
    OUTCOMES["SSH drop during dist-upgrade (API flaky)"] = (
        "failed naming the lost connection (not as apt's exit code); drain/noout/unhold passed through the flaky "
        "API with retries; dpkg left interrupted (packages unpacked, not configured)")


# --------------------------------------------------------------------------- 7: the node hangs on reboot

def test_hang_on_reboot_then_the_rerun_repairs_dpkg_and_waits_out_of_band(course: Course):
    op, lab = course.op, course.lab
    lab.fault("hang-on-reboot", "--node", NODE)
    run = op.run(course.fixed)
    no_traceback(run)
    assert run.outcomes.get("dist_upgrade") == "passed", run.text[-3000:]   # the interrupted dpkg was repaired
    assert "dpkg --configure -a" in run.text, run.text[-3000:]
    assert run.failed_step() == "reboot", run.text[-3000:]
    message = run.message()
    assert "did not come back within 20s" in message and re.search(r"out of band|BMC", message), message
    status = lab.kube.node(NODE)
    assert not status.is_ready and status.unschedulable
    assert op.last("reboot") == "failed"
    lock_free(lab)
    lab.clear("hang-on-reboot", "--node", NODE)     # clearing boots it, like a BMC power cycle
    from nodegate.core.waits import Done, NotYet, wait_for

    wait_for(lambda: Done(True) if lab.kube.node(NODE).is_ready else NotYet("not Ready"), what="node4 back",
             timeout=120, interval=0.5)
    standing = lab.standing()
    assert standing.audit == "", f"dpkg is still inconsistent after the rerun: {standing.audit}"
    # a kernel installed meanwhile: do-release-upgrade would refuse ("Please reboot before upgrading")
    lab.fault("reboot-required", "--node", NODE)
    assert lab.host().boot.reboot_required().required
    OUTCOMES["hang on the first reboot"] = ("failed after the 20 s reboot limit pointing at out-of-band access; "
                                            "the rerun's dist-upgrade repaired dpkg first")


# --------------------------------------------------------------------------- 7b: SSH drops during do-release-upgrade

def test_ssh_drop_during_do_release_upgrade(course: Course):
    """do-release-upgrade outlives its SSH session (as under screen): the run fails naming the lost
    connection, the upgrade goes on on the node, and the next run waits for it instead of
    judging (or rebooting) a node in the middle of its release upgrade."""
    op, lab = course.op, course.lab
    lab.ssh(f"echo 'pre-invoke=sleep 3' > {SLOW_DPKG}")      # a window inside its apt run
    since = len(op.journal())
    proc, junit, log = op.start(course.fixed)
    deadline = time.monotonic() + 240
    dropped = []
    while time.monotonic() < deadline and proc.poll() is None:
        commands = [cmd for _, cmd in lab.node_processes()]
        if any("do-release-upgrade" in c for c in commands) and any(c.startswith("/usr/bin/dpkg") for c in commands):
            dropped = lab.drop_ssh()
            break
        time.sleep(0.05)
    assert dropped, f"do-release-upgrade never ran dpkg on {NODE}: {op.journal()[-3:]}"
    run = op.finish(proc, junit, log, timeout=180)
    no_traceback(run)
    assert run.failed_step() == "release_upgrade", run.text[-3000:]
    assert re.search(r"SSH connection to node4 .*(ended|closed|broke)", run.message()), run.message()
    # the reboot the hang had left done no longer held (a reboot was required again): done again
    journal = op.journal()[since:]
    assert ("reboot", "done") in {(r["step"], r["status"]) for r in journal}, journal
    assert "needs a reboot again" in run.text, run.text[-3000:]
    still = any("do-release-upgrade" in cmd for _, cmd in lab.node_processes())
    lab.ssh(f"rm -f {SLOW_DPKG}")
    lock_free(lab)
    course.release_went_on = still
    OUTCOMES["a reboot needed again before do-release-upgrade"] = (
        "the rerun rebooted again instead of letting do-release-upgrade refuse ('Please reboot before upgrading')")
    OUTCOMES["SSH drop during do-release-upgrade"] = (
        "failed naming the lost connection; do-release-upgrade " + ("was still running on the node after the run "
                                                                     "ended" if still else "had finished on the node")
        + "; the next run waited for it, then went on")


# --------------------------------------------------------------------------- 8: Kubespray's known error

def test_kubespray_fails_with_a_known_error(course: Course):
    """The rerun after the dropped release upgrade (the lab's checkout, without the operator's
    `force: true`): it finds the release upgrade finished on the node (or waits for it), reboots
    into 22.04, repairs, and meets Kubespray's known docker downgrade error."""
    op, lab = course.op, course.lab
    run = op.run(course.plain)
    no_traceback(run)
    for step in ("dist_upgrade", "reboot", "release_upgrade", "reboot_release", "repair"):
        assert run.outcomes.get(step) == "passed", (step, run.text[-3000:])
    assert run.failed_step() == "kubespray", run.text[-3000:]
    message = run.message()
    assert "known issue" in message and "force: true" in message and "#9114" in message, message
    standing = lab.standing()
    assert not lab.host().boot.reboot_required().required
    assert standing.release == "22.04" and standing.cordoned and standing.noout and standing.audit == ""
    assert not (set(standing.held) & set(HELD)) and "NOT held" in message
    lock_free(lab)
    OUTCOMES["Kubespray known error"] = "failed naming kubespray #9114 and `force: true`; node on 22.04, cordoned"


# --------------------------------------------------------------------------- 10: Kubespray's unknown error

UNKNOWN_TASK = """
- name: Node | a check nobody has seen fail before
  shell: 'echo "kubelet: unexpected cgroup driver skew 42" >&2; exit 3'
"""
BROKEN_YAML = """
- name: Node | a task with a YAML mistake
  shell: echo "kubelet: oops"
"""


def test_kubespray_fails_with_unknown_errors(course: Course):
    """Two failures nodegate has no entry for: Ansible refusing the checkout (a YAML mistake in a
    role) and a task failing on the node. Each is reported with Ansible's own words and where,
    never as a bare rc, and not passed off as a known issue."""
    op, lab = course.op, course.lab
    tasks = course.checkout / "roles/kubernetes/node/tasks/main.yml"
    original = tasks.read_text()
    try:
        tasks.write_text(original + BROKEN_YAML)
        refused = op.run(course.fixed)
        tasks.write_text(original + UNKNOWN_TASK)
        run = op.run(course.fixed)
    finally:
        tasks.write_text(original)
    for one in (refused, run):
        no_traceback(one)
        assert one.failed_step() == "kubespray", one.text[-3000:]
        assert "known issue" not in one.message().split("where")[0], one.message()
    said = refused.message()
    assert "Ansible refused" in said and "mapping values are not allowed" in said and "main.yml" in said, said
    message = run.message()
    assert "a check nobody has seen fail before" in message and "cgroup driver skew 42" in message, message
    standing = lab.standing()
    assert standing.release == "22.04" and standing.cordoned
    lock_free(lab)
    OUTCOMES["Kubespray unknown errors"] = ("a YAML mistake: 'Ansible refused' with its error and file; a failing "
                                            "task: named with its stderr; neither passed off as a known issue")


# --------------------------------------------------------------------------- 11: csi-rbdplugin crash-loops

def test_csi_rbdplugin_crash_loop_after_the_upgrade(course: Course):
    op, lab = course.op, course.lab
    lab.fault("csi-rbd-broken", "--node", NODE)
    run = op.run(course.fixed)
    no_traceback(run)
    for step in ("kubespray", "hold", "uncordon", "unset_noout"):
        assert run.outcomes.get(step) == "passed", (step, run.text[-3000:])
    assert run.failed_step() == "storage_healthy", run.text[-3000:]
    message = run.message()
    assert "csi-rbdplugin" in message and re.search(r"crash|CrashLoopBackOff|restart", message, re.I), message
    assert "within 20" in message or "20s" in message or "20 s" in message, message
    standing = lab.standing()
    assert standing.release == "22.04" and not standing.cordoned and not standing.noout
    assert set(standing.held) == set(HELD)
    lock_free(lab)
    lab.clear("csi-rbd-broken", "--node", NODE)
    OUTCOMES["csi-rbd-broken after the upgrade"] = "storage gate failed after 20 s naming the crash-looping csi-rbdplugin"


# --------------------------------------------------------------------------- 12: ceph-warn during the run, then done

def test_ceph_warn_during_the_run_is_waited_out_and_the_upgrade_completes(course: Course):
    op, lab = course.op, course.lab
    lab.fault("ceph-warn")
    since = len(op.journal())
    proc, junit, log = op.start(course.fixed)
    record = op.wait_journal(lambda r: r["step"] == "storage_healthy" and r["status"] == "started", proc=proc,
                             timeout=180, since=since)
    time.sleep(4)   # how long the warning lasts: a window the run must wait out, not a bet on its speed
    assert proc.poll() is None, "the run did not wait for ceph to be healthy again"
    cleared_at = time.time()
    lab.clear("ceph-warn")
    run = op.finish(proc, junit, log, timeout=300)
    no_traceback(run)
    assert run.rc == 0, run.text[-4000:]
    assert "HEALTH_WARN" in run.text or "OSDMAP_FLAGS" in run.text or "ceph:" in run.text
    standing = lab.standing()
    assert standing.release == "22.04"
    assert set(standing.held) == set(HELD)
    assert all(v.endswith("jammy") or "jammy" in v or v == course.held_before.get(k) for k, v in standing.held.items())
    assert not standing.cordoned and not standing.noout and standing.audit == ""
    assert standing.annotation is None
    assert standing.ceph_healthy
    lock_free(lab)
    journal = op.journal()
    assert journal[-1]["step"] == "complete" and journal[-1]["status"] == "done", journal[-3:]
    assert record
    healthy = [r for r in journal[since:] if r["step"] == "storage_healthy" and r["status"] == "done"]
    assert healthy and healthy[-1]["at"] >= cleared_at, "the storage gate passed while the warning was raised"
    leaks = leaked_secrets(lab.config, op)
    assert not leaks, leaks
    OUTCOMES["ceph-warn during the run, then completion"] = (
        "storage gate waited while HEALTH_WARN, went on within a second of the clear; node4 on 22.04, held at "
        "the jammy builds, uncordoned, no noout, lock free, journal complete, no secret in any report")


# --------------------------------------------------------------------------- 13: 22.04 -> 24.04 (the last leg)

NOBLE = "24.04"
DOCKER_REPO = "/linux/ubuntu"             # the lab's download.docker.com stand-in
LEGACY_KEYRING = "/etc/apt/trusted.gpg"


def _node_fingerprint(lab: Lab) -> dict[str, str]:
    """What a run that changes nothing on node4 leaves exactly as it was: its boot, its packages
    (version and dpkg state, holds included), its apt sources and keyrings, its loaded modules."""
    def out(command: str) -> str:
        return lab.ssh(command).stdout

    return {"boot id": out("cat /proc/sys/kernel/random/boot_id"),
            "packages": out("dpkg-query -W -f='${Package} ${Version} ${Status}\\n'"),
            "sources": out("grep -r . /etc/apt/sources.list /etc/apt/sources.list.d/ || true"),
            "keyrings": out(f"ls -l {LEGACY_KEYRING} /etc/apt/keyrings/ 2>&1 || true"),
            "modules": out("lsmod")}


def _run_results(op: Operator, run_started: float) -> Path:
    """The Allure results folder the last run wrote (its environment.properties says what it read)."""
    written = [p for p in op.reports.rglob("environment.properties") if p.stat().st_mtime >= run_started]
    assert written, f"the run wrote no environment.properties under {op.reports}"
    return max(written, key=lambda p: p.stat().st_mtime).parent


def test_24_04_is_refused_at_the_gate_with_rook_v1_14_12(course: Course):
    """Rook downgraded to v1.14.12 (operator rook/ceph:v1.14.12, its default cephcsi v3.11.0 rolled
    onto csi-rbdplugin): the 24.04 target is refused at the gate by the cephcsi check (rbd.ko.zst,
    rook #14431/#14507), naming what it read, and nothing on node4 or in the cluster changes."""
    op, lab = course.op, course.lab
    assert lab.set_rook("v1.14.12")
    try:
        downgraded = lab.rook_images()
        assert downgraded == ({"rook/ceph:v1.14.12"}, {"quay.io/cephcsi/cephcsi:v3.11.0"}), downgraded
        # taken after the downgrade: the operator's new pod may have landed on node4
        before = lab.standing()
        assert before.release == TARGET and not before.cordoned and not before.noout, before
        fingerprint = _node_fingerprint(lab)
        started = time.time()
        refused = op.run(course.fixed, target=NOBLE, timeout=300)
        no_traceback(refused)
        assert refused.rc == 1, refused.text[-3000:]
        assert refused.failed_step() == "gate", refused.text[-3000:]
        assert not refused.passed(), refused.outcomes                 # no step after the gate ran
        message = refused.message()
        blocking = set(re.findall(r"(?m)^\s+- (test_\w+)", message))
        assert blocking == {"test_cephcsi_for_target"}, message        # Rook's cephcsi alone blocks
        assert re.search(r"cephcsi v3\.11\.0 crash-loops on Ubuntu 24\.04.*v3\.12\.0 or newer is needed", message), message
        assert "Rook v1.14.12" in message, message
        results = _run_results(op, started)
        environment = dict(line.split("=", 1) for line in (results / "environment.properties").read_text().splitlines()
                           if "=" in line)
        assert (environment.get("rook.version"), environment.get("cephcsi.version")) == ("v1.14.12", "v3.11.0"), \
            environment
        # the check's fix, as the report gives it to the operator
        assert any("upgrade Rook to v1.15.0" in f.read_text(errors="replace") for f in results.glob("*-result.json")), \
            f"no result in {results} names the fix"
        after = lab.standing()
        assert _node_fingerprint(lab) == fingerprint, "the refused run changed node4"
        assert (after.release, after.held, after.cordoned, after.noout, after.audit) == \
            (before.release, before.held, before.cordoned, before.noout, before.audit)
        assert after.evictable_pods == before.evictable_pods and after.ceph_healthy
        assert lab.rook_images() == downgraded                        # the run left Rook alone
        lock_free(lab)
        journal = op.journal(target=NOBLE)
        assert (journal[-1]["step"], journal[-1]["status"]) == ("gate", "failed"), journal[-3:]
    finally:
        lab.set_rook(lab.config.rook_version)
    OUTCOMES["24.04 refused with Rook v1.14.12"] = (
        "gate failed on test_cephcsi_for_target: 'cephcsi v3.11.0 crash-loops on Ubuntu 24.04 … (Rook v1.14.12)', "
        "fix 'upgrade Rook to v1.15.0'; report environment rook v1.14.12 / cephcsi v3.11.0; node4 unchanged "
        f"(boot, packages, holds, sources, keyrings), lock free; refused in {refused.seconds:.0f} s")


def _step_seconds(op: Operator, run_id: str) -> dict[str, float]:
    """Per step of one run: from its first `started` record to its last record."""
    spans: dict[str, list[float]] = {}
    for record in op.journal(target=NOBLE):
        if record.get("run_id") == run_id:
            spans.setdefault(record["step"], []).append(record["at"])
    return {step: max(at) - min(at) for step, at in spans.items()}


def test_node4_goes_from_22_04_to_24_04_with_rook_v1_15_9(course: Course):
    """Rook back at v1.15.9 (cephcsi v3.12.3): node4 goes 22.04 -> 24.04 with every step and
    check green, verified on the node itself."""
    op, lab = course.op, course.lab
    assert lab.rook_images() == ({"rook/ceph:v1.15.9"}, {"quay.io/cephcsi/cephcsi:v3.12.3"}), lab.rook_images()
    jammy = lab.standing()
    assert jammy.release == TARGET and set(jammy.held) == set(HELD), jammy
    run = op.run(course.fixed, target=NOBLE, timeout=900)
    no_traceback(run)
    assert run.rc == 0, run.text[-4000:]
    assert run.outcomes and all(o in ("passed", "skipped") for o in run.outcomes.values()), run.outcomes
    for step in ("gate", "release_upgrade", "repair", "kubespray", "hold", "uncordon", "storage_healthy"):
        assert run.outcomes.get(step) == "passed", (step, run.outcomes)
    journal = op.journal(target=NOBLE)
    assert (journal[-1]["step"], journal[-1]["status"]) == ("complete", "done"), journal[-3:]

    host = lab.host()
    release = host.release.os_release()
    assert (release.version_id, release.version_codename) == (NOBLE, "noble"), release
    standing = lab.standing()
    # held again, at the same builds as on 22.04, now noble's (containerd.io's version names no release)
    assert set(standing.held) == set(HELD), standing.held
    assert standing.held == {k: v.replace("ubuntu-jammy", "ubuntu-noble") for k, v in jammy.held.items()}, \
        (jammy.held, standing.held)
    assert all("ubuntu-noble" in v for k, v in standing.held.items() if k != "containerd.io"), standing.held
    assert not standing.cordoned and not standing.noout and standing.audit == "" and standing.annotation is None
    assert standing.ceph_healthy
    lock_free(lab)
    # Docker's source: back on, on noble, once, as Kubespray's one-line entry, its key in a keyring file
    # of its own (trusted.gpg.d); nothing left disabled by the upgrade (deb822 Enabled: no on noble)
    from nodegate.core import aptsources

    files = host.apt.source_files()
    entries = [e for f in files if f.path.endswith((".list", ".sources")) for e in aptsources.entries(f.path, f.text)]
    docker = [e for e in entries if any(DOCKER_REPO in u for u in e.uris)]
    assert len(docker) == 1 and docker[0].enabled and docker[0].codenames == ("noble",), [e.raw for e in docker]
    assert docker[0].format == "one-line" and not docker[0].signed_by, docker[0].raw
    assert host.exists("/etc/apt/trusted.gpg.d/docker.gpg")
    assert not [e.raw for e in entries if not e.enabled and not e.ubuntu_own]
    assert not host.exists(LEGACY_KEYRING)
    update = host.apt.update()
    assert update.report.clean, update.result.output       # no legacy-keyring warning, no NO_PUBKEY
    assert host.modules.is_loaded("rbd")
    assert "rbd" in lab.ssh("cat /etc/modules-load.d/*.conf").stdout.split()
    csi = lab.kube.csi_rbdplugin(NODE)
    assert csi.ready and not csi.crash_looping, csi
    os_image = lab.kube.node(NODE).info.os_image
    assert os_image.startswith("Ubuntu 24.04"), os_image
    lab.nodes.close()

    steps = _step_seconds(op, journal[-1]["run_id"])
    slowest = ", ".join(f"{s} {v:.0f} s" for s, v in sorted(steps.items(), key=lambda kv: -kv[1])[:4])
    OUTCOMES["22.04 -> 24.04 with Rook v1.15.9"] = (
        f"completed in {run.seconds:.0f} s (steps {sum(steps.values()):.0f} s, slowest: {slowest}): os-release "
        "24.04 noble, held at the noble builds, docker source on noble with its key in trusted.gpg.d, no trusted.gpg, apt-get "
        "update clean, rbd loaded and persisted, csi-rbdplugin Ready, uncordoned, no noout, HEALTH_OK, lock free")


def test_scenario_outcomes_summary(course: Course, record_property):
    for name, outcome in OUTCOMES.items():
        print(f"scenario: {name}: {outcome}")
        record_property(name, outcome)
    assert len(OUTCOMES) == 16, f"scenarios that did not report: only {sorted(OUTCOMES)}"
