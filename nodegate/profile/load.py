"""Reading a cluster profile (TOML) into a Profile: where the file is, every table and key checked,
the nodes taken from the Kubespray inventory. Every problem is a UsageError naming the fix.
"""
from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from nodegate.core.errors import UsageError
from nodegate.core.sshroute import JumpHost, RouteError, SshRoute, parse_common_args
from nodegate.profile.checkout import _cluster_vars, _package_versions
from nodegate.profile.inventory import (
    CONTROL_PLANE_GROUPS,
    ETCD_GROUPS,
    WORKER_GROUPS,
    Inventory,
    _plain,
    read_inventory,
)
from nodegate.profile.model import (
    NAME_PATTERN,
    PACKAGE_PATTERN,
    CephSettings,
    Expectations,
    KubeSettings,
    KubesprayCheckout,
    NodeSpec,
    Profile,
    SSHSettings,
    UpgradeSettings,
)

ENV_VAR = "NODEGATE_CLUSTER"
DEFAULT_FILE = "nodegate.toml"


RUNNING_LAB = "the running lab"


def resolve_profile_path(option: str | None, *, cwd: Path | None = None,
                         environ: Mapping[str, str] | None = None) -> Path:
    """--cluster, else $NODEGATE_CLUSTER, else ./nodegate.toml, else the running lab's profile."""
    return find_profile(option, cwd=cwd, environ=environ)[0]


def find_profile(option: str | None, *, cwd: Path | None = None,
                 environ: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """(path, how it was found): --cluster, else $NODEGATE_CLUSTER, else ./nodegate.toml, else
    ./.lab/cluster.toml while the lab in ./.lab runs (RUNNING_LAB). A real cluster's profile is
    only ever one of the first three: the last way finds nothing unless a lab is up right there."""
    from nodegate.core.running_lab import LAB_DIR, running_lab_profile

    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    if option:
        path, source = Path(option).expanduser(), "--cluster"
    elif environ.get(ENV_VAR):
        path, source = Path(environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    else:
        path = cwd / DEFAULT_FILE
        if path.is_file():
            return path, f"./{DEFAULT_FILE}"
        lab = running_lab_profile(cwd)
        if lab is not None:
            return lab, RUNNING_LAB
        raise UsageError(f"no cluster profile: no --cluster option, ${ENV_VAR} is not set, "
                         f"there is no {DEFAULT_FILE} in {cwd}, and no lab is running in ./{LAB_DIR}",
                         fix=f"pass --cluster PATH, set {ENV_VAR}=PATH, or create ./{DEFAULT_FILE} "
                             f"(see the lab's DIR/cluster.toml for an example); on the lab: `nodegate lab up`")
    if not path.is_absolute():
        path = cwd / path
    path = path.resolve()
    if not path.is_file():
        raise UsageError(f"cluster profile {path} (from {source}) does not exist or is not a file",
                         fix=f"check the path given by {source}")
    return path, source


# no address starts with "-": one that does would read as an option to ssh or ansible (-oProxyCommand=…)
_ADDRESS = re.compile(r"^[A-Za-z0-9:\[][A-Za-z0-9._:\[\]-]*$")
_USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]*$")


_SECTIONS: dict[str, frozenset[str]] = {
    "cluster": frozenset({"name", "ticket_link_pattern"}),
    "kubespray": frozenset({"path", "inventory", "version", "ansible_playbook"}),
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
    if kube_version is None and gvars.get("kube_version"):   # v2.28+: a template over the checksums
        from nodegate.core.kubespray_release import checksum_default_kube_version

        kube_version = checksum_default_kube_version(kubespray.path)
    discovered = dict(_package_versions(kubespray, gvars))
    discovered["__containerd_package__"] = _plain(gvars.get("containerd_package")) or "containerd.io"
    expect = reader.expect(discovered, _plain(gvars.get("container_manager")))
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
        from nodegate.core.kubespray_version import detect

        found = detect(checkout, override=self.opt_str("kubespray", "version"))
        return KubesprayCheckout(path=checkout, inventory=inventory, version=found.version, version_source=found.how,
                                 ansible_playbook=self.opt_path("kubespray", "ansible_playbook", must_exist=True))

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

    def expect(self, discovered: Mapping[str, str], container_manager: str | None = None) -> Expectations:
        held = self.get("expect", "held_packages", list, "a list of package names")
        source = "[expect] held_packages"
        if held is None:
            # Kubespray holds packages only in its docker role (v2.21.0: the one dpkg_selections
            # hold in roles/); with containerd (its default) or cri-o nothing is held.
            manager = container_manager or "containerd"
            source = f"container_manager {manager}"
            if manager == "docker":
                held_t = (discovered.get("__containerd_package__") or "containerd.io", "docker-ce", "docker-ce-cli")
            elif manager in ("containerd", "crio"):
                held_t = ()
            else:
                raise UsageError(f"the inventory's container_manager {manager!r} is not one Kubespray knows "
                                 "(docker, containerd, crio)",
                                 fix="correct container_manager in the inventory's group_vars, or set "
                                     "[expect] held_packages in the profile")
        else:
            if not all(isinstance(x, str) and PACKAGE_PATTERN.match(x) for x in held):
                raise self.fail("[expect] held_packages must be Debian package names",
                                fix='e.g. held_packages = ["containerd.io", "docker-ce", "docker-ce-cli"]')
            held_t = tuple(dict.fromkeys(held))
        versions = {k: v for k, v in discovered.items() if not k.startswith("__")}
        table = self.get("expect", "package_versions", dict, "a table of name = version")
        for name, version in (table or {}).items():
            if not PACKAGE_PATTERN.match(name) or not isinstance(version, str) or not version.strip():
                raise self.fail(f"[expect] package_versions: {name!r} needs a version string",
                                fix='e.g. package_versions = { "containerd.io" = "1.6.4-1" }')
            versions[name] = version.strip()
        defaults = Expectations()
        return Expectations(held_packages=held_t, package_versions=versions, held_source=source,
                            container_manager=container_manager or "containerd",
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


def _access_vars(inventory_path: Path, inventory: Inventory, host: str, hv: Mapping[str, str]) -> dict:
    """identity_file, route and become_user of one host, as Ansible would connect to it: its
    ansible_ssh_common_args' ProxyJump/ProxyCommand first, else Kubespray's `bastion` group."""
    what = f"the Kubespray inventory {inventory_path}: host {host}"
    key = hv.get("ansible_ssh_private_key_file")
    become_user = hv.get("ansible_become_user") or "root"
    if not _USER.match(become_user):
        raise UsageError(f"{what} has an unusable ansible_become_user", fix="set it to a plain user name (root)")
    try:
        route = parse_common_args(hv.get("ansible_ssh_common_args"), what)
    except RouteError as exc:
        raise UsageError(str(exc.args[0]), fix=exc.args[1] if len(exc.args) > 1 else
                         "correct ansible_ssh_common_args") from None
    bastions = inventory.members("bastion")
    if route.direct and bastions and host not in bastions:
        bv = inventory.vars_for(bastions[0])
        address = bv.get("ansible_host") or bv.get("ansible_ssh_host") or bastions[0]
        port = bv.get("ansible_port") or bv.get("ansible_ssh_port")
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise UsageError(f"the Kubespray inventory {inventory_path}: the bastion {bastions[0]} has an invalid "
                             "ansible_port", fix="set ansible_port to a number from 1 to 65535")
        route = SshRoute(jump=JumpHost(host=address, port=int(port) if port else None,
                                       user=bv.get("ansible_user") or bv.get("ansible_ssh_user"),
                                       identity_file=bv.get("ansible_ssh_private_key_file")))
    return {"identity_file": Path(key).expanduser() if key and "{{" not in key else None, "route": route,
            "become_user": become_user, "become": _ansible_bool(hv.get("ansible_become"), f"{what}: ansible_become")}


# Ansible's boolean spellings (ansible.module_utils.parsing.convert_bool), lower-cased.
_TRUE = frozenset({"true", "yes", "on", "1", "y", "t"})
_FALSE = frozenset({"false", "no", "off", "0", "n", "f"})


def _ansible_bool(value: str | None, what: str) -> bool | None:
    """An inventory boolean as Ansible reads it; None when unset or a template nodegate cannot render."""
    if value is None or "{{" in value:
        return None
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UsageError(f"{what} is {value!r}, not a boolean", fix="write true or false")


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
        if not NAME_PATTERN.match(host):
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
        if override and ("{" in override or not NAME_PATTERN.match(override)):
            override = ""   # a template (Kubespray's default) is the inventory name
        nodes.append(NodeSpec(name=host, address=address.strip("[]"), user=user, roles=frozenset(roles_of[host]),
                              port=int(port_text), node_name=override or None,
                              **_access_vars(inventory_path, inventory, host, hv)))
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
            if value is not None and (not isinstance(value, str) or not NAME_PATTERN.match(value)):
                raise UsageError(f"cluster profile {profile}: [nodes.{node.name}] {key} must be a node/host name",
                                 fix=f'e.g. {key} = "{node.name}.example.com"' if key == "kube_node"
                                 else f'e.g. {key} = "{node.name}-example-com" (as `ceph osd tree` shows it)')
        if not isinstance(ceph_osds, bool):
            raise UsageError(f"cluster profile {profile}: [nodes.{node.name}] ceph_osds must be true or false",
                             fix="ceph_osds = false says the node carries no Ceph OSDs")
        result.append(replace(node, bmc=bmc.strip() if bmc else None, node_name=kube_node or node.node_name,
                              crush_host=crush_host, ceph_osds=ceph_osds))
    return tuple(result)
