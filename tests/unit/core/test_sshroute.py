"""The SSH route of a node as Ansible and ssh read `ansible_ssh_common_args` and Kubespray's
`bastion` group (nodegate.core.sshroute and the profile's inventory reading)."""
from __future__ import annotations

import pytest

from nodegate.core.errors import UsageError
from nodegate.core.sshroute import JumpHost, ProxyCommand, RouteError, parse_common_args, parse_proxy_jump

WHAT = "inventory: host node4"


def test_kubespray_bastion_proxycommand_is_a_jump_host():
    # roles/bastion-ssh-config's shape: ssh -F /dev/null … -W %h:%p -p PORT USER@BASTION -i KEY
    args = ('-o ControlMaster=auto -o ProxyCommand="ssh -F /dev/null -o StrictHostKeyChecking=no '
            '-o UserKnownHostsFile=/dev/null -W %h:%p -p 2222 ubuntu@10.0.0.9 -i /keys/id"')
    route = parse_common_args(args, WHAT)
    assert route.jump == JumpHost(host="10.0.0.9", port=2222, user="ubuntu", identity_file="/keys/id")
    assert route.proxy_command is None


def test_proxyjump_forms():
    assert parse_common_args("-J admin@bastion:2200", WHAT).jump == JumpHost("bastion", 2200, "admin")
    assert parse_common_args("-o ProxyJump=bastion", WHAT).jump == JumpHost("bastion")
    assert parse_common_args("-o 'ProxyJump jump.example.org'", WHAT).jump == JumpHost("jump.example.org")
    assert parse_proxy_jump("ops@[fd00::1]:22", WHAT) == JumpHost("fd00::1", 22, "ops")
    assert parse_proxy_jump("none", WHAT) is None


def test_first_of_proxyjump_and_proxycommand_wins_as_in_ssh():
    route = parse_common_args("-o ProxyCommand='nc -X connect -x proxy:3128 %h %p' -o ProxyJump=b", WHAT)
    assert route.proxy_command == ProxyCommand(("nc", "-X", "connect", "-x", "proxy:3128", "%h", "%p"))
    assert parse_common_args("-o ProxyJump=b -o ProxyCommand='nc %h %p'", WHAT).jump == JumpHost("b")


def test_other_proxycommand_kept_as_words_and_expanded_without_a_shell():
    route = parse_common_args("-o ProxyCommand='connect-proxy -S socks:1080 %h %p; rm -rf /'", WHAT)
    # `;` is only a word: nothing is ever handed to a shell
    assert route.proxy_command.expand("10.1.1.4", 22, "ubuntu") == (
        "connect-proxy", "-S", "socks:1080", "10.1.1.4", "22;", "rm", "-rf", "/")
    assert ProxyCommand(("x", "%r@%h:%p", "100%%")).expand("h", 2222, "u") == ("x", "u@h:2222", "100%")


def test_no_route_and_plain_options():
    assert parse_common_args(None, WHAT).direct
    assert parse_common_args("-o StrictHostKeyChecking=yes -o ConnectTimeout=5", WHAT).direct


@pytest.mark.parametrize("args, words", [
    ("-o ProxyJump=a,b", "more than one hop"),
    ("-o ProxyCommand='ssh -W %h:%p'", "names no host"),
    ('-o ProxyCommand="ssh -W %h:%p b', "cannot be split"),
    ("-J ops@bastion:99999", "invalid port"),
])
def test_refused_routes_name_the_problem(args, words):
    with pytest.raises(RouteError) as caught:
        parse_common_args(args, WHAT)
    assert words in str(caught.value.args[0]) and WHAT in str(caught.value.args[0])


def _profile(tmp_path, hosts_yaml: str):
    from nodegate.profile.load import load_profile

    checkout = tmp_path / "kubespray"
    inventory = checkout / "inventory" / "c"
    inventory.mkdir(parents=True)
    (inventory / "hosts.yaml").write_text(hosts_yaml)
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    (tmp_path / "cluster.toml").write_text(
        f'[kubespray]\npath = "{checkout}"\ninventory = "{inventory / "hosts.yaml"}"\n'
        f'[kubernetes]\nkubeconfig = "{tmp_path / "kubeconfig"}"\n[ssh]\nuser = "root"\n'
        '[expect]\nheld_packages = []\n')
    return load_profile(tmp_path / "cluster.toml")


def test_inventory_per_host_access_and_the_bastion_group(tmp_path):
    profile = _profile(tmp_path, """
all:
  hosts:
    bastion: {ansible_host: 10.0.0.9, ansible_user: jump, ansible_port: 2200, ansible_ssh_private_key_file: /k/jump}
    cp1: {ansible_host: 10.0.0.1, ansible_user: ubuntu, ansible_port: 2222, ansible_become_user: root,
          ansible_ssh_private_key_file: /k/node, ansible_become_password: s3cr3t-never-read}
    w1: {ansible_host: 10.0.0.2, ansible_ssh_common_args: "-o ProxyJump=ops@other:22"}
  children:
    bastion: {hosts: {bastion: }}
    kube_control_plane: {hosts: {cp1: }}
    kube_node: {hosts: {w1: }}
""")
    cp1, w1 = profile.node("cp1"), profile.node("w1")
    assert (cp1.user, cp1.port, str(cp1.identity_file), cp1.become_user) == ("ubuntu", 2222, "/k/node", "root")
    # the bastion group is the jump host of every node without a route of its own
    assert cp1.route.jump == JumpHost("10.0.0.9", 2200, "jump", "/k/jump")
    assert w1.route.jump == JumpHost("other", 22, "ops")
    assert "bastion" not in {n.name for n in profile.nodes}
    assert "s3cr3t-never-read" not in repr(profile)


def test_inventory_bad_route_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as caught:
        _profile(tmp_path, """
all:
  hosts:
    w1: {ansible_host: 10.0.0.2, ansible_ssh_common_args: "-J a@b,c@d"}
  children:
    kube_node: {hosts: {w1: }}
""")
    assert "w1" in str(caught.value) and "more than one hop" in str(caught.value)
