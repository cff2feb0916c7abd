"""wait_for's logic with real, time-bounded probes (files appearing, counters), no mocks."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from nodegate.core.errors import PermanentError, TransientError
from nodegate.core.waits import Done, NotYet, WaitProgress, WaitTimeout, wait_for


def test_probe_that_becomes_done_returns_its_value(tmp_path: Path):
    flag = tmp_path / "ready"
    timer = threading.Timer(0.3, flag.write_text, args=("42",))
    timer.start()
    looks_after: list[float] = []    # the probe's looks once the file was there
    try:
        def probe():
            if flag.exists():
                looks_after.append(time.monotonic())
                return Done(int(flag.read_text()))
            return NotYet("file not written yet")

        started = time.monotonic()
        value = wait_for(probe, what="the flag file", timeout=5, interval=0.05)
        took = time.monotonic() - started
    finally:
        timer.cancel()
    assert value == 42
    # Reacts at its first look after the change (not at the timeout): one look saw the file.
    assert took >= 0.25 and len(looks_after) == 1, (took, looks_after)


def test_timeout_names_what_and_last_seen_and_is_bounded():
    calls = []

    def probe():
        calls.append(time.monotonic())
        return NotYet(f"3 pods still on the node (try {len(calls)})")

    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        wait_for(probe, what="node4 drained", timeout=0.6, interval=0.1, fix="look at the PDBs")
    took = time.monotonic() - started
    err = info.value
    assert isinstance(err, PermanentError)
    assert err.what == "node4 drained" and err.limit == 0.6
    assert err.last_seen == f"3 pods still on the node (try {len(calls)})"
    text = str(err)
    assert "node4 drained" in text and "limit 0.6s" in text and "last seen: 3 pods" in text
    assert "fix: look at the PDBs" in text
    # Bounded: it waits out its limit, with a last try at the deadline, and tries no more often than
    # every interval (0.6 s / 0.1 s: at most 7 tries; a busy machine makes fewer)
    assert took >= 0.6, took
    assert calls[-1] - started >= 0.55
    assert 2 <= len(calls) <= 8, len(calls)


def test_transient_errors_are_retried_and_reported_as_reason():
    attempts = []

    def probe():
        attempts.append(1)
        if len(attempts) < 3:
            raise TransientError("connection refused by 127.16.3.1:6443")
        return Done("up")

    assert wait_for(probe, what="the API", timeout=3, interval=0.02) == "up"
    assert len(attempts) == 3


def test_transient_error_at_timeout_is_the_last_seen():
    def probe():
        raise TransientError("ssh: connect to host 127.16.1.4 port 22: Connection refused")

    with pytest.raises(WaitTimeout) as info:
        wait_for(probe, what="SSH on node4", timeout=0.3, interval=0.05)
    assert "TransientError: ssh: connect to host 127.16.1.4 port 22: Connection refused" == info.value.last_seen
    assert isinstance(info.value.__cause__, TransientError)


def test_permanent_error_is_reraised_at_once():
    attempts = []
    boom = PermanentError("host key mismatch for node4")

    def probe():
        attempts.append(1)
        raise boom

    with pytest.raises(PermanentError) as info:
        wait_for(probe, what="SSH on node4", timeout=5, interval=0.05)
    assert info.value is boom
    assert len(attempts) == 1      # at once: no second try, no wait


def test_unknown_errors_are_not_retried():
    attempts = []

    def probe():
        attempts.append(1)
        return {}["missing"]

    with pytest.raises(KeyError):
        wait_for(probe, what="a bug", timeout=5, interval=0.05)
    assert len(attempts) == 1


def test_progress_is_logged_with_elapsed_and_limit(caplog):
    seen: list[WaitProgress] = []

    def probe():
        return NotYet("HEALTH_WARN OSD_DOWN")

    with caplog.at_level(logging.INFO, logger="nodegate.waits"):
        with pytest.raises(WaitTimeout):
            wait_for(probe, what="ceph healthy", timeout=0.5, interval=0.05, progress_every=0.2,
                     on_progress=seen.append)
    lines = [r.getMessage() for r in caplog.records if r.name == "nodegate.waits"]
    # First report at once, then at most one per 0.2 s: up to 4 lines in 0.5 s (fewer on a busy
    # machine), not one per attempt (10).
    assert 1 <= len(lines) <= 4, lines
    assert lines[0].startswith("waiting for ceph healthy: HEALTH_WARN OSD_DOWN (")
    assert lines[0].endswith("s/0.5s)")
    assert [str(p) for p in seen] == lines
    assert all(p.elapsed >= 0 and p.limit == 0.5 for p in seen)
    assert all(b.elapsed - a.elapsed >= 0.2 - 1e-6 for a, b in zip(seen, seen[1:])), [p.elapsed for p in seen]


def test_a_probe_returning_something_else_is_a_bug():
    with pytest.raises(TypeError, match="must return Done"):
        wait_for(lambda: True, what="x", timeout=1, interval=0.1)


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        wait_for(lambda: Done(), what="x", timeout=0, interval=0.1)
