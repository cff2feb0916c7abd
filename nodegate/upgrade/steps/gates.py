"""The steps that run the checks catalogue: the gate before any change and the postflight after.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nodegate.cluster.resume import RESTART_OPTION
from nodegate.core import postconditions as post
from nodegate.core.errors import UsageError
from nodegate.core.knowledge import next_release
from nodegate.core.waits import Done, NotYet, wait_for
from nodegate.upgrade.engine import CheckRun, GateBlocked, Planned, Step, Upgrade

if TYPE_CHECKING:
    pass

log = logging.getLogger("nodegate.upgrade")


def _run_checks(up: Upgrade, phase: str) -> CheckRun:
    if up.check_runner is None:
        raise UsageError("no checks runner was given to the procedure")
    result = up.check_runner(phase)
    up.keep_text(f"{phase} checks: {result.command}"[:120], result.output or "(no output)")
    return result


class Gate(Step):
    name = "gate"
    title = "gate: the preflight checks for the node pass"
    always_run = True     # until the node is changed, the preflight is asked again on every run

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        cmds = []
        if up.options.previous_node:
            cmds.append(Planned("Kubernetes API + ceph", f"wait for the cluster gate after {up.options.previous_node}: "
                                "all nodes Ready, ceph HEALTH_OK, csi-rbdplugin Ready everywhere; then settle "
                                f"{up.profile.upgrade.settle_s:g}s"))
        cmds.append(Planned("local", f"pytest checks/ -m preflight --node {up.name} --target-release {up.target.version}"))
        return cmds

    def already(self, up: Upgrade) -> str | None:
        # A resumed upgrade is past its gate (the node is cordoned, maybe on the new release: the
        # preflight, written for an untouched node, no longer applies) only when the live state
        # proves the node is mid-upgrade by this journal; a record alone never skips the preflight.
        later = [r.step for r in up.records() if r.step not in ("begin", "batch", self.name, "lock", "etcd_quorum")]
        if not later or up.agreement is None:
            return None
        status = up.need_kube().node(up.kube_name)
        verdict = post.mid_upgrade(up.name, journal_cordoned_by=up.value("cordoned_by"),
                                   unschedulable=status.unschedulable, live_cordoned_by=status.cordoned_by,
                                   annotation=up.agreement.kind, annotation_detail=up.agreement.detail,
                                   target=up.target.version, live_release=up.live_release(),
                                   release_recorded=up.finished("release_upgrade") is not None,
                                   completed=any(r.step == "complete" and r.status == "done" for r in up.records()))
        if not verdict.holds:
            log.warning("%s: the journal records steps past the gate (%s), but %s: the preflight runs first",
                        up.name, ", ".join(dict.fromkeys(later)), verdict.text)
            up.gate_note = verdict.text
            return None
        up.gate_proof = verdict.text
        return f"the upgrade is past its gate (recorded: {', '.join(dict.fromkeys(later))}); resuming: {verdict.text}"

    def run(self, up: Upgrade) -> str:
        release = up.host.release.os_release()
        current = release.version_id or "?"
        if next_release(current) != up.target and current != up.target.version:
            raise GateBlocked(f"{up.name} runs {release.label}: {up.target.version} is not the next LTS release after it",
                              fix=f"use --target-release {next_release(current).version if next_release(current) else '?'}"
                                  " (one release at a time)")
        up.note(self.name, source_release=current)
        if up.options.previous_node:
            _cluster_gate(up)
        result = _run_checks(up, "preflight")
        if not result.passed:
            raise GateBlocked(
                f"the preflight checks for {up.name} did not pass ({result.counts or f'rc {result.rc}'}); nothing was "
                "changed. Blocking:\n" + "\n".join(f"  - {f}" for f in result.failed[:20]),
                fix="fix what the failing checks name (their messages say how), then run the same command again"
                    + (f". The journal records steps past the gate, but the gate ran because {up.gate_note}: if "
                       f"{up.name} is mid-upgrade by run {up.value('cordoned_by')}, cordon it as that run did "
                       f"(`kubectl cordon {up.name}; kubectl annotate --overwrite node {up.name} "
                       f"nodegate.io/cordoned-by={up.value('cordoned_by')}`) and run again to resume; or add "
                       f"{RESTART_OPTION} to start a new journal (this one is kept, renamed)"
                       if up.gate_note and up.value("cordoned_by") else ""))
        return f"preflight passed ({result.counts})"

    def verify(self, up: Upgrade) -> str:
        return up.gate_proof or "the preflight checks passed before anything on the node was changed"


def _cluster_gate(up: Upgrade) -> None:
    """Between two nodes of a rolling run: all nodes Ready, storage healthy, CSI Ready everywhere."""
    kube = up.need_kube()

    def probe() -> Done | NotYet:
        not_ready = [n.name for n in kube.list_nodes() if not n.is_ready]
        if not_ready:
            return NotYet("nodes not Ready: " + ", ".join(not_ready))
        if up.ceph is not None:
            status = up.ceph.status()
            if not status.healthy_in_full:
                return NotYet("ceph: " + "; ".join(status.reasons()))
        from nodegate.upgrade.steps.ceph import rbd_node_plugins

        csi = [p for plugin in rbd_node_plugins(up).plugins
               for p in kube.list_pods(namespace=plugin.namespace, selector=plugin.label_selector) if not p.ready]
        if csi:
            return NotYet("RBD node plugin not Ready: " + ", ".join(p.ref for p in csi))
        return Done(True)

    wait_for(probe, what=f"the cluster gate after {up.options.previous_node}", timeout=up.options.storage_timeout_s,
             interval=1.0, fix="look at the node and storage state; the next node is not touched until this holds")
    settle = up.profile.upgrade.settle_s
    if settle > 0:
        log.info("cluster gate passed; settling %gs before %s", settle, up.name)
        time.sleep(settle)


class Postflight(Step):
    name = "postflight"
    title = "the postflight checks for the node pass"
    always_run = True

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (Planned("local", f"pytest checks/ -m postflight --node {up.name} --target-release {up.target.version}"),)

    def run(self, up: Upgrade) -> str:
        result = _run_checks(up, "postflight")
        if not result.passed:
            raise GateBlocked(
                f"the postflight checks for {up.name} did not pass ({result.counts or f'rc {result.rc}'}):\n"
                + "\n".join(f"  - {f}" for f in result.failed[:20]),
                fix="fix what the failing checks name, then run the same command again (finished steps are "
                    "re-verified, not repeated)")
        return f"postflight passed ({result.counts})"
