"""`nodegate lab up/down/status`: idempotent up, nothing left behind by down, any size from 1 to 16."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from nodegate.lab.node import mounted_paths, pid_alive

pytestmark = pytest.mark.lab


def lab_processes(lab_dir: Path) -> dict[str, int]:
    """Every PID the lab recorded, plus the supervisor's."""
    pids = {}
    for path in [lab_dir / "supervisor.pid", *(lab_dir / "pids").glob("*.pid")]:
        if path.exists():
            pids[path.stem] = int(path.read_text().split()[0])
    return pids


def assert_nothing_left(lab_dir: Path, pids: dict[str, int]) -> None:
    alive = {name: pid for name, pid in pids.items() if pid_alive(pid)}
    assert not alive, f"still running after down: {alive}"
    mounts = [p for p in mounted_paths() if p.startswith(str(lab_dir) + "/")]
    assert not mounts, f"still mounted after down: {mounts}"
    assert not list((lab_dir / "pids").glob("*.pid")), "pid files left behind"
    assert not (lab_dir / "supervisor.pid").exists()


def test_up_twice_changes_nothing(lab, cli):
    before = {n.name: (lab.dir / "nodes" / n.name / "state.json").read_text() for n in lab.nodes}
    pids = lab_processes(lab.dir)
    result = cli("lab", "up", "--dir", str(lab.dir), "--nodes", "4", "--net", str(lab.net))
    assert "already running" in result.stdout and "nothing changed" in result.stdout
    after = {n.name: (lab.dir / "nodes" / n.name / "state.json").read_text() for n in lab.nodes}
    assert after == before
    assert lab_processes(lab.dir) == pids


def test_status_shows_every_node(lab, cli):
    text = cli("lab", "status", "--dir", str(lab.dir)).stdout
    for node in lab.nodes:
        line = next(line for line in text.splitlines() if line.startswith(node.name + " "))
        assert " up " in line and node.address in line and ",".join(node.roles) in line
        assert "Ubuntu 20.04.5 LTS" in line  # the release's pretty name: every node starts as the seed's
    data = json.loads(cli("lab", "status", "--dir", str(lab.dir), "--json").stdout)
    assert data["running"] and [n["state"] for n in data["nodes"]] == ["up"] * len(lab.nodes)
    assert all(n["boot_count"] >= 1 and n["release"] != "?" for n in data["nodes"])


def test_profile_files(lab):
    toml = (lab.dir / "cluster.toml").read_text()
    import tomllib

    profile = tomllib.loads(toml)
    assert profile["ssh"]["config"] == str(lab.dir / "ssh/config")
    assert profile["kubernetes"]["kubeconfig"] == str(lab.dir / "kubeconfig")
    assert profile["kubespray"]["inventory"] == str(lab.dir / "kubespray/inventory/mycluster/hosts.yaml")
    assert "held_packages" not in profile["expect"], "the lab's holds follow container_manager (docker)"
    from nodegate.profile.load import load_profile

    assert load_profile(lab.dir / "cluster.toml").expect.held_packages == ("containerd.io", "docker-ce", "docker-ce-cli")
    import yaml

    kube = yaml.safe_load((lab.dir / "kubeconfig").read_text())
    assert kube["current-context"] == "nodegate-lab"
    assert kube["clusters"][0]["cluster"]["server"] == lab.api_url
    assert kube["users"][0]["user"]["token"] == lab.token
    assert oct((lab.dir / "kubeconfig").stat().st_mode & 0o777) == "0o600"


def test_single_node_lab_up_and_down_leaves_nothing(make_lab, cli, node_ssh):
    config = make_lab.up(nodes=1)
    assert [(n.name, n.roles) for n in config.nodes] == [("node1", ("control-plane", "etcd"))]
    assert node_ssh(config, "node1", "hostname").stdout.strip() == "node1"
    pids = lab_processes(config.dir)
    assert len(pids) == 3, pids  # supervisor, node1 (its sshd), node1's unshare
    started = time.monotonic()
    result = cli("lab", "down", "--dir", str(config.dir))
    assert "is down" in result.stdout and "cleaned up by PID" not in result.stdout
    print(f"lab down (1 node, bare): {time.monotonic() - started:.2f} s")
    assert_nothing_left(config.dir, pids)
    gone = node_ssh(config, "node1", "true", check=False, multiplex=False)
    assert gone.returncode == 255 and "Connection refused" in gone.stderr


def test_eight_node_lab_has_right_nodes_and_roles(make_lab, cli, node_ssh):
    started = time.monotonic()
    config = make_lab.up(nodes=8)
    took = time.monotonic() - started
    print(f"lab up (8 nodes, bare): {took:.2f} s")
    roles = {n.name: n.roles for n in config.nodes}
    assert roles == {
        "node1": ("control-plane", "etcd"), "node2": ("control-plane", "etcd"), "node3": ("worker", "etcd"),
        **{f"node{i}": ("worker",) for i in range(4, 9)}}
    for node in config.nodes:
        assert node_ssh(config, node.name, "hostname").stdout.strip() == node.name
        assert node.address == f"127.{config.net}.1.{node.index}"
    data = json.loads(cli("lab", "status", "--dir", str(config.dir), "--json").stdout)
    assert [n["state"] for n in data["nodes"]] == ["up"] * 8
    pids = lab_processes(config.dir)
    cli("lab", "down", "--dir", str(config.dir))
    assert_nothing_left(config.dir, pids)


def test_down_after_supervisor_killed_leaves_nothing(make_lab, cli):
    config = make_lab.up(nodes=2)
    pids = lab_processes(config.dir)
    os.kill(pids["supervisor"], signal.SIGKILL)
    result = cli("lab", "down", "--dir", str(config.dir))
    assert "cleaned up by PID" in result.stdout
    assert_nothing_left(config.dir, pids)


def test_unknown_node_is_refused_by_name(lab, cli):
    result = cli("lab", "reset", "node99", "--dir", str(lab.dir), check=False)
    assert result.returncode == 2
    assert "node99" in result.stderr and "node1" in result.stderr


def test_a_node_that_cannot_boot_ends_lab_up_with_a_message_naming_it_and_its_log(make_lab, cli):
    """node2's SSH address is taken (a socket bound, not listening: `lab up`'s address check passes,
    the node's sshd cannot bind): `lab up` stops as soon as the boot fails, with a message naming
    node2 and its log, no traceback; so does `lab reset node2`; `lab down` then leaves nothing."""
    import socket

    net = make_lab.next_net
    make_lab.next_net += 1
    lab_dir = make_lab.base / "unbootable"
    make_lab.started.append(lab_dir)
    with socket.socket() as taken:
        taken.bind((f"127.{net}.1.2", 22))
        started = time.monotonic()
        result = cli("lab", "up", "--dir", str(lab_dir), "--nodes", "2", "--net", str(net), "--bare",
                     "--timeout", "300", check=False)
        took = time.monotonic() - started
        # a reset of that node fails as fast, and says why, instead of waiting out its bound
        reset = cli("lab", "reset", "node2", "--dir", str(lab_dir), check=False)
    assert reset.returncode == 2 and "node2 failed to boot" in reset.stderr, reset.stdout + reset.stderr
    assert "Traceback" not in reset.stderr, reset.stderr
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "node2 failed to boot" in result.stderr, result.stderr
    assert str(lab_dir / "logs" / "node2.log") in result.stderr, result.stderr
    # it stopped at the failed boot, not at the end of its --timeout 300 waiting for node2
    assert took < 300, f"lab up took {took:.0f} s to report a node that failed at once"
    pids = lab_processes(lab_dir)
    cli("lab", "down", "--dir", str(lab_dir))
    assert_nothing_left(lab_dir, pids)
