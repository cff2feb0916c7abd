"""The Rook csi-rbdplugin's health on one node: Ready, restarts, CrashLoopBackOff, and what its logs say.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodegate.cluster.kube.errors import NotFoundError, _first_line
from nodegate.cluster.kube.models import PodSummary
from nodegate.core.errors import TransientError

if TYPE_CHECKING:
    pass

log = logging.getLogger("nodegate.kube")


CSI_RBD_SELECTOR = "app=csi-rbdplugin"   # Rook <= v1.17 only; callers pass the discovered plugin's selector
CSI_RBD_CONTAINER = "csi-rbdplugin"
CSI_STUCK_LINE = "Still connecting to unix:///csi/csi.sock"     # node-driver-registrar, while the plugin is down
CSI_RBD_ERRORS = ("failed to load kernel module rbd", "modprobe failed")  # the plugin itself (rook #14507)


@dataclass(frozen=True)
class CsiPluginHealth:
    """The csi-rbdplugin pod on one node: what the storage checks decide on."""
    node: str
    pod: PodSummary | None                       # None: no csi-rbdplugin pod on the node
    ready: bool
    restarts: int                                # all containers
    crash_looping: tuple[str, ...]               # containers waiting in CrashLoopBackOff
    stuck_lines: tuple[str, ...] = ()            # recent log lines with "Still connecting to …csi.sock"
    error_lines: tuple[str, ...] = ()            # recent plugin log lines about loading the rbd module

    @property
    def healthy(self) -> bool:
        return self.pod is not None and self.ready and not self.crash_looping and not self.stuck_lines

    def describe(self) -> str:
        if self.pod is None:
            return f"no csi-rbdplugin pod on node {self.node}"
        parts = [f"pod {self.pod.ref} {'Ready' if self.ready else 'not Ready'}", f"restarts {self.restarts}"]
        if self.crash_looping:
            parts.append("CrashLoopBackOff in " + ", ".join(self.crash_looping))
        if self.stuck_lines:
            parts.append(f"{len(self.stuck_lines)} recent '{CSI_STUCK_LINE}' log line(s)")
        if self.error_lines:
            parts.append(f"log: {self.error_lines[-1].strip()}")
        return f"csi-rbdplugin on {self.node}: " + ", ".join(parts)


class CsiCalls:
    """Kube's csi-rbdplugin reader (part of ``Kube``)."""

    def csi_rbdplugin(self, node: str, *, namespace: str = "rook-ceph", selector: str = CSI_RBD_SELECTOR,
                      log_lines: int = 100, pods: Sequence[PodSummary] | None = None) -> CsiPluginHealth:
        """The csi-rbdplugin pod on ``node``: Ready, restarts, CrashLoopBackOff, and what its recent
        logs say: the registrar "Still connecting to unix:///csi/csi.sock" (the plugin never came
        up) and the plugin's own failure to load the rbd module (the rbd.ko.zst symptom).
        ``pods``: the plugin pods on the node, when already read (for many nodes at once)."""
        if pods is None:
            pods = self.list_pods(node=node, namespace=namespace, selector=selector)
        pods = [p for p in pods if not p.deleting]
        if not pods:
            return CsiPluginHealth(node=node, pod=None, ready=False, restarts=0, crash_looping=())
        pod = pods[0]
        looping = tuple(c.name for c in pod.containers if c.state == "waiting" and c.reason == "CrashLoopBackOff")
        stuck: list[str] = []
        errors: list[str] = []
        for container in pod.containers if log_lines else ():
            try:
                text = self.pod_log(namespace=namespace, name=pod.name, container=container.name, tail=log_lines)
            except (NotFoundError, TransientError) as exc:  # no log (yet): the state above still counts
                log.info("no log for %s/%s %s: %s", namespace, pod.name, container.name, _first_line(exc))
                continue
            for line in (text or "").splitlines():
                if CSI_STUCK_LINE in line:
                    stuck.append(line)
                elif any(marker in line for marker in CSI_RBD_ERRORS):
                    errors.append(line)
        return CsiPluginHealth(node=node, pod=pod, ready=pod.ready, restarts=pod.restarts, crash_looping=looping,
                               stuck_lines=tuple(stuck), error_lines=tuple(errors))
