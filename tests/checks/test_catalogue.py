"""The checks catalogue against the real lab: a healthy node passes preflight; each lab fault makes
exactly the expected check fail, with the expected words; postflight fails on what preflight only
warns about. Every run is `pytest checks/ --cluster DIR/cluster.toml --node node4 -m …` in a
subprocess, as an operator types it."""
from __future__ import annotations

import pytest

from nodegate.lab.config import LabConfig

pytestmark = pytest.mark.lab

PREFLIGHT_NODE4 = {
    "test_node_ready[node4]", "test_node_no_pressure[node4]", "test_node_schedulable[node4]",
    "test_kubelet_version[node4]", "test_os_release_matches_phase[node4]", "test_packages_held[node4]",
    "test_dpkg_audit_clean[node4]", "test_nothing_upgradable[node4]", "test_apt_update_clean[node4]",
    "test_no_reboot_pending[node4]", "test_running_newest_kernel[node4]", "test_disk_space[node4]",
    "test_rbd_module[node4]", "test_target_is_next_release[node4]", "test_kubespray_supports_releases[node4]",
    "test_cephcsi_for_target[node4]", "test_kubernetes_not_eol", "test_kube_version_form", "test_known_kubespray_issues",
    "test_out_of_band_access[node4]", "test_other_nodes_ready[node4]", "test_one_node_at_a_time[node4]",
    "test_upgrade_lock_free[node4]", "test_control_plane_can_lose_node[node4]", "test_pods_evictable[node4]",
    "test_ceph_healthy", "test_node_osds_up[node4]", "test_osds_ok_to_stop[node4]",
    "test_noout_as_expected[node4]", "test_noout_outlasts_rook[node4]", "test_csi_rbdplugin_healthy[node4]", "test_api_permissions",
    "test_kubespray_docker_task_has_the_downgrade_fix", "test_release_upgrade_prompt[node4]",
    "test_no_package_blocks_release_upgrade[node4]",
    "test_ansible_in_checkout_range", "test_ansible_requirements_installed", "test_upgrade_playbook_parses[node4]",
    "test_skipped_tags_exist[node4]", "test_api_endpoint_not_on_node[node4]",
}


def fault(lab: LabConfig, cli, name: str, node: str | None = None, *, clear: bool = False) -> None:
    args = ["lab", "fault", name, "--dir", str(lab.dir)]
    if node:
        args += ["--node", node]
    if clear:
        args.append("--clear")
    cli(*args, timeout=300)


@pytest.fixture
def kube(lab):
    from nodegate.cluster.kube.client import Kube
    from nodegate.profile.model import KubeSettings

    client = Kube.connect(settings=KubeSettings(kubeconfig=lab.dir / "kubeconfig", context="nodegate-lab"))
    yield client
    client.close()


# --------------------------------------------------------------------------- healthy

@pytest.mark.parametrize("target", [(), ("--target-release", "22.04")], ids=["next-release", "target-given"])
def test_healthy_node_passes_preflight(catalogue, target):
    run = catalogue("-m", "preflight", *target)
    assert run.ret == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert run.passed() == PREFLIGHT_NODE4, sorted(run.passed() ^ PREFLIGHT_NODE4)
    # what the procedure itself fixes is shown, named with its step, and does not block
    assert "legacy trusted.gpg keyring" in run.stdout and "step 10" in run.stdout
    assert "pending update" in run.stdout and "step 6" in run.stdout
    print(f"preflight of node4: {run.seconds:.2f} s wall (pytest subprocess)")


def test_unfixed_kubespray_checkout_fails_preflight_with_the_line_to_add(catalogue, lab):
    """The lab's checkout as Kubespray v2.21.0 ships it: the preflight reads its docker package
    task (package: under module_defaults) and names the file, the task and the exact line."""
    run = catalogue("-m", "preflight", "-k", "downgrade_fix", cluster=lab.dir / "cluster.toml")
    assert run.ret == 1 and run.failed() == {"test_kubespray_docker_task_has_the_downgrade_fix"}, run.stdout[-3000:]
    text = run.section("test_kubespray_docker_task_has_the_downgrade_fix")
    assert "kubespray #9114" in text and "add `    force: true` to " in text, text
    assert str(lab.dir / "kubespray/roles/container-engine/docker/tasks/main.yml") in text
    assert 'task "ensure docker packages are installed", after line 44' in text, text
    assert "(`state: \"{{ docker_package_info.state | default('present') }}\"`)" in text, text


def test_postflight_fails_on_what_preflight_only_warns(catalogue):
    """The starting node (20.04, legacy key, one pending update) as if it had been upgraded to 22.04."""
    run = catalogue("-m", "postflight", "--target-release", "22.04")
    assert run.ret == 1
    failed = run.failed()
    assert {"test_apt_update_clean[node4]", "test_nothing_upgradable[node4]", "test_os_release_matches_phase[node4]",
            "test_sources_after_upgrade[node4]"} <= failed, sorted(failed)
    assert "points at focal, not jammy" in run.section("test_sources_after_upgrade[node4]")
    assert "legacy trusted.gpg keyring" in run.section("test_apt_update_clean[node4]")
    assert "expected Ubuntu 22.04 (jammy) after the upgrade" in run.section("test_os_release_matches_phase[node4]")
    assert "still pending on node4 after the upgrade" in run.section("test_nothing_upgradable[node4]")
    assert "Traceback" not in run.text


# --------------------------------------------------------------------------- lab faults

def test_release_upgrade_refusals_seen_in_preflight(catalogue, lab_ssh):
    """What do-release-upgrade refuses on a real machine, named before the window: Prompt=never,
    and a package held outside the set the procedure unholds (the upgrader keeps it back and
    refuses with pending updates)."""
    lab_ssh("node4", "mkdir -p /etc/update-manager && printf '[DEFAULT]\\nPrompt=never\\n' "
                     "> /etc/update-manager/release-upgrades && apt-mark hold lab-utils >/dev/null")
    try:
        run = catalogue("-m", "preflight", "-k", "release_upgrade_prompt or blocks_release_upgrade")
    finally:
        lab_ssh("node4", "rm -f /etc/update-manager/release-upgrades && apt-mark unhold lab-utils >/dev/null")
    assert run.failed() == {"test_release_upgrade_prompt[node4]", "test_no_package_blocks_release_upgrade[node4]"}, \
        run.stdout[-3000:]
    assert "Prompt=never in /etc/update-manager/release-upgrades" in run.section("test_release_upgrade_prompt[node4]")
    assert "fix: set Prompt=lts" in run.section("test_release_upgrade_prompt[node4]")
    blocking = run.section("test_no_package_blocks_release_upgrade[node4]")
    assert "lab-utils 1.0 is held and the procedure does not unhold it" in blocking, blocking
    assert "container_manager docker" in blocking


def test_held_version_drift_fails_held_packages(catalogue, lab, cli):
    fault(lab, cli, "held-version-drift", "node4")
    try:
        run = catalogue("-m", "preflight")
    finally:
        fault(lab, cli, "held-version-drift", "node4", clear=True)
    run.assert_failed_exactly({"test_packages_held[node4]"})
    section = run.section("test_packages_held[node4]")
    assert "held-package drift on node4" in section
    assert "containerd.io is held at" in section and "expected 1.6.4-1" in section
    assert "fix: install the expected versions and hold them" in section


def test_pending_updates_warn_in_preflight_and_fail_postflight(catalogue, lab, cli):
    from nodegate.lab.faults import FaultBook

    fault(lab, cli, "pending-updates", "node4")
    try:
        package = FaultBook(lab.dir).data["pending-updates"]["restore"]["node4"]["package"]
        pre = catalogue("-m", "preflight")
        post = catalogue("-m", "postflight", "--target-release", "22.04", "-k", "test_nothing_upgradable")
    finally:
        fault(lab, cli, "pending-updates", "node4", clear=True)
    assert pre.ret == 0, pre.stdout[-5000:]
    assert package in pre.stdout and "step 6 (apt-get dist-upgrade)" in pre.stdout
    post.assert_failed_exactly({"test_nothing_upgradable[node4]"})
    assert package in post.section("test_nothing_upgradable[node4]")


def test_reboot_required_fails_preflight(catalogue, lab, cli):
    fault(lab, cli, "reboot-required", "node4")
    try:
        run = catalogue("-m", "preflight")
    finally:
        fault(lab, cli, "reboot-required", "node4", clear=True)
    run.assert_failed_exactly({"test_no_reboot_pending[node4]"})
    assert "Please reboot before upgrading" in run.section("test_no_reboot_pending[node4]")


def test_ceph_warn_fails_ceph_health(catalogue, lab, cli):
    fault(lab, cli, "ceph-warn")
    try:
        run = catalogue("-m", "preflight")
    finally:
        fault(lab, cli, "ceph-warn", clear=True)
    run.assert_failed_exactly({"test_ceph_healthy"})
    section = run.section("test_ceph_healthy")
    assert "Ceph is not healthy: HEALTH_WARN" in section and "OSDMAP_FLAGS" in section


def test_csi_rbd_broken_fails_csi_check(catalogue, lab, cli):
    fault(lab, cli, "csi-rbd-broken", "node4")
    try:
        run = catalogue("-m", "preflight")
    finally:
        fault(lab, cli, "csi-rbd-broken", "node4", clear=True)
    run.assert_failed_exactly({"test_csi_rbdplugin_healthy[node4]"})
    section = run.section("test_csi_rbdplugin_healthy[node4]")
    assert "the RBD node plugin rook-ceph/csi-rbdplugin-" in section and "on node4 is not healthy" in section
    assert "not Ready" in section and "modprobe rbd" in section


def test_pdb_block_names_the_pdb(catalogue, lab, cli):
    fault(lab, cli, "pdb-block", "node4")
    try:
        run = catalogue("-m", "preflight")
    finally:
        fault(lab, cli, "pdb-block", "node4", clear=True)
    run.assert_failed_exactly({"test_pods_evictable[node4]"})
    section = run.section("test_pods_evictable[node4]")
    assert "PodDisruptionBudget" in section and "allows 0 disruption(s)" in section


def test_other_node_cordoned_fails_one_at_a_time(catalogue, kube):
    kube.cordon("node3")
    try:
        run = catalogue("-m", "preflight")
    finally:
        kube.uncordon("node3")
    run.assert_failed_exactly({"test_one_node_at_a_time[node4]"})
    assert "node3 is cordoned" in run.section("test_one_node_at_a_time[node4]")


def test_lock_held_by_another_run(catalogue, kube):
    from nodegate.cluster.lock import LOCK_NAME, LOCK_NAMESPACE

    kube.create_lease(namespace=LOCK_NAMESPACE, name=LOCK_NAME, holder="someone@elsewhere:4242", duration_s=300,
                      annotations={"nodegate.io/node": "node3", "nodegate.io/run-id": "20260101-000000-abcd"})
    try:
        run = catalogue("-m", "preflight", "-k", "upgrade_lock_free")
    finally:
        kube.delete_lease(LOCK_NAMESPACE, LOCK_NAME)
    run.assert_failed_exactly({"test_upgrade_lock_free[node4]"})
    section = run.section("test_upgrade_lock_free[node4]")
    assert "someone@elsewhere:4242" in section and "node3" in section


def test_flaky_api_is_retried_not_reported(catalogue, lab, cli):
    """A third of the API requests answered 503: reads are retried within bounds, the node still passes."""
    cli("lab", "fault", "api-flaky", "--ratio", "0.3", "--mode", "503", "--dir", str(lab.dir))
    try:
        run = catalogue("-m", "preflight")
    finally:
        fault(lab, cli, "api-flaky", clear=True)
    assert run.ret == 0, run.stdout[-5000:]
    assert run.passed() == PREFLIGHT_NODE4


def test_lock_of_an_interrupted_run_of_this_node_is_a_notice(catalogue, kube):
    from nodegate.cluster.lock import LOCK_NAME, LOCK_NAMESPACE, this_holder

    kube.create_lease(namespace=LOCK_NAMESPACE, name=LOCK_NAME, holder=this_holder(), duration_s=300,
                      annotations={"nodegate.io/node": "node4", "nodegate.io/run-id": "20260101-000000-abcd"})
    try:
        run = catalogue("-m", "preflight", "-k", "upgrade_lock_free")
    finally:
        kube.delete_lease(LOCK_NAMESPACE, LOCK_NAME)
    assert run.ret == 0 and run.passed() == {"test_upgrade_lock_free[node4]"}, run.stdout[-3000:]
    assert "interrupted upgrade of node4" in run.stdout
