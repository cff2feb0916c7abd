"""Scenario on a lab laid out as Kubespray v2.28.1 (`nodegate lab up --kubespray v2.28.x`): node4
goes from Ubuntu 20.04 to 22.04 with the whole procedure, and step 11 runs Kubespray as its
upgrade docs say and as v2.28 expects it:
- the facts playbook (playbooks/facts.yml from v2.22.0) over every host, without --limit, first;
- then upgrade-cluster.yml --limit=node4 with kube_version written as the inventory writes it,
  and the upgrade role's variables pinned (no cordon or prompt of its own, no system upgrade),
  without the leading 'v' (v2.28.0's roles/validate_inventory refuses 'v1.25.6'; the stand-in's
  validate_inventory does the same and runs in that play), the defaults role being
  roles/kubespray_defaults.
The lab is its own (4 nodes, every service, its own address octet); the checkout gets the
operator's documented fix for kubespray #9114 first, as in `make demo`.
"""
from __future__ import annotations

import re
import shutil

import pytest
from labkit import fixed_kubespray_checkout, net_beside, nodegate, ssh
from scenariotools import Operator, no_traceback, write_profile

from nodegate.lab.config import LabConfig

NET = net_beside("kubespray-v2.28")
LIMITS = dict(reboot_timeout_worker_s=60, storage_timeout_s=120, lock_stale_after_s=600, settle_s=0)


@pytest.fixture(scope="module")
def lab28(tmp_path_factory):
    lab_dir = tmp_path_factory.mktemp("ks228") / "lab"
    up = nodegate("lab", "up", "--dir", str(lab_dir), "--net", str(NET), "--kubespray", "v2.28.x")
    assert "export NODEGATE_CLUSTER=" in up.stdout
    try:
        yield LabConfig.load(lab_dir)
    finally:
        nodegate("lab", "down", "--dir", str(lab_dir), check=False)


def test_node4_upgrade_on_kubespray_v2_28(lab28, tmp_path):
    assert lab28.kubespray_version == "v2.28.1"
    assert ssh(lab28, "node4", ". /etc/os-release; echo $VERSION_ID").stdout.strip() == "20.04"
    checkout = fixed_kubespray_checkout(lab28, tmp_path)
    profile = write_profile(lab28, tmp_path / "v2.28.toml", kubespray=checkout, **LIMITS)
    op = Operator(tmp_path, lab28)
    try:
        run = op.run(profile, timeout=900)
    finally:
        shutil.rmtree(op.control, ignore_errors=True)
    no_traceback(run)
    assert run.rc == 0 and run.outcomes and set(run.outcomes.values()) == {"passed"}, run.text[-5000:]
    assert ssh(lab28, "node4", ". /etc/os-release; echo $VERSION_ID").stdout.strip() == "22.04"

    facts = re.search(r"kubespray: running in \S+: \S+ playbooks/facts\.yml -b -i \S+hosts\.yaml \(", run.text)
    limited = re.search(r"kubespray: running in \S+: \S+ upgrade-cluster\.yml -b -i \S+ --limit=node4 "
                        r"-e kube_version=(\S+)", run.text)
    assert facts and limited, run.text[-5000:]
    assert "--limit" not in facts.group(0)
    assert facts.start() < limited.start(), "the facts run did not come first"
    assert limited.group(1) == "1.25.6", f"kube_version passed as {limited.group(1)!r}"
    after = run.text[limited.end():limited.end() + 400]
    assert "--skip-tags=multus" not in after.split("\n", 1)[0]   # fixed in v2.27.0
    # the upgrade role's variables pinned (nodegate drains and uncordons; no prompts; no second dist-upgrade)
    assert '"upgrade_node_confirm":false' in after and '"system_upgrade":false' in after, after
    assert "TASK [validate_inventory : Stop if kube_version has a leading v]" in run.text
