"""The cluster-wide upgrade lock of one procedure run: take it, keep it renewed, release it.

The lock itself (a coordination.k8s.io Lease ``kube-system/nodegate-upgrade-lock`` naming the
holder, the node and the run id, with its policy: free → taken; same holder and node → a rerun
resuming that node; anyone else → refused unless stale and the operator said
``--take-over-stale-lock``) lives in nodegate.cluster.kube.client (``acquire_lock``/``renew_lock``/
``release_lock``/``LockKeeper``). This module only adds the procedure's side:

- the holder is ``user@machine``: a rerun of the same command from the same machine after a crash
  (kill -9, a closed laptop) resumes its node without the take-over option, as the journal
  expects; a run from another machine, or for another node, is refused;
- while the lock is held, a LockKeeper thread renews it, so it only goes stale when its holder
  is really gone;
- ``release()`` is safe to call on every path (success, failure, Ctrl-C/SIGTERM): it releases
  only what this run holds.
"""
from __future__ import annotations

import getpass
import logging
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodegate.cluster.kube.client import Kube, LockInfo, LockKeeper

log = logging.getLogger("nodegate.cluster.lock")


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
        return self.kube.read_lock()

    def acquire(self, *, take_over_stale: bool = False) -> str:
        """Take the lock (LockHeld from nodegate.cluster.kube.client when another run has it); start renewing it."""
        from nodegate.cluster.kube.client import LockKeeper

        before = self.kube.read_lock()
        self.info = self.kube.acquire_lock(holder=self.holder, node=self.node, run_id=self.run_id,
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
        self.info = None
        released = self.kube.release_lock(holder=self.holder)
        return "released" if released else "not released: it was not ours any more (see the log)"
