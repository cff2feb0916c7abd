"""The files a lab hands to the harness: SSH material, DIR/cluster.toml and DIR/kubeconfig.

The harness sees the lab only through these files (and SSH, HTTP, the Ceph CLI), exactly as it
would see a real cluster's profile, so everything here uses absolute paths.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import yaml

from nodegate.lab.config import LabConfig

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
    for node in config.nodes:
        _keygen(files.host_key(node.name), f"root@{node.name}")
    control = files.control_dir()
    control.mkdir(parents=True, exist_ok=True)
    control.chmod(0o700)
    blocks = []
    for node in config.nodes:
        blocks.append("\n".join([
            f"Host {node.name}",
            f"  HostName {node.address}",
            "  User root",
            "  Port 22",
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
    for node in config.nodes:
        public = files.host_key(node.name).with_suffix(".pub").read_text().split()
        lines.append(f"{node.name},{node.address} {public[0]} {public[1]}")
    _write(files.known_hosts, "\n".join(lines) + "\n", mode=0o644)
    return files


def cluster_toml(config: LabConfig) -> str:
    d = config.dir
    files = SshFiles(d)
    held = ", ".join(f'"{p}"' for p in HELD_PACKAGES)
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
user = "root"
identity_file = "{files.identity}"
known_hosts = "{files.known_hosts}"

[ceph]
mode = "toolbox"             # exec into the rook-ceph-tools pod through the Kubernetes API
namespace = "rook-ceph"
toolbox_selector = "app=rook-ceph-tools"

[expect]
held_packages = [{held}]
kernel_packages = false      # lab nodes run the host's kernel: no linux-image package on them

[upgrade]
settle_s = 2
"""


def kubeconfig(config: LabConfig) -> str:
    data = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER_NAME, "cluster": {"server": config.api_url}}],
        "users": [{"name": "nodegate-lab-admin", "user": {"token": config.token}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CLUSTER_NAME, "user": "nodegate-lab-admin",
                                                    "namespace": "default"}}],
        "current-context": CONTEXT,
        "preferences": {},
    }
    return yaml.safe_dump(data, sort_keys=False)


def write_profile_files(config: LabConfig) -> None:
    write_ssh_files(config)
    _write(config.dir / "cluster.toml", cluster_toml(config), mode=0o644)
    _write(config.dir / "kubeconfig", kubeconfig(config), mode=0o600)  # holds the token


def _write(path: Path, text: str, *, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    tmp.replace(path)
