"""The pure logic of the toolchain and API endpoint preflights: Kubespray's Ansible range and
requirements, --list-tags output, and comparing the kubeconfig's server with a node's addresses.
The texts have the shapes of the files at Kubespray's tags (ansible_version.yml's play vars,
requirements.txt pins), written here, not copied."""
from __future__ import annotations

import pytest

from nodegate.core import ansible_toolchain as at
from nodegate.core.api_endpoint import canonical, compare, server_host_port

RANGE_PLAY = """---
- name: Check the Ansible version
  hosts: all
  gather_facts: false
  run_once: true
  vars:
    minimal_ansible_version: {low}
    maximal_ansible_version: {high}
  tags: always
  tasks:
    - name: check
      assert:
        that: ansible_version.string is version(minimal_ansible_version, ">=")
"""


@pytest.mark.parametrize("low, high, inside, outside", [
    ("2.11.0", "2.13.0", ["2.11.0", "2.12.5", "2.12.10"], ["2.10.17", "2.13.0", "2.14.18", "2.19.4"]),   # v2.21.0
    ("2.14.0", "2.15.0", ["2.14.18"], ["2.13.13", "2.15.0"]),                                           # v2.23
    ("2.16.4", "2.17.0", ["2.16.4", "2.16.20"], ["2.16.3", "2.17.0", "2.17.3"]),                        # v2.25-v2.28
])
def test_range_from_ansible_version_file(low, high, inside, outside):
    found = at.parse_ansible_version_file(RANGE_PLAY.format(low=low, high=high), "playbooks/ansible_version.yml")
    assert (found.minimal, found.maximal, found.source) == (low, high, "playbooks/ansible_version.yml")
    assert found.text == f"{low} <= ansible-core < {high}"
    assert found.pip_spec() == f"ansible-core>={low},<{high}"
    assert all(found.admits(v) for v in inside)
    assert not any(found.admits(v) for v in outside)


def test_version_compare_is_numeric_not_textual():
    found = at.AnsibleRange("2.9.0", "2.10.0", "x")
    assert found.admits("2.9.27") and not found.admits("2.10.0") and not found.admits("2.1.0")


@pytest.mark.parametrize("text, said", [
    ("- hosts: all\n  tasks: []\n", "names no minimal_ansible_version"),
    ("- hosts: all\n  vars:\n    minimal_ansible_version: '{{ x }}'\n    maximal_ansible_version: 2.13.0\n",
     "is a template"),
    ("- hosts: all\n  vars:\n    minimal_ansible_version: 2.13.0\n    maximal_ansible_version: 2.11.0\n",
     "is not below"),
    ("- [unclosed", "not valid YAML"),
])
def test_unreadable_range_says_why(text, said):
    with pytest.raises(at.ToolchainFileError, match=said):
        at.parse_ansible_version_file(text, "ansible_version.yml")


def test_range_file_is_found_in_either_place(tmp_path):
    with pytest.raises(at.ToolchainFileError, match="has no playbooks/ansible_version.yml or ansible_version.yml"):
        at.ansible_range(tmp_path)
    (tmp_path / "ansible_version.yml").write_text(RANGE_PLAY.format(low="2.11.0", high="2.13.0"))
    assert at.ansible_range(tmp_path).source == "ansible_version.yml"
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "ansible_version.yml").write_text(RANGE_PLAY.format(low="2.16.4", high="2.17.0"))
    assert at.ansible_range(tmp_path).minimal == "2.16.4"


def test_requirements_pins_and_what_is_missing():
    text = ("# the bundle and its core\nansible==5.7.1\nansible-core==2.12.5\njinja2==2.11.3  # templating\n"
            "ruamel.yaml==0.16.10\n--index-url https://example.invalid/simple\n"
            "pywin32==306 ; sys_platform == 'win32'\n")
    pins = at.parse_requirements(text)
    assert [p.key for p in pins] == ["ansible", "ansible-core", "jinja2", "ruamel-yaml"]
    problems = at.requirement_problems(pins, {"ansible-core": "2.12.5", "Jinja2": "3.1.6", "ruamel.yaml": "0.16.10"})
    assert problems == ["ansible is not installed (requirements.txt: ansible==5.7.1)",
                        "jinja2 3.1.6 is installed; requirements.txt says jinja2==2.11.3"]
    assert at.requirement_problems(pins, {"ansible": "5.7.1", "ansible_core": "2.12.5", "jinja2": "2.11.3",
                                          "ruamel-yaml": "0.16.10"}) == []


def test_requirements_follow_an_include_and_refuse_nonsense():
    pins = at.parse_requirements("-r requirements-2.12.txt\n", include={"requirements-2.12.txt": "netaddr==0.7.19\n"})
    assert [p.line for p in pins] == ["netaddr==0.7.19"]
    with pytest.raises(at.ToolchainFileError, match="includes other.txt"):
        at.parse_requirements("-r other.txt\n", include={})
    with pytest.raises(at.ToolchainFileError, match="line 2"):
        at.parse_requirements("ansible==9.13.0\nnot a == requirement ==\n")


def test_version_and_interpreter_from_the_tool():
    out_212 = ("ansible-playbook [core 2.12.5]\n  config file = None\n"
               "  python version = 3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0]\n")
    out_216 = ("ansible-playbook [core 2.16.20]\n"
               "  python version = 3.11.7 (main, May  9 2026) [GCC 12.2.0] (/opt/ks/venv/bin/python3.11)\n")
    assert at.core_version_from_output(out_212) == "2.12.5" and at.python_from_output(out_212) is None
    assert at.core_version_from_output(out_216) == "2.16.20"
    assert at.python_from_output(out_216) == "/opt/ks/venv/bin/python3.11"
    assert at.python_from_shebang("#!/opt/ks/venv/bin/python3") == "/opt/ks/venv/bin/python3"
    assert at.python_from_shebang("#!/usr/bin/env python3") is None


def test_tags_and_skips():
    listed = ("playbook: upgrade-cluster.yml\n\n  play #1 (all): Check\tTAGS: [always]\n      TASK TAGS: [always]\n"
              "  play #2 (k8s_cluster): Upgrade\tTAGS: []\n      TASK TAGS: [container-engine, multus, network, node]\n")
    assert at.tags_of(listed) == {"always", "container-engine", "multus", "network", "node"}
    assert at.skipped_tags(["x", "--skip-tags=multus,calico", "--skip-tags", "etcd"]) == ("multus", "calico", "etcd")
    assert at.skipped_tags(["ansible-playbook", "upgrade-cluster.yml"]) == ()


@pytest.mark.parametrize("server, host, port", [
    ("https://10.0.0.11:6443", "10.0.0.11", 6443),
    ("https://lb.example.com", "lb.example.com", 443),
    ("http://127.0.3.1:6443/", "127.0.3.1", 6443),
    ("https://[fd00::11]:6443", "fd00::11", 6443),
    ("10.0.0.11:6443", "10.0.0.11", 6443),
])
def test_server_host_port(server, host, port):
    assert server_host_port(server) == (host, port)


def test_server_that_is_no_url():
    with pytest.raises(ValueError, match="not an http"):
        server_host_port("ftp://10.0.0.1")
    with pytest.raises(ValueError, match="invalid port"):
        server_host_port("https://10.0.0.1:99999")


def test_compare_by_resolved_address():
    node1 = {"ansible_host": ("192.168.10.11",), "ip": ("10.0.0.11",), "access_ip": ("10.0.0.11",)}
    same = compare(server="https://cp1.example.com:6443", host="cp1.example.com", server_addresses=["10.0.0.11"],
                   node="node1", node_addresses=node1)
    assert same.on_node and same.shared == ("10.0.0.11",) and same.via == "ip 10.0.0.11, access_ip 10.0.0.11"
    mapped = compare(server="s", host="h", server_addresses=["::ffff:192.168.10.11"], node="node1",
                     node_addresses=node1)
    assert mapped.on_node and mapped.via == "ansible_host 192.168.10.11"
    other = compare(server="https://10.0.0.100:6443", host="10.0.0.100", server_addresses=["10.0.0.100"],
                    node="node1", node_addresses=node1)
    assert not other.on_node and other.via == ""
    assert canonical("CP1.Example.com.") == "cp1.example.com" and canonical("[fd00::1]") == "fd00::1"
