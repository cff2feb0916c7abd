"""Kubespray's artifacts/admin.conf in the lab's inventory: a kubeconfig whose server is the first
control-plane node.

Upstream fact (kubernetes-sigs/kubespray roles/kubernetes/client, `kubeconfig_localhost: true`): the
admin kubeconfig copied to `{{ inventory_dir }}/artifacts/admin.conf` names
`https://<first kube_control_plane host's access_ip/ip>:<kube_apiserver_port>` as its server unless
`loadbalancer_apiserver` is set (field-facts.md, "API endpoint"). The lab API server answers on
each control-plane node's address too (apiserver/__main__.py), so this file works like the real
one, and a harness that trusts it while upgrading node1 is what the API endpoint preflight refuses.
The credentials are the lab kubeconfig's (DIR/kubeconfig); only the server differs.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from nodegate.lab import shared_files
from nodegate.lab.config import LabConfig

ARTIFACT = "artifacts/admin.conf"


def first_control_plane_server(config: LabConfig) -> str:
    first = next(n for n in config.nodes if n.control_plane)
    return f"{'https' if config.api_tls else 'http'}://{first.address}:{config.api_port}"


def write_admin_conf(config: LabConfig, inventory_dir: Path) -> Path:
    """INVENTORY_DIR/artifacts/admin.conf from the lab's kubeconfig, server = the first control-plane node."""
    from nodegate.lab.profile_files import kubeconfig

    data = yaml.safe_load(kubeconfig(config))
    for cluster in data["clusters"]:
        cluster["cluster"]["server"] = first_control_plane_server(config)
    path = Path(inventory_dir) / ARTIFACT
    path.parent.mkdir(parents=True, exist_ok=True)
    shared_files.write_atomic(path, yaml.safe_dump(data, sort_keys=False), mode=0o600)
    return path
