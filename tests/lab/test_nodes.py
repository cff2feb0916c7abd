"""The lab's nodes are real: sshd as PID 1 in its own namespaces, key-only root, reboots with a new boot id."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from nodegate.lab import apiclient
from nodegate.lab.node import NodeRuntime, NodeState

pytestmark = pytest.mark.lab


def state(lab, node: str) -> NodeState:
    return NodeRuntime(lab, lab.node(node)).read_state()


def test_every_node_is_its_own_machine(lab, lab_ssh):
    boot_ids = set()
    for node in lab.nodes:
        out = lab_ssh(node.name, "hostname; cat /proc/1/comm; cat /proc/sys/kernel/random/boot_id; "
                                 "ps -e --no-headers | wc -l; cat /etc/hostname").stdout.split()
        hostname, pid1, boot_id, nprocs, etc_hostname = out
        assert hostname == node.name == etc_hostname
        assert pid1 == "sshd", f"{node.name}: PID 1 is {pid1}, not sshd"
        assert int(nprocs) < 10, f"{node.name} sees {nprocs} processes: not in its own PID namespace"
        boot_ids.add(boot_id)
        assert state(lab, node.name).state == "up"
    assert len(boot_ids) == len(lab.nodes), "nodes share a boot id"


def test_every_node_has_its_own_machine_id_reported_by_its_kubelet(lab, lab_ssh):
    """machine-id(5): a 32-hex-digit id written once per installed system; the kubelet reports it
    as status.nodeInfo.machineID."""
    ids = {}
    for node in lab.nodes:
        ids[node.name] = lab_ssh(node.name, "cat /etc/machine-id").stdout.strip()
        assert len(ids[node.name]) == 32 and int(ids[node.name], 16) >= 0, ids[node.name]
        request = urllib.request.Request(f"{lab.api_url}/api/v1/nodes/{node.name}")
        with apiclient.urlopen(lab, request) as response:
            assert json.load(response)["status"]["nodeInfo"]["machineID"] == ids[node.name]
    assert len(set(ids.values())) == len(lab.nodes), ids


def test_root_login_is_key_only(lab):
    node = lab.nodes[0]
    # No key offered, password auth requested: the node must refuse.
    result = subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "PreferredAuthentications=password,keyboard-interactive", f"root@{node.address}", "true"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_host_keys_are_pinned_per_node(lab):
    known = (lab.dir / "ssh/known_hosts").read_text().splitlines()
    assert len(known) == len(lab.nodes)
    assert len({line.split()[2] for line in known}) == len(lab.nodes), "nodes share a host key"
    config = (lab.dir / "ssh/config").read_text()
    assert "StrictHostKeyChecking yes" in config and "ControlMaster auto" in config


def test_reboot_cycle(lab, lab_ssh, node_ssh, poll):
    node = lab.nodes[-1].name
    before = state(lab, node)
    boot_id = lab_ssh(node, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    lab_ssh(node, "touch /run/marker-from-last-boot && ls /run/marker-from-last-boot")
    assert boot_id == before.boot_id
    asked_at = float(lab_ssh(node, "date +%s.%N").stdout)
    started = time.monotonic()
    lab_ssh(node, "nohup reboot >/dev/null 2>&1 &", check=False)

    def refused():
        r = node_ssh(lab, node, "true", check=False, timeout=10, multiplex=False)
        return r.returncode == 255 and "Connection refused" in r.stderr and r.stderr

    poll(refused, timeout=10, interval=0.05, what=f"{node} refusing SSH")
    down_at = time.monotonic() - started
    # sshd (PID 1) is gone the moment SSH is refused; the supervisor records it a moment later.
    down_state = poll(lambda: (s := state(lab, node)).state == "down" and s, timeout=30, interval=0.05,
                      what=f"{node} recorded down")
    assert down_state.state == "down" and down_state.pid is None

    def back():
        return node_ssh(lab, node, "cat /proc/sys/kernel/random/boot_id", check=False, timeout=10).stdout.strip()

    new_boot_id = poll(back, timeout=lab.boot_delay_s + 15, interval=0.1, what=f"{node} back")
    back_at = time.monotonic() - started
    after = state(lab, node)
    assert new_boot_id != boot_id and after.boot_id == new_boot_id
    assert after.boot_count == before.boot_count + 1
    assert after.pid != before.pid
    assert lab_ssh(node, "ls /run/marker-from-last-boot", check=False).returncode != 0, "/run survived the reboot"
    assert lab_ssh(node, "test -d /run/sshd && test -f /run/nodegate-lab/modules").returncode == 0
    assert back_at >= lab.boot_delay_s, (down_at, back_at)     # it waited out the boot delay
    # proc(5): /proc/uptime counts from the boot and /proc/stat's btime is when it began; the node
    # has its own boot clock (a time namespace), so both start again at each of its boots
    uptime, now, btime = lab_ssh(node, "cut -d' ' -f1 /proc/uptime; date +%s.%N; "
                                       "awk '/^btime/ {print $2}' /proc/stat").stdout.split()
    booted = float(now) - float(uptime)
    assert asked_at < booted <= float(now), (asked_at, booted, uptime)     # booted after the reboot was asked
    assert abs(int(btime) - booted) <= 2, (btime, booted)
    print(f"reboot cycle: down after {down_at:.2f} s, SSH back after {back_at:.2f} s")


def test_reset_puts_node_back_and_ready(lab, lab_ssh, cli):
    node = lab.nodes[-1].name
    lab_ssh(node, "echo changed > /root/reset-me && mkdir -p /etc/nodegate-test && touch /etc/nodegate-test/x")
    before = state(lab, node)
    machine_before = lab_ssh(node, "cat /etc/machine-id").stdout.strip()
    started = time.monotonic()
    result = cli("lab", "reset", node, "--dir", str(lab.dir))
    took = time.monotonic() - started
    assert f"{node} reset and up again" in result.stdout and f"{node} Ready" in result.stdout, result.stdout
    print(f"lab reset {node}: {took:.1f} s")
    # Ready as soon as the command returns: a preflight started on its word meets a Ready node
    request = urllib.request.Request(f"{lab.api_url}/api/v1/nodes/{node}")
    with apiclient.urlopen(lab, request) as response:
        conditions = json.load(response)["status"]["conditions"]
    assert {"type": "Ready", "status": "True"}.items() <= next(c for c in conditions if c["type"] == "Ready").items()
    out = lab_ssh(node, "ls /root/reset-me /etc/nodegate-test 2>&1; hostname", check=False).stdout
    assert "No such file" in out and node in out
    after = state(lab, node)
    machine = lab_ssh(node, "cat /etc/machine-id").stdout.strip()
    assert len(machine) == 32 and machine != machine_before     # reset: a new installation, its own id
    assert after.state == "up" and after.boot_id != before.boot_id
    print(f"reset {node}: {took:.2f} s")


def test_state_files_follow_the_contract(lab):
    for node in lab.nodes:
        data = json.loads((lab.dir / "nodes" / node.name / "state.json").read_text())
        assert set(data) == {"name", "state", "pid", "boot_id", "boot_count", "changed_at"}
        assert data["name"] == node.name and data["state"] == "up" and data["boot_count"] >= 1
        assert (lab.dir / "pids" / f"{node.name}.pid").read_text().strip() == str(data["pid"])
        assert Path(f"/proc/{data['pid']}/comm").read_text().strip() == "sshd"
