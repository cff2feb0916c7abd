"""Every lab node starts as the seed's worker did, checked with the node's real apt and dpkg:
Ubuntu 20.04.5 LTS, the docker packages held at Kubespray v2.21's versions, the Docker key in
the legacy keyring (apt's real warning), an ordinary package with a pending update; and the
node-side stand-ins (modprobe/lsmod, reboot) behave like Ubuntu's."""
from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from nodegate.lab import aptrepo, seed
from nodegate.lab.node import NodeRuntime

pytestmark = pytest.mark.lab

FOCAL_OS_RELEASE = """\
NAME="Ubuntu"
VERSION="20.04.5 LTS (Focal Fossa)"
ID=ubuntu
ID_LIKE=debian
PRETTY_NAME="Ubuntu 20.04.5 LTS"
VERSION_ID="20.04"
HOME_URL="https://www.ubuntu.com/"
SUPPORT_URL="https://help.ubuntu.com/"
BUG_REPORT_URL="https://bugs.launchpad.net/ubuntu/"
PRIVACY_POLICY_URL="https://www.ubuntu.com/legal/terms-and-policies/privacy-policy"
VERSION_CODENAME=focal
UBUNTU_CODENAME=focal
"""
FOCAL_LSB_RELEASE = """\
DISTRIB_ID=Ubuntu
DISTRIB_RELEASE=20.04
DISTRIB_CODENAME=focal
DISTRIB_DESCRIPTION="Ubuntu 20.04.5 LTS"
"""
HELD = [
    ("hi", "containerd.io", "1.6.4-1", "amd64"),
    ("hi", "docker-ce", "5:20.10.20~3-0~ubuntu-focal", "amd64"),
    ("hi", "docker-ce-cli", "5:20.10.20~3-0~ubuntu-focal", "amd64"),
]


def legacy_warning(lab) -> str:
    return (f"W: http://{lab.repo_address}/linux/ubuntu/dists/focal/InRelease: Key is stored in legacy "
            "trusted.gpg keyring (/etc/apt/trusted.gpg), see the DEPRECATION section in apt-key(8) for details.")


def test_every_node_is_ubuntu_focal(lab, lab_ssh):
    for node in lab.nodes:
        out = lab_ssh(node.name, "cat /etc/os-release; echo ---; cat /etc/lsb-release; echo ---; "
                                 "lsb_release -ds; readlink /etc/os-release").stdout
        os_release, lsb_release, rest = out.split("---\n")
        assert os_release == FOCAL_OS_RELEASE, node.name
        assert lsb_release == FOCAL_LSB_RELEASE, node.name
        # Ubuntu's layout: /etc/os-release is a link to /usr/lib/os-release.
        assert rest.splitlines() == ["Ubuntu 20.04.5 LTS", "../usr/lib/os-release"], node.name


def test_docker_packages_installed_and_held(lab, lab_ssh):
    node = lab.nodes[0].name
    lines = lab_ssh(node, "dpkg -l | grep '^h'").stdout.splitlines()
    assert [tuple(line.split()[:4]) for line in lines] == HELD
    assert all(line.startswith("hi  ") for line in lines)
    assert lab_ssh(node, "apt-mark showhold").stdout.split() == ["containerd.io", "docker-ce", "docker-ce-cli"]
    # Installed from the lab's repository by apt, so apt knows where they came from.
    policy = lab_ssh(node, "LC_ALL=C apt-cache policy docker-ce").stdout
    assert f"*** 5:20.10.20~3-0~ubuntu-focal 500\n        500 http://{lab.repo_address}/linux/ubuntu focal/stable amd64 Packages" in policy
    assert "Candidate: 5:20.10.24~3-0~ubuntu-focal" in policy
    assert lab_ssh(node, "docker --version; containerd --version").stdout.splitlines() == [
        "Docker version 20.10.20, build lab", "containerd containerd.io 1.6.4 lab"]


def test_docker_source_and_legacy_key_warning(lab, lab_ssh):
    node = lab.nodes[1].name
    assert lab_ssh(node, "cat /etc/apt/sources.list.d/docker.list").stdout == \
        f"deb [arch=amd64] http://{lab.repo_address}/linux/ubuntu focal stable\n"
    assert lab_ssh(node, "grep ^deb /etc/apt/sources.list").stdout.splitlines() == [
        f"deb http://{lab.repo_address}/ubuntu {suite} main restricted universe multiverse"
        for suite in ("focal", "focal-updates", "focal-security")]
    update = lab_ssh(node, "apt-get update")
    assert update.returncode == 0
    assert update.stderr.splitlines() == [legacy_warning(lab)]
    assert f"http://{lab.repo_address}/linux/ubuntu focal InRelease" in update.stdout
    # `apt update` words it the same, and so does every further run: the key is still there.
    again = lab_ssh(node, "apt update 2>&1 >/dev/null | grep '^W:'").stdout.splitlines()
    assert again == [legacy_warning(lab)]


def test_lab_utils_has_a_pending_update_and_docker_is_kept_back(lab, lab_ssh):
    node = lab.nodes[1].name
    upgradable = lab_ssh(node, "apt list --upgradable 2>/dev/null").stdout.splitlines()
    assert "lab-utils/focal-updates 1.1 all [upgradable from: 1.0]" in upgradable
    assert "containerd.io/focal 1.6.20-1 amd64 [upgradable from: 1.6.4-1]" in upgradable
    simulated = lab_ssh(node, "LC_ALL=C apt-get -s dist-upgrade").stdout
    assert ("The following packages have been kept back:\n"
            "  containerd.io docker-ce docker-ce-cli\n") in simulated
    assert "1 upgraded, 0 newly installed, 0 to remove and 3 not upgraded." in simulated
    assert "Inst lab-utils [1.0] (1.1 Ubuntu:20.04/focal-updates [all])" in simulated


def test_repository_is_signed_and_laid_out_like_dockers(lab, tmp_path):
    with urllib.request.urlopen(f"{lab.repo_url}/linux/ubuntu/dists/focal/InRelease", timeout=5) as resp:
        inrelease = resp.read()
    with urllib.request.urlopen(f"{lab.repo_url}/linux/ubuntu/gpg", timeout=5) as resp:
        armored = resp.read()
    assert armored.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    (tmp_path / "InRelease").write_bytes(inrelease)
    keyring = tmp_path / "docker.gpg"
    subprocess.run(["gpg", "--batch", "--dearmor", "-o", str(keyring)], input=armored, check=True)
    check = subprocess.run(["gpgv", "--keyring", str(keyring), str(tmp_path / "InRelease")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "Origin: Docker" in inrelease.decode() and "Components: stable" in inrelease.decode()
    # Newer builds of the three packages in every suite, each suite its own pool.
    for suite in aptrepo.DOCKER_SUITES:
        with urllib.request.urlopen(f"{lab.repo_url}/linux/ubuntu/dists/{suite}/stable/binary-amd64/Packages",
                                    timeout=5) as resp:
            packages = resp.read().decode()
        assert f"Version: 5:20.10.24~3-0~ubuntu-{suite}" in packages
        assert f"Filename: dists/{suite}/pool/stable/amd64/containerd.io_1.6.20-1_amd64.deb" in packages


def test_modules_load_at_boot_and_modprobe_changes_only_this_boot(lab, lab_ssh, node_ssh, poll, cli):
    node = lab.nodes[2].name
    try:
        # Kubespray's br_netfilter file makes it (and what it needs) loaded at boot.
        lsmod = lab_ssh(node, "lsmod").stdout.splitlines()
        assert lsmod[0] == "Module                  Size  Used by"
        assert lsmod[1].split()[0] == "br_netfilter" and lsmod[1].split()[2] == "0"
        assert any(line.split()[0] == "bridge" and line.split()[-1] == "br_netfilter" for line in lsmod)
        out = lab_ssh(node, "modprobe rbd && lsmod | awk 'NR>1 {print $1}'; "
                            "modprobe -r overlay; echo rc=$?; modprobe nodegate_missing; echo rc=$?; "
                            "modprobe -r libceph; echo rc=$?; "
                            "echo overlay > /etc/modules-load.d/containerd.conf", check=False)
        loaded, _, _ = out.stdout.partition("rc=")
        assert {"rbd", "libceph", "br_netfilter"} <= set(loaded.split())
        assert out.stdout.count("rc=1") == 3
        assert out.stderr.splitlines() == [
            "modprobe: FATAL: Module overlay is not in kernel.",
            f"modprobe: FATAL: Module nodegate_missing not found in directory /lib/modules/"
            f"{lab_ssh(node, 'uname -r').stdout.strip()}",
            "modprobe: FATAL: Module libceph is in use.",
        ]
        boot_id = NodeRuntime(lab, lab.node(node)).read_state().boot_id
        lab_ssh(node, "shutdown -r now")
        poll(lambda: node_ssh(lab, node, "cat /proc/sys/kernel/random/boot_id", check=False, timeout=10,
                              multiplex=False).stdout.strip() not in ("", boot_id),
             timeout=lab.boot_delay_s + 20, interval=0.2, what=f"{node} rebooted")
        after = set(lab_ssh(node, "lsmod | awk 'NR>1 {print $1}'").stdout.split())
        assert "overlay" in after and "br_netfilter" in after   # from modules-load.d
        assert "rbd" not in after and "libceph" not in after      # modprobe lasts one boot
    finally:
        cli("lab", "reset", node, "--dir", str(lab.dir))


def test_a_lab_on_another_net_gets_its_own_repository_address(make_lab, node_ssh):
    other = make_lab.up(nodes=1)
    assert other.net != seed.BUILD_NET
    update = node_ssh(other, "node1", "apt-get update; cat /etc/apt/sources.list.d/docker.list; "
                                      "apt list --upgradable 2>/dev/null | grep lab-utils")
    assert update.stderr.splitlines() == [legacy_warning(other)]
    # "Hit": the lists in the layer were moved to this address, so nothing needed fetching.
    assert re.search(rf"^Hit:\d+ http://{re.escape(other.repo_address)}/linux/ubuntu focal InRelease$",
                     update.stdout, flags=re.MULTILINE), update.stdout
    assert f"deb [arch=amd64] http://{other.repo_address}/linux/ubuntu focal stable" in update.stdout
    assert "lab-utils/focal-updates 1.1 all [upgradable from: 1.0]" in update.stdout


def test_apt_refuses_to_change_held_or_downgrade(lab, lab_ssh, cli):
    """The two apt errors a Kubespray re-run meets on such a node, from the node's own apt."""
    node = lab.nodes[-1].name
    try:
        held = lab_ssh(node, "apt-get install -y containerd.io=1.6.20-1", check=False)
        assert held.returncode == 100
        assert held.stderr.splitlines()[-1] == \
            "E: Held packages were changed and -y was used without --allow-change-held-packages."
        assert lab_ssh(node, "dpkg-query -W -f='${Version}' containerd.io").stdout == "1.6.4-1"
        lab_ssh(node, "apt-mark unhold containerd.io >/dev/null && "
                      "DEBIAN_FRONTEND=noninteractive apt-get install -y containerd.io=1.6.20-1 >/dev/null")
        down = lab_ssh(node, "apt-get install -y containerd.io=1.6.4-1", check=False)
        assert down.returncode == 100
        assert down.stderr.splitlines()[-1] == "E: Packages were downgraded and -y was used without --allow-downgrades."
        assert lab_ssh(node, "dpkg-query -W -f='${Version}' containerd.io").stdout == "1.6.20-1"
    finally:
        cli("lab", "reset", node, "--dir", str(lab.dir))


def test_a_lab_keeps_the_seed_layer_it_started_with(lab, tmp_path):
    """A node reset after the lab's code changed (the cache then holds a newer repository build and
    seed) must still start from the seed whose apt lists match the repository this lab serves."""
    from nodegate.core.errors import PermanentError
    from nodegate.lab.config import LabConfig

    pinned = Path((lab.dir / seed.SEED_PIN).read_text().strip())   # written at the first boot
    assert seed.seed_layer(lab) == pinned and (pinned.parent / "complete").exists()

    other = LabConfig.new(tmp_path / "other", 1, net=lab.net)
    other.dir.mkdir(parents=True, exist_ok=True)
    older = tmp_path / "seed-older"
    (older / "layer").mkdir(parents=True)
    (older / "complete").touch()
    (other.dir / seed.SEED_PIN).write_text(f"{older / 'layer'}\n")
    assert seed.seed_layer(other) == older / "layer"        # not the newest in the cache

    (older / "complete").unlink()                           # its seed left the cache
    with pytest.raises(PermanentError, match="no longer cached") as refused:
        seed.seed_layer(other)
    assert "nodegate lab down" in refused.value.fix
