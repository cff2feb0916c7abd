"""The etcd gate around an etcd node's upgrade, as pure verdicts over what etcdctl answered.

Before the node goes: every voting member (`etcdctl member list`) is healthy (`etcdctl endpoint
health` over the endpoints Kubespray's /etc/etcd.env lists) and the members other than this node's
still make a quorum (more than half of the voting members). After it returns: its member is healthy again and has applied the log up to the
leader's raft index, within ``RAFT_LAG_MAX`` entries (`etcdctl endpoint status`: ``raftAppliedIndex``
of the member against ``raftIndex`` of the leader). A member that cannot be found among the
answers fails the gate, naming the address looked for: nothing is passed on an empty answer.

No I/O here: the steps (nodegate.upgrade.steps.etcd) read, these decide.
"""
from __future__ import annotations

from collections.abc import Mapping

from nodegate.core.parsing.etcd import EtcdEndpoint, EtcdHealth, EtcdMembers, EtcdStatus
from nodegate.core.postconditions import Verdict

# How far (in raft entries) a returned member's applied index may trail the leader's raft index
# and count as caught up. etcdctl reads the endpoints one after another, so on a busy cluster
# (kube-apiserver writes leases and events many times a second) the leader's index moves between
# the two reads; a member that missed the minutes of a reboot trails by every write of those
# minutes, and one being sent a snapshot by far more.
RAFT_LAG_MAX = 1000

ENV_HINT = "the endpoints in /etc/etcd.env (Kubespray's etcd role writes it on every etcd node)"


def _label(endpoint: str, host: str, names_by_address: Mapping[str, str]) -> str:
    return f"{endpoint} ({names_by_address[host]})" if host in names_by_address else endpoint


def quorum_before(node: str, address: str, health: EtcdHealth, members: EtcdMembers,
                  names_by_address: Mapping[str, str]) -> Verdict:
    """Every voting member (`etcdctl member list`) healthy (`etcdctl endpoint health`), and a quorum
    of the voting members left with ``node``'s member (on ``address``) down. A member with no
    endpoint in /etc/etcd.env counts as not seen healthy."""
    if not members.members:
        return Verdict.no(f"etcdctl on {node} could not read etcd's members: {members.message}",
                          fix=f"on {node}: `set -a; . /etc/etcd.env; etcdctl member list`; check the members "
                              f"(`systemctl status etcd`, `journalctl -u etcd`) and {ENV_HINT}")
    if not health.read:
        return Verdict.no(f"etcdctl on {node} could not read etcd's health: {health.message}",
                          fix=f"on {node}: `set -a; . /etc/etcd.env; etcdctl endpoint health`; check the members "
                              f"(`systemctl status etcd`, `journalctl -u etcd`) and {ENV_HINT}")
    voting = members.voting
    mine = [m for m in voting if address in m.hosts]
    if not mine:
        return Verdict.no(f"no voting etcd member on {node}'s address {address} (members: "
                          f"{', '.join(f'{m.name or m.member_id} {m.client_urls}' for m in members.members)}): this "
                          "node's member cannot be told from the others, so quorum without it cannot be judged",
                          fix=f"check {ENV_HINT}, `etcdctl member list` and the inventory's ansible_host/ip for {node}")
    healthy_hosts = {e.host for e in health.endpoints if e.healthy}
    problems = [f"{_label(e.endpoint, e.host, names_by_address)}: {e.error or 'unhealthy'}" for e in health.unhealthy]
    unseen = [m for m in voting if not any(EtcdEndpoint(u, True).host in {e.host for e in health.endpoints}
                                           for u in m.client_urls)]
    problems += [f"member {m.name or m.member_id} ({', '.join(m.client_urls) or 'no client URL: never started'}) "
                 "is not among the endpoints /etc/etcd.env lists" for m in unseen]
    majority = len(voting) // 2 + 1
    left = sum(1 for m in voting if m not in mine and any(EtcdEndpoint(u, True).host in healthy_hosts
                                                            for u in m.client_urls))
    if left < majority:
        problems.append(f"quorum: {len(voting)} voting member(s) need {majority}; with {node}'s member down only "
                        f"{left} healthy member(s) would be left")
    if problems:
        return Verdict.no(f"etcd cannot spare {node}'s member now: " + "; ".join(problems),
                          fix="bring the unhealthy member(s) back first (on that node: `systemctl restart etcd`, "
                              "`journalctl -u etcd`) until `etcdctl endpoint health` shows every member healthy; "
                              "upgrade etcd nodes one at a time")
    return Verdict.ok(f"all {len(voting)} etcd members healthy; with {node}'s member down {left} of {len(voting)} "
                      f"remain (quorum {majority})")


def caught_up(node: str, address: str, health: EtcdHealth, status: EtcdStatus, *,
              max_lag: int = RAFT_LAG_MAX) -> Verdict:
    """``node``'s member (on ``address``) healthy, and its applied raft index within ``max_lag`` of
    the leader's raft index."""
    mine: EtcdEndpoint | None = next((e for e in health.endpoints if e.host == address), None)
    if mine is None:
        seen = ", ".join(e.endpoint for e in health.endpoints) or health.message or "nothing"
        return Verdict.no(f"no etcd endpoint on {node}'s address {address} in etcdctl endpoint health "
                          f"(it answered: {seen})", fix=f"check {ENV_HINT}")
    if not mine.healthy:
        return Verdict.no(f"{node}'s etcd member {mine.endpoint} is not healthy: {mine.error or 'unhealthy'}",
                          fix=f"on {node}: `systemctl status etcd`, `journalctl -u etcd`")
    member = status.on(address)
    if member is None:
        return Verdict.no(f"{node}'s etcd member {mine.endpoint} gave no status (etcdctl endpoint status: "
                          f"{status.message or 'not in the answer'})", fix=f"on {node}: `journalctl -u etcd`")
    leader = status.leader
    if leader is None:
        named = sorted({m.leader for m in status.members})
        return Verdict.no(f"no etcd leader could be read (members name {named or 'none'}; answers from "
                          f"{', '.join(m.endpoint for m in status.members)})",
                          fix="etcd may be electing a leader; `etcdctl endpoint status -w table` on an etcd node")
    lag = leader.raft_index - member.raft_applied_index
    where = f"{node}'s member applied raft index {member.raft_applied_index}, leader {leader.endpoint} at " \
            f"{leader.raft_index} (term {leader.raft_term})"
    if lag > max_lag:
        return Verdict.no(f"{where}: {lag} entries behind (at most {max_lag} count as caught up)",
                          fix=f"wait for it to catch up; on {node}: `journalctl -u etcd` (a snapshot being sent, "
                              "disk too slow)")
    return Verdict.ok(f"{where}: caught up (lag {max(lag, 0)} ≤ {max_lag}); healthy")
