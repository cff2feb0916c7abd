"""`nodegate lab up/down/status`: idempotent up, nothing left behind by down, any size from 1 to 16."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from labkit import debian_kubectl

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
    # the default lab is reached as a Kubespray cluster is: HTTPS with its own CA, admin.conf's
    # client certificate, and SSH as `ubuntu` with sudo
    assert lab.api_tls and lab.api_url == f"https://{lab.api_address}:{lab.api_port}"
    assert kube["clusters"][0]["cluster"]["server"] == lab.api_url
    assert kube["clusters"][0]["cluster"]["certificate-authority-data"]
    assert kube["users"][0]["name"] == "kubernetes-admin"
    assert set(kube["users"][0]["user"]) == {"client-certificate-data", "client-key-data"}
    assert lab.token not in (lab.dir / "kubeconfig").read_text()
    assert oct((lab.dir / "kubeconfig").stat().st_mode & 0o777) == "0o600"
    assert profile["ssh"]["user"] == "ubuntu" and lab.ssh_user == "ubuntu"
    hosts = yaml.safe_load((lab.dir / "kubespray/inventory/mycluster/hosts.yaml").read_text())["all"]
    assert hosts["vars"]["ansible_user"] == "ubuntu"


def test_both_kubectls_get_nodes_with_the_default_kubeconfig(lab):
    """The image's kubectl (on the PATH) and Debian's (kubernetes-client 1.20) both verify the lab's
    serving certificate against the kubeconfig's CA and authenticate with its client certificate."""
    versions = set()
    for binary in (shutil.which("kubectl") or "/usr/bin/kubectl", str(debian_kubectl())):
        done = subprocess.run([binary, "--kubeconfig", str(lab.dir / "kubeconfig"), "get", "nodes", "-o", "name"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{binary}: {done.stderr}"
        assert done.stdout.split() == [f"node/{n.kube_name}" for n in lab.nodes], (binary, done.stdout)
        version = subprocess.run([binary, "version", "--client", "-o", "json"], capture_output=True, text=True,
                                 timeout=60)
        versions.add(json.loads(version.stdout)["clientVersion"]["gitVersion"])
    assert len(versions) == 2, f"one kubectl twice: {versions}"


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


def test_control_planes_lays_out_kubespray_ha_and_refuses_more_than_the_nodes(tmp_path, cli):
    """--control-planes 3: node1-node3 control plane stacked with etcd, the rest workers (Kubespray's
    HA sample); more control-plane nodes than nodes is refused before anything starts."""
    from nodegate.lab.config import LabConfig

    config = LabConfig.new(tmp_path / "layout", 5, net=9, control_planes=3)
    assert {n.name: n.roles for n in config.nodes} == {
        **{f"node{i}": ("control-plane", "etcd") for i in (1, 2, 3)}, "node4": ("worker",), "node5": ("worker",)}
    refused = cli("lab", "up", "--dir", str(tmp_path / "lab"), "--nodes", "5", "--control-planes", "6", check=False)
    assert refused.returncode != 0 and "--control-planes must be 1 to --nodes (5), not 6" in refused.stderr, refused
    assert not (tmp_path / "lab" / "lab.json").exists()


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


@pytest.mark.parametrize("racks", ["1", "5"])
def test_racks_outside_two_to_the_node_count_are_refused_before_anything_starts(cli, tmp_path, racks):
    result = cli("lab", "up", "--dir", str(tmp_path / "lab"), "--nodes", "4", "--racks", racks, check=False)
    assert result.returncode != 0 and "--racks must be 2 to the number of nodes (4)" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "lab").exists()
