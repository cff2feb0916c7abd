"""The time budget's pure logic (nodegate.core.budget): percentiles, step durations from journals,
what a node still has to do, the start-or-not decision and the window's end."""
from __future__ import annotations

import datetime as dt

import pytest

from nodegate.core.budget import (
    DEFAULT_STEP_S,
    NodeEstimate,
    Unit,
    decide,
    expectations,
    parse_window_end,
    parse_window_minutes,
    percentile,
    remaining_steps,
    schedule,
    step_samples,
)
from nodegate.core.journal import StepRecord
from nodegate.upgrade import STEP_NAMES


def rec(step: str, status: str, at: float, run: str = "r1") -> StepRecord:
    return StepRecord(step=step, status=status, at=at, run_id=run)


def test_percentile_interpolates_between_closest_ranks():
    assert percentile([10.0], 50) == 10.0 and percentile([10.0], 95) == 10.0
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([1, 2, 3, 4, 5], 95) == pytest.approx(4.8)
    assert percentile([5, 1, 4, 2, 3], 0) == 1 and percentile([5, 1, 4, 2, 3], 100) == 5
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_step_samples_take_started_to_done_of_the_same_run_only():
    node_a = [rec("begin", "started", 0), rec("drain", "started", 10), rec("drain", "started", 12),
              rec("drain", "done", 40), rec("reboot", "started", 50), rec("reboot", "failed", 60),
              rec("reboot", "started", 100, "r2"), rec("reboot", "done", 130, "r2"),
              rec("noout", "skipped", 140, "r2")]
    node_b = [rec("drain", "started", 0, "r3"), rec("drain", "done", 20, "r3")]
    samples = step_samples([node_a, node_b])
    assert samples == {"drain": [30.0, 20.0], "reboot": [30.0]}   # the failed try is no sample, nor the skip


def test_expectations_fall_back_to_the_stated_defaults():
    expected = expectations(["drain", "reboot", "etcd_gate"], {"drain": [10.0, 20.0, 30.0]})
    assert (expected["drain"].p50, expected["drain"].samples) == (20.0, 3)
    assert expected["reboot"].p95 == DEFAULT_STEP_S["reboot"] and expected["reboot"].samples == 0
    assert expected["etcd_gate"].p50 == 60.0 and "default" in expected["etcd_gate"].source
    assert sum(DEFAULT_STEP_S.values()) == pytest.approx(45 * 60, rel=0.02)   # noout's 45 min default


def test_remaining_steps_follow_the_current_attempt():
    steps = ["gate", "lock", "drain", "noout"]
    assert remaining_steps(steps, []) == steps
    older = [rec("begin", "started", 0), rec("gate", "done", 1), rec("lock", "done", 2)]
    assert remaining_steps(steps, older) == ["drain", "noout"]
    assert remaining_steps(steps, older + [rec("begin", "started", 3, "r2")]) == steps   # a new attempt
    done = older + [rec("drain", "done", 4), rec("noout", "done", 5), rec("complete", "done", 6)]
    assert remaining_steps(steps, done) == []
    assert remaining_steps(steps, older + [rec("drain", "failed", 4)]) == ["drain", "noout"]


def _unit(label: str, *p95: float, protected: float = 0.0) -> Unit:
    return Unit(label, tuple(NodeEstimate(f"n{i}", (), p / 2, p, protected) for i, p in enumerate(p95)))


def test_a_batch_lasts_as_long_as_its_longest_node():
    batch = _unit("batch 1", 100.0, 300.0, 200.0)
    assert batch.p95 == 300.0 and batch.p50 == 150.0


def test_decide_against_the_window_and_rooks_timeout():
    unit = _unit("batch 2", 600.0, protected=400.0)
    assert decide(unit, now=0, window_end=None, maintenance_timeout_s=None).starts
    assert decide(unit, now=1000, window_end=1600, maintenance_timeout_s=None).starts        # exactly fits
    late = decide(unit, now=1001, window_end=1600, maintenance_timeout_s=None)
    assert not late.starts and "p95" in late.reason and "batch 2" in late.reason
    rook = decide(unit, now=0, window_end=None, maintenance_timeout_s=300)
    assert not rook.starts and "osdMaintenanceTimeout" in rook.reason


def test_schedule_stops_at_the_first_unit_that_does_not_fit():
    units = [_unit("a", 100.0), _unit("b", 100.0), _unit("c", 10.0)]
    plan = schedule(units, now=0, window_end=210, maintenance_timeout_s=None)
    assert [u.label for u, _, _ in plan.fits] == ["a", "b", "c"] and not plan.left
    plan = schedule(units, now=0, window_end=150, maintenance_timeout_s=None)
    assert [u.label for u, _, _ in plan.fits] == ["a"]
    assert [u.label for u in plan.left] == ["b", "c"]       # c would fit, but nothing after a stop starts
    assert plan.fits[0][1] == 50.0 and plan.fits[0][2] == 100.0


def test_node_estimate_sums_the_steps_still_to_do_and_the_protected_stretch():
    expected = expectations(STEP_NAMES, {})
    whole = NodeEstimate.of("n", STEP_NAMES, expected, STEP_NAMES)
    assert whole.p95 == pytest.approx(sum(DEFAULT_STEP_S[s] for s in STEP_NAMES if s in DEFAULT_STEP_S)
                                      + 60.0 * sum(s not in DEFAULT_STEP_S for s in STEP_NAMES))
    after = NodeEstimate.of("n", ["storage_healthy", "postflight", "unlock"], expected, STEP_NAMES)
    assert after.protected_p95 == 0.0
    protected = STEP_NAMES[STEP_NAMES.index("noout"):STEP_NAMES.index("unset_noout") + 1]
    assert whole.protected_p95 == pytest.approx(sum(expected[s].p95 for s in protected))


@pytest.mark.parametrize("text, offset", [("23:30+01:00", 60), ("23:30-0530", -330), ("23:30Z", 0),
                                          ("23:30 UTC", 0)])
def test_window_end_with_an_offset(text, offset):
    end = parse_window_end(text)
    now = dt.datetime(2026, 12, 7, 20, 0, tzinfo=dt.timezone.utc)
    resolved = end.resolve(now)
    assert resolved.utcoffset() == dt.timedelta(minutes=offset)
    assert (resolved.hour, resolved.minute) == (23, 30) and resolved > now


def test_window_end_in_a_named_zone_and_after_midnight():
    end = parse_window_end("02:00 Europe/Berlin")
    now = dt.datetime(2026, 12, 7, 20, 0, tzinfo=dt.timezone.utc)      # 21:00 in Berlin
    resolved = end.resolve(now)
    assert resolved.date() == dt.date(2026, 12, 8) and resolved.astimezone(dt.timezone.utc).hour == 1


@pytest.mark.parametrize("text", ["23:30", "25:00+01:00", "23:61Z", "23:30 Mars/Olympus", "soon", "23:30+15:00"])
def test_window_end_refuses_what_it_cannot_place(text):
    with pytest.raises(ValueError):
        parse_window_end(text)


def test_window_minutes():
    assert parse_window_minutes("90") == 90.0 and parse_window_minutes("0.5") == 0.5
    for bad in ("0", "-5", "inf", "nan", "an hour"):
        with pytest.raises(ValueError):
            parse_window_minutes(bad)
