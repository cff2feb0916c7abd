"""nodegate.cluster.kubespray against the lab's Kubespray stand-in: real ansible-playbook over SSH to a real
node, its output parsed, known failures named with their fix, secrets kept out.

Uses the access tests' bare lab (2 nodes); node2 is reset to its seeded state before each run
that changes it and once more at the end, so the other access tests find it as seeded.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
from labkit import nodegate, ssh

from nodegate.cluster import kubespray
from nodegate.core.errors import UsageError
from nodegate.core.secrets import redact
from nodegate.lab.kubespray import DOCKER_TASKS, apply_force_fix, planted_secrets
from nodegate.profile.load import load_profile

PRISTINE_TASKS = Path(__file__).parents[2] / "nodegate/lab/kubespray_tree" / DOCKER_TASKS


def reset(lab, node: str = "node2") -> None:
    nodegate("lab", "reset", node, "--dir", str(lab.dir), timeout=120)


@pytest.fixture(scope="module")
def klab(bare_lab):
    yield bare_lab
    shutil.copyfile(PRISTINE_TASKS, bare_lab.dir / "kubespray" / DOCKER_TASKS)
    reset(bare_lab)


@pytest.fixture
def profile(klab):
    return load_profile(klab.dir / "cluster.toml")


@pytest.fixture
def fresh(klab):
    """node2 as seeded, and the checkout as Kubespray ships it (no force: true)."""
    reset(klab)
    shutil.copyfile(PRISTINE_TASKS, klab.dir / "kubespray" / DOCKER_TASKS)
    return klab


def on(lab, node: str, command: str) -> str:
    return ssh(lab, node, command, timeout=120).stdout


def packages(lab, node: str) -> dict[str, tuple[str, str]]:
    out = on(lab, node, "dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\\n' "
                        "containerd.io docker-ce docker-ce-cli")
    return {p[1]: (p[0], p[2]) for p in (line.split() for line in out.splitlines())}


def test_plan_names_the_exact_command_and_bad_input_is_refused_early(profile, klab):
    plan = kubespray.describe_upgrade(profile=profile, node="node2")
    assert plan.startswith(f"in {klab.dir / 'kubespray'}: ")
    assert f"{klab.dir / 'kubespray-venv/bin/ansible-playbook'} upgrade-cluster.yml -b -i " \
           f"{klab.dir / 'kubespray/inventory/mycluster/hosts.yaml'} --limit=node2 -e kube_version=v1.25.6 " \
           "-e '{\"upgrade_node_always_cordon\":false,\"upgrade_node_confirm\":false," \
           "\"upgrade_node_post_upgrade_confirm\":false,\"system_upgrade\":false}' --skip-tags=multus" in plan
    assert not any(secret in plan for secret in planted_secrets(klab.dir).values())
    with pytest.raises(UsageError, match="node9"):
        kubespray.run_playbook(profile=profile, node="node9")
    with pytest.raises(UsageError, match="not a Kubernetes version"):
        kubespray.run_playbook(profile=profile, node="node2", kube_version="1.25")
    with pytest.raises(UsageError, match="no cluster.yml2"):
        kubespray.run_playbook(profile=profile, node="node2", playbook="cluster.yml2")
    with pytest.raises(UsageError, match="not an executable"):
        kubespray.run_playbook(profile=profile, node="node2", ansible_playbook=klab.dir / "nothing-here")


def test_clean_run_succeeds_keeps_pins_and_leaks_no_secret(fresh, profile, caplog):
    caplog.set_level(logging.DEBUG, logger="nodegate.cluster.kubespray")
    lines: list[str] = []
    on(fresh, "node2", "apt-mark unhold docker-ce >/dev/null")
    result = kubespray.upgrade_node(profile=profile, node="node2", on_line=lines.append)
    assert result.succeeded and result.rc == 0
    assert result.recap_line.startswith("node2: ok=") and "failed=0" in result.recap_line
    assert set(result.recap) == {"node2"}
    assert result.failures == ()
    assert result.known_issue is None
    assert result.ansible_version == "2.12.5"   # Kubespray v2.21's pin, from the venv beside the checkout
    assert lines and "PLAY RECAP" in "\n".join(lines)
    assert packages(fresh, "node2") == {"containerd.io": ("hi", "1.6.4-1"),
                                        "docker-ce": ("hi", "5:20.10.20~3-0~ubuntu-focal"),
                                        "docker-ce-cli": ("hi", "5:20.10.20~3-0~ubuntu-focal")}
    for secret in planted_secrets(fresh.dir).values():
        assert secret not in result.output
        assert secret not in caplog.text
        assert redact(f"x {secret} y") == "x *** y"   # registered from the inventory before the run
    print(f"harness: {result.summary}")


def test_downgrade_failure_is_named_with_its_fix(fresh, profile):
    on(fresh, "node2", "apt-mark unhold containerd.io docker-ce docker-ce-cli >/dev/null && "
                       "DEBIAN_FRONTEND=noninteractive apt-get -qq -y install containerd.io docker-ce docker-ce-cli "
                       ">/dev/null")
    with pytest.raises(kubespray.KubesprayFailed) as caught:
        kubespray.upgrade_node(profile=profile, node="node2")
    error = caught.value
    assert error.issue is not None and error.issue.key == "kubespray-docker-downgrade"
    assert "kubespray #9114" in error.message
    assert "task [container-engine/docker : ensure docker packages are installed]" in error.message
    assert "E: Packages were downgraded and -y was used without --allow-downgrades." in error.message
    assert "force: true" in error.fix and "roles/container-engine/docker/tasks/main.yml" in error.fix
    assert error.result.node_recap.failed == 1 and not error.result.succeeded
    assert packages(fresh, "node2")["containerd.io"] == ("ii", "1.6.20-1")   # apt changed nothing
    # (the fix itself, force: true then a clean run, is proven in tests/lab/test_kubespray_standin.py)


def test_held_package_failure_is_named(fresh, profile):
    on(fresh, "node2", "apt-mark unhold containerd.io >/dev/null && DEBIAN_FRONTEND=noninteractive "
                       "apt-get -qq -y install containerd.io >/dev/null && apt-mark hold containerd.io >/dev/null")
    with pytest.raises(kubespray.KubesprayFailed) as caught:
        # the operator's other fix for kubespray #9114 (allow_downgrade) does not cover a held package
        apply_force_fix(fresh.dir / "kubespray", "allow_downgrade")
        kubespray.upgrade_node(profile=profile, node="node2")
    assert caught.value.issue.key == "kubespray-held-packages-changed"
    assert "apt-mark unhold" in caught.value.fix


def test_multus_limit_failure_is_named(fresh, profile):
    executable = fresh.dir / "kubespray-venv/bin/ansible-playbook"
    with pytest.raises(kubespray.KubesprayFailed) as caught:
        kubespray.upgrade_node(profile=profile, node="node2", skip_multus=False, ansible_playbook=executable)
    error = caught.value
    assert error.issue is not None and error.issue.key == "kubespray-multus-limit"
    assert "task [network_plugin/multus : Multus | Start resources]" in error.message
    assert "--skip-tags=multus" in error.fix
    # the wording of ansible-core < 2.13 (v2.21's pin); 2.19 says "object of type 'NoneType' has no …"
    assert "Failed to template loop_control.label: 'None' has no attribute 'item'" in error.message
    assert "--skip-tags=multus" not in error.result.command


def test_ansible_outside_the_checkout_range_stops_at_the_first_play(fresh, profile):
    """What the toolchain preflight prevents: v2.21.0's ansible_version.yml (imported first by
    upgrade-cluster.yml) stops a run with ansible-core 2.19 before any task reaches the node."""
    before = packages(fresh, "node2")
    with pytest.raises(kubespray.KubesprayFailed) as caught:
        kubespray.upgrade_node(profile=profile, node="node2",
                               ansible_playbook=Path(sys.executable).parent / "ansible-playbook")
    error = caught.value
    assert error.issue is None
    assert "Stop unless minimal_ansible_version <= ansible-core < maximal_ansible_version" in error.message
    assert "this checkout runs with 2.11.0 <= ansible-core < 2.13.0, not 2.19" in error.message
    assert "Gather minimal facts" not in error.result.output
    assert packages(fresh, "node2") == before


def test_unknown_failure_names_task_and_message(fresh, profile):
    with pytest.raises(kubespray.KubesprayFailed) as caught:
        kubespray.upgrade_node(profile=profile, node="node2", kube_version="v1.26.3")
    error = caught.value
    assert error.issue is None
    assert "task [kubernetes/node : kubelet | Stop if kube_version differs from the kubelet on the node]" in error.message
    assert "kube_version v1.26.3 differs from the kubelet running on node2 (v1.25.6)" in error.message
    assert "not a known Kubespray issue" in error.fix


def test_a_run_past_its_timeout_is_stopped_with_its_processes(klab, profile):
    with pytest.raises(kubespray.KubesprayTimeout) as caught:
        kubespray.upgrade_node(profile=profile, node="node2", timeout_s=1)  # Ansible alone starts in ~1.4 s
    result = caught.value.result
    assert result.timed_out and not result.succeeded
    inventory = str(profile.kubespray.inventory)
    left = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if inventory in cmdline and "ansible-playbook" in cmdline:
                left.append((proc.name, cmdline))
    assert left == []


def test_inventory_secrets_are_registered_from_every_vars_file(klab):
    count = kubespray.register_inventory_secrets(klab.dir / "kubespray/inventory/mycluster/hosts.yaml")
    assert count >= 2
    secrets = planted_secrets(klab.dir)
    text = f"become {secrets['ansible_become_password']} registry {secrets['registry_password']}"
    assert redact(text) == "become *** registry ***"
    assert os.stat(klab.dir / "kubespray/inventory/mycluster/hosts.yaml").st_mode & 0o077 == 0


def test_a_node_that_is_down_is_unreachable_not_a_playbook_bug(klab, profile):
    nodegate("lab", "power-off", "node2", "--dir", str(klab.dir), timeout=60)
    try:
        with pytest.raises(kubespray.KubesprayUnreachable) as caught:
            kubespray.upgrade_node(profile=profile, node="node2", timeout_s=120)
    finally:
        nodegate("lab", "power-on", "node2", "--dir", str(klab.dir), timeout=60)
    error = caught.value
    assert "could not reach node2" in error.message
    assert error.result.node_recap.unreachable == 1
    assert "answers SSH" in error.fix


def test_delegated_failures_of_old_ansible_are_parsed(tmp_path):
    """ansible-core < 2.13 prints a delegated task's host unrendered; the failure must still be found."""
    output = "\n".join([
        "TASK [network_plugin/multus : Multus | Start resources] ************************",
        "failed: [node4 -> {{ groups['kube_control_plane'][0] }}] (item=None) => "
        "{\"msg\": \"Failed to template loop_control.label: 'None' has no attribute 'item'\"}",
        "fatal: [node4 -> {{ groups['kube_control_plane'][0] }}]: FAILED! => {\"msg\": \"One or more items failed\"}",
        "",
        "PLAY RECAP *********************************************************************",
        "node4                      : ok=13   changed=0    unreachable=0    failed=1    skipped=4    rescued=0    "
        "ignored=0   ",
    ])
    result = kubespray._result(node="node4", argv=["ansible-playbook", "upgrade-cluster.yml"], cwd=tmp_path, rc=2,
                               output=output, duration=1.0, version="2.12.5", timed_out=False)
    assert [(f.host, f.task) for f in result.failures] == [
        ("node4", "network_plugin/multus : Multus | Start resources")] * 2
    assert result.known_issue.key == "kubespray-multus-limit"
    with pytest.raises(kubespray.KubesprayFailed, match="with a known issue") as caught:
        kubespray.check_result(result)
    assert "'None' has no attribute 'item'" in caught.value.message   # the real message, not the wrapper


PROMPT_PLAYBOOK = """\
---
# A confirmation prompt like the upgrade role's `pause` (upgrade_node_confirm), under a variable
# nodegate does not pin: with stdin closed ansible-core does not wait and the answer is empty.
- name: Confirm before changing the node
  hosts: k8s_cluster
  gather_facts: false
  tasks:
    - name: Confirm node upgrade
      pause:
        prompt: "Ready to upgrade node? (yes/no)"
      register: answer
    - name: Stop unless confirmed
      assert:
        that: answer.user_input | default('') == 'yes'
        quiet: true
"""


def test_a_prompt_that_appears_anyway_is_named(klab, tmp_path):
    """stdin is closed, so a prompt cannot hang the run: the failure names the prompt and the pins."""
    checkout = tmp_path / "kubespray"
    shutil.copytree(klab.dir / "kubespray", checkout, symlinks=True)
    (checkout / "prompt.yml").write_text(PROMPT_PLAYBOOK)
    toml = tmp_path / "cluster.toml"
    toml.write_text((klab.dir / "cluster.toml").read_text().replace(str(klab.dir / "kubespray"), str(checkout)))
    profile = load_profile(toml)
    result = kubespray.run_playbook(profile=profile, node="node2", playbook="prompt.yml", timeout_s=120,
                                    ansible_playbook=klab.dir / "kubespray-venv" / "bin" / "ansible-playbook")
    assert "Not waiting for response to prompt" in result.output, result.output[-2000:]
    with pytest.raises(kubespray.KubesprayFailed) as err:
        kubespray.check_result(result)
    assert "stopped at a prompt" in err.value.message and "stdin is closed" in err.value.message
    assert "upgrade_node_confirm=false" in err.value.fix
