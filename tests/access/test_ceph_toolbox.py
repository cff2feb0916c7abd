"""nodegate.cluster.ceph in "toolbox" mode (the default): `ceph …` runs by exec into the rook-ceph-tools
pod through the Kubernetes API (nodegate.cluster.kube.client), against the full lab, where the API server runs
the toolbox pod and its exec reaches the lab's real Ceph. Settings come from the lab's own
cluster.toml through the profile loader, as an operator's would."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest

from nodegate.cluster.ceph import Ceph, CephCommandFailed
from nodegate.cluster.kube.client import Kube
from nodegate.core.errors import PermanentError
from nodegate.core.waits import Done, NotYet, wait_for
from nodegate.lab import apiclient
from nodegate.profile.load import load_profile
from nodegate.profile.model import CephSettings

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def profile(lab):
    return load_profile(lab.dir / "cluster.toml", environ={})


@pytest.fixture(scope="module")
def kube(profile):
    k = Kube.connect(settings=profile.kube)
    yield k
    k.close()


@pytest.fixture(scope="module")
def ceph(profile, kube):
    assert profile.ceph.mode == "toolbox", "the lab's profile uses the default mode"
    c = Ceph(settings=profile.ceph, kube=kube)
    wait_healthy(c, timeout=90)
    return c


def wait_healthy(ceph: Ceph, *, timeout: float):
    def probe():
        status = ceph.status()
        return Done(status) if status.healthy_in_full else NotYet("; ".join(status.reasons()))
    return wait_for(probe, what="ceph HEALTH_OK in full", timeout=timeout, interval=1.0)


def delete_pod(lab, namespace: str, name: str) -> None:
    request = urllib.request.Request(f"{lab.api_url}/api/v1/namespaces/{namespace}/pods/{name}", method="DELETE")
    with apiclient.urlopen(lab, request) as response:
        assert response.status == 200


def test_status_through_the_toolbox(ceph, lab):
    status = ceph.status()
    assert status.healthy_in_full, status.reasons()
    assert status.num_osds == status.num_up == status.num_in == len(lab.nodes)
    assert status.result.via.startswith("toolbox rook-ceph/rook-ceph-tools-")
    assert status.result.command == "ceph status -f json" and status.result.rc == 0
    assert json.loads(status.raw)["health"]["status"] == "HEALTH_OK"
    print(f"ceph status through exec: {status.result.duration * 1000:.0f} ms")


def test_osds_ok_to_stop_and_noout_through_the_toolbox(ceph):
    ids = ceph.osd_ids_for_host("node4")
    assert ids == (3,)
    assert ceph.ok_to_stop(ids).ok
    assert "node4" not in ceph.noout_hosts()
    ceph.set_group_noout("node4")
    try:
        assert "node4" in ceph.noout_hosts()
    finally:
        ceph.unset_group_noout("node4")
    assert "node4" not in ceph.noout_hosts()


def test_a_failing_ceph_command_keeps_its_exit_code_and_output(ceph):
    with pytest.raises(CephCommandFailed) as err:
        ceph.run(["osd", "set-group", "noout", "no-such-host"])
    assert err.value.result.rc != 0 and "toolbox rook-ceph/" in err.value.message


def test_a_replaced_toolbox_pod_is_found_again(ceph, kube, lab):
    old = ceph.status().result.via.split("/")[-1]
    delete_pod(lab, "rook-ceph", old)

    def replaced():
        pods = kube.list_pods(namespace="rook-ceph", selector="app=rook-ceph-tools")
        names = {p.name for p in pods}
        fresh = [p for p in pods if p.name != old and p.phase == "Running"]
        return Done(fresh) if old not in names and fresh else NotYet(f"toolbox pods: {sorted(names)}")

    wait_for(replaced, what="a new toolbox pod", timeout=30, interval=0.5)
    status = ceph.status()
    assert status.healthy_in_full and not status.result.via.endswith(old)


def test_exec_that_outlives_its_timeout_stops_waiting(ceph, kube):
    from nodegate.cluster.kube.errors import ExecTimeout

    pod = ceph.status().result.via.split("/")[-1]
    started = time.monotonic()
    # A 30 s write benchmark (bounded, it cleans up after itself, and the lab's exec kills it when the
    # client closes the stream) surely outlives a 0.3 s wait; `ceph status` alone was sometimes
    # quicker than that on a quiet machine.
    with pytest.raises(ExecTimeout) as err:
        kube.exec(namespace="rook-ceph", pod=pod, command=["rados", "-p", "rbd", "bench", "30", "write"], timeout=0.3)
    # had it waited for the command, not for its timeout, it would have taken the benchmark's 30 s
    assert time.monotonic() - started < 30
    assert "did not finish within 0.3s" in err.value.message and "may still be running" in err.value.fix


def test_no_toolbox_pod_names_the_fix(kube):
    lonely = Ceph(settings=CephSettings(mode="toolbox", namespace="rook-ceph", toolbox_selector="app=no-toolbox"),
                  kube=kube)
    with pytest.raises(PermanentError) as err:
        lonely.status()
    assert "no running Ceph toolbox pod matches app=no-toolbox" in err.value.message
    assert "toolbox.yaml" in err.value.fix


def test_reboot_seen_by_watch_then_storage_healthy_again(ceph, kube, lab):
    """A real reboot over SSH: the Node's Ready with a new bootID arrives by watch, then Ceph
    (its OSD on that node restarted by the lab) is healthy again through the toolbox."""
    before = kube.node("node4")
    subprocess.run(["ssh", "-F", str(lab.dir / "ssh/config"), "node4", "reboot"], capture_output=True, timeout=30)
    started = time.monotonic()
    kube.watch_node("node4", until=lambda s: not s.is_ready, timeout=30)
    after = kube.wait_node_ready("node4", timeout=60, new_boot_id_than=before.boot_id)
    ready_s = time.monotonic() - started
    assert after.is_ready and after.boot_id != before.boot_id
    healthy = wait_healthy(ceph, timeout=90)
    print(f"node4 reboot: Ready with new bootID after {ready_s:.1f}s, ceph healthy after "
          f"{time.monotonic() - started:.1f}s")
    assert healthy.num_up == len(lab.nodes)
