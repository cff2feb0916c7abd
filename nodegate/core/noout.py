"""How to keep a node's OSDs from being marked out for the whole upgrade: pure decisions.

Rook's disruption controller (rook ``pkg/operator/ceph/disruption/clusterdisruption/osd.go``,
``updateNoout``), when ``spec.disruptionManagement.managePodBudgets`` is true: sets noout on the
failure domain of a drained node (``ceph osd set-group noout <domain>``) while its OSDs are
down and PGs unclean, **unsets it once ``osdMaintenanceTimeout`` has passed** since it set it,
and unsets noout on every other failure domain on each reconcile. ``osdMaintenanceTimeout`` is
whole minutes, 0 or absent meaning 30 (``reconcile.go``: ``OSDMaintenanceTimeout * time.Minute``,
``DefaultMaintenanceTimeout``); with ``managePodBudgets`` false Rook leaves noout alone.
Rook touches only CRUSH-unit flags (``UpdateFlagOnCrushUnit`` runs ``osd set-group``/``unset-group``);
per-OSD flags (``ceph osd add-noout osd.N``) are separate in Ceph and Rook never clears them.

So: where Rook manages disruptions (or whether it does is unknown) nodegate sets per-OSD
flags on the node's OSD ids, which hold however long the upgrade takes; a group flag on the
CRUSH host only where Rook is known not to manage noout.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

ROOK_DEFAULT_MAINTENANCE_TIMEOUT_MIN = 30
PER_OSD = "per-osd"
GROUP = "group"
# The expected duration of one node's upgrade when the journal has no earlier run: two reboots
# and a release upgrade on real hardware (control-plane reboots took about twice as long).
DEFAULT_EXPECTED_NODE_UPGRADE_S = 45 * 60.0


@dataclass(frozen=True)
class RookDisruption:
    """What the CephCluster resource says about noout; ``found`` False: no CephCluster read."""
    found: bool
    cluster: str | None = None
    manage_pod_budgets: bool = False
    maintenance_timeout_s: float = ROOK_DEFAULT_MAINTENANCE_TIMEOUT_MIN * 60.0
    raw_timeout: object = None

    def describe(self) -> str:
        if not self.found:
            return "no CephCluster resource found"
        if not self.manage_pod_budgets:
            return f"CephCluster {self.cluster}: managePodBudgets false (Rook leaves noout alone)"
        given = "" if self.raw_timeout not in (None, 0) else " (Rook's default)"
        return (f"CephCluster {self.cluster}: managePodBudgets true, osdMaintenanceTimeout "
                f"{self.maintenance_timeout_s / 60:g} min{given}: Rook clears its noout on a drained failure "
                "domain after that, and on every other failure domain at once")


def rook_disruption(cephcluster: Mapping | None) -> RookDisruption:
    """Read ``spec.disruptionManagement`` of a CephCluster (API JSON)."""
    if not cephcluster:
        return RookDisruption(found=False)
    meta = cephcluster.get("metadata") or {}
    dm = (cephcluster.get("spec") or {}).get("disruptionManagement") or {}
    raw = dm.get("osdMaintenanceTimeout")
    try:
        minutes = float(raw) if raw not in (None, "") else 0.0
    except (TypeError, ValueError):
        minutes = 0.0
    if minutes <= 0:
        minutes = ROOK_DEFAULT_MAINTENANCE_TIMEOUT_MIN
    return RookDisruption(found=True, cluster=f"{meta.get('namespace', '')}/{meta.get('name', '')}",
                          manage_pod_budgets=bool(dm.get("managePodBudgets")),
                          maintenance_timeout_s=minutes * 60.0, raw_timeout=raw)


@dataclass(frozen=True)
class NooutPolicy:
    kind: str               # PER_OSD or GROUP
    reason: str

    def commands(self, *, crush_host: str, osd_ids: tuple[int, ...], set_: bool = True) -> list[list[str]]:
        if self.kind == PER_OSD:
            verb = "add-noout" if set_ else "rm-noout"
            return [["osd", verb, *(f"osd.{i}" for i in osd_ids)]] if osd_ids else []
        return [["osd", "set-group" if set_ else "unset-group", "noout", crush_host]]


def flags_to_set(kind: str, osd_ids: Sequence[int], *, flagged: Collection[int] = (),
                 recorded: Sequence[int] | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the OSDs whose noout this upgrade sets, and so undoes later; the OSDs whose per-OSD noout
    was there before it, ``flagged`` now, left as they are): undo only what you did. A rerun passes
    what the first run ``recorded``, since a flag it set meanwhile looks the same as an operator's.
    A group flag is one flag for the whole host: a step that finds it set does not run at all."""
    if kind != PER_OSD:
        return tuple(osd_ids), ()
    ours = tuple(recorded) if recorded is not None else tuple(i for i in osd_ids if i not in flagged)
    return ours, tuple(i for i in osd_ids if i not in ours)


def decide_noout(rook: RookDisruption) -> NooutPolicy:
    if not rook.found:
        return NooutPolicy(PER_OSD, "no CephCluster was read, so whether Rook clears group noout flags is unknown: "
                                    "per-OSD flags, which Rook never clears")
    if rook.manage_pod_budgets:
        return NooutPolicy(PER_OSD, "Rook manages noout on failure domains and takes it back: per-OSD flags "
                                    "(ceph osd add-noout), which Rook never clears, hold for the whole upgrade")
    return NooutPolicy(GROUP, "Rook leaves noout alone (managePodBudgets false): the CRUSH host's group flag")


def longest_protected_window(journals: "list[list]") -> float | None:
    """The longest time OSDs were protected in earlier node upgrades: from the ``noout`` step done
    to the ``unset_noout`` step done, per journal (records with .step, .status, .at)."""
    windows = []
    for records in journals:
        set_at = [r.at for r in records if r.step == "noout" and r.status == "done"]
        unset_at = [r.at for r in records if r.step == "unset_noout" and r.status == "done"]
        if set_at and unset_at and unset_at[-1] > set_at[0]:
            windows.append(unset_at[-1] - set_at[0])
    return max(windows) if windows else None


def expected_duration(journals: "list[list]", *, control_plane: bool) -> tuple[float, str]:
    """The expected protected window of a node's upgrade, and where the figure comes from."""
    longest = longest_protected_window(journals)
    if longest is not None:
        return longest, f"the longest of the earlier node upgrades in this cluster's journals ({longest / 60:.0f} min)"
    default = DEFAULT_EXPECTED_NODE_UPGRADE_S * (2 if control_plane else 1)
    return default, ("nodegate's default for a release upgrade with two reboots"
                     + (", doubled for a control-plane node" if control_plane else ""))


def duration_warning(rook: RookDisruption, expected_s: float, *, source: str) -> str | None:
    """A warning when the node's upgrade may outlast Rook's own noout (None: no warning)."""
    if not (rook.found and rook.manage_pod_budgets) or expected_s <= rook.maintenance_timeout_s:
        return None
    return (f"the node's upgrade is expected to take {expected_s / 60:.0f} min ({source}), longer than "
            f"osdMaintenanceTimeout {rook.maintenance_timeout_s / 60:g} min of {rook.cluster}: Rook takes its "
            "noout back before the node is done, so nodegate keeps per-OSD noout flags on the node's OSDs "
            "until it unsets them itself")
