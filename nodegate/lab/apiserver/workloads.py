"""The cluster's objects at start, laid out like the seed cluster: Kubespray's kube-system
DaemonSets and CoreDNS, Rook's operator, toolbox, CSI plugin and one OSD Deployment per node
with the OSD PodDisruptionBudget, and a `demo` namespace whose pods need exactly the drain
flags the seed needed (--ignore-daemonsets, --delete-emptydir-data, --force)."""
from __future__ import annotations

import hashlib

from nodegate.lab.config import LabConfig, LabNode

CEPH_IMAGE = "quay.io/ceph/ceph:v16.2.15"
CALICO_VERSION = "v3.24.5"
REGISTRAR_IMAGE = "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.11.1"
CP_TAINT_KEY = "node-role.kubernetes.io/control-plane"
TOLERATE_ALL = [{"operator": "Exists"}]
TOLERATE_CP = [{"key": CP_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease", "rook-ceph", "demo")


def container(name: str, image: str, **extra) -> dict:
    return {"name": name, "image": image, "imagePullPolicy": "IfNotPresent",
            "resources": {}, "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File", **extra}


def pod_spec(containers: list[dict], *, host_network: bool = False, tolerations: list | None = None,
             node_selector: dict | None = None, volumes: list | None = None, grace: int = 30,
             priority_class: str | None = None, affinity: dict | None = None,
             service_account: str = "default") -> dict:
    spec: dict = {"containers": containers, "restartPolicy": "Always", "terminationGracePeriodSeconds": grace,
                  "dnsPolicy": "ClusterFirstWithHostNet" if host_network else "ClusterFirst",
                  "serviceAccountName": service_account, "serviceAccount": service_account,
                  "securityContext": {}, "schedulerName": "default-scheduler"}
    if host_network:
        spec["hostNetwork"] = True
    if tolerations:
        spec["tolerations"] = tolerations
    if node_selector:
        spec["nodeSelector"] = node_selector
    if volumes:
        spec["volumes"] = volumes
    if priority_class:
        spec["priorityClassName"] = priority_class
    if affinity:
        spec["affinity"] = affinity
    return spec


def daemonset(namespace: str, name: str, labels: dict, spec: dict) -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {"selector": {"matchLabels": dict(labels)},
                     "template": {"metadata": {"labels": dict(labels)}, "spec": spec},
                     "updateStrategy": {"type": "RollingUpdate",
                                        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                     "revisionHistoryLimit": 10}}


def deployment(namespace: str, name: str, labels: dict, spec: dict, replicas: int = 1,
               strategy: str = "RollingUpdate", extra_labels: dict | None = None) -> dict:
    strat: dict = {"type": strategy}
    if strategy == "RollingUpdate":
        strat["rollingUpdate"] = {"maxUnavailable": "25%", "maxSurge": "25%"}
    tmpl_labels = {**labels, **(extra_labels or {})}
    return {"metadata": {"name": name, "namespace": namespace, "labels": dict(tmpl_labels)},
            "spec": {"replicas": replicas, "selector": {"matchLabels": dict(labels)},
                     "template": {"metadata": {"labels": tmpl_labels}, "spec": spec},
                     "strategy": strat, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600}}


def pdb(namespace: str, name: str, selector: dict, *, min_available=None, max_unavailable=None) -> dict:
    spec: dict = {"selector": {"matchLabels": selector}}
    if min_available is not None:
        spec["minAvailable"] = min_available
    if max_unavailable is not None:
        spec["maxUnavailable"] = max_unavailable
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def last_worker(config: LabConfig) -> str:
    """The Kubernetes name of the last worker."""
    workers = [n.kube_name for n in config.nodes if "worker" in n.roles]
    return workers[-1] if workers else config.nodes[-1].kube_name


def first_worker(config: LabConfig) -> str:
    workers = [n.kube_name for n in config.nodes if "worker" in n.roles]
    return workers[0] if workers else config.nodes[0].kube_name


RBD_DRIVER = "rook-ceph.rbd.csi.ceph.com"   # Rook's driver name: <operator namespace>.rbd.csi.ceph.com


def rbd_node_plugin(config: LabConfig) -> dict:
    """The RBD node plugin DaemonSet as the lab's Rook version deploys it.

    Rook <= v1.17: `csi-rbdplugin`, label app=csi-rbdplugin (rook pkg/operator/ceph/csi/spec.go,
    CsiRBDPlugin). Rook >= v1.18 runs ceph-csi-operator (ROOK_USE_CSI_OPERATOR, default "true"),
    which names it `<driver>-nodeplugin` with label app=<driver>-nodeplugin and keeps the
    containers csi-rbdplugin, driver-registrar, liveness-prometheus (ceph-csi-operator
    internal/controller/driver_controller.go: generateName("nodeplugin"), "csi-%splugin")."""
    csi = config.cephcsi_version
    if config.csi_operator:
        name = f"{RBD_DRIVER}-nodeplugin"
        labels = {"app": name}
        account = "ceph-csi-rbd-nodeplugin-sa"
    else:
        name, labels, account = "csi-rbdplugin", {"app": "csi-rbdplugin"}, "rook-csi-rbd-plugin-sa"
    return daemonset("rook-ceph", name, labels, pod_spec(
        [container("driver-registrar", REGISTRAR_IMAGE,
                   args=["--v=0", "--csi-address=/csi/csi.sock",
                         f"--kubelet-registration-path=/var/lib/kubelet/plugins/{RBD_DRIVER}/csi.sock"]),
         container("csi-rbdplugin", f"quay.io/cephcsi/cephcsi:{csi}",
                   args=["--nodeid=$(NODE_ID)", "--endpoint=$(CSI_ENDPOINT)", "--v=0", "--type=rbd",
                         "--nodeserver=true", f"--drivername={RBD_DRIVER}"],
                   securityContext={"privileged": True}),
         container("liveness-prometheus", f"quay.io/cephcsi/cephcsi:{csi}",
                   args=["--type=liveness", "--endpoint=$(CSI_ENDPOINT)", "--metricsport=9080"])],
        host_network=True, tolerations=TOLERATE_CP, priority_class="system-node-critical",
        service_account=account,
        volumes=[{"name": "socket-dir", "hostPath": {"path": f"/var/lib/kubelet/plugins/{RBD_DRIVER}",
                                                      "type": "DirectoryOrCreate"}},
                 {"name": "lib-modules", "hostPath": {"path": "/lib/modules", "type": ""}}]))


def storage_objects(config: LabConfig) -> list[tuple[str, dict]]:
    """The CephCluster (with spec.disruptionManagement, read by the lab's Rook disruption
    controller), Rook's RBD StorageClass (deploy/examples/csi/rbd/storageclass.yaml: provisioner
    rook-ceph.rbd.csi.ceph.com) and the CSIDriver object registered for that driver."""
    minutes = max(1, -(-int(config.osd_maintenance_timeout_s) // 60))
    cluster = {"apiVersion": "ceph.rook.io/v1", "kind": "CephCluster",
               "metadata": {"name": "rook-ceph", "namespace": "rook-ceph",
                            # Rook reads whole minutes; the lab's controller may run faster than that.
                            "annotations": {"lab.nodegate.io/osd-maintenance-timeout-seconds":
                                            f"{config.osd_maintenance_timeout_s:g}"}},
               "spec": {"cephVersion": {"image": CEPH_IMAGE}, "dataDirHostPath": "/var/lib/rook",
                        "mon": {"count": 1}, "storage": {"useAllNodes": True, "useAllDevices": True},
                        "disruptionManagement": {"managePodBudgets": config.manage_pod_budgets,
                                                 "osdMaintenanceTimeout": minutes}},
               "status": {"phase": "Ready", "state": "Created", "ceph": {"health": "HEALTH_OK"},
                          "version": {"image": CEPH_IMAGE, "version": "16.2.15-0"}}}
    storageclass = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                    "metadata": {"name": "rook-ceph-block"}, "provisioner": RBD_DRIVER,
                    "parameters": {"clusterID": "rook-ceph", "pool": "replicapool", "imageFormat": "2",
                                   "imageFeatures": "layering", "csi.storage.k8s.io/fstype": "ext4"},
                    "reclaimPolicy": "Delete", "allowVolumeExpansion": True, "volumeBindingMode": "Immediate"}
    driver = {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": RBD_DRIVER},
              "spec": {"attachRequired": True, "podInfoOnMount": False, "fsGroupPolicy": "File",
                       "requiresRepublish": False, "storageCapacity": False, "volumeLifecycleModes": ["Persistent"]}}
    return [("CephCluster", cluster), ("StorageClass", storageclass), ("CSIDriver", driver)]


def prefer_node(node: str) -> dict:
    return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100, "preference": {"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}}]}}


def seed_objects(config: LabConfig) -> list[tuple[str, dict]]:
    """(kind, object) pairs in creation order."""
    kube = config.kube_version
    objs: list[tuple[str, dict]] = [("Namespace", {"metadata": {"name": ns, "labels": {
        "kubernetes.io/metadata.name": ns}}}) for ns in NAMESPACES]

    objs.append(("Service", {"metadata": {"name": "kubernetes", "namespace": "default", "labels": {
        "component": "apiserver", "provider": "kubernetes"}}, "spec": {
        "clusterIP": "10.233.0.1", "clusterIPs": ["10.233.0.1"], "type": "ClusterIP", "sessionAffinity": "None",
        "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}, "status": {"loadBalancer": {}}}))
    objs.append(("Service", {"metadata": {"name": "coredns", "namespace": "kube-system", "labels": {
        "k8s-app": "kube-dns", "kubernetes.io/name": "coredns"}}, "spec": {
        "clusterIP": "10.233.0.3", "clusterIPs": ["10.233.0.3"], "type": "ClusterIP", "sessionAffinity": "None",
        "selector": {"k8s-app": "kube-dns"},
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                  {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}, "status": {"loadBalancer": {}}}))
    # Rook's operator settings; empty data means Rook's default images (cephcsi per Rook release).
    objs.append(("ConfigMap", {"metadata": {"name": "rook-ceph-operator-config", "namespace": "rook-ceph"},
                               "data": {"ROOK_CSI_ENABLE_RBD": "true", "CSI_ENABLE_CEPHFS": "false",
                                        "ROOK_USE_CSI_OPERATOR": "true" if config.csi_operator else "false"}}))

    # -- kube-system (Kubespray v2.21 defaults) --------------------------------------
    objs.append(("DaemonSet", daemonset("kube-system", "kube-proxy", {"k8s-app": "kube-proxy"}, pod_spec(
        [container("kube-proxy", f"registry.k8s.io/kube-proxy:{kube}",
                   command=["/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf",
                            "--hostname-override=$(NODE_NAME)"])],
        host_network=True, tolerations=TOLERATE_ALL, priority_class="system-node-critical",
        service_account="kube-proxy", node_selector={"kubernetes.io/os": "linux"}))))
    objs.append(("DaemonSet", daemonset("kube-system", "calico-node", {"k8s-app": "calico-node"}, pod_spec(
        [container("calico-node", f"quay.io/calico/node:{CALICO_VERSION}")],
        host_network=True, tolerations=TOLERATE_ALL, priority_class="system-node-critical",
        service_account="calico-node", grace=0, node_selector={"kubernetes.io/os": "linux"}))))
    objs.append(("DaemonSet", daemonset("kube-system", "nodelocaldns", {"k8s-app": "nodelocaldns"}, pod_spec(
        [container("node-cache", "registry.k8s.io/dns/k8s-dns-node-cache:1.21.1",
                   args=["-localip", "169.254.25.10", "-conf", "/etc/coredns/Corefile",
                         "-upstreamsvc", "coredns"])],
        host_network=True, tolerations=TOLERATE_ALL, priority_class="system-cluster-critical",
        service_account="nodelocaldns", grace=0, node_selector={"kubernetes.io/os": "linux"}))))
    objs.append(("Deployment", deployment("kube-system", "coredns", {"k8s-app": "kube-dns"}, pod_spec(
        [container("coredns", "registry.k8s.io/coredns/coredns:v1.9.3", args=["-conf", "/etc/coredns/Corefile"],
                   ports=[{"containerPort": 53, "name": "dns", "protocol": "UDP"},
                          {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"}])],
        tolerations=TOLERATE_CP, priority_class="system-cluster-critical", service_account="coredns",
        node_selector={"kubernetes.io/os": "linux"}), replicas=2)))
    objs.append(("Deployment", deployment("kube-system", "calico-kube-controllers",
                                          {"k8s-app": "calico-kube-controllers"}, pod_spec(
        [container("calico-kube-controllers", f"quay.io/calico/kube-controllers:{CALICO_VERSION}")],
        tolerations=TOLERATE_CP, priority_class="system-cluster-critical",
        service_account="calico-kube-controllers", node_selector={"kubernetes.io/os": "linux"}),
        strategy="Recreate")))

    # -- rook-ceph ----------------------------------------------------------------------
    objs.append(("Deployment", deployment("rook-ceph", "rook-ceph-operator", {"app": "rook-ceph-operator"}, pod_spec(
        [container("rook-ceph-operator", f"rook/ceph:{config.rook_version}", args=["ceph", "operator"])],
        service_account="rook-ceph-system"), strategy="Recreate",
        extra_labels={"operator": "rook", "storage-backend": "ceph"})))
    objs.append(("Deployment", deployment("rook-ceph", "rook-ceph-tools", {"app": "rook-ceph-tools"}, pod_spec(
        [container("rook-ceph-tools", CEPH_IMAGE, command=["/bin/bash", "-c", "/usr/local/bin/toolbox.sh"],
                   tty=True)], grace=2, tolerations=TOLERATE_CP),
        strategy="RollingUpdate")))
    objs.append(("DaemonSet", rbd_node_plugin(config)))
    objs.extend(storage_objects(config))
    for node in config.nodes:
        osd_id = node.index - 1
        labels = {"app": "rook-ceph-osd", "ceph-osd-id": str(osd_id), "osd": str(osd_id),
                  "topology-location-host": node.crush_host, "topology-location-root": "default",
                  "failure-domain": node.crush_host, "portable": "false", "rook_cluster": "rook-ceph",
                  "app.kubernetes.io/name": "ceph-osd", "app.kubernetes.io/instance": str(osd_id)}
        if config.rack(node):
            # Rook labels an OSD with every CRUSH level of its location (topology-location-<type>).
            labels["topology-location-rack"] = config.rack(node)
        objs.append(("Deployment", deployment("rook-ceph", f"rook-ceph-osd-{osd_id}", labels, pod_spec(
            [container("osd", CEPH_IMAGE, command=["ceph-osd"],
                       args=["--foreground", f"--id={osd_id}", "--fsid=$(ROOK_CEPH_FSID)",
                             f"--crush-location={config.crush_location(node)}"],
                       securityContext={"privileged": True})],
            tolerations=TOLERATE_CP, node_selector={"kubernetes.io/hostname": node.kube_name},
            priority_class="system-node-critical", service_account="rook-ceph-osd",
            volumes=[{"name": "rook-data", "hostPath": {"path": "/var/lib/rook", "type": ""}}]),
            strategy="Recreate")))
    objs.append(("PodDisruptionBudget", pdb("rook-ceph", "rook-ceph-osd", {"app": "rook-ceph-osd"},
                                            max_unavailable=1)))
    # One mon and one mgr (the lab's real ones run on the host), pinned to the first node as
    # Rook pins a mon to the node that holds its data.
    first = config.nodes[0].kube_name
    for daemon, pdb_name in (("mon", "rook-ceph-mon-pdb"), ("mgr", "rook-ceph-mgr-pdb")):
        labels = {"app": f"rook-ceph-{daemon}", daemon: "a", "ceph_daemon_id": "a", "ceph_daemon_type": daemon,
                  "rook_cluster": "rook-ceph"}
        objs.append(("Deployment", deployment("rook-ceph", f"rook-ceph-{daemon}-a", labels, pod_spec(
            [container(daemon, CEPH_IMAGE, command=[f"ceph-{daemon}"], args=["--foreground", "--id=a"])],
            tolerations=TOLERATE_CP, node_selector={"kubernetes.io/hostname": first},
            priority_class="system-node-critical", service_account=f"rook-ceph-{daemon}" if daemon == "mgr" else "default"),
            strategy="Recreate")))
        objs.append(("PodDisruptionBudget", pdb("rook-ceph", pdb_name, {"app": f"rook-ceph-{daemon}"},
                                                max_unavailable=1)))

    # -- demo: what makes a drain need every flag ---------------------------------------
    target = last_worker(config)
    objs.append(("Deployment", deployment("demo", "web", {"app": "web"}, pod_spec(
        [container("nginx", "nginx:1.23.3", ports=[{"containerPort": 80, "protocol": "TCP"}])], grace=2),
        replicas=3)))
    # 3 replicas, 2 must stay: evicting two at once waits for the first one's replacement
    # (a real 429 that kubectl drain retries every 5 s).
    objs.append(("PodDisruptionBudget", pdb("demo", "web", {"app": "web"}, min_available=2)))
    objs.append(("Deployment", deployment("demo", "cache", {"app": "cache"}, pod_spec(
        [container("redis", "redis:7.0.8", volumeMounts=[{"name": "scratch", "mountPath": "/data"}])],
        volumes=[{"name": "scratch", "emptyDir": {}}], affinity=prefer_node(target), grace=2))))
    objs.append(("Pod", {"metadata": {"name": "debug-shell", "namespace": "demo", "labels": {"run": "debug-shell"}},
                         "spec": {**pod_spec([container("debug-shell", "busybox:1.36", command=["sleep", "infinity"])],
                                             grace=1), "nodeName": first_worker(config)}}))
    return objs


def static_pods(config: LabConfig, node: LabNode) -> list[dict]:
    """kube-apiserver, kube-controller-manager and kube-scheduler of one control-plane node, as
    the mirror pods its kubelet posts for /etc/kubernetes/manifests (Kubespray v2.21 layout)."""
    kube = config.kube_version
    pods = []
    for component, port in (("kube-apiserver", 6443), ("kube-controller-manager", 10257), ("kube-scheduler", 10259)):
        source_hash = hashlib.md5(f"{component}|{node.kube_name}|{kube}".encode()).hexdigest()
        pods.append({"metadata": {
            "name": f"{component}-{node.kube_name}", "namespace": "kube-system",
            "labels": {"component": component, "tier": "control-plane"},
            "annotations": {"kubernetes.io/config.hash": source_hash, "kubernetes.io/config.mirror": source_hash,
                            "kubernetes.io/config.source": "file",
                            "kubernetes.io/config.seen": "2023-02-01T10:00:00.000000000Z"}},
            "spec": {**pod_spec([container(component, f"registry.k8s.io/{component}:{kube}",
                                           command=[component, f"--secure-port={port}"])],
                                host_network=True, priority_class="system-node-critical",
                                tolerations=[{"operator": "Exists", "effect": "NoExecute"}]),
                     "nodeName": node.kube_name, "dnsPolicy": "ClusterFirst"}})
    return pods
