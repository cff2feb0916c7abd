"""The etcd gate's verdicts (nodegate.core.etcd) over etcdctl 3.4's JSON, as the lab's real members
print it (`etcdctl endpoint health|status -w json`, captured with one member stopped too)."""
from __future__ import annotations

import json

from nodegate.core import etcd
from nodegate.core.parsing import parse_etcd_endpoint_health, parse_etcd_endpoint_status, parse_etcd_member_list

ADDR = {1: "127.9.1.1", 2: "127.9.1.2", 3: "127.9.1.3"}
NAMES = {a: f"node{i}" for i, a in ADDR.items()}
IDS = {1: 13100566301289890794, 2: 5940127635301241254, 3: 10163715100139329113}
STOPPED = ("Failed to get the status of endpoint http://127.9.1.3:2379 (context deadline exceeded)")


def health(*healthy: int, down: tuple[int, ...] = ()) -> str:
    items = [{"endpoint": f"http://{ADDR[i]}:2379", "health": True, "took": "2ms"} for i in healthy]
    items += [{"endpoint": f"http://{ADDR[i]}:2379", "health": False, "took": "2s",
               "error": "context deadline exceeded"} for i in down]
    return json.dumps(items)


def members(*nodes: int, learner: int = 0, unstarted: int = 0) -> str:
    items = [{"ID": IDS[i], "name": f"node{i}", "peerURLs": [f"http://{ADDR[i]}:2380"],
              "clientURLs": [f"http://{ADDR[i]}:2379"], **({"isLearner": True} if i == learner else {})} for i in nodes]
    if unstarted:   # `member add`ed, never started: no name, no client URL yet
        items.append({"ID": 77, "peerURLs": [f"http://{ADDR[unstarted]}:2380"]})
    return json.dumps({"header": {"cluster_id": 7480566746659235047, "member_id": IDS[2], "raft_term": 2},
                       "members": items})


MEMBERS = parse_etcd_member_list(members(1, 2, 3))


def status(indexes: dict[int, int], *, leader: int = 1, applied: dict[int, int] | None = None) -> str:
    applied = applied or indexes
    return json.dumps([{"Endpoint": f"http://{ADDR[i]}:2379", "Status": {
        "header": {"cluster_id": 7480566746659235047, "member_id": IDS[i], "revision": 1, "raft_term": 2},
        "version": "3.4.23", "dbSize": 20480, "leader": IDS[leader], "raftIndex": index, "raftTerm": 2,
        "raftAppliedIndex": applied[i], "dbSizeInUse": 16384}} for i, index in indexes.items()])


def test_quorum_holds_with_every_member_healthy():
    verdict = etcd.quorum_before("node2", ADDR[2], parse_etcd_endpoint_health(health(1, 2, 3)), MEMBERS, NAMES)
    assert verdict.holds and "with node2's member down 2 of 3 remain (quorum 2)" in verdict.text


def test_another_member_down_blocks_naming_it_and_the_quorum():
    read = parse_etcd_endpoint_health(health(1, 2, down=(3,)), rc=1, stderr="Error: unhealthy cluster")
    verdict = etcd.quorum_before("node2", ADDR[2], read, MEMBERS, NAMES)
    assert not verdict.holds
    assert "http://127.9.1.3:2379 (node3): context deadline exceeded" in verdict.text
    assert "with node2's member down only 1 healthy member(s) would be left" in verdict.text
    assert "one at a time" in verdict.fix


def test_no_answer_or_no_endpoint_of_this_node_fails_closed():
    empty = parse_etcd_endpoint_health("", rc=1, stderr="Error: dial tcp: connection refused")
    verdict = etcd.quorum_before("node2", ADDR[2], empty, MEMBERS, NAMES)
    assert not verdict.holds and "could not read etcd's health: Error: dial tcp" in verdict.text
    elsewhere = etcd.quorum_before("node5", "127.9.1.5", parse_etcd_endpoint_health(health(1, 2, 3)), MEMBERS, NAMES)
    assert not elsewhere.holds and "no voting etcd member on node5's address 127.9.1.5" in elsewhere.text
    unread = parse_etcd_member_list("", rc=1, stderr="Error: context deadline exceeded")
    blind = etcd.quorum_before("node2", ADDR[2], parse_etcd_endpoint_health(health(1, 2, 3)), unread, NAMES)
    assert not blind.holds and "could not read etcd's members: Error: context deadline exceeded" in blind.text


def test_quorum_counts_the_members_not_the_env_file():
    """A member /etc/etcd.env does not list (added later, the file not rewritten) is not seen healthy;
    a learner does not vote."""
    two_listed = parse_etcd_endpoint_health(health(1, 2))
    verdict = etcd.quorum_before("node1", ADDR[1], two_listed, MEMBERS, NAMES)
    assert not verdict.holds and "member node3 (http://127.9.1.3:2379) is not among the endpoints" in verdict.text
    assert "with node1's member down only 1 healthy member(s)" in verdict.text
    learner = parse_etcd_member_list(members(1, 2, 3, learner=3))
    assert [m.name for m in learner.voting] == ["node1", "node2"]
    lonely = etcd.quorum_before("node1", ADDR[1], parse_etcd_endpoint_health(health(1, 2, 3)), learner, NAMES)
    assert not lonely.holds and "2 voting member(s) need 2; with node1's member down only 1" in lonely.text
    unstarted = parse_etcd_member_list(members(1, 2, 3, unstarted=3))
    assert len(unstarted.voting) == 4
    four = etcd.quorum_before("node1", ADDR[1], parse_etcd_endpoint_health(health(1, 2, 3)), unstarted, NAMES)
    assert not four.holds and "member 77 (no client URL: never started)" in four.text


def test_caught_up_within_the_bound_and_behind_beyond_it():
    h = parse_etcd_endpoint_health(health(1, 2, 3))
    near = parse_etcd_endpoint_status(status({1: 5000, 2: 5000, 3: 4990}, applied={1: 5000, 2: 5000, 3: 4990}))
    verdict = etcd.caught_up("node3", ADDR[3], h, near)
    assert verdict.holds and "applied raft index 4990, leader http://127.9.1.1:2379 at 5000" in verdict.text
    far = parse_etcd_endpoint_status(status({1: 9000, 2: 9000, 3: 9000}, applied={1: 9000, 2: 9000, 3: 100}))
    behind = etcd.caught_up("node3", ADDR[3], h, far)
    assert not behind.holds and "8900 entries behind (at most 1000" in behind.text


def test_a_member_without_status_or_health_is_not_caught_up():
    partial = parse_etcd_endpoint_status(status({1: 8, 2: 8}), rc=1, stderr=STOPPED)
    assert partial.message == STOPPED and partial.leader is not None and partial.leader.is_leader
    verdict = etcd.caught_up("node3", ADDR[3], parse_etcd_endpoint_health(health(1, 2, 3)), partial)
    assert not verdict.holds and "gave no status" in verdict.text and STOPPED in verdict.text
    sick = etcd.caught_up("node3", ADDR[3], parse_etcd_endpoint_health(health(1, 2, down=(3,))), partial)
    assert not sick.holds and "is not healthy: context deadline exceeded" in sick.text


def test_no_agreed_leader_is_not_caught_up():
    split = parse_etcd_endpoint_status(status({1: 8, 2: 8, 3: 8}, leader=3))
    assert split.leader is not None
    none = parse_etcd_endpoint_status(json.dumps([{"Endpoint": f"http://{ADDR[3]}:2379", "Status": {
        "header": {"member_id": IDS[3]}, "leader": 0, "raftIndex": 8, "raftAppliedIndex": 8}}]))
    verdict = etcd.caught_up("node3", ADDR[3], parse_etcd_endpoint_health(health(3)), none)
    assert not verdict.holds and "no etcd leader could be read" in verdict.text
