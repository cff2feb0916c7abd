"""The cluster profile: TOML + Kubespray inventory (YAML and INI) + group_vars → frozen Profile."""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
from clusterfiles import DOCKER_VARS_UBUNTU, LAB_HOSTS_YAML, LAB_INVENTORY_INI, write_cluster

from nodegate.core.errors import UsageError
from nodegate.profile.checkout import kubespray_version
from nodegate.profile.inventory import read_inventory
from nodegate.profile.load import load_profile, resolve_profile_path
from nodegate.profile.model import NodeSpec, Profile


def names(nodes) -> list[str]:
    return [n.name for n in nodes]


@pytest.fixture
def lab_profile(tmp_path) -> Profile:
    return load_profile(write_cluster(tmp_path, extra_toml='[nodes.node4]\nbmc = "10.0.9.4"\n'), environ={})


# --------------------------------------------------------------------------- happy paths

def test_lab_profile_nodes_roles_addresses(lab_profile):
    p = lab_profile
    assert p.name == "test-cluster"
    assert names(p.nodes) == ["node1", "node2", "node3", "node4"]
    assert p.node("node1").roles == frozenset({"control-plane", "etcd"})
    assert p.node("node3").roles == frozenset({"worker", "etcd"})
    assert p.node("node4").roles == frozenset({"worker"})
    assert p.node("node4").address == "127.9.1.4"
    assert p.node("node4").user == "root"
    assert p.node("node4").bmc == "10.0.9.4" and p.node("node3").bmc is None
    assert p.kube_version == "v1.25.6"
    assert p.kubespray.version == "v2.21.0"
    assert p.kubespray.inventory.name == "hosts.yaml"
    assert p.kube.kubeconfig.name == "kubeconfig" and p.kube.context == "test"


def test_profile_is_frozen(lab_profile):
    with pytest.raises(dataclasses.FrozenInstanceError):
        lab_profile.name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        lab_profile.nodes[0].address = "1.2.3.4"  # type: ignore[misc]


def test_defaults_when_tables_are_absent(lab_profile):
    assert lab_profile.ceph.mode == "toolbox"
    assert lab_profile.ceph.namespace == "rook-ceph"
    assert lab_profile.ceph.toolbox_selector == "app=rook-ceph-tools"
    assert lab_profile.expect.held_packages == ("containerd.io", "docker-ce", "docker-ce-cli")
    assert lab_profile.upgrade.drain_timeout_s > 0
    assert lab_profile.upgrade.reboot_timeout_s(lab_profile.node("node1")) > \
        lab_profile.upgrade.reboot_timeout_s(lab_profile.node("node4"))
    assert lab_profile.ssh.trust_new_host_keys is False


def test_package_versions_fall_back_to_the_v2_21_table(lab_profile):
    # the checkout has no roles/container-engine/docker/vars/ubuntu.yml
    expect = lab_profile.expect
    assert expect.package_versions["containerd.io"] == "1.6.4-1"
    assert expect.version_for("docker-ce", "focal") == "5:20.10.20~3-0~ubuntu-focal"
    assert expect.version_for("docker-ce-cli", "jammy") == "5:20.10.20~3-0~ubuntu-jammy"
    assert expect.version_for("unknown-pkg", "jammy") is None


def test_package_versions_from_the_checkouts_vars_file(tmp_path):
    path = write_cluster(tmp_path, docker_vars=DOCKER_VARS_UBUNTU,
                         group_vars={"all/docker.yml": "---\ndocker_version: '23.0'\ndocker_containerd_version: 1.6.20\n"})
    expect = load_profile(path, environ={}).expect
    assert expect.package_versions == {"containerd.io": "1.6.20-1", "docker-ce": "5:23.0.6-1~ubuntu.{codename}",
                                       "docker-ce-cli": "5:23.0.6-1~ubuntu.{codename}"}


def test_profile_package_versions_override_the_checkout(tmp_path):
    path = write_cluster(tmp_path, docker_vars=DOCKER_VARS_UBUNTU,
                         extra_toml='[expect]\npackage_versions = { "containerd.io" = "1.6.4-1" }\n'
                                    'held_packages = ["containerd.io"]\nmin_free_root_mb = 4000\n',
                         group_vars={"k8s_cluster/docker.yml": "docker_version: '20.10'\ncontainerd_version: 1.6.20\n"})
    expect = load_profile(path, environ={}).expect
    assert expect.package_versions["containerd.io"] == "1.6.4-1"
    assert expect.package_versions["docker-ce"] == "5:20.10.20~3-0~ubuntu-{codename}"
    assert expect.held_packages == ("containerd.io",)
    assert expect.min_free_root_mb == 4000


def test_ini_inventory_gives_the_same_nodes(tmp_path):
    yaml_profile = load_profile(write_cluster(tmp_path / "y"), environ={})
    ini_profile = load_profile(write_cluster(tmp_path / "i", inventory=LAB_INVENTORY_INI,
                                             inventory_name="inventory.ini"), environ={})
    assert ini_profile.nodes == yaml_profile.nodes


def test_ini_vars_ranges_ports_and_users(tmp_path):
    inventory = """\
[kube_control_plane]
cp1 ansible_host=10.0.0.1 ansible_port=2222

[kube_node]
wk[01:03] ansible_host=10.0.1.1  # one address for the test
wk09:2200 ansible_host="10.0.1.9" ansible_user=ops

[etcd:children]
kube_control_plane

[all:vars]
ansible_user=ubuntu
ansible_become_password="s3cret pass"
"""
    profile = load_profile(write_cluster(tmp_path, inventory=inventory, inventory_name="inventory.ini"), environ={})
    assert names(profile.nodes) == ["cp1", "wk01", "wk02", "wk03", "wk09"]
    assert profile.node("cp1").port == 2222 and profile.node("cp1").roles == frozenset({"control-plane", "etcd"})
    assert profile.node("wk02").user == "ubuntu"
    assert profile.node("wk09").user == "ops" and profile.node("wk09").port == 2200
    assert profile.node("wk09").address == "10.0.1.9"
    assert "s3cret" not in repr(profile)


def test_yaml_nested_children_group_vars_and_user_precedence(tmp_path):
    inventory = """\
all:
  vars:
    ansible_user: admin
  children:
    k8s_cluster:
      vars:
        ansible_user: kube
      children:
        kube_control_plane:
          hosts:
            cp1: {ansible_host: 10.0.0.1}
        kube_node:
          children:
            gpu_nodes:
              hosts:
                gpu1: {ansible_host: 10.0.2.1, ansible_user: gpuop}
            plain_nodes:
              hosts:
                w1: {ansible_host: 10.0.1.1}
    etcd:
      hosts:
        cp1:
"""
    profile = load_profile(write_cluster(tmp_path, inventory=inventory), environ={})
    assert names(profile.nodes) == ["cp1", "gpu1", "w1"]
    assert profile.node("gpu1").roles == frozenset({"worker"})
    assert profile.node("gpu1").user == "gpuop"
    assert profile.node("w1").user == "kube"        # k8s_cluster vars beat all vars
    assert profile.node("cp1").roles == frozenset({"control-plane", "etcd"})


def test_old_group_names_and_inventory_kube_version(tmp_path):
    inventory = """\
all:
  hosts:
    m1: {ansible_host: 10.0.0.1}
    n1: {ansible_host: 10.0.0.2}
  vars:
    kube_version: v1.24.9
  children:
    kube-master: {hosts: {m1: }}
    kube-node: {hosts: {n1: }}
    etcd: {hosts: {m1: }}
"""
    profile = load_profile(write_cluster(tmp_path, inventory=inventory, kube_version=None), environ={})
    assert profile.node("m1").is_control_plane and profile.node("n1").is_worker
    assert profile.kube_version == "v1.24.9"


def test_profile_kube_version_beats_group_vars(tmp_path):
    path = write_cluster(tmp_path, toml=None, extra_toml="")
    text = path.read_text().replace('context = "test"', 'context = "test"\nkube_version = "v1.26.1"')
    path.write_text(text)
    assert load_profile(path, environ={}).kube_version == "v1.26.1"


def test_templated_kube_version_is_not_taken_literally(tmp_path):
    path = write_cluster(tmp_path, kube_version="\"{{ some_var }}\"")
    assert load_profile(path, environ={}).kube_version is None


def test_lab_style_absolute_paths_and_ssh_files(tmp_path):
    write_cluster(tmp_path)
    ssh = tmp_path / "ssh"
    ssh.mkdir()
    for name in ("config", "id_ed25519", "known_hosts"):
        (ssh / name).write_text("x\n")
    toml = f"""
[cluster]
name = "nodegate-lab"
[kubespray]
path = "{tmp_path}/kubespray"
inventory = "{tmp_path}/kubespray/inventory/mycluster/hosts.yaml"
[kubernetes]
kubeconfig = "{tmp_path}/kubeconfig"
context = "nodegate-lab"
[ssh]
config = "{ssh}/config"
user = "root"
identity_file = "{ssh}/id_ed25519"
known_hosts = "{ssh}/known_hosts"
[ceph]
mode = "toolbox"
namespace = "rook-ceph"
toolbox_selector = "app=rook-ceph-tools"
[expect]
held_packages = ["containerd.io", "docker-ce", "docker-ce-cli"]
[upgrade]
settle_s = 2
"""
    (tmp_path / "cluster.toml").write_text(toml)
    profile = load_profile(tmp_path / "cluster.toml", environ={})
    assert profile.ssh.config == ssh / "config"
    assert profile.ssh.identity_file == ssh / "id_ed25519"
    assert profile.ssh.known_hosts == ssh / "known_hosts"
    assert profile.upgrade.settle_s == 2.0
    assert profile.name == "nodegate-lab"


def test_ceph_command_mode(tmp_path):
    path = write_cluster(tmp_path, extra_toml='[ceph]\nmode = "command"\ncommand = "ceph --conf \'/etc/ceph x/ceph.conf\'"\n')
    ceph = load_profile(path, environ={}).ceph
    assert ceph.mode == "command" and ceph.command == ("ceph", "--conf", "/etc/ceph x/ceph.conf")


def test_inventory_given_as_a_directory(tmp_path):
    path = write_cluster(tmp_path)
    path.write_text(path.read_text().replace("inventory/mycluster/hosts.yaml", "inventory/mycluster"))
    assert load_profile(path, environ={}).kubespray.inventory.name == "hosts.yaml"


# --------------------------------------------------------------------------- kubeconfig resolution

def test_kubeconfig_from_env_then_home_then_kubespray_artifacts(tmp_path):
    path = write_cluster(tmp_path, kubeconfig=False)
    path.write_text(path.read_text().replace('kubeconfig = "kubeconfig"\n', ""))
    env_conf = tmp_path / "env.conf"
    env_conf.write_text("apiVersion: v1\n")
    home = tmp_path / "home"
    assert load_profile(path, environ={"KUBECONFIG": f"{tmp_path}/missing:{env_conf}", "HOME": str(home)}) \
        .kube.kubeconfig == env_conf
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text("apiVersion: v1\n")
    assert load_profile(path, environ={"HOME": str(home)}).kube.kubeconfig == home / ".kube" / "config"
    (home / ".kube" / "config").unlink()
    artifacts = tmp_path / "kubespray" / "inventory" / "mycluster" / "artifacts"
    artifacts.mkdir()
    (artifacts / "admin.conf").write_text("apiVersion: v1\n")
    assert load_profile(path, environ={"HOME": str(home)}).kube.kubeconfig == artifacts / "admin.conf"
    (artifacts / "admin.conf").unlink()
    with pytest.raises(UsageError) as err:
        load_profile(path, environ={"HOME": str(home)})
    assert "no kubeconfig found" in str(err.value) and "admin.conf" in str(err.value)
    assert "[kubernetes] kubeconfig" in err.value.fix


# --------------------------------------------------------------------------- resolve_profile_path

def test_resolve_profile_path_order(tmp_path):
    a, b, c = tmp_path / "a.toml", tmp_path / "b.toml", tmp_path / "nodegate.toml"
    for f in (a, b, c):
        f.write_text("")
    assert resolve_profile_path(str(a), cwd=tmp_path, environ={"NODEGATE_CLUSTER": str(b)}) == a
    assert resolve_profile_path(None, cwd=tmp_path, environ={"NODEGATE_CLUSTER": str(b)}) == b
    assert resolve_profile_path(None, cwd=tmp_path, environ={}) == c
    assert resolve_profile_path("a.toml", cwd=tmp_path, environ={}) == a


def test_resolve_profile_path_none_names_all_three(tmp_path):
    with pytest.raises(UsageError) as err:
        resolve_profile_path(None, cwd=tmp_path, environ={})
    text = str(err.value)
    assert "--cluster" in text and "NODEGATE_CLUSTER" in text and "nodegate.toml" in text
    assert err.value.fix
    with pytest.raises(UsageError, match="from \\$NODEGATE_CLUSTER"):
        resolve_profile_path(None, cwd=tmp_path, environ={"NODEGATE_CLUSTER": str(tmp_path / "nope.toml")})


# --------------------------------------------------------------------------- node selection

def test_select_keywords_and_rolling_order(lab_profile):
    assert names(lab_profile.select("all")) == ["node3", "node4", "node1", "node2"]
    assert names(lab_profile.select("workers")) == ["node3", "node4"]
    assert names(lab_profile.select("control-plane")) == ["node1", "node2"]
    assert names(lab_profile.select("node1,node4")) == ["node4", "node1"]      # workers first
    assert names(lab_profile.select("node4,node3")) == ["node4", "node3"]      # operator's order kept
    assert names(lab_profile.select("node4,workers,node4")) == ["node4", "node3"]
    assert names(lab_profile.select(" node4 ")) == ["node4"]


@pytest.mark.parametrize("spec", ["node9", "node1,node9", "NODE1"])
def test_select_unknown_node_lists_known_ones(lab_profile, spec):
    with pytest.raises(UsageError) as err:
        lab_profile.select(spec)
    assert "known nodes: node1, node2, node3, node4" in str(err.value)


@pytest.mark.parametrize("spec", ["node1;reboot", "$(reboot)", "node 1", "nöde1", "'node1'", "node1,,node2", ",", ""])
def test_select_rejects_unsafe_or_empty_names(lab_profile, spec):
    with pytest.raises(UsageError) as err:
        lab_profile.select(spec)
    assert err.value.fix


def test_workers_keyword_on_a_cluster_without_worker_only_nodes(tmp_path):
    inventory = LAB_HOSTS_YAML.replace("    kube_node:\n      hosts:\n        node3:\n        node4:\n",
                                       "    kube_node:\n      hosts:\n        node1:\n        node2:\n")
    profile = load_profile(write_cluster(tmp_path, inventory=inventory), environ={})
    assert names(profile.nodes) == ["node1", "node2", "node3"]   # node4 is in no Kubespray group
    with pytest.raises(UsageError, match="no worker-only nodes"):
        profile.select("workers")


# --------------------------------------------------------------------------- kubespray version

def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=cwd,
                   check=True, capture_output=True)


def test_kubespray_version_from_git_tags(tmp_path):
    repo = tmp_path / "ks"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "cluster.yml").write_text("---\n")
    _git(repo, "add", "cluster.yml")
    _git(repo, "commit", "-qm", "one")
    _git(repo, "tag", "-a", "v2.21.0", "-m", "release")     # annotated: a loose tag object to peel
    assert kubespray_version(repo) == "v2.21.0"
    _git(repo, "pack-refs", "--all")                         # packed-refs with a ^peeled line
    assert kubespray_version(repo) == "v2.21.0"
    _git(repo, "commit", "-q", "--allow-empty", "-m", "two")
    assert kubespray_version(repo) == "v2.21.0"               # HEAD is past the tag: git describe
    _git(repo, "tag", "v2.22.1")                             # lightweight
    assert kubespray_version(repo) == "v2.22.1"
    (repo / "galaxy.yml").write_text("version: 2.21.0\n")    # v2.22.1's galaxy.yml lags: the tag wins
    assert kubespray_version(repo) == "v2.22.1"


# --------------------------------------------------------------------------- bad input

def _error(path: Path, **kw) -> UsageError:
    with pytest.raises(UsageError) as err:
        load_profile(path, environ=kw.get("environ", {}))
    assert err.value.fix, "every usage error names the fix"
    return err.value


def test_malformed_toml_names_the_line(tmp_path):
    path = write_cluster(tmp_path, toml='[cluster]\nname = "x"\n[ssh]\nuser = root\n')
    err = _error(path)
    assert "not valid TOML" in str(err) and "line 4" in str(err) and str(path) in str(err)


def test_missing_profile_file(tmp_path):
    assert "does not exist" in str(_error(tmp_path / "nope.toml"))


def test_unknown_table_and_key(tmp_path):
    err = _error(write_cluster(tmp_path, extra_toml="[sshh]\nuser = 'x'\n"))
    assert "unknown table [sshh]" in str(err) and "[ssh]" in err.fix
    err = _error(write_cluster(tmp_path, extra_toml="[upgrade]\nsettle = 3\n"))
    assert "unknown key(s) settle in [upgrade]" in str(err) and "settle_s" in err.fix


def test_wrong_types(tmp_path):
    assert "must be a number" in str(_error(write_cluster(tmp_path, extra_toml='[upgrade]\nsettle_s = "3"\n')))
    assert "must not be negative" in str(_error(write_cluster(tmp_path, extra_toml="[upgrade]\ndrain_timeout_s = -1\n")))
    assert "true or false" in str(_error(write_cluster(tmp_path, extra_toml="[upgrade]\ndevel_release = 1\n")))
    assert "'toolbox' or 'command'" in str(_error(write_cluster(tmp_path, extra_toml='[ceph]\nmode = "rados"\n')))
    assert "package names" in str(_error(write_cluster(tmp_path, extra_toml='[expect]\nheld_packages = ["a b"]\n')))


def test_missing_kubespray_path_and_inventory(tmp_path):
    path = write_cluster(tmp_path)
    path.write_text(path.read_text().replace('path = "kubespray"\n', ""))
    assert "[kubespray] path is missing" in str(_error(path))
    path = write_cluster(tmp_path)
    path.write_text(path.read_text().replace("hosts.yaml", "nothere.yaml"))
    err = _error(path)
    assert "inventory" in str(err) and "nothere.yaml" in str(err) and "does not exist" in str(err)


def test_unreadable_inventory_yaml_names_the_line_not_the_content(tmp_path):
    inventory = "all:\n  hosts:\n    node1:\n      ansible_password: hunter2: [\n"
    err = _error(write_cluster(tmp_path, inventory=inventory))
    assert "not valid YAML at line 4" in str(err)
    assert "hunter2" not in str(err) and "hunter2" not in (err.fix or "")


def test_unreadable_inventory_file_permissions(tmp_path):
    path = write_cluster(tmp_path)
    inventory = tmp_path / "kubespray" / "inventory" / "mycluster" / "hosts.yaml"
    inventory.write_bytes(b"\xff\xfe not utf-8")
    assert "cannot be read" in str(_error(path))


@pytest.mark.parametrize("inventory, words", [
    ("all:\n  hosts:\n    node1:\n  children:\n    kube_node:\n      hosts:\n        node1:\n", "has no address"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("", "empty"),
    ("all:\n  children:\n    other:\n      hosts:\n        x: {ansible_host: 1.2.3.4}\n", "no hosts in kube_control_plane"),
    ("all:\n  hosts: [node1]\n", "must be a mapping of host names"),
    ("all:\n  children:\n    kube_node:\n      hostz:\n        n1:\n", "unknown key(s) hostz"),
    ("all:\n  children:\n    kube_node:\n      hosts:\n        'n1;reboot': {ansible_host: 1.2.3.4}\n",
     "not a valid node name"),
    ("all:\n  children:\n    kube_node:\n      hosts:\n        n1: {ansible_host: '1.2.3.4; reboot'}\n",
     "unusable ansible_host"),
    ("all:\n  children:\n    kube_node:\n      hosts:\n        n1: {ansible_host: 1.2.3.4, ansible_user: 'a b'}\n",
     "unusable ansible_user"),
    ("all:\n  children:\n    kube_node:\n      hosts:\n        n1: {ansible_host: 1.2.3.4, ansible_port: 99999}\n",
     "invalid ansible_port"),
])
def test_bad_yaml_inventories(tmp_path, inventory, words):
    assert words in str(_error(write_cluster(tmp_path, inventory=inventory)))


@pytest.mark.parametrize("inventory, words", [
    ("[kube_node\nn1 ansible_host=1.2.3.4\n", "section header"),
    ("[kube_node]\nn1 ansible_host='1.2.3.4\n", "line 2: unbalanced quotes"),
    ("[kube_node]\nn1 ansible_host=1.2.3.4 junk\n", "not key=value"),
    ("[kube_node]\nn[5:1] ansible_host=1.2.3.4\n", "not a valid range"),
    ("[all:vars]\nnoequals\n", "not key=value"),
])
def test_bad_ini_inventories(tmp_path, inventory, words):
    assert words in str(_error(write_cluster(tmp_path, inventory=inventory, inventory_name="inventory.ini")))


def test_host_named_by_ip_needs_no_ansible_host(tmp_path):
    profile = load_profile(write_cluster(tmp_path, inventory="[kube_node]\n10.0.0.7\n", inventory_name="hosts.ini"),
                           environ={})
    assert profile.nodes == (NodeSpec(name="10.0.0.7", address="10.0.0.7", user="root",
                                      roles=frozenset({"worker"})),)


def test_nodes_table_must_name_inventory_nodes(tmp_path):
    err = _error(write_cluster(tmp_path, extra_toml='[nodes.node9]\nbmc = "x"\n'))
    assert "node9" in str(err) and "known nodes: node1, node2, node3, node4" in str(err)
    err = _error(write_cluster(tmp_path, extra_toml='[nodes.node1]\nipmi = "x"\n'))
    assert "unknown key(s) ipmi in [nodes.node1]" in str(err)


def test_named_files_must_exist(tmp_path):
    err = _error(write_cluster(tmp_path, extra_toml='identity_file = "nokey"\n'))
    assert "[ssh] identity_file" in str(err) and "does not exist" in str(err)
    path = write_cluster(tmp_path)
    path.write_text(path.read_text().replace('kubeconfig = "kubeconfig"', 'kubeconfig = "nokube"'))
    assert "[kubernetes] kubeconfig" in str(_error(path))


def test_known_hosts_may_be_missing_only_when_trusting_new_keys(tmp_path):
    assert "known_hosts" in str(_error(write_cluster(tmp_path, extra_toml='known_hosts = "kh"\n')))
    profile = load_profile(write_cluster(tmp_path, extra_toml='known_hosts = "kh"\ntrust_new_host_keys = true\n'),
                           environ={})
    assert profile.ssh.trust_new_host_keys and profile.ssh.known_hosts == tmp_path / "kh"


def test_secrets_in_the_inventory_never_reach_the_profile(tmp_path):
    inventory = LAB_HOSTS_YAML.replace("      access_ip: 127.9.1.1\n",
                                       "      ansible_password: hunter2\n      ansible_become_password: s3cr3t\n"
                                       "      ansible_ssh_private_key_file: /secret/key\n")
    inventory += "  vars:\n    ansible_become_pass: topsecret\n"
    profile = load_profile(write_cluster(tmp_path, inventory=inventory), environ={})
    inv = read_inventory(profile.kubespray.inventory)
    for text in (repr(profile), repr(inv), str(inv.host_vars), str(inv.group_vars)):
        for secret in ("hunter2", "s3cr3t", "topsecret"):
            assert secret not in text
    # the key file's path is no secret: it is where ssh finds the key (ansible_ssh_private_key_file)
    assert str(profile.node("node1").identity_file) == "/secret/key"


# --------------------------------------------------------------------------- holds from container_manager

def test_expected_holds_follow_container_manager(tmp_path):
    """Kubespray holds packages only in its docker role; its default container_manager is
    containerd (v2.21.0 kubespray-defaults), which installs containerd itself."""
    docker = load_profile(write_cluster(tmp_path / "d"), environ={})
    assert docker.expect.held_packages == ("containerd.io", "docker-ce", "docker-ce-cli")
    assert docker.expect.held_source == "container_manager docker"
    default = load_profile(write_cluster(tmp_path / "c", container_manager=None), environ={})
    assert default.expect.held_packages == () and default.expect.held_source == "container_manager containerd"
    crio = load_profile(write_cluster(tmp_path / "o", container_manager="crio"), environ={})
    assert crio.expect.held_packages == ()
    override = load_profile(write_cluster(tmp_path / "p", container_manager="containerd",
                                          extra_toml='[expect]\nheld_packages = ["containerd.io"]\n'), environ={})
    assert override.expect.held_packages == ("containerd.io",)
    assert override.expect.held_source == "[expect] held_packages"
    with pytest.raises(UsageError, match="container_manager 'podman'"):
        load_profile(write_cluster(tmp_path / "x", container_manager="podman"), environ={})


def test_docker_pins_with_the_ubuntu_version(tmp_path):
    """From v2.25.1 the docker-ce pins read ansible_distribution_version as well."""
    vars_2_25 = ("docker_versioned_pkg:\n  '26.1': docker-ce=5:26.1.2-1~ubuntu.{{ ansible_distribution_version }}"
                 "~{{ ansible_distribution_release | lower }}\n"
                 "docker_cli_versioned_pkg:\n  '26.1': docker-ce-cli=5:26.1.2-1~ubuntu.{{ ansible_distribution_version }}"
                 "~{{ ansible_distribution_release | lower }}\n")
    profile = load_profile(write_cluster(tmp_path, docker_vars=vars_2_25, galaxy_version="2.25.1",
                                         group_vars={"all/docker.yml": "docker_version: '26.1'\n"}), environ={})
    assert profile.expect.version_for("docker-ce", "noble") == "5:26.1.2-1~ubuntu.24.04~noble"
    assert profile.expect.version_for("docker-ce-cli", "jammy") == "5:26.1.2-1~ubuntu.22.04~jammy"
