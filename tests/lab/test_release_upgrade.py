"""do-release-upgrade on a lab node behaves like Ubuntu's where the harness can see it: its
refusals, focal -> jammy -> noble with real apt, the sources it rewrites, the files it leaves,
no reboot of its own, and an upgrade that survives its SSH session or a kill in the middle."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from nodegate.lab.node import NodeRuntime

pytestmark = pytest.mark.lab

DRU = "do-release-upgrade -f DistUpgradeViewNonInteractive"
CHECKING = "Checking for a new Ubuntu release\n"
PENDING = CHECKING + "Please install all available updates for your release before upgrading.\n"
REBOOT_FIRST = CHECKING + ("You have not rebooted after updating a package which requires a reboot. "
                           "Please reboot before upgrading.\n")
# The field procedure's step before a release upgrade: unhold, and bring everything up to date.
UPDATE_ALL = ("apt-mark unhold containerd.io docker-ce docker-ce-cli >/dev/null && "
              "DEBIAN_FRONTEND=noninteractive apt-get -q -y dist-upgrade >/dev/null")


@pytest.fixture
def node(lab, cli):
    """One node for an upgrade; put back to its seeded state afterwards."""
    name = lab.nodes[-2].name
    yield name
    cli("lab", "reset", name, "--dir", str(lab.dir))


def boot_id(lab, node_ssh, name: str) -> str:
    return node_ssh(lab, name, "cat /proc/sys/kernel/random/boot_id", check=False, timeout=10,
                    multiplex=False).stdout.strip()


def reboot(lab, lab_ssh, node_ssh, poll, name: str) -> None:
    before = boot_id(lab, node_ssh, name)
    lab_ssh(name, "shutdown -r now")
    poll(lambda: boot_id(lab, node_ssh, name) not in ("", before), timeout=lab.boot_delay_s + 20,
         interval=0.2, what=f"{name} back after reboot")


def os_release(lab_ssh, name: str) -> dict[str, str]:
    out = lab_ssh(name, "cat /etc/os-release /etc/lsb-release").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_refusals_then_focal_to_jammy_to_noble(lab, node, lab_ssh, node_ssh, poll, cli):
    repo = lab.repo_address
    # Seeded: lab-utils has an update, and the held docker packages have newer candidates.
    first = lab_ssh(node, DRU, check=False)
    assert (first.returncode, first.stdout) == (1, PENDING)
    lab_ssh(node, "DEBIAN_FRONTEND=noninteractive apt-get -q -y dist-upgrade >/dev/null")
    held_only = lab_ssh(node, DRU, check=False)
    assert (held_only.returncode, held_only.stdout) == (1, PENDING), "held packages with updates must count"
    lab_ssh(node, UPDATE_ALL)
    # A new kernel waiting for a reboot blocks it too; rebooting clears it.
    cli("lab", "fault", "reboot-required", "--node", node, "--dir", str(lab.dir))
    blocked = lab_ssh(node, DRU, check=False)
    assert (blocked.returncode, blocked.stdout) == (1, REBOOT_FIRST)
    reboot(lab, lab_ssh, node_ssh, poll, node)
    cli("lab", "fault", "reboot-required", "--node", node, "--clear", "--dir", str(lab.dir))
    check = lab_ssh(node, "do-release-upgrade -c")
    assert check.stdout == CHECKING + "New release '22.04.3 LTS' available.\nRun 'do-release-upgrade' to upgrade to it.\n"

    docker_list = lab_ssh(node, "cat /etc/apt/sources.list.d/docker.list").stdout
    sources_list = lab_ssh(node, "cat /etc/apt/sources.list").stdout
    state = NodeRuntime(lab, lab.node(node)).read_state()
    started = time.monotonic()
    upgrade = lab_ssh(node, DRU, timeout=300)
    took = time.monotonic() - started
    text = upgrade.stdout
    for line in ("Checking for a new Ubuntu release", "Reading cache", "Checking package manager",
                 "This session appears to be running under ssh. It is not recommended ",
                 "Updating repository information", "Third party sources disabled ",
                 f"Get:1 http://{repo}/ubuntu jammy InRelease", "Calculating the changes",
                 "3 packages are going to be upgraded. ", "Upgrading", "Searching for obsolete software",
                 "System upgrade is complete.", "To finish the upgrade, a restart is required. "):
        assert line in text, f"{line!r} missing from the transcript:\n{text}"
    assert "Continue [yN]" not in text  # the non-interactive front end asks nothing
    release = os_release(lab_ssh, node)
    assert release["PRETTY_NAME"] == '"Ubuntu 22.04.3 LTS"' and release["VERSION_CODENAME"] == "jammy"
    assert release["DISTRIB_DESCRIPTION"] == '"Ubuntu 22.04.3 LTS"' and release["DISTRIB_RELEASE"] == "22.04"
    after = lab_ssh(node, "cat /etc/apt/sources.list.d/docker.list; echo ---; grep ^deb /etc/apt/sources.list; "
                          "echo ---; cat /etc/apt/sources.list.d/docker.list.distUpgrade; echo ---; "
                          "cat /etc/apt/sources.list.distUpgrade").stdout.split("---\n")
    assert after[0] == (f"# deb [arch=amd64] http://{repo}/linux/ubuntu focal stable "
                        "# disabled on upgrade to jammy\n")
    assert after[1].splitlines() == [f"deb http://{repo}/ubuntu {suite} main restricted universe multiverse"
                                     for suite in ("jammy", "jammy-updates", "jammy-security")]
    assert after[2] == docker_list and after[3] == sources_list
    versions = lab_ssh(node, "dpkg-query -W -f='${Package} ${Version}\\n' lab-utils docker-ce").stdout
    assert versions.splitlines() == ["docker-ce 5:20.10.24~3-0~ubuntu-focal", "lab-utils 1.2"]
    # It never reboots by itself: the caller does, once it has seen the reboot request.
    assert boot_id(lab, node_ssh, node) == state.boot_id
    assert NodeRuntime(lab, lab.node(node)).read_state().boot_count == state.boot_count
    assert lab_ssh(node, "cat /var/run/reboot-required").stdout == "*** System restart required ***\n"
    main_log = lab_ssh(node, "cat /var/log/dist-upgrade/main.log").stdout
    assert "Upgrading from 'focal' to 'jammy'" in main_log and "upgrade to jammy (22.04.3 LTS) complete" in main_log
    # The docker source is off now, so its legacy-key warning is gone from apt-get update.
    assert lab_ssh(node, "apt-get update").stderr == ""
    again = lab_ssh(node, DRU, check=False)
    assert (again.returncode, again.stdout) == (1, REBOOT_FIRST)

    reboot(lab, lab_ssh, node_ssh, poll, node)
    noble = lab_ssh(node, DRU + " -d", timeout=300)
    assert "System upgrade is complete." in noble.stdout
    release = os_release(lab_ssh, node)
    assert release["PRETTY_NAME"] == '"Ubuntu 24.04.1 LTS"' and release["DISTRIB_CODENAME"] == "noble"
    # 24.04's upgrader moves the archive to deb822 ubuntu.sources.
    assert lab_ssh(node, "cat /etc/apt/sources.list").stdout == \
        "# Ubuntu sources have moved to /etc/apt/sources.list.d/ubuntu.sources\n"
    ubuntu_sources = lab_ssh(node, "cat /etc/apt/sources.list.d/ubuntu.sources").stdout
    assert f"URIs: http://{repo}/ubuntu\nSuites: noble noble-updates noble-security\n" in ubuntu_sources
    assert lab_ssh(node, "dpkg-query -W -f='${Version}' lab-utils").stdout == "1.3"
    last = lab_ssh(node, DRU, check=False)
    assert (last.returncode, last.stdout) == (1, CHECKING + "No new release found.\n")
    devel = lab_ssh(node, DRU + " -d", check=False)
    assert devel.returncode == 1 and "There is no development version of an LTS available." in devel.stdout
    print(f"focal -> jammy do-release-upgrade: {took:.1f} s")

    cli("lab", "reset", node, "--dir", str(lab.dir))
    assert os_release(lab_ssh, node)["VERSION_CODENAME"] == "focal"


def upgrade_state(lab_ssh, name: str) -> dict:
    out = lab_ssh(name, "cat /var/lib/nodegate-lab/release-upgrade.json 2>/dev/null", check=False).stdout
    return json.loads(out) if out.strip() else {}


def test_upgrade_survives_ssh_drop_and_is_repaired_after_a_kill(lab, node, lab_ssh, node_ssh, poll):
    lab_ssh(node, UPDATE_ALL)
    # Slow dpkg down (a real upgrade takes minutes), so there is a "middle" to interrupt.
    lab_ssh(node, "echo 'post-invoke=sleep 2' > /etc/dpkg/dpkg.cfg.d/zz-slow")
    ssh_argv = ["ssh", "-F", str(lab.dir / "ssh/config"), "-o", "ControlMaster=no", "-o", "ControlPath=none",
                node, DRU]
    client = subprocess.Popen(ssh_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: upgrade_state(lab_ssh, node).get("stage") == "upgrading", timeout=60, interval=0.2,
             what="the upgrade running dpkg")
    finally:
        client.kill()  # the SSH session drops in the middle of the upgrade
        client.communicate(timeout=10)
    poll(lambda: upgrade_state(lab_ssh, node).get("stage") == "done", timeout=60, interval=0.3,
         what="the upgrade finishing without its session")
    assert os_release(lab_ssh, node)["VERSION_CODENAME"] == "jammy"
    assert lab_ssh(node, "dpkg --audit").stdout == ""

    # Now kill it (and apt and dpkg) outright in the middle of jammy -> noble.
    reboot(lab, lab_ssh, node_ssh, poll, node)
    lab_ssh(node, f"(echo $$ > /run/dru.pid; exec {DRU}) >/dev/null 2>&1 &")
    # Killed while dpkg has unpacked the new packages but not configured them yet. The watch and
    # the kill run on the node in one command: a kill sent in a second SSH round trip lands late
    # on a loaded machine, when dpkg has moved on to unpacking the next package (reinst-required).
    lab_ssh(node, "for i in $(seq 1200); do dpkg --audit 2>/dev/null | grep -q 'not yet configured' && break; "
                  "sleep 0.05; done; kill -9 -- -$(cat /run/dru.pid)", timeout=90)
    assert upgrade_state(lab_ssh, node)["stage"] == "upgrading"
    audit = lab_ssh(node, "dpkg --audit").stdout
    assert "not yet configured" in audit or "only half" in audit, audit
    # The repair an operator does: finish dpkg's work, run the upgrader again. A package the kill
    # caught mid-unpack (half-installed, reinst-required: dpkg calls it "a very bad inconsistent
    # state") is reinstalled first, as dpkg's message says; on a loaded machine the kill can land there.
    lab_ssh(node, "rm /etc/dpkg/dpkg.cfg.d/zz-slow; "
                  "broken=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n' | awk 'substr($1,3,1)==\"R\" {print $2}'); "
                  "if [ -n \"$broken\" ]; then dpkg --configure -a; "
                  "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall $broken; fi; "
                  "dpkg --configure -a", timeout=300)
    rerun = lab_ssh(node, DRU, timeout=300)
    assert "Resuming the interrupted upgrade to noble" in rerun.stdout
    assert "System upgrade is complete." in rerun.stdout
    assert os_release(lab_ssh, node)["VERSION_CODENAME"] == "noble"
    assert lab_ssh(node, "dpkg --audit").stdout == ""
    assert lab_ssh(node, "dpkg-query -W -f='${Version}' lab-utils").stdout == "1.3"


def load_upgrader():
    """The node's do-release-upgrade script as a module, for its pure source-rewriting part."""
    import importlib.machinery
    import importlib.util
    from pathlib import Path

    import nodegate.lab

    path = Path(nodegate.lab.__file__).parent / "nodefiles/usr/bin/do-release-upgrade"
    loader = importlib.machinery.SourceFileLoader("lab_do_release_upgrade", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def test_source_rewriting_keeps_backups_and_handles_deb822(tmp_path):
    dru = load_upgrader()
    dru.SOURCES_LIST = str(tmp_path / "sources.list")
    dru.SOURCES_DIR = str(tmp_path / "sources.list.d")
    (tmp_path / "sources.list.d").mkdir()
    main = "deb http://127.0.2.1/ubuntu focal main\n# deb-src http://127.0.2.1/ubuntu focal main\n"
    (tmp_path / "sources.list").write_text(main)
    (tmp_path / "sources.list.d/ppa.sources").write_text(
        "Types: deb\nURIs: http://ppa.launchpadcontent.net/deadsnakes/ppa/ubuntu\nSuites: focal\nComponents: main\n")
    disabled, found = dru.rewrite_sources("focal", "jammy", allow_third_party=False)
    assert found and disabled == ["http://ppa.launchpadcontent.net/deadsnakes/ppa/ubuntu focal"]
    assert dru.is_archive("http://archive.ubuntu.com/ubuntu/") and not dru.is_archive("http://mirror.example/ubuntu")
    assert (tmp_path / "sources.list").read_text().splitlines()[0] == "deb http://127.0.2.1/ubuntu jammy main"
    ppa = (tmp_path / "sources.list.d/ppa.sources").read_text()
    assert ppa.startswith("# disabled on upgrade to jammy\nEnabled: no\nTypes: deb\n")
    assert (tmp_path / "sources.list.distUpgrade").read_text() == main
    dru.restore_sources()
    assert (tmp_path / "sources.list").read_text() == main
    assert not list(tmp_path.rglob("*.distUpgrade"))
    # --allow-third-party keeps them, moved to the new release.
    disabled, _ = dru.rewrite_sources("focal", "jammy", allow_third_party=True)
    assert disabled == [] and "Suites: jammy" in (tmp_path / "sources.list.d/ppa.sources").read_text()


def test_focal_to_jammy_to_noble_sources_as_the_real_upgraders_leave_them(tmp_path):
    """To jammy: the third-party line commented out and tagged. To noble (ubuntu-release-upgrader's
    migrateToDeb822Sources + rewriteDeb822Sources): sources.list -> ubuntu.sources with Ubuntu's
    keyring, foo.list -> foo.sources, the third-party stanza `Enabled: no` (a disabled entry is
    migrated disabled), its key inline when trusted.gpg.d/foo.gpg exists, backups kept."""
    from nodegate.core import aptsources

    dru = load_upgrader()
    dru.SOURCES_LIST = str(tmp_path / "sources.list")
    dru.SOURCES_DIR = str(tmp_path / "sources.list.d")
    dru.TRUSTED_PARTS = str(tmp_path / "trusted.gpg.d")
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "trusted.gpg.d").mkdir()
    archive = "http://127.0.2.1/ubuntu"
    docker = "http://127.0.2.1/linux/ubuntu"
    (tmp_path / "sources.list").write_text(
        "# See http://help.ubuntu.com/community/UpgradeNotes\n"
        + "".join(f"deb {archive} {s} main restricted universe multiverse\n"
                  for s in ("focal", "focal-updates", "focal-security")))
    (tmp_path / "sources.list.d/docker.list").write_text(f"deb [arch=amd64] {docker} focal stable\n")
    (tmp_path / "sources.list.d/tools.list").write_text("deb https://apt.example.net/tools focal main\n")

    disabled, found = dru.rewrite_sources("focal", "jammy", allow_third_party=False)
    assert found and len(disabled) == 2
    assert (tmp_path / "sources.list.d/docker.list").read_text() == \
        f"# deb [arch=amd64] {docker} focal stable # disabled on upgrade to jammy\n"

    # an operator re-enables tools by hand on jammy (its key beside it); docker stays disabled
    (tmp_path / "sources.list.d/tools.list").write_text("deb https://apt.example.net/tools jammy main\n")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--batch", "--quiet", "--homedir", str(home)]
    try:
        subprocess.run([*gpg, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key", "tools-test",
                        "ed25519", "sign", "never"], check=True, capture_output=True)
        subprocess.run([*gpg, "--output", str(tmp_path / "trusted.gpg.d/tools.gpg"), "--export"], check=True,
                       capture_output=True)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    for backup in tmp_path.rglob("*.distUpgrade"):
        backup.unlink()
    disabled, found = dru.rewrite_sources("jammy", "noble", allow_third_party=False)
    assert found and disabled == ["https://apt.example.net/tools jammy"]
    assert (tmp_path / "sources.list").read_text() == \
        f"# Ubuntu sources have moved to {tmp_path}/sources.list.d/ubuntu.sources\n"
    assert not (tmp_path / "sources.list.d/docker.list").exists()
    assert (tmp_path / "sources.list.d/docker.list.distUpgrade").read_text().startswith("# deb [arch=amd64]")
    ubuntu = (tmp_path / "sources.list.d/ubuntu.sources").read_text()
    assert ubuntu == (f"Types: deb\nURIs: {archive}\nSuites: noble noble-updates noble-security\n"
                      "Components: main restricted universe multiverse\n"
                      "Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n")
    docker_sources = (tmp_path / "sources.list.d/docker.sources").read_text()
    assert docker_sources == f"Enabled: no\nTypes: deb\nURIs: {docker}\nSuites: focal\nComponents: stable\nArchitectures: amd64\n"
    tools = (tmp_path / "sources.list.d/tools.sources").read_text()
    assert tools.startswith("Enabled: no\nTypes: deb\nURIs: https://apt.example.net/tools\nSuites: jammy\n")
    (entry,) = aptsources.entries("/etc/apt/sources.list.d/tools.sources", tools)
    assert not entry.enabled and entry.signed_by_inline and "# disabled" not in tools
    # restoring puts the one-line files back and drops the generated deb822 ones
    dru.restore_sources()
    assert sorted(p.name for p in (tmp_path / "sources.list.d").iterdir()) == ["docker.list", "tools.list"]
