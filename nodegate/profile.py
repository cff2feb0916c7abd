"""The cluster profile: the --cluster TOML file plus what the operator's Kubespray checkout already says.

Nodes, addresses, users and groups come from the Kubespray inventory (hosts.yaml or INI);
kube_version and the expected container package versions from its group_vars; the kubeconfig
from the usual places. The result is one frozen `Profile`; every problem is a UsageError that
names the file, what is wrong and the fix. Secrets in the inventory (ansible_password, …) are
never read into the profile, so they cannot leak through a repr or a message.
"""
from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nodegate.errors import UsageError

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
    kernel_packages: bool = True     # false: the node's kernel is not installed by dpkg (no linux-image-*)

    def version_for(self, package: str, codename: str) -> str | None:
        """The expected version of `package` on a node running `codename`, or None if unknown."""
        version = self.package_versions.get(package)
        return version.replace("{codename}", codename) if version is not None else None


@dataclass(frozen=True)
class KubesprayCheckout:
    path: Path
    inventory: Path                  # the inventory file (hosts.yaml or INI)
    version: str | None = None       # 'v2.21.0' (galaxy.yml or git tag), None if unknown

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
                if not _NAME.match(item):
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

ENV_VAR = "NODEGATE_CLUSTER"
DEFAULT_FILE = "nodegate.toml"


def resolve_profile_path(option: str | None, *, cwd: Path | None = None,
                         environ: Mapping[str, str] | None = None) -> Path:
    """--cluster, else $NODEGATE_CLUSTER, else ./nodegate.toml."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    if option:
        path, source = Path(option).expanduser(), "--cluster"
    elif environ.get(ENV_VAR):
        path, source = Path(environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    else:
        path = cwd / DEFAULT_FILE
        if not path.is_file():
            raise UsageError(f"no cluster profile: no --cluster option, ${ENV_VAR} is not set, "
                             f"and there is no {DEFAULT_FILE} in {cwd}",
                             fix=f"pass --cluster PATH, set {ENV_VAR}=PATH, or create ./{DEFAULT_FILE} "
                                 "(see the lab's DIR/cluster.toml for an example)")
        return path
    if not path.is_absolute():
        path = cwd / path
    path = path.resolve()
    if not path.is_file():
        raise UsageError(f"cluster profile {path} (from {source}) does not exist or is not a file",
                         fix=f"check the path given by {source}")
    return path


# --------------------------------------------------------------------------- loading

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
# no address starts with "-": one that does would read as an option to ssh or ansible (-oProxyCommand=…)
_ADDRESS = re.compile(r"^[A-Za-z0-9:\[][A-Za-z0-9._:\[\]-]*$")
_USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]*$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.\-]+$")

# The only inventory variables nodegate reads. Everything else (ansible_password,
# ansible_become_password, vault blobs, …) is dropped while parsing, so no secret is ever held.
INVENTORY_VARS = frozenset({
    "ansible_host", "ansible_ssh_host", "ansible_user", "ansible_ssh_user", "ansible_port", "ansible_ssh_port",
    "kube_version", "kube_override_hostname", "container_manager", "containerd_package", "containerd_version",
    "docker_version", "docker_cli_version", "docker_containerd_version",
})
CONTROL_PLANE_GROUPS = ("kube_control_plane", "kube-master", "kube_master")
WORKER_GROUPS = ("kube_node", "kube-node")
ETCD_GROUPS = ("etcd",)
CLUSTER_GROUPS = ("k8s_cluster", "k8s-cluster")

_SECTIONS: dict[str, frozenset[str]] = {
    "cluster": frozenset({"name", "ticket_link_pattern"}),
    "kubespray": frozenset({"path", "inventory", "version"}),
    "kubernetes": frozenset({"kubeconfig", "context", "kube_version"}),
    "ssh": frozenset({"config", "user", "identity_file", "known_hosts", "trust_new_host_keys"}),
    "ceph": frozenset({"mode", "namespace", "toolbox_selector", "command", "csi_rbd", "csi_rbd_daemonset"}),
    "expect": frozenset({"held_packages", "package_versions", "min_free_root_mb", "min_free_boot_mb",
                         "kernel_packages"}),
    "upgrade": frozenset({"settle_s", "devel_release", "drain_timeout_s", "reboot_timeout_worker_s",
                          "reboot_timeout_control_plane_s", "lock_stale_after_s", "storage_timeout_s"}),
    "nodes": frozenset(),   # [nodes.<name>] tables, checked against the inventory
}
_NODE_KEYS = frozenset({"bmc", "kube_node", "crush_host", "ceph_osds"})


def load_profile(path: Path, *, environ: Mapping[str, str] | None = None) -> Profile:
    """Read the profile TOML and everything it points at. Raises UsageError on any problem."""
    import tomllib

    environ = os.environ if environ is None else environ
    path = Path(path).expanduser().resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"cluster profile {path} does not exist", fix="check --cluster / $NODEGATE_CLUSTER") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cluster profile {path} cannot be read ({type(exc).__name__}: {exc.strerror or exc})"
                         if isinstance(exc, OSError) else f"cluster profile {path} is not UTF-8 text",
                         fix="make the file readable UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib names the line and column but never echoes the content (which may hold secrets)
        raise UsageError(f"cluster profile {path} is not valid TOML: {exc}",
                         fix="correct the TOML syntax at that line (https://toml.io)") from None
    except RecursionError:
        # tomllib recurses per nesting level: thousands of '[' would end in a traceback
        raise UsageError(f"cluster profile {path} nests arrays or tables too deeply to be a cluster profile",
                         fix="correct the TOML (https://toml.io)") from None
    reader = _TomlReader(path, data)
    reader.check_keys()

    kubespray = reader.kubespray()
    inventory = read_inventory(kubespray.inventory)
    gvars = _cluster_vars(kubespray, inventory)
    ssh = reader.ssh()
    nodes = _nodes(kubespray.inventory, inventory, ssh.user, reader.table("nodes"), path)
    kube_version = reader.opt_str("kubernetes", "kube_version") or _plain(gvars.get("kube_version"))
    expect = reader.expect(_package_versions(kubespray, gvars))
    return Profile(
        name=reader.opt_str("cluster", "name") or path.stem,
        path=path,
        kubespray=kubespray,
        nodes=nodes,
        ssh=ssh,
        kube=reader.kube(kubespray, environ),
        ceph=reader.ceph(),
        expect=expect,
        upgrade=reader.upgrade(),
        kube_version=kube_version,
        ticket_link_pattern=reader.opt_str("cluster", "ticket_link_pattern"),
    )


class _TomlReader:
    """Typed access to the profile's tables, each problem a UsageError naming [table] key."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path = path
        self.data = data

    def fail(self, what: str, fix: str) -> UsageError:
        return UsageError(f"cluster profile {self.path}: {what}", fix=fix)

    def check_keys(self) -> None:
        for section, value in self.data.items():
            if section not in _SECTIONS:
                raise self.fail(f"unknown table [{section}]", fix="use only: " + ", ".join(f"[{s}]" for s in _SECTIONS))
            if not isinstance(value, dict):
                raise self.fail(f"[{section}] must be a table", fix=f"write it as a [{section}] table")
            if section == "nodes":
                for name, node in value.items():
                    if not isinstance(node, dict):
                        raise self.fail(f"[nodes] {name} must be a table", fix=f'write [nodes.{name}] with bmc = "…"')
                    unknown = sorted(set(node) - _NODE_KEYS)
                    if unknown:
                        raise self.fail(f"unknown key(s) {', '.join(unknown)} in [nodes.{name}]",
                                        fix="known keys: " + ", ".join(sorted(_NODE_KEYS)))
                continue
            unknown = sorted(set(value) - _SECTIONS[section])
            if unknown:
                raise self.fail(f"unknown key(s) {', '.join(unknown)} in [{section}]",
                                fix=f"known keys in [{section}]: " + ", ".join(sorted(_SECTIONS[section])))

    def table(self, section: str) -> dict:
        return self.data.get(section, {})

    def _bool(self, section: str, key: str, default: bool) -> bool:
        value = self.table(section).get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"[{section}] {key} must be true or false", fix=f"write {key} = true or {key} = false")
        return value

    def get(self, section: str, key: str, kind: type | tuple[type, ...], kind_name: str):
        value = self.table(section).get(key)
        if value is None:
            return None
        if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(f"[{section}] {key} must be {kind_name}, not a boolean", fix=f"set {key} to {kind_name}")
        if not isinstance(value, kind):
            raise self.fail(f"[{section}] {key} must be {kind_name} (got {type(value).__name__})",
                            fix=f"set {key} to {kind_name}")
        return value

    def opt_str(self, section: str, key: str) -> str | None:
        value = self.get(section, key, str, "a string")
        return value or None

    def number(self, section: str, key: str, default: float) -> float:
        value = self.get(section, key, (int, float), "a number")
        if value is None:
            return default
        if value < 0 or value != value:
            raise self.fail(f"[{section}] {key} must not be negative", fix=f"set {key} to 0 or more")
        return float(value)

    def opt_path(self, section: str, key: str, *, must_exist: bool = True, base: Path | None = None) -> Path | None:
        value = self.opt_str(section, key)
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = (base or self.path.parent) / path
        if must_exist and not path.exists():
            raise self.fail(f"[{section}] {key} = {str(path)!r} does not exist",
                            fix=f"point [{section}] {key} at an existing file (relative paths are read from "
                                f"{self.path.parent})")
        return path

    # -- tables -----------------------------------------------------------
    def kubespray(self) -> KubesprayCheckout:
        if not self.table("kubespray").get("path"):
            raise self.fail("[kubespray] path is missing",
                            fix='add [kubespray] path = "/path/to/kubespray" (your Kubespray checkout)')
        checkout = self.opt_path("kubespray", "path")
        assert checkout is not None
        if not checkout.is_dir():
            raise self.fail(f"[kubespray] path {str(checkout)!r} is not a directory",
                            fix="point it at your Kubespray checkout (the directory with cluster.yml)")
        inventory_value = self.opt_str("kubespray", "inventory")
        if not inventory_value:
            raise self.fail("[kubespray] inventory is missing",
                            fix='add [kubespray] inventory = "inventory/mycluster/hosts.yaml"')
        inventory = _find_inventory(Path(inventory_value).expanduser(), checkout, self.path)
        version = self.opt_str("kubespray", "version") or kubespray_version(checkout)
        return KubesprayCheckout(path=checkout, inventory=inventory, version=_normalise_tag(version))

    def ssh(self) -> SSHSettings:
        trust = self.get("ssh", "trust_new_host_keys", bool, "true or false") or False
        user = self.opt_str("ssh", "user") or _local_user()
        if not _USER.match(user):
            raise self.fail("[ssh] user is not a valid user name", fix="use letters, digits, '.', '-', '_'")
        return SSHSettings(config=self.opt_path("ssh", "config"), user=user,
                           identity_file=self.opt_path("ssh", "identity_file"),
                           known_hosts=self.opt_path("ssh", "known_hosts", must_exist=not trust),
                           trust_new_host_keys=trust)

    def kube(self, kubespray: KubesprayCheckout, environ: Mapping[str, str]) -> KubeSettings:
        context = self.opt_str("kubernetes", "context")
        named = self.opt_path("kubernetes", "kubeconfig")
        if named is not None:
            if not named.is_file():
                raise self.fail(f"[kubernetes] kubeconfig {str(named)!r} is not a file", fix="point it at a kubeconfig file")
            return KubeSettings(kubeconfig=named, context=context)
        tried = []
        for item in (environ.get("KUBECONFIG") or "").split(os.pathsep):
            if item:
                tried.append(Path(item).expanduser())
        tried.append(Path(environ.get("HOME") or Path.home()) / ".kube" / "config")
        tried.append(kubespray.inventory_dir / "artifacts" / "admin.conf")  # kubeconfig_localhost: true
        for candidate in tried:
            if candidate.is_file():
                return KubeSettings(kubeconfig=candidate, context=context)
        raise self.fail("no kubeconfig found; looked at " + ", ".join(str(p) for p in tried),
                        fix='set [kubernetes] kubeconfig = "…" in the profile, or export KUBECONFIG')

    def ceph(self) -> CephSettings:
        mode = self.opt_str("ceph", "mode") or "toolbox"
        if mode not in ("toolbox", "command"):
            raise self.fail(f"[ceph] mode must be 'toolbox' or 'command', not {mode!r}",
                            fix='use mode = "toolbox" (exec into rook-ceph-tools) or mode = "command"')
        raw = self.table("ceph").get("command")
        if raw is None:
            command: tuple[str, ...] = ("ceph",)
        elif isinstance(raw, str):
            try:
                command = tuple(shlex.split(raw))
            except ValueError:
                raise self.fail("[ceph] command has unbalanced quotes", fix="write it as a list of words") from None
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            command = tuple(raw)
        else:
            raise self.fail("[ceph] command must be a list of strings", fix='e.g. command = ["ceph", "--conf", "/etc/ceph/ceph.conf"]')
        if not command:
            raise self.fail("[ceph] command is empty", fix='e.g. command = ["ceph"]')
        csi_rbd = self.table("ceph").get("csi_rbd", True)
        if not isinstance(csi_rbd, bool):
            raise self.fail("[ceph] csi_rbd must be true or false",
                            fix="csi_rbd = false says the cluster has no Ceph RBD CSI node plugin to check")
        daemonset = self.opt_str("ceph", "csi_rbd_daemonset")
        if daemonset is not None and not re.match(r"^[a-z0-9][a-z0-9.-]*/[a-z0-9][a-z0-9.-]*$", daemonset):
            raise self.fail(f"[ceph] csi_rbd_daemonset {daemonset!r} is not <namespace>/<name>",
                            fix='e.g. csi_rbd_daemonset = "ceph-csi-rbd/ceph-csi-rbd-nodeplugin"')
        return CephSettings(mode=mode, namespace=self.opt_str("ceph", "namespace") or "rook-ceph",
                            toolbox_selector=self.opt_str("ceph", "toolbox_selector") or "app=rook-ceph-tools",
                            command=command, csi_rbd=csi_rbd, csi_rbd_daemonset=daemonset)

    def expect(self, discovered: Mapping[str, str]) -> Expectations:
        held = self.get("expect", "held_packages", list, "a list of package names")
        if held is None:
            held_t = DEFAULT_HELD_PACKAGES
        else:
            if not all(isinstance(x, str) and _PACKAGE.match(x) for x in held):
                raise self.fail("[expect] held_packages must be Debian package names",
                                fix='e.g. held_packages = ["containerd.io", "docker-ce", "docker-ce-cli"]')
            held_t = tuple(dict.fromkeys(held))
        versions = dict(discovered)
        table = self.get("expect", "package_versions", dict, "a table of name = version")
        for name, version in (table or {}).items():
            if not _PACKAGE.match(name) or not isinstance(version, str) or not version.strip():
                raise self.fail(f"[expect] package_versions: {name!r} needs a version string",
                                fix='e.g. package_versions = { "containerd.io" = "1.6.4-1" }')
            versions[name] = version.strip()
        defaults = Expectations()
        return Expectations(held_packages=held_t, package_versions=versions,
                            min_free_root_mb=int(self.number("expect", "min_free_root_mb", defaults.min_free_root_mb)),
                            min_free_boot_mb=int(self.number("expect", "min_free_boot_mb", defaults.min_free_boot_mb)),
                            kernel_packages=self._bool("expect", "kernel_packages", True))

    def upgrade(self) -> UpgradeSettings:
        d = UpgradeSettings()
        devel = self.get("upgrade", "devel_release", bool, "true or false")
        return UpgradeSettings(
            settle_s=self.number("upgrade", "settle_s", d.settle_s),
            devel_release=d.devel_release if devel is None else devel,
            drain_timeout_s=self.number("upgrade", "drain_timeout_s", d.drain_timeout_s),
            reboot_timeout_worker_s=self.number("upgrade", "reboot_timeout_worker_s", d.reboot_timeout_worker_s),
            reboot_timeout_control_plane_s=self.number("upgrade", "reboot_timeout_control_plane_s",
                                                       d.reboot_timeout_control_plane_s),
            lock_stale_after_s=self.number("upgrade", "lock_stale_after_s", d.lock_stale_after_s),
            storage_timeout_s=self.number("upgrade", "storage_timeout_s", d.storage_timeout_s),
        )


def _local_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root"


_INVENTORY_NAMES = ("hosts.yaml", "hosts.yml", "inventory.ini", "hosts.ini", "hosts")


def _find_inventory(value: Path, checkout: Path, profile: Path) -> Path:
    """An absolute path; else relative to the checkout (as operators type it), else to the profile."""
    candidates = [value] if value.is_absolute() else [checkout / value, profile.parent / value]
    for candidate in candidates:
        if candidate.is_dir():
            for name in _INVENTORY_NAMES:
                if (candidate / name).is_file():
                    return candidate / name
            raise UsageError(f"cluster profile {profile}: [kubespray] inventory {str(candidate)!r} is a directory "
                             f"without {' / '.join(_INVENTORY_NAMES)}",
                             fix="point [kubespray] inventory at the inventory file itself")
        if candidate.is_file():
            return candidate
    raise UsageError(f"cluster profile {profile}: the Kubespray inventory {str(value)!r} does not exist "
                     f"(looked at {', '.join(str(c) for c in candidates)})",
                     fix="set [kubespray] inventory to your inventory file, e.g. inventory/mycluster/hosts.yaml")


# --------------------------------------------------------------------------- the inventory

@dataclass(frozen=True)
class Inventory:
    """What nodegate reads from an Ansible inventory: hosts (in file order), groups, safe vars."""
    path: Path
    host_vars: Mapping[str, Mapping[str, str]]        # host -> its own safe vars
    group_hosts: Mapping[str, tuple[str, ...]]        # group -> hosts listed directly
    group_children: Mapping[str, tuple[str, ...]]     # group -> child groups
    group_vars: Mapping[str, Mapping[str, str]]       # group -> its safe vars

    def members(self, group: str) -> tuple[str, ...]:
        """Hosts of a group and of its children, recursively, in inventory order."""
        seen_groups: set[str] = set()
        found: dict[str, None] = {}

        def walk(name: str) -> None:
            if name in seen_groups:
                return
            seen_groups.add(name)
            for host in self.group_hosts.get(name, ()):
                found[host] = None
            for child in self.group_children.get(name, ()):
                walk(child)

        if group == "all":
            return tuple(self.host_vars)
        walk(group)
        order = list(self.host_vars)
        return tuple(sorted(found, key=lambda h: order.index(h) if h in order else len(order)))

    def groups_of(self, host: str) -> tuple[str, ...]:
        """Groups containing the host (directly or through children), parents before children."""
        groups = [g for g in set(self.group_hosts) | set(self.group_children) if host in self.members(g)]
        return tuple(sorted(groups, key=lambda g: (self._depth(g), g)))

    def _depth(self, group: str, _seen: frozenset[str] = frozenset()) -> int:
        parents = [p for p, kids in self.group_children.items() if group in kids and p not in _seen]
        return 0 if not parents else 1 + max(self._depth(p, _seen | {group}) for p in parents)

    def vars_for(self, host: str) -> dict[str, str]:
        merged = dict(self.group_vars.get("all", {}))
        for group in self.groups_of(host):
            if group != "all":
                merged.update(self.group_vars.get(group, {}))
        merged.update(self.host_vars.get(host, {}))
        return merged


def read_inventory(path: Path) -> Inventory:
    """An Ansible inventory in YAML (hosts.yaml) or INI form. Raises UsageError naming the problem.

    Hand-written on purpose: Ansible's own loader costs most of a second to import, prints
    warnings instead of raising, and reads vault and secrets nodegate must never hold."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise UsageError(f"the Kubespray inventory {path} cannot be read: {reason}",
                         fix="make the inventory file readable by this user") from None
    builder = _InventoryBuilder(path)
    if path.suffix in (".yaml", ".yml") or (path.suffix not in (".ini", ".cfg") and _looks_like_yaml(text)):
        builder.from_yaml(text)
    else:
        builder.from_ini(text)
    return builder.build()


def _looks_like_yaml(text: str) -> bool:
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";", "---")):
            continue
        return not stripped.startswith("[")
    return False


class _InventoryBuilder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.hosts: dict[str, dict[str, str]] = {}
        self.group_hosts: dict[str, dict[str, None]] = {}
        self.group_children: dict[str, dict[str, None]] = {}
        self.group_vars: dict[str, dict[str, str]] = {}

    def fail(self, what: str, fix: str) -> UsageError:
        return UsageError(f"the Kubespray inventory {self.path}: {what}", fix=fix)

    def group(self, name: str) -> None:
        self.group_hosts.setdefault(name, {})
        self.group_children.setdefault(name, {})

    def add_host(self, group: str, host: str, host_vars: Mapping[str, object]) -> None:
        self.group(group)
        self.group_hosts[group][host] = None
        own = self.hosts.setdefault(host, {})
        own.update(_safe_vars(host_vars))

    def add_vars(self, group: str, group_vars: Mapping[str, object]) -> None:
        self.group(group)
        self.group_vars.setdefault(group, {}).update(_safe_vars(group_vars))

    def build(self) -> Inventory:
        for children in self.group_children.values():
            for child in children:
                self.group(child)
        return Inventory(path=self.path, host_vars={h: dict(v) for h, v in self.hosts.items()},
                         group_hosts={g: tuple(h) for g, h in self.group_hosts.items()},
                         group_children={g: tuple(c) for g, c in self.group_children.items()},
                         group_vars={g: dict(v) for g, v in self.group_vars.items()})

    # -- YAML ---------------------------------------------------------------
    def from_yaml(self, text: str) -> None:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            # line and problem only: yaml's own message quotes the line, which may hold a password
            mark = exc.problem_mark or exc.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise self.fail(f"not valid YAML{where}: {exc.problem or exc.context}",
                            fix="correct the YAML at that line") from None
        except yaml.YAMLError as exc:
            raise self.fail(f"not valid YAML ({type(exc).__name__})", fix="correct the YAML syntax") from None
        except RecursionError:   # PyYAML recurses per nesting level
            raise self.fail("nests too deeply to be an inventory", fix="correct the YAML syntax") from None
        if data is None:
            raise self.fail("the file is empty", fix="list your nodes under all: hosts: and the Kubespray groups")
        if not isinstance(data, dict):
            raise self.fail("the top level must be a mapping (all: hosts: … children: …)",
                            fix="use the layout of Kubespray's inventory/sample/hosts.yaml")
        self.group("all")
        for name, body in data.items():
            if str(name) != "all":   # a top-level group other than all is an implicit child of all
                self.group_children["all"][str(name)] = None
            self._yaml_group(str(name), body, trail=str(name))

    def _yaml_group(self, name: str, body: object, trail: str, _parents: tuple[str, ...] = ()) -> None:
        self.group(name)
        if body is None:
            return
        if name in _parents:
            # YAML anchors can make a group its own descendant (`a: &x {children: {b: {children: {a: *x}}}}`);
            # Ansible refuses such a loop, and walking it would never end
            raise self.fail(f"group {name} is its own descendant ({' -> '.join(_parents + (name,))})",
                            fix="remove the loop from the children: entries (check YAML anchors and aliases)")
        if not isinstance(body, dict):
            raise self.fail(f"group {trail} must be a mapping with hosts/children/vars",
                            fix=f"write {name}: followed by hosts:, children: or vars:")
        unknown = sorted(str(k) for k in set(body) - {"hosts", "children", "vars"})
        if unknown:
            raise self.fail(f"group {trail} has unknown key(s) {', '.join(unknown)} (only hosts, children, vars)",
                            fix="put hosts under hosts:, groups under children:, variables under vars:")
        hosts = body.get("hosts")
        if hosts is not None:
            if not isinstance(hosts, dict):
                raise self.fail(f"{trail}.hosts must be a mapping of host names",
                                fix="write each host as `name:` (with its vars indented below, or nothing)")
            for host, host_vars in hosts.items():
                if host_vars is not None and not isinstance(host_vars, dict):
                    raise self.fail(f"host {host} in {trail}.hosts: its variables must be a mapping",
                                    fix=f"write `{host}:` then `ansible_host: …` indented below")
                self.add_host(name, str(host), host_vars or {})
        group_vars = body.get("vars")
        if group_vars is not None:
            if not isinstance(group_vars, dict):
                raise self.fail(f"{trail}.vars must be a mapping", fix="write variables as key: value")
            self.add_vars(name, group_vars)
        children = body.get("children")
        if children is not None:
            if not isinstance(children, dict):
                raise self.fail(f"{trail}.children must be a mapping of group names",
                                fix="write each child group as `group_name:`")
            for child, child_body in children.items():
                child = str(child)
                if name != "all" and child == name:
                    raise self.fail(f"group {name} lists itself as a child", fix="remove the loop")
                self.group_children[name][child] = None
                self._yaml_group(child, child_body, trail=f"{trail}.children.{child}", _parents=_parents + (name,))

    # -- INI ----------------------------------------------------------------
    def from_ini(self, text: str) -> None:
        section, kind = "ungrouped", "hosts"
        self.group("all")
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                match = re.match(r"^\[([^\]:\s]+)(?::(vars|children|hosts))?\]\s*(?:[#;].*)?$", line)
                if not match:
                    raise self.fail(f"line {number}: a section header must look like [group], [group:vars] "
                                    "or [group:children]", fix="correct the section header")
                section, kind = match.group(1), match.group(2) or "hosts"
                self.group(section)
                if section != "all":
                    self.group_children["all"].setdefault(section, None)
                continue
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                raise self.fail(f"line {number}: unbalanced quotes", fix="close the quote on that line") from None
            if not words:
                continue
            if kind == "children":
                self.group_children.setdefault(section, {})[words[0]] = None
                self.group(words[0])
            elif kind == "vars":
                key, sep, value = line.partition("=")
                if not sep:
                    raise self.fail(f"line {number} in [{section}:vars] is not key=value", fix="write key=value")
                self.add_vars(section, {key.strip(): _ini_value(value)})
            else:
                host_vars = {}
                for word in words[1:]:
                    key, sep, value = word.partition("=")
                    if not sep:
                        raise self.fail(f"line {number}: host {words[0]} has a word that is not key=value",
                                        fix="write host variables as key=value")
                    host_vars[key] = value
                for host in _expand_host_pattern(words[0], number, self):
                    name, port = _split_port(host)
                    if port:
                        host_vars.setdefault("ansible_port", port)
                    self.add_host(section, name, host_vars)


def _ini_value(value: str) -> str:
    value = value.strip()
    try:
        words = shlex.split(value, comments=True)
    except ValueError:
        return value
    return " ".join(words)


def _split_port(host: str) -> tuple[str, str | None]:
    match = re.match(r"^([^:\[\]]+):(\d+)$", host)
    return (match.group(1), match.group(2)) if match else (host, None)


def _expand_host_pattern(pattern: str, number: int, builder: _InventoryBuilder) -> list[str]:
    """Ansible's `node[1:3]` / `node[01:10]` ranges (numeric only)."""
    match = re.match(r"^(.*)\[(\d+):(\d+)\](.*)$", pattern)
    if not match:
        return [pattern]
    head, start, end, tail = match.groups()
    if int(end) < int(start) or int(end) - int(start) > 1000:
        raise builder.fail(f"line {number}: host range [{start}:{end}] is not a valid range",
                           fix="write the range as [low:high]")
    width = len(start) if start.startswith("0") else 0
    return [f"{head}{str(i).zfill(width)}{tail}" for i in range(int(start), int(end) + 1)]


def _safe_vars(values: Mapping[object, object]) -> dict[str, str]:
    return {str(k): _plain_str(v) for k, v in values.items() if str(k) in INVENTORY_VARS and v is not None}


def _plain_str(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _plain(value: str | None) -> str | None:
    """A value nodegate can use as is: not empty and not an unrendered Jinja template."""
    if value is None:
        return None
    value = str(value).strip()
    return value if value and "{{" not in value and "{%" not in value else None


def _nodes(inventory_path: Path, inventory: Inventory, default_user: str, table: Mapping[str, Mapping[str, object]],
           profile: Path) -> tuple[NodeSpec, ...]:
    roles_of: dict[str, set[str]] = {}
    for role, groups in (("control-plane", CONTROL_PLANE_GROUPS), ("worker", WORKER_GROUPS), ("etcd", ETCD_GROUPS)):
        for group in groups:
            for host in inventory.members(group):
                roles_of.setdefault(host, set()).add(role)
    if not roles_of:
        raise UsageError(f"the Kubespray inventory {inventory_path} has no hosts in kube_control_plane, kube_node "
                         "or etcd", fix="list your nodes in the Kubespray groups (see inventory/sample)")
    order = list(inventory.host_vars)
    nodes = []
    for host in sorted(roles_of, key=lambda h: order.index(h) if h in order else len(order)):
        if not _NAME.match(host):
            raise UsageError(f"the Kubespray inventory {inventory_path}: host name {host!r} is not a valid node name",
                             fix="node names are letters, digits, '.', '-' and '_' (RFC 1123, as Kubernetes needs)")
        hv = inventory.vars_for(host)
        address = hv.get("ansible_host") or hv.get("ansible_ssh_host")
        if not address and re.match(r"^[0-9.]+$|^[0-9a-fA-F:]+:[0-9a-fA-F:]*$", host):
            address = host   # Ansible connects to the name itself; a literal IP is unambiguous
        if not address:
            raise UsageError(f"the Kubespray inventory {inventory_path}: host {host} has no address (ansible_host)",
                             fix=f"set ansible_host for {host} in the inventory")
        if not _ADDRESS.match(address) or "{{" in address:
            raise UsageError(f"the Kubespray inventory {inventory_path}: host {host} has an unusable ansible_host",
                             fix="set ansible_host to an IP address or a plain DNS name")
        user = hv.get("ansible_user") or hv.get("ansible_ssh_user") or default_user
        if not _USER.match(user):
            raise UsageError(f"the Kubespray inventory {inventory_path}: host {host} has an unusable ansible_user",
                             fix="set ansible_user to a plain user name (or remove it to use [ssh] user)")
        port_text = hv.get("ansible_port") or hv.get("ansible_ssh_port") or "22"
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(f"the Kubespray inventory {inventory_path}: host {host} has an invalid ansible_port",
                             fix="set ansible_port to a number from 1 to 65535")
        override = (hv.get("kube_override_hostname") or "").strip()
        if override and ("{" in override or not _NAME.match(override)):
            override = ""   # a template (Kubespray's default) is the inventory name
        nodes.append(NodeSpec(name=host, address=address.strip("[]"), user=user, roles=frozenset(roles_of[host]),
                              port=int(port_text), node_name=override or None))
    known = {n.name for n in nodes}
    unknown = sorted(set(table) - known)
    if unknown:
        raise UsageError(f"cluster profile {profile}: [nodes.{unknown[0]}] names a node that is not in the inventory "
                         f"{inventory_path}; known nodes: {', '.join(n.name for n in nodes)}",
                         fix="use the node names of the inventory in [nodes.<name>]")
    result = []
    for node in nodes:
        bmc = table.get(node.name, {}).get("bmc")
        if bmc is not None and (not isinstance(bmc, str) or not bmc.strip()):
            raise UsageError(f"cluster profile {profile}: [nodes.{node.name}] bmc must be a non-empty string",
                             fix='e.g. bmc = "10.0.9.14" (the node\'s BMC/IPMI/iRMC address)')
        extra = table.get(node.name, {})
        kube_node, crush_host, ceph_osds = extra.get("kube_node"), extra.get("crush_host"), extra.get("ceph_osds", True)
        for key, value in (("kube_node", kube_node), ("crush_host", crush_host)):
            if value is not None and (not isinstance(value, str) or not _NAME.match(value)):
                raise UsageError(f"cluster profile {profile}: [nodes.{node.name}] {key} must be a node/host name",
                                 fix=f'e.g. {key} = "{node.name}.example.com"' if key == "kube_node"
                                 else f'e.g. {key} = "{node.name}-example-com" (as `ceph osd tree` shows it)')
        if not isinstance(ceph_osds, bool):
            raise UsageError(f"cluster profile {profile}: [nodes.{node.name}] ceph_osds must be true or false",
                             fix="ceph_osds = false says the node carries no Ceph OSDs")
        result.append(NodeSpec(name=node.name, address=node.address, user=node.user, roles=node.roles,
                               bmc=bmc.strip() if bmc else None, port=node.port,
                               node_name=kube_node or node.node_name, crush_host=crush_host, ceph_osds=ceph_osds))
    return tuple(result)


# --------------------------------------------------------------------------- group_vars and the checkout

def _read_yaml_vars(path: Path) -> dict[str, str]:
    """Safe vars of one group_vars/defaults file; an unreadable file is a UsageError naming it."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        raise UsageError(f"{path} cannot be read", fix="make it readable by this user") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path} is not valid YAML{where}: {exc.problem or exc.context}",
                         fix="correct the YAML at that line") from None
    except (yaml.YAMLError, RecursionError):
        raise UsageError(f"{path} is not valid YAML", fix="correct the YAML") from None
    return _safe_vars(data) if isinstance(data, dict) else {}


def _group_var_files(inventory_dir: Path, group: str) -> list[Path]:
    base = inventory_dir / "group_vars"
    files = [base / f"{group}{ext}" for ext in (".yml", ".yaml", "")]
    files = [f for f in files if f.is_file()]
    folder = base / group
    if folder.is_dir():
        files += sorted(p for p in folder.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file())
    return files


def _role_default_files(checkout: Path) -> list[Path]:
    roles = checkout / "roles"
    candidates = [roles / "kubespray-defaults" / "defaults" / "main.yaml",
                  roles / "kubespray-defaults" / "defaults" / "main.yml",
                  roles / "container-engine" / "containerd-common" / "defaults" / "main.yml",
                  roles / "container-engine" / "docker" / "defaults" / "main.yml"]
    folder = roles / "kubespray-defaults" / "defaults" / "main"   # newer Kubespray splits it
    if folder.is_dir():
        candidates += sorted(folder.glob("*.yml")) + sorted(folder.glob("*.yaml"))
    return [c for c in candidates if c.is_file()]


def _cluster_vars(kubespray: KubesprayCheckout, inventory: Inventory) -> dict[str, str]:
    """Vars as Kubespray would see them for the cluster: role defaults < group_vars/all <
    group_vars/k8s_cluster < inventory vars. Templates referring to other vars are resolved
    one plain level ('{{ docker_version }}')."""
    merged: dict[str, str] = {}
    for path in _role_default_files(kubespray.path):
        merged.update(_read_yaml_vars(path))
    for group in ("all",) + CLUSTER_GROUPS:
        for path in _group_var_files(kubespray.inventory_dir, group):
            merged.update(_read_yaml_vars(path))
    for group in ("all",) + CLUSTER_GROUPS:
        merged.update(inventory.group_vars.get(group, {}))
    for _ in range(3):
        for key, value in merged.items():
            match = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", value.strip())
            if match and match.group(1) in merged:
                merged[key] = merged[match.group(1)]
    return merged


_RELEASE_TEMPLATE = re.compile(r"\{\{\s*ansible_distribution_release\s*\|\s*lower\s*\}\}")


def _package_versions(kubespray: KubesprayCheckout, gvars: Mapping[str, str]) -> dict[str, str]:
    """Expected docker/containerd package versions: the checkout's Ubuntu vars file mapped through
    the configured versions; knowledge.py's table when the checkout has no such file."""
    from nodegate import knowledge

    docker = _plain(gvars.get("docker_version"))
    cli = _plain(gvars.get("docker_cli_version")) or docker
    containerd = _plain(gvars.get("docker_containerd_version")) or _plain(gvars.get("containerd_version"))
    vars_file = kubespray.path / "roles" / "container-engine" / "docker" / "vars" / "ubuntu.yml"
    if not vars_file.is_file():
        return knowledge.docker_package_versions(kubespray.version, docker_version=docker,
                                                 containerd_version=containerd)
    import yaml

    try:
        data = yaml.safe_load(vars_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise UsageError(f"{vars_file} cannot be read as YAML", fix="restore the file from your Kubespray checkout") from None
    data = data if isinstance(data, dict) else {}
    containerd_package = _plain(gvars.get("containerd_package")) or "containerd.io"
    result: dict[str, str] = {}
    for table, version in (("containerd_versioned_pkg", containerd), ("docker_cli_versioned_pkg", cli),
                           ("docker_versioned_pkg", docker)):
        mapping = data.get(table)
        if not isinstance(mapping, dict) or version is None:
            continue
        spec = mapping.get(version)
        if spec is None:
            spec = next((v for k, v in mapping.items() if str(k) == version), None)
        if not isinstance(spec, str):
            continue
        spec = re.sub(r"\{\{\s*containerd_package\s*\}\}", containerd_package, spec)
        spec = _RELEASE_TEMPLATE.sub("{codename}", spec)
        name, sep, pinned = spec.partition("=")
        if sep and "{{" not in spec and _PACKAGE.match(name.strip()):
            result[name.strip()] = pinned.strip()
    return result


def kubespray_version(checkout: Path) -> str | None:
    """The checkout's version: galaxy.yml `version:`, else a git tag pointing at HEAD, else None."""
    galaxy = checkout / "galaxy.yml"
    if galaxy.is_file():
        try:
            for line in galaxy.read_text(encoding="utf-8").splitlines():
                match = re.match(r"^version:\s*['\"]?([0-9][0-9A-Za-z.+-]*)['\"]?\s*$", line)
                if match:
                    return _normalise_tag(match.group(1))
        except (OSError, UnicodeDecodeError):
            pass
    return _git_tag(checkout)


def _git_tag(checkout: Path) -> str | None:
    """The newest version tag on HEAD, read from .git without running git (no subprocess at load)."""
    git = checkout / ".git"
    if not git.is_dir():
        return None
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = git / ref
            if ref_file.is_file():
                head = ref_file.read_text().strip()
            else:
                head = _packed_refs(git).get(ref, "")
        tags = {}
        for name, sha in _packed_refs(git).items():
            if name.startswith("refs/tags/"):
                tags[name[10:]] = sha
        tag_dir = git / "refs" / "tags"
        if tag_dir.is_dir():
            for file in tag_dir.rglob("*"):
                if file.is_file():
                    sha = file.read_text().strip()
                    tags[str(file.relative_to(tag_dir))] = _peel(git, sha)
    except (OSError, UnicodeDecodeError):
        return None
    matching = [t for t, sha in tags.items() if sha == head and re.match(r"^v?\d+\.\d+", t)]
    if not matching:
        return None
    from nodegate.knowledge import semver_key

    return _normalise_tag(max(matching, key=semver_key))


def _packed_refs(git: Path) -> dict[str, str]:
    packed = git / "packed-refs"
    refs: dict[str, str] = {}
    if not packed.is_file():
        return refs
    last = None
    for line in packed.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("^") and last:
            refs[last] = line[1:].strip()   # the commit an annotated tag points at
            continue
        sha, _, name = line.partition(" ")
        refs[name.strip()] = sha
        last = name.strip()
    return refs


def _peel(git: Path, sha: str) -> str:
    """An annotated tag's object names the tagged commit; a lightweight tag is the commit itself."""
    import zlib

    obj = git / "objects" / sha[:2] / sha[2:]
    if not obj.is_file():
        return sha
    try:
        data = zlib.decompress(obj.read_bytes())
    except zlib.error:
        return sha
    if data.startswith(b"tag "):
        body = data.split(b"\x00", 1)[1] if b"\x00" in data else b""
        match = re.match(rb"object ([0-9a-f]{40})", body)
        if match:
            return match.group(1).decode()
    return sha


def _normalise_tag(version: str | None) -> str | None:
    if not version:
        return None
    version = version.strip()
    return version if version.startswith("v") or not version[:1].isdigit() else f"v{version}"
