"""Whether the Kubernetes API the harness talks to lives on the node being upgraded (pure logic).

Kubespray's `kubeconfig_localhost` writes `artifacts/admin.conf` with the first control-plane
node's address as its server unless `loadbalancer_apiserver` is set (roles/kubernetes/client): an
operator who uses that file and upgrades that node loses the API in the middle of the run (the
node's drain, reboots and Ready waits all need it). The comparison is by address: the server's
host resolved, the node's inventory addresses (ansible_host, ip, access_ip) resolved, any
address in both means the same machine.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

# The inventory variables that give a node's addresses (Kubespray: ansible_host to reach it,
# ip to bind its services, access_ip for other hosts to reach them).
NODE_ADDRESS_VARS = ("ansible_host", "ip", "access_ip")


def server_host_port(server: str) -> tuple[str, int]:
    """('10.0.0.1', 6443) from a kubeconfig's server URL; ValueError naming what is wrong."""
    text = (server or "").strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the kubeconfig's server {server!r} is not an http(s) URL with a host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the kubeconfig's server {server!r} has an invalid port") from None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def canonical(address: str) -> str:
    """One spelling per address ('::ffff:10.0.0.1' and '10.0.0.1' compare equal); a name as given."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return address.strip().lower().rstrip(".")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


@dataclass(frozen=True)
class EndpointVerdict:
    server: str
    host: str
    server_addresses: tuple[str, ...]               # the server's host, resolved
    node: str
    node_addresses: Mapping[str, tuple[str, ...]]   # inventory variable -> its value resolved
    shared: tuple[str, ...]                         # addresses in both: the API is on the node

    @property
    def on_node(self) -> bool:
        return bool(self.shared)

    @property
    def via(self) -> str:
        """Which of the node's addresses the server matched, as 'access_ip 10.0.0.1'."""
        names = [f"{name} {address}" for name, addresses in self.node_addresses.items()
                 for address in addresses if address in self.shared]
        return ", ".join(dict.fromkeys(names))


def compare(*, server: str, host: str, server_addresses: Iterable[str], node: str,
            node_addresses: Mapping[str, Iterable[str]]) -> EndpointVerdict:
    """The verdict for a server whose host resolved to SERVER_ADDRESSES and a node whose inventory
    addresses (name -> resolved addresses) are NODE_ADDRESSES."""
    api = tuple(dict.fromkeys(canonical(a) for a in server_addresses))
    mine = {name: tuple(dict.fromkeys(canonical(a) for a in addresses)) for name, addresses in node_addresses.items()}
    everything = {a for addresses in mine.values() for a in addresses}
    shared = tuple(a for a in api if a in everything)
    return EndpointVerdict(server=server, host=host, server_addresses=api, node=node, node_addresses=mine,
                           shared=shared)
