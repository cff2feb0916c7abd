"""A journal is a hint, never proof: three scenarios of node4's upgrade (20.04 → 22.04) in which the
journal and the node (or the cluster) disagree, run as an operator runs it (`pytest procedures/ …
--execute`, the same command every time), each asserting what was proven on the node:

1. A reboot-required left after the release step: the run is stopped (SIGTERM, at a step
   boundary, as test_course.py stops its runs) once `reboot_release` is done; something then
   leaves /var/run/reboot-required on the node (a package installed by hand, say). The rerun
   finds that `reboot_release` does not "still hold" (a reboot is pending) and reboots the node
   again: a new boot id, read on the node by this test.
2. The Node annotation `nodegate.io/upgrade` removed by hand mid-upgrade: the rerun has nothing
   in the cluster that mirrors its journal, so it proves every finished step on the node (the
   gate is skipped only because the node is cordoned by this journal's run), writes the
   annotation again and goes on; it is stopped again after the Kubespray step.
3. The lab brought down and up again (same directory, same cluster name `nodegate-lab`): the
   journal of node4 of the first lab stopped after the release upgrade (scenarios 1 and 2). The
   run on the new node4 says the journal is stale (another machine-id, Node uid and cluster
   uid), keeps it aside renamed, runs the gate and completes 20.04 → 22.04 with two real reboots,
   each boot id read on the node by this test.

The scenarios share one upgrade (a whole upgrade costs minutes) and run in file order.
"""
from __future__ import annotations

import json
import shutil
import signal
import time

import pytest
from labkit import fixed_kubespray_checkout, nodegate
from scenariotools import NODE, TARGET, Lab, Operator, lock_free, no_traceback, write_profile

pytestmark = pytest.mark.usefixtures("scenario_lab")
HELD = ("containerd.io", "docker-ce", "docker-ce-cli")
LIMITS = dict(reboot_timeout_worker_s=60, storage_timeout_s=60, lock_stale_after_s=60, settle_s=0)
OUTCOMES: dict[str, str] = {}
SECONDS: dict[str, float] = {}


class Course:
    def __init__(self, lab: Lab, work) -> None:
        self.lab = lab
        self.work = work
        self.op = Operator(work, lab.config)
        self.profile = self.fixed_profile("fixed")

    def fixed_profile(self, name: str):
        where = self.work / name
        where.mkdir()
        checkout = fixed_kubespray_checkout(self.lab.config, where)   # the operator's fix for kubespray #9114
        return write_profile(self.lab.config, where / "fixed.toml", kubespray=checkout, **LIMITS)


@pytest.fixture(scope="module")
def course(scenario_lab, tmp_path_factory) -> Course:
    made = Course(scenario_lab, tmp_path_factory.mktemp("trust"))
    yield made
    shutil.rmtree(made.op.control, ignore_errors=True)


def boot_id(lab: Lab) -> str:
    return lab.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()


def node_boots(lab: Lab) -> int:
    """How many times the lab's supervisor booted node4 (read on this machine, not through the harness)."""
    return int(json.loads((lab.config.dir / "nodes" / NODE / "state.json").read_text())["boot_count"])


def stop_after(op: Operator, profile, step: str, *, timeout: float = 600):
    """Run the procedure and stop it with SIGTERM once the journal shows ``step`` done (a step boundary)."""
    since = len(op.journal())
    started = time.monotonic()
    proc, junit, log = op.start(profile)
    op.wait_journal(lambda r: r["step"] == step and r["status"] == "done", proc=proc, timeout=timeout, since=since)
    proc.send_signal(signal.SIGTERM)
    run = op.finish(proc, junit, log, timeout=120)
    run.seconds = time.monotonic() - started
    no_traceback(run)
    return run, op.journal()[since:]


def ends(records: list[dict], step: str) -> list[tuple[str, str]]:
    return [(r["status"], r["detail"]) for r in records if r["step"] == step]


# --------------------------------------------------------------------------- 1: a reboot pending after the release step

def test_a_reboot_required_left_after_the_release_step_is_rebooted_away(course: Course):
    op, lab = course.op, course.lab
    first, journal = stop_after(op, course.profile, "reboot_release")
    SECONDS["first run, stopped after reboot_release"] = first.seconds
    assert first.rc != 0 and ("reboot_release", "done") in {(r["step"], r["status"]) for r in journal}, \
        first.text[-3000:]
    assert lab.standing().release == TARGET
    before_boot, boots = boot_id(lab), node_boots(lab)
    # what a package installed after the release upgrade leaves (update-notifier's marker)
    lab.ssh("echo '*** System restart required ***' > /var/run/reboot-required && "
            "echo libc6 > /var/run/reboot-required.pkgs")

    rerun, journal = stop_after(op, course.profile, "reboot_release")
    SECONDS["rerun that reboots again"] = rerun.seconds
    reboot_release = ends(journal, "reboot_release")
    assert ("started", "reboot into the new release and wait for SSH and Ready") in reboot_release, reboot_release
    assert not any(status == "skipped" for status, _ in reboot_release), reboot_release
    assert "needs a reboot again (libc6)" in rerun.text, rerun.text[-3000:]
    # seen on the node: a new boot, and nothing pending any more
    after_boot = boot_id(lab)
    assert after_boot != before_boot and node_boots(lab) == boots + 1, (before_boot, after_boot)
    assert lab.ssh("test ! -e /var/run/reboot-required", check=False).returncode == 0
    recorded = [r["data"] for r in journal if r["step"] == "reboot_release" and r["data"]]
    assert any(d.get("reboot_release_boot_id_before") == before_boot for d in recorded), recorded
    assert any(d.get("reboot_release_boot_id_after") == after_boot for d in recorded), recorded
    # the steps before it were proven on the node, not taken from the journal
    for step in ("drain", "noout", "reboot", "release_upgrade"):
        skipped = [d for s, d in ends(journal, step) if s == "skipped"]
        assert skipped and ("still holds:" in skipped[-1] or "which holds" in skipped[-1]), (step, ends(journal, step))
    OUTCOMES["a reboot-required left after the release step"] = (
        f"reboot_release did not still hold (libc6 pending); the rerun rebooted node4: boot id {before_boot} → "
        f"{after_boot} (read on the node), nothing pending; first run {first.seconds:.0f} s, rerun "
        f"{rerun.seconds:.0f} s")


# --------------------------------------------------------------------------- 2: the annotation removed by hand

def test_the_node_annotation_removed_by_hand_mid_upgrade(course: Course):
    from nodegate.core.journal import ANNOTATION

    op, lab = course.op, course.lab
    assert lab.standing().annotation is not None
    lab.kube.set_node_annotation(NODE, key=ANNOTATION, value=None)
    assert lab.standing().annotation is None
    finished = {r["step"] for r in op.journal() if r["status"] in ("done", "skipped")} - {"gate", "lock", "begin"}

    rerun, journal = stop_after(op, course.profile, "kubespray")
    SECONDS["rerun without the annotation"] = rerun.seconds
    assert "no nodegate.io/upgrade annotation" in rerun.text and "proven on the node" in rerun.text, rerun.text[-3000:]
    # the gate was skipped only on live proof: node4 cordoned by this journal's run
    gate = ends(journal, "gate")
    assert gate and gate[-1][0] == "skipped" and "is cordoned by run" in gate[-1][1], gate
    # every step an earlier run finished was proven on the node now, or done again
    for step in sorted(finished):
        last_status, detail = ends(journal, step)[-1] if ends(journal, step) else (None, "")
        assert last_status in ("skipped", "done"), (step, ends(journal, step))
        if last_status == "skipped":    # proven on the node, or a step with nothing to do on a worker
            assert ("still holds:" in detail or "which holds" in detail
                    or "is not in the inventory's" in detail), (step, detail)
    assert ends(journal, "repair")[-1][0] in ("done", "skipped") and ends(journal, "kubespray")[-1][0] == "done"
    standing = lab.standing()
    assert standing.annotation is not None, "the rerun mirrors its journal on the Node again"
    assert standing.cordoned and standing.release == TARGET
    lock_free(lab)
    OUTCOMES["the Node annotation removed by hand"] = (
        f"the rerun said so, skipped the gate on the live cordon of this journal's run, proved "
        f"{len(finished)} finished steps on the node ({', '.join(sorted(finished))}), wrote the annotation again "
        f"and ran repair and Kubespray ({rerun.seconds:.0f} s)")


# --------------------------------------------------------------------------- 3: the lab down and up again

def test_a_lab_brought_down_and_up_again_makes_the_journal_stale(course: Course, lab):
    op = course.op
    # node4 of the first lab stopped after the release upgrade and before the end. The SIGTERM sent
    # once the journal shows kubespray done may land after the next step (hold: one apt-mark) is done too.
    finished = [r["step"] for r in op.journal() if r["status"] in ("done", "skipped")]
    assert "kubespray" in finished and "complete" not in finished, finished[-3:]
    old_records = len(op.journal())
    started = time.monotonic()
    nodegate("lab", "down", "--dir", str(lab.dir))
    nodegate("lab", "up", "--dir", str(lab.dir), "--nodes", str(len(lab.nodes)), "--net", str(lab.net))
    SECONDS["lab down and up"] = time.monotonic() - started
    fresh = Lab(lab)
    try:
        fresh.restore()                                    # toolbox running, nodes Ready, ceph healthy
        assert fresh.standing().release == "20.04" and not fresh.standing().cordoned
        course.lab = fresh
        profile = course.fixed_profile("fixed-again")      # the new lab's checkout, with the same fix
        machine_id = fresh.ssh("cat /etc/machine-id").stdout.strip()
        boot0, boots = boot_id(fresh), node_boots(fresh)

        run = op.run(profile, timeout=900)
        SECONDS["the run on the new node4"] = run.seconds
        no_traceback(run)
        assert run.rc == 0, run.text[-4000:]
        assert "the journal is stale" in run.text and "kept as" in run.text, run.text[-4000:]
        for words in ("/etc/machine-id differs", "registered again", "another cluster with the same name"):
            assert words in run.text, words
        # the old journal is kept aside, renamed, whole, its last line saying why
        journal_dir = op.reports / "runs" / "journal" / "nodegate-lab"
        kept = sorted(journal_dir.glob(f"{NODE}-{TARGET}.archived-*.jsonl"))
        assert len(kept) == 1, list(journal_dir.iterdir())
        kept_lines = [json.loads(line) for line in kept[0].read_text().splitlines()]
        assert len(kept_lines) == old_records + 1 and kept_lines[-1]["status"] == "archived"
        # the new journal: bound to the new node4, the gate run (not skipped), complete
        journal = op.journal()
        assert journal[0]["step"] == "begin" and journal[0]["data"]["incarnation"]["machine_id"] == machine_id
        assert ("gate", "done") in {(r["step"], r["status"]) for r in journal}
        assert not any(r["step"] == "gate" and r["status"] == "skipped" for r in journal)
        assert run.outcomes.get("gate") == "passed" and "preflight passed" in " ".join(d for _, d in ends(journal, "gate"))
        assert journal[-1]["step"] == "complete" and journal[-1]["status"] == "done"
        # two real reboots: the boot ids the journal recorded are the ones read on the node
        data = {k: v for r in journal for k, v in r["data"].items() if "boot_id" in k}
        boot2 = boot_id(fresh)
        assert data["reboot_boot_id_before"] == boot0, data
        assert data["reboot_release_boot_id_before"] == data["reboot_boot_id_after"], data
        assert data["reboot_release_boot_id_after"] == boot2, data
        assert len({boot0, data["reboot_boot_id_after"], boot2}) == 3, data
        assert node_boots(fresh) == boots + 2
        standing = fresh.standing()
        assert standing.release == TARGET and set(standing.held) == set(HELD), standing
        assert not standing.cordoned and not standing.noout and standing.annotation is None
        lock_free(fresh)
        OUTCOMES["the lab brought down and up again"] = (
            f"the run on the new node4 called the journal stale (machine-id, Node uid and cluster uid differ), kept "
            f"it as {kept[0].name}, ran the gate and completed 20.04 → 22.04 with two reboots (boot ids {boot0} → "
            f"{data['reboot_boot_id_after']} → {boot2}, read on the node) in {run.seconds:.0f} s; lab down and up "
            f"{SECONDS['lab down and up']:.0f} s")
    finally:
        fresh.kube.close()


def test_journal_trust_outcomes(course: Course, record_property):
    for name, outcome in OUTCOMES.items():
        print(f"scenario: {name}: {outcome}")
        record_property(name, outcome)
    for what, seconds in SECONDS.items():
        print(f"time: {what}: {seconds:.0f} s")
    assert len(OUTCOMES) == 3, f"scenarios that did not report: only {sorted(OUTCOMES)}"
