"""The lab's Ceph: real mon, mgr and bluestore OSDs (Debian ceph 16.2), driven through LabCeph."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from labkit import net_beside

from nodegate.core.errors import TransientError, UsageError
from nodegate.lab.ceph import LabCeph
from nodegate.lab.config import LabConfig

pytestmark = pytest.mark.lab

NET = net_beside("lab-ceph")


@pytest.fixture(scope="module")
def ceph(tmp_path_factory):
    """One 3-node cluster shared by the module: creating one takes ~7 s of two busy cores."""
    config = LabConfig.new(tmp_path_factory.mktemp("ceph"), 3, net=NET)
    lab = LabCeph(config)
    try:
        lab.create(timeout=120)
        yield lab
    finally:
        lab.destroy()


def wait_for_checks(lab: LabCeph, wanted: set[str], timeout: float) -> dict:
    """Poll `ceph health detail` until every check in `wanted` is raised; the last reading."""
    deadline = time.monotonic() + timeout
    while True:
        health = lab.health()
        if wanted <= set(health.get("checks", {})):
            return health
        if time.monotonic() >= deadline:
            raise AssertionError(f"{wanted} not raised in {timeout} s; last: {json.dumps(health)}")
        time.sleep(0.3)


def details(health: dict, check: str) -> list[str]:
    return [d["message"] for d in health["checks"][check]["detail"]]


def listening(pids: set[int]) -> list[str]:
    """Local addresses on which these processes listen (TCP)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append(line.split()[3])
    return found


def daemon_pids(lab: LabCeph) -> set[int]:
    return {int(p.read_text()) for p in lab.pids.glob("ceph-*.pid")}


def test_create_gives_a_truly_healthy_cluster_with_node_hosts(ceph: LabCeph):
    state = ceph.state()
    assert state.truly_healthy, state.describe()
    assert (state.osds, state.osds_up, state.osds_in) == (3, 3, 3)
    assert ceph.health()["status"] == "HEALTH_OK"
    tree = json.loads(ceph.run("osd", "tree", "-f", "json", check=True).stdout)
    hosts = {n["name"]: n["children"] for n in tree["nodes"] if n["type"] == "host"}
    assert hosts == {"node1": [0], "node2": [1], "node3": [2]}
    assert [ceph.osd_id(n) for n in ("node1", "node2", "node3")] == [0, 1, 2]
    assert all(ceph.osd_running(n) for n in ("node1", "node2", "node3"))


def test_rbd_pool_holds_data_with_three_replicas(ceph: LabCeph):
    def tool(*cmd: str) -> list[str]:
        return subprocess.run(cmd, env=ceph.env, capture_output=True, text=True, check=True,
                              timeout=30).stdout.split()

    assert tool("rbd", "ls", "rbd") == ["lab-disk"]
    assert sum(o.startswith("rbd_data.") for o in tool("rados", "-p", "rbd", "ls")) >= 8
    pool = json.loads(ceph.run("osd", "pool", "get", "rbd", "all", "-f", "json", check=True).stdout)
    assert (pool["size"], pool["min_size"]) == (3, 2)


def test_cli_needs_only_ceph_conf(ceph: LabCeph):
    env = {"PATH": os.environ["PATH"], "CEPH_CONF": str(ceph.conf)}
    result = subprocess.run(["ceph", "health"], env=env, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout.strip()) == (0, "HEALTH_OK")
    assert ceph.env["CEPH_CONF"] == str(ceph.conf)


def test_daemons_listen_only_on_the_labs_address(ceph: LabCeph):
    addresses = listening(daemon_pids(ceph))
    assert f"{ceph.config.ceph_address}:3300" in addresses
    assert f"{ceph.config.ceph_address}:6789" in addresses
    assert {a.rsplit(":", 1)[0] for a in addresses} == {ceph.config.ceph_address}


def test_stopped_osd_is_down_on_its_node_host_then_recovers(ceph: LabCeph):
    ceph.stop_osd("node2")
    try:
        assert not ceph.osd_running("node2")
        health = wait_for_checks(ceph, {"OSD_DOWN", "OSD_HOST_DOWN"}, timeout=15)
        assert any("osd.1" in m and "host=node2" in m for m in details(health, "OSD_DOWN"))
        assert details(health, "OSD_HOST_DOWN") == ["host node2 (root=default) (1 osds) is down"]
        health = wait_for_checks(ceph, {"PG_DEGRADED"}, timeout=30)
        assert "objects degraded" in health["checks"]["PG_DEGRADED"]["summary"]["message"]
        with pytest.raises(TransientError, match=r"OSDs 2 up / 3 in / 3"):
            ceph.wait_healthy(1)
    finally:
        ceph.start_osd("node2")
    assert ceph.osd_running("node2")
    assert ceph.wait_healthy(60).truly_healthy


def test_set_group_noout_on_a_node_host_raises_osd_flags(ceph: LabCeph):
    ceph.run("osd", "set-group", "noout", "node3", check=True)
    try:
        health = wait_for_checks(ceph, {"OSD_FLAGS"}, timeout=10)
        assert details(health, "OSD_FLAGS") == ["host node3 has flags noout"]
        dump = json.loads(ceph.run("osd", "dump", "-f", "json", check=True).stdout)
        assert dump["crush_node_flags"] == {"node3": ["noout"]}
    finally:
        ceph.run("osd", "unset-group", "noout", "node3", check=True)
    assert ceph.wait_healthy(30).truly_healthy


def test_ok_to_stop_answers_no_with_exit_16_and_json(ceph: LabCeph):
    no = ceph.run("osd", "ok-to-stop", "0", "1", "-f", "json")
    assert no.returncode == 16  # EBUSY, the JSON still on stdout
    assert json.loads(no.stdout)["ok_to_stop"] is False
    assert "unsafe to stop osd(s)" in no.stderr
    yes = ceph.run("osd", "ok-to-stop", "0", "-f", "json")
    assert yes.returncode == 0 and json.loads(yes.stdout)["ok_to_stop"] is True


def test_ceph_warn_fault_raises_and_clears_a_real_warning(ceph: LabCeph):
    ceph.inject_warning()
    try:
        health = wait_for_checks(ceph, {"OSDMAP_FLAGS"}, timeout=10)
        assert health["status"] == "HEALTH_WARN"
        assert health["checks"]["OSDMAP_FLAGS"]["summary"]["message"] == "noscrub flag(s) set"
    finally:
        ceph.clear_warning()
    assert ceph.wait_healthy(30).truly_healthy


def test_create_refuses_an_existing_cluster(ceph: LabCeph):
    with pytest.raises(UsageError, match="already exists"):
        ceph.create()
    with pytest.raises(KeyError, match="node9"):
        ceph.osd_id("node9")


def test_one_node_lab_is_healthy_and_destroy_leaves_nothing(tmp_path):
    """A 1-node lab (pool size 1) reaches HEALTH_OK; destroy stops every daemon, removes data."""
    lab = LabCeph(LabConfig.new(tmp_path, 1, net=net_beside("lab-ceph-single")))
    try:
        state = lab.create(timeout=120)
        assert state.truly_healthy and state.osds == 1, state.describe()
        pids = daemon_pids(lab)
        assert len(pids) == 3  # mon, mgr, osd.0
    finally:
        lab.destroy()
    assert not any(Path(f"/proc/{pid}").exists() and _is_ceph(pid) for pid in pids)
    assert not list(lab.pids.glob("ceph-*.pid"))
    assert not lab.dir.exists() and not lab.conf.exists()
    assert not any(_is_ceph(int(p.name)) and str(tmp_path) in _cmdline(int(p.name))
                   for p in Path("/proc").iterdir() if p.name.isdigit())


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _is_ceph(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z" and \
            _cmdline(pid).startswith("ceph-")
    except (OSError, IndexError):
        return False


# -- racks: the failure domains of a rack-aware cluster ---------------------------------------
@pytest.fixture(scope="module")
def racked(tmp_path_factory):
    """Six nodes in three racks (node1 and node4 in rack1, node2 and node5 in rack2, ...), the
    pools on a rule that places the three copies in three racks."""
    config = LabConfig.new(tmp_path_factory.mktemp("racks"), 6, net=net_beside("lab-ceph-racks"), racks=3)
    lab = LabCeph(config)
    try:
        lab.create(timeout=180)
        yield lab
    finally:
        lab.destroy()


def ok_to_stop(lab: LabCeph, *ids: int, max_: int | None = None) -> tuple[int, dict]:
    extra = ("--max", str(max_)) if max_ else ()
    result = lab.run("osd", "ok-to-stop", *map(str, ids), *extra, "-f", "json")
    return result.returncode, json.loads(result.stdout)


def test_racks_hold_the_hosts_in_turn_and_every_pool_spreads_over_racks(racked: LabCeph):
    tree = json.loads(racked.run("osd", "tree", "-f", "json", check=True).stdout)
    names = {n["id"]: n["name"] for n in tree["nodes"]}
    racks = {n["name"]: sorted(names[c] for c in n["children"]) for n in tree["nodes"] if n["type"] == "rack"}
    assert racks == {"rack1": ["node1", "node4"], "rack2": ["node2", "node5"], "rack3": ["node3", "node6"]}
    rules = {r["rule_id"]: r for r in json.loads(racked.run("osd", "crush", "rule", "dump", "-f", "json",
                                                             check=True).stdout)}
    pools = json.loads(racked.run("osd", "pool", "ls", "detail", "-f", "json", check=True).stdout)
    assert pools and all(rules[p["crush_rule"]]["rule_name"] == "replicated_rack" for p in pools)
    assert {(p["pool_name"], p["size"], p["min_size"]) for p in pools if p["pool_name"] == "rbd"} == {("rbd", 3, 2)}
    steps = rules[pools[0]["crush_rule"]]["steps"]
    assert any(s.get("type") == "rack" and s["op"].startswith("choose") for s in steps), steps
    assert racked.state().truly_healthy


def test_ok_to_stop_lets_one_rack_stop_and_refuses_two(racked: LabCeph):
    """size 3 / min_size 2 over three racks: a whole rack may stop (each PG keeps two copies),
    one OSD in each of two racks may not (every PG would keep one). ceph/ceph #39455, #39726:
    `--max N` answers the larger set that may stop with the ones asked."""
    rc, same_rack = ok_to_stop(racked, 0, 3)
    assert (rc, same_rack["ok_to_stop"]) == (0, True), same_rack
    rc, two_racks = ok_to_stop(racked, 0, 1)
    assert (rc, two_racks["ok_to_stop"]) == (16, False), two_racks
    assert two_racks["bad_become_inactive"]
    rc, grown = ok_to_stop(racked, 0, max_=6)
    # --max grows the set within the CRUSH tree: to the rest of osd.0's rack, never another rack
    assert rc == 0 and sorted(grown["osds"]) == [0, 3], grown
