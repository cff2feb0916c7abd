"""The package steps: unhold, dist-upgrade within the release, and hold again at the target's builds.
They say what to do; the commands are the node's resources' (nodegate.cluster.nodes.resources).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from nodegate.cluster.nodes.resources import Apt, Packages, with_apt_env
from nodegate.core import postconditions as post
from nodegate.core.errors import NodegateError
from nodegate.core.waits import Done, NotYet, wait_for
from nodegate.upgrade.engine import Planned, Step, StepFailed, Upgrade, heartbeat, holds, on_node

log = logging.getLogger("nodegate.upgrade")


DIST_UPGRADE_TIMEOUT_S = 3600.0


class Unhold(Step):
    name = "unhold"
    title = "record the held packages and their versions; apt-mark unhold them"
    # Kubespray's docker role holds the docker packages again (before the hold step pins them):
    # after it, held packages are expected, not a drift to undo by unholding and upgrading again
    superseded_by = "kubespray"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        held = up.value("held_before")
        if not held:
            try:
                held = up.host.packages.held()
            except NodegateError:
                held = {n: "?" for n in up.profile.expect.held_packages}
        names = sorted(held) or list(up.profile.expect.held_packages)
        return (on_node(up, *Packages.HELD_QUERY, root=False), on_node(up, *Packages.unhold_command(names)))

    def already(self, up: Upgrade) -> str | None:
        held = up.value("held_before")
        if held and not set(held) & set(up.host.packages.held()):
            return "the recorded packages are not held any more: " + ", ".join(sorted(held))
        return None

    def run(self, up: Upgrade) -> str:
        packages = up.host.packages
        held = up.value("held_before")
        if not held:
            live = packages.held()
            expected = [n for n in up.profile.expect.held_packages if n not in live]
            held = dict(live)
            held.update(packages.versions(expected))   # the expected set, even if someone unheld one
            source = up.host.release.os_release()
            up.note(self.name, held_before=held, source_codename=source.version_codename or "")
            up.keep_json("held packages before the upgrade", held)
        now_held = sorted(set(held) & set(packages.held()))
        if now_held:
            up.keep_command(packages.unhold(now_held))
        return "unheld " + (", ".join(f"{n}={v}" for n, v in sorted(held.items())) or "nothing (none was held)")

    def verify(self, up: Upgrade) -> str:
        return holds(post.unhold(up.name, recorded=up.value("held_before"), held_now=up.host.packages.held()))


class DistUpgrade(Step):
    name = "dist_upgrade"
    title = "apt-get update and a non-interactive dist-upgrade keeping config files"
    superseded_by = "release_upgrade"   # the new release's sources bring new candidates

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (on_node(up, *Apt.update_command()), on_node(up, *Apt.dist_upgrade_command()))

    def already(self, up: Upgrade) -> str | None:
        if not up.finished("unhold"):
            return None
        _wait_package_tools(up)
        if up.host.packages.audit():
            return None      # an earlier run was cut off inside dpkg: run() finishes it first
        pending = up.host.packages.upgradable()
        if not pending.names:
            return "nothing is upgradable"
        return None

    def run(self, up: Upgrade) -> str:
        repaired = _settle_dpkg(up)
        update = up.host.apt.update()
        up.keep_command(update.result)
        if update.report.errors:
            raise StepFailed(f"`apt-get update` on {up.name} failed: " + "; ".join(update.report.errors[:5]),
                             fix="fix the apt sources or the network of the node, then run again")
        with heartbeat(f"running apt-get dist-upgrade on {up.name}", limit=DIST_UPGRADE_TIMEOUT_S):
            result = up.host.apt.dist_upgrade(timeout=DIST_UPGRADE_TIMEOUT_S)
        up.keep_command(result)
        return (f"{repaired}; " if repaired else "") + f"dist-upgrade rc {result.rc} in {result.duration:.0f}s"

    def verify(self, up: Upgrade) -> str:
        _wait_package_tools(up)   # a package run still going (after a lost connection) is judged when it ends
        audit = up.host.packages.audit()
        pending = up.host.packages.upgradable().names if not audit else ()
        return holds(post.dist_upgrade(up.name, audit=audit, upgradable=list(pending)))


def _wait_package_tools(up: Upgrade) -> None:
    """Wait (bounded) until no apt/dpkg/do-release-upgrade runs on the node. After a lost SSH
    connection the command the earlier run started may still be going: it owns dpkg's lock and
    its outcome is not known yet."""
    def probe() -> Done | NotYet:
        running = up.host.packages.tools_running()
        return NotYet("still running on the node: " + ", ".join(running)) if running else Done(True)

    wait_for(probe, what=f"apt/dpkg started by an earlier run to end on {up.name}", timeout=DIST_UPGRADE_TIMEOUT_S,
             interval=1.0, progress_every=5.0,
             fix="look at what apt/dpkg does on the node (`ps -ef`, /var/log/apt/term.log)")


def _pending_now(up: Upgrade) -> str:
    """What apt would upgrade on the node now, in words for a failure message (do-release-upgrade
    judges from the same package lists): an update published, or a package downgraded, since the
    dist-upgrade step."""
    try:
        pending = up.host.packages.upgradable()
    except NodegateError as exc:
        return f"could not read what is upgradable: {str(exc).splitlines()[0]}"
    if not pending.names:
        return "apt lists nothing upgradable now"
    shown = [f"{p.name} {p.current_version or '?'} -> {p.new_version}" for p in pending.packages]
    shown += [f"{name} (kept back)" for name in pending.kept_back if name not in {p.name for p in pending.packages}]
    return "upgradable now: " + ", ".join(shown)


def _settle_dpkg(up: Upgrade) -> str:
    """After a lost connection the package run on the node either went on to its end or was cut
    off inside dpkg ("dpkg was interrupted"): wait for it, then finish what dpkg left half done."""
    _wait_package_tools(up)
    audit = up.host.packages.audit()
    if not audit:
        return ""
    log.warning("%s: dpkg was left half done by an interrupted run (%s): dpkg --configure -a", up.name,
                audit.splitlines()[0])
    up.keep_command(up.host.packages.finish_interrupted(timeout=DIST_UPGRADE_TIMEOUT_S))
    return "finished the interrupted dpkg run (dpkg --configure -a)"


class Hold(Step):
    name = "hold"
    title = "hold the recorded packages again at the same versions (target release builds)"

    def wanted(self, up: Upgrade, *, live: bool = False) -> dict[str, str]:
        """Recorded held package -> the same version's build for the target release. With
        ``live`` (plan mode, nothing recorded yet) the node's current holds stand in for the record."""
        held = up.value("held_before") or {}
        old = up.value("source_codename") or ""
        if not held and live:
            held = up.host.packages.held()
            old = up.host.release.os_release().version_codename or ""
        new = up.target.codename
        out = {}
        for name, version in held.items():
            expected = up.profile.expect.version_for(name, new)
            out[name] = expected or (version.replace(old, new) if old else version)
        return out

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        wanted = self.wanted(up, live=True)
        names = sorted(wanted) or list(up.profile.expect.held_packages)
        pins = [f"{n}={v}" for n, v in sorted(wanted.items())] or [f"{n}=<recorded version, {up.target.codename} build>"
                                                                   for n in names]
        return (on_node(up, *with_apt_env(*Packages.install_command(pins, quiet=False))),
                on_node(up, *Packages.hold_command(names)))

    def already(self, up: Upgrade) -> str | None:
        try:
            return self.verify(up)
        except StepFailed:
            return None

    def run(self, up: Upgrade) -> str:
        packages = up.host.packages
        wanted = self.wanted(up)
        if not wanted:
            return "no package was held before the upgrade: nothing to hold"
        installed = packages.versions(list(wanted))
        wrong = {n: v for n, v in wanted.items() if installed.get(n) != v}
        if wrong:
            with heartbeat(f"installing the {up.target.codename} builds on {up.name}", limit=DIST_UPGRADE_TIMEOUT_S):
                up.keep_command(packages.install(wrong, timeout=DIST_UPGRADE_TIMEOUT_S))
        up.keep_command(packages.hold(sorted(wanted)))
        return "held " + ", ".join(f"{n}={v}" for n, v in sorted(wanted.items())) + (
            f" (installed {', '.join(sorted(wrong))} at those versions first)" if wrong else "")

    def verify(self, up: Upgrade) -> str:
        return holds(post.hold(up.name, wanted=self.wanted(up), held=up.host.packages.held(),
                                recorded=up.value("held_before") is not None))
