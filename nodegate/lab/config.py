"""The shape of one lab: its nodes, addresses and settings, saved as DIR/lab.json.

Every lab component (supervisor, API server, Ceph, etcd, faults, CLI) reads this one file,
so a lab can be inspected and driven from any process.
"""
from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nodegate.lab import shared_files

MAX_NODES = 16
KUBE_VERSION = "v1.25.6"
KUBESPRAY_VERSION = "v2.21.0"
DEFAULT_ROOK = "v1.15.9"
# How a lab is reached unless `lab up` is told otherwise. The production way (HTTPS with the
# lab's CA and a client-certificate kubeconfig, SSH as `ubuntu` with sudo) is one flag away:
# `--https --ssh-user ubuntu`; plain HTTP and root stay the default until the whole suite has
# run against the other.
DEFAULT_API_TLS = False
DEFAULT_SSH_USER = "root"
LOGIN_USER = "ubuntu"        # Ubuntu cloud images' login user; every lab node has it, with sudo
SSH_USERS = ("root", LOGIN_USER)
BASTION_NAME = "bastion"
CONTAINER_MANAGERS = ("docker", "containerd")   # Kubespray container_manager values the lab lays out
# Rook's default cephcsi image per Rook release (rook pkg/operator/ceph/csi/spec.go at tags,
# DefaultCSIPluginImage: v1.17.0 -> v3.14.0, v1.18.0 and v1.18.9 -> v3.15.0).
ROOK_CEPHCSI = {"v1.14.8": "v3.11.0", "v1.14.12": "v3.11.0", "v1.15.0": "v3.12.0", "v1.15.9": "v3.12.3",
                "v1.17.0": "v3.14.0", "v1.18.0": "v3.15.0", "v1.18.9": "v3.15.0"}
# From v1.18 Rook deploys ceph-csi-operator by default (ROOK_USE_CSI_OPERATOR "true" in
# deploy/examples/operator.yaml and pkg/operator/ceph/csi/controller.go).
CSI_OPERATOR_FROM = (1, 18)
# Rook's DefaultMaintenanceTimeout (pkg/operator/ceph/disruption/clusterdisruption/osd.go).
ROOK_MAINTENANCE_TIMEOUT_S = 30 * 60.0


def rook_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.lstrip("v").split(".")[:3])


def crush_name(name: str) -> str:
    """Rook's CRUSH host for a hostname label: dots become dashes (rook pkg/daemon/ceph/client/crush.go
    NormalizeCrushName)."""
    return name.replace(".", "-")


@dataclass(frozen=True)
class LabNode:
    name: str
    index: int
    address: str
    roles: tuple[str, ...]  # subset of ("control-plane", "etcd", "worker")
    domain: str = ""        # with a domain the Kubernetes Node is named <name>.<domain>

    @property
    def kube_name(self) -> str:
        """The Node's name and kubernetes.io/hostname label: the FQDN when the lab has a domain,
        while the inventory keeps the short name (as production clusters often do)."""
        return f"{self.name}.{self.domain}" if self.domain else self.name

    @property
    def crush_host(self) -> str:
        """The CRUSH host Rook gives this node's OSDs: its hostname label with '.' -> '-'."""
        return crush_name(self.kube_name)

    @property
    def control_plane(self) -> bool:
        return "control-plane" in self.roles


@dataclass(frozen=True)
class LabConfig:
    dir: Path
    nodes: tuple[LabNode, ...]
    # Second octet of every lab address: 0 gives the documented 127.0.x.y addresses; another
    # value lets a second lab (a test's N=1 or N=8 lab, a developer's) run beside the first.
    net: int = 0
    repo_port: int = 80
    api_port: int = 6443
    boot_delay_s: float = 3.0     # node down → node starts again after a reboot
    ready_delay_s: float = 2.0    # node up → Kubernetes reports it Ready
    rook_version: str = DEFAULT_ROOK
    kube_version: str = KUBE_VERSION
    kubespray_version: str = KUBESPRAY_VERSION
    # Kubespray's container_manager for the lab's inventory: docker (the seed's story: docker-ce
    # and containerd.io from apt, held) or containerd (Kubespray's default: no such packages).
    container_manager: str = "docker"
    domain: str = ""              # --domain: FQDN Node names, CRUSH hosts with dashes
    # The CephCluster's spec.disruptionManagement, acted on by the lab's Rook disruption controller.
    # Off unless asked for (--manage-pod-budgets), so the lab's existing behaviour stays; Rook's own
    # deploy/examples/cluster.yaml turns it on.
    manage_pod_budgets: bool = False
    osd_maintenance_timeout_s: float = ROOK_MAINTENANCE_TIMEOUT_S
    osd_down_out_interval_s: float = 600.0   # Ceph's mon_osd_down_out_interval default
    # --racks N: CRUSH hosts in N racks (node i in rack ((i-1) mod N)+1) and pools whose rule
    # places replicas in different racks; 0: hosts straight under the root, rule domain host.
    racks: int = 0
    token: str = field(default="", repr=False)  # the API server's bearer token: a secret
    api_tls: bool = DEFAULT_API_TLS   # HTTPS with the lab's CA (pki.py); False: plain HTTP
    ssh_user: str = DEFAULT_SSH_USER  # the user the lab's profile and inventory log in as
    ssh_port: int = 22                # every node's sshd port (the bastion's too)
    sudo_password: bool = False       # the login user's sudo asks for its password
    bastion: bool = False             # nodes accept SSH only through the bastion node

    @property
    def bastion_node(self) -> LabNode | None:
        """The jump host (not a cluster node: no Kubernetes Node, no etcd, no OSD)."""
        if not self.bastion:
            return None
        return LabNode(name=BASTION_NAME, index=0, address=f"127.{self.net}.4.1", roles=("bastion",))

    @property
    def ssh_hosts(self) -> tuple[LabNode, ...]:
        """Every host with an sshd: the nodes, then the bastion when there is one."""
        extra = self.bastion_node
        return self.nodes + ((extra,) if extra is not None else ())

    @property
    def cephcsi_version(self) -> str:
        return ROOK_CEPHCSI[self.rook_version]

    @property
    def csi_operator(self) -> bool:
        return rook_tuple(self.rook_version) >= CSI_OPERATOR_FROM

    def rack(self, node: LabNode) -> str | None:
        """The CRUSH rack of a node's host (None without --racks): racks take the nodes in turn,
        so the control plane spreads over racks as it does in a data centre."""
        return f"rack{(node.index - 1) % self.racks + 1}" if self.racks else None

    def crush_location(self, node: LabNode) -> str:
        """The OSD's `crush location` (root, rack when there are racks, host)."""
        rack = self.rack(node)
        return f"root=default {f'rack={rack} ' if rack else ''}host={node.crush_host}"

    @property
    def failure_domain(self) -> str:
        """The CRUSH bucket type the lab's pools place replicas across."""
        return "rack" if self.racks else "host"

    def kube_node(self, kube_name: str) -> LabNode | None:
        """The lab node whose Kubernetes Node is ``kube_name``."""
        return next((n for n in self.nodes if n.kube_name == kube_name), None)

    @property
    def repo_address(self) -> str:
        return f"127.{self.net}.2.1"

    @property
    def api_address(self) -> str:
        return f"127.{self.net}.3.1"

    @property
    def ceph_address(self) -> str:
        return f"127.{self.net}.0.1"

    @property
    def api_url(self) -> str:
        return f"{'https' if self.api_tls else 'http'}://{self.api_address}:{self.api_port}"

    @property
    def repo_url(self) -> str:
        port = "" if self.repo_port == 80 else f":{self.repo_port}"
        return f"http://{self.repo_address}{port}"

    def node(self, name: str) -> LabNode:
        for node in self.ssh_hosts:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise KeyError(f"no lab node {name!r}; the lab has {known}")

    @property
    def etcd_nodes(self) -> tuple[LabNode, ...]:
        return tuple(n for n in self.nodes if "etcd" in n.roles)

    # -- files -------------------------------------------------------------
    @classmethod
    def new(cls, dir: Path, n_nodes: int = 4, **settings) -> "LabConfig":
        if not 1 <= n_nodes <= MAX_NODES:
            raise ValueError(f"a lab has 1 to {MAX_NODES} nodes, not {n_nodes}")
        if settings.get("rook_version", DEFAULT_ROOK) not in ROOK_CEPHCSI:
            raise ValueError(f"unknown Rook version; the lab knows {', '.join(ROOK_CEPHCSI)}")
        if settings.get("ssh_user", DEFAULT_SSH_USER) not in SSH_USERS:
            raise ValueError(f"the lab's SSH user is one of {', '.join(SSH_USERS)}")
        if not 1 <= settings.get("ssh_port", 22) <= 65535:
            raise ValueError("an SSH port is 1 to 65535")
        if settings.get("sudo_password") and settings.get("ssh_user", DEFAULT_SSH_USER) == "root":
            raise ValueError(f"a sudo password only matters for a non-root login: use ssh_user {LOGIN_USER!r}")
        if settings.get("container_manager", "docker") not in CONTAINER_MANAGERS:
            raise ValueError(f"container manager must be one of {', '.join(CONTAINER_MANAGERS)}")
        racks = settings.get("racks", 0)
        if racks and not 2 <= racks <= n_nodes:
            raise ValueError(f"--racks takes 2 to the number of nodes ({n_nodes}), not {racks}")
        net = settings.pop("net", 0)
        domain = settings.get("domain", "")
        if domain and not valid_domain(domain):
            raise ValueError(f"--domain {domain!r} is not a DNS domain (e.g. example.internal)")
        return cls(dir=Path(dir).resolve(), nodes=make_nodes(n_nodes, net, domain), net=net,
                   token=settings.pop("token", None) or secrets.token_hex(24), **settings)

    def save(self) -> None:
        data = asdict(self)
        data["dir"] = str(self.dir)
        shared_files.write_json(self.dir / "lab.json", data, mode=0o600)  # holds the API token

    @classmethod
    def load(cls, dir: Path) -> "LabConfig":
        data = shared_files.read_json(Path(dir) / "lab.json")
        if data is None:
            raise FileNotFoundError(f"no lab.json in {dir}")
        data["dir"] = Path(data["dir"])
        data["nodes"] = tuple(LabNode(n["name"], n["index"], n["address"], tuple(n["roles"]), n.get("domain", ""))
                              for n in data["nodes"])
        return cls(**data)


def valid_domain(domain: str) -> bool:
    parts = domain.split(".")
    return all(p and len(p) <= 63 and p.replace("-", "").isalnum() and p.isascii() and not p.startswith("-")
               and not p.endswith("-") for p in parts) and domain.lower() == domain


def make_nodes(n_nodes: int, net: int = 0, domain: str = "") -> tuple[LabNode, ...]:
    """node1, node2 control plane (node1 alone below 3 nodes), the rest workers;
    etcd on node1-node3 (node1 alone below 3 nodes), as Kubespray lays out a small cluster."""
    nodes = []
    for i in range(1, n_nodes + 1):
        roles: list[str] = []
        if i == 1 or (i == 2 and n_nodes >= 3):
            roles.append("control-plane")
        else:
            roles.append("worker")
        if i == 1 or (n_nodes >= 3 and i <= 3):
            roles.append("etcd")
        nodes.append(LabNode(name=f"node{i}", index=i, address=f"127.{net}.1.{i}", roles=tuple(roles),
                             domain=domain))
    return tuple(nodes)
