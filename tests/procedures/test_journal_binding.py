"""Whether a run may resume a journal, decided against the live lab (nodegate.upgrade.Upgrade.begin,
driven directly like test_steps.py): a journal bound to another incarnation is put aside, an
annotation naming another journal is refused with a named fix, and `--restart-journal` is the
way out that deletes nothing."""
from __future__ import annotations

import json
import time

import pytest

from nodegate.core.journal import ANNOTATION, Journal
from nodegate.core.knowledge import ubuntu_release
from nodegate.upgrade.engine import StepFailed, Upgrade, UpgradeOptions


def make(lab_nodes, tmp_path, *, restart: bool = False) -> Upgrade:
    profile = lab_nodes.profile
    run_id = f"test-{time.time():.3f}"
    journal = Journal(root=tmp_path, cluster=profile.name, node="node4", target="22.04", run_id=run_id)
    return Upgrade(profile=profile, node=profile.node("node4"), target=ubuntu_release("22.04"), journal=journal,
                   nodes=lab_nodes.nodes, kube=lab_nodes.kube, ceph=lab_nodes.ceph, lock=None,
                   options=UpgradeOptions(run_id=run_id, restart_journal=restart), check_runner=None)


def annotate(lab_nodes, value: dict | None) -> None:
    lab_nodes.kube.set_node_annotation("node4", key=ANNOTATION, value=json.dumps(value) if value else None)


def test_the_first_record_binds_the_journal_to_the_live_node(lab_nodes, tmp_path, restore_node4):
    up = make(lab_nodes, tmp_path)
    assert "starting the upgrade" in up.begin()
    bound = up.journal.records()[0].data["incarnation"]
    host = lab_nodes.host("node4")
    assert bound["machine_id"] == host.read_file("/etc/machine-id").strip()
    assert bound["boot_id"] == host.boot.boot_id()
    assert bound["node_uid"] == lab_nodes.kube.node("node4").raw["metadata"]["uid"]
    assert bound["cluster_uid"] == lab_nodes.kube.namespace_uid("kube-system")
    rerun = make(lab_nodes, tmp_path)
    assert "resuming" in rerun.begin() and rerun.agreement is not None


def test_a_journal_of_another_incarnation_is_put_aside_and_the_run_starts_from_the_gate(lab_nodes, tmp_path,
                                                                                          restore_node4):
    up = make(lab_nodes, tmp_path)
    up.begin()
    up.journal.record("drain", "done", cordoned_by=up.options.run_id)
    lab_nodes.cli("reset", "node4")          # node4 installed again: a new machine-id and boot
    rerun = make(lab_nodes, tmp_path)
    decided = rerun.begin()
    assert "the journal is stale" in decided and "/etc/machine-id differs" in decided, decided
    kept = list(up.journal.path.parent.glob("node4-22.04.archived-*.jsonl"))
    assert len(kept) == 1 and "drain" in kept[0].read_text()
    assert [r.step for r in rerun.records()] == ["begin"] and rerun.agreement is None   # the gate runs


def test_an_annotation_of_another_journal_is_refused_with_a_named_fix(lab_nodes, tmp_path, restore_node4):
    up = make(lab_nodes, tmp_path)
    up.begin()
    annotate(lab_nodes, {"run": "20261101T000000Z-aaaa", "target": "22.04", "step": "drain", "status": "done",
                         "at": 1})
    with pytest.raises(StepFailed) as refused:
        make(lab_nodes, tmp_path).begin()
    text = str(refused.value)
    assert "another journal" in text and "--restart-journal" in text and "20261101T000000Z-aaaa" in text, text
    assert up.journal.path.exists(), "a refusal keeps the journal where it is"
    # the way out: --restart-journal keeps the journal aside (renamed) and starts from the gate
    restarted = make(lab_nodes, tmp_path, restart=True)
    decided = restarted.begin()
    assert "--restart-journal was given" in decided and "kept as" in decided, decided
    assert list(up.journal.path.parent.glob("node4-22.04.archived-*.jsonl"))
    assert [r.step for r in restarted.records()] == ["begin"]


def test_an_upgrade_under_way_with_no_journal_here_is_refused(lab_nodes, tmp_path, restore_node4):
    annotate(lab_nodes, {"run": "20261101T000000Z-bbbb", "target": "22.04", "step": "reboot", "status": "started",
                         "at": 1})
    with pytest.raises(StepFailed) as refused:
        make(lab_nodes, tmp_path).begin()
    assert "no journal of it" in str(refused.value) and "--restart-journal" in str(refused.value)
    assert "starting the upgrade" in make(lab_nodes, tmp_path, restart=True).begin()
