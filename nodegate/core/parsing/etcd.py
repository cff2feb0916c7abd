"""Parsers of `etcdctl endpoint health` and `etcdctl endpoint status` JSON.
"""
from __future__ import annotations

from dataclasses import dataclass

from nodegate.core.parsing.ceph import _as_dict, _as_int, _as_list, _load_json


@dataclass(frozen=True)
class EtcdEndpoint:
    endpoint: str              # client URL, e.g. https://10.0.0.1:2379
    healthy: bool
    error: str = ""            # etcdctl's reason when not healthy ("context deadline exceeded")

    @property
    def host(self) -> str:
        """The URL's host part (no scheme, no port): what an inventory's address is compared with."""
        rest = self.endpoint.split("://", 1)[-1].split("/", 1)[0]
        if rest.startswith("["):                       # [v6]:2379
            return rest[1:].split("]", 1)[0]
        return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


@dataclass(frozen=True)
class EtcdHealth:
    """`etcdctl endpoint health -w json` over every member's endpoint."""
    endpoints: tuple[EtcdEndpoint, ...] = ()
    message: str = ""          # why nothing (or not everything) could be read

    @property
    def read(self) -> bool:
        return bool(self.endpoints)

    @property
    def unhealthy(self) -> tuple[EtcdEndpoint, ...]:
        return tuple(e for e in self.endpoints if not e.healthy)

    @property
    def majority(self) -> int:
        """Members needed for quorum: more than half of all members."""
        return len(self.endpoints) // 2 + 1

    def healthy_without(self, host: str) -> int:
        """Healthy members left once the member on ``host`` is gone. When no endpoint is on
        ``host`` (etcd may listen on another address than the one SSH uses), a healthy one is
        assumed to go: the cautious reading."""
        healthy = [e for e in self.endpoints if e.healthy]
        if any(e.host == host for e in self.endpoints):
            return sum(1 for e in healthy if e.host != host)
        return max(len(healthy) - 1, 0)

    def survives_losing(self, host: str) -> bool:
        return self.read and self.healthy_without(host) >= self.majority


def parse_etcd_endpoint_health(json_text: str, rc: int = 0, stderr: str = "") -> EtcdHealth:
    """etcdctl 3.4 prints a JSON list (one object per endpoint: endpoint, health, took, error)
    and exits 1 when any endpoint is unhealthy, the list still on stdout; its reason
    ("Error: unhealthy cluster", or why it could not start) is on stderr."""
    error = next((line.strip() for line in reversed(stderr.splitlines()) if line.startswith("Error")), "")
    endpoints = []
    for item in _as_list(_load_json(json_text)):
        item = _as_dict(item)
        url = item.get("endpoint")
        if not isinstance(url, str) or not url:
            continue
        # Health is only ever true when etcdctl says exactly true.
        healthy = item.get("health") is True
        reason = item.get("error")
        endpoints.append(EtcdEndpoint(endpoint=url, healthy=healthy,
                                      error=reason if isinstance(reason, str) and not healthy else ""))
    if not endpoints:
        return EtcdHealth(message=error or f"no JSON answer from etcdctl endpoint health (rc {rc})")
    return EtcdHealth(endpoints=tuple(sorted(endpoints, key=lambda e: e.endpoint)),
                      message=error if rc != 0 else "")


@dataclass(frozen=True)
class EtcdMemberStatus:
    """One member's `etcdctl endpoint status` answer."""
    endpoint: str
    member_id: int             # header.member_id
    leader: int                # the member id this member takes for the leader (0: none known)
    raft_index: int
    raft_applied_index: int    # raftAppliedIndex (etcd 3.4+); the raft index where it is absent
    raft_term: int
    version: str = ""

    @property
    def host(self) -> str:
        return EtcdEndpoint(self.endpoint, True).host

    @property
    def is_leader(self) -> bool:
        return self.member_id != 0 and self.member_id == self.leader


@dataclass(frozen=True)
class EtcdStatus:
    """`etcdctl endpoint status -w json` over every member's endpoint. etcdctl leaves an endpoint
    that does not answer out of the list (its reason is on stderr) and exits 1."""
    members: tuple[EtcdMemberStatus, ...] = ()
    message: str = ""

    def on(self, host: str) -> EtcdMemberStatus | None:
        return next((m for m in self.members if m.host == host), None)

    @property
    def leader(self) -> EtcdMemberStatus | None:
        """The member every answering member names as leader, when it answered itself."""
        named = {m.leader for m in self.members if m.leader}
        if len(named) != 1:
            return None
        leader_id = named.pop()
        return next((m for m in self.members if m.member_id == leader_id), None)


def parse_etcd_endpoint_status(json_text: str, rc: int = 0, stderr: str = "") -> EtcdStatus:
    """etcdctl 3.4 prints a JSON list of {"Endpoint", "Status": {"header": {"member_id", ...},
    "leader", "raftIndex", "raftTerm", "raftAppliedIndex", "version", ...}}."""
    error = next((line.strip() for line in reversed(stderr.splitlines())
                  if line.startswith(("Error", "Failed"))), "")
    members = []
    for item in _as_list(_load_json(json_text)):
        item = _as_dict(item)
        url, status = item.get("Endpoint"), _as_dict(item.get("Status"))
        header = _as_dict(status.get("header"))
        if not isinstance(url, str) or not url or not status:
            continue
        index = _as_int(status.get("raftIndex"))
        applied = _as_int(status.get("raftAppliedIndex"), index) if "raftAppliedIndex" in status else index
        version = status.get("version")
        members.append(EtcdMemberStatus(endpoint=url, member_id=_as_int(header.get("member_id")),
                                        leader=_as_int(status.get("leader")), raft_index=index,
                                        raft_applied_index=applied, raft_term=_as_int(status.get("raftTerm")),
                                        version=version if isinstance(version, str) else ""))
    if not members:
        return EtcdStatus(message=error or f"no JSON answer from etcdctl endpoint status (rc {rc})")
    return EtcdStatus(members=tuple(sorted(members, key=lambda m: m.endpoint)), message=error if rc != 0 else "")


@dataclass(frozen=True)
class EtcdMember:
    member_id: int
    name: str
    client_urls: tuple[str, ...]
    peer_urls: tuple[str, ...]
    learner: bool = False      # a learner does not vote: it does not count for quorum

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(EtcdEndpoint(url, True).host for url in (*self.client_urls, *self.peer_urls))


@dataclass(frozen=True)
class EtcdMembers:
    """`etcdctl member list -w json`: the cluster's membership as the answering member knows it."""
    members: tuple[EtcdMember, ...] = ()
    message: str = ""

    @property
    def voting(self) -> tuple[EtcdMember, ...]:
        return tuple(m for m in self.members if not m.learner)


def parse_etcd_member_list(json_text: str, rc: int = 0, stderr: str = "") -> EtcdMembers:
    """etcdctl 3.4 prints {"header": {...}, "members": [{"ID", "name", "peerURLs", "clientURLs",
    "isLearner"?}]}; a member that never started has no name and no client URLs yet."""
    error = next((line.strip() for line in reversed(stderr.splitlines()) if line.startswith("Error")), "")
    members = []
    for item in _as_list(_as_dict(_load_json(json_text)).get("members")):
        item = _as_dict(item)
        urls = {key: tuple(u for u in _as_list(item.get(key)) if isinstance(u, str) and u)
                for key in ("clientURLs", "peerURLs")}
        name = item.get("name")
        members.append(EtcdMember(member_id=_as_int(item.get("ID")), name=name if isinstance(name, str) else "",
                                  client_urls=urls["clientURLs"], peer_urls=urls["peerURLs"],
                                  learner=item.get("isLearner") is True))
    if not members:
        return EtcdMembers(message=error or f"no JSON answer from etcdctl member list (rc {rc})")
    return EtcdMembers(members=tuple(sorted(members, key=lambda m: m.name)), message=error if rc != 0 else "")
