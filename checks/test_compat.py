"""Compatibility: release path, Kubespray and cephcsi support, Kubernetes end of life, known issues,
out-of-band access. The version facts live in nodegate.core.knowledge."""
from __future__ import annotations

import socket

import pytest

from nodegate.plugin.fixtures import fail_check


@pytest.mark.preflight
def test_target_is_next_release(node, releases, reads):
    from nodegate.core.knowledge import next_release

    osr = reads.snapshot(node.name).os_release
    if releases.current is None:
        fail_check(f"{node.name} runs {osr.label}, which is not an Ubuntu release nodegate upgrades",
                   fix="nodegate upgrades Ubuntu 20.04 -> 22.04 -> 24.04; check --node")
    following = next_release(releases.current.version)
    if following is None:
        fail_check(f"{node.name} runs Ubuntu {releases.current.version}, the newest LTS nodegate knows: there is "
                   "nothing to upgrade to", fix="leave the node as it is, or teach nodegate.core.knowledge the next release")
    if releases.target != following:
        fail_check(f"--target-release {releases.target.version} is not the next release for {node.name} "
                   f"(Ubuntu {releases.current.version}; next: {following.version})",
                   fix=f"use --target-release {following.version}: do-release-upgrade moves one LTS at a time")


@pytest.mark.preflight
def test_kubespray_supports_releases(node, releases, profile, notice):
    """The checkout must list the node's current release (else its playbooks, which the procedure
    runs on the node in step 11, are untested there). A target release it does not list yet is a
    notice: upgrade-cluster.yml --limit on one node has run on it, but the checkout should move on."""
    from nodegate.core.knowledge import kubespray_support_note, kubespray_supports

    version = profile.kubespray.version
    if not version:
        fail_check(f"the version of the Kubespray checkout {profile.kubespray.path} is "
                   f"{profile.kubespray.version_source or 'unknown'}",
                   fix='set [kubespray] version = "v2.x.y" in the profile (the release you checked out)')
    current, target = releases.current, releases.target
    if current is not None and kubespray_supports(version, current.version) is False:
        fail_check(f"Kubespray {version} does not support Ubuntu {current.version}, which {node.name} runs",
                   details=[kubespray_support_note(current.version)],
                   fix="move the Kubespray checkout to a version that lists the node's release before changing it "
                       "(v2.25.1 to v2.28.x list 20.04, 22.04 and 24.04)")
    if current is not None and current.version == "20.04" and kubespray_supports(version, "20.04"):
        notice(f"Kubespray {version} supports Ubuntu 20.04, which {node.name} runs, but its support ends with "
               f"v2.29.0 ({kubespray_support_note('20.04')}): move every node off 20.04 before the checkout reaches "
               "v2.29.0")
    if target is not None and kubespray_supports(version, target.version) is False:
        notice(f"Kubespray {version} does not list Ubuntu {target.version} ({kubespray_support_note(target.version)}): "
               f"the procedure's Kubespray run on {node.name} (step 11) uses playbooks not tested there; move the "
               "checkout to a version that lists it when you can")


def _tag(image: str) -> str | None:
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1].split("@", 1)[0] if ":" in last else None


@pytest.mark.preflight
def test_cephcsi_for_target(node, releases, reads, profile, evidence):
    """Before any node reaches 24.04: cephcsi >= v3.12 (rbd.ko.zst crash-loop, rook #14431/#14507,
    ceph-csi #4679). The version is read from the RBD node plugin found by what it is (Rook's
    csi-rbdplugin, ceph-csi-operator's <driver>-nodeplugin, the ceph-csi chart), from its
    DaemonSet and from its pods (a rollout in progress shows both)."""
    from nodegate.core.knowledge import cephcsi_ready_for, semver_key

    found = reads.csi_discovery()
    images: set[str] = set()
    for plugin in found.plugins:
        images.add(plugin.image)
        images |= {c.image for p in reads.pods(plugin.namespace, plugin.label_selector) for c in p.containers
                   if c.name == plugin.container and c.image}
    operator = reads.pods(profile.ceph.namespace, "app=rook-ceph-operator")
    rook = sorted({_tag(c.image) or "?" for p in operator for c in p.containers if c.image})
    evidence.json("cephcsi", {"RBD node plugins": [f"{p.ref} ({p.layout})" for p in found.plugins],
                              "images": sorted(images), "rook operator": rook, "looked for": found.looked_for})
    if releases.target is None or releases.target.version != "24.04":
        return   # the known cephcsi failure is specific to 24.04 nodes
    if not found.ok:
        fail_check("cannot tell whether cephcsi survives Ubuntu 24.04: " + found.problems[0],
                   details=found.problems[1:],
                   fix="restore the RBD node plugin, or name it ([ceph] csi_rbd_daemonset = \"<namespace>/<name>\"), "
                       "or say the cluster has no Ceph RBD CSI ([ceph] csi_rbd = false)")
    if not found.plugins:
        evidence.text("cephcsi for 24.04", "nothing to check: the profile says the cluster has no Ceph RBD CSI "
                                           "([ceph] csi_rbd = false) and none was found")
        return
    versions = sorted({_tag(i) for i in images if _tag(i)}) or [None]
    if None in versions:
        fail_check(f"the cephcsi version of {', '.join(p.ref for p in found.plugins)} is unknown (image(s) "
                   f"{', '.join(sorted(images))} carry no tag)",
                   fix="run a tagged cephcsi image (>= v3.12 before 24.04) so its version can be checked")
    oldest = min(versions, key=lambda v: semver_key(v) if v else (-1,))
    verdict = cephcsi_ready_for("24.04", oldest)
    if not verdict.ok:
        fail_check(f"{verdict.reason} (cluster runs cephcsi {', '.join(v or '?' for v in versions)} in "
                   f"{', '.join(p.ref for p in found.plugins)}, Rook {', '.join(rook) or '?'})", fix=verdict.fix)


@pytest.mark.preflight
@pytest.mark.postflight
def test_kubernetes_not_eol(reads, profile, notice):
    import re

    from nodegate.core.knowledge import kube_minor_eol, kube_minor_eol_date, minor_of

    version = profile.kube_version or reads.server_version()
    if not re.match(r"^v?\d+\.\d+(\.\d+)?", version or ""):
        fail_check(f"the Kubernetes version could not be read (kube_version in the inventory: "
                   f"{profile.kube_version or 'unset'}; API server: {version or 'no answer'})",
                   fix="set [kubernetes] kube_version in the profile, or check the API server's /version")
    if kube_minor_eol(version):
        date = kube_minor_eol_date(version)
        notice(f"Kubernetes {minor_of(version)} (cluster {version}) is past its end of life"
               + (f" ({date.isoformat()})" if date else "") + ": plan a Kubernetes upgrade after the OS upgrades")


@pytest.mark.preflight
def test_kube_version_form(profile, evidence):
    """Kubespray is given kube_version as the inventory writes it; the release decides the form:
    'v1.25.6' until v2.27.x, '1.32.5' from v2.28.0 (its validate_inventory refuses a leading 'v')."""
    from nodegate.core.kubespray_release import kube_version_problem

    evidence.json("kubespray", {"version": profile.kubespray.version, "found by": profile.kubespray.version_source,
                                "kube_version": profile.kube_version})
    if not profile.kube_version:
        fail_check("the cluster's kube_version is unknown, so Kubespray cannot be told to keep it",
                   fix="set kube_version in the inventory's group_vars/k8s_cluster/k8s-cluster.yml "
                       "or [kubernetes] kube_version in the profile")
    problem = kube_version_problem(profile.kube_version, profile.kubespray.version)
    if problem:
        fail_check(problem, fix="write kube_version in the inventory the way this Kubespray release expects")


@pytest.mark.preflight
def test_known_kubespray_issues(profile, notice, evidence):
    from nodegate.core.knowledge import known_issues_for

    issues = known_issues_for(profile.kubespray.version)
    evidence.text("known Kubespray issues", "\n\n".join(f"{i.title}\n  references: {', '.join(i.references)}\n"
                                                         f"  workaround: {i.fix}" for i in issues) or "none")
    for issue in issues:
        notice(f"Kubespray {profile.kubespray.version} has a known issue: {issue.title} "
               f"({', '.join(issue.references)}); workaround: {issue.fix}")


@pytest.mark.preflight
def test_kubespray_docker_task_has_the_downgrade_fix(profile, evidence):
    """kubespray #9114, decided from the checkout before anything changes: with container_manager
    docker, upgrade-cluster.yml reinstalls the pinned docker packages over the node's newer ones,
    and apt refuses the downgrade unless the package task has `force`/`allow_downgrade` (no
    Kubespray release has it, v2.20.0 to v2.29.1)."""
    from nodegate.core.kubespray_tasks import TaskFileError, check_checkout

    manager = profile.expect.container_manager
    if manager != "docker":
        evidence.text("kubespray #9114", f"container_manager {manager} (inventory): Kubespray's docker role, "
                                         "whose package task has the issue, does not run")
        return
    try:
        verdict = check_checkout(profile.kubespray.path)
    except TaskFileError as exc:
        fail_check(f"cannot tell whether the Kubespray checkout has the fix for kubespray #9114: {exc}",
                   fix=f"restore roles/container-engine/docker/tasks/main.yml in {profile.kubespray.path}, or set "
                       "container_manager in the inventory if the cluster does not run docker")
    evidence.text("kubespray #9114", f"{verdict.path}: task \"{verdict.task}\" (line {verdict.task_line}), module "
                                     f"{verdict.module}: " + (f"fixed ({verdict.fix_arg}: true)" if verdict.fixed
                                                             else "no force/allow_downgrade"))
    if not verdict.fixed:
        fail_check(f"kubespray #9114 fix missing: add `{verdict.line_to_add}` to {verdict.path}, task "
                   f"\"{verdict.task}\", after line {verdict.add_after_line} (`{verdict.add_after_text.strip()}`)",
                   details=["without it apt refuses to downgrade the docker packages in step 11, after both reboots, "
                            "and the node stays cordoned on the new release"],
                   fix=verdict.instruction())


def _answers(address: str, ports=(623, 443, 22), timeout: float = 2.0) -> tuple[bool, str]:
    """Whether anything answers at the BMC address: a connection accepted or actively refused
    both prove the controller is up; silence on every port does not."""
    last = ""
    for port in ports:
        try:
            with socket.create_connection((address, port), timeout=timeout):
                return True, f"port {port} accepted a connection"
        except ConnectionRefusedError:
            return True, f"port {port} refused (the host answered)"
        except OSError as exc:
            last = f"port {port}: {exc}"
    return False, last


@pytest.mark.preflight
def test_out_of_band_access(node, notice):
    """A node that hangs on reboot needs its BMC/IPMI/iRMC console."""
    if not node.bmc:
        notice(f"the profile names no out-of-band address for {node.name}: if it hangs on reboot, someone must "
               f"reach its console by other means; add [nodes.{node.name}] bmc = \"<address>\" to the profile")
        return
    ok, how = _answers(node.bmc)
    if not ok:
        fail_check(f"the out-of-band address {node.bmc} of {node.name} does not answer ({how})",
                   fix="check the BMC's network and address before rebooting the node")
