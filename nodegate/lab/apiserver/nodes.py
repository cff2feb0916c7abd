"""The lab's nodes as the kubelet and the node lifecycle controller would report them.

Each poll reads `DIR/nodes/<name>/state.json` (written by the supervisor, atomic rename).
A node is Ready `ready_delay_s` after it came up, Unknown ("Kubelet stopped posting node
status.") shortly after it went down; what the kubelet reports about the OS (osImage) is read
once per boot, as the kubelet reads it once when it starts.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from nodegate.lab.apiserver.store import now_rfc3339
from nodegate.lab.config import LabConfig, LabNode

log = logging.getLogger(__name__)

STATUS_REPORT_S = 300.0     # kubelet nodeStatusReportFrequency (5 min; the node lease beats every 10 s)
LOST_AFTER_S = 1.0          # node down -> conditions Unknown (the real grace is 40 s)
MODULES_FILE = "run/nodegate-lab/modules"
RUNTIME_VERSION = "docker://20.10.20"
POD_CIDR_BASE = 64          # Kubespray's kube_pods_subnet 10.233.64.0/18, one /24 per node

NEVER = "never"             # no kubelet has ever posted status
STARTING = "starting"       # kubelet up, not Ready yet
READY = "ready"
STALE = "stale"             # node down, controller has not noticed yet
LOST = "lost"               # node down, conditions Unknown


def inside(root: Path, relative: str, *, depth: int = 0) -> Path:
    """`relative` resolved inside the node's root: an absolute symlink there (Ubuntu's
    /etc/os-release -> /usr/lib/os-release may be one) points into the node, not the host."""
    path = root / relative.lstrip("/")
    if depth < 8 and path.is_symlink():
        target = os.readlink(path)
        if target.startswith("/"):
            return inside(root, target, depth=depth + 1)
        return inside(root, str((Path("/") / relative.lstrip("/")).parent / target), depth=depth + 1)
    return path


def read_os_release(root: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = inside(root, "etc/os-release").read_text()
    except OSError:
        return values
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"')
    return values


@dataclass
class NodeView:
    """What the server knows about one lab node right now."""

    node: LabNode
    state: str | None = None          # "up" | "down" | None (never seen)
    pid: int | None = None
    boot_id: str = ""
    boot_count: int = 0
    changed_at: float = 0.0
    phase: str = NEVER
    phase_since: float = 0.0
    ready_since: float | None = None   # when the current boot became Ready
    os_release: dict = field(default_factory=dict)
    modules: frozenset = frozenset()
    kubelet_boot_id: str = ""          # the boot the kubelet last reported
    kubelet_version: str = ""          # read at boot and when Kubespray rewrites it (kubelet restart)
    kubelet_version_mtime: int | None = None

    @property
    def up(self) -> bool:
        return self.state == "up"

    @property
    def ready(self) -> bool:
        return self.phase == READY

    @property
    def version_id(self) -> str:
        return self.os_release.get("VERSION_ID", "")


class NodeMirror:
    def __init__(self, config: LabConfig) -> None:
        self.config = config
        # Keyed by the Kubernetes Node name (the FQDN in a lab with --domain); the node's
        # directory keeps its short inventory name.
        self.views = {n.kube_name: NodeView(node=n) for n in config.nodes}
        self._mtimes: dict[str, float | None] = {}
        self.kernel = platform.release()

    def _node_dir(self, name: str) -> Path:
        return self.config.dir / "nodes" / name

    def poll(self, now: float) -> bool:
        """Re-read every state.json that changed and advance phases; True if anything changed."""
        changed = False
        for name, view in self.views.items():
            path = self._node_dir(view.node.name) / "state.json"
            try:
                mtime = path.stat().st_mtime_ns
            except FileNotFoundError:
                mtime = None
            if mtime != self._mtimes.get(name):
                self._mtimes[name] = mtime
                changed |= self._read_state(view, path)
            changed |= self._advance(view, now)
            if view.up:
                changed |= self._kubelet_restarted(view)
        return changed

    def _kubelet_restarted(self, view: NodeView) -> bool:
        """Kubespray installing a kubelet rewrites its version file and restarts it: the node
        reports the new version at once, without a reboot."""
        root = self._node_dir(view.node.name) / "root"
        try:
            mtime = inside(root, "etc/kubernetes/kubelet-version").stat().st_mtime_ns
        except OSError:
            mtime = None
        if mtime == view.kubelet_version_mtime:
            return False
        view.kubelet_version_mtime = mtime
        version = read_kubelet_version(root) or self.config.kube_version
        if version == view.kubelet_version:
            return False
        view.kubelet_version = version
        return True

    def _read_state(self, view: NodeView, path: Path) -> bool:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            log.warning("unreadable %s: %s", path, exc)
            return False
        before = (view.state, view.boot_id, view.pid)
        view.state = data.get("state")
        view.pid = data.get("pid")
        view.boot_id = data.get("boot_id") or ""
        view.boot_count = int(data.get("boot_count") or 0)
        view.changed_at = float(data.get("changed_at") or 0.0)
        if view.up and view.boot_id != view.kubelet_boot_id:
            # A new boot: the kubelet starts and reads the OS once.
            view.kubelet_boot_id = view.boot_id
            root = self._node_dir(view.node.name) / "root"
            view.os_release = read_os_release(root)
            view.kubelet_version = read_kubelet_version(root) or self.config.kube_version
            view.ready_since = None
        return before != (view.state, view.boot_id, view.pid)

    def _advance(self, view: NodeView, now: float) -> bool:
        if view.up:
            ready_at = view.changed_at + self.config.ready_delay_s
            phase = READY if now >= ready_at else STARTING
            since = ready_at if phase == READY else view.changed_at
        elif view.state == "down":
            if view.phase in (NEVER,):
                phase, since = NEVER, view.phase_since
            elif now >= view.changed_at + LOST_AFTER_S:
                phase, since = LOST, view.changed_at + LOST_AFTER_S
            else:
                phase, since = STALE, view.changed_at
        else:
            phase, since = NEVER, view.phase_since
        if phase == view.phase:
            return False
        view.phase, view.phase_since = phase, min(since, now)
        if phase == READY:
            view.ready_since = view.phase_since
        log.info("node %s: %s", view.node.name, phase)
        return True

    def refresh_modules(self, view: NodeView) -> bool:
        """The node's loaded kernel modules (its stand-in list under its own /run)."""
        modules: frozenset = frozenset()
        if view.up and view.pid:
            try:
                # The node's modprobe rewrites the list in place under an flock: read it under one too.
                with open(Path(f"/proc/{view.pid}/root") / MODULES_FILE) as fh:
                    fcntl.flock(fh, fcntl.LOCK_SH)
                    text = fh.read()
                modules = frozenset(line.split()[0] for line in text.splitlines() if line.strip())
            except (OSError, IndexError):
                modules = view.modules  # a node mid-boot: keep what we knew
        changed = modules != view.modules
        view.modules = modules
        return changed

    # -- the Node object -------------------------------------------------------
    def machine_id(self, name: str) -> str:
        path = self._node_dir(name) / "root" / "etc" / "machine-id"
        try:
            value = path.read_text().strip()
            if len(value) == 32:
                return value
        except OSError:
            pass
        return uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.config.dir}/{name}").hex

    def initial_node(self, view: NodeView, *, tainted_control_plane: bool) -> dict:
        n = view.node
        labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": n.kube_name, "kubernetes.io/os": "linux"}
        taints = []
        if n.control_plane:
            labels["node-role.kubernetes.io/control-plane"] = ""
            labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
            if tainted_control_plane:
                taints.append({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"})
        cidr = f"10.233.{POD_CIDR_BASE + n.index - 1}.0/24"
        spec: dict = {"podCIDR": cidr, "podCIDRs": [cidr]}
        if taints:
            spec["taints"] = taints
        return {"metadata": {"name": n.kube_name, "labels": labels, "annotations": {
                    "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/cri-dockerd.sock",
                    "node.alpha.kubernetes.io/ttl": "0",
                    "projectcalico.org/IPv4Address": f"{n.address}/32",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
                "spec": spec, "status": {}}

    def node_status(self, view: NodeView, old_status: dict, now: float | None = None) -> dict:
        """status as kubelet + node lifecycle controller would leave it in this phase."""
        n = view.node
        ts = now_rfc3339(view.phase_since)
        now = view.phase_since if now is None else now
        old_ready = next((c for c in old_status.get("conditions") or [] if c.get("type") == "Ready"), {})
        if view.phase in (READY, STARTING):
            # The kubelet posts its status at start and then every nodeStatusReportFrequency.
            beat = max(view.phase_since, now - (now - view.changed_at) % STATUS_REPORT_S)
            hb = now_rfc3339(beat)
        else:  # the node lifecycle controller keeps the kubelet's last heartbeat
            hb = old_ready.get("lastHeartbeatTime") or ts
        if view.phase == READY:
            ready = ("True", "KubeletReady", "kubelet is posting ready status. AppArmor enabled")
        elif view.phase == STARTING:
            ready = ("False", "KubeletNotReady", "container runtime status check may not have completed yet")
        elif view.phase == LOST:
            ready = ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")
        elif view.phase == NEVER and (old_status.get("nodeInfo") or {}).get("bootID"):
            # down since before this server started, but a kubelet did post before (restored)
            if old_ready.get("status") == "Unknown":
                return old_status
            ready = ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")
        elif view.phase == NEVER:
            ready = ("Unknown", "NodeStatusNeverUpdated", "Kubelet never posted node status.")
        else:  # STALE: nothing has noticed yet; keep what was posted last
            return old_status
        pressure = {"MemoryPressure": ("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                    "DiskPressure": ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                    "PIDPressure": ("KubeletHasSufficientPID", "kubelet has sufficient PID available")}
        conditions = [{"type": "NetworkUnavailable", "status": "False", "reason": "CalicoIsUp",
                       "message": "Calico is running on this node", "lastHeartbeatTime": hb,
                       "lastTransitionTime": ts}]
        for ctype, (reason, message) in pressure.items():
            if view.phase in (LOST, NEVER):
                conditions.append({"type": ctype, "status": "Unknown", "reason": ready[1], "message": ready[2],
                                   "lastHeartbeatTime": hb, "lastTransitionTime": ts})
            else:
                conditions.append({"type": ctype, "status": "False", "reason": reason, "message": message,
                                   "lastHeartbeatTime": hb, "lastTransitionTime": ts})
        conditions.append({"type": "Ready", "status": ready[0], "reason": ready[1], "message": ready[2],
                           "lastHeartbeatTime": hb, "lastTransitionTime": ts})
        capacity = {"cpu": "4", "ephemeral-storage": "51287520Ki", "hugepages-1Gi": "0",
                    "hugepages-2Mi": "0", "memory": "8148564Ki", "pods": "110"}
        allocatable = {**capacity, "cpu": "3800m", "ephemeral-storage": "47266578354", "memory": "7521876Ki"}
        pretty = view.os_release.get("PRETTY_NAME") or (old_status.get("nodeInfo") or {}).get("osImage") or "Unknown"
        return {
            "capacity": capacity, "allocatable": allocatable, "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": n.address}, {"type": "Hostname", "address": n.kube_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": self.machine_id(n.name),
                         "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{self.config.dir}/{n.name}")).upper(),
                         "bootID": view.kubelet_boot_id, "kernelVersion": self.kernel, "osImage": pretty,
                         "containerRuntimeVersion": RUNTIME_VERSION,
                         "kubeletVersion": view.kubelet_version or self.config.kube_version,
                         "kubeProxyVersion": view.kubelet_version or self.config.kube_version, "operatingSystem": "linux",
                         "architecture": "amd64"},
            "images": [],
        }


def read_kubelet_version(root: Path) -> str:
    """The Kubespray stand-in records the kubelet it installed in /etc/kubernetes/kubelet-version."""
    try:
        text = inside(root, "etc/kubernetes/kubelet-version").read_text().strip()
    except OSError:
        return ""
    return text if re.fullmatch(r"v\d+\.\d+\.\d+", text) else ""


def desired_taints(spec: dict, view: NodeView) -> list[dict]:
    """The node's taints with the controller-managed ones brought up to date."""
    managed = {"node.kubernetes.io/unschedulable", "node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"}
    taints = [t for t in spec.get("taints") or [] if t.get("key") not in managed]
    old = {(t["key"], t["effect"]): t for t in spec.get("taints") or [] if t.get("key") in managed}

    def add(key: str, effect: str) -> None:
        kept = old.get((key, effect))
        if kept:
            taints.append(kept)
        elif effect == "NoExecute":
            taints.append({"key": key, "effect": effect, "timeAdded": now_rfc3339()})
        else:
            taints.append({"key": key, "effect": effect})

    if view.phase == LOST or view.phase == NEVER:
        add("node.kubernetes.io/unreachable", "NoSchedule")
        add("node.kubernetes.io/unreachable", "NoExecute")
    elif view.phase == STARTING:
        add("node.kubernetes.io/not-ready", "NoSchedule")
        add("node.kubernetes.io/not-ready", "NoExecute")
    if spec.get("unschedulable"):
        add("node.kubernetes.io/unschedulable", "NoSchedule")
    return taints


def host_kernel() -> str:
    return os.uname().release
