"""Checks shown to fail for the right reason after a direct change to a lab node, to Ceph or to the
profile (the conditions no lab fault makes), and to pass again once it is undone."""
from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = pytest.mark.lab


def lab_ceph(lab, *args: str) -> None:
    subprocess.run(["ceph", *args], env={**os.environ, "CEPH_CONF": str(lab.dir / "ceph.conf")}, check=True,
                   capture_output=True, timeout=60)


def test_unconfigured_package_fails_dpkg_audit(catalogue, lab_ssh):
    lab_ssh("node4", "dpkg --unpack /var/cache/apt/archives/lab-tools_2.0_all.deb >/dev/null 2>&1")
    try:
        run = catalogue("-m", "preflight", "-k", "packages")
    finally:
        lab_ssh("node4", "dpkg --configure -a")
    run.assert_failed_exactly({"test_dpkg_audit_clean[node4]"})
    section = run.section("test_dpkg_audit_clean[node4]")
    assert "lab-tools" in section and "dpkg --configure -a" in section


def test_too_little_free_space(catalogue, broken_profile):
    path = broken_profile(toml=lambda t: t.replace("[expect]\n", "[expect]\nmin_free_root_mb = 100000000\n"))
    run = catalogue("-m", "preflight", cluster=path)
    run.assert_failed_exactly({"test_disk_space[node4]"})
    section = run.section("test_disk_space[node4]")
    assert "needs 100000000 MB" in section and "min_free_root_mb" in section


def test_noout_left_set_fails_noout_and_health(catalogue, lab):
    lab_ceph(lab, "osd", "set-group", "noout", "node4")
    try:
        run = catalogue("-m", "preflight", "-k", "storage")
    finally:
        lab_ceph(lab, "osd", "unset-group", "noout", "node4")
    # a host's noout raises OSD_FLAGS, so Ceph is not HEALTH_OK either
    run.assert_failed_exactly({"test_noout_as_expected[node4]", "test_ceph_healthy"})
    assert "CRUSH host node4 has noout set" in run.section("test_noout_as_expected[node4]")
    assert "OSD_FLAGS" in run.section("test_ceph_healthy")


def test_os_release_changed_without_reboot(catalogue, lab_ssh):
    """The kubelet reads the OS once per boot: an /etc/os-release that changed since disagrees with osImage."""
    lab_ssh("node4", "cp /etc/os-release /root/os-release.saved && sed -i 's/20.04.5 LTS/20.04.6 LTS/' "
                     "/etc/os-release")
    try:
        run = catalogue("-m", "preflight", "-k", "os_release")
    finally:
        lab_ssh("node4", "cp /root/os-release.saved /etc/os-release")
    run.assert_failed_exactly({"test_os_release_matches_phase[node4]"})
    section = run.section("test_os_release_matches_phase[node4]")
    assert "20.04.6" in section and "osImage" in section and "reboot node4" in section


def test_bmc_named_and_answering(catalogue, broken_profile, lab):
    # the lab's API server address stands in for a BMC that answers (loopback only)
    path = broken_profile(toml=lambda t: t + f'\n[nodes.node4]\nbmc = "{lab.api_address}"\n')
    run = catalogue("-m", "preflight", "-k", "out_of_band", cluster=path)
    assert run.ret == 0 and run.passed() == {"test_out_of_band_access[node4]"}, run.stdout[-3000:]
    assert "names no out-of-band address" not in run.stdout


def test_other_node_down(catalogue, lab, cli, poll):
    from nodegate.cluster.kube.client import Kube
    from nodegate.profile.load import load_profile

    cli("lab", "power-off", "node3", "--dir", str(lab.dir), timeout=120)
    try:
        # the API marks a node that went down not Ready about a second later (the lab's grace):
        # a preflight started before that (it takes well under a second now) sees it Ready still
        kube = Kube.connect(settings=load_profile(lab.dir / "cluster.toml").kube)
        try:
            poll(lambda: not kube.node("node3").is_ready, timeout=30, what="node3 not Ready in the API")
        finally:
            kube.close()
        run = catalogue("-m", "preflight", "-k", "other_nodes_ready or control_plane")
    finally:
        cli("lab", "power-on", "node3", "--dir", str(lab.dir), timeout=120)
        from nodegate.lab.ceph import LabCeph

        LabCeph(lab).wait_healthy(timeout=180)   # later tests need the whole lab healthy again
    run.assert_failed_exactly({"test_other_nodes_ready[node4]"})
    assert "node3" in run.section("test_other_nodes_ready[node4]")


def test_source_left_disabled_by_the_release_upgrade(catalogue, lab_ssh):
    """What do-release-upgrade leaves: the third-party entry commented out and tagged."""
    lab_ssh("node4", "echo 'deb [signed-by=/etc/apt/keyrings/x.gpg] http://example.invalid/linux/ubuntu jammy stable "
                     "# disabled on upgrade to jammy' | sed 's/^/# /' > /etc/apt/sources.list.d/left.list")
    try:
        run = catalogue("-m", "postflight", "--target-release", "22.04", "-k", "sources")
    finally:
        lab_ssh("node4", "rm -f /etc/apt/sources.list.d/left.list")
    run.assert_failed_exactly({"test_sources_after_upgrade[node4]"})
    section = run.section("test_sources_after_upgrade[node4]")
    assert "left.list" in section and "still disabled on upgrade to jammy" in section
