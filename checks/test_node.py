"""The node as the Kubernetes API and its own /etc/os-release describe it."""
from __future__ import annotations

import pytest

from nodegate.plugin.fixtures import fail_check


def _status(reads, node, evidence):
    status = reads.node_status(node.kube_node)
    if status is None:
        known = ", ".join(sorted(reads.node_statuses())) or "none"
        fail_check(f"node {node.kube_node} (inventory host {node.name}) is not in the cluster (the API lists: {known})",
                   fix=f"check the Kubernetes node name of {node.name}: the inventory's kube_override_hostname, or "
                       f"[nodes.{node.name}] kube_node in the profile; if the node was removed, re-join it with "
                       "Kubespray (scale.yml --limit=" + node.name + ")")
    evidence.json(f"{node.name}: node status", dict(status.raw))
    return status


@pytest.mark.preflight
@pytest.mark.postflight
def test_node_ready(node, reads, evidence):
    status = _status(reads, node, evidence)
    if not status.is_ready:
        ready = status.condition("Ready")
        why = f"{ready.reason}: {ready.message}" if ready else "no Ready condition"
        fail_check(f"node {node.name} is not Ready (Ready={status.ready}; {why})",
                   fix=f"look at the kubelet on {node.name} (`systemctl status kubelet`, `journalctl -u kubelet`) "
                       "and wait until `kubectl get node` shows Ready")


@pytest.mark.preflight
@pytest.mark.postflight
def test_node_no_pressure(node, reads, evidence):
    status = _status(reads, node, evidence)
    if status.pressures:
        details = [f"{c.type}={c.status} ({c.reason}: {c.message})" for c in status.conditions
                   if c.type in status.pressures]
        fail_check(f"node {node.name} reports {len(status.pressures)} pressure condition(s): "
                   f"{', '.join(status.pressures)}", details=details,
                   fix="free memory/disk/PIDs on the node (or fix its network) before changing it: a drain moves "
                       "its pods onto the other nodes")


@pytest.mark.preflight
@pytest.mark.postflight
def test_node_schedulable(node, reads, evidence, phase):
    status = _status(reads, node, evidence)
    if not status.unschedulable:
        return
    by = f" by nodegate run {status.cordoned_by}" if status.cordoned_by else " (not by nodegate)"
    if phase == "preflight":
        fail_check(f"node {node.name} is cordoned already{by}: Kubespray neither drains nor uncordons a node it "
                   "did not cordon itself, and another upgrade may be under way",
                   fix=f"find out who cordoned it; if nothing is in progress, `kubectl uncordon {node.name}` and "
                       "run the preflight again")
    fail_check(f"node {node.name} is still cordoned{by} after the upgrade",
               fix=f"`kubectl uncordon {node.name}` once the postflight checks pass (nodegate's procedure "
                   "uncordons in step 13 only a node it cordoned itself)")


@pytest.mark.preflight
@pytest.mark.postflight
def test_kubelet_version(node, reads, profile, evidence):
    status = _status(reads, node, evidence)
    expected = profile.kube_version
    origin = f"kube_version in the Kubespray inventory {profile.kubespray.inventory_dir}"
    if not expected:
        expected, origin = reads.server_version(), "the API server's version (the inventory sets no kube_version)"
    from nodegate.core.kubespray_release import same_kube_version

    if not same_kube_version(status.kubelet_version, expected):   # v2.28+ writes kube_version without 'v'
        fail_check(f"the kubelet on {node.name} is {status.kubelet_version or 'unknown'}, expected {expected} "
                   f"(from {origin})",
                   fix=f"run Kubespray upgrade-cluster.yml -e kube_version={expected} --limit={node.name} so the "
                       "node matches the cluster before changing its OS")


@pytest.mark.preflight
@pytest.mark.postflight
def test_os_release_matches_phase(node, reads, releases, evidence):
    status = _status(reads, node, evidence)
    snapshot = reads.snapshot(node.name)
    osr = snapshot.os_release
    evidence.text(f"{node.name}: /etc/os-release", snapshot.results[0].stdout)
    problems = []
    if status.os_image != (osr.pretty_name or ""):
        problems.append(f"the API's osImage is {status.os_image!r} but /etc/os-release says {osr.pretty_name!r}: "
                        "the kubelet reads the OS once when it starts, so the node was not rebooted since its "
                        "release changed (or the kubelet did not restart)")
    expected = releases.expected
    if expected is None:
        problems.append(f"nodegate cannot tell which release {node.name} should run in {releases.phase} "
                        f"(it runs {osr.label})")
    elif (osr.id or "").lower() != "ubuntu" or osr.version_id != expected.version:
        when = "before the upgrade" if releases.phase == "preflight" else "after the upgrade"
        problems.append(f"{node.name} runs {osr.label} (VERSION_ID {osr.version_id}); expected Ubuntu "
                        f"{expected.version} ({expected.codename}) {when}")
    if problems:
        fix = (f"reboot {node.name} so the kubelet reports the running OS" if len(problems) == 1
               and problems[0].startswith("the API's osImage") else
               "check --node and --target-release; after a release upgrade the node must be rebooted "
               "(procedure steps 8-9)")
        fail_check(f"the release of {node.name} does not match the {releases.phase} expectation", details=problems,
                   fix=fix)
