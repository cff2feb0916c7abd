"""How a lab node is logged into: the `ubuntu` login user with sudo, the sshd settings, the bastion.

Field facts this reproduces (field-facts.md, "SSH"; Kubespray docs and roles/bastion-ssh-config):
- Ubuntu cloud images log in as `ubuntu`, a member of `sudo` with passwordless sudo
  (cloud-init's `/etc/sudoers.d/90-cloud-init-users`: `ubuntu ALL=(ALL) NOPASSWD:ALL`); sites
  that require a password write `ubuntu ALL=(ALL:ALL) ALL` instead, and Kubespray then needs
  `ansible_become_password`. In that case the password is the one planted in the lab's
  inventory (`ansible_become_password`), so Kubespray's `-b` works exactly as on such a site.
- Inventories set `ansible_port` when sshd listens elsewhere than 22.
- A bastion: the nodes accept SSH only from the bastion's address; operators and Ansible reach
  them with `ProxyCommand ssh -W %h:%p … bastion` (what roles/bastion-ssh-config writes) or
  ProxyJump. On one loopback every connection would leave from 127.0.0.1, so the bastion node
  gets a small preloaded library that binds its outgoing loopback TCP connections to the
  bastion's own address, as a separate machine's would; the nodes' sshd then tells the two
  paths apart with a `Match Address` rule.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from nodegate.core.errors import PermanentError
from nodegate.lab.config import LOGIN_USER, LabConfig, LabNode

LOGIN_UID = 1000
SUDOERS_FILE = "etc/sudoers.d/90-nodegate-lab-users"
BIND_LIBRARY = "usr/local/lib/nodegate-lab-bind-source.so"

_BIND_SOURCE_C = r"""
/* Preloaded on the lab's bastion only: an outgoing loopback TCP connection that is not bound yet
   is bound to the bastion's own address first, as a separate machine's connection would leave
   from its own address. Everything else goes to the real connect(). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_connect)(int, const struct sockaddr *, socklen_t);
    if (!real_connect) real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *to = (const struct sockaddr_in *)addr;
        struct sockaddr_in mine;
        socklen_t mine_len = sizeof mine;
        int type = 0;
        socklen_t type_len = sizeof type;
        if ((ntohl(to->sin_addr.s_addr) >> 24) == 127
            && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) == 0 && type == SOCK_STREAM
            && getsockname(fd, (struct sockaddr *)&mine, &mine_len) == 0
            && mine.sin_family == AF_INET && mine.sin_port == 0 && mine.sin_addr.s_addr == htonl(INADDR_ANY)) {
            struct sockaddr_in src;
            memset(&src, 0, sizeof src);
            src.sin_family = AF_INET;
            if (inet_pton(AF_INET, SOURCE_ADDRESS, &src.sin_addr) == 1)
                bind(fd, (struct sockaddr *)&src, sizeof src);  /* on failure: connect as before */
        }
    }
    return real_connect(fd, addr, len);
}
"""


def build_bind_library(config: LabConfig) -> Path:
    """Compile the bastion's bind library for this lab's bastion address into DIR/bastion/."""
    bastion = config.bastion_node
    assert bastion is not None
    out_dir = config.dir / "bastion"
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / "bind-source.c"
    library = out_dir / "bind-source.so"
    source.write_text(_BIND_SOURCE_C)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise PermanentError("the lab's bastion needs a C compiler (cc) to build its bind library",
                             fix="apt-get install gcc libc6-dev (make setup installs it)")
    done = subprocess.run([compiler, "-shared", "-fPIC", "-O2", f'-DSOURCE_ADDRESS="{bastion.address}"',
                           "-o", str(library), str(source), "-ldl"], capture_output=True, text=True)
    if done.returncode != 0:
        raise PermanentError(f"cannot build the bastion's bind library: {done.stderr.strip()[:400]}",
                             fix="check that gcc and libc6-dev are installed")
    return library


def sshd_settings(config: LabConfig, node: LabNode) -> list[str]:
    """This node's sshd_config drop-in lines (first value wins; included first)."""
    lines = [
        "# Written by the nodegate lab: this node's address and port, key-only logins.",
        f"ListenAddress {node.address}:{config.ssh_port}",
        "HostKey /etc/ssh/ssh_host_ed25519_key",
        # root keeps its key login: the lab's own tools and tests read nodes as root; the
        # harness logs in as the profile's user (the inventory's ansible_user).
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        # No systemd/logind in a node: PAM session modules would only add noise and delay.
        "UsePAM no",
        "UseDNS no",
        # Test suites and Ansible open many connections and sessions at once.
        "MaxStartups 64:30:128",
        "MaxSessions 64",
    ]
    bastion = config.bastion_node
    if bastion is not None and node.name != bastion.name:
        lines += [
            # Only connections that come through the bastion (from its address) may log in.
            f"Match Address *,!{bastion.address}",
            "    DenyUsers *",
            "Match all",
        ]
    return lines + [""]


def write_login_user(config: LabConfig, root: Path, node: LabNode, *, authorized_key: str) -> None:
    """Add `ubuntu` (uid 1000, groups ubuntu and sudo) with the lab's key and its sudo rule."""
    _append_line(root / "etc/passwd", f"{LOGIN_USER}:x:{LOGIN_UID}:{LOGIN_UID}:Ubuntu:/home/{LOGIN_USER}:/bin/bash")
    # '*': no password to log in with, yet not locked ('!' would make sshd refuse the key too).
    password_hash = "*"
    if config.sudo_password and node.name != "bastion":
        password_hash = _sha512_crypt(sudo_password(config))
    _append_line(root / "etc/shadow", f"{LOGIN_USER}:{password_hash}:19700:0:99999:7:::")
    _append_line(root / "etc/group", f"{LOGIN_USER}:x:{LOGIN_UID}:")
    group = root / "etc/group"
    lines = group.read_text().splitlines()
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "sudo" and LOGIN_USER not in fields[3].split(","):
            fields[3] = ",".join([m for m in fields[3].split(",") if m] + [LOGIN_USER])
            lines[i] = ":".join(fields)
    group.write_text("\n".join(lines) + "\n")
    home = root / "home" / LOGIN_USER
    dot_ssh = home / ".ssh"
    dot_ssh.mkdir(parents=True, mode=0o700, exist_ok=True)
    (dot_ssh / "authorized_keys").write_text(authorized_key)
    for path, mode in ((home, 0o750), (dot_ssh, 0o700), (dot_ssh / "authorized_keys", 0o600)):
        os.chown(path, LOGIN_UID, LOGIN_UID)
        path.chmod(mode)
    rule = "NOPASSWD:ALL" if not config.sudo_password else "ALL"
    sudoers = root / SUDOERS_FILE
    sudoers.parent.mkdir(parents=True, exist_ok=True)
    sudoers.write_text(f"# Written by the nodegate lab, as cloud-init writes it for the default user.\n"
                       f"{LOGIN_USER} ALL=(ALL:ALL) {rule}\n")
    sudoers.chmod(0o440)


def write_bastion_files(config: LabConfig, root: Path) -> None:
    """The bastion's bind library, preloaded into every process of the bastion."""
    library = config.dir / "bastion" / "bind-source.so"
    if not library.is_file():
        build_bind_library(config)
    target = root / BIND_LIBRARY
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(library, target)
    target.chmod(0o755)
    (root / "etc/ld.so.preload").write_text(f"/{BIND_LIBRARY}\n")


def sudo_password(config: LabConfig) -> str:
    """The login user's sudo password: the inventory's planted ansible_become_password."""
    from nodegate.lab.kubespray import planted_secrets

    return planted_secrets(config.dir)["ansible_become_password"]


def _sha512_crypt(password: str) -> str:
    done = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n", capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


def _append_line(path: Path, line: str) -> None:
    name = line.split(":", 1)[0] + ":"
    text = path.read_text() if path.exists() else ""
    kept = [entry for entry in text.splitlines() if not entry.startswith(name)]
    path.write_text("\n".join(kept + [line]) + "\n")
