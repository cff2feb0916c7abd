"""One lab node on the host: its overlay root, its namespaces, its sshd as PID 1, its state file.

A node is an overlay (lower = [seed layer:]base image, upper/work per node) mounted at
DIR/nodes/<name>/root, booted as `unshare --pid --mount --uts --ipc --fork` running a small
host-side init that mounts the node's /proc, /run, /dev and /sys, binds a fresh boot id, and
then chroots into the root and execs the node's init, which ends in `exec /usr/sbin/sshd -D -e`.
So the node's sshd is PID 1 of its own PID namespace: when it ends, the node has stopped.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from nodegate.core.errors import PermanentError, TransientError
from nodegate.lab.apiserver.nodes import read_os_release
from nodegate.lab.config import LabConfig, LabNode
from nodegate.lab.image import base_rootfs
from nodegate.lab.profile_files import SshFiles

# The node-side init (the seeded layer installs one at this path: nodegate.lab.seed); when it
# is absent the node runs FALLBACK_INIT, which does the same minimum.
NODE_INIT = "/usr/local/sbin/nodegate-lab-init"
FALLBACK_INIT = r"""
mkdir -p /run/sshd /run/nodegate-lab /run/lock
chmod 0755 /run/sshd
: > /run/nodegate-lab/modules
for f in /etc/modules-load.d/*.conf; do
  [ -f "$f" ] && sed -e 's/#.*//' -e 's/[[:space:]]//g' "$f" | grep -v '^$' >> /run/nodegate-lab/modules
done
exec /usr/sbin/sshd -D -e
"""
SSHD_DROPIN = "etc/ssh/sshd_config.d/00-nodegate-lab.conf"
# Character devices a node gets from the host (everything else stays out of reach).
HOST_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


@dataclass(frozen=True)
class NodeState:
    """DIR/nodes/<name>/state.json, written only by the supervisor (atomic rename)."""

    name: str
    state: str            # "up" | "down"
    pid: int | None       # the node's PID 1 (its sshd) as the host sees it
    boot_id: str
    boot_count: int
    changed_at: float

    @classmethod
    def read(cls, path: Path) -> "NodeState | None":
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return cls(name=data["name"], state=data["state"], pid=data.get("pid"), boot_id=data.get("boot_id", ""),
                   boot_count=int(data.get("boot_count", 0)), changed_at=float(data.get("changed_at", 0)))

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"name": self.name, "state": self.state, "pid": self.pid,
                                   "boot_id": self.boot_id, "boot_count": self.boot_count,
                                   "changed_at": self.changed_at}) + "\n")
        tmp.replace(path)


def lower_layers(config: LabConfig) -> list[Path]:
    """The read-only layers under every node, top first: the seeded starting state (the lab's apt
    repository and packages, nodegate.lab.seed) over the cached base image."""
    return [seed_layer(config), base_rootfs()]


def seed_layer(config: LabConfig) -> Path:
    from nodegate.lab import seed   # imported when a node starts: seed builds on this module

    return Path(seed.seed_layer(config))


def seed_prepare(config: LabConfig, root: Path) -> None:
    """Let the seed fit the layer to this lab (its repository address) on a fresh node root."""
    from nodegate.lab import seed

    seed.prepare_root(config, root)


def mounted_paths() -> list[str]:
    """Every mount point in this mount namespace, as /proc/self/mountinfo lists them."""
    points = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4]
            points.append(point.encode().decode("unicode_escape"))  # \040 etc.
    return points


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def child_pid(parent: int, *, timeout_s: float = 3.0) -> int | None:
    """The single child of `parent` (the node's PID 1 under its `unshare --fork`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except FileNotFoundError:
            return None
        if children:
            return int(children[0])
        time.sleep(0.005)
    return None


class NodeRuntime:
    """The host side of one node: paths, overlay, boot command, state file. Holds no process."""

    def __init__(self, config: LabConfig, node: LabNode) -> None:
        self.config = config
        self.node = node
        self.dir = config.dir / "nodes" / node.name
        self.root = self.dir / "root"
        self.upper = self.dir / "upper"
        self.work = self.dir / "work"
        self.state_file = self.dir / "state.json"
        self.boot_dir = self.dir / "boot"   # a private tmpfs is mounted here, inside the node's namespace only
        self.log_file = config.dir / "logs" / f"{node.name}.log"

    # -- overlay -----------------------------------------------------------------
    def is_mounted(self) -> bool:
        return str(self.root) in mounted_paths()

    def mount(self) -> None:
        if self.is_mounted():
            return
        for path in (self.root, self.upper, self.work, self.boot_dir):
            path.mkdir(parents=True, exist_ok=True)
        fresh = not any(self.upper.iterdir())
        lower = ":".join(str(p) for p in lower_layers(self.config))
        opts = f"lowerdir={lower},upperdir={self.upper},workdir={self.work}"
        result = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise PermanentError(f"cannot mount the overlay of {self.node.name}: {result.stderr.strip()}",
                                 fix="check that the base image exists (python -m nodegate.lab.image)")
        if fresh:
            self.prepare()

    def unmount(self) -> None:
        if not self.is_mounted():
            return
        result = subprocess.run(["umount", str(self.root)], capture_output=True, text=True)
        if result.returncode != 0:
            # Busy (a shell cwd inside it, say): detach it so the lab can still stop cleanly.
            subprocess.run(["umount", "-l", str(self.root)], check=True)

    def wipe(self) -> None:
        """Empty the upper and work dirs: the node is back to its starting layers."""
        if self.is_mounted():
            raise PermanentError(f"{self.node.name}: unmount before wiping")
        for path in (self.upper, self.work):
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)

    def prepare(self) -> None:
        """Write what makes this root this node: name, SSH host key, root's authorized key, sshd settings."""
        root = self.root
        ssh = SshFiles(self.config.dir)
        (root / "etc/hostname").write_text(self.node.name + "\n")
        hosts = ["127.0.0.1 localhost", f"{self.node.address} {self.node.name}"]
        hosts += [f"{n.address} {n.name}" for n in self.config.nodes if n.name != self.node.name]
        hosts += ["::1 localhost ip6-localhost ip6-loopback"]
        (root / "etc/hosts").write_text("\n".join(hosts) + "\n")
        key = ssh.host_key(self.node.name)
        for suffix in ("", ".pub"):
            target = root / "etc/ssh" / ("ssh_host_ed25519_key" + suffix)
            shutil.copyfile(key.with_name(key.name + suffix), target)
            target.chmod(0o600 if not suffix else 0o644)
        dot_ssh = root / "root/.ssh"
        dot_ssh.mkdir(mode=0o700, exist_ok=True)
        (dot_ssh / "authorized_keys").write_text(ssh.identity.with_suffix(".pub").read_text())
        (dot_ssh / "authorized_keys").chmod(0o600)
        dropin = root / SSHD_DROPIN
        dropin.parent.mkdir(parents=True, exist_ok=True)
        # First value wins in sshd_config and this file is included first.
        dropin.write_text("\n".join([
            "# Written by the nodegate lab: this node's address, key-only root login.",
            f"ListenAddress {self.node.address}:22",
            "HostKey /etc/ssh/ssh_host_ed25519_key",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            # No systemd/logind in a node: PAM session modules would only add noise and delay.
            "UsePAM no",
            "UseDNS no",
            # Test suites and Ansible open many connections and sessions at once.
            "MaxStartups 64:30:128",
            "MaxSessions 64",
            "",
        ]))
        seed_prepare(self.config, root)

    # -- boot ----------------------------------------------------------------------
    def boot_command(self, boot_id: str) -> list[str]:
        """argv that boots the node: unshare's child (the node's PID 1) runs the host-side init."""
        init = _HOST_INIT.format(
            root=_q(self.root), name=_q(self.node.name), boot_dir=_q(self.boot_dir), boot_id=_q(boot_id),
            devices=" ".join(HOST_DEVICES), node_init=_q(NODE_INIT), fallback=_q(FALLBACK_INIT),
        )
        return ["unshare", "--pid", "--mount", "--uts", "--ipc", "--fork", "--mount-proc",
                "--propagation", "private", "/bin/sh", "-c", init, f"nodegate-lab-{self.node.name}"]

    def ssh_listening(self) -> bool:
        try:
            with socket.create_connection((self.node.address, 22), timeout=0.5) as sock:
                sock.settimeout(1.0)
                return sock.recv(8).startswith(b"SSH-")
        except OSError:
            return False

    def shutdown_word(self, pid: int) -> str | None:
        """What the node asked for before ending (its reboot/shutdown stand-ins write it)."""
        try:
            return Path(f"/proc/{pid}/root/run/nodegate-lab/shutdown").read_text().strip() or None
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ESRCH, errno.EACCES):
                return None
            raise

    def read_state(self) -> NodeState | None:
        return NodeState.read(self.state_file)

    def write_state(self, *, state: str, pid: int | None, boot_id: str, boot_count: int) -> NodeState:
        current = NodeState(name=self.node.name, state=state, pid=pid, boot_id=boot_id,
                            boot_count=boot_count, changed_at=time.time())
        self.dir.mkdir(parents=True, exist_ok=True)
        current.write(self.state_file)
        return current

    def os_release(self) -> dict[str, str]:
        """The node's /etc/os-release as the host reads it through the overlay (its symlinks
        resolved inside the node), read as the API server's kubelet reads it."""
        return read_os_release(self.root)


def new_boot_id() -> str:
    return str(uuid.uuid4())


def stop_pid(pid: int, *, timeout_s: float = 5.0, sig: int = signal.SIGTERM) -> bool:
    """Signal one process by PID, escalate to SIGKILL after timeout_s; True once it is gone."""
    if not pid_alive(pid):
        return True
    for signum, wait_s in ((sig, timeout_s), (signal.SIGKILL, 3.0)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.02)
    raise TransientError(f"process {pid} did not end after SIGKILL")


def _q(text: str | Path) -> str:
    return "'" + str(text).replace("'", "'\"'\"'") + "'"


# Runs as the node's PID 1 before chroot, in the node's fresh mount namespace (private
# propagation: nothing here shows on the host). `set -e`: a half-built node must not start sshd.
_HOST_INIT = r"""set -e
R={root}
hostname {name}
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys" 2>/dev/null || mount --rbind -o ro /sys "$R/sys"
mount -t tmpfs -o mode=0755,nosuid,nodev,size=64m tmpfs "$R/run"
mount -t tmpfs -o mode=0755,nosuid,size=1m tmpfs "$R/dev"
for d in {devices}; do : > "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"; ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
# A new boot id every boot, as the kernel gives a real machine (a file on a private tmpfs).
mount -t tmpfs -o size=16k tmpfs {boot_dir}
echo {boot_id} > {boot_dir}/boot_id
mount --bind -o ro {boot_dir}/boot_id "$R/proc/sys/kernel/random/boot_id"
umount -l {boot_dir}
cd "$R"
if [ -x "$R"{node_init} ]; then exec chroot "$R" {node_init}; fi
exec chroot "$R" /bin/sh -c {fallback}
"""
