"""Pure storage logic: Node <-> CRUSH host (rook NormalizeCrushName), the RBD node plugin found
by what it is (Rook <= v1.17, ceph-csi-operator in Rook >= v1.18, the ceph-csi Helm chart), and
the noout policy from the CephCluster's disruptionManagement (rook clusterdisruption/osd.go)."""
from nodegate.core.crush import OsdPod, map_crush_host, match_node, normalize_crush_name
from nodegate.core.csi import discover_node_plugins, image_tag, node_plugin_of
from nodegate.core.noout import GROUP, PER_OSD, decide_noout, duration_warning, rook_disruption

FQDN = "node4.example.internal"
HOSTS = {"node1-example-internal": (0,), "node4-example-internal": (3,)}


def test_rook_replaces_dots_with_dashes():
    assert normalize_crush_name(FQDN) == "node4-example-internal"
    assert normalize_crush_name("node4") == "node4"


def test_fqdn_node_maps_to_the_normalised_crush_host():
    m = map_crush_host(inventory_name="node4", node_name=FQDN, node_labels={"kubernetes.io/hostname": FQDN},
                       crush_hosts=HOSTS, osd_pods=[OsdPod("rook-ceph-osd-3-x", 3, "node4-example-internal")],
                       osd_metadata_hosts={3: FQDN})
    assert m.ok and m.crush_host == "node4-example-internal" and m.osd_ids == (3,)
    assert "hostname" in m.source
    assert any("agrees" in e for e in m.evidence)
    assert ["CRUSH host", "node4-example-internal"] in m.rows()


def test_osd_pods_without_a_crush_host_fail_and_name_the_profile_fields():
    m = map_crush_host(inventory_name="node4", node_name=FQDN, node_labels={"kubernetes.io/hostname": FQDN},
                       crush_hosts={"node1": (0,)}, osd_pods=[OsdPod("rook-ceph-osd-3-x", 3, None)])
    assert not m.ok and m.crush_host is None
    assert "node4-example-internal" in m.problems[0] and "crush_host" in m.problems[0]


def test_nothing_found_fails_unless_the_profile_says_no_osds():
    kwargs = dict(inventory_name="node9", node_name="node9", node_labels={"kubernetes.io/hostname": "node9"},
                  crush_hosts=HOSTS, osd_pods=())
    failed = map_crush_host(**kwargs)
    assert not failed.ok and "ceph_osds = false" in failed.problems[0]
    allowed = map_crush_host(**kwargs, no_osds_expected=True)
    assert allowed.ok and allowed.crush_host is None and not allowed.has_osds


def test_profile_saying_no_osds_is_wrong_when_crush_has_them():
    m = map_crush_host(inventory_name="node4", node_name=FQDN, node_labels={"kubernetes.io/hostname": FQDN},
                       crush_hosts=HOSTS, no_osds_expected=True)
    assert not m.ok and "correct the profile" in m.problems[0]


def test_osd_pod_label_rescues_an_unusual_layout_and_override_wins():
    m = map_crush_host(inventory_name="node4", node_name=FQDN, node_labels={"kubernetes.io/hostname": "other"},
                       crush_hosts=HOSTS, osd_pods=[OsdPod("p", 3, "node4-example-internal")])
    assert m.ok and m.crush_host == "node4-example-internal" and m.notes
    o = map_crush_host(inventory_name="node4", node_name=FQDN, node_labels={}, crush_hosts=HOSTS,
                       override="node1-example-internal")
    assert o.crush_host == "node1-example-internal" and o.source == "profile crush_host"
    bad = map_crush_host(inventory_name="node4", node_name=FQDN, node_labels={}, crush_hosts=HOSTS, override="nope")
    assert not bad.ok


def test_pods_and_crush_disagreeing_is_a_problem():
    m = map_crush_host(inventory_name="node4", node_name=FQDN, node_labels={"kubernetes.io/hostname": FQDN},
                       crush_hosts=HOSTS, osd_pods=[OsdPod("p", 7, "node4-example-internal")])
    assert not m.ok and "osd.7" in m.problems[0]


def test_match_node_by_name_label_dns_label_and_address():
    nodes = [{"name": "node1.example.internal", "labels": {"kubernetes.io/hostname": "node1.example.internal"},
              "addresses": ("127.110.1.1",)},
             {"name": "node4.example.internal", "labels": {"kubernetes.io/hostname": "node4.example.internal"},
              "addresses": ("127.110.1.4",)}]
    assert match_node("node4", "127.110.1.4", nodes).node_name == "node4.example.internal"
    assert match_node("node4.example.internal", None, nodes).how == "Node name = inventory name"
    assert match_node("n1", "127.110.1.1", nodes).how == "Node InternalIP = inventory address"
    assert match_node("n9", "10.0.0.9", nodes).node_name is None


def _ds(ns, name, labels, image, args, container="csi-rbdplugin"):
    return {"metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"selector": {"matchLabels": labels},
                     "template": {"spec": {"containers": [
                         {"name": "driver-registrar", "image": "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.11.1"},
                         {"name": container, "image": image, "args": args}]}}}}


ROOK_115 = _ds("rook-ceph", "csi-rbdplugin", {"app": "csi-rbdplugin"}, "quay.io/cephcsi/cephcsi:v3.12.3",
               ["--type=rbd", "--nodeserver=true", "--drivername=rook-ceph.rbd.csi.ceph.com"])
ROOK_118 = _ds("rook-ceph", "rook-ceph.rbd.csi.ceph.com-nodeplugin", {"app": "rook-ceph.rbd.csi.ceph.com-nodeplugin"},
               "quay.io/cephcsi/cephcsi:v3.15.0",
               ["--type=rbd", "--nodeserver=true", "--drivername=rook-ceph.rbd.csi.ceph.com"])
HELM = _ds("ceph-csi-rbd", "ceph-csi-rbd-ceph-csi-rbd-nodeplugin",
           {"app": "ceph-csi-rbd", "component": "nodeplugin", "release": "ceph-csi-rbd"},
           "quay.io/cephcsi/cephcsi:v3.11.0", ["--type=rbd", "--nodeserver=true"])
PROVISIONER = _ds("rook-ceph", "csi-rbdplugin-provisioner", {"app": "csi-rbdplugin-provisioner"},
                  "quay.io/cephcsi/cephcsi:v3.12.3", ["--type=rbd", "--controllerserver=true"])
ROOK_SC = {"metadata": {"name": "rook-ceph-block"}, "provisioner": "rook-ceph.rbd.csi.ceph.com"}


def test_each_layout_is_found_by_what_it_is():
    for ds, layout, selector in ((ROOK_115, "Rook csi-rbdplugin", "app=csi-rbdplugin"),
                                 (ROOK_118, "ceph-csi-operator", "app=rook-ceph.rbd.csi.ceph.com-nodeplugin")):
        found = discover_node_plugins(daemonsets=[PROVISIONER, ds], storageclasses=[ROOK_SC])
        assert found.ok and [p.name for p in found.plugins] == [ds["metadata"]["name"]]
        assert found.plugins[0].layout.startswith(layout) and found.plugins[0].label_selector == selector
    helm = discover_node_plugins(daemonsets=[HELM], storageclasses=[{"provisioner": "rbd.csi.ceph.com"}])
    assert helm.ok and helm.plugins[0].driver == "rbd.csi.ceph.com" and "Helm" in helm.plugins[0].layout
    assert helm.versions == ("v3.11.0",)
    assert node_plugin_of(PROVISIONER) is None


def test_storageclass_without_node_plugin_fails_naming_what_was_looked_for():
    found = discover_node_plugins(daemonsets=[PROVISIONER], storageclasses=[ROOK_SC])
    assert not found.ok and "rook-ceph.rbd.csi.ceph.com" in found.problems[0]
    assert "--type=rbd" in found.problems[0] and "csi_rbd_daemonset" in found.problems[0]
    other_driver = discover_node_plugins(daemonsets=[HELM], csidrivers=[{"metadata": {"name": ROOK_SC["provisioner"]}}])
    assert not other_driver.ok


def test_no_csi_at_all_fails_unless_nothing_is_expected():
    assert not discover_node_plugins(daemonsets=[]).ok
    none = discover_node_plugins(daemonsets=[], nothing_expected=True)
    assert none.ok and none.plugins == ()


def test_override_names_the_daemonset():
    found = discover_node_plugins(daemonsets=[ROOK_115, HELM], override="ceph-csi-rbd/ceph-csi-rbd-ceph-csi-rbd-nodeplugin")
    assert found.ok and found.plugins[0].namespace == "ceph-csi-rbd"
    assert not discover_node_plugins(daemonsets=[ROOK_115], override="x/y").ok
    assert image_tag("quay.io/cephcsi/cephcsi:v3.12.3@sha256:ab") == "v3.12.3"


def test_noout_policy_from_the_cephcluster():
    default = rook_disruption({"metadata": {"namespace": "rook-ceph", "name": "rook-ceph"},
                               "spec": {"disruptionManagement": {"managePodBudgets": True}}})
    assert default.maintenance_timeout_s == 1800 and decide_noout(default).kind == PER_OSD
    off = rook_disruption({"metadata": {"name": "c"}, "spec": {"disruptionManagement": {"managePodBudgets": False,
                                                                                        "osdMaintenanceTimeout": 5}}})
    assert decide_noout(off).kind == GROUP
    assert decide_noout(rook_disruption(None)).kind == PER_OSD
    policy = decide_noout(default)
    assert policy.commands(crush_host="h", osd_ids=(3, 4)) == [["osd", "add-noout", "osd.3", "osd.4"]]
    assert policy.commands(crush_host="h", osd_ids=(3,), set_=False) == [["osd", "rm-noout", "osd.3"]]
    assert decide_noout(off).commands(crush_host="h", osd_ids=(3,)) == [["osd", "set-group", "noout", "h"]]


def test_duration_warning_only_when_rook_would_take_noout_back_first():
    rook = rook_disruption({"metadata": {"name": "c"}, "spec": {"disruptionManagement": {
        "managePodBudgets": True, "osdMaintenanceTimeout": 30}}})
    assert "osdMaintenanceTimeout 30 min" in duration_warning(rook, 45 * 60, source="default")
    assert duration_warning(rook, 10 * 60, source="journal") is None
    assert duration_warning(rook_disruption(None), 99 * 60, source="x") is None
