"""Scenario: the control plane and etcd upgraded in a rolling run, on a lab laid out as Kubespray's
HA sample (`nodegate lab up --nodes 5 --control-planes 3`: node1-node3 control plane stacked with
etcd, node4 and node5 workers; real etcd 3.4 members on node1-node3).

1. `--node all` with the `hang-on-reboot` fault on node2: the workers go first (node4, node5), then
   node1, each etcd node through the etcd gate (every member healthy and a quorum left without it
   before; its member healthy and caught up with the leader's raft index after) and each
   control-plane node's kube-apiserver, kube-controller-manager and kube-scheduler mirror pods
   Ready before its uncordon. node2 goes down at its first reboot and stays down: the run stops at
   the control-plane reboot limit, etcd keeps its quorum (read and written from node1 and node3),
   node2's static pods show NotReady, and node3, the next etcd node, is untouched.
2. The fault cleared (the node boots, as after out-of-band access), the same command for the nodes
   left resumes node2 from its journal and upgrades node3: every node ends on 22.04, read on the node.

Its own lab (5 nodes, every service, short boot delays, its own address octet). Five node
upgrades and one control-plane reboot limit: 18-20 min on a 2-core machine shared with other test
runs (first run 12-15 min, the resume 4 min).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labkit import LabAccess, fixed_kubespray_checkout, net_beside, nodegate, ssh, wait_until
from scenariotools import PROCEDURES, QUIET_PLUGINS, write_profile

from nodegate.lab.config import LabConfig

NET = net_beside("control-plane")
LIMITS = dict(reboot_timeout_worker_s=40, reboot_timeout_control_plane_s=60, storage_timeout_s=180,
              lock_stale_after_s=600, settle_s=0)
ETCD_NODES = ("node1", "node2", "node3")
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
_PASSED = re.compile(r"^PASSED \S*test_upgrade\[(node\d)-\d\d-(\w+)\]", re.M)


@pytest.fixture(scope="module")
def ha_lab(tmp_path_factory):
    lab_dir = tmp_path_factory.mktemp("cp") / "lab"
    nodegate("lab", "up", "--dir", str(lab_dir), "--net", str(NET), "--nodes", "5", "--control-planes", "3",
             "--boot-delay", "0.5", "--ready-delay", "0.3")
    try:
        yield LabConfig.load(lab_dir)
    finally:
        nodegate("lab", "down", "--dir", str(lab_dir), check=False)


def release(lab: LabConfig, node: str) -> str:
    return ssh(lab, node, ". /etc/os-release; echo $VERSION_ID").stdout.strip()


def etcdctl(lab: LabConfig, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """etcdctl on ``node`` with Kubespray's /etc/etcd.env, as an operator runs it."""
    return ssh(lab, node, "set -a; . /etc/etcd.env; etcdctl --dial-timeout=2s --command-timeout=5s "
               + " ".join(args), check=check)


def run_procedure(work: Path, profile: Path, nodes: str) -> tuple[int, str]:
    argv = [sys.executable, "-m", "pytest", str(PROCEDURES), "--cluster", str(profile), "--node", nodes,
            "--target-release", "22.04", "--execute", "-v", "-rA", "--color=no", "-p", "no:randomly",
            "-p", "no:cacheprovider", *QUIET_PLUGINS]
    env = {k: v for k, v in os.environ.items() if k != "NODEGATE_CLUSTER"}
    env.update(NODEGATE_REPORTS=str(work / "reports"), ANSIBLE_SSH_CONTROL_PATH_DIR=str(work / "cp"))
    (work / "cp").mkdir(exist_ok=True)
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout + "\n" + done.stderr


def journal(work: Path, node: str) -> list[dict]:
    path = work / "reports" / "runs" / "journal" / "nodegate-lab" / f"{node}-22.04.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def ended(records: list[dict], step: str) -> dict:
    found = [r for r in records if r["step"] == step and r["status"] in ("done", "skipped")]
    assert found, f"no end of step {step}: {[(r['step'], r['status']) for r in records]}"
    return found[-1]


def static_pods(access: LabAccess, node: str) -> dict[str, bool]:
    """component -> Ready, for the mirror pods of the node's control plane."""
    pods = access.kube.list_pods(node=node, namespace="kube-system")
    return {p.labels.get("component", ""): p.ready for p in pods if p.mirror}


def test_rolling_run_over_the_control_plane_with_the_etcd_gate(ha_lab, tmp_path):
    began = time.monotonic()
    work = tmp_path
    access = LabAccess(ha_lab)
    assert [n.name for n in ha_lab.nodes if n.control_plane] == list(ETCD_NODES)
    assert [n.name for n in ha_lab.etcd_nodes] == list(ETCD_NODES)
    assert {release(ha_lab, n.name) for n in ha_lab.nodes} == {"20.04"}
    assert static_pods(access, "node2") == dict.fromkeys(COMPONENTS, True)
    checkout = fixed_kubespray_checkout(ha_lab, work)
    profile = write_profile(ha_lab, work / "ha.toml", kubespray=checkout, **LIMITS)
    boots3 = json.loads((ha_lab.dir / "nodes" / "node3" / "state.json").read_text())["boot_count"]

    # -- 1. --node all, node2 hangs at its first reboot ------------------------------------------------
    nodegate("lab", "fault", "hang-on-reboot", "--node", "node2", "--dir", str(ha_lab.dir))
    try:
        rc, text = run_procedure(work, profile, "all")
        first_s = time.monotonic() - began
        (work / "run-1.log").write_text(text)
        no_traceback_text(text)
        assert rc == 1, text[-4000:]
        order = list(dict.fromkeys(node for node, _ in _PASSED.findall(text)))
        assert order == ["node4", "node5", "node1", "node2"], order          # workers first, control plane last
        assert re.search(r"FAILED \S*test_upgrade\[node2-08-reboot\]", text), text[-4000:]
        assert "did not come back within 60s after the reboot (role control-plane limit)" in text, text[-4000:]
        assert "test_upgrade[node3-01-gate] SKIPPED" in text, text[-4000:]

        for node in ("node4", "node5"):        # workers: nothing to gate, said so
            records = journal(work, node)
            assert "not in the inventory's etcd group" in ended(records, "etcd_quorum")["detail"]
            assert "not in the inventory's kube_control_plane group" in ended(records, "control_plane_pods")["detail"]
            assert records[-1]["step"] == "complete"
        node1 = journal(work, "node1")
        assert "with node1's member down 2 of 3 remain (quorum 2)" in ended(node1, "etcd_quorum")["detail"]
        assert "caught up" in ended(node1, "etcd_caught_up")["detail"]
        assert "Ready: kube-system/kube-apiserver-node1" in ended(node1, "control_plane_pods")["detail"]
        order1 = [r["step"] for r in node1 if r["status"] == "done"]
        assert order1.index("control_plane_pods") < order1.index("uncordon")
        node2 = journal(work, "node2")
        assert "with node2's member down 2 of 3 remain" in ended(node2, "etcd_quorum")["detail"]

        # node2 is down: quorum intact, read and written from the other members
        health = json.loads(etcdctl(ha_lab, "node3", "endpoint", "health", "-w", "json", check=False).stdout)
        by_host = {h["endpoint"].split("//")[1].split(":")[0]: h["health"] for h in health}
        assert by_host == {ha_lab.node("node1").address: True, ha_lab.node("node2").address: False,
                           ha_lab.node("node3").address: True}, health
        etcdctl(ha_lab, "node1", "put", "nodegate-scenario", "quorum-kept")
        assert etcdctl(ha_lab, "node3", "get", "nodegate-scenario", "--print-value-only").stdout.strip() == "quorum-kept"
        # the down node's control plane shows NotReady (the node lifecycle controller's view)
        wait_until(lambda: static_pods(access, "node2") == dict.fromkeys(COMPONENTS, False), timeout=60,
                   what="node2's static pods NotReady while it is down")
        # the next etcd node untouched
        assert release(ha_lab, "node3") == "20.04"
        assert not access.kube.node("node3").unschedulable
        assert json.loads((ha_lab.dir / "nodes" / "node3" / "state.json").read_text())["boot_count"] == boots3
        assert journal(work, "node3") == []
    finally:
        nodegate("lab", "fault", "hang-on-reboot", "--clear", "--dir", str(ha_lab.dir))

    # -- 2. node2 booted out of band: the same command for the nodes left resumes it, then node3 ------------
    rc, text = run_procedure(work, profile, "node2,node3")
    (work / "run-2.log").write_text(text)
    shutil.rmtree(work / "cp", ignore_errors=True)
    no_traceback_text(text)
    assert rc == 0, text[-5000:]
    assert list(dict.fromkeys(node for node, _ in _PASSED.findall(text))) == ["node2", "node3"]
    assert "resuming the upgrade of node2" in text, text[-4000:]
    for node in ETCD_NODES:
        records = journal(work, node)
        assert records[-1]["step"] == "complete", records[-3:]
        assert "caught up" in ended(records, "etcd_caught_up")["detail"]
    assert "with node3's member down 2 of 3 remain" in ended(journal(work, "node3"), "etcd_quorum")["detail"]
    for node in ha_lab.nodes:                # verified on the node, and in the cluster
        assert release(ha_lab, node.name) == "22.04", node.name
        assert not access.kube.node(node.name).unschedulable, node.name
    assert static_pods(access, "node2") == dict.fromkeys(COMPONENTS, True)
    assert all(json.loads(etcdctl(ha_lab, "node2", "endpoint", "health", "-w", "json").stdout)[i]["health"]
               for i in range(3))
    access.kube.close()
    print(f"\nrolling run over the control plane: first run (4 nodes, node2 hung) {first_s:.0f}s, "
          f"whole scenario {time.monotonic() - began:.0f}s")


def no_traceback_text(text: str) -> None:
    assert "Traceback (most recent call last)" not in text, text[-4000:]

