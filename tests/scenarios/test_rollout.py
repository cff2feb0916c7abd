"""Rollouts on a rack-aware lab: batches upgraded side by side (--parallel auto), a failure inside a
batch, and the maintenance window (--window-minutes).

The lab: 8 nodes in 4 CRUSH racks (`nodegate lab up --racks 4`; node i in rack ((i-1) mod 4)+1, so
node4 and node8 share rack4), its pools raised to size 4 (min_size 2) across the racks, as an
operator runs a rack-aware cluster that may lose two racks: `ceph osd ok-to-stop --max` then lets
the OSDs of two racks stop together. The lab's CephCluster has managePodBudgets false, and Rook
creates its OSD PodDisruptionBudget only when managePodBudgets is true (rook
pkg/operator/ceph/disruption/clusterdisruption): the scenario removes the lab's stand-in of it, as
such a cluster has none. Every run is the real procedure in a subprocess, one operator folder.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest
from labkit import LabAccess, net_beside, nodegate
from scenariotools import Operator, no_traceback

from nodegate.cluster.lock import read_lock
from nodegate.core.budget import NodeEstimate, expectations, step_samples
from nodegate.lab.config import LabConfig
from nodegate.upgrade import STEP_NAMES
from nodegate.upgrade.rollout import cluster_journals

pytestmark = pytest.mark.lab

BATCHED = ("node4", "node8")      # rack4: Ceph lets the rack's OSDs stop together
AFTER = "node6"                   # the next batch's only node
WINDOWED = ("node5", "node7")     # the window scenario's nodes (untouched until then)


@pytest.fixture(scope="module")
def rack_lab(tmp_path_factory):
    lab_dir = tmp_path_factory.mktemp("rollout") / "lab"
    nodegate("lab", "up", "--dir", str(lab_dir), "--net", str(net_beside("rollout")), "--nodes", "8",
             "--racks", "4", timeout=900)
    try:
        config = LabConfig.load(lab_dir)
        view = LabAccess(config)
        operate_rack_aware(config, view)
        yield view
        view.kube.close()
    finally:        # a lab whose set-up failed is taken down too
        nodegate("lab", "down", "--dir", str(lab_dir), check=False)


def operate_rack_aware(config: LabConfig, view: LabAccess) -> None:
    """The operator's set-up of the rack-aware cluster (nodegate.lab.rack_operator: the fix for
    kubespray #9114, pools of size 4 across the racks, no rook-ceph-osd budget); then a Ceph that
    stays healthy after the size change."""
    from nodegate.lab.kubespray import DOCKER_TASKS
    from nodegate.lab.rack_operator import RACK_AWARE_SIZE
    from nodegate.lab.rack_operator import operate_rack_aware as operate

    operate(config)
    assert "force: true" in (config.dir / "kubespray" / DOCKER_TASKS).read_text()
    for pool in ("rbd", "device_health_metrics"):
        assert f"size: {RACK_AWARE_SIZE}" in ceph(config, "osd", "pool", "get", pool, "size"), pool
    view.wait_healthy(settled_s=12)


def ceph(config: LabConfig, *args: str) -> str:
    done = subprocess.run(["ceph", "-c", str(config.dir / "ceph.conf"), *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"ceph {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def operator(tmp_path_factory, rack_lab):
    work = tmp_path_factory.mktemp("rollout-operator")
    return Operator(work, rack_lab.config)


def release_of(lab: LabAccess, node: str) -> str | None:
    return lab.nodes.reconnect(node).release.os_release().version_id


def journal_of(op: Operator, node: str) -> list[dict]:
    path = op.reports / "runs" / "journal" / "nodegate-lab" / f"{node}-22.04.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def outcomes(op: Operator) -> dict[str, str]:
    """test id -> PASSED/FAILED/SKIPPED of the operator's last run, from its JUnit XML."""
    import xml.etree.ElementTree as ET

    out = {}
    for case in ET.parse(op.work / f"junit-{op.count}.xml").getroot().iter("testcase"):
        status = "PASSED"
        for kind, word in (("failure", "FAILED"), ("error", "FAILED"), ("skipped", "SKIPPED")):
            if case.find(kind) is not None:
                status = word
                break
        out[case.get("name", "")] = status
    return out


def outcome_of(ids: dict[str, str], prefix: str, step: str) -> str:
    found = [v for k, v in ids.items() if k.startswith(prefix) and k.endswith(f"-{step}]")]
    assert len(found) == 1, (prefix, step, sorted(ids))
    return found[0]


def assert_upgraded(lab: LabAccess, op: Operator, node: str) -> None:
    assert release_of(lab, node) == "22.04", f"{node} is not on 22.04"
    records = journal_of(op, node)
    assert records and records[-1]["step"] == "complete" and records[-1]["status"] == "done", records[-3:]
    assert not lab.kube.node(node).unschedulable, f"{node} is still cordoned"


def assert_untouched(lab: LabAccess, op: Operator, node: str) -> None:
    assert release_of(lab, node) == "20.04", f"{node} was changed"
    assert not journal_of(op, node), f"{node} has a journal: {journal_of(op, node)[:3]}"
    assert not lab.kube.node(node).unschedulable, f"{node} was cordoned"


def test_a_failure_in_one_node_lets_the_batch_finish_and_starts_no_further_batch(rack_lab, operator):
    """node8's gate fails (a held package at another version than the inventory's: a lab fault);
    node4, in the same batch, finishes; node6's batch does not start; the rerun resumes."""
    started = time.monotonic()
    failing = BATCHED[1]
    subprocess.run(["python", "-m", "nodegate", "lab", "fault", "held-version-drift", "--node", failing,
                    "--dir", str(rack_lab.config.dir)], check=True, capture_output=True, timeout=300)
    nodes = ",".join((*BATCHED, AFTER))
    run = operator.run(rack_lab.config.dir / "cluster.toml", "--node", nodes, "--parallel", "auto", timeout=1800)
    no_traceback(run)
    ids = outcomes(operator)
    batch = f"test_upgrade_batch[b1-{'+'.join(BATCHED)}-"
    assert any(k.startswith(batch) for k in ids), \
        f"{BATCHED} were not planned as one batch: {sorted(ids)[:5]}\n{run.text[-3000:]}"
    assert outcome_of(ids, batch, "gate") == "FAILED", run.text[-3000:]
    assert outcome_of(ids, batch, "unlock") == "PASSED", run.text[-3000:]
    later = [v for k, v in ids.items() if k.startswith(f"test_upgrade_batch[b2-{AFTER}-")]
    assert later and all(v == "SKIPPED" for v in later), ids
    assert run.rc == 1
    assert "no further batch starts" in run.text
    assert_upgraded(rack_lab, operator, BATCHED[0])
    assert release_of(rack_lab, failing) == "20.04" and not rack_lab.kube.node(failing).unschedulable
    assert any(r["step"] == "gate" and r["status"] == "failed" for r in journal_of(operator, failing))
    assert_untouched(rack_lab, operator, AFTER)
    lock = read_lock(rack_lab.kube)
    assert lock is None or not lock.held, lock.describe()
    batch_records = [r for r in journal_of(operator, BATCHED[0]) if r["step"] == "batch"]
    assert batch_records and batch_records[-1]["data"]["batch_nodes"] == list(BATCHED)
    first_s = time.monotonic() - started

    # the rerun, the fault cleared: node8 resumes from its gate, node4 is re-verified, node6's batch runs
    subprocess.run(["python", "-m", "nodegate", "lab", "fault", "held-version-drift", "--clear", "--node", failing,
                    "--dir", str(rack_lab.config.dir)], check=True, capture_output=True, timeout=300)
    again = operator.run(rack_lab.config.dir / "cluster.toml", "--node", nodes, "--parallel", "auto", timeout=1800)
    no_traceback(again)
    assert again.rc == 0, again.text[-4000:]
    for node in (*BATCHED, AFTER):
        assert_upgraded(rack_lab, operator, node)
    redone = [r for r in journal_of(operator, BATCHED[0]) if r["run_id"] != batch_records[-1]["run_id"]
              and r["status"] == "done" and r["step"] not in ("batch", "gate", "lock", "storage_healthy",
                                                               "postflight", "unlock", "complete")]
    assert not redone, f"{BATCHED[0]} repeated finished steps: {redone}"
    print(f"\nfailure in a batch: first run {first_s:.0f}s, rerun {again.seconds:.0f}s")


def test_a_window_too_short_upgrades_what_fits_and_names_what_is_left(rack_lab, operator):
    """With the journals of the earlier runs as history, a window that fits one node's p95 but not two:
    node5 is upgraded, node7 is not started and is named as left for the next window."""
    journal_dir = operator.reports / "runs" / "journal" / "nodegate-lab"
    expected = expectations(STEP_NAMES, step_samples(cluster_journals(journal_dir)))
    assert all(expected[s].samples for s in ("drain", "release_upgrade", "kubespray")), \
        {s: e.samples for s, e in expected.items()}
    node_p95 = NodeEstimate.of("one", STEP_NAMES, expected, STEP_NAMES).p95
    window_min = node_p95 * 1.2 / 60
    run = operator.run(rack_lab.config.dir / "cluster.toml", "--node", ",".join(WINDOWED),
                       "--window-minutes", f"{window_min:.2f}", timeout=1800)
    no_traceback(run)
    assert run.rc == 0, run.text[-4000:]
    assert_upgraded(rack_lab, operator, WINDOWED[0])
    assert_untouched(rack_lab, operator, WINDOWED[1])
    assert f"left for the next window: {WINDOWED[1]}" in run.text, run.text[-3000:]
    assert "expected against actual, per step:" in run.text
    ids = outcomes(operator)
    left = [v for k, v in ids.items() if k.startswith(f"test_upgrade[{WINDOWED[1]}-")]
    assert left and all(v == "SKIPPED" for v in left), ids
    written = max(operator.reports.glob("runs/*/rollout.json"), key=lambda p: p.stat().st_mtime)
    report = json.loads(written.read_text())
    assert report["left"] == [WINDOWED[1]] and report["stop_reason"], report
    rows = [r for r in report["steps"] if r["node"] == WINDOWED[0]]
    assert {r["step"] for r in rows} == set(STEP_NAMES) and all(r["p95_s"] > 0 for r in rows), rows
    print(f"\nwindow: {window_min:.1f} min window (p95 of a node {node_p95:.0f}s), run {run.seconds:.0f}s")
