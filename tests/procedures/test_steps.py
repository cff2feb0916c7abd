"""Single steps and the lock, driven through nodegate.upgrade.engine directly against the lab: the cases
that are slow or impossible to reach through a whole run (a PDB that never allows the drain, a
node that never comes back, a lock held by someone else)."""
from __future__ import annotations

import dataclasses
import time

import pytest
from labkit import wait_until

from nodegate.cluster.lock import LOCK_NAME, LOCK_NAMESPACE, ClusterLock, LockHeld, read_lock
from nodegate.core.journal import Journal
from nodegate.core.knowledge import ubuntu_release
from nodegate.upgrade.engine import NodeDidNotComeBack, Upgrade, UpgradeOptions


def make_upgrade(lab_nodes, tmp_path, *, node: str = "node4", lock: bool = False, **upgrade_settings) -> Upgrade:
    profile = lab_nodes.profile
    if upgrade_settings:
        profile = dataclasses.replace(profile, upgrade=dataclasses.replace(profile.upgrade, **upgrade_settings))
    run_id = f"test-{time.time():.0f}"
    journal = Journal(root=tmp_path, cluster=profile.name, node=node, target="22.04", run_id=run_id)
    cluster_lock = ClusterLock(kube=lab_nodes.kube, node=node, run_id=run_id, stale_after_s=600) if lock else None
    up = Upgrade(profile=profile, node=profile.node(node), target=ubuntu_release("22.04"), journal=journal,
                 nodes=lab_nodes.nodes, kube=lab_nodes.kube, ceph=lab_nodes.ceph, lock=cluster_lock,
                 options=UpgradeOptions(run_id=run_id), check_runner=None)
    up.begin()
    return up


def test_drain_blocked_by_a_pdb_fails_naming_pod_and_pdb(lab_nodes, tmp_path, restore_node4):
    lab_nodes.cli("fault", "pdb-block", "--node", "node4")
    up = make_upgrade(lab_nodes, tmp_path, drain_timeout_s=7)
    started = time.monotonic()
    with pytest.raises(Exception) as failure:
        up.perform("drain")
    elapsed = time.monotonic() - started
    text = str(failure.value)
    assert "PodDisruptionBudget" in text and "timed out" in text, text
    assert "/" in text.split("PodDisruptionBudget", 1)[1], "the PDB is named namespace/name"
    # the drain timeout is kept (waited out) and finite (the drain stopped at it, saying so)
    assert elapsed >= 7 and "limit 7s" in text, (elapsed, text)
    assert lab_nodes.kube.node("node4").unschedulable, "a failed drain leaves the node cordoned"
    assert up.journal.status_of("drain") == "failed"
    assert "still cordoned" in up.standing()


def test_reboot_timeout_names_what_was_seen_and_out_of_band_access(lab_nodes, tmp_path, restore_node4):
    lab_nodes.cli("fault", "hang-on-reboot", "--node", "node4")
    up = make_upgrade(lab_nodes, tmp_path, reboot_timeout_worker_s=6)
    with pytest.raises(NodeDidNotComeBack) as failure:
        up.perform("reboot")
    text = str(failure.value)
    assert "did not come back within 6s" in text and "worker" in text
    assert "last seen" in text and "out of band" in text and "BMC" in text, text
    assert up.journal.status_of("reboot") == "failed"
    assert up.value("reboot_boot_id_before"), "the boot id before the reboot is in the journal for a rerun"


def test_lock_is_exclusive_resumable_and_taken_over_only_when_stale_and_asked(lab_nodes):
    kube = lab_nodes.kube
    kube.delete_lease(LOCK_NAMESPACE, LOCK_NAME)
    try:
        ours = ClusterLock(kube=kube, node="node4", run_id="run-a", stale_after_s=2)
        assert "taken" in ours.acquire()
        info = read_lock(kube)
        assert (info.holder, info.node, info.run_id) == (ours.holder, "node4", "run-a")

        # another machine may not take it, even asking for a take-over, while it is fresh
        other = ClusterLock(kube=kube, node="node3", run_id="run-b", stale_after_s=2, holder="ops@elsewhere")
        with pytest.raises(LockHeld) as held:
            other.acquire(take_over_stale=True)
        assert ours.holder in str(held.value) and "node4" in str(held.value)

        # the same command from this machine for the same node (after a crash) takes it back
        rerun = ClusterLock(kube=kube, node="node4", run_id="run-c", stale_after_s=2)
        assert "taken back" in rerun.acquire()
        ours._keeper.stop()           # the "crashed" run's renewals stop
        rerun._keeper.stop()
        # not renewed for longer than stale_after_s: its holder is gone
        wait_until(lambda: read_lock(kube).stale(after_s=2), timeout=30, what="the lock not renewed for 2 s")
        with pytest.raises(LockHeld) as stale:
            other.acquire()
        assert "--take-over-stale-lock" in str(stale.value.fix) and "renewed" in str(stale.value.fix)
        assert "taken over" in other.acquire(take_over_stale=True)
        assert read_lock(kube).holder == "ops@elsewhere"
        assert rerun.release().startswith("not released"), "a run never releases a lock it lost"
        assert other.release() == "released"
        assert read_lock(kube) is None
    finally:
        kube.delete_lease(LOCK_NAMESPACE, LOCK_NAME)


def test_a_node_cordoned_before_the_upgrade_is_left_cordoned(lab_nodes, tmp_path, restore_node4):
    lab_nodes.kube.cordon("node4")                     # by someone else: no nodegate record
    up = make_upgrade(lab_nodes, tmp_path)
    assert up.perform("drain").status in ("done", "skipped")
    assert not up.value("cordoned_by"), "the cordon was not this upgrade's"
    outcome = up.perform("uncordon")
    assert outcome.status == "skipped" and "left as found" in outcome.detail
    status = lab_nodes.kube.node("node4")
    assert status.unschedulable and status.cordoned_by is None


def test_a_node_this_upgrade_cordoned_is_uncordoned_once_and_only_by_it(lab_nodes, tmp_path, restore_node4):
    up = make_upgrade(lab_nodes, tmp_path)
    assert up.perform("drain").status == "done"
    assert lab_nodes.kube.node("node4").cordoned_by == up.options.run_id
    # a rerun (new run id, same journal) still knows the cordon is this upgrade's
    rerun = make_upgrade(lab_nodes, tmp_path)
    assert rerun.value("cordoned_by") == up.options.run_id
    assert rerun.perform("uncordon").status == "done"
    assert not lab_nodes.kube.node("node4").unschedulable
    assert rerun.perform("uncordon").status == "skipped"
