"""The cluster-wide upgrade lock: a coordination.k8s.io Lease ``kube-system/nodegate-upgrade-lock``
naming the holder, the node and the run id, and its whole policy.

- free -> taken; same holder and node -> a rerun resuming that node; anyone else -> refused
  (``LockHeld``) unless stale and the operator said ``--take-over-stale-lock``;
- the holder is ``user@machine``: a rerun of the same command from the same machine after a crash
  (kill -9, a closed laptop) resumes its node without the take-over option, as the journal
  expects; a run from another machine, or for another node, is refused;
- while the lock is held, a LockKeeper thread renews it, so it only goes stale when its holder
  is really gone;
- ``ClusterLock.release()`` is safe to call on every path (success, failure, Ctrl-C/SIGTERM): it
  releases only what this run holds.
Kube holds only the Lease primitives (get/create/replace/delete); the decisions are here.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodegate.core.errors import PermanentError

if TYPE_CHECKING:
    from nodegate.cluster.kube.client import Kube
    pass



import getpass
import os
import socket
from typing import TYPE_CHECKING

from nodegate.cluster.kube.errors import ConflictError, _first_line
from nodegate.cluster.kube.models import LeaseInfo, _aware, _now
from nodegate.core.retry import CONFLICT_REREADS, LOCK_TAKE_REREADS

log = logging.getLogger("nodegate.lock")

LOCK_NAMESPACE = "kube-system"
LOCK_NAME = "nodegate-upgrade-lock"
LOCK_NODE_ANNOTATION = "nodegate.io/node"
LOCK_RUN_ANNOTATION = "nodegate.io/run-id"
LOCK_DURATION_S = 300


class LockHeld(PermanentError):
    """The upgrade lock is held by another run (``lock`` says by whom, for which node, since when)."""

    category = "Another upgrade holds the lock"

    def __init__(self, message: str, *, lock: "LockInfo", fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.lock = lock


@dataclass(frozen=True)
class LockInfo:
    """The upgrade lock as stored in its Lease."""
    namespace: str
    name: str
    holder: str | None                           # spec.holderIdentity (None/"" : free)
    node: str | None                             # the node being upgraded (annotation)
    run_id: str | None                           # the run holding it (annotation)
    duration_s: int | None
    acquired_at: dt.datetime | None
    renewed_at: dt.datetime | None
    transitions: int
    resource_version: str

    @property
    def held(self) -> bool:
        return bool(self.holder)

    @property
    def nodes(self) -> tuple[str, ...]:
        """The nodes it is held for: one, or the nodes of a batch upgraded side by side (comma-separated)."""
        return tuple(n for n in (self.node or "").split(",") if n)

    @classmethod
    def from_lease(cls, lease: LeaseInfo) -> "LockInfo":
        return cls(namespace=lease.namespace, name=lease.name, holder=lease.holder or None,
                   node=lease.annotations.get(LOCK_NODE_ANNOTATION), run_id=lease.annotations.get(LOCK_RUN_ANNOTATION),
                   duration_s=lease.duration_s, acquired_at=lease.acquire_time, renewed_at=lease.renew_time,
                   transitions=lease.transitions, resource_version=lease.resource_version)

    def age_s(self, now: dt.datetime | None = None) -> float | None:
        """Seconds since the holder last renewed it."""
        stamp = self.renewed_at or self.acquired_at
        if stamp is None:
            return None
        return ((now or _now()) - _aware(stamp)).total_seconds()

    def stale(self, *, after_s: float | None = None, now: dt.datetime | None = None) -> bool:
        """Not renewed for longer than ``after_s`` (default: its own lease duration): its holder is gone."""
        age = self.age_s(now)
        limit = after_s if after_s is not None else (self.duration_s or LOCK_DURATION_S)
        return age is None or age > limit

    def describe(self) -> str:
        if not self.held:
            return f"lock {self.namespace}/{self.name} is free"
        age = self.age_s()
        since = self.acquired_at.isoformat() if self.acquired_at else "?"
        return (f"lock {self.namespace}/{self.name} held by {self.holder} for node {self.node or '?'} "
                f"(run {self.run_id or '?'}, since {since}, last renewed {age:.0f}s ago)"
                if age is not None else f"lock {self.namespace}/{self.name} held by {self.holder}")


class LockKeeper:
    """Renews a held lock from a daemon thread every third of its duration, so a long step (a
    dist-upgrade, a reboot wait) never lets it look stale while its holder is alive. ``lost``
    is set (with the error) if renewing failed for longer than the lease lasts."""

    def __init__(self, *, kube: Kube, lock: LockInfo, every_s: float | None = None) -> None:
        self.kube = kube
        self.lock = lock
        self.every_s = every_s or max(1.0, (lock.duration_s or LOCK_DURATION_S) / 3)
        self.lost: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lock-keeper-{lock.name}", daemon=True)

    def __enter__(self) -> "LockKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.every_s + 5)

    def _run(self) -> None:
        failing_since: float | None = None
        while not self._stop.wait(self.every_s):
            try:
                self.lock = renew_lock(self.kube, self.lock)
                failing_since = None
            except LockHeld as exc:
                self.lost = exc
                log.error("%s", exc)
                return
            except Exception as exc:  # noqa: BLE001 - keep trying until the lease would expire
                failing_since = failing_since or time.monotonic()
                log.warning("could not renew the upgrade lock: %s", _first_line(exc))
                if time.monotonic() - failing_since > (self.lock.duration_s or LOCK_DURATION_S):
                    self.lost = exc
                    return


def _lock_held(current: LockInfo, *, node: str, take_over_stale: bool, stale_after_s: float | None) -> LockHeld:
    limit = stale_after_s if stale_after_s is not None else (current.duration_s or LOCK_DURATION_S)
    age = current.age_s()
    if take_over_stale:
        fix = (f"it was renewed {age:.0f}s ago, within {limit:g}s, so its holder looks alive: wait for that run "
               "to finish (or stop it), then run again")
    elif age is not None and age > limit:
        fix = (f"it was last renewed {age:.0f}s ago (over {limit:g}s): its holder looks gone. Check that no run of "
               "nodegate is still going for that node, then rerun with --take-over-stale-lock")
    else:
        fix = (f"wait for that run to finish; if its holder is gone (not renewed for over {limit:g}s), rerun with "
               "--take-over-stale-lock")
    return LockHeld(f"cannot take the upgrade lock for node {node}: {current.describe()}", lock=current, fix=fix)


# -- the upgrade lock (policy on a Lease) -------------------------------------------------
def read_lock(kube: "Kube", *, namespace: str = LOCK_NAMESPACE, name: str = LOCK_NAME) -> LockInfo | None:
    lease = kube.get_lease(namespace, name)
    return LockInfo.from_lease(lease) if lease is not None else None

def acquire_lock(kube: "Kube", *, holder: str, node: str, run_id: str, namespace: str = LOCK_NAMESPACE,
                 name: str = LOCK_NAME, duration_s: int = LOCK_DURATION_S, take_over_stale: bool = False,
                 stale_after_s: float | None = None) -> LockInfo:
    """Take the cluster-wide upgrade lock for ``node``.

    Free (absent or released): taken. Held by the same ``holder`` for the same ``node``: a
    rerun resuming that upgrade, so it is renewed with the new ``run_id``. Held by anyone else:
    LockHeld naming holder, node, run and age — unless ``take_over_stale`` is set *and* it has
    not been renewed for ``stale_after_s`` (default: its lease duration), i.e. its holder is
    gone. Every write carries the resourceVersion read, so two runs racing for it cannot both
    win: the loser sees a conflict, reads again and decides again."""
    __tracebackhide__ = True
    marks = {LOCK_NODE_ANNOTATION: node, LOCK_RUN_ANNOTATION: run_id}
    for _ in range(LOCK_TAKE_REREADS):
        lease = kube.get_lease(namespace, name)
        try:
            if lease is None:
                lock = LockInfo.from_lease(kube.create_lease(namespace=namespace, name=name, holder=holder,
                                                             duration_s=duration_s, annotations=marks))
            else:
                current = LockInfo.from_lease(lease)
                if current.held and not (current.holder == holder and current.node == node):
                    if not (take_over_stale and current.stale(after_s=stale_after_s)):
                        raise _lock_held(current, node=node, take_over_stale=take_over_stale,
                                         stale_after_s=stale_after_s)
                    log.warning("taking over stale %s", current.describe())
                lock = LockInfo.from_lease(kube.replace_lease(lease, holder=holder, duration_s=duration_s,
                                                              annotations={**lease.annotations, **marks}))
        except ConflictError as exc:  # someone else wrote it between our read and write
            log.info("lock %s/%s changed while taking it (%s); reading it again", namespace, name,
                     _first_line(exc))
            continue
        log.info("took %s", lock.describe())
        return lock
    raise ConflictError(f"lock {namespace}/{name} kept changing while taking it ({LOCK_TAKE_REREADS} tries)",
                        fix="another run is competing for it; wait and run again")

def renew_lock(kube: "Kube", lock: LockInfo) -> LockInfo:
    """Renew our lock (renewTime = now). LockHeld if it is no longer ours."""
    __tracebackhide__ = True
    for _ in range(CONFLICT_REREADS):
        lease = kube.get_lease(lock.namespace, lock.name)
        current = LockInfo.from_lease(lease) if lease is not None else None
        if lease is None or current is None or current.holder != lock.holder or current.node != lock.node:
            raise LockHeld(f"lost the upgrade lock: {current.describe() if current else 'it was deleted'}",
                           lock=current or lock, fix="another run took it over; stop and check who holds it")
        try:
            return LockInfo.from_lease(kube.replace_lease(lease, holder=lock.holder or ""))
        except ConflictError:
            continue
    raise ConflictError(f"lock {lock.namespace}/{lock.name} kept changing while renewing it")

def release_lock(kube: "Kube", *, holder: str, namespace: str = LOCK_NAMESPACE, name: str = LOCK_NAME) -> bool:
    """Release the lock if ``holder`` holds it (deleted, guarded by its resourceVersion).
    Returns False when there was nothing of ours to release (free, or someone else's: left alone)."""
    for _ in range(CONFLICT_REREADS):
        lease = kube.get_lease(namespace, name)
        if lease is None or not lease.holder:
            return False
        if lease.holder != holder:
            log.warning("not releasing %s: it is not ours (%s)", LockInfo.from_lease(lease).describe(), holder)
            return False
        try:
            if not kube.delete_lease(namespace, name, resource_version=lease.resource_version):
                return False
        except ConflictError:
            continue
        log.info("released lock %s/%s (%s, node %s)", namespace, name, holder,
                 lease.annotations.get(LOCK_NODE_ANNOTATION))
        return True
    raise ConflictError(f"lock {namespace}/{name} kept changing while releasing it")


def this_holder() -> str:
    """user@machine: who runs nodegate here (SUDO_USER when run through sudo)."""
    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class ClusterLock:
    """The upgrade lock for one node's upgrade in this run."""

    def __init__(self, *, kube: "Kube", node: str, run_id: str, stale_after_s: float,
                 holder: str | None = None) -> None:
        self.kube = kube
        self.node = node
        self.run_id = run_id
        self.stale_after_s = float(stale_after_s)
        self.holder = holder or this_holder()
        self.info: LockInfo | None = None
        self._keeper: LockKeeper | None = None

    @property
    def held(self) -> bool:
        """This run holds it (and its keeper has not lost it)."""
        return self.info is not None and not (self._keeper is not None and self._keeper.lost is not None)

    def state(self) -> "LockInfo | None":
        return read_lock(self.kube)

    def acquire(self, *, take_over_stale: bool = False) -> str:
        """Take the lock (LockHeld from nodegate.cluster.kube.client when another run has it); start renewing it."""
        before = read_lock(self.kube)
        self.info = acquire_lock(self.kube, holder=self.holder, node=self.node, run_id=self.run_id,
                                           take_over_stale=take_over_stale, stale_after_s=self.stale_after_s)
        self._keeper = LockKeeper(kube=self.kube, lock=self.info)
        self._keeper.__enter__()
        if before is None or not before.held:
            return f"taken: {self.info.describe()}"
        if before.holder == self.holder and before.node == self.node:
            return f"taken back for this node's resumed upgrade (was run {before.run_id}): {self.info.describe()}"
        return f"taken over from stale {before.describe()}"

    def release(self) -> str:
        """Stop renewing and release the lock if this run holds it; says what happened."""
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        if self.info is None:
            return "not held by this run"
        # forget the lock only once the release is through: a Ctrl-C/SIGTERM inside the request
        # leaves it known, so the run's teardown releases it again
        released = release_lock(self.kube, holder=self.holder)
        self.info = None
        return "released" if released else "not released: it was not ours any more (see the log)"
