"""Batches and the drain preview: pure logic over real Ceph 16.2 JSON (tests/unit/data/ceph_racks, from
the lab's 3-rack Ceph; tests/unit/core/parsing/data/ceph, the reference capture, for hosts without racks) and budgets as the API has them."""
from __future__ import annotations

import json
from pathlib import Path

from nodegate.core import batching
from nodegate.core.batching import Budget, BudgetPod, Candidate, StopAnswer
from nodegate.core.drainpreview import BLOCKS, LOSES, WAITS, preview

RACKS = Path(__file__).resolve().parent / "data" / "ceph_racks"
REFERENCE = Path(__file__).resolve().parent / "parsing" / "data" / "ceph"


def racks_text(name: str) -> str:
    return (RACKS / name).read_text()


def tree():
    return batching.parse_crush_tree(racks_text("osd-tree.json"))


def test_the_tree_gives_each_host_its_osds_and_its_rack():
    t = tree()
    assert t.host_osds == {f"node{i}": (i - 1,) for i in range(1, 7)}
    assert {h: t.bucket(h, "rack") for h in t.host_osds} == {
        "node1": "rack1", "node4": "rack1", "node2": "rack2", "node5": "rack2", "node3": "rack3", "node6": "rack3"}
    assert t.bucket("node1", "root") == "default"


def test_a_tree_without_racks_has_hosts_under_the_root():
    t = batching.parse_crush_tree((REFERENCE / "04-osd-tree.json").read_text())
    assert t.host_osds == {"node-0": (0,), "node-1": (1,), "node-2": (2,)}
    assert t.bucket("node-0", "rack") is None and t.bucket("node-0", "root") == "default"


def test_every_pool_has_its_rules_failure_domain():
    pools = batching.pool_domains(racks_text("osd-pool-ls-detail.json"), racks_text("crush-rule-dump.json"))
    assert {(p.pool, p.domain, p.size, p.min_size) for p in pools} == {
        ("rbd", "rack", 3, 2), ("device_health_metrics", "rack", 3, 2)}
    host_rule = json.loads(racks_text("crush-rule-dump.json"))[0]
    assert batching.rule_domain(host_rule) == "host"
    # Rook's OSD budgets follow the lowest domain any pool enforces: one pool on hosts makes it host
    assert batching.lowest_domain(pools) == "rack"
    mgr_on_hosts = [*pools, batching.PoolDomain(".mgr", "replicated_rule", "host", 3, 2)]
    assert batching.lowest_domain(mgr_on_hosts) == "host" and batching.lowest_domain([]) == "host"


def ceph_answer(name: str) -> StopAnswer:
    """A StopAnswer from a recorded ok-to-stop (rc from the file's own verdict)."""
    data = json.loads(racks_text(name))
    return StopAnswer(ok=data["ok_to_stop"], osds=tuple(data["osds"]), command="ceph osd ok-to-stop 0 --max 6",
                      reason="" if data["ok_to_stop"] else "PGs would become inactive")


def candidates(*names: str, alone: dict | None = None) -> list[Candidate]:
    t = tree()
    return [Candidate(name=n, kube_node=n, alone=(alone or {}).get(n), host=n, osds=t.host_osds[n],
                      domains={"rack": t.bucket(n, "rack")}) for n in names]


POOLS = batching.pool_domains(racks_text("osd-pool-ls-detail.json"), racks_text("crush-rule-dump.json"))


def test_rack_mates_go_together_as_ceph_answers_and_other_racks_wait():
    """Ceph's own --max answer for osd.0 is its rack (osd.0, osd.3): node1 and node4 make one batch; node2
    and node5 (other racks) are not in it. The rolling order decides the seeds."""
    asked = []

    def may_stop(osds):
        asked.append(osds)
        if osds == (0,):
            return ceph_answer("ok-to-stop-0-max6.json")
        rack = {1: (1, 4), 4: (1, 4), 2: (2, 5), 5: (2, 5)}[osds[0]]
        return StopAnswer(ok=True, osds=rack, command=f"ceph osd ok-to-stop {osds[0]} --max 6")

    grouped = batching.group(candidates("node1", "node2", "node4", "node5"), limit=None, pools=POOLS,
                             may_stop=may_stop, budgets_refuse=lambda nodes: [])
    assert [g.names for g in grouped] == [("node1", "node4"), ("node2", "node5")]
    assert asked == [(0,), (1,)]       # once a batch
    assert "osd.0, osd.3" in grouped[0].why and "one rack (rack1)" in grouped[0].why


def test_ceph_refusing_leaves_each_node_alone_with_the_reason():
    refused = ceph_answer("ok-to-stop-0-1.json")
    grouped = batching.group(candidates("node1", "node2"), limit=None, pools=POOLS,
                             may_stop=lambda osds: refused, budgets_refuse=lambda nodes: [])
    assert [g.names for g in grouped] == [("node1",), ("node2",)]
    assert "Ceph would not stop node2 (osd.1) with it" in grouped[0].why and "inactive" in grouped[0].why


def test_limit_control_plane_and_etcd():
    yes = StopAnswer(ok=True, osds=tuple(range(6)), command="ceph osd ok-to-stop 0 --max 6")
    cands = candidates("node1", "node2", "node3", "node4", "node5", alone={"node2": "control plane alone"})
    grouped = batching.group(cands, limit=2, pools=POOLS, may_stop=lambda osds: yes, budgets_refuse=lambda n: [])
    assert [g.names for g in grouped] == [("node1", "node3"), ("node2",), ("node4", "node5")]
    assert grouped[1].why == "node2: control plane alone"
    one = batching.group(cands, limit=1, pools=POOLS, may_stop=lambda osds: yes, budgets_refuse=lambda n: [])
    assert [g.names for g in one] == [("node1",), ("node2",), ("node3",), ("node4",), ("node5",)]


def pod(ref: str, node: str, labels: dict, **extra) -> BudgetPod:
    ns = ref.split("/")[0]
    return BudgetPod(ref=ref, namespace=ns, node=node, labels=labels, owner=extra.pop("owner", "ReplicaSet x"), **extra)


def budget(ref: str, selector: dict, allowed: int, expected: int = 2, rook_osd: bool = False) -> Budget:
    return Budget(ref=ref, namespace=ref.split("/")[0],
                  matches=lambda p: all(p.labels.get(k) == v for k, v in selector.items()),
                  disruptions_allowed=allowed, expected_pods=expected, rook_osd=rook_osd)


PAIR = [pod("demo/pair-a", "node4", {"app": "pair"}), pod("demo/pair-b", "node5", {"app": "pair"})]
ONE_LEFT = budget("demo/pair", {"app": "pair"}, allowed=1)


def test_a_budget_is_spent_across_the_batch_not_per_node():
    assert batching.simulate_evictions(PAIR, [ONE_LEFT], ["node4"]) == []
    assert batching.simulate_evictions(PAIR, [ONE_LEFT], ["node5"]) == []
    [short] = batching.simulate_evictions(PAIR, [ONE_LEFT], ["node4", "node5"])
    assert (short.budget, short.nodes) == ("demo/pair", ("node4", "node5"))
    assert "allows 1 disruption(s) now and the batch would evict 2" in short.detail


def test_the_budget_splits_a_batch_ceph_allows():
    yes = StopAnswer(ok=True, osds=(3, 4), command="ceph osd ok-to-stop 3 --max 6")
    view_pods, budgets = PAIR, [ONE_LEFT]
    grouped = batching.group(candidates("node4", "node5"), limit=None, pools=POOLS, may_stop=lambda o: yes,
                             budgets_refuse=lambda nodes: batching.simulate_evictions(view_pods, budgets, nodes))
    assert [g.names for g in grouped] == [("node4",), ("node5",)]
    assert "PodDisruptionBudget demo/pair" in grouped[0].why


OSD_PODS = [pod(f"rook-ceph/rook-ceph-osd-{i}", f"node{i + 1}", {"app": "rook-ceph-osd", "topology-location-rack": rack})
            for i, rack in ((0, "rack1"), (3, "rack1"), (1, "rack2"))]
ROOK = budget("rook-ceph/rook-ceph-osd", {"app": "rook-ceph-osd"}, allowed=1, expected=6, rook_osd=True)


def rack_of(p: BudgetPod) -> str:
    return f"rack {p.labels['topology-location-rack']}"


def test_rooks_osd_budget_lets_one_failure_domain_go_when_rook_manages_it():
    assert batching.simulate_evictions(OSD_PODS, [ROOK], ["node1", "node4"], rook_manages=True, osd_domain=rack_of) == []
    [two] = batching.simulate_evictions(OSD_PODS, [ROOK], ["node1", "node2"], rook_manages=True, osd_domain=rack_of)
    assert "one failure domain" in two.detail and "rack rack1, rack rack2" in two.detail
    # nobody swaps a budget Rook does not manage: it counts as any other
    [plain] = batching.simulate_evictions(OSD_PODS, [ROOK], ["node1", "node4"], rook_manages=False)
    assert "allows 1 disruption(s)" in plain.detail


def test_preview_names_every_kind_of_blocker_with_its_owner_and_fix():
    pods = [*PAIR,
            pod("demo/solo", "node4", {"app": "solo"}, owner="ReplicaSet solo-1"),
            pod("demo/slow", "node5", {"app": "slow"}, grace_period_s=900),
            pod("demo/debug-shell", "node4", {"run": "debug-shell"}, owner="none", unmanaged=True),
            pod("demo/cache", "node5", {"app": "cache"}, uses_emptydir=True),
            pod("rook-ceph/rook-ceph-osd-3", "node4", {"app": "rook-ceph-osd"})]
    budgets = [ONE_LEFT, budget("demo/solo", {"app": "solo"}, allowed=0, expected=1),
               budget("rook-ceph/rook-ceph-osd-host-node4", {"app": "rook-ceph-osd"}, allowed=0, expected=1)]
    issues = preview(pods, budgets, ["node4", "node5"], drain_timeout_s=600)
    text = "\n".join(i.describe() for i in issues)
    assert [i.severity for i in issues] == [BLOCKS] * 3 + [WAITS] + [LOSES] * 2
    assert issues[2].pod == "demo/slow" and issues[3].pod == "demo/pair-a, demo/pair-b"
    assert "PodDisruptionBudget demo/pair" in text and "upgrade node4, node5 in different batches" in text
    assert "demo/solo (single replica)" in text and "scale ReplicaSet solo-1 to 2 or more" in text
    assert "Rook holds another failure domain down" in text
    assert "terminationGracePeriodSeconds 900" in text and "drain_timeout_s" in text
    assert "demo/debug-shell (no controller)" in text and "demo/cache (ReplicaSet x)" in text
    alone = preview(pods, budgets, ["node5"], drain_timeout_s=600)
    assert not any("demo/pair" in i.what for i in alone)


def test_nodes_without_osds_join_on_the_budgets_alone_and_ceph_is_not_asked():
    plain = [Candidate(name=n, kube_node=n) for n in ("edge1", "edge2", "edge3")]

    def never(osds):
        raise AssertionError(f"Ceph asked about {osds} for nodes without OSDs")

    grouped = batching.group(plain, limit=None, pools=POOLS, may_stop=never, budgets_refuse=lambda n: [])
    assert [g.names for g in grouped] == [("edge1", "edge2", "edge3")]
    assert "Ceph" not in grouped[0].why and "PodDisruptionBudgets let their pods go together" in grouped[0].why
    split = batching.group(plain, limit=None, pools=POOLS, may_stop=never,
                           budgets_refuse=lambda n: batching.simulate_evictions(
                               [pod("demo/a", "edge1", {"app": "a"}), pod("demo/b", "edge3", {"app": "a"})],
                               [budget("demo/a", {"app": "a"}, allowed=1)], n))
    assert [g.names for g in split] == [("edge1", "edge2"), ("edge3",)]
