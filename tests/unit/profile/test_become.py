"""The inventory's ansible_become / ansible_become_user read as Ansible reads them, and what
nodegate makes of them: its checks and steps need root, so a host that cannot become root is
refused by name (nodegate.profile.model.NodeSpec.privilege_problem; the preflight raises it)."""
from __future__ import annotations

import pytest
from clusterfiles import write_cluster

from nodegate.core.errors import UsageError
from nodegate.profile.load import load_profile

HOSTS = """\
all:
  vars:
    ansible_user: ubuntu
{all_vars}
  hosts:
    node1: {{ansible_host: 10.0.0.1{node1}}}
    node2: {{ansible_host: 10.0.0.2{node2}}}
  children:
    kube_control_plane: {{hosts: {{node1: }}}}
    kube_node: {{hosts: {{node2: }}}}
    etcd: {{hosts: {{node1: }}}}
"""


def profile(tmp_path, *, all_vars: str = "", node1: str = "", node2: str = "", ini: str | None = None):
    inventory = ini if ini is not None else HOSTS.format(all_vars=all_vars, node1=node1, node2=node2)
    return load_profile(write_cluster(tmp_path, inventory=inventory,
                                      inventory_name="inventory.ini" if ini is not None else "hosts.yaml"))


def test_kubesprays_become_true_is_read_and_allowed(tmp_path):
    p = profile(tmp_path, all_vars="    ansible_become: true")
    assert [(n.name, n.user, n.become, n.become_user) for n in p.nodes] == [
        ("node1", "ubuntu", True, "root"), ("node2", "ubuntu", True, "root")]
    assert all(n.privilege_problem() is None for n in p.nodes)


def test_unset_become_means_nodegate_uses_sudo_for_a_non_root_login(tmp_path):
    node = profile(tmp_path).node("node1")
    assert node.become is None and node.privilege_problem() is None


def test_become_false_with_a_non_root_user_is_refused_naming_host_and_fix(tmp_path):
    p = profile(tmp_path, all_vars="    ansible_become: true", node2=", ansible_become: false")
    assert p.node("node1").privilege_problem() is None
    problem, fix = p.node("node2").privilege_problem()
    assert "host node2 (ssh ubuntu@10.0.0.2) has ansible_become false" in problem and "need root" in problem
    assert "set ansible_become: true for node2" in fix


def test_become_false_as_root_needs_no_become(tmp_path):
    node = profile(tmp_path, node2=", ansible_become: false, ansible_user: root").node("node2")
    assert (node.user, node.become) == ("root", False) and node.privilege_problem() is None


def test_become_user_other_than_root_is_refused(tmp_path):
    node = profile(tmp_path, node1=", ansible_become: yes, ansible_become_user: deploy").node("node1")
    problem, fix = node.privilege_problem()
    assert "ansible_become_user 'deploy'" in problem and "run as root" in problem
    assert "remove ansible_become_user for node1" in fix


@pytest.mark.parametrize("spelling, value", [("True", True), ("yes", True), ("on", True), ("1", True),
                                             ("False", False), ("no", False), ("off", False), ("0", False)])
def test_ini_spellings_are_ansibles(tmp_path, spelling, value):
    ini = ("[all]\nnode1 ansible_host=10.0.0.1 ansible_user=ubuntu\n"
           f"[kube_control_plane]\nnode1\n[etcd]\nnode1\n[all:vars]\nansible_become={spelling}\n")
    assert profile(tmp_path, ini=ini).node("node1").become is value


def test_a_become_that_is_no_boolean_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as caught:
        profile(tmp_path, node1=", ansible_become: sometimes")
    assert "host node1: ansible_become is 'sometimes', not a boolean" in str(caught.value)
