"""The lab's etcd: real etcd 3.4 members (Debian etcd-server) on the etcd nodes, via LabEtcd."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from labkit import net_beside

from nodegate.core.errors import UsageError
from nodegate.lab.config import LabConfig
from nodegate.lab.etcd import LabEtcd

pytestmark = pytest.mark.lab

NET = net_beside("lab-etcd")


@pytest.fixture
def etcd(tmp_path):
    lab = LabEtcd(LabConfig.new(tmp_path, 4, net=NET))
    try:
        lab.create(timeout=30)
        yield lab
    finally:
        lab.destroy()


def member_pids(lab: LabEtcd) -> list[int]:
    return [int(p.read_text()) for p in lab.pids.glob("etcd-*.pid")]


def listening(pid: int) -> set[str]:
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3] for line in out.splitlines() if f"pid={pid}," in line}


def test_three_members_on_their_nodes_are_healthy(etcd: LabEtcd):
    assert etcd.endpoints() == [f"http://127.{NET}.1.{i}:2379" for i in (1, 2, 3)]
    assert etcd.health() == {"node1": True, "node2": True, "node3": True}
    pid = int((etcd.pids / "etcd-node2.pid").read_text())
    assert listening(pid) == {f"127.{NET}.1.2:2379", f"127.{NET}.1.2:2380"}
    # etcdctl 3.4 prints endpoint health on stderr, one line per member.
    out = etcd.etcdctl("endpoint", "health")
    assert out.returncode == 0
    assert f"http://127.{NET}.1.1:2379 is healthy: successfully committed proposal" in out.stderr
    members = etcd.etcdctl("member", "list").stdout
    assert sorted(line.split(", ")[2] for line in members.splitlines()) == ["node1", "node2", "node3"]


def test_stopped_member_is_unhealthy_and_quorum_holds_until_restart(etcd: LabEtcd):
    etcd.stop_member("node2")
    assert not etcd.member_running("node2")
    assert etcd.member_running("node1") and etcd.member_running("node3")
    assert etcd.health() == {"node1": True, "node2": False, "node3": True}
    out = etcd.etcdctl("endpoint", "health")
    assert out.returncode != 0
    assert f"http://127.{NET}.1.2:2379 is unhealthy: failed to commit proposal: " \
           "context deadline exceeded" in out.stderr
    assert "Error: unhealthy cluster" in out.stderr
    # Two of three still commit writes.
    assert etcd.etcdctl("put", "lab-key", "v1").returncode == 0
    etcd.start_member("node2")
    etcd.wait_healthy(15)
    assert etcd.health() == {"node1": True, "node2": True, "node3": True}
    assert etcd.etcdctl("get", "lab-key", "--print-value-only").stdout.strip() == "v1"


def test_small_lab_has_one_member_and_destroy_leaves_nothing(tmp_path):
    lab = LabEtcd(LabConfig.new(tmp_path, 2, net=NET))
    try:
        lab.create(timeout=30)
        assert lab.health() == {"node1": True}
        assert lab.endpoints() == [f"http://127.{NET}.1.1:2379"]
        with pytest.raises(UsageError, match="node2 runs no etcd member"):
            lab.start_member("node2")
        with pytest.raises(UsageError, match="already exists"):
            lab.create()
        pids = member_pids(lab)
        assert len(pids) == 1
    finally:
        lab.destroy()
    assert not lab.dir.exists()
    assert not list(lab.pids.glob("etcd-*.pid"))
    assert not any(_runs_etcd_in(pid, tmp_path) for pid in pids)
    assert not any(_runs_etcd_in(int(p.name), tmp_path)
                   for p in Path("/proc").iterdir() if p.name.isdigit())


def _runs_etcd_in(pid: int, where: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and cmdline.startswith("/usr/bin/etcd ") and str(where) in cmdline
