"""The Kubespray step: its facts playbook over every host, then upgrade-cluster.yml limited to the
node, at the cluster's current version.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from nodegate.core import postconditions as post
from nodegate.upgrade.engine import Planned, Step, StepFailed, Upgrade, holds
from nodegate.upgrade.steps.release import apt_problems, apt_repair

if TYPE_CHECKING:
    pass


class Kubespray(Step):
    name = "kubespray"
    title = "Kubespray: the facts playbook over every host, then upgrade-cluster.yml limited to the node"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        from nodegate.cluster import kubespray, toolchain

        return (Planned("local", toolchain.describe(up.profile, up.name)),
                Planned("local", kubespray.describe_facts(profile=up.profile) + "  (every host, read-only: first)"),
                Planned("local", kubespray.describe_upgrade(profile=up.profile, node=up.name)))

    def run(self, up: Upgrade) -> str:
        from nodegate.cluster import kubespray

        try:
            # Kubespray's upgrade docs: the facts playbook without a limit before a --limit run
            facts = kubespray.refresh_facts(profile=up.profile, node=up.name)
            up.keep_text(f"kubespray facts output (rc {facts.rc})", f"$ {facts.command}\n{facts.output}")
            result = kubespray.upgrade_node(profile=up.profile, node=up.name)   # it logs its tasks as they run
        except (kubespray.KubesprayFailed, kubespray.KubesprayTimeout) as exc:
            up.keep_text(f"kubespray output (rc {exc.result.rc})", f"$ {exc.result.command}\n{exc.result.output}")
            raise
        up.keep_text(f"kubespray output (rc {result.rc})", f"$ {result.command}\n{result.output}")
        up.note(self.name, kubespray_recap=result.recap_line)
        summary = result.summary
        # Kubespray's docker role (apt_key, apt_repository) may have put a key back into the legacy
        # keyring or added its own source line beside another: the repair's end state again.
        if apt_problems(up):
            old = up.value("source_codename") or up.target.codename
            summary += "; apt repaired after Kubespray: " + (apt_repair(up, old, up.target.codename) or "nothing to do")
        return summary

    def verify(self, up: Upgrade) -> str:
        kube = up.need_kube()
        status = kube.node(up.kube_name)
        verdict = post.kubespray(up.name, ready=status.is_ready, describe=status.describe(),
                                 kubelet_version=status.kubelet_version, want=up.profile.kube_version or "",
                                 recap=up.value("kubespray_recap") or "")
        if verdict.holds:
            problems = apt_problems(up)
            if problems:
                raise StepFailed(f"the apt sources of {up.name} are not in the repair's end state after Kubespray:\n"
                                 + "\n".join(f"  - {p}" for p in problems),
                                 fix="run again: the Kubespray step repairs apt after its playbook")
        return holds(verdict)
