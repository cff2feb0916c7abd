"""The steps on the Ceph side: keep the node's OSDs from being marked out for the whole upgrade
(per-OSD noout where Rook manages disruptions, else the CRUSH host's group flag), undo only what
this upgrade set, and storage healthy again after.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nodegate.core.waits import Done, NotYet, wait_for
from nodegate.upgrade.engine import Planned, Step, StepFailed, Upgrade


def storage_facts(up: Upgrade) -> "StorageFacts":
    """The node's CRUSH host, Rook's disruption settings and the noout policy, read once per run."""
    facts = getattr(up, "_storage_facts", None)
    if facts is None:
        from nodegate.cluster.storage import crush_mapping, rook_settings
        from nodegate.core.noout import decide_noout

        kube, ceph = up.need_kube(), up.need_ceph()
        mapping = crush_mapping(up.node, kube=kube, ceph=ceph, namespace=up.profile.ceph.namespace)
        rook = rook_settings(kube, up.profile.ceph.namespace)
        facts = StorageFacts(mapping=mapping, rook=rook, policy=decide_noout(rook))
        up._storage_facts = facts   # type: ignore[attr-defined]
    return facts


@dataclass(frozen=True)
class StorageFacts:
    mapping: Any            # nodegate.core.crush.CrushMapping
    rook: Any               # nodegate.core.noout.RookDisruption
    policy: Any             # nodegate.core.noout.NooutPolicy

    def need_mapping(self) -> Any:
        if not self.mapping.ok:
            raise StepFailed(f"the node's CRUSH host cannot be told: {'; '.join(self.mapping.problems)}",
                             fix="set [nodes.<name>] crush_host (or ceph_osds = false) in the profile")
        return self.mapping


def expected_node_upgrade_s(up: Upgrade) -> tuple[float, str]:
    """How long the node's OSDs are expected to be protected: the longest noout -> unset_noout
    window of earlier runs in this cluster's journals, else a stated default."""
    from nodegate.core.noout import expected_duration

    journals = []
    for journal in up.journal.siblings():
        try:
            journals.append(journal.records())
        except (OSError, ValueError):
            continue
    return expected_duration(journals, control_plane=up.node.is_control_plane)


class Noout(Step):
    name = "noout"
    title = "ceph: keep the node's OSDs from being marked out (per-OSD noout, or the CRUSH host's group flag)"
    superseded_by = "unset_noout"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        facts = storage_facts(up)
        m = facts.mapping
        lines = [Planned("mapping", m.describe() if m.ok else "CRUSH host unknown: " + "; ".join(m.problems)),
                 Planned("rook", facts.rook.describe()), Planned("policy", facts.policy.reason)]
        from nodegate.core.noout import duration_warning

        expected, source = expected_node_upgrade_s(up)
        warning = duration_warning(facts.rook, expected, source=source)
        if warning:
            lines.append(Planned("warning", warning))
        for command in facts.policy.commands(crush_host=m.crush_host or "?", osd_ids=m.osd_ids):
            lines.append(Planned("ceph", "ceph " + " ".join(command)))
        return tuple(lines)

    def _flags_hold(self, up: Upgrade, facts: StorageFacts) -> bool:
        from nodegate.core.noout import PER_OSD

        flags = up.need_ceph().osd_flags().value
        m = facts.mapping
        if facts.policy.kind == PER_OSD:
            return all("noout" in flags.osd_flags.get(i, frozenset()) for i in m.osd_ids)
        return "noout" in flags.crush_node_flags.get(m.crush_host, frozenset())

    def already(self, up: Upgrade) -> str | None:
        facts = storage_facts(up)
        m = facts.need_mapping()
        if not m.osd_ids:
            return f"{up.name} carries no OSDs (the profile says so: [nodes.{up.name}] ceph_osds = false)"
        if self._flags_hold(up, facts):
            by = "by this upgrade" if up.value("noout_by_us") else "before this upgrade (left as it is)"
            return f"noout already holds for {', '.join(f'osd.{i}' for i in m.osd_ids)} ({facts.policy.kind}, set {by})"
        return None

    def run(self, up: Upgrade) -> str:
        facts = storage_facts(up)
        m = facts.need_mapping()
        up.keep_text("Node <-> CRUSH host", "\n".join([m.describe(), *m.evidence, *m.notes]))
        up.keep_text("noout policy", f"{facts.rook.describe()}\n{facts.policy.reason}")
        ours, theirs = self._to_set(up, facts)
        # Recorded before acting: a run stopped right after the command still undoes it. Only the
        # flags this upgrade sets are recorded, so unset_noout leaves an operator's own alone.
        up.note(self.name, noout_by_us=True, noout_kind=facts.policy.kind, noout_osds=list(ours),
                noout_host=m.crush_host)
        done = []
        for command in facts.policy.commands(crush_host=m.crush_host, osd_ids=ours):
            result = up.need_ceph().run(command)
            up.keep_command(result)
            done.append(f"`{result.command}` rc {result.rc}")
        kept = f"; noout of {', '.join(f'osd.{i}' for i in theirs)} was set before this upgrade (left as it is)"
        return "; ".join(done) + f" (CRUSH host {m.crush_host}, {facts.policy.kind})" + (kept if theirs else "")

    def _to_set(self, up: Upgrade, facts: StorageFacts) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(the OSDs this upgrade flags, the OSDs an operator flagged before it): see
        nodegate.core.noout.flags_to_set."""
        from nodegate.core.noout import PER_OSD, flags_to_set

        kind, m = facts.policy.kind, facts.mapping
        if kind != PER_OSD:
            return flags_to_set(kind, m.osd_ids)
        if up.value("noout_by_us") and up.value("noout_kind") == PER_OSD:
            return flags_to_set(kind, m.osd_ids, recorded=[int(i) for i in up.value("noout_osds") or ()])
        flags = up.need_ceph().osd_flags().value
        return flags_to_set(kind, m.osd_ids, flagged=[i for i in m.osd_ids if "noout" in flags.osd_flags.get(i, ())])

    def verify(self, up: Upgrade) -> str:
        facts = storage_facts(up)
        m = facts.need_mapping()
        if not m.osd_ids:
            return f"{up.name} carries no OSDs"
        if not self._flags_hold(up, facts):
            flags = up.need_ceph().osd_flags().value
            raise StepFailed(f"noout does not hold for {', '.join(f'osd.{i}' for i in m.osd_ids)} on CRUSH host "
                             f"{m.crush_host} (per-OSD flags: {dict(flags.osd_flags)}, crush node flags: "
                             f"{dict(flags.crush_node_flags)})")
        return f"noout holds for {', '.join(f'osd.{i}' for i in m.osd_ids)} on CRUSH host {m.crush_host} ({facts.policy.kind})"


class UnsetNoout(Step):
    name = "unset_noout"
    title = "ceph: undo the noout flags this upgrade set (only those)"

    def _ours(self, up: Upgrade) -> tuple[str | None, tuple[int, ...], str | None]:
        if not up.value("noout_by_us"):
            return None, (), None
        return up.value("noout_kind"), tuple(int(i) for i in up.value("noout_osds") or ()), up.value("noout_host")

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        kind, ids, host = self._ours(up)
        if kind is None:
            facts = storage_facts(up)
            m = facts.mapping
            return tuple(Planned("ceph", "ceph " + " ".join(c) + " (if this upgrade set it)")
                         for c in facts.policy.commands(crush_host=m.crush_host or "?", osd_ids=m.osd_ids, set_=False))
        from nodegate.core.noout import NooutPolicy

        return tuple(Planned("ceph", "ceph " + " ".join(c))
                     for c in NooutPolicy(kind, "").commands(crush_host=host or "?", osd_ids=ids, set_=False))

    def _left(self, up: Upgrade) -> list[str]:
        from nodegate.core.noout import PER_OSD

        kind, ids, host = self._ours(up)
        flags = up.need_ceph().osd_flags().value
        if kind == PER_OSD:
            return [f"osd.{i}" for i in ids if "noout" in flags.osd_flags.get(i, frozenset())]
        if kind is not None and host and "noout" in flags.crush_node_flags.get(host, frozenset()):
            return [f"CRUSH host {host}"]
        return []

    def already(self, up: Upgrade) -> str | None:
        kind, _, _ = self._ours(up)
        if kind is None:
            return "this upgrade set no noout flag: nothing of nodegate's to undo (others' flags are left as they are)"
        if not self._left(up):
            return "the noout flags this upgrade set are gone"
        return None

    def run(self, up: Upgrade) -> str:
        from nodegate.core.noout import NooutPolicy

        kind, ids, host = self._ours(up)
        done = []
        for command in NooutPolicy(kind, "").commands(crush_host=host or "", osd_ids=ids, set_=False):
            result = up.need_ceph().run(command)
            up.keep_command(result)
            done.append(f"`{result.command}` rc {result.rc}")
        return "; ".join(done) or "nothing to undo"

    def verify(self, up: Upgrade) -> str:
        left = self._left(up)
        if left:
            raise StepFailed(f"noout set by this upgrade is still there: {', '.join(left)}")
        return "no noout flag of this upgrade is left"


def rbd_node_plugins(up: Upgrade) -> Any:
    """The RBD node plugin(s), found by what they are; fails closed when none is found and the
    profile does not say the cluster has none."""
    from nodegate.cluster.storage import csi_node_plugins

    found = csi_node_plugins(up.need_kube(), up.profile.ceph)
    if not found.ok:
        raise StepFailed(found.problems[0], fix="restore the RBD node plugin, or set [ceph] csi_rbd_daemonset / "
                                                "[ceph] csi_rbd = false in the profile")
    return found


class StorageHealthy(Step):
    name = "storage_healthy"
    title = "wait for ceph HEALTH_OK (in full) and the RBD node plugin Ready on the node"
    always_run = True

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (Planned("ceph", "ceph status -f json (every 0.5s until HEALTH_OK, mgr up, all OSDs up/in, "
                                f"all PGs active+clean; ≤ {up.options.storage_timeout_s:g}s)"),
                Planned("Kubernetes API", f"the RBD node plugin's pod on {up.kube_name} Ready (the DaemonSet running "
                                          "cephcsi --type=rbd --nodeserver=true for the cluster's RBD driver)"))

    def run(self, up: Upgrade) -> str:
        ceph, kube = up.need_ceph(), up.need_kube()
        found = rbd_node_plugins(up)
        plugin = found.plugins[0] if found.plugins else None
        on_node = [p for p in found.plugins
                   if any(q.node == up.kube_name for q in kube.list_pods(namespace=p.namespace, selector=p.label_selector))]
        plugin = on_node[0] if on_node else plugin

        def probe() -> Done | NotYet:
            status = ceph.status()
            if not status.healthy_in_full:
                return NotYet("ceph: " + "; ".join(status.reasons()))
            if plugin is not None:
                csi = kube.csi_rbdplugin(up.kube_name, namespace=plugin.namespace, selector=plugin.label_selector,
                                         log_lines=0)
                if not (csi.pod is not None and csi.ready and not csi.crash_looping):
                    return NotYet(f"{plugin.ref}: " + csi.describe())
            return Done(status)

        # A 0.5 s poll reacts within a second of the change; `ceph status` itself is the cost.
        status = wait_for(probe, what=f"ceph HEALTH_OK and the RBD node plugin Ready on {up.kube_name}",
                          timeout=up.options.storage_timeout_s, interval=0.5, progress_every=5.0,
                          fix="look at `ceph health detail` and the RBD node plugin pod's log on the node")
        up.keep_json("ceph status", getattr(status, "raw", ""))
        return "ceph healthy in full" + (f"; {plugin.ref} Ready on {up.kube_name}" if plugin is not None else
                                         "; no Ceph RBD CSI (the profile says [ceph] csi_rbd = false)")

    def verify(self, up: Upgrade) -> str:
        status = up.need_ceph().status()
        if not status.healthy_in_full:
            raise StepFailed("ceph is not healthy: " + "; ".join(status.reasons()))
        return "ceph HEALTH_OK with mgr, all OSDs up and in, all PGs active+clean"
