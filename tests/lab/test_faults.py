"""`nodegate lab fault`: each fault on and off, against the running lab."""
from __future__ import annotations

import json
import time

import pytest

from nodegate.lab.node import NodeRuntime

pytestmark = pytest.mark.lab


def faults_json(lab) -> dict:
    path = lab.dir / "faults.json"
    return json.loads(path.read_text()) if path.exists() else {}


def node_state(lab, node: str) -> str:
    return NodeRuntime(lab, lab.node(node)).read_state().state


def test_list_names_every_fault(lab, cli):
    out = cli("lab", "fault", "--list", "--dir", str(lab.dir)).stdout
    for name in ("hang-on-reboot", "held-version-drift", "pending-updates", "pdb-block", "api-flaky",
                 "csi-rbd-broken", "ceph-warn"):
        assert name in out


def test_unknown_fault_or_node_changes_nothing(lab, cli):
    before = faults_json(lab)
    bad_fault = cli("lab", "fault", "melt-down", "--node", "node1", "--dir", str(lab.dir), check=False)
    assert bad_fault.returncode == 2
    assert "melt-down" in bad_fault.stderr and "hang-on-reboot" in bad_fault.stderr
    bad_node = cli("lab", "fault", "hang-on-reboot", "--node", "node42", "--dir", str(lab.dir), check=False)
    assert bad_node.returncode == 2
    assert "node42" in bad_node.stderr and "node1" in bad_node.stderr
    assert faults_json(lab) == before


def test_hang_on_reboot_holds_node_down_until_cleared(lab, cli, lab_ssh, poll):
    node = lab.nodes[-1].name
    cli("lab", "fault", "hang-on-reboot", "--node", node, "--dir", str(lab.dir))
    assert faults_json(lab)["hang-on-reboot"]["nodes"] == [node]
    boots = NodeRuntime(lab, lab.node(node)).read_state().boot_count
    supervisor_log = lab.dir / "logs" / "supervisor.log"
    held = f"{node} stays down (fault hang-on-reboot)"
    seen = supervisor_log.read_text().count(held)
    lab_ssh(node, "nohup reboot >/dev/null 2>&1 &", check=False)
    poll(lambda: node_state(lab, node) == "down", timeout=10, what=f"{node} down")
    # where a normal reboot would wait out boot_delay_s and boot, the supervisor decides to hold it
    poll(lambda: supervisor_log.read_text().count(held) > seen, timeout=60, what=f"the supervisor holding {node} down")
    assert node_state(lab, node) == "down", "the node came back despite hang-on-reboot"
    assert lab_ssh(node, "true", check=False, multiplex=False).returncode == 255
    status = json.loads(cli("lab", "status", "--json", "--dir", str(lab.dir)).stdout)
    assert next(n for n in status["nodes"] if n["name"] == node)["faults"] == ["hang-on-reboot"]
    out = cli("lab", "fault", "hang-on-reboot", "--node", node, "--clear", "--dir", str(lab.dir)).stdout
    assert "cleared" in out
    poll(lambda: node_state(lab, node) == "up", timeout=10, what=f"{node} booted after clearing")
    assert lab_ssh(node, "hostname").stdout.strip() == node
    assert NodeRuntime(lab, lab.node(node)).read_state().boot_count == boots + 1
    assert "hang-on-reboot" not in faults_json(lab)


@pytest.mark.parametrize("fault,args", [
    ("pdb-block", ["--node", "node3"]),
    ("csi-rbd-broken", ["--node", "node4"]),
    ("api-flaky", ["--ratio", "0.3", "--for", "60"]),
])
def test_registered_faults_on_and_off(lab, cli, fault, args):
    before = time.time()
    cli("lab", "fault", fault, *args, "--dir", str(lab.dir))
    entry = faults_json(lab)[fault]
    assert before - 1 <= entry["since"] <= time.time()
    if "--node" in args:
        assert entry["nodes"] == [args[1]]
    else:
        # --for 60: sixty seconds from when it was set, however long the command took
        assert entry["nodes"] == [] and entry["ratio"] == 0.3 and before + 60 <= entry["until"] <= time.time() + 60
    cli("lab", "fault", fault, "--clear", "--dir", str(lab.dir))
    assert fault not in faults_json(lab)


def test_ceph_warn_on_and_off(lab, cli):
    from nodegate.lab.ceph import LabCeph

    ceph = LabCeph(lab)
    cli("lab", "fault", "ceph-warn", "--dir", str(lab.dir))
    try:
        health = ceph.health()
        assert health["status"] == "HEALTH_WARN", health
        assert "ceph-warn" in faults_json(lab)
    finally:
        cli("lab", "fault", "ceph-warn", "--clear", "--dir", str(lab.dir))
    assert "ceph-warn" not in faults_json(lab)
    assert ceph.wait_healthy(30).truly_healthy


def test_held_version_drift_on_and_off(lab, cli, lab_ssh):
    node = lab.nodes[-1].name

    def containerd() -> tuple[str, str]:
        line = lab_ssh(node, "dpkg -l containerd.io | grep containerd.io").stdout.split()
        return line[0], line[2]

    state, version = containerd()
    assert state == "hi"
    out = cli("lab", "fault", "held-version-drift", "--node", node, "--dir", str(lab.dir)).stdout
    drifted_state, drifted = containerd()
    assert drifted_state == "hi" and drifted != version, out
    cli("lab", "fault", "held-version-drift", "--node", node, "--clear", "--dir", str(lab.dir))
    assert containerd() == ("hi", version)
    assert "held-version-drift" not in faults_json(lab)


def test_pending_updates_on_and_off(lab, cli, lab_ssh):
    node = lab.nodes[-1].name

    def upgradable() -> set[str]:
        out = lab_ssh(node, "apt list --upgradable 2>/dev/null | grep / | cut -d/ -f1").stdout
        return set(out.split())

    before = upgradable()
    cli("lab", "fault", "pending-updates", "--node", node, "--dir", str(lab.dir))
    during = upgradable()
    assert during - before, f"no new upgradable package (before {before}, during {during})"
    cli("lab", "fault", "pending-updates", "--node", node, "--clear", "--dir", str(lab.dir))
    assert upgradable() == before
