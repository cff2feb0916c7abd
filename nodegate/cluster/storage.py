"""The storage facts the gates decide on, read from the cluster: the node's CRUSH host (with
the evidence that maps it), the Ceph RBD CSI node plugin, and Rook's disruption settings.
The decisions are nodegate.core.crush / csi / noout's; this module only reads."""
from __future__ import annotations

from typing import TYPE_CHECKING

from nodegate.core.crush import OSD_HOST_LABEL, OSD_ID_LABEL, CrushMapping, OsdPod, map_crush_host
from nodegate.core.csi import CsiDiscovery, discover_node_plugins
from nodegate.core.noout import RookDisruption, rook_disruption

if TYPE_CHECKING:
    from nodegate.cluster.ceph import Ceph
    from nodegate.cluster.kube.client import Kube
    from nodegate.profile.model import CephSettings, NodeSpec

OSD_POD_SELECTOR = "app=rook-ceph-osd"


def crush_mapping(node: "NodeSpec", *, kube: "Kube", ceph: "Ceph", namespace: str,
                  crush_hosts: dict[str, tuple[int, ...]] | None = None) -> CrushMapping:
    """Map one node to its CRUSH host (``crush_hosts``: one `ceph osd tree` shared by a fleet)."""
    from nodegate.cluster.ceph import hosts_osds

    status = kube.get_node(node.kube_node)
    pods = [p for p in kube.list_pods(node=node.kube_node, namespace=namespace, selector=OSD_POD_SELECTOR)
            if not p.deleting]
    osd_pods = [OsdPod(p.name, int(p.labels[OSD_ID_LABEL]) if str(p.labels.get(OSD_ID_LABEL, "")).isdigit() else None,
                       p.labels.get(OSD_HOST_LABEL)) for p in pods]
    if crush_hosts is None:
        crush_hosts = hosts_osds(ceph.run(["osd", "tree", "-f", "json"]).stdout)
    metadata = ceph.osd_metadata_hosts()
    return map_crush_host(inventory_name=node.name, node_name=status.name if status else None,
                          node_labels=status.labels if status else None, crush_hosts=crush_hosts,
                          osd_pods=osd_pods, osd_metadata_hosts=metadata, override=node.crush_host,
                          no_osds_expected=not node.ceph_osds)


def csi_node_plugins(kube: "Kube", settings: "CephSettings") -> CsiDiscovery:
    """Every DaemonSet, StorageClass, CSIDriver and the PersistentVolumes' CSI drivers."""
    daemonsets = kube.list_objects("/apis/apps/v1/daemonsets", what="list DaemonSets")
    classes = kube.list_objects("/apis/storage.k8s.io/v1/storageclasses", what="list StorageClasses", missing_ok=True)
    drivers = kube.list_objects("/apis/storage.k8s.io/v1/csidrivers", what="list CSIDrivers", missing_ok=True)
    pvs = kube.list_objects("/api/v1/persistentvolumes", what="list PersistentVolumes", missing_ok=True)
    pv_drivers = [str(((pv.get("spec") or {}).get("csi") or {}).get("driver") or "") for pv in pvs]
    return discover_node_plugins(daemonsets=daemonsets, storageclasses=classes, csidrivers=drivers,
                                 pv_drivers=[d for d in pv_drivers if d], override=settings.csi_rbd_daemonset,
                                 nothing_expected=not settings.csi_rbd)


def rook_settings(kube: "Kube", namespace: str) -> RookDisruption:
    """The CephCluster of ``namespace`` (the first, as Rook runs one per namespace)."""
    items = kube.list_objects(f"/apis/ceph.rook.io/v1/namespaces/{namespace}/cephclusters",
                              what=f"list CephClusters in {namespace}", missing_ok=True)
    return rook_disruption(items[0] if items else None)
