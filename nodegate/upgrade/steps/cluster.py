"""The steps on the Kubernetes side: the upgrade lock, drain, uncordon and unlock.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nodegate.cluster.kube.drain import PDB_RETRY_S
from nodegate.core import postconditions as post
from nodegate.core.errors import UsageError
from nodegate.upgrade.engine import Planned, Step, StepFailed, Upgrade, holds

if TYPE_CHECKING:
    from nodegate.cluster.kube.models import PodSummary

log = logging.getLogger("nodegate.upgrade")


class Lock(Step):
    name = "lock"
    title = "take the cluster-wide upgrade lock"
    always_run = True

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        from nodegate.cluster.lock import LOCK_NAME, LOCK_NAMESPACE

        return (Planned("Kubernetes API", f"take Lease {LOCK_NAMESPACE}/{LOCK_NAME} (holder <user@machine>, "
                                          f"node {up.name}, run {up.options.run_id}) and renew it while running"),)

    def already(self, up: Upgrade) -> str | None:
        if up.lock is not None and up.lock.held:
            return "this run holds it already"
        return None

    def run(self, up: Upgrade) -> str:
        if up.lock is None:
            raise UsageError("no lock was given to the procedure")
        return "lock " + up.lock.acquire(take_over_stale=up.options.take_over_stale_lock)

    def verify(self, up: Upgrade) -> str:
        assert up.lock is not None
        info = up.lock.state()
        if info is None or info.holder != up.lock.holder or up.name not in info.nodes:
            raise StepFailed("the upgrade lock is not held for this run: "
                             + (info.describe() if info is not None else "there is no lock"))
        return info.describe()


def _evictable(pod: "PodSummary") -> bool:
    # kubectl drain --ignore-daemonsets: DaemonSet pods stay; mirror (static) pods cannot be
    # evicted; finished pods are not running anything.
    return not (pod.daemonset or pod.mirror or pod.finished)


class Drain(Step):
    name = "drain"
    title = "cordon and drain the node (Eviction API)"
    superseded_by = "uncordon"

    def options(self, up: Upgrade) -> Any:
        from nodegate.cluster.kube.drain import DrainOptions

        # The procedure's drain is kubectl's `--ignore-daemonsets --delete-emptydir-data --force`
        # with a finite timeout: the node is about to reboot, so emptyDir data and unmanaged pods
        # would be lost anyway.
        return DrainOptions(ignore_daemonsets=True, delete_emptydir_data=True, force=True,
                            timeout_s=up.profile.upgrade.drain_timeout_s)

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (Planned("Kubernetes API", f"cordon {up.kube_name} (annotated nodegate.io/cordoned-by={up.options.run_id})"),
                Planned("Kubernetes API", f"kubectl drain {up.kube_name} {self.options(up).flags()} through the Eviction "
                                          f"API (PDB refusals asked again every {PDB_RETRY_S:g}s)"))

    def already(self, up: Upgrade) -> str | None:
        kube = up.need_kube()
        status = kube.node(up.kube_name)
        left = [p for p in kube.list_pods(node=up.kube_name) if _evictable(p)]
        if status.unschedulable and not left:
            return "the node is cordoned and has no evictable pod left"
        return None

    def run(self, up: Upgrade) -> str:
        from nodegate.cluster.kube.errors import DrainError

        kube = up.need_kube()
        ours = up.value("cordoned_by")
        if not ours and kube.node(up.kube_name).unschedulable:
            log.info("%s was cordoned before this upgrade: it will be left cordoned at the end", up.name)
        elif not ours:
            # Noted before the write: an interruption between the two must not forget that the
            # cordon is ours (the worst case is an uncordon the node was going to get anyway).
            up.note(self.name, cordoned_by=up.options.run_id)
        try:
            result = kube.drain(up.kube_name, options=self.options(up), cordon_by=ours or up.options.run_id)
        except DrainError as exc:
            up.keep_text("drain", exc.result.evidence())
            raise
        up.keep_text("drain", result.evidence())
        how = "cordoned by this upgrade" if result.cordon and result.cordon.changed else (
            result.cordon.detail if result.cordon else "cordoned")
        return f"{how}; evicted {len(result.evicted)} pod(s) in {result.duration_s:.1f}s"

    def verify(self, up: Upgrade) -> str:
        kube = up.need_kube()
        status = kube.node(up.kube_name)
        left = [p.ref for p in kube.list_pods(node=up.kube_name) if _evictable(p)]
        return holds(post.drain(up.name, unschedulable=status.unschedulable, evictable=left))


class Uncordon(Step):
    name = "uncordon"
    title = "uncordon the node (only if this upgrade cordoned it)"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (Planned("Kubernetes API", f"uncordon {up.kube_name} only if nodegate.io/cordoned-by names this upgrade"),)

    def already(self, up: Upgrade) -> str | None:
        if not up.value("cordoned_by"):
            return "left as found: the node was cordoned before this upgrade, so it stays cordoned"
        if not up.need_kube().node(up.kube_name).unschedulable:
            return "the node is schedulable"
        return None

    def run(self, up: Upgrade) -> str:
        result = up.need_kube().uncordon(up.kube_name, only_if_cordoned_by=up.value("cordoned_by"))
        if not result.changed and result.unschedulable:
            raise StepFailed(f"{up.name} was not uncordoned: {result.detail}",
                             fix="someone else cordoned it meanwhile; find out who before uncordoning it by hand")
        return f"{up.name} uncordoned"

    def verify(self, up: Upgrade) -> str:
        status = up.need_kube().node(up.kube_name)
        return holds(post.uncordon(up.name, cordoned_by_us=bool(up.value("cordoned_by")),
                                    unschedulable=status.unschedulable, describe=status.describe()))


class Unlock(Step):
    name = "unlock"
    title = "release the upgrade lock; the upgrade is complete"
    always_run = True

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        from nodegate.cluster.lock import LOCK_NAME, LOCK_NAMESPACE

        return (Planned("Kubernetes API", f"delete Lease {LOCK_NAMESPACE}/{LOCK_NAME} (if this run holds it)"),)

    def run(self, up: Upgrade) -> str:
        how = up.lock.release() if up.lock is not None else "no lock"
        return f"lock {how}"

    def verify(self, up: Upgrade) -> str:
        if up.lock is not None:
            info = up.lock.state()
            if info is not None and info.held and info.holder == up.lock.holder and up.name in info.nodes:
                raise StepFailed(f"the upgrade lock is still held for this node: {info.describe()}")
        return "lock released"
