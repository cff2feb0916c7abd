"""The lab's Kubespray stand-in (v2.21.0 by default): DIR/kubespray (a checkout) and DIR/kubespray-venv.

`write_checkout(config)` copies the static tree (nodegate/lab/kubespray_tree: playbooks, roles,
ansible.cfg) into DIR/kubespray, lays it out as the lab's release (`nodegate lab up --kubespray`,
kubespray_releases.py), commits it as a git clone at the release tag, and writes the lab-specific inventory,
`inventory/mycluster/` (hosts.yaml and group_vars), the way an operator's checkout holds its own.
The tree is a real Ansible project: `ansible-playbook upgrade-cluster.yml` runs over SSH to the
lab nodes and changes them (see kubespray_tree/README.md for what each role does and which
known Kubespray failures it reproduces).

`ensure_ansible_env(requirements)` builds, once per machine, a virtualenv from a release's
stand-in requirements.txt (an ansible-core inside that release's ansible_version.yml range:
kubespray_releases.py), cached next to the base image, and `lab up` links the lab's release's one
as DIR/kubespray-venv (Kubespray's documented layout: a venv beside the checkout); `make setup`
builds all of them (`python -m nodegate.lab.kubespray`). Failing to build one is not fatal to the
lab; the harness then finds no venv beside the checkout, and its toolchain preflight refuses the
Ansible it would fall back to when that is outside the release's range, as on a real cluster.

Planted secrets: the inventory holds an `ansible_become_password` and a registry password
(`containerd_registry_auth`), random per lab, so tests can prove they never reach a log or a
report. `planted_secrets(lab_dir)` reads them back.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import logging
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from nodegate.lab.admin_conf import write_admin_conf
from nodegate.lab.config import LOGIN_USER, LabConfig
from nodegate.lab.image import CACHE_ROOT
from nodegate.lab.kubespray_releases import StandIn, commit_as_release, lay_out, stand_in
from nodegate.lab.profile_files import SshFiles

log = logging.getLogger(__name__)

TREE = Path(__file__).with_name("kubespray_tree")
CHECKOUT = "kubespray"
VENV_LINK = "kubespray-venv"
INVENTORY = "inventory/mycluster"
KUBELET_VERSION_FILE = "/etc/kubernetes/kubelet-version"
DOCKER_VERSION = "20.10"                 # Kubespray's docker_version → docker-ce 5:20.10.20~3-0~ubuntu-<codename>
DOCKER_CONTAINERD_VERSION = "1.6.4"      # docker_containerd_version → containerd.io 1.6.4-1
# Short waits between Kubespray's package retries (its default retry_stagger is 5 s): the lab
# apt repository answers at once, and a failing run should fail within seconds.
RETRY_STAGGER = 1
VENV_BUILD_TIMEOUT_S = 300


def write_checkout(config: LabConfig, *, cache_root: Path = CACHE_ROOT, with_venv: bool = True) -> Path:
    """(Re)write DIR/kubespray from the tree and the lab's nodes; link DIR/kubespray-venv.

    A fresh copy each time: `lab up` starts the nodes from their seed, so the checkout starts
    from Kubespray's own files too (an edit such as `force: true` lasts until the next `lab up`)."""
    dest = config.dir / CHECKOUT
    tmp = config.dir / f".{CHECKOUT}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(TREE, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    release = stand_in(config.kubespray_version)
    lay_out(tmp, release)
    commit_as_release(tmp, release)   # a clone at the release tag; the inventory stays untracked
    _write_inventory(config, tmp / INVENTORY, release)
    write_admin_conf(config, tmp / INVENTORY)   # kubeconfig_localhost's artifacts/admin.conf
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    if with_venv:
        link_venv(config, cache_root=cache_root)
    return dest


def _dump(path: Path, header: str, data: dict, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"---\n# {header}\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    path.chmod(mode)


def _write_inventory(config: LabConfig, inventory: Path, release: StandIn) -> None:
    control = [n.name for n in config.nodes if n.control_plane]
    workers = [n.name for n in config.nodes if "worker" in n.roles]
    etcd = [n.name for n in config.etcd_nodes]
    hosts = {n.name: {"ansible_host": n.address, "ip": n.address, "access_ip": n.address} for n in config.nodes}
    ssh = SshFiles(config.dir)
    strict = (f"-o UserKnownHostsFile={ssh.known_hosts} -o StrictHostKeyChecking=yes "
              "-o IdentitiesOnly=yes -o HostKeyAlgorithms=ssh-ed25519 -o ConnectTimeout=5")
    bastion = config.bastion_node
    children: dict = {}
    if bastion is not None:
        # Kubespray's layout: a host named `bastion` in the group `bastion`; its ProxyCommand
        # (roles/bastion-ssh-config) is `ssh -F /dev/null … -W %h:%p -p <port> <user>@<bastion>`,
        # here with the lab's pinned host keys instead of Kubespray's StrictHostKeyChecking=no.
        hosts[bastion.name] = {"ansible_host": bastion.address, "ansible_user": LOGIN_USER}
        children["bastion"] = {"hosts": {bastion.name: None}}
        proxy = (f"ssh -F /dev/null {strict} -i {ssh.identity} -W %h:%p -p {config.ssh_port} "
                 f"{LOGIN_USER}@{bastion.address}")
        for node in config.nodes:
            hosts[node.name]["ansible_ssh_common_args"] = f"{strict} -o ProxyCommand=\"{proxy}\""
    for n in config.nodes:
        if n.domain:
            # Short inventory names, FQDN Nodes: Kubespray's kube_override_hostname (kubelet
            # --hostname-override, kubeadm nodeRegistration name; roles/kubernetes/node/defaults).
            hosts[n.name]["kube_override_hostname"] = n.kube_name
    # Letters and digits only, so the YAML holds them unquoted and a plain grep finds them.
    become_password = "become" + secrets.token_hex(12)
    registry_password = "registry" + secrets.token_hex(12)
    _dump(inventory / "hosts.yaml", "Kubespray inventory of the nodegate lab (written by `nodegate lab up`)", {
        "all": {
            "hosts": hosts,
            "children": {
                **children,
                "kube_control_plane": {"hosts": {name: None for name in control}},
                "kube_node": {"hosts": {name: None for name in workers}},
                "etcd": {"hosts": {name: None for name in etcd}},
                "k8s_cluster": {"children": {"kube_control_plane": None, "kube_node": None}},
                "calico_rr": {"hosts": {}},
            },
            # A planted secret, as operators keep one here: it must never reach nodegate's output.
            "vars": {"ansible_user": config.ssh_user, "ansible_port": config.ssh_port,
                     "ansible_become_password": become_password},
        },
    }, mode=0o600)
    _dump(inventory / "group_vars/all/all.yml", "How Ansible reaches the lab nodes (the lab's key and pinned host keys)", {
        "ansible_ssh_private_key_file": str(ssh.identity),
        "ansible_ssh_common_args": strict,
        "ansible_python_interpreter": "/usr/bin/python3",
        "retry_stagger": RETRY_STAGGER,
    })
    _dump(inventory / "group_vars/all/offline.yml", "Package sources: the lab's apt repository", {
        "docker_ubuntu_repo_base_url": f"{config.repo_url}/linux/ubuntu",
        "docker_ubuntu_repo_gpgkey": f"{config.repo_url}/linux/ubuntu/gpg",
        "docker_ubuntu_repo_repokey": docker_key_fingerprint(),
        "containerd_ubuntu_repo_base_url": f"{config.repo_url}/linux/ubuntu",
    })
    _dump(inventory / "group_vars/all/docker.yml", "Docker and its containerd.io, as pinned by Kubespray v2.21", {
        "docker_version": DOCKER_VERSION,
        "docker_cli_version": "{{ docker_version }}",
        "docker_containerd_version": DOCKER_CONTAINERD_VERSION,
    })
    _dump(inventory / "group_vars/all/containerd.yml", "Registry credentials (a planted secret)", {
        "containerd_registry_auth": [
            {"registry": f"{config.repo_address}:5000", "username": "nodegate-lab", "password": registry_password},
        ],
    }, mode=0o600)
    _dump(inventory / "group_vars/k8s_cluster/k8s-cluster.yml", "Kubernetes cluster settings", {
        "kube_version": release.kube_version(config.kube_version),   # v2.28+: without the leading 'v'
        "container_manager": config.container_manager,
        "kube_network_plugin": "calico",
        "kube_network_plugin_multus": True,
        "kube_config_dir": "/etc/kubernetes",
        "cluster_name": "cluster.local",
    })


def docker_key_fingerprint(cache_root: Path = CACHE_ROOT) -> str:
    """The fingerprint of the lab repository's Docker key (generated with each repository
    build), which Kubespray's apt_key task names as docker_ubuntu_repo_repokey."""
    from nodegate.lab.aptrepo import repo_build

    key = repo_build(cache_root).docker_key
    if not key.exists():
        return "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"   # Docker's own, until the repository is built
    out = subprocess.run(["gpg", "--batch", "--with-colons", "--show-keys", str(key)], capture_output=True,
                         text=True, check=True).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def planted_secrets(lab_dir: Path) -> dict[str, str]:
    """The secrets written into the lab's inventory: {'ansible_become_password': …, 'registry_password': …}."""
    inventory = Path(lab_dir) / CHECKOUT / INVENTORY
    hosts = yaml.safe_load((inventory / "hosts.yaml").read_text())
    auth = yaml.safe_load((inventory / "group_vars/all/containerd.yml").read_text())
    return {"ansible_become_password": hosts["all"]["vars"]["ansible_become_password"],
            "registry_password": auth["containerd_registry_auth"][0]["password"]}


# -- Kubespray's Python environment --------------------------------------------------------------
def release_requirements(version: str) -> str:
    """The stand-in requirements.txt of the lab's Kubespray VERSION ('v2.28.1' or 'v2.28.x')."""
    return stand_in(version).requirements_text((TREE / "requirements.txt").read_text())


def _env_key(requirements: str) -> str:
    text = requirements + f"\n{sys.version_info[:2]}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ansible_env_dir(cache_root: Path = CACHE_ROOT, requirements: str | None = None) -> Path:
    text = requirements if requirements is not None else (TREE / "requirements.txt").read_text()
    return cache_root / f"kubespray-venv-{_env_key(text)}"


def ensure_ansible_env(cache_root: Path = CACHE_ROOT, requirements: str | None = None) -> Path | None:
    """The cached venv built from REQUIREMENTS (default: the tree's, v2.21's ansible-core), built on
    first use (~10 s, needs the package index); None if it cannot be built."""
    requirements = requirements if requirements is not None else (TREE / "requirements.txt").read_text()
    venv = ansible_env_dir(cache_root, requirements)
    if (venv / "complete").exists():
        return venv
    cache_root.mkdir(parents=True, exist_ok=True)
    # Several labs may come up at once (tests): one builds, the others wait for it.
    with open(cache_root / "kubespray-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / "complete").exists():
            return venv
        tmp = venv.with_name(venv.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        started = time.monotonic()
        try:
            # The base interpreter, not this venv's: a venv made from a venv's python is fine,
            # but its pip must not see this project's packages.
            python = getattr(sys, "_base_executable", None) or sys.executable
            subprocess.run([python, "-m", "venv", str(tmp)], check=True, capture_output=True,
                           timeout=VENV_BUILD_TIMEOUT_S)
            (tmp / "requirements.txt").write_text(requirements)
            subprocess.run([str(tmp / "bin/pip"), "install", "-q", "--disable-pip-version-check",
                            "-r", str(tmp / "requirements.txt")], check=True, capture_output=True, text=True,
                           timeout=VENV_BUILD_TIMEOUT_S)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            detail = getattr(exc, "stderr", None) or str(exc)
            log.warning("could not build Kubespray's ansible environment (%s); the lab has no venv beside its "
                        "checkout", str(detail).strip()[-400:])
            shutil.rmtree(tmp, ignore_errors=True)
            return None
        # venvs are not relocatable: the scripts name their interpreter by absolute path. So the
        # venv is built under its temporary name and the scripts are rewritten on rename.
        for script in (tmp / "bin").iterdir():
            if script.is_file() and not script.is_symlink():
                with contextlib.suppress(UnicodeDecodeError):
                    text = script.read_text()
                    if str(tmp) in text:
                        script.write_text(text.replace(str(tmp), str(venv)))
        cfg = tmp / "pyvenv.cfg"
        cfg.write_text(cfg.read_text().replace(str(tmp), str(venv)))
        if venv.exists():
            shutil.rmtree(venv)
        tmp.rename(venv)
        (venv / "complete").write_text(_env_key(requirements) + "\n")
        log.info("built Kubespray's ansible environment in %.1f s (%s)", time.monotonic() - started, venv)
        return venv


def link_venv(config: LabConfig, *, cache_root: Path = CACHE_ROOT) -> Path | None:
    """DIR/kubespray-venv → the cached environment of the lab's release (absent when it cannot be built)."""
    link = config.dir / VENV_LINK
    venv = ensure_ansible_env(cache_root, release_requirements(config.kubespray_version))
    if link.is_symlink() or link.exists():
        link.unlink()
    if venv is None:
        return None
    link.symlink_to(venv, target_is_directory=True)
    return link


DOCKER_TASKS = "roles/container-engine/docker/tasks/main.yml"
_STATE_LINE = re.compile(r"(?m)^(    state: \"\{\{ docker_package_info\.state \| default\('present'\) \}\}\"\n)")


def apply_force_fix(checkout: Path, argument: str = "force") -> bool:
    """Do what the operator does for kubespray #9114 on v2.21.0's task shape: add `force: true`
    (or `allow_downgrade: true`) as an argument of the `package:` module of "ensure docker
    packages are installed" in roles/container-engine/docker/tasks/main.yml, after its `state:`
    line (not under module_defaults). Returns False if it was there already."""
    path = Path(checkout) / DOCKER_TASKS
    text = path.read_text()
    line = f"    {argument}: true\n"
    if line in text:
        return False
    fixed, count = _STATE_LINE.subn(lambda m: m.group(1) + line, text, count=1)
    if count != 1:
        raise ValueError(f"{path}: no `state:` line of the docker package task to add {line.strip()!r} after")
    path.write_text(fixed)
    return True


def build_all_envs(cache_root: Path = CACHE_ROOT) -> list[str]:
    """Every release stand-in's venv (`make setup`); the releases whose venv could not be built."""
    from nodegate.lab.kubespray_releases import STAND_INS

    failed = []
    for tag in STAND_INS:
        if ensure_ansible_env(cache_root, release_requirements(tag)) is None:
            failed.append(tag)
    return failed


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    missing = build_all_envs()
    if missing:
        print(f"could not build the Kubespray venvs of {', '.join(missing)}: labs of those releases get no "
              "venv beside their checkout (the harness's toolchain preflight then says what is missing)")
    sys.exit(1 if missing else 0)
