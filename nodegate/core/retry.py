"""Retry schedules as named, documented settings, and the one logger of retries.

Each policy says how often a failing call is tried again and how long it sleeps between tries;
the caller decides which errors are worth it (a TransientError, never a ConflictError: that one is
read again and decided again by its caller, a bounded number of times, see ``CONFLICT_REREADS``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tenacity


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``attempts`` tries (and, with ``limit_s``, no try started after that many seconds),
    sleeping by ``wait`` between them."""
    name: str
    attempts: int
    wait: tenacity.wait.wait_base
    limit_s: float | None = None

    def retrying(self, *, retry: Callable[[BaseException], bool], before_sleep: Callable[..., None],
                 attempts: int | None = None, limit_s: float | None = None) -> tenacity.Retrying:
        """A tenacity.Retrying on this schedule (``attempts``/``limit_s`` override it for one call)."""
        stop = tenacity.stop_after_attempt(attempts or self.attempts)
        limit = limit_s if limit_s is not None else self.limit_s
        if limit is not None:
            stop = stop | tenacity.stop_after_delay(limit)
        return tenacity.Retrying(retry=tenacity.retry_if_exception(retry), stop=stop, wait=self.wait,
                                 before_sleep=before_sleep, reraise=True)


# One Kubernetes API request. Ten attempts with the back-off capped at 1 s take about 8 s, as six
# capped at 3 s did: a lasting outage fails as soon as before, but a control plane failing 30% of
# requests no longer fails one call in 1,400 outright (0.3^6; a run makes about a hundred calls
# while the API flaps) but one in 170,000 (0.3^10). No try starts after 30 s.
KUBE_REQUEST = RetryPolicy("Kubernetes API request", attempts=10, limit_s=30.0,
                           wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=1.0, jitter=0.2))
# Asking the API server for its version when a profile is checked: a few quick tries, then the
# profile's cluster is reported unreachable before anything runs.
KUBE_CHECK_ATTEMPTS = 4
# One `ceph …` command that did not answer (monitors electing, the toolbox pod restarting):
# three tries, 0.5 s then 1 s apart (exponential, capped at 4 s).
CEPH_COMMAND = RetryPolicy("ceph command", attempts=3, wait=tenacity.wait_exponential(multiplier=0.5, max=4))
# How often a write guarded by a resourceVersion (cordon, a Lease) reads again and decides again
# after a 409 Conflict, before it gives up; taking the upgrade lock competes with other runs and
# gets more.
CONFLICT_REREADS = 3
LOCK_TAKE_REREADS = 5


def log_retry(log: logging.Logger, what: str, attempts: int, *, describe: Callable[[BaseException], str] = str,
              quiet: Callable[[], bool] = lambda: False) -> Callable[[tenacity.RetryCallState], None]:
    """tenacity's before_sleep: one warning per retry naming the call, the sleep, the attempt and
    why it failed (the first line of the error)."""
    def before_sleep(state: tenacity.RetryCallState) -> None:
        if quiet():
            return
        exc = state.outcome.exception() if state.outcome else None
        log.warning("retrying %s in %.1fs (attempt %d/%d failed: %s)", what,
                    state.next_action.sleep if state.next_action else 0, state.attempt_number,
                    attempts, (_first_line(describe(exc)) or type(exc).__name__) if exc else "?")
    return before_sleep


def _first_line(text: Any) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""
