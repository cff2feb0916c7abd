"""Read what identifies a node's incarnation and its current boot, from the node (SSH) and the API.

The judgements are pure (nodegate.core.incarnation, nodegate.core.postconditions); this module
only reads. Boot facts come from one command on the node, timed by the node's own clock, so a
reboot request and the boot that followed it are compared without any clock skew between the
operator's machine and the node.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from nodegate.cluster.nodes.remote import remote_program
from nodegate.core.incarnation import Incarnation
from nodegate.core.postconditions import BootFacts

if TYPE_CHECKING:
    from nodegate.cluster.kube.client import Kube
    from nodegate.cluster.nodes.ssh import NodeHost

CLUSTER_NAMESPACE = "kube-system"      # its UID stands for the cluster (it exists in every cluster)


def _read(host: "NodeHost") -> dict[str, Any]:
    out = host.run(["python3", "-c", remote_program("read_boot")])
    return json.loads(out.stdout)


def boot_facts(host: "NodeHost") -> BootFacts:
    """The node's current boot: its id, when it began, the node's clock now, and whether a reboot is pending."""
    data = _read(host)
    now = float(data["now"])
    uptime = data.get("uptime")
    return BootFacts(boot_id=data.get("boot_id") or "", boot_time=(now - float(uptime)) if uptime is not None else 0.0,
                     now=now, reboot_required=bool(data.get("reboot_required")),
                     reboot_packages=tuple(data.get("reboot_packages") or ()))


def incarnation(host: "NodeHost", kube: "Kube", node: str) -> Incarnation:
    """The live node's incarnation: /etc/machine-id and the boot (SSH), the Node's uid and the
    cluster's kube-system namespace uid (API)."""
    data = _read(host)
    now = float(data["now"])
    uptime = data.get("uptime")
    status = kube.node(node)
    node_uid = str(((status.raw or {}).get("metadata") or {}).get("uid") or "")
    return Incarnation(machine_id=data.get("machine_id") or "", node_uid=node_uid,
                       cluster_uid=kube.namespace_uid(CLUSTER_NAMESPACE), boot_id=data.get("boot_id") or "",
                       boot_time=(now - float(uptime)) if uptime is not None else 0.0)
