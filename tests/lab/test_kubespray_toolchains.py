"""Each Kubespray release the lab lays out comes with a venv whose ansible-core is inside that
release's ansible_version.yml range, and the harness's toolchain preflight (nodegate.cluster.toolchain)
passes on it with real ansible-playbook runs (--version, --syntax-check, --list-tags). Then each
way a toolchain goes wrong, made for real in a v2.21.0 checkout, is one failing finding naming the
cause and the fix. No lab runs: the checks only read and parse.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nodegate.cluster import toolchain
from nodegate.lab.config import LabConfig
from nodegate.lab.kubespray import write_checkout
from nodegate.lab.kubespray_releases import STAND_INS
from nodegate.lab.profile_files import write_profile_files
from nodegate.profile.load import load_profile


def _lab(where: Path, tag: str) -> LabConfig:
    config = LabConfig.new(where, 4, kubespray_version=tag)
    config.save()
    write_profile_files(config)
    write_checkout(config)     # with the release's venv linked beside the checkout
    return config


@pytest.mark.parametrize("tag", list(STAND_INS))
def test_each_release_runs_with_an_ansible_inside_its_range(tmp_path, tag):
    config = _lab(tmp_path, tag)
    release = STAND_INS[tag]
    profile = load_profile(config.dir / "cluster.toml")
    tool = toolchain.ansible_playbook(profile)
    assert tool.path == config.dir / "kubespray-venv" / "bin" / "ansible-playbook"
    assert tool.core_version == release.lab_core
    assert tool.chosen_by == "the checkout's virtualenv (../kubespray-venv)"
    findings = [toolchain.ansible_range(profile, tool), toolchain.requirements(profile, tool),
                toolchain.syntax(profile, "node4", tool), toolchain.skipped_tags(profile, "node4", tool)]
    assert [f.name for f in findings if not f.ok] == [], [f.message for f in findings if not f.ok]
    low, high = release.ansible_core
    assert f"is inside {low} <= ansible-core < {high}" in findings[0].message
    skips = "the skipped tags (multus) exist" if release.multus_limit_bug else "no tag is skipped"
    assert skips in findings[3].message
    # the stand-in's requirements.txt says which line the release really has
    requirements = (config.dir / "kubespray" / "requirements.txt").read_text()
    assert f"ansible-core=={release.lab_core}" in requirements and release.ansible_pin in requirements


@pytest.fixture(scope="module")
def v221(tmp_path_factory):
    return _lab(tmp_path_factory.mktemp("tc221"), "v2.21.0")


def test_an_ansible_outside_the_range_is_named_with_the_fix(v221, tmp_path):
    harness = Path(sys.executable).parent / "ansible-playbook"
    profile_path = tmp_path / "cluster.toml"
    profile_path.write_text((v221.dir / "cluster.toml").read_text().replace(
        "[kubespray]\n", f'[kubespray]\nansible_playbook = "{harness}"\n', 1))
    profile = load_profile(profile_path)
    tool = toolchain.ansible_playbook(profile)
    assert tool.path == harness and tool.chosen_by == "[kubespray] ansible_playbook in the profile"
    found = toolchain.ansible_range(profile, tool)
    assert not found.ok
    assert f"ansible-core {tool.core_version} of {harness}" in found.message
    assert "outside the range Kubespray v2.21.0 accepts: 2.11.0 <= ansible-core < 2.13.0 (ansible_version.yml)" \
        in found.message
    assert "ansible-core>=2.11.0,<2.13.0" in found.fix and "-m pip install -r" in found.fix
    assert "ansible-core==2.12.5" in toolchain.requirements(profile, tool).message   # 2.19 is not the pin
    assert "(ansible-core 2.12.5; the checkout's virtualenv" in toolchain.describe(
        load_profile(v221.dir / "cluster.toml"), "node4")


def test_a_missing_requirement_is_named(v221):
    checkout = v221.dir / "kubespray"
    saved = (checkout / "requirements.txt").read_text()
    try:
        (checkout / "requirements.txt").write_text(saved + "netaddr==0.7.19\n")
        profile = load_profile(v221.dir / "cluster.toml")
        found = toolchain.requirements(profile, toolchain.ansible_playbook(profile))
    finally:
        (checkout / "requirements.txt").write_text(saved)
    assert not found.ok
    assert "netaddr is not installed (requirements.txt: netaddr==0.7.19)" in found.message
    assert f"-m pip install -r {checkout / 'requirements.txt'}" in found.fix


def test_a_playbook_ansible_refuses_is_named(v221):
    role = v221.dir / "kubespray" / "roles" / "kubernetes" / "node" / "tasks" / "main.yml"
    saved = role.read_text()
    try:
        role.write_text(saved + "- name: broken\n  no_such_module_anywhere:\n    x: 1\n")
        profile = load_profile(v221.dir / "cluster.toml")
        found = toolchain.syntax(profile, "node4", toolchain.ansible_playbook(profile))
    finally:
        role.write_text(saved)
    assert not found.ok
    assert "upgrade-cluster.yml --syntax-check with the inventory failed" in found.message
    assert "no_such_module_anywhere" in found.message


def test_a_skipped_tag_the_checkout_lacks_is_named(v221):
    meta = v221.dir / "kubespray" / "roles" / "network_plugin" / "meta" / "main.yml"
    saved = meta.read_text()
    try:
        meta.write_text(saved.replace("      - multus\n", "      - multus-cni\n"))
        profile = load_profile(v221.dir / "cluster.toml")
        found = toolchain.skipped_tags(profile, "node4", toolchain.ansible_playbook(profile))
    finally:
        meta.write_text(saved)
    assert not found.ok
    assert "upgrade-cluster.yml has no tag multus, which nodegate skips (--skip-tags=multus" in found.message
    assert "multus-cni" in found.details[0]


def test_one_run_serves_every_node_whose_command_differs_only_in_the_limit(v221):
    profile = load_profile(v221.dir / "cluster.toml")
    tool = toolchain.ansible_playbook(profile)
    fleet = toolchain.FleetRuns(profile, ["node1", "node2", "node3", "node4"])
    found = [toolchain.syntax(profile, n, tool, fleet) for n in ("node3", "node4")]
    found += [toolchain.skipped_tags(profile, n, tool, fleet) for n in ("node3", "node4")]
    assert [f.ok for f in found] == [True] * 4, [f.message for f in found]
    assert all("--limit=node1,node2,node3,node4" in f.evidence for f in found)
    assert "the skipped tags (multus) exist" in found[3].message
    assert fleet.commands_run == 2          # one --syntax-check, one --list-tags, for four nodes


def test_the_shared_run_refuses_a_limit_name_ansible_does_not_know(v221):
    """ANSIBLE_HOST_PATTERN_MISMATCH=error: a name of the shared --limit that matches no host fails
    the run (Ansible's default only warns, and the other names would still leave hosts)."""
    profile = load_profile(v221.dir / "cluster.toml")
    tool = toolchain.ansible_playbook(profile)
    fleet = toolchain.FleetRuns(profile, ["node3", "node4"])
    argv = [w if not w.startswith("--limit=") else "--limit=node4,no-such-node"
            for w in toolchain._upgrade_argv(profile, "node4", tool)] + ["--syntax-check"]
    done = fleet._once(argv)
    assert done.returncode != 0 and "no-such-node" in done.stdout + done.stderr


def test_a_failed_shared_run_is_reported_from_the_nodes_own_command(v221):
    role = v221.dir / "kubespray" / "roles" / "kubernetes" / "node" / "tasks" / "main.yml"
    saved = role.read_text()
    try:
        role.write_text(saved + "- name: broken\n  no_such_module_anywhere:\n    x: 1\n")
        profile = load_profile(v221.dir / "cluster.toml")
        fleet = toolchain.FleetRuns(profile, ["node3", "node4"])
        found = toolchain.syntax(profile, "node4", toolchain.ansible_playbook(profile), fleet)
    finally:
        role.write_text(saved)
    assert not found.ok and "no_such_module_anywhere" in found.message
    assert "--limit=node4 " in found.evidence and "--limit=node3,node4" not in found.evidence
