"""The upgrade of one node, as the ordered chain of steps below (read top to bottom, like
Kubespray's upgrade role). The engine that runs them is nodegate.upgrade.engine; each step's
module says what it touches."""
from __future__ import annotations

from nodegate.upgrade.engine import Step
from nodegate.upgrade.steps.ceph import Noout, StorageHealthy, UnsetNoout
from nodegate.upgrade.steps.cluster import Drain, Lock, Uncordon, Unlock
from nodegate.upgrade.steps.etcd import ControlPlanePods, EtcdCaughtUp, EtcdQuorum
from nodegate.upgrade.steps.gates import Gate, Postflight
from nodegate.upgrade.steps.kubespray import Kubespray
from nodegate.upgrade.steps.packages import DistUpgrade, Hold, Unhold
from nodegate.upgrade.steps.release import Reboot, ReleaseUpgrade, Repair

STEPS: tuple[Step, ...] = (
    Gate(), Lock(), EtcdQuorum(), Drain(), Noout(), Unhold(), DistUpgrade(),
    Reboot("reboot", "reboot into the newest kernel and wait for SSH and Ready"),
    ReleaseUpgrade(),
    Reboot("reboot_release", "reboot into the new release and wait for SSH and Ready"),
    Repair(), Kubespray(), Hold(), EtcdCaughtUp(), ControlPlanePods(), Uncordon(), UnsetNoout(), StorageHealthy(),
    Postflight(), Unlock(),
)
STEP_NAMES = tuple(s.name for s in STEPS)
