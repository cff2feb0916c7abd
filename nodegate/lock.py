"""The cluster-wide upgrade lock: one coordination.k8s.io Lease, so only one run upgrades a node at a time.

The Lease (``kube-system/nodegate-upgrade-lock`` by default) names the holder (user@machine:pid),
and in annotations the node being upgraded, the run id, the ticket and when it was taken. While a
run holds it, a background thread renews it (``renewTime``) every few seconds, so "nobody renewed
it for ``stale_after_s``" means the holder is gone (crashed, killed, laptop closed).

Taking a lock someone else holds:
- a fresh lock (renewed recently) is never taken: ``LockHeld`` names the holder, node and run;
- a stale lock is taken over only when the operator says so (``--take-over-stale-lock``);
- one exception, so a crashed run can resume with the same command: a lock held by a process of
  *this* machine that no longer exists, for the *same* node, is taken back without the option
  (the journal of that node says where the crashed run stopped).

Every write goes through nodegate.kube with the Lease's resourceVersion as a guard, so two runs
racing for the lock cannot both win: the loser sees a ConflictError and reads the lock again.
"""
from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodegate.errors import PermanentError, TransientError
from nodegate.kube import ConflictError

if TYPE_CHECKING:
    from nodegate.kube import Kube, LeaseInfo

log = logging.getLogger("nodegate.lock")

NAMESPACE = "kube-system"
NAME = "nodegate-upgrade-lock"
PREFIX = "nodegate.io/"
RENEW_EVERY_S = 10.0


class LockHeld(PermanentError):
    """Another run holds the upgrade lock (and it may not be taken over)."""


@dataclass(frozen=True)
class LockOwner:
    """Who holds (or wants) the lock."""
    holder: str          # user@machine:pid — the Lease's holderIdentity
    node: str
    run_id: str
    ticket: str = ""

    @property
    def machine(self) -> str:
        return self.holder.split("@", 1)[-1].rsplit(":", 1)[0]

    @property
    def pid(self) -> int | None:
        try:
            return int(self.holder.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            return None

    def annotations(self, *, since: dt.datetime) -> dict[str, str]:
        return {PREFIX + "node": self.node, PREFIX + "run-id": self.run_id, PREFIX + "ticket": self.ticket,
                PREFIX + "since": since.isoformat(timespec="seconds")}


def this_holder() -> str:
    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class LockState:
    """The lock as read from the Lease: who, what for, and how old its last renewal is."""
    held: bool
    owner: LockOwner | None
    renewed_ago_s: float | None
    lease: "LeaseInfo | None"

    def describe(self) -> str:
        if not self.held or self.owner is None:
            return "the upgrade lock is free"
        age = f"{self.renewed_ago_s:.0f}s ago" if self.renewed_ago_s is not None else "never"
        since = self.lease.annotations.get(PREFIX + "since", "?") if self.lease else "?"
        ticket = f", ticket {self.owner.ticket}" if self.owner.ticket else ""
        return (f"the upgrade lock (Lease {NAMESPACE}/{NAME}) is held by {self.owner.holder} for node "
                f"{self.owner.node or '?'} (run {self.owner.run_id or '?'}{ticket}), taken {since}, last renewed {age}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ClusterLock:
    """Take, keep (renew in the background) and release the cluster-wide upgrade lock."""

    def __init__(self, *, kube: "Kube", owner: LockOwner, stale_after_s: float,
                 namespace: str = NAMESPACE, name: str = NAME, renew_every_s: float = RENEW_EVERY_S) -> None:
        self.kube = kube
        self.owner = owner
        self.stale_after_s = float(stale_after_s)
        self.namespace = namespace
        self.name = name
        self.renew_every_s = renew_every_s
        self._lease: LeaseInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    @property
    def held(self) -> bool:
        return self._lease is not None

    # -- reading ----------------------------------------------------------------------------
    def state(self) -> LockState:
        lease = self.kube.get_lease(self.namespace, self.name)
        if lease is None or not lease.holder:
            return LockState(held=False, owner=None, renewed_ago_s=None, lease=lease)
        a = lease.annotations
        owner = LockOwner(holder=lease.holder, node=a.get(PREFIX + "node", ""), run_id=a.get(PREFIX + "run-id", ""),
                          ticket=a.get(PREFIX + "ticket", ""))
        stamp = lease.renew_time or lease.acquire_time
        age = (dt.datetime.now(dt.timezone.utc) - stamp).total_seconds() if stamp else None
        return LockState(held=True, owner=owner, renewed_ago_s=age, lease=lease)

    def _crashed_run_of_ours(self, other: LockOwner) -> bool:
        """The lock was left by a run on this machine, for the same node, whose process is gone."""
        return (other.machine == self.owner.machine and other.node == self.owner.node
                and other.pid is not None and other.pid != os.getpid() and not _pid_alive(other.pid))

    # -- taking -----------------------------------------------------------------------------
    def acquire(self, *, take_over_stale: bool = False) -> str:
        """Take the lock; returns what happened (for the report). Raises LockHeld when another run
        holds it and it may not be taken."""
        for _ in range(5):   # only ConflictErrors (a race with another run) loop
            state = self.state()
            duration = max(1, int(self.stale_after_s))
            try:
                if state.lease is None:
                    self._set(self.kube.create_lease(namespace=self.namespace, name=self.name, holder=self.owner.holder,
                                                     duration_s=duration, annotations=self._annotations()))
                    how = "taken (it was free)"
                elif not state.held:
                    self._set(self.kube.replace_lease(state.lease, holder=self.owner.holder, duration_s=duration,
                                                      annotations=self._annotations()))
                    how = "taken (it was released)"
                else:
                    assert state.owner is not None
                    how = self._take_held(state, take_over_stale, duration)
            except ConflictError:
                log.info("the upgrade lock changed while taking it; reading it again")
                continue
            log.info("upgrade lock %s by %s for node %s", how, self.owner.holder, self.owner.node)
            self._start_renewing()
            return how
        raise TransientError(f"the upgrade lock (Lease {self.namespace}/{self.name}) kept changing while it was taken",
                             fix="another run is competing for it: check `kubectl -n kube-system get lease "
                                 f"{self.name} -o yaml` and run again")

    def _take_held(self, state: LockState, take_over_stale: bool, duration: int) -> str:
        other = state.owner
        assert other is not None and state.lease is not None
        if other.holder == self.owner.holder:
            self._set(self.kube.replace_lease(state.lease, holder=self.owner.holder, duration_s=duration,
                                              annotations=self._annotations()))
            return "renewed (this run held it already)"
        stale = state.renewed_ago_s is not None and state.renewed_ago_s > self.stale_after_s
        if self._crashed_run_of_ours(other):
            self._set(self.kube.replace_lease(state.lease, holder=self.owner.holder, duration_s=duration,
                                              annotations=self._annotations()))
            return (f"taken back from {other.holder} (run {other.run_id}): a run of this machine for the same "
                    "node whose process no longer exists")
        if stale and take_over_stale:
            self._set(self.kube.replace_lease(state.lease, holder=self.owner.holder, duration_s=duration,
                                              annotations=self._annotations()))
            return f"taken over from {other.holder} (run {other.run_id}, stale: {state.describe()})"
        if stale:
            raise LockHeld(
                f"{state.describe()}: it looks stale (not renewed for more than {self.stale_after_s:g}s), but "
                "nodegate takes over a lock only when told to",
                fix=f"make sure the run of {other.holder} is really gone and node {other.node or '?'} is in a known "
                    "state (its journal under reports/runs/journal/), then run again with --take-over-stale-lock")
        raise LockHeld(f"{state.describe()}; only one node is upgraded at a time",
                       fix=f"wait for that run to finish (it renews the lock every {self.renew_every_s:g}s while it "
                           f"runs); it is stale only after {self.stale_after_s:g}s without renewal")

    def _annotations(self) -> dict[str, str]:
        return self.owner.annotations(since=dt.datetime.now(dt.timezone.utc))

    def _set(self, lease: "LeaseInfo") -> None:
        with self._guard:
            self._lease = lease

    # -- keeping ----------------------------------------------------------------------------
    def _start_renewing(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="nodegate-lock-renew", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a renewal failure is logged, the next one retries
                log.warning("could not renew the upgrade lock: %s", str(exc).splitlines()[0])

    def renew(self) -> None:
        with self._guard:
            lease = self._lease
        if lease is None:
            return
        try:
            renewed = self.kube.replace_lease(lease, holder=self.owner.holder)
        except ConflictError:
            # Changed behind our back: only keep it if it is still ours.
            current = self.kube.get_lease(self.namespace, self.name)
            if current is None or current.holder != self.owner.holder:
                log.error("the upgrade lock was taken from this run: %s", current.holder if current else "deleted")
                self._set_none()
                return
            renewed = self.kube.replace_lease(current, holder=self.owner.holder)
        with self._guard:
            if self._lease is not None:
                self._lease = renewed

    def _set_none(self) -> None:
        with self._guard:
            self._lease = None

    # -- releasing --------------------------------------------------------------------------
    def release(self) -> str:
        """Release the lock if this run holds it (deleting the Lease, guarded by its
        resourceVersion); returns what happened."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_every_s + 35)
            self._thread = None
        with self._guard:
            lease = self._lease
            self._lease = None
        if lease is None:
            return "not held by this run"
        try:
            self.kube.delete_lease(self.namespace, self.name, resource_version=lease.resource_version)
        except ConflictError:
            current = self.kube.get_lease(self.namespace, self.name)
            if current is None:
                return "released (already gone)"
            if current.holder != self.owner.holder:
                return f"not released: {current.holder} holds it now"
            self.kube.delete_lease(self.namespace, self.name, resource_version=current.resource_version)
        log.info("upgrade lock released by %s", self.owner.holder)
        return "released"
