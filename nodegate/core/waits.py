"""Bounded waits with progress: every wait in nodegate goes through here.

A wait asks a *probe* again and again until it answers ``Done(value)``; ``NotYet(reason)``
means "not yet, and this is what I see". Known-transient errors (``TransientError``: a refused
connection, a 5xx, a timeout) count as "not yet" with the error as the reason; anything else
(a ``PermanentError``, a bug) ends the wait at once and is re-raised unchanged, because
retrying cannot fix it. Each wait is bounded by ``timeout`` and logs
``waiting for <what>: <reason> (elapsed/limit)`` at least every ``progress_every`` seconds, so a
terminal never sits silent. On timeout a ``WaitTimeout`` names what was last seen.

Where the API can push changes (a Node's Ready condition, its bootID), the watch-based helpers
react within the round trip of one watch event instead of one poll interval.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import tenacity

from nodegate.core.errors import PermanentError, TransientError
from nodegate.core.interrupts import checkpoint

if TYPE_CHECKING:  # only for type names: waits sits below kube and nodes
    pass

log = logging.getLogger("nodegate.waits")

T = TypeVar("T")

# -- named bounds of the procedure's waits on the control plane --------------------------------------
# Before an etcd node goes down: every member healthy. A member restarting (the node's own, on a
# resumed run after its reboot) answers within seconds; a member down for good fails the gate then.
ETCD_HEALTHY_WAIT_S = 120.0
# After an etcd node returns: its member healthy and caught up with the leader's raft index. A
# member back from a reboot replays its log in seconds; one sent a snapshot may take minutes.
ETCD_CATCH_UP_WAIT_S = 300.0
# Before a control-plane node is uncordoned: its static pods' mirror pods Ready. The kubelet starts
# them from /etc/kubernetes/manifests at boot and again when Kubespray's kubeadm upgrade rewrites
# them; kube-apiserver's readiness waits for etcd and its informers, which takes minutes on big clusters.
CONTROL_PLANE_PODS_WAIT_S = 600.0
# How often those waits ask again.
CONTROL_PLANE_POLL_S = 2.0


@dataclass(frozen=True)
class Done(Generic[T]):
    """The probe's answer when the awaited state holds; ``value`` is returned by the wait."""
    value: T = None  # type: ignore[assignment]


@dataclass(frozen=True)
class NotYet:
    """The probe's answer while the awaited state does not hold yet; ``reason`` is what it sees."""
    reason: str


Probe = Callable[[], "Done[T] | NotYet"]


class WaitTimeout(PermanentError):
    """A bounded wait ran out of time. ``last_seen`` is what the probe last reported."""

    def __init__(self, *, what: str, limit: float, elapsed: float, last_seen: str,
                 fix: str | None = None) -> None:
        super().__init__(
            f"gave up waiting for {what} after {elapsed:.1f}s (limit {limit:g}s); last seen: {last_seen}",
            fix=fix)
        self.what = what
        self.limit = limit
        self.elapsed = elapsed
        self.last_seen = last_seen


@dataclass(frozen=True)
class WaitProgress:
    """One progress report of a running wait (also handed to an optional ``on_progress``)."""
    what: str
    reason: str
    elapsed: float
    limit: float

    def __str__(self) -> str:
        return f"waiting for {self.what}: {self.reason} ({self.elapsed:.1f}s/{self.limit:g}s)"


class _Pending(Exception):
    """Internal: the probe said NotYet (or hit a transient error); tenacity retries on it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProgressReporter:
    """Rate-limits progress lines to one per ``every`` seconds (plus the first one)."""

    def __init__(self, *, what: str, limit: float, every: float,
                 on_progress: Callable[[WaitProgress], None] | None) -> None:
        self.what, self.limit, self.every, self.on_progress = what, limit, every, on_progress
        self.started = time.monotonic()
        self.last_report: float | None = None
        self.last_reason = "nothing yet"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def seen(self, reason: str) -> None:
        self.last_reason = reason
        now = time.monotonic()
        if self.last_report is None or now - self.last_report >= self.every:
            self.last_report = now
            progress = WaitProgress(self.what, reason, now - self.started, self.limit)
            log.info("%s", progress)
            if self.on_progress is not None:
                self.on_progress(progress)


def wait_for(probe: Probe, *, what: str, timeout: float, interval: float = 1.0,
             progress_every: float = 5.0, retry_on: tuple[type[BaseException], ...] = (TransientError,),
             fix: str | None = None,
             on_progress: Callable[[WaitProgress], None] | None = None) -> Any:
    """Ask ``probe`` every ``interval`` seconds until it returns ``Done(value)``; return ``value``.

    The probe itself must be bounded (its own I/O timeouts): the wait checks the deadline between
    attempts and makes one last attempt at the deadline. ``retry_on`` lists the exception types
    that mean "not yet" (default: ``TransientError``); every other exception is re-raised at once.
    ``fix`` goes into the ``WaitTimeout`` (what an operator should look at when this wait fails).
    """
    __tracebackhide__ = True
    if timeout <= 0 or interval <= 0:
        raise ValueError("timeout and interval must be positive")
    reporter = ProgressReporter(what=what, limit=timeout, every=progress_every, on_progress=on_progress)
    deadline = time.monotonic() + timeout

    def attempt() -> Any:
        checkpoint()   # a Ctrl-C a finalizer swallowed ends the wait here
        try:
            answer = probe()
        except retry_on as exc:
            raise _Pending(f"{type(exc).__name__}: {_one_line(exc)}") from exc
        if isinstance(answer, Done):
            return answer.value
        if isinstance(answer, NotYet):
            raise _Pending(answer.reason)
        raise TypeError(f"a probe for {what!r} must return Done(...) or NotYet(...), not {answer!r}")

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reporter.seen(exc.reason if isinstance(exc, _Pending) else str(exc))

    # Sleep at most until the deadline, so the last attempt lands on it rather than after it.
    def until_deadline(state: tenacity.RetryCallState) -> float:
        return max(0.0, min(interval, deadline - time.monotonic()))

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_Pending),
        stop=tenacity.stop_after_delay(timeout),
        wait=until_deadline,
        before_sleep=before_sleep,
        reraise=False,
    )
    try:
        return retrying(attempt)
    except tenacity.RetryError as exc:
        last = exc.last_attempt.exception()
        reason = last.reason if isinstance(last, _Pending) else str(last)
        raise WaitTimeout(what=what, limit=timeout, elapsed=reporter.elapsed(), last_seen=reason,
                          fix=fix) from (last.__cause__ if last is not None else None)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
