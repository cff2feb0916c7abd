"""The cluster profile: the --cluster TOML file plus what the operator's Kubespray checkout already says.

Nodes, addresses, users and groups come from the Kubespray inventory (hosts.yaml or INI);
kube_version and the expected container package versions from its group_vars; the kubeconfig
from the usual places. The result is one frozen `Profile`; every problem is a UsageError that
names the file, what is wrong and the fix. Secrets in the inventory (ansible_password, …) are
never read into the profile, so they cannot leak through a repr or a message.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nodegate.core.errors import UsageError
from nodegate.core.sshroute import SshRoute

NAME_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
PACKAGE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9+.\-]+$")
ROLES = frozenset({"control-plane", "worker", "etcd"})
NODE_KEYWORDS = ("all", "workers", "control-plane")
DEFAULT_HELD_PACKAGES = ("containerd.io", "docker-ce", "docker-ce-cli")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    address: str
    user: str
    roles: frozenset[str]           # subset of ROLES
    bmc: str | None = None          # out-of-band address (BMC/IPMI/iRMC) from [nodes.<name>]
    port: int = 22                  # ansible_port
    identity_file: Path | None = None   # ansible_ssh_private_key_file ([ssh] identity_file otherwise)
    route: SshRoute = SshRoute()        # ansible_ssh_common_args' ProxyJump/ProxyCommand, or the bastion group
    become_user: str = "root"           # ansible_become_user
    become: bool | None = None          # ansible_become as the inventory says it (None: not said)
    # The Kubernetes Node: [nodes.<name>] kube_node, else the inventory's kube_override_hostname
    # (Kubespray's kubelet --hostname-override and kubeadm node name), else the inventory name.
    node_name: str | None = None
    crush_host: str | None = None   # [nodes.<name>] crush_host: overrides the derived CRUSH host
    ceph_osds: bool = True          # [nodes.<name>] ceph_osds = false: the node carries no OSDs

    @property
    def kube_node(self) -> str:
        return self.node_name or self.name

    @property
    def is_control_plane(self) -> bool:
        return "control-plane" in self.roles

    def privilege_problem(self) -> tuple[str, str] | None:
        """Why nodegate cannot run root's commands on this node as the inventory says to reach it,
        as (problem, fix), or None. nodegate's checks and steps need root (apt, dpkg, reboot,
        do-release-upgrade): a non-root login must be allowed to become root. Ansible gives an
        inventory's ansible_become precedence over the command line's -b, so a host with
        `ansible_become: false` is not made root by Kubespray's `-b` either."""
        where = f"host {self.name} (ssh {self.user}@{self.address})"
        if self.become_user != "root":
            return (f"{where} has ansible_become_user {self.become_user!r}: nodegate's checks and steps run as root "
                    "(apt, dpkg, reboot, do-release-upgrade), not as another user",
                    f"remove ansible_become_user for {self.name} from the inventory, or set it to root")
        if self.become is False and self.user != "root":
            return (f"{where} has ansible_become false while logging in as {self.user}: nodegate's checks and steps "
                    "need root, and neither nodegate nor Kubespray's `-b` would become root on it",
                    f"set ansible_become: true for {self.name} (Kubespray's inventories do), or log in as root "
                    "(ansible_user: root)")
        return None

    @property
    def is_worker(self) -> bool:
        return "worker" in self.roles

    @property
    def is_etcd(self) -> bool:
        return "etcd" in self.roles


@dataclass(frozen=True)
class SSHSettings:
    config: Path | None = None
    user: str = "root"
    identity_file: Path | None = None
    known_hosts: Path | None = None
    trust_new_host_keys: bool = False
    # sudo's password (--become-password-env): never in a repr, a comparison or a message
    become_password: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class KubeSettings:
    kubeconfig: Path
    context: str | None = None


@dataclass(frozen=True)
class CephSettings:
    mode: str = "toolbox"                       # 'toolbox' (exec into the Rook toolbox pod) or 'command'
    namespace: str = "rook-ceph"
    toolbox_selector: str = "app=rook-ceph-tools"
    command: tuple[str, ...] = ("ceph",)        # argv prefix in 'command' mode, e.g. ("ceph", "--conf", "/x")
    csi_rbd: bool = True                        # false: the cluster has no Ceph RBD CSI (nothing expected)
    csi_rbd_daemonset: str | None = None        # "namespace/name" of the RBD node plugin, if not found by itself


@dataclass(frozen=True)
class Expectations:
    held_packages: tuple[str, ...] = DEFAULT_HELD_PACKAGES
    # name -> exact Debian version; '{codename}' stands for the node's release codename
    package_versions: Mapping[str, str] = field(default_factory=dict)
    min_free_root_mb: int = 2048
    min_free_boot_mb: int = 150
    # Where held_packages came from: "[expect] held_packages" (the profile) or
    # "container_manager <name>" (the inventory; only Kubespray's docker role holds packages).
    held_source: str = "default"
    container_manager: str = "containerd"      # the inventory's (Kubespray's default when unset)
    kernel_packages: bool = True     # false: the node's kernel is not installed by dpkg (no linux-image-*)

    def version_for(self, package: str, codename: str) -> str | None:
        """The expected version of `package` on a node running `codename`, or None if unknown
        ('{codename}' and '{version}' in a pin are the node's release codename and number)."""
        from nodegate.core.knowledge import ubuntu_release

        version = self.package_versions.get(package)
        if version is None:
            return None
        if "{version}" in version:
            release = ubuntu_release(codename)
            if release is None:
                return None
            version = version.replace("{version}", release.version)
        return version.replace("{codename}", codename)


@dataclass(frozen=True)
class KubesprayCheckout:
    path: Path
    inventory: Path                  # the inventory file (hosts.yaml or INI)
    version: str | None = None       # 'v2.21.0', 'v2.21' (the minor only) or None if unknown
    version_source: str | None = None   # how it was found (nodegate.core.kubespray_version)
    ansible_playbook: Path | None = None   # [kubespray] ansible_playbook: the one to run it with

    @property
    def inventory_dir(self) -> Path:
        return self.inventory.parent


@dataclass(frozen=True)
class UpgradeSettings:
    settle_s: float = 30.0
    devel_release: bool = False               # do-release-upgrade -d
    drain_timeout_s: float = 600.0
    reboot_timeout_worker_s: float = 600.0
    reboot_timeout_control_plane_s: float = 1200.0   # control-plane reboots took about twice as long
    lock_stale_after_s: float = 3600.0
    storage_timeout_s: float = 900.0          # ceph HEALTH_OK and csi-rbdplugin Ready after a node

    def reboot_timeout_s(self, node: NodeSpec) -> float:
        return self.reboot_timeout_control_plane_s if node.is_control_plane else self.reboot_timeout_worker_s

    def reboot_timeout_source(self, node: NodeSpec) -> str:
        """Which profile setting bounds the node's reboots (said in the plan and when one times out)."""
        which = "control_plane" if node.is_control_plane else "worker"
        return f"[upgrade] reboot_timeout_{which}_s, the {which.replace('_', '-')} limit"


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    kubespray: KubesprayCheckout
    nodes: tuple[NodeSpec, ...]
    ssh: SSHSettings
    kube: KubeSettings
    ceph: CephSettings
    expect: Expectations
    upgrade: UpgradeSettings
    kube_version: str | None = None
    ticket_link_pattern: str | None = None

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise UsageError(f"unknown node {name!r} in profile {self.path}; known nodes: {self.known_names()}",
                         fix="use one of the known node names (they come from the Kubespray inventory "
                             f"{self.kubespray.inventory})")

    def known_names(self) -> str:
        return ", ".join(n.name for n in self.nodes) or "(none)"


    def select(self, spec: str) -> tuple[NodeSpec, ...]:
        """Nodes for a --node value (`NAME[,NAME…]`, `all`, `workers`, `control-plane`, or a mix),
        without repeats, in rolling order: workers first, control plane (and etcd) last."""
        items = [item.strip() for item in str(spec).split(",")]
        if not spec or not all(items):
            raise UsageError(f"--node {spec!r} has an empty name",
                             fix="give NAME[,NAME…] without empty items, or one of: " + ", ".join(NODE_KEYWORDS))
        chosen: dict[str, NodeSpec] = {}
        for item in items:
            if item == "all":
                found = self.nodes
            elif item == "workers":
                found = tuple(n for n in self.nodes if n.is_worker and not n.is_control_plane)
                if not found:
                    raise UsageError(f"--node workers: the inventory {self.kubespray.inventory} has no worker-only "
                                     f"nodes (nodes: {self.known_names()})",
                                     fix="name the nodes to upgrade, or use --node control-plane / all")
            elif item == "control-plane":
                found = tuple(n for n in self.nodes if n.is_control_plane)
                if not found:
                    raise UsageError(f"--node control-plane: the inventory {self.kubespray.inventory} has no "
                                     "kube_control_plane hosts", fix="name the nodes to upgrade")
            else:
                if not NAME_PATTERN.match(item):
                    raise UsageError(f"--node {item!r} is not a valid node name; known nodes: {self.known_names()}",
                                     fix="use a node name from the inventory (letters, digits, '.', '-', '_')")
                found = (self.node(item),)
            for node in found:
                chosen.setdefault(node.name, node)
        return tuple(sorted(chosen.values(), key=_rolling_rank))


def _rolling_rank(node: NodeSpec) -> int:
    # sorted() is stable: within a rank the operator's (or the inventory's) order is kept
    if node.is_control_plane:
        return 2
    return 1 if node.is_etcd and not node.is_worker else 0


# --------------------------------------------------------------------------- where the profile is


# --------------------------------------------------------------------------- loading


# --------------------------------------------------------------------------- the inventory


# --------------------------------------------------------------------------- group_vars and the checkout


