"""etcd as the node's own etcdctl sees it: every member healthy, and quorum kept without this
node's member. Read on the node with Kubespray's /etc/etcd.env, which lists every
member's client endpoint (and, with TLS, the client certificates)."""
from __future__ import annotations

import pytest

from nodegate.plugin.fixtures import fail_check


@pytest.mark.preflight
@pytest.mark.postflight
def test_etcd_healthy(node, reads, profile, evidence):
    if not node.is_etcd:
        pytest.skip(f"{node.name} is not in the inventory's etcd group: it runs no etcd member")
    health = reads.etcd_health(node.name)
    evidence.table(f"{node.name}: etcd endpoints (etcdctl endpoint health)", ["endpoint", "healthy", "error"],
                   [[e.endpoint, e.healthy, e.error] for e in health.endpoints])
    if not health.read:
        fail_check(f"etcdctl on {node.name} could not read etcd's health: {health.message}",
                   fix=f"on {node.name}: `set -a; . /etc/etcd.env; etcdctl endpoint health`; check the member "
                       "(`systemctl status etcd`, `journalctl -u etcd`) and the endpoints in /etc/etcd.env")
    # The inventory's name beside each endpoint: an operator thinks in nodes, not URLs.
    names_by_host = {n.address: n.name for n in profile.nodes}
    label = lambda e: f"{e.endpoint} ({names_by_host[e.host]})" if e.host in names_by_host else e.endpoint  # noqa: E731
    problems = [f"{label(e)}: {e.error or 'unhealthy'}" for e in health.unhealthy]
    members, majority = len(health.endpoints), health.majority
    left = health.healthy_without(node.address)
    if not health.survives_losing(node.address):
        problems.append(f"quorum: {members} member(s) need {majority}; without {node.name}'s member only "
                        f"{left} healthy member(s) would be left")
    if problems:
        names = ", ".join(label(e) for e in health.unhealthy) or "none unhealthy"
        fail_check(f"etcd cannot spare {node.name}'s member now ({len(health.unhealthy)} of {members} member(s) "
                   f"unhealthy: {names})", details=problems,
                   fix="bring the unhealthy member(s) back first (on that node: `systemctl restart etcd`, "
                       "`journalctl -u etcd`) until `etcdctl endpoint health` shows every member healthy; "
                       "upgrade etcd nodes one at a time")
