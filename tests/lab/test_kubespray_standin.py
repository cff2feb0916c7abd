"""The lab's Kubespray v2.21.0 stand-in, run as an operator runs it: real ansible-playbook from
DIR/kubespray over SSH to real lab nodes, with real apt underneath.

One small lab (2 nodes, nodes + apt repository only) for the module; node2 (the worker) is the
node under test and is reset to its seeded state before each test that changes it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from labkit import net_beside

from nodegate.lab.config import LabConfig
from nodegate.lab.kubespray import DOCKER_TASKS, KUBELET_VERSION_FILE, apply_force_fix, planted_secrets
from nodegate.profile.load import load_profile

NET = net_beside("kubespray-standin")
DOWNGRADE = "E: Packages were downgraded and -y was used without --allow-downgrades."
HELD = "E: Held packages were changed and -y was used without --allow-change-held-packages."
MULTUS = "Failed to template loop_control.label: 'None' has no attribute 'item'"
PACKAGES = ("containerd.io", "docker-ce", "docker-ce-cli")


@pytest.fixture(scope="module")
def klab(tmp_path_factory, cli):
    lab_dir = tmp_path_factory.mktemp("kubespray") / "lab"
    cli("lab", "up", "--dir", str(lab_dir), "--nodes", "2", "--net", str(NET), "--bare")
    try:
        yield LabConfig.load(lab_dir)
    finally:
        cli("lab", "down", "--dir", str(lab_dir), check=False)


@pytest.fixture
def on(klab, node_ssh):
    def run(node: str, command: str, **kwargs) -> subprocess.CompletedProcess:
        return node_ssh(klab, node, command, **kwargs)
    return run


@pytest.fixture
def fresh_node2(klab, cli):
    """node2 back in its seeded state (focal, packages held at Kubespray's pins) and a pristine checkout."""
    cli("lab", "reset", "node2", "--dir", str(klab.dir))
    checkout = klab.dir / "kubespray"
    pristine = Path(__file__).parents[2] / "nodegate/lab/kubespray_tree" / DOCKER_TASKS
    shutil.copyfile(pristine, checkout / DOCKER_TASKS)
    return "node2"


def playbook(config: LabConfig, *args: str, playbook: str = "upgrade-cluster.yml",
             timeout: float = 300) -> subprocess.CompletedProcess:
    """ansible-playbook from the checkout, as Kubespray's docs run it (its venv beside the checkout)."""
    checkout = config.dir / "kubespray"
    venv = config.dir / "kubespray-venv" / "bin" / "ansible-playbook"
    executable = venv if venv.exists() else Path(shutil.which("ansible-playbook") or "ansible-playbook")
    argv = [str(executable), playbook, "-b", "-i", "inventory/mycluster/hosts.yaml", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_CALLBACK_FORMAT_PRETTY="false")
    started = time.monotonic()
    result = subprocess.run(argv, cwd=checkout, env=env, capture_output=True, text=True, timeout=timeout)
    result.seconds = time.monotonic() - started
    result.output = result.stdout + result.stderr
    return result


def recap(output: str, node: str) -> dict[str, int]:
    line = re.search(rf"^{node}\s+:\s+(.*)$", output.split("PLAY RECAP")[-1], re.M)
    assert line, f"no recap line for {node}:\n{output[-3000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.group(1))}


def dpkg_state(on, node: str) -> dict[str, tuple[str, str]]:
    out = on(node, "dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\\n' " + " ".join(PACKAGES)).stdout
    return {parts[1]: (parts[0], parts[2]) for parts in (line.split() for line in out.splitlines())}


def test_checkout_looks_like_kubespray_2_21_and_matches_the_lab(klab):
    checkout = klab.dir / "kubespray"
    assert not (checkout / "galaxy.yml").exists()   # v2.19-v2.21.0 have none: the version is the clone's tag
    for rel in ("cluster.yml", "upgrade-cluster.yml", "ansible.cfg", "ansible_version.yml", "facts.yml",
                "requirements.txt", DOCKER_TASKS,
                "inventory/mycluster/group_vars/k8s_cluster/k8s-cluster.yml",
                "inventory/mycluster/group_vars/all/docker.yml", "inventory/mycluster/group_vars/all/containerd.yml"):
        assert (checkout / rel).is_file(), rel
    hosts = yaml.safe_load((checkout / "inventory/mycluster/hosts.yaml").read_text())["all"]
    assert {name: spec["ansible_host"] for name, spec in hosts["hosts"].items()} == {
        "node1": f"127.{NET}.1.1", "node2": f"127.{NET}.1.2"}
    assert set(hosts["children"]["kube_control_plane"]["hosts"]) == {"node1"}
    assert set(hosts["children"]["kube_node"]["hosts"]) == {"node2"}
    assert set(hosts["children"]["etcd"]["hosts"]) == {"node1"}
    assert set(hosts["children"]["k8s_cluster"]["children"]) == {"kube_control_plane", "kube_node"}
    k8s = yaml.safe_load((checkout / "inventory/mycluster/group_vars/k8s_cluster/k8s-cluster.yml").read_text())
    assert k8s["kube_version"] == "v1.25.6"
    # The harness reads it like any operator's checkout: version, kube_version, package pins.
    profile = load_profile(klab.dir / "cluster.toml")
    assert profile.kubespray.version == "v2.21.0"
    assert profile.kubespray.version_source == "git: tag v2.21.0 at HEAD"
    assert profile.kube_version == "v1.25.6"
    assert profile.expect.version_for("containerd.io", "jammy") == "1.6.4-1"
    assert profile.expect.version_for("docker-ce", "jammy") == "5:20.10.20~3-0~ubuntu-jammy"
    assert profile.expect.version_for("docker-ce-cli", "focal") == "5:20.10.20~3-0~ubuntu-focal"
    # Planted secrets: present in the inventory, random, and never in the profile the harness holds.
    secrets = planted_secrets(klab.dir)
    assert all(len(value) >= 16 for value in secrets.values())
    assert not any(value in repr(profile) for value in secrets.values())
    assert oct((checkout / "inventory/mycluster/hosts.yaml").stat().st_mode & 0o777) == "0o600"


def test_kubespray_venv_has_the_ansible_core_v2_21_pins(klab):
    venv = klab.dir / "kubespray-venv" / "bin" / "ansible-playbook"
    assert venv.exists(), "lab up did not link Kubespray's venv (see the lab log for the pip error)"
    out = subprocess.run([str(venv), "--version"], capture_output=True, text=True, check=True).stdout
    assert "[core 2.12.5]" in out


def test_clean_limited_run_pins_and_holds_the_packages(klab, fresh_node2, on):
    assert on("node2", f"cat {KUBELET_VERSION_FILE}").stdout.strip() == "v1.25.6"
    on("node2", "apt-mark unhold containerd.io >/dev/null")   # Kubespray holds it again
    run = playbook(klab, "--limit=node2", "-e", "kube_version=v1.25.6", "--skip-tags=multus")
    assert run.returncode == 0, run.output[-3000:]
    counts = recap(run.output, "node2")
    assert counts["failed"] == 0 and counts["unreachable"] == 0
    assert "node1" not in run.output.split("PLAY RECAP")[-1]
    assert dpkg_state(on, "node2") == {
        "containerd.io": ("hi", "1.6.4-1"),
        "docker-ce": ("hi", "5:20.10.20~3-0~ubuntu-focal"),
        "docker-ce-cli": ("hi", "5:20.10.20~3-0~ubuntu-focal"),
    }
    # The seeded focal source was found and kept: nothing was added beside it.
    assert on("node2", "ls /etc/apt/sources.list.d").stdout.split() == ["docker.list"]
    print(f"clean limited upgrade-cluster.yml run: {run.seconds:.1f} s")


def test_upgraded_packages_reproduce_the_downgrade_failure_and_force_fixes_it(klab, fresh_node2, on):
    on("node2", "apt-mark unhold containerd.io docker-ce docker-ce-cli >/dev/null && "
                "DEBIAN_FRONTEND=noninteractive apt-get -qq -y install containerd.io docker-ce docker-ce-cli >/dev/null")
    assert dpkg_state(on, "node2")["containerd.io"] == ("ii", "1.6.20-1")
    run = playbook(klab, "--limit=node2", "-e", "kube_version=v1.25.6", "--skip-tags=multus")
    assert run.returncode != 0
    assert DOWNGRADE in run.output
    assert "TASK [container-engine/docker : ensure docker packages are installed]" in run.output
    assert recap(run.output, "node2")["failed"] == 1
    assert dpkg_state(on, "node2")["containerd.io"] == ("ii", "1.6.20-1")   # apt changed nothing
    # The operator's fix: `force: true` on the docker package task.
    assert apply_force_fix(klab.dir / "kubespray")
    assert "    force: true\n" in (klab.dir / "kubespray" / DOCKER_TASKS).read_text()
    run = playbook(klab, "--limit=node2", "-e", "kube_version=v1.25.6", "--skip-tags=multus")
    assert run.returncode == 0, run.output[-3000:]
    assert dpkg_state(on, "node2") == {
        "containerd.io": ("hi", "1.6.4-1"),
        "docker-ce": ("hi", "5:20.10.20~3-0~ubuntu-focal"),
        "docker-ce-cli": ("hi", "5:20.10.20~3-0~ubuntu-focal"),
    }


def test_a_still_held_package_reproduces_held_packages_changed(klab, fresh_node2, on):
    on("node2", "apt-mark unhold containerd.io >/dev/null && DEBIAN_FRONTEND=noninteractive "
                "apt-get -qq -y install containerd.io >/dev/null && apt-mark hold containerd.io >/dev/null")
    run = playbook(klab, "--limit=node2", "-e", "kube_version=v1.25.6", "-e", "nodegate_force_packages=true",
                   "--skip-tags=multus")
    assert run.returncode != 0
    assert HELD in run.output
    assert dpkg_state(on, "node2")["containerd.io"] == ("hi", "1.6.20-1")


def test_multus_fails_with_limit_unless_skipped_and_passes_on_the_whole_cluster(klab, fresh_node2, on):
    run = playbook(klab, "--limit=node2", "-e", "kube_version=v1.25.6")
    assert run.returncode != 0
    assert MULTUS in run.output or "object of type 'NoneType' has no attribute 'item'" in run.output
    venv = klab.dir / "kubespray-venv"
    if venv.exists():  # the wording of ansible-core < 2.19, which Kubespray v2.21 pins
        assert MULTUS in run.output
    assert "TASK [network_plugin/multus : Multus | Start resources]" in run.output
    # The same roles over every node register a result everywhere, so the bug needs --limit.
    run = playbook(klab, "-e", "kube_version=v1.25.6")
    assert run.returncode == 0, run.output[-3000:]
    assert recap(run.output, "node1")["failed"] == 0 and recap(run.output, "node2")["failed"] == 0


def test_after_a_release_upgrade_the_jammy_source_and_builds_come_back(klab, fresh_node2, on, cli, poll):
    """The seed's path: unhold, dist-upgrade, do-release-upgrade to jammy, reboot, then Kubespray
    with `force: true` re-adds the docker source for jammy (signed-by) and installs the jammy builds."""
    on("node2", "apt-mark unhold containerd.io docker-ce docker-ce-cli >/dev/null && apt-get -qq update 2>/dev/null; "
                "DEBIAN_FRONTEND=noninteractive apt-get -qq -y -o Dpkg::Options::=--force-confold dist-upgrade "
                ">/dev/null && do-release-upgrade -f DistUpgradeViewNonInteractive >/dev/null", timeout=120)
    on("node2", "reboot", check=False)
    time.sleep(1)  # the first look once the reboot has begun

    def on_jammy() -> bool:
        state = on("node2", ". /etc/os-release && echo $VERSION_CODENAME", check=False, multiplex=False)
        return state.returncode == 0 and state.stdout.strip() == "jammy"
    poll(on_jammy, timeout=60, interval=1, what="node2 back on jammy")
    assert "# disabled on upgrade to jammy" in on("node2", "cat /etc/apt/sources.list.d/docker.list").stdout
    apply_force_fix(klab.dir / "kubespray")
    run = playbook(klab, "--limit=node2", "-e", "kube_version=v1.25.6", "--skip-tags=multus")
    assert run.returncode == 0, run.output[-3000:]
    assert dpkg_state(on, "node2") == {
        "containerd.io": ("hi", "1.6.4-1"),
        "docker-ce": ("hi", "5:20.10.20~3-0~ubuntu-jammy"),
        "docker-ce-cli": ("hi", "5:20.10.20~3-0~ubuntu-jammy"),
    }
    sources = on("node2", "grep -h '^deb ' /etc/apt/sources.list.d/*.list").stdout
    assert f"deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] http://127.{NET}.2.1/linux/ubuntu jammy stable" \
        in sources
    update = on("node2", "apt-get update 2>&1")
    assert "jammy/InRelease" not in "".join(line for line in update.stdout.splitlines() if line.startswith(("W:", "E:")))
