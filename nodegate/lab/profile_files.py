"""The files a lab hands to the harness: SSH material, DIR/cluster.toml and DIR/kubeconfig.

The harness sees the lab only through these files (and SSH, HTTP, the Ceph CLI), exactly as it
would see a real cluster's profile, so everything here uses absolute paths.
"""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml

from nodegate.lab import shared_files
from nodegate.lab.config import LOGIN_USER, LabConfig
from nodegate.lab.pki import ADMIN_USER, EXEC_API_VERSION, RESTRICTED_USER, Pki, write_pki

CONTEXT = "nodegate-lab"
CLUSTER_NAME = "nodegate-lab"
HELD_PACKAGES = ("containerd.io", "docker-ce", "docker-ce-cli")
# sockaddr_un holds 108 bytes; ssh appends a ".XXXXXXXXXXXXXXXX" suffix while creating the socket.
_MAX_SOCKET_PATH = 90


class SshFiles:
    """Paths of one lab's SSH material under DIR/ssh."""

    def __init__(self, lab_dir: Path) -> None:
        self.dir = Path(lab_dir) / "ssh"
        self.identity = self.dir / "id_ed25519"
        self.config = self.dir / "config"
        self.known_hosts = self.dir / "known_hosts"
        self.host_keys = self.dir / "hostkeys"

    def host_key(self, node_name: str) -> Path:
        return self.host_keys / node_name / "ssh_host_ed25519_key"

    def control_dir(self) -> Path:
        """Where ControlMaster sockets live: in DIR/ssh when the path is short enough, else /tmp."""
        local = self.dir / "cm"
        if len(str(local)) + 1 + 40 <= _MAX_SOCKET_PATH:  # %C expands to 40 hex digits
            return local
        digest = hashlib.sha256(str(self.dir).encode()).hexdigest()[:12]
        return Path("/tmp") / f"nodegate-ssh-{digest}"


def _keygen(path: Path, comment: str) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdout=subprocess.DEVNULL)


def write_ssh_files(config: LabConfig) -> SshFiles:
    """Client key, one host key per node, ssh/config and known_hosts (host keys pinned).

    Existing keys are kept, so a lab brought up again in the same DIR keeps its identity."""
    files = SshFiles(config.dir)
    files.dir.mkdir(parents=True, exist_ok=True)
    files.dir.chmod(0o700)
    _keygen(files.identity, "nodegate-lab")
    for node in config.ssh_hosts:
        _keygen(files.host_key(node.name), f"root@{node.name}")
    control = files.control_dir()
    control.mkdir(parents=True, exist_ok=True)
    control.chmod(0o700)
    blocks = []
    bastion = config.bastion_node
    for node in config.ssh_hosts:
        is_bastion = bastion is not None and node.name == bastion.name
        jump = [f"  ProxyJump {bastion.name}"] if bastion is not None and not is_bastion else []
        blocks.append("\n".join([
            f"Host {node.name}",
            f"  HostName {node.address}",
            # root: the lab's own tools; the harness logs in as the profile's user (user@host).
            f"  User {LOGIN_USER if is_bastion else 'root'}",
            f"  Port {config.ssh_port}",
            *jump,
            f"  IdentityFile {files.identity}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {files.known_hosts}",
            "  StrictHostKeyChecking yes",
            "  HostKeyAlgorithms ssh-ed25519",
            # One TCP connection per node for many commands: 0.3 s -> 0.01 s per command.
            "  ControlMaster auto",
            f"  ControlPath {control}/%C",
            "  ControlPersist 60s",
            "  ConnectTimeout 5",
            "  BatchMode yes",
            "  LogLevel ERROR",
        ]))
    _write(files.config, "\n\n".join(blocks) + "\n", mode=0o600)
    lines = []
    for node in config.ssh_hosts:
        public = files.host_key(node.name).with_suffix(".pub").read_text().split()
        # ssh and paramiko look a host up as `[host]:port` when the port is not 22.
        names = (f"{node.name},{node.address}" if config.ssh_port == 22
                 else f"[{node.name}]:{config.ssh_port},[{node.address}]:{config.ssh_port}")
        lines.append(f"{names} {public[0]} {public[1]}")
    _write(files.known_hosts, "\n".join(lines) + "\n", mode=0o644)
    return files


def cluster_toml(config: LabConfig) -> str:
    d = config.dir
    files = SshFiles(d)
    manager = config.container_manager
    held_note = ", ".join(HELD_PACKAGES) if manager == "docker" else "nothing held"
    return f"""\
# Written by `nodegate lab up`: the profile the harness reads for this lab.
[cluster]
name = "{CLUSTER_NAME}"

[kubespray]
path = "{d / 'kubespray'}"
inventory = "{d / 'kubespray/inventory/mycluster/hosts.yaml'}"

[kubernetes]
kubeconfig = "{d / 'kubeconfig'}"
context = "{CONTEXT}"

[ssh]
config = "{files.config}"
user = "{config.ssh_user}"
identity_file = "{files.identity}"
known_hosts = "{files.known_hosts}"

[ceph]
mode = "toolbox"             # exec into the rook-ceph-tools pod through the Kubernetes API
namespace = "rook-ceph"
toolbox_selector = "app=rook-ceph-tools"

[expect]
# held_packages is not set: the expected holds follow the inventory's container_manager
# ({manager}: {held_note}), as on an operator's profile that does not override them.
kernel_packages = false      # lab nodes run the host's kernel: no linux-image package on them

[upgrade]
settle_s = 2
"""


# The kubeconfigs a lab writes besides DIR/kubeconfig (HTTPS labs only), by what authenticates.
KUBECONFIGS = {"token": "kubeconfig-token", "exec": "kubeconfig-exec", "restricted": "kubeconfig-restricted",
               "client-certificate": "kubeconfig-admin"}


def kubeconfig(config: LabConfig, auth: str | None = None) -> str:
    """A kubeconfig for this lab. Plain HTTP: the bearer token. HTTPS: the cluster CA inline
    (certificate-authority-data, as admin.conf) and `auth`: "client-certificate" (admin.conf's
    kubernetes-admin, the default), "token", "exec" (an exec credential plugin) or "restricted"
    (a client certificate of a user without eviction, exec and Lease writes)."""
    cluster: dict = {"server": config.api_url}
    if not config.api_tls:
        user_name, user = "nodegate-lab-admin", {"token": config.token}
    else:
        pki = Pki.of(config.dir)
        cluster["certificate-authority-data"] = _b64(pki.ca_cert)
        auth = auth or "client-certificate"
        if auth == "client-certificate":
            user_name = ADMIN_USER
            user = {"client-certificate-data": _b64(pki.client_cert(ADMIN_USER)),
                    "client-key-data": _b64(pki.client_key(ADMIN_USER))}
        elif auth == "restricted":
            user_name = RESTRICTED_USER
            user = {"client-certificate-data": _b64(pki.client_cert(RESTRICTED_USER)),
                    "client-key-data": _b64(pki.client_key(RESTRICTED_USER))}
        elif auth == "token":
            user_name, user = "nodegate-lab-token", {"token": config.token}
        elif auth == "exec":
            user_name = "nodegate-lab-exec"
            user = {"exec": {"apiVersion": EXEC_API_VERSION, "command": str(pki.exec_plugin), "args": [],
                             "env": None, "interactiveMode": "Never", "provideClusterInfo": False}}
        else:
            raise ValueError(f"unknown kubeconfig authentication {auth!r}")
    data = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER_NAME, "cluster": cluster}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CLUSTER_NAME, "user": user_name,
                                                    "namespace": "default"}}],
        "current-context": CONTEXT,
        "preferences": {},
    }
    return yaml.safe_dump(data, sort_keys=False)


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


def write_profile_files(config: LabConfig) -> None:
    write_ssh_files(config)
    if config.api_tls:
        write_pki(config.dir, config.api_address, config.token,
                  tuple(n.address for n in config.nodes if n.control_plane))
        for auth, name in KUBECONFIGS.items():
            _write(config.dir / name, kubeconfig(config, auth), mode=0o600)
    else:
        for name in KUBECONFIGS.values():
            (config.dir / name).unlink(missing_ok=True)
    _write(config.dir / "cluster.toml", cluster_toml(config), mode=0o644)
    _write(config.dir / "kubeconfig", kubeconfig(config), mode=0o600)  # holds a token or a key


def _write(path: Path, text: str, *, mode: int) -> None:
    shared_files.write_atomic(path, text, mode=mode)
