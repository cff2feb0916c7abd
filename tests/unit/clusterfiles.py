"""Write small but real cluster profiles (TOML + a Kubespray checkout with inventory and group_vars)
into a directory, for the profile, property and plugin tests."""
from __future__ import annotations

import subprocess
from pathlib import Path

LAB_HOSTS_YAML = """\
all:
  hosts:
    node1:
      ansible_host: 127.9.1.1
      ip: 127.9.1.1
      access_ip: 127.9.1.1
    node2:
      ansible_host: 127.9.1.2
      ip: 127.9.1.2
    node3:
      ansible_host: 127.9.1.3
      ip: 127.9.1.3
    node4:
      ansible_host: 127.9.1.4
      ip: 127.9.1.4
  children:
    kube_control_plane:
      hosts:
        node1:
        node2:
    kube_node:
      hosts:
        node3:
        node4:
    etcd:
      hosts:
        node1:
        node2:
        node3:
    k8s_cluster:
      children:
        kube_control_plane:
        kube_node:
    calico_rr:
      hosts: {}
"""

LAB_INVENTORY_INI = """\
# Kubespray's inventory/sample/inventory.ini layout
[all]
node1 ansible_host=127.9.1.1 ip=127.9.1.1 etcd_member_name=etcd1
node2 ansible_host=127.9.1.2 ip=127.9.1.2 etcd_member_name=etcd2
node3 ansible_host=127.9.1.3 ip=127.9.1.3 etcd_member_name=etcd3
node4 ansible_host=127.9.1.4 ip=127.9.1.4

[kube_control_plane]
node1
node2

[etcd]
node1
node2
node3

[kube_node]
node3
node4

[calico_rr]

[k8s_cluster:children]
kube_control_plane
kube_node
calico_rr
"""

BASE_TOML = """\
[cluster]
name = "test-cluster"
[kubespray]
path = "kubespray"
inventory = "inventory/mycluster/{inventory_name}"
[kubernetes]
kubeconfig = "kubeconfig"
context = "test"
[ssh]
user = "root"
"""

DOCKER_VARS_UBUNTU = """\
---
containerd_versioned_pkg:
  'latest': "{{ containerd_package }}"
  '1.6.4': "{{ containerd_package }}=1.6.4-1"
  '1.6.20': "{{ containerd_package }}=1.6.20-1"
docker_versioned_pkg:
  'latest': docker-ce
  '20.10': docker-ce=5:20.10.20~3-0~ubuntu-{{ ansible_distribution_release|lower }}
  '23.0': docker-ce=5:23.0.6-1~ubuntu.{{ ansible_distribution_release|lower }}
docker_cli_versioned_pkg:
  'latest': docker-ce-cli
  '20.10': docker-ce-cli=5:20.10.20~3-0~ubuntu-{{ ansible_distribution_release|lower }}
  '23.0': docker-ce-cli=5:23.0.6-1~ubuntu.{{ ansible_distribution_release|lower }}
"""


def tag_checkout(checkout: Path, tag: str) -> None:
    """Make CHECKOUT a git clone at TAG, as operators clone Kubespray (v2.21.0 has no galaxy.yml)."""
    if (checkout / ".git").exists():
        return
    checkout.mkdir(parents=True, exist_ok=True)
    (checkout / "cluster.yml").write_text("---\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=master"]
    for args in (["init", "-q"], ["add", "cluster.yml"], ["commit", "-qm", "release"], ["tag", tag]):
        subprocess.run([*git, *args], cwd=checkout, check=True, capture_output=True)


def write_cluster(root: Path, *, inventory: str = LAB_HOSTS_YAML, inventory_name: str = "hosts.yaml",
                  toml: str | None = None, extra_toml: str = "", kube_version: str | None = "v1.25.6",
                  galaxy_version: str | None = None, kubespray_tag: str | None = "v2.21.0", docker_vars: str | None = None,
                  group_vars: dict[str, str] | None = None, kubeconfig: bool = True) -> Path:
    """A profile at root/cluster.toml pointing at root/kubespray; returns the profile's path."""
    checkout = root / "kubespray"
    inv_dir = checkout / "inventory" / "mycluster"
    inv_dir.mkdir(parents=True, exist_ok=True)
    (inv_dir / inventory_name).write_text(inventory)
    if kubespray_tag:
        tag_checkout(checkout, kubespray_tag)
    if galaxy_version:
        (checkout / "galaxy.yml").write_text(f"---\nnamespace: kubernetes_sigs\nname: kubespray\nversion: {galaxy_version}\n")
    if kube_version:
        k8s = inv_dir / "group_vars" / "k8s_cluster"
        k8s.mkdir(parents=True, exist_ok=True)
        (k8s / "k8s-cluster.yml").write_text(f"---\nkube_version: {kube_version}\nkube_network_plugin: calico\n")
    for relative, text in (group_vars or {}).items():
        path = inv_dir / "group_vars" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if docker_vars is not None:
        vars_dir = checkout / "roles" / "container-engine" / "docker" / "vars"
        vars_dir.mkdir(parents=True, exist_ok=True)
        (vars_dir / "ubuntu.yml").write_text(docker_vars)
    if kubeconfig:
        (root / "kubeconfig").write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    text = toml if toml is not None else BASE_TOML.format(inventory_name=inventory_name) + extra_toml
    profile = root / "cluster.toml"
    profile.write_text(text)
    return profile
