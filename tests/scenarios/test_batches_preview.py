"""Batches and the drain preview, read-only, on a lab of its own: 8 nodes in 4 racks
(`--racks 4`: node1 and node5 in rack1, node2 and node6 in rack2, ...; every pool on a rule that
puts its three copies in three racks, min_size 2) and Rook managing its OSD budgets
(`--manage-pod-budgets`). Nothing is changed on a node; the tests only add a PodDisruptionBudget and
two one-replica Deployments through the API.

What a rack-aware cluster answers (tests/lab/test_ceph.py shows it on real Ceph): `ceph osd
ok-to-stop` lets the OSDs of one rack stop together and refuses OSDs of two racks (some PG would keep
one copy, below min_size); Rook lets the OSD pods of one failure domain go at a time. So the batches
of `--node workers` are the rack-mates Ceph lets go together, never nodes of two racks, and a budget
that allows one disruption for pods on two rack-mates keeps them apart.
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labkit import LabAccess, net_beside, nodegate
from scenariotools import QUIET_PLUGINS

from nodegate.cluster.session import Access
from nodegate.lab.ceph import LabCeph
from nodegate.lab.config import LabConfig
from nodegate.upgrade.batches import plan_batches, plan_preview, preview_drains, read_view

ROOT = Path(__file__).resolve().parents[2]
PAIR = ("node4", "node8")          # rack4: the one pair of rack-mates among the workers


@pytest.fixture(scope="module")
def racked(tmp_path_factory):
    lab_dir = tmp_path_factory.mktemp("batches") / "lab"
    nodegate("lab", "up", "--dir", str(lab_dir), "--nodes", "8", "--racks", "4", "--manage-pod-budgets",
             "--net", str(net_beside("batches-preview")), timeout=600)
    lab = LabAccess(LabConfig.load(lab_dir))
    try:
        yield lab
    finally:
        lab.kube.close()
        nodegate("lab", "down", "--dir", str(lab_dir), check=False)


def plan(lab: LabAccess, limit: int | None = None):
    access = Access(lab.profile)
    try:
        return plan_batches(access, lab.profile, list(lab.profile.select("workers")), limit)
    finally:
        access.close(keep_ssh_masters=False)


def ceph_says(lab: LabAccess, nodes) -> int:
    """The rc of `ceph osd ok-to-stop` for the nodes' OSDs, asked on the lab's own CLI (0: yes, 16: no)."""
    ceph = LabCeph(lab.config)
    return ceph.run("osd", "ok-to-stop", *(str(ceph.osd_id(n)) for n in nodes), "-f", "json").returncode


def test_batches_are_what_ceph_lets_stop_and_never_span_two_racks(racked: LabAccess):
    config = racked.config
    workers = [n.name for n in racked.profile.select("workers")]
    batches = plan(racked)
    print("\n".join(f"{', '.join(b.nodes)}: {b.why}" for b in batches))
    assert [n for b in batches for n in b.nodes] != [] and sorted(n for b in batches for n in b.nodes) == sorted(workers)
    assert ("node3",) in [b.nodes for b in batches]   # node3 carries etcd: alone
    assert "etcd member alone" in next(b.why for b in batches if b.nodes == ("node3",))
    # the rack-mates node4 and node8 go together, as Ceph's own --max answer says
    together = next(b for b in batches if b.nodes == PAIR)
    assert "ok-to-stop" in together.why and "one rack (rack4)" in together.why, together.why
    for batch in batches:
        assert len({config.rack(config.node(n)) for n in batch.nodes}) == 1, batch
        assert ceph_says(racked, batch.nodes) == 0, batch
    # Ceph's own --max answer for each worker grows within its rack, never into another one ...
    ceph = LabCeph(config)
    rack_osds = {r: {ceph.osd_id(n.name) for n in config.nodes if config.rack(n) == r}
                 for r in {config.rack(n) for n in config.nodes}}
    for worker in workers:
        answer = json.loads(ceph.run("osd", "ok-to-stop", str(ceph.osd_id(worker)), "--max", "8", "-f", "json").stdout)
        assert answer["ok_to_stop"] and set(answer["osds"]) <= rack_osds[config.rack(config.node(worker))], answer
    # ... and Rook, managing its OSD budgets, lets one failure domain down at a time: every pair of
    # workers from two racks is refused by its budget too
    access = Access(racked.profile)
    try:
        view = read_view(access.kube, access.ceph, racked.profile, list(racked.profile.select("workers")))
    finally:
        access.close(keep_ssh_masters=False)
    assert view.rook_manages and view.domain == "rack"
    for a, b in itertools.combinations(workers, 2):
        if config.rack(config.node(a)) != config.rack(config.node(b)):
            refused = [r.budget for r in view.refused((a, b))]
            assert "rook-ceph/rook-ceph-osd" in refused, (a, b, refused)
    # an upper bound of one is today's one node at a time
    assert [b.nodes for b in plan(racked, limit=1)] == [(w,) for w in workers]


def api(lab: LabAccess, method: str, path: str, body: dict | None = None) -> dict:
    return lab.kube._raw(method, path, body=body)


def pinned_deployment(name: str, node: str) -> dict:
    labels = {"app": "pair", "pair-member": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "demo"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {
                         "nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 2,
                         "containers": [{"name": "main", "image": "nginx:1.23.3"}]}}}}


def wait_for_budget(lab: LabAccess, allowed: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        pdb = next((p for p in lab.kube.list_pdbs(namespace="demo") if p.name == "pair"), None)
        ready = [p for p in lab.kube.list_pods(namespace="demo", selector="app=pair") if p.ready]
        if pdb is not None and pdb.disruptions_allowed == allowed and sorted(p.node for p in ready) == sorted(PAIR):
            return
        assert time.monotonic() < deadline, f"PDB demo/pair not at {allowed} allowed with pods on {PAIR}: {pdb}"
        time.sleep(0.5)


def test_a_budget_of_one_disruption_keeps_two_nodes_apart_and_the_preview_names_it(racked: LabAccess):
    for name, node in zip(("pair-a", "pair-b"), PAIR):
        api(racked, "POST", "/apis/apps/v1/namespaces/demo/deployments", pinned_deployment(name, node))
    api(racked, "POST", "/apis/policy/v1/namespaces/demo/poddisruptionbudgets", {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "pair", "namespace": "demo"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "pair"}}}})
    wait_for_budget(racked, allowed=1)

    batches = plan(racked)
    print("\n".join(f"{', '.join(b.nodes)}: {b.why}" for b in batches))
    assert not any(set(PAIR) <= set(b.nodes) for b in batches), batches
    first = next(b for b in batches if "node4" in b.nodes)
    assert first.nodes == ("node4",) and "node8: PodDisruptionBudget demo/pair" in first.why, first.why

    access = Access(racked.profile)
    try:
        workers = list(racked.profile.select("workers"))
        alone = {p.nodes: p for p in plan_preview(access, racked.profile, workers, batches)}
        view = read_view(access.kube, access.ceph, racked.profile, workers)
        [both] = preview_drains(view, racked.profile, [PAIR])
    finally:
        access.close(keep_ssh_masters=False)
    # each node alone drains (one disruption is there to spend); both at once would wait on demo/pair
    assert not any("demo/pair" in i.what for n in PAIR for i in alone[(n,)].issues), alone
    [issue] = [i for i in both.issues if "demo/pair" in i.what]
    assert issue.severity == "waits" and issue.pod.count("demo/pair-") == 2, issue
    assert "allows 1 disruption(s) now and the batch would evict 2" in issue.what
    assert "upgrade node4, node8 in different batches" in issue.fix


def parallel_option() -> bool:
    """Whether this nodegate has --parallel (the rollout plugin): then plan mode plans real batches."""
    import dataclasses

    from nodegate.plugin.options import RunOptions

    return "parallel" in {f.name for f in dataclasses.fields(RunOptions)}


def test_plan_mode_shows_the_batches_and_each_drain_preview(racked: LabAccess, tmp_path):
    """`pytest procedures/ --node node4,node8 [--parallel auto]` without --execute: the plan, then the
    batches and the drain preview of each node (and batch), read from the cluster; nothing changed.
    With --parallel auto the budget demo/pair keeps node4 and node8 in two batches and says so."""
    parallel = ("--parallel", "auto") if parallel_option() else ()
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "procedures"), "--cluster", str(racked.config.dir / "cluster.toml"),
           "--node", "node4,node8", *parallel, "-p", "no:cacheprovider", *QUIET_PLUGINS,
           "--alluredir", str(tmp_path / "results")]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    assert "== batches" in out and "== drain preview" in out, out[-4000:]
    batches = out.split("== batches", 1)[1].split("== drain preview", 1)[0]
    if parallel:
        assert " 1. node4 alone: node8: PodDisruptionBudget demo/pair" in batches, batches
        assert " 2. node8" in batches, batches
    else:
        assert " 1. node4: one node at a time" in batches and " 2. node8: one node at a time" in batches, batches
    preview = out.split("== drain preview", 1)[1]
    assert "drain node4:" in preview and "drain node8:" in preview, preview
    # what the API shows on the two nodes is what the preview names: emptyDir pods as lost, and no
    # wait on demo/pair for either node alone (one disruption is there to spend)
    for pod in racked.kube.list_pods(namespace="demo"):
        if pod.node in PAIR and pod.uses_emptydir:
            assert f"loses: {pod.ref} " in preview, (pod.ref, preview)
    assert "demo/pair" not in preview, preview
    assert not racked.kube.node("node4").unschedulable and not racked.kube.node("node8").unschedulable
