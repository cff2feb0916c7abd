"""nodegate.cluster.ceph against a real Ceph cluster (mon, mgr, 3 bluestore OSDs), in "command" mode.

The "toolbox" mode (exec into rook-ceph-tools through the API) is tested in test_kube.py
against the full lab, where the API server runs the toolbox pod.
"""
from __future__ import annotations

import json
import logging

import pytest

from nodegate.cluster.ceph import Ceph, CephCommandFailed, CephUnavailable
from nodegate.core.errors import PermanentError, TransientError, UsageError
from nodegate.core.waits import Done, NotYet, wait_for
from nodegate.profile.model import CephSettings

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def ceph(lab_ceph):
    config, _ = lab_ceph
    return Ceph(settings=CephSettings(mode="command", command=("ceph", "--conf", str(config.dir / "ceph.conf"))))


def test_status_is_healthy_in_full_with_raw_json_kept(ceph):
    status = ceph.status()
    assert status.healthy_in_full, status.reasons()
    assert status.health == "HEALTH_OK" and status.mgr_available
    assert (status.num_osds, status.num_up, status.num_in) == (3, 3, 3)
    assert status.pgs_total > 0 and status.pgs_active_clean == status.pgs_total
    raw = json.loads(status.raw)
    assert raw["health"]["status"] == "HEALTH_OK"
    assert status.result.command == "ceph status -f json" and status.result.rc == 0
    assert status.result.via.startswith("command ceph --conf ")


def test_osd_ids_follow_crush_hosts(ceph):
    assert ceph.osd_ids_for_host("node1") == (0,)
    assert ceph.osd_ids_for_host("node3") == (2,)
    # A node without OSDs (not a CRUSH host): nothing to stop, not an error.
    assert ceph.osd_ids_for_host("no-such-host") == ()


def test_ok_to_stop_yes_and_no(ceph):
    one = ceph.ok_to_stop(ceph.osd_ids_for_host("node1"))
    assert one.ok and one.result.rc == 0 and one.osds == (0,)
    # Two of three replicas down would make PGs inactive: rc 16 (EBUSY), JSON still read.
    two = ceph.ok_to_stop([0, 1])
    assert not two.ok and two.result.rc == 16
    assert two.osds == (0, 1) and two.num_not_ok_pgs > 0
    assert "EBUSY" in two.reason
    assert json.loads(two.raw)["ok_to_stop"] is False
    assert ceph.ok_to_stop([]).ok


def test_group_noout_set_and_unset_for_a_host(ceph):
    assert ceph.noout_hosts() == frozenset()
    ceph.set_group_noout("node2")
    try:
        assert ceph.noout_hosts() == frozenset({"node2"})
        assert ceph.osd_flags().noout_for_host("node2")
        assert not ceph.osd_flags().noout_for_host("node1")
        # Ceph warns about it, so the cluster is not healthy in the full sense meanwhile.
        detail = ceph.health_detail()
        assert "OSD_FLAGS" in detail.checks and "node2" in detail.noout_hosts
        assert not ceph.status().healthy_in_full
        ceph.set_group_noout("node2")  # idempotent
    finally:
        ceph.unset_group_noout("node2")
    assert ceph.noout_hosts() == frozenset()

    def healthy():
        status = ceph.status()
        return Done(status) if status.healthy_in_full else NotYet("; ".join(status.reasons()))

    wait_for(healthy, what="ceph healthy after unset-group noout", timeout=30, interval=0.5)


def test_versions(ceph):
    versions = ceph.versions().value
    assert set(versions["osd"]) == set(versions["mon"])
    assert next(iter(versions["osd"])).startswith("ceph version 16.2.")
    assert sum(versions["osd"].values()) == 3


def test_failed_command_names_command_and_rc(ceph):
    with pytest.raises(CephCommandFailed) as info:
        ceph.run(["osd", "no-such-subcommand"])
    err = info.value
    assert isinstance(err, PermanentError) and err.result.rc == 22
    assert "`ceph osd no-such-subcommand`" in str(err) and "exited 22" in str(err)


def test_unreachable_monitor_is_transient_and_bounded(lab_ceph, tmp_path, caplog):
    config, _ = lab_ceph
    conf = tmp_path / "ceph.conf"
    # The same cluster's config, but the monitor address moved to where nothing listens.
    conf.write_text((config.dir / "ceph.conf").read_text().replace(config.ceph_address, f"127.{config.net}.0.9"))
    ceph = Ceph(settings=CephSettings(mode="command", command=("ceph", "--conf", str(conf))),
                connect_timeout=2, attempts=2)
    caplog.set_level(logging.WARNING, logger="nodegate.ceph")
    with pytest.raises(CephUnavailable) as info:
        ceph.status()
    assert isinstance(info.value, TransientError)
    assert "did not answer `ceph status -f json`" in str(info.value)
    # bounded by its attempts: one retry, then the error
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying")]
    assert len(retries) == 1 and "attempt 1/2 failed" in retries[0], retries


def test_bad_settings_are_usage_errors():
    with pytest.raises(UsageError, match="unknown \\[ceph\\] mode"):
        Ceph(settings=CephSettings(mode="ssh"))
    with pytest.raises(UsageError, match="needs the Kubernetes API"):
        Ceph(settings=CephSettings(mode="toolbox"))
    with pytest.raises(UsageError, match="was not found"):
        Ceph(settings=CephSettings(mode="command", command=("no-such-ceph-binary",))).status()
