"""The steps on the Ceph side: noout for the node's CRUSH host, and storage healthy again after.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from nodegate.cluster.kube.csi import CSI_RBD_SELECTOR
from nodegate.core.waits import Done, NotYet, wait_for
from nodegate.upgrade.engine import Planned, Step, StepFailed, Upgrade

if TYPE_CHECKING:
    pass


class Noout(Step):
    name = "noout"
    title = "ceph: set noout for the node's CRUSH host"
    superseded_by = "unset_noout"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (Planned("ceph", f"ceph osd set-group noout {up.name}"),)

    def already(self, up: Upgrade) -> str | None:
        ceph = up.need_ceph()
        if not ceph.osd_ids_for_host(up.name):
            return f"CRUSH host {up.name} has no OSDs: nothing to protect"
        if up.name in ceph.noout_hosts():
            return f"noout is already set for CRUSH host {up.name}"
        return None

    def run(self, up: Upgrade) -> str:
        ceph = up.need_ceph()
        up.note(self.name, noout_by_us=True)
        result = ceph.set_group_noout(up.name)
        up.keep_command(result)
        return f"`{result.command}` rc {result.rc}"

    def verify(self, up: Upgrade) -> str:
        ceph = up.need_ceph()
        if not ceph.osd_ids_for_host(up.name):
            return f"CRUSH host {up.name} has no OSDs"
        flags = ceph.osd_flags()
        if up.name not in ceph.noout_hosts():
            raise StepFailed(f"noout is not set for CRUSH host {up.name} (crush node flags: "
                             f"{dict(flags.value.crush_node_flags)})")
        return f"noout set for CRUSH host {up.name}"


class UnsetNoout(Step):
    name = "unset_noout"
    title = "ceph: unset noout for the node's CRUSH host"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (Planned("ceph", f"ceph osd unset-group noout {up.name}"),)

    def already(self, up: Upgrade) -> str | None:
        if up.name not in up.need_ceph().noout_hosts():
            return f"noout is not set for CRUSH host {up.name}"
        return None

    def run(self, up: Upgrade) -> str:
        result = up.need_ceph().unset_group_noout(up.name)
        up.keep_command(result)
        return f"`{result.command}` rc {result.rc}"

    def verify(self, up: Upgrade) -> str:
        if up.name in up.need_ceph().noout_hosts():
            raise StepFailed(f"noout is still set for CRUSH host {up.name}")
        return f"no noout flag on CRUSH host {up.name}"


class StorageHealthy(Step):
    name = "storage_healthy"
    title = "wait for ceph HEALTH_OK (in full) and csi-rbdplugin Ready on the node"
    always_run = True

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (Planned("ceph", "ceph status -f json (every 0.5s until HEALTH_OK, mgr up, all OSDs up/in, "
                                f"all PGs active+clean; ≤ {up.options.storage_timeout_s:g}s)"),
                Planned("Kubernetes API", f"pods {CSI_RBD_SELECTOR} on {up.name} Ready"))

    def run(self, up: Upgrade) -> str:
        ceph, kube = up.need_ceph(), up.need_kube()
        ns = up.profile.ceph.namespace
        any_csi = bool(kube.list_pods(namespace=ns, selector=CSI_RBD_SELECTOR))

        def probe() -> Done | NotYet:
            status = ceph.status()
            if not status.healthy_in_full:
                return NotYet("ceph: " + "; ".join(status.reasons()))
            if any_csi:
                csi = kube.csi_rbdplugin(up.name, namespace=ns, log_lines=0)
                if not (csi.pod is not None and csi.ready and not csi.crash_looping):
                    return NotYet(csi.describe())
            return Done(status)

        # A 0.5 s poll reacts within a second of the change; `ceph status` itself is the cost.
        status = wait_for(probe, what=f"ceph HEALTH_OK and csi-rbdplugin Ready on {up.name}",
                          timeout=up.options.storage_timeout_s, interval=0.5, progress_every=5.0,
                          fix="look at `ceph health detail` and the csi-rbdplugin pod's log on the node")
        up.keep_json("ceph status", getattr(status, "raw", ""))
        return "ceph healthy in full" + ("; csi-rbdplugin Ready" if any_csi else "; no csi-rbdplugin in the cluster")

    def verify(self, up: Upgrade) -> str:
        status = up.need_ceph().status()
        if not status.healthy_in_full:
            raise StepFailed("ceph is not healthy: " + "; ".join(status.reasons()))
        return "ceph HEALTH_OK with mgr, all OSDs up and in, all PGs active+clean"
