"""A journal is bound to one incarnation of its node (nodegate.core.incarnation), the Node
annotation must mirror it, and a stale journal is put aside, never deleted (nodegate.journal)."""
from __future__ import annotations

import json

from nodegate.cluster.resume import REFUSE, RESUME, STALE, judge
from nodegate.core.incarnation import (
    ABSENT,
    AGREES,
    FOREIGN,
    LAGS,
    Incarnation,
    annotation_agreement,
    boot_history,
    stale_reasons,
)
from nodegate.core.journal import Journal, StepRecord

LIVE = Incarnation(machine_id="m1", node_uid="u1", cluster_uid="c1", boot_id="b1", boot_time=1000.0)


def same(**change) -> Incarnation:
    data = LIVE.as_data()
    data.update(change)
    return Incarnation(**data)


def test_an_incarnation_round_trips_through_the_journal_and_an_old_journal_has_none():
    assert Incarnation.from_data(LIVE.as_data()) == LIVE
    assert Incarnation.from_data(None) is None
    assert Incarnation.from_data({"machine_id": "m1"}) is None
    assert same(machine_id="").missing() == ["/etc/machine-id"]


def test_the_same_node_in_the_same_boot_is_not_stale():
    assert stale_reasons(LIVE, LIVE, boot_history(LIVE, [])) == []


def test_another_machine_registration_or_cluster_is_stale():
    for change, words in ((dict(machine_id="m2"), "/etc/machine-id differs"),
                          (dict(node_uid="u2"), "registered again"),
                          (dict(cluster_uid="c2"), "another cluster with the same name")):
        reasons = stale_reasons(LIVE, same(**change), boot_history(LIVE, []))
        assert len(reasons) == 1 and words in reasons[0], reasons


def test_a_journal_without_an_incarnation_is_stale():
    assert "records no node identity" in stale_reasons(None, LIVE, boot_history(None, []))[0]


def test_boots_the_journal_asked_for_are_known_and_others_are_not():
    data = [{"reboot_boot_id_before": "b1", "reboot_requested_at": 1500.0}, {"reboot_boot_id_after": "b2"}]
    history = boot_history(LIVE, data)
    assert history.known == {"b1", "b2"} and history.last_request_at == 1500.0
    assert stale_reasons(LIVE, same(boot_id="b2", boot_time=1502.0), history) == []
    # down and up again after the request, before this run recorded the boot after it
    assert stale_reasons(LIVE, same(boot_id="b9", boot_time=1502.0), boot_history(LIVE, data[:1])) == []
    # a boot that began before the request, or when no request was ever made: outside this upgrade
    assert "never saw" in stale_reasons(LIVE, same(boot_id="b9", boot_time=1400.0), boot_history(LIVE, data[:1]))[0]
    assert "never asked" in stale_reasons(LIVE, same(boot_id="b9", boot_time=1400.0), boot_history(LIVE, []))[0]


def test_a_request_without_a_time_proves_no_later_boot():
    history = boot_history(LIVE, [{"reboot_boot_id_before": "b1"}])
    assert history.last_request_at is None
    assert stale_reasons(LIVE, same(boot_id="b9", boot_time=9999.0), history)


RECORDS = [("r1", "begin", "started", 10.0), ("r1", "drain", "started", 11.0), ("r1", "drain", "done", 12.0)]


def test_the_annotation_agrees_lags_is_absent_or_foreign():
    assert annotation_agreement(None, target="22.04", records=RECORDS).kind == ABSENT
    last = {"run": "r1", "step": "drain", "status": "done", "target": "22.04", "at": 12}
    assert annotation_agreement(last, target="22.04", records=RECORDS).kind == AGREES
    earlier = dict(last, status="started", at=11)
    assert annotation_agreement(earlier, target="22.04", records=RECORDS).kind == LAGS
    assert annotation_agreement(dict(last, run="r9"), target="22.04", records=RECORDS).kind == FOREIGN
    assert annotation_agreement(dict(last, target="24.04"), target="22.04", records=RECORDS).kind == FOREIGN
    assert annotation_agreement(dict(last, at=99), target="22.04", records=RECORDS).kind == FOREIGN


def records(incarnation=LIVE):
    data = {"incarnation": incarnation.as_data()} if incarnation else {}
    return [StepRecord("begin", "started", 10.0, "r1", data=data), StepRecord("drain", "done", 12.0, "r1")]


def test_judge_resumes_refuses_or_calls_the_journal_stale():
    agreeing = {"run": "r1", "step": "drain", "status": "done", "target": "22.04", "at": 12}
    resumed = judge(records=records(), live=LIVE, annotation=agreeing, node="node4", target="22.04", journal_path="j")
    assert resumed.verdict == RESUME
    absent = judge(records=records(), live=LIVE, annotation=None, node="node4", target="22.04", journal_path="j")
    assert absent.verdict == RESUME and "proven on the node" in absent.text
    foreign = judge(records=records(), live=LIVE, annotation=dict(agreeing, run="r7"), node="node4", target="22.04",
                    journal_path="j")
    assert foreign.verdict == REFUSE and "--restart-journal" in foreign.fix and "r7" in foreign.fix
    stale = judge(records=records(), live=same(node_uid="u2"), annotation=agreeing, node="node4", target="22.04",
                  journal_path="j")
    assert stale.verdict == STALE and "u2" in stale.text
    old = judge(records=records(None), live=LIVE, annotation=agreeing, node="node4", target="22.04", journal_path="j")
    assert old.verdict == STALE


def test_a_stale_journal_is_renamed_with_the_reason_never_deleted(tmp_path):
    journal = Journal(root=tmp_path, cluster="lab", node="node4", target="22.04", run_id="r2")
    assert journal.archive("nothing to keep") is None
    journal.record("begin", "started", incarnation=LIVE.as_data())
    journal.record("drain", "done")
    kept = journal.archive("the kube-system namespace uid differs")
    assert kept is not None and kept.exists() and not journal.path.exists()
    assert kept.parent == journal.path.parent and kept.name.startswith("node4-22.04.archived-")
    last = json.loads(kept.read_text().splitlines()[-1])
    assert (last["step"], last["status"]) == ("journal", "archived") and "namespace uid" in last["detail"]
    assert journal.records() == []          # the next run starts a new journal at the same path
    # an older record format (no incarnation, no data) stays readable
    journal.path.write_text(json.dumps({"step": "drain", "status": "done", "at": 1.0, "run_id": "old"}) + "\n")
    assert [r.step for r in journal.records()] == ["drain"]


def test_an_annotation_that_got_no_further_than_the_gate_or_the_lock_is_no_upgrade_under_way():
    from nodegate.core.incarnation import annotation_names_open_upgrade

    assert not annotation_names_open_upgrade(None)
    for step in ("begin", "gate", "lock", "complete"):
        assert not annotation_names_open_upgrade({"run": "r", "step": step, "status": "failed"})
    assert annotation_names_open_upgrade({"run": "r", "step": "drain", "status": "started"})
