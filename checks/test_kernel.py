"""Boot and kernel: pending reboot, running kernel, free space for a release upgrade, the rbd module."""
from __future__ import annotations

import functools

import pytest

from nodegate.plugin.fixtures import fail_check


@pytest.mark.preflight
@pytest.mark.postflight
def test_no_reboot_pending(node, reads, phase):
    """do-release-upgrade refuses while /var/run/reboot-required.pkgs names libc6, linux-base or a
    kernel ('Please reboot before upgrading'); and a node about to be upgraded should first prove
    it comes back from the reboot it already owes."""
    reboot = reads.snapshot(node.name).reboot
    if not reboot.required:
        return
    pkgs = ", ".join(reboot.packages) or "not named"
    if phase == "preflight":
        fail_check(f"{node.name} has a reboot pending (/var/run/reboot-required; packages: {pkgs}): "
                   "do-release-upgrade would refuse with 'Please reboot before upgrading'",
                   fix=f"drain and reboot {node.name} first (and check that it comes back Ready), then run the "
                       "preflight again")
    fail_check(f"{node.name} has a reboot pending after the upgrade (/var/run/reboot-required; packages: {pkgs}): "
               "it is not running what was installed",
               fix=f"reboot {node.name} (drained), then run the postflight again")


def _newest(versions):
    from nodegate.core.knowledge import compare_debian_versions

    return max(versions, key=functools.cmp_to_key(compare_debian_versions)) if versions else None


@pytest.mark.preflight
@pytest.mark.postflight
def test_running_newest_kernel(node, reads, profile, phase, notice, evidence):
    snapshot = reads.snapshot(node.name)
    installed = snapshot.installed_kernels
    evidence.json(f"{node.name}: kernels", {"running": snapshot.kernel, "installed linux-image packages": installed})
    if not installed:
        if profile.expect.kernel_packages:
            fail_check(f"found no installed linux-image-* package on {node.name} (looked in `dpkg -l` for "
                       f"linux-image-*), so whether it runs its newest kernel cannot be told (it runs {snapshot.kernel})",
                       fix="if the node's kernel is not installed by dpkg, say so in the profile: [expect] "
                           "kernel_packages = false")
        evidence.text(f"{node.name}: kernels", "no linux-image-* package: the profile says the kernel is not "
                                              "installed by dpkg ([expect] kernel_packages = false)")
        return
    newest = _newest(installed)
    if snapshot.kernel == newest:
        return
    text = f"{node.name} runs kernel {snapshot.kernel}, but the newest installed is {newest}"
    if phase == "preflight":
        notice(f"{text}; the procedure reboots into it in step 7")
        return
    fail_check(text, fix=f"reboot {node.name} into {newest} (check the boot loader's default entry if it does not "
                         "come up with it)")


@pytest.mark.preflight
def test_disk_space(node, reads, profile, evidence):
    """A release upgrade downloads and unpacks ~1-2 GB on / and writes new kernels and initrds to /boot."""
    snapshot = reads.snapshot(node.name)
    expect = profile.expect
    rows, problems = [], []
    for path, minimum in (("/", expect.min_free_root_mb), ("/boot", expect.min_free_boot_mb)):
        disk = snapshot.disks.get(path)
        if disk is None:
            problems.append(f"free space on {path} could not be read")
            continue
        rows.append([path, disk.mount, disk.avail_mb, minimum])
        if disk.avail_mb < minimum:
            problems.append(f"{path} (mounted at {disk.mount}) has {disk.avail_mb} MB free, needs {minimum} MB")
    evidence.table(f"{node.name}: free space", ["path", "mount", "free MB", "needed MB"], rows)
    if problems:
        fail_check(f"not enough free space on {node.name} for a release upgrade", details=problems,
                   fix="free space (`apt-get clean`, `apt-get autoremove --purge` for old kernels, old logs) or "
                       "change the thresholds in [expect] min_free_root_mb / min_free_boot_mb of the profile")


@pytest.mark.preflight
@pytest.mark.postflight
def test_rbd_module(node, reads, phase, notice, evidence):
    """cephcsi on Ubuntu 24.04 cannot load rbd.ko.zst itself (rook #14431): the host must have
    rbd loaded, and loaded again at every boot (/etc/modules-load.d)."""
    found = reads.csi_discovery()
    if not found.ok:
        fail_check(f"cannot tell whether {node.name} needs the rbd module: " + found.problems[0],
                   details=found.evidence, fix="name the RBD node plugin in the profile ([ceph] csi_rbd_daemonset) "
                                               "or say the cluster has none ([ceph] csi_rbd = false)")
    csi = reads.csi_rbdplugin(node.kube_node)
    if csi is None or csi.pod is None:
        evidence.text(f"{node.name}: rbd", "the profile says the cluster has no Ceph RBD CSI ([ceph] csi_rbd = false)"
                      if csi is None else "no RBD node-plugin pod on this node: it mounts no rbd volumes "
                      "(the storage check test_csi_rbdplugin_healthy fails on that)")
        return
    snapshot = reads.snapshot(node.name)
    if snapshot.modules is None:
        fail_check(f"the loaded kernel modules of {node.name} could not be read (`lsmod` failed)",
                   fix="check that kmod is installed on the node")
    loaded = "rbd" in snapshot.modules
    persisted = "rbd" in snapshot.modules_persisted
    evidence.json(f"{node.name}: rbd", {"loaded": loaded, "in /etc/modules-load.d": persisted})
    if loaded and persisted:
        return
    what = " and ".join(w for w, ok in (("not loaded", loaded), ("not loaded at boot (/etc/modules-load.d)", persisted))
                        if not ok)
    if phase == "preflight":
        notice(f"{node.name} runs csi-rbdplugin and the rbd module is {what}; the procedure loads and persists it "
               "in step 10")
        return
    fail_check(f"{node.name} runs csi-rbdplugin but the rbd module is {what}",
               fix="`modprobe rbd && echo rbd > /etc/modules-load.d/rbd.conf` on the node")
