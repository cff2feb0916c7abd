"""The procedure end to end on the lab, as an operator runs it: plan mode, a gate that blocks, a
rolling upgrade of two workers that first stops at a known Kubespray failure and then resumes
from the journal, and an interruption in the middle of a reboot wait."""
from __future__ import annotations

import signal

from labkit import wait_until

from nodegate.cluster.lock import acquire_lock, read_lock
from nodegate.upgrade import STEP_NAMES

THROUGH_DIST_UPGRADE = STEP_NAMES[:STEP_NAMES.index("dist_upgrade") + 1]


def _state(lab_nodes, name: str) -> dict:
    host = lab_nodes.host(name)
    status = lab_nodes.kube.node(name)
    return {"boot_id": host.boot.boot_id(), "release": host.release.os_release().version_id,
            "held": host.packages.held(), "cordoned": status.unschedulable,
            "noout": name in lab_nodes.ceph.noout_hosts(), "lock": read_lock(lab_nodes.kube)}


def _root_command(lab_nodes, command: str) -> tuple[str, str]:
    """How the plan shows a root command on node4: through sudo when the lab logs in as ubuntu."""
    user = lab_nodes.config.ssh_user
    if user == "root":
        return "[node4 (ssh root@127.", f"] {command}"
    return f"[node4 (ssh {user}@127.", f", as root via sudo)] sudo {command}"


def test_plan_mode_prints_every_step_and_changes_nothing(procedure, lab_nodes, restore_node4):
    before = _state(lab_nodes, "node4")
    run = procedure(execute=False)
    assert run.ret == 0, run.text
    out = run.stdout
    assert "nodegate upgrade plan (nothing was changed)" in out
    # the exact commands, with where they run
    for line in ("[ceph] ceph osd set-group noout node4",
                 "apt-mark unhold -- containerd.io docker-ce docker-ce-cli",
                 "Dpkg::Options::=--force-confold",
                 *_root_command(lab_nodes, "do-release-upgrade -f DistUpgradeViewNonInteractive"),
                 "--limit=node4", "-e kube_version=v1.25.6", "--skip-tags=multus",
                 "docker-ce=5:20.10.20~3-0~ubuntu-jammy",
                 "[ceph] ceph osd unset-group noout node4"):
        assert line in out, f"{line!r} missing from the plan:\n{out}"
    for number in range(1, len(STEP_NAMES) + 1):
        assert f"\n{number:2d}. " in out, f"step {number} missing from the plan"
    assert not run.outcomes, "no procedure step may run without --execute"
    after = _state(lab_nodes, "node4")
    assert after == before, f"plan mode changed the node: {before} -> {after}"
    assert procedure.journal() == [], "plan mode must not write a journal"
    results = procedure.reports / "runs"
    assert list(results.glob("*/plan.txt")), "the plan is kept with the run's results"
    assert list(results.glob("*/results/*-result.json")), "the plan is an Allure result too"
    # without --node nothing of the procedure runs, and no plan is made either
    bare = procedure(execute=False, node=None)
    assert not bare.outcomes and "nodegate upgrade plan" not in bare.stdout
    assert "deselected" in bare.stdout and bare.ret == 5, bare.text[-2000:]


def test_gate_blocks_and_nothing_is_touched(procedure, lab_nodes, restore_node4):
    """Another run's lock (a fresh Lease held for node3) blocks the gate: nothing changes."""
    acquire_lock(lab_nodes.kube, holder="someone@elsewhere", node="node3", run_id="other-run")
    before = _state(lab_nodes, "node4")
    run = procedure()
    assert run.ret == 1
    assert run.outcomes[("node4", "gate")] == "failed"
    assert run.steps("node4", "passed") == []
    assert set(run.steps("node4", "skipped")) == set(STEP_NAMES[1:])
    message = run.messages[("node4", "gate")]
    assert "preflight checks for node4 did not pass" in message and "nothing was changed" in message
    assert "someone@elsewhere" in message, message
    after = _state(lab_nodes, "node4")
    assert {k: v for k, v in after.items() if k != "lock"} == {k: v for k, v in before.items() if k != "lock"}
    assert after["lock"].holder == "someone@elsewhere", "the other run's lock must be left alone"
    records = [(r["step"], r["status"]) for r in procedure.journal()]
    assert records[0] == ("begin", "started") and records[-1] == ("gate", "failed")
    assert {step for step, _ in records} == {"begin", "gate"}, records


def test_rolling_upgrade_stops_at_the_gate_on_a_known_issue_then_completes(procedure, lab_nodes, fixed_kubespray):
    """`--node workers` over the lab's unpatched Kubespray v2.21 checkout: the gate of node3 reads
    the docker package task and stops on kubespray #9114 with the line to add, before any change;
    node4 is not touched either. With the operator's fix in the checkout the same command upgrades
    node3 and then node4 (health gate between them)."""
    lab_nodes.restore("node3", "node4")
    try:
        boots = {n: lab_nodes.boot_count(n) for n in ("node3", "node4")}
        node3_before, node4_before = _state(lab_nodes, "node3"), _state(lab_nodes, "node4")
        first = procedure(node="workers")
        assert first.ret == 1
        assert first.failed() == [("node3", "gate")], first.text[-3000:]
        message = first.messages[("node3", "gate")]
        assert "kubespray #9114 fix missing: add `    force: true` to " in message and "nothing was changed" in message
        assert first.steps("node4", "passed") == [] and len(first.steps("node4", "skipped")) == len(STEP_NAMES)
        for name, before in (("node3", node3_before), ("node4", node4_before)):
            after = _state(lab_nodes, name)
            assert {k: v for k, v in after.items() if k != "lock"} == {k: v for k, v in before.items() if k != "lock"}
        assert lab_nodes.boot_count("node3") == boots["node3"]

        second = procedure(node="workers", cluster=fixed_kubespray)
        assert second.ret == 0, second.text[-4000:]
        assert second.failed() == []
        assert lab_nodes.boot_count("node3") == boots["node3"] + 2
        assert lab_nodes.boot_count("node4") == boots["node4"] + 2
        assert "waiting for the cluster gate after node3" in second.text or "cluster gate passed" in second.text
        journal3 = procedure.journal("node3")
        assert journal3[-1]["step"] == "complete" and journal3[-1]["status"] == "done"
        node4_seconds = sum(t for (n, _), t in second.times.items() if n == "node4")
        print(f"\nfull procedure for node4: {node4_seconds:.1f}s of steps (run {second.seconds:.1f}s for both)")
        for name in ("node3", "node4"):
            _assert_upgraded(lab_nodes, name)
    finally:
        lab_nodes.restore("node3", "node4")


def _assert_upgraded(lab_nodes, name: str) -> None:
    """Verified on the node itself, not from the harness's own record."""
    host = lab_nodes.host(name)
    release = host.release.os_release()
    assert (release.version_id, release.version_codename) == ("22.04", "jammy")
    assert host.packages.held() == {"containerd.io": "1.6.4-1", "docker-ce": "5:20.10.20~3-0~ubuntu-jammy",
                                    "docker-ce-cli": "5:20.10.20~3-0~ubuntu-jammy"}
    # the repair's end state, which Kubespray's docker role leaves alone: its own one-line entry,
    # the key in a keyring file of its own (trusted.gpg.d), no legacy keyring
    docker = [s for f in host.apt.source_files() for s in f.sources if "/linux/ubuntu" in s.uri]
    assert len(docker) == 1 and docker[0].enabled and docker[0].suite == "jammy" and not docker[0].signed_by, docker
    assert not host.exists("/etc/apt/trusted.gpg")
    assert host.exists("/etc/apt/trusted.gpg.d/docker.gpg")
    report = host.apt.update().report
    assert report.clean, report
    assert host.modules.is_loaded("rbd") and "rbd" in host.read_file("/etc/modules-load.d/rbd.conf").split()
    status = lab_nodes.kube.node(name)
    assert status.is_ready and not status.unschedulable and status.cordoned_by is None
    assert "nodegate.io/upgrade" not in status.annotations
    assert name not in lab_nodes.ceph.noout_hosts()
    assert lab_nodes.ceph.status().healthy_in_full
    lock = read_lock(lab_nodes.kube)
    assert lock is None or not lock.held


def test_interrupted_in_a_reboot_wait_then_resumed(procedure, lab_nodes, fixed_kubespray, restore_node4, journal_wait):
    """SIGTERM while node4 hangs in its first reboot: the journal says `interrupted`, the lock is
    released, the node stays cordoned; the same command then waits for that reboot instead of
    asking for another, and the next run — which stops after step 9 — picks up there."""
    lab_nodes.cli("fault", "hang-on-reboot", "--node", "node4")
    boots = lab_nodes.boot_count("node4")
    proc = procedure.start(cluster=fixed_kubespray)
    try:
        journal_wait(procedure, lambda r: r["step"] == "reboot" and "reboot_boot_id_before" in r["data"],
                         timeout=300, proc=proc)
        # node4 down (and held down by the fault): the run can only be inside its wait for SSH now
        wait_until(lambda: lab_nodes.node_state("node4") == "down" or proc.poll() is not None, timeout=120,
                   what="node4 down in its first reboot")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc != 0
    records = procedure.journal()
    assert (records[-1]["step"], records[-1]["status"]) == ("reboot", "interrupted"), records[-3:]
    lock = read_lock(lab_nodes.kube)
    assert lock is None or not lock.held, "an interrupted run must not leave the lock held"
    status = lab_nodes.kube.node("node4")
    assert status.unschedulable and status.cordoned_by, "the node stays cordoned, as the journal says"
    assert '"reboot"' in status.annotations.get("nodegate.io/upgrade", ""), status.annotations

    lab_nodes.cli("fault", "hang-on-reboot", "--node", "node4", "--clear")   # the node boots now
    upto = " or ".join(f"{i:02d}-{name}" for i, name in enumerate(STEP_NAMES[:STEP_NAMES.index("reboot_release") + 1], 1))
    resumed = procedure("-k", upto, cluster=fixed_kubespray)
    assert resumed.ret == 0, resumed.text[-3000:]
    assert "already asked to reboot" in resumed.text
    # one boot for the interrupted reboot, one for the release upgrade's: none asked twice
    assert lab_nodes.boot_count("node4") == boots + 2
    assert lab_nodes.host("node4").release.os_release().version_id == "22.04"
    statuses = [(r["step"], r["status"]) for r in procedure.journal() if r["step"] in ("reboot", "reboot_release")]
    assert statuses[-1] == ("reboot_release", "done") and ("reboot", "done") in statuses


def test_a_killed_run_is_resumed_by_the_same_command(procedure, lab_nodes, fixed_kubespray, restore_node4,
                                                     journal_wait):
    """kill -9 (a crashed laptop) after step 5: the lock stays held and the journal ends mid-way; the
    same command from the same machine takes its lock back and continues after step 5."""
    proc = procedure.start(cluster=fixed_kubespray)
    try:
        journal_wait(procedure, lambda r: r["step"] == "unhold" and r["status"] == "done", timeout=300, proc=proc)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    lock = read_lock(lab_nodes.kube)
    assert lock is not None and lock.held and lock.node == "node4", "a killed run cannot release its lock"
    assert lab_nodes.kube.node("node4").unschedulable
    upto = " or ".join(f"{i:02d}-{name}" for i, name in enumerate(THROUGH_DIST_UPGRADE, 1))
    resumed = procedure("-k", upto, cluster=fixed_kubespray)
    assert resumed.ret == 0, resumed.text[-3000:]
    records = procedure.journal()
    lock_done = [r for r in records if r["step"] == "lock" and r["status"] == "done"]
    assert "taken back" in lock_done[-1]["detail"], "the lock of the killed run is taken back without an option"
    run_ids = {r["run_id"] for r in records}
    assert len(run_ids) == 2
    last = records[-1]["run_id"]
    statuses = {r["step"]: r["status"] for r in records if r["run_id"] == last}
    assert statuses["drain"] == statuses["noout"] == statuses["unhold"] == "skipped", statuses
    assert statuses["dist_upgrade"] in ("done", "skipped")
    assert lab_nodes.host("node4").packages.upgradable().names == ()
    lock = read_lock(lab_nodes.kube)
    assert lock is None or not lock.held
