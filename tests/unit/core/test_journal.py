import json

from nodegate.core.journal import Journal, new_run_id


def journal(tmp_path, run_id="r1"):
    return Journal(root=tmp_path, cluster="lab", node="node4", target="22.04", run_id=run_id)


def test_run_ids_sort_by_time():
    assert new_run_id(1_000_000) < new_run_id(2_000_000)


def test_a_rerun_sees_what_an_earlier_run_finished(tmp_path):
    first = journal(tmp_path, "r1")
    first.record("cordon", "started")
    first.record("cordon", "done", cordoned_by_us=True)
    first.record("record-held", "done", held={"containerd.io": "1.6.4-1"})
    first.record("dist-upgrade", "started")
    rerun = journal(tmp_path, "r2")
    assert rerun.finished("cordon") and rerun.finished("record-held")
    assert not rerun.finished("dist-upgrade")  # started, never ended: re-verify, not done
    assert rerun.value("held") == {"containerd.io": "1.6.4-1"}
    assert rerun.value("cordoned_by_us") is True
    assert rerun.summary()["step"] == "dist-upgrade"


def test_a_line_cut_short_by_a_crash_is_ignored(tmp_path):
    j = journal(tmp_path)
    j.record("cordon", "done")
    with open(j.path, "a") as fh:
        fh.write('{"step": "drain", "sta')
    assert [r.step for r in j.records()] == ["cordon"]


def test_hostile_names_stay_one_path_component(tmp_path):
    j = Journal(root=tmp_path, cluster="../x", node="a/b;$(rm)", target="22.04", run_id="r")
    j.record("x", "done")
    assert j.path.parent.parent == tmp_path / "journal"
    assert json.loads(j.path.read_text())["step"] == "x"


def test_unknown_status_is_refused(tmp_path):
    try:
        journal(tmp_path).record("x", "maybe")
    except ValueError as exc:
        assert "maybe" in str(exc)
    else:
        raise AssertionError("an unknown status was accepted")
