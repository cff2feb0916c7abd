"""The lab's Rook disruption controller, decision by decision, as rook
pkg/operator/ceph/disruption/clusterdisruption/osd.go decides (setPDBConfig, resetPDBConfig,
updateNoout) and reconcile.go reads osdMaintenanceTimeout (whole minutes, 0 = 30)."""
from nodegate.lab.apiserver.disruption import (
    DRAINING_KEY,
    SET_NOOUT_KEY,
    maintenance_timeout_s,
    next_state,
    noout_actions,
)

DOMAINS = ["node1-example-internal", "node4-example-internal"]


def test_drained_domain_gets_noout_and_rook_takes_it_back_after_the_timeout():
    data = next_state({}, osd_down=True, pg_clean=False, drain_domains=["node4-example-internal"],
                      down_domains=["node4-example-internal"], now=1000.0)
    assert data[DRAINING_KEY] == "node4-example-internal" and data[SET_NOOUT_KEY] == "true"
    data, actions = noout_actions(data, domains=DOMAINS, flagged=set(), timeout_s=20, now=1000.0)
    assert actions == [(True, "node4-example-internal")]
    _, actions = noout_actions(data, domains=DOMAINS, flagged={"node4-example-internal"}, timeout_s=20, now=1010.0)
    assert actions == []
    _, actions = noout_actions(data, domains=DOMAINS, flagged={"node4-example-internal"}, timeout_s=20, now=1021.0)
    assert actions == [(False, "node4-example-internal")]      # still draining, noout taken back


def test_noout_on_other_failure_domains_is_cleared():
    data = next_state({}, osd_down=True, pg_clean=False, drain_domains=["node4-example-internal"],
                      down_domains=["node4-example-internal"], now=0.0)
    _, actions = noout_actions(data, domains=DOMAINS, flagged={"node1-example-internal"}, timeout_s=60, now=0.0)
    assert (False, "node1-example-internal") in actions


def test_down_without_drain_sets_no_noout_and_clean_resets():
    data = next_state({}, osd_down=True, pg_clean=False, drain_domains=[], down_domains=["node1"], now=0.0)
    assert data[DRAINING_KEY] == "node1" and data[SET_NOOUT_KEY] == ""
    data = next_state(data, osd_down=False, pg_clean=True, drain_domains=[], down_domains=[], now=5.0)
    assert data[DRAINING_KEY] == "" and data[SET_NOOUT_KEY] == ""


def test_timeout_in_whole_minutes_with_the_labs_seconds_annotation():
    assert maintenance_timeout_s({"spec": {"disruptionManagement": {"osdMaintenanceTimeout": 0}}}) == 1800
    assert maintenance_timeout_s({"spec": {"disruptionManagement": {"osdMaintenanceTimeout": 5}}}) == 300
    assert maintenance_timeout_s({"metadata": {"annotations": {
        "lab.nodegate.io/osd-maintenance-timeout-seconds": "20"}}, "spec": {}}) == 20
