"""Which node a journal describes, and whether the cluster's record of the upgrade agrees with it.

A journal is bound to one *incarnation* of a node: the machine (``/etc/machine-id``, written when
the system is installed), its registration in the cluster (the Node's ``metadata.uid``, new when
the Node object is created again), the cluster itself (the ``kube-system`` namespace's UID, new
when a cluster is built again under the same name) and the boots the upgrade knows of (the boot
id changes at every boot). A journal whose incarnation differs from the live node's is *stale*:
it describes another machine, another registration or another cluster, whatever the names say.

Pure functions over facts read elsewhere (nodegate.cluster.node_identity reads them): no I/O here.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# The keys the journal keeps the incarnation under (in the data of its ``begin`` record).
INCARNATION_KEY = "incarnation"
# Reboot steps record the boot before and after the reboot they asked for, and when (node clock).
BOOT_BEFORE_SUFFIX = "_boot_id_before"
BOOT_AFTER_SUFFIX = "_boot_id_after"
REQUESTED_AT_SUFFIX = "_requested_at"


@dataclass(frozen=True)
class Incarnation:
    """What identifies a node's installation, its registration, its cluster and its current boot."""
    machine_id: str          # /etc/machine-id
    node_uid: str            # the Node's metadata.uid
    cluster_uid: str         # the kube-system namespace's metadata.uid
    boot_id: str             # /proc/sys/kernel/random/boot_id
    boot_time: float = 0.0   # when the current boot began (node clock, epoch seconds)

    def as_data(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_data(cls, data: Any) -> "Incarnation | None":
        """The incarnation a journal recorded, or None when it has none (a journal written before
        incarnations were recorded) or it is unreadable."""
        if not isinstance(data, Mapping):
            return None
        try:
            return cls(machine_id=str(data["machine_id"]), node_uid=str(data["node_uid"]),
                       cluster_uid=str(data["cluster_uid"]), boot_id=str(data["boot_id"]),
                       boot_time=float(data.get("boot_time") or 0.0))
        except (KeyError, TypeError, ValueError):
            return None

    def missing(self) -> list[str]:
        """The identifying facts that could not be read (empty): such an incarnation proves nothing."""
        return [name for name, value in (("/etc/machine-id", self.machine_id), ("Node metadata.uid", self.node_uid),
                                         ("kube-system namespace uid", self.cluster_uid),
                                         ("boot id", self.boot_id)) if not value]


@dataclass(frozen=True)
class BootHistory:
    """The boots a journal knows of, and the last reboot it asked for."""
    known: frozenset[str]
    last_request_before: str | None = None    # the boot id before the last reboot request
    last_request_at: float | None = None      # when it was asked (node clock); None: not recorded


def boot_history(recorded: Incarnation | None, data: Iterable[Mapping[str, Any]]) -> BootHistory:
    """Every boot id the journal saw (at its start, before and after each reboot it asked for) and
    its last reboot request, from the data of its records in order."""
    known: set[str] = {recorded.boot_id} if recorded is not None and recorded.boot_id else set()
    before: str | None = None
    at: float | None = None
    for item in data:
        for key, value in item.items():
            if not isinstance(value, str) or not value:
                continue
            if key.endswith(BOOT_BEFORE_SUFFIX):
                known.add(value)
                before = value
                stamp = item.get(key[: -len(BOOT_BEFORE_SUFFIX)] + REQUESTED_AT_SUFFIX)
                at = float(stamp) if isinstance(stamp, (int, float)) else None
            elif key.endswith(BOOT_AFTER_SUFFIX):
                known.add(value)
    return BootHistory(known=frozenset(known), last_request_before=before, last_request_at=at)


def stale_reasons(recorded: Incarnation | None, live: Incarnation, history: BootHistory) -> list[str]:
    """Why the journal does not describe the live node (empty: it does).

    The current boot must be one the journal knows of, or one that began after the last reboot
    the journal asked for: any other boot happened outside this upgrade, and a node booted
    outside it may be another installation (a cloned machine-id, a Node object kept across a
    reinstall), so nothing the journal says about it can be taken further."""
    if recorded is None:
        return ["the journal records no node identity (it was written before journals were bound to a node)"]
    reasons = []
    for what, was, now in (("/etc/machine-id", recorded.machine_id, live.machine_id),
                           ("the Node's metadata.uid (the node was registered again)", recorded.node_uid, live.node_uid),
                           ("the kube-system namespace uid (another cluster with the same name)",
                            recorded.cluster_uid, live.cluster_uid)):
        if not was or not now:
            reasons.append(f"{what}: cannot compare (recorded {was or 'nothing'}, live {now or 'unreadable'})")
        elif was != now:
            reasons.append(f"{what} differs: recorded {was}, live {now}")
    if not live.boot_id:
        reasons.append("the node's boot id is unreadable")
    elif live.boot_id not in history.known:
        requested = history.last_request_at
        if requested is None or not live.boot_time or live.boot_time <= requested:
            when = f" at {live.boot_time:.0f}" if live.boot_time else ""
            asked = (f"; the last reboot this upgrade asked for was at {requested:.0f}" if requested is not None
                     else "; this upgrade never asked for a reboot it could date")
            reasons.append(f"the node runs boot {live.boot_id} (begun{when}), which this journal never saw{asked}")
    return reasons


# -- the Node annotation (the journal's mirror in the cluster) ---------------------------------------

AGREES = "agrees"          # the annotation names the journal's last record
LAGS = "lags"              # it names an earlier record of this journal (a mirror write that failed)
ABSENT = "absent"          # no annotation on the Node
FOREIGN = "foreign"        # it names a run, target or record this journal does not have


@dataclass(frozen=True)
class Agreement:
    kind: str
    detail: str

    @property
    def trusted(self) -> bool:
        return self.kind in (AGREES, LAGS)


def annotation_agreement(annotation: Mapping[str, Any] | None, *, target: str,
                         records: Sequence[tuple[str, str, str, float]]) -> Agreement:
    """Whether the Node annotation ``nodegate.io/upgrade`` mirrors this journal.

    ``records`` are the journal's (run_id, step, status, at) of the attempt being resumed, in
    order. The annotation is written after each journal record, so it names the last record or,
    when a write failed, an earlier one of the same journal; anything else was written by another
    journal (another machine's run, an older attempt)."""
    if not annotation:
        return Agreement(ABSENT, "the Node carries no nodegate.io/upgrade annotation")
    run, step, status = annotation.get("run"), annotation.get("step"), annotation.get("status")
    shown = f"run {run}, step {step} {status}, target {annotation.get('target')}"
    if str(annotation.get("target")) != target:
        return Agreement(FOREIGN, f"the annotation is for another target ({shown})")
    at = annotation.get("at")
    matches = [i for i, (r, s, st, t) in enumerate(records)
               if r == run and s == step and st == status and (at is None or int(t) == int(at))]
    if not matches:
        return Agreement(FOREIGN, f"the annotation names a record this journal does not have ({shown})")
    if matches[-1] == len(records) - 1:
        return Agreement(AGREES, f"the annotation mirrors the journal's last record ({shown})")
    return Agreement(LAGS, f"the annotation names an earlier record of this journal ({shown}): a mirror "
                           "write failed after it")


# Steps that change nothing on the node: an annotation that got no further (a refused gate, a
# lock held by another run) leaves the node untouched, not an upgrade under way.
NO_CHANGE_YET = (None, "begin", "gate", "lock", "complete")


def annotation_names_open_upgrade(annotation: Mapping[str, Any] | None) -> bool:
    """True when the annotation says an upgrade is under way past its gate and lock (the final step
    clears it)."""
    return bool(annotation) and annotation.get("step") not in NO_CHANGE_YET
