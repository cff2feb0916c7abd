"""8 workers of a 10-node lab in 4 CRUSH racks upgraded with `--parallel auto`: batches of the size
Ceph allows (each batch's OSDs pass `ceph osd ok-to-stop` together, asked again here on the healthy
cluster after the run),
HEALTH_OK after every batch (its storage gate: HEALTH_OK in full, all OSDs up and in, all PGs
active+clean) and so before the next one starts, every node on 22.04 and verified on the node (its
postflight). The lab is set up as tests/scenarios/test_rollout.py explains (pools of size 4 across
the racks, no Rook OSD budget as managePodBudgets is false).
"""
from __future__ import annotations

import json
import re

import pytest
from labkit import LabAccess, net_beside, nodegate
from scenariotools import Operator, no_traceback
from test_rollout import ceph, journal_of, operate_rack_aware, release_of

from nodegate.lab.config import LabConfig

pytestmark = pytest.mark.lab

WORKERS = tuple(f"node{i}" for i in range(3, 11))


@pytest.fixture(scope="module")
def racks10(tmp_path_factory):
    lab_dir = tmp_path_factory.mktemp("rollout-racks") / "lab"
    nodegate("lab", "up", "--dir", str(lab_dir), "--net", str(net_beside("rollout-racks")), "--nodes", "10",
             "--racks", "4", timeout=900)
    try:
        config = LabConfig.load(lab_dir)
        view = LabAccess(config)
        operate_rack_aware(config, view)
        yield view
        view.kube.close()
    finally:        # a lab whose set-up failed is taken down too
        nodegate("lab", "down", "--dir", str(lab_dir), check=False)


def osd_of(config: LabConfig, node: str) -> list[int]:
    tree = json.loads(ceph(config, "osd", "tree", "-f", "json"))
    host = next(n for n in tree["nodes"] if n["type"] == "host" and n["name"] == node)
    return list(host["children"])


def test_eight_workers_in_four_racks_go_in_batches_ceph_allows(racks10, tmp_path):
    operator = Operator(tmp_path, racks10.config)
    plan = operator.run(racks10.config.dir / "cluster.toml", "--node", "workers", "--parallel", "auto",
                        timeout=2400)
    batches = [tuple(m.group(1).split(", ")) for m in re.finditer(r"^batch \d+ of \d+: ([\w, ]+?)  \[", plan.text, re.M)]
    assert batches and sorted(n for b in batches for n in b) == sorted(WORKERS), plan.text[-3000:]
    assert max(len(b) for b in batches) > 1, f"no batch of more than one node: {batches}"
    for batch in (b for b in batches if len(b) > 1):
        ids = [str(i) for n in batch for i in osd_of(racks10.config, n)]
        done = subprocess_ok(racks10.config, "osd", "ok-to-stop", *ids)
        assert done, f"ceph osd ok-to-stop {' '.join(ids)} refuses the batch {batch}"
    assert plan.rc == 0, plan.text[-4000:]
    no_traceback(plan)
    for node in WORKERS:
        assert release_of(racks10, node) == "22.04", node
        records = journal_of(operator, node)
        assert records[-1]["step"] == "complete" and records[-1]["status"] == "done", (node, records[-3:])
        for step in ("storage_healthy", "postflight"):
            assert any(r["step"] == step and r["status"] == "done" for r in records), (node, step)
        batch = [r for r in records if r["step"] == "batch"][-1]
        assert tuple(batch["data"]["batch_nodes"]) in batches
    print(f"\n8 workers in 4 racks: batches {batches}, {plan.seconds:.0f}s")


def subprocess_ok(config: LabConfig, *args: str) -> bool:
    import subprocess

    return subprocess.run(["ceph", "-c", str(config.dir / "ceph.conf"), *args], capture_output=True,
                          timeout=60).returncode == 0
