"""The operator's set-up of a rack-aware lab cluster (`nodegate lab up --racks 4`), one home for
the rollout scenarios and the rollout bench.

An operator who runs a rack-aware cluster that may lose two racks raises its pools to size 4
(min_size 2) across the racks: `ceph osd ok-to-stop --max` then lets the OSDs of two racks stop
together. The lab's CephCluster has managePodBudgets false, and Rook creates its OSD
PodDisruptionBudget only when managePodBudgets is true (rook
pkg/operator/ceph/disruption/clusterdisruption), so such a cluster has none: the lab's stand-in of
it is removed. Kubespray v2.21.0's docker task needs the operator's fix for kubespray #9114 before
any node is upgraded.

    operate_rack_aware(LabConfig.load(lab_dir))     # then wait until Ceph stays healthy
"""
from __future__ import annotations

import subprocess

from nodegate.lab import apiclient
from nodegate.lab.ceph import MGR_POOL, POOL
from nodegate.lab.config import LabConfig
from nodegate.lab.kubespray import apply_force_fix

RACK_AWARE_POOLS = (POOL, MGR_POOL)
RACK_AWARE_SIZE = 4
ROOK_OSD_BUDGET = "/apis/policy/v1/namespaces/rook-ceph/poddisruptionbudgets/rook-ceph-osd"


class RackSetupFailed(RuntimeError):
    """A step of the rack-aware set-up was refused; the message names it and the answer."""


def operate_rack_aware(config: LabConfig) -> None:
    """Apply the set-up above to a running lab with racks; idempotent (a second call changes nothing)."""
    if not config.racks:
        raise RackSetupFailed(f"the lab in {config.dir} has no racks; bring it up with `nodegate lab up --racks N`")
    apply_force_fix(config.dir / "kubespray")
    for pool in RACK_AWARE_POOLS:
        done = subprocess.run(["ceph", "-c", str(config.dir / "ceph.conf"), "osd", "pool", "set", pool, "size",
                               str(RACK_AWARE_SIZE)], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RackSetupFailed(f"ceph osd pool set {pool} size {RACK_AWARE_SIZE}: {done.stderr.strip()}")
    status, body = apiclient.request(config, "DELETE", ROOK_OSD_BUDGET)
    if status not in (200, 202, 404):      # 404: removed by an earlier call
        raise RackSetupFailed(f"deleting the lab's rook-ceph-osd budget answered {status}: {body}")
