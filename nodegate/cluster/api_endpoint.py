"""Where the kubeconfig's API server is, compared with the node about to be upgraded.

Kubespray's `artifacts/admin.conf` (kubeconfig_localhost) names the first control-plane node's
address as its server unless `loadbalancer_apiserver` is configured (roles/kubernetes/client), and
operators often copy that file to ~/.kube/config. Upgrading that node with that kubeconfig takes
the API away at the node's first reboot: the drain has happened, the Ready waits and the uncordon
cannot. The verdict is by address (nodegate.core.api_endpoint): the server's host and the node's
ansible_host, ip and access_ip are resolved and compared.
"""
from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from nodegate.core.api_endpoint import NODE_ADDRESS_VARS, EndpointVerdict, compare, server_host_port
from nodegate.core.errors import UsageError
from nodegate.profile.inventory import Inventory, read_inventory
from nodegate.profile.model import NodeSpec, Profile


def kubeconfig_server(path: Path, context: str | None = None) -> str:
    """The server URL of the kubeconfig's context (the profile's, else its current-context)."""
    data = _as_of_file(_kubeconfig_data, Path(path))
    wanted = context or data.get("current-context")
    try:
        ctx = next(c["context"] for c in data.get("contexts") or [] if c.get("name") == wanted)
        cluster = next(c["cluster"] for c in data.get("clusters") or [] if c.get("name") == ctx.get("cluster"))
        return str(cluster["server"])
    except (StopIteration, KeyError, TypeError, AttributeError):
        raise UsageError(f"kubeconfig {path}: context {wanted!r} names no cluster with a server",
                         fix="set [kubernetes] context to a context whose cluster has a server") from None


def resolve(host: str) -> tuple[str, ...]:
    """Every address HOST resolves to (an address resolves to itself); () when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        return ()
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


def _kubeconfig_data(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read kubeconfig {path}: {exc}", fix="point [kubernetes] kubeconfig at a kubeconfig") \
            from None


def _as_of_file(read: Callable[[Path], Any], path: Path) -> Any:
    """read(path), parsed again only when the file changed: every node's check reads the same
    kubeconfig and inventory (which grows with the fleet). Callers only read what it returns."""
    try:
        stat = path.stat()
    except OSError:
        return read(path)     # its UsageError names the problem
    return _read_as_of(read, path, stat.st_mtime_ns, stat.st_size, stat.st_ino)


@functools.lru_cache(maxsize=8)
def _read_as_of(read: Callable[[Path], Any], path: Path, _mtime_ns: int, _size: int, _inode: int) -> Any:
    return read(path)


def node_addresses(profile: Profile, node: NodeSpec) -> dict[str, tuple[str, ...]]:
    """The node's inventory addresses (ansible_host, ip, access_ip), each resolved."""
    values = {"ansible_host": node.address}
    inventory: Inventory = _as_of_file(read_inventory, profile.kubespray.inventory)
    host_vars = inventory.vars_for(node.name)
    for name in NODE_ADDRESS_VARS[1:]:
        if host_vars.get(name) and "{{" not in host_vars[name]:
            values[name] = host_vars[name]
    return {name: resolve(value) or (value,) for name, value in values.items()}


def endpoint_verdict(profile: Profile, node: NodeSpec) -> EndpointVerdict:
    """Whether the profile's kubeconfig server is NODE (UsageError when its host does not resolve)."""
    server = kubeconfig_server(profile.kube.kubeconfig, profile.kube.context)
    try:
        host, _ = server_host_port(server)
    except ValueError as exc:
        raise UsageError(f"kubeconfig {profile.kube.kubeconfig}: {exc}", fix="fix the cluster's server URL") from None
    resolved = resolve(host)
    if not resolved:
        raise UsageError(f"the kubeconfig's server {server} ({profile.kube.kubeconfig}): {host} does not resolve, so "
                         f"nodegate cannot tell whether it is {node.name}",
                         fix="use a server name this machine resolves (or its address)")
    return compare(server=server, host=host, server_addresses=resolved, node=node.name,
                   node_addresses=node_addresses(profile, node))


def fix_for(profile: Profile, node: NodeSpec) -> str:
    """Name the load balancer or the other control-plane nodes to use instead."""
    others = [n for n in profile.nodes if n.is_control_plane and n.name != node.name]
    instead = (f"or at another control-plane node ({', '.join(f'{n.name} {n.address}' for n in others)})"
               if others else "(the inventory has no other control-plane node, so only a load balancer can stand in)")
    return (f"point the kubeconfig's server at a load balancer in front of the API servers (Kubespray's "
            f"loadbalancer_apiserver, or its localhost load balancer on a node other than {node.name}) {instead}; "
            f"e.g. `kubectl config set-cluster <cluster> --server=https://<address>:6443 --kubeconfig "
            f"{profile.kube.kubeconfig}`, or set [kubernetes] kubeconfig to such a file; then run again")
