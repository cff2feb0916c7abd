"""Which DaemonSet is the node plugin of the cluster's Ceph RBD CSI driver: pure logic.

Found by what it is, not by one name: the DaemonSet whose pod template runs the ``cephcsi``
image as an RBD node server (``--type=rbd``, ``--nodeserver=true``) for a driver
(``--drivername``, cephcsi's default ``rbd.csi.ceph.com``) that the cluster's StorageClasses
(``provisioner``) or CSIDriver objects name. The layouts seen in the field:

- Rook <= v1.17: DaemonSet ``csi-rbdplugin``, label ``app=csi-rbdplugin``, container
  ``csi-rbdplugin`` (rook ``pkg/operator/ceph/csi/spec.go``, the csi-rbdplugin template);
- Rook >= v1.18 with ceph-csi-operator (``ROOK_USE_CSI_OPERATOR``, default true in
  ``deploy/examples/operator.yaml``): DaemonSet ``<driver>-nodeplugin``, label
  ``app=<driver>-nodeplugin``, container ``csi-rbdplugin`` (ceph-csi-operator
  ``internal/controller/driver_controller.go``: ``generateName("nodeplugin")``, ``csi-%splugin``);
- the ceph-csi Helm chart ``ceph-csi-rbd``: ``<release>-ceph-csi-rbd-nodeplugin`` with labels
  ``app=ceph-csi-rbd``, ``component=nodeplugin``.

A cluster that uses an RBD driver (StorageClass, CSIDriver or PersistentVolume) but shows no
node plugin for it fails; so does one with neither, unless the profile says no Ceph CSI is
expected (``[ceph] csi_rbd = false``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

RBD_DRIVER_SUFFIX = "rbd.csi.ceph.com"
CEPHCSI_DEFAULT_DRIVER = "rbd.csi.ceph.com"
CEPHCSI_IMAGE = "cephcsi"
NOTHING_EXPECTED_FIELD = "[ceph] csi_rbd = false"
OVERRIDE_FIELD = '[ceph] csi_rbd_daemonset = "<namespace>/<name>"'


def is_rbd_driver(name: str) -> bool:
    return name == RBD_DRIVER_SUFFIX or name.endswith("." + RBD_DRIVER_SUFFIX)


def image_repository(image: str) -> str:
    """``quay.io/cephcsi/cephcsi:v3.12.3@sha256:…`` -> ``cephcsi`` (the last path part, no tag)."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def image_tag(image: str) -> str | None:
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def _arg(args: Sequence[str], name: str) -> str | None:
    """``--name=value`` (or ``-name=value``, or ``--name value``) from an argument list."""
    for i, arg in enumerate(args):
        for prefix in (f"--{name}=", f"-{name}="):
            if arg.startswith(prefix):
                return arg[len(prefix):]
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(args):
            return args[i + 1]
    return None


@dataclass(frozen=True)
class NodePlugin:
    namespace: str
    name: str                       # the DaemonSet
    selector: Mapping[str, str]     # its spec.selector.matchLabels
    container: str                  # the cephcsi RBD node-server container
    image: str
    driver: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label_selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector.items()))

    @property
    def version(self) -> str | None:
        return image_tag(self.image)

    @property
    def layout(self) -> str:
        if self.name == "csi-rbdplugin":
            return "Rook csi-rbdplugin (Rook <= v1.17)"
        if self.name == f"{self.driver}-nodeplugin":
            return "ceph-csi-operator nodeplugin (Rook >= v1.18)"
        if self.name.endswith("-nodeplugin") and self.selector.get("component") == "nodeplugin":
            return "ceph-csi Helm chart nodeplugin"
        return "other cephcsi RBD DaemonSet"


def node_plugin_of(daemonset: Mapping) -> NodePlugin | None:
    """The DaemonSet as a cephcsi RBD node plugin, or None if it is none (plain API JSON)."""
    meta = daemonset.get("metadata") or {}
    spec = daemonset.get("spec") or {}
    template = (spec.get("template") or {}).get("spec") or {}
    for c in template.get("containers") or ():
        image = str(c.get("image") or "")
        if image_repository(image) != CEPHCSI_IMAGE:
            continue
        args = [str(a) for a in (c.get("args") or ())] + [str(a) for a in (c.get("command") or ())]
        if _arg(args, "type") != "rbd" or (_arg(args, "nodeserver") or "").lower() != "true":
            continue
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        return NodePlugin(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                          selector={str(k): str(v) for k, v in selector.items()}, container=str(c.get("name")),
                          image=image, driver=_arg(args, "drivername") or CEPHCSI_DEFAULT_DRIVER)
    return None


@dataclass(frozen=True)
class CsiDiscovery:
    drivers: tuple[str, ...]                 # RBD drivers the cluster uses (StorageClasses, CSIDrivers, PVs)
    plugins: tuple[NodePlugin, ...]          # node plugins of those drivers (or every RBD plugin if none is named)
    looked_for: str                          # what was searched, for messages
    evidence: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    nothing_expected: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(sorted({p.version or "?" for p in self.plugins}))


def discover_node_plugins(*, daemonsets: Sequence[Mapping], storageclasses: Sequence[Mapping] = (),
                          csidrivers: Sequence[Mapping] = (), pv_drivers: Sequence[str] = (),
                          override: str | None = None, nothing_expected: bool = False) -> CsiDiscovery:
    """Find the RBD node plugin(s); ``override`` is ``namespace/name`` of the DaemonSet."""
    sc_drivers = sorted({str(sc.get("provisioner")) for sc in storageclasses
                         if is_rbd_driver(str(sc.get("provisioner") or ""))})
    cd_drivers = sorted({str((d.get("metadata") or {}).get("name")) for d in csidrivers
                         if is_rbd_driver(str((d.get("metadata") or {}).get("name") or ""))})
    pv = sorted({d for d in pv_drivers if is_rbd_driver(d)})
    drivers = tuple(sorted({*sc_drivers, *cd_drivers, *pv}))
    candidates = [p for p in (node_plugin_of(ds) for ds in daemonsets) if p is not None]
    evidence = [f"RBD drivers named by StorageClasses: {', '.join(sc_drivers) or 'none'}; by CSIDrivers: "
                f"{', '.join(cd_drivers) or 'none'}; by PersistentVolumes: {', '.join(pv) or 'none'}",
                f"{len(daemonsets)} DaemonSet(s) read; cephcsi RBD node servers among them: "
                + (", ".join(f"{p.ref} (driver {p.driver}, {p.image}, {p.layout})" for p in candidates) or "none")]
    looked_for = ("a DaemonSet whose pods run the cephcsi image with --type=rbd --nodeserver=true"
                  + (f" for driver {' or '.join(drivers)}" if drivers else ""))
    problems: list[str] = []
    if override:
        chosen = [p for p in candidates if p.ref == override]
        looked_for = f"the DaemonSet {override} named by the profile ({OVERRIDE_FIELD.split(' =')[0]})"
        if not chosen:
            problems.append(f"the profile names {override} as the RBD node plugin, but it is not a DaemonSet running "
                            "cephcsi as an RBD node server (cephcsi DaemonSets seen: "
                            f"{', '.join(p.ref for p in candidates) or 'none'})")
        return CsiDiscovery(drivers, tuple(chosen), looked_for, tuple(evidence), tuple(problems), nothing_expected)
    chosen = [p for p in candidates if p.driver in drivers] if drivers else candidates
    missing = [d for d in drivers if not any(p.driver == d for p in chosen)]
    if missing:
        problems.append(f"the cluster uses RBD driver(s) {', '.join(missing)} but no DaemonSet runs its node plugin "
                        f"(looked for {looked_for}; cephcsi RBD DaemonSets seen: "
                        f"{', '.join(f'{p.ref} for {p.driver}' for p in candidates) or 'none'}); "
                        f"if it has another form, name it with {OVERRIDE_FIELD}")
    elif not chosen and not nothing_expected:
        problems.append(f"found no Ceph RBD CSI node plugin (looked for {looked_for}) and no StorageClass, CSIDriver "
                        f"or PersistentVolume naming an RBD driver; if this cluster has no Ceph CSI, say so with "
                        f"{NOTHING_EXPECTED_FIELD}, else name the DaemonSet with {OVERRIDE_FIELD}")
    return CsiDiscovery(drivers, tuple(chosen), looked_for, tuple(evidence), tuple(problems), nothing_expected)
