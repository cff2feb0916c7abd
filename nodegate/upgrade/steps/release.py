"""The release steps: the reboots, do-release-upgrade, and the repair of what the release upgrade
leaves behind (disabled third-party sources, the legacy keyring, the rbd module). They say what to
do; the commands are the node's resources' (nodegate.cluster.nodes.resources).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from nodegate.cluster.nodes.resources import Apt, Boot, Modules, Release
from nodegate.cluster.nodes.ssh import wait_for_boot
from nodegate.core import postconditions as post
from nodegate.core.aptsources import LEGACY_KEYRING
from nodegate.core.knowledge import next_release
from nodegate.core.waits import WaitTimeout
from nodegate.upgrade.engine import NodeDidNotComeBack, Planned, Step, StepFailed, Upgrade, heartbeat, holds, on_node
from nodegate.upgrade.steps.packages import DIST_UPGRADE_TIMEOUT_S, _pending_now, _settle_dpkg, _wait_package_tools

log = logging.getLogger("nodegate.upgrade")


MODULES_LOAD_FILE = "/etc/modules-load.d/rbd.conf"


RELEASE_UPGRADE_TIMEOUT_S = 3 * 3600.0


class Reboot(Step):
    title_suffix = ""

    def __init__(self, name: str, title: str) -> None:
        self.name = name
        self.title = title

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        timeout = up.profile.upgrade.reboot_timeout_s(up.node)
        return (on_node(up, *Boot.reboot_command()),
                Planned("local", f"wait ≤ {timeout:g}s ({up.profile.upgrade.reboot_timeout_source(up.node)}) for SSH "
                                 f"with a new boot id, then Node {up.kube_name} Ready"))

    def run(self, up: Upgrade) -> str:
        from nodegate.cluster.node_identity import boot_facts
        from nodegate.cluster.nodes.ssh import SshConnectError

        key = f"{self.name}_boot_id_before"
        before, requested_at = up.value(key), up.value(f"{self.name}_requested_at")
        try:
            live = boot_facts(up.nodes.reconnect(up.name)) if before else None
        except SshConnectError:
            live = None      # down right now: the reboot asked for earlier is under way
        action = post.reboot_action(before=before, requested_at=requested_at, live=live,
                                    pending_matters=self._pending_matters(up)) if before else post.REQUEST
        if action == post.WAIT:
            log.info("%s was already asked to reboot (boot id %s before, at %s): waiting for it", up.name, before,
                     f"{requested_at:.0f}" if requested_at else "?")
        else:
            if live is not None and live.boot_id != before and live.reboot_required:
                log.info("%s rebooted since boot id %s but needs a reboot again (%s): rebooting", up.name, before,
                         ", ".join(live.reboot_packages) or "reboot-required")
            elif before:
                log.info("%s: the reboot asked for earlier (boot id %s before) is not proven by the current boot: "
                         "asking again", up.name, before)
            _wait_package_tools(up)   # never reboot under a running apt/dpkg/do-release-upgrade
            facts = boot_facts(up.host)
            before = facts.boot_id
            up.note(self.name, **{key: before, f"{self.name}_requested_at": facts.now})
            up.host.boot.request_reboot()
        after = wait_rebooted(up, before)
        up.note(self.name, **{f"{self.name}_boot_id_after": after})
        return f"rebooted: boot id {before} → {after}"

    def _pending_matters(self, up: Upgrade) -> bool:
        """Whether a pending reboot (reboot-required) means this step's reboot is still owed. The
        second reboot is there to boot the new release: nothing may be pending after it. The first
        is there so that do-release-upgrade may run: once the release upgrade is done (or the node
        already runs the target, do-release-upgrade having got that far), the reboot pending is the
        next reboot step's business."""
        if self.name != "reboot":
            return True
        return not up.finished("release_upgrade") and up.live_release() != up.target.version

    def verify(self, up: Upgrade) -> str:
        from nodegate.cluster.node_identity import boot_facts

        live = boot_facts(up.host)
        status = up.kube.node(up.kube_name) if up.kube is not None else None
        verdict = post.reboot(up.name, before=up.value(f"{self.name}_boot_id_before"),
                              requested_at=up.value(f"{self.name}_requested_at"), live=live,
                              pending_matters=self._pending_matters(up),
                              ready=status.is_ready if status is not None else None,
                              kubelet_boot_id=status.boot_id if status is not None else None)
        if self.name == "reboot_release" and verdict.holds and status is not None:
            image = post.release(up.name, target=up.target.version, version_id=up.target.version, label="",
                                 audit="", os_image=status.os_image, kubelet_boot_id=status.boot_id,
                                 boot_of_release=None)
            if not image.holds:
                raise StepFailed(f"{up.name} rebooted into the new release, but {image.text}", fix=image.fix)
            verdict = post.Verdict.ok(f"{verdict.text}; Node osImage {status.os_image}")
        if not verdict.holds:
            raise StepFailed(verdict.text, fix=verdict.fix)
        return verdict.text


def wait_rebooted(up: Upgrade, before: str) -> str:
    """Wait (bounded by the node's role) for SSH with a boot id other than ``before``, then Ready."""
    timeout = up.profile.upgrade.reboot_timeout_s(up.node)
    started = time.monotonic()
    oob = (f"reach it out of band through its BMC at {up.node.bmc}" if up.node.bmc else
           "reach it out of band (BMC/IPMI/iRMC console; the profile names no BMC address for it: add "
           f"[nodes.{up.name}] bmc = \"…\")")
    try:
        _, boot_id = wait_for_boot(up.nodes, up.name, timeout=timeout, new_boot_id_than=before)
        if up.kube is not None:
            left = max(1.0, timeout - (time.monotonic() - started))
            up.kube.wait_node_ready(up.kube_name, timeout=left, new_boot_id_than=before)
    except WaitTimeout as exc:
        raise NodeDidNotComeBack(
            f"{up.name} did not come back within {timeout:g}s after the reboot (role "
            f"{'control-plane' if up.node.is_control_plane else 'worker'} limit); last seen: {exc.last_seen}",
            fix=f"{oob} and see why it does not boot; then run the same command again to resume") from None
    log.info("%s is back with boot id %s after %.1fs", up.name, boot_id, time.monotonic() - started)
    return boot_id


class ReleaseUpgrade(Step):
    name = "release_upgrade"
    title = "do-release-upgrade to the target release"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (on_node(up, *Release.upgrade_command(devel=up.profile.upgrade.devel_release)),)

    def already(self, up: Upgrade) -> str | None:
        # An earlier run's do-release-upgrade may still be going (it outlives a lost SSH
        # connection, as under screen): never judge, let alone reboot, while it runs.
        _wait_package_tools(up)
        release = up.host.release.os_release()
        if release.version_id == up.target.version and not up.host.packages.audit():
            self._note_boot(up)
            return f"{up.name} runs {release.label} already"
        return None

    @staticmethod
    def _note_boot(up: Upgrade) -> None:
        # the boot during which the node reached the target: until it has rebooted from it, its
        # kubelet reports the release it read when it started (nodegate.core.postconditions.release)
        up.note("release_upgrade", release_upgrade_boot_id=up.host.boot.boot_id())

    def run(self, up: Upgrade) -> str:
        from nodegate.cluster.nodes.ssh import CommandFailed

        repaired = _settle_dpkg(up)
        release = up.host.release.os_release()
        if release.version_id == up.target.version:
            # an earlier do-release-upgrade was cut off after the release moved: finish its
            # package work the way Ubuntu says to (dpkg --configure -a, then apt)
            up.keep_command(up.host.apt.fix_install(timeout=DIST_UPGRADE_TIMEOUT_S))
            up.keep_command(up.host.apt.dist_upgrade(timeout=DIST_UPGRADE_TIMEOUT_S))
            if not up.value("release_upgrade_boot_id"):
                self._note_boot(up)
            return (f"{repaired}; " if repaired else "") + f"finished the interrupted release upgrade ({release.label})"
        if next_release(release.version_id or "") != up.target:
            raise StepFailed(f"{up.name} runs {release.label}; do-release-upgrade would not reach {up.target.version}")
        pending = up.host.boot.reboot_required()
        if pending.required:
            raise StepFailed(f"{up.name} needs a reboot first ({', '.join(pending.packages) or 'reboot-required'}); "
                             "do-release-upgrade refuses until then", fix="run again: the reboot step comes first")
        try:
            with heartbeat(f"running do-release-upgrade on {up.name}", limit=RELEASE_UPGRADE_TIMEOUT_S, every=10.0):
                result = up.host.release.upgrade(devel=up.profile.upgrade.devel_release,
                                                 timeout=RELEASE_UPGRADE_TIMEOUT_S)
        except CommandFailed as exc:
            up.keep_command(exc.result)
            text = exc.result.output
            if "Please install all available updates" in text:
                raise StepFailed(f"do-release-upgrade on {up.name} refused: Please install all available updates for "
                                 f"your release before upgrading ({_pending_now(up)})",
                                 fix="run the same command again: its dist-upgrade step finds these updates and "
                                     "installs them (apt-get dist-upgrade, keeping config files), then the release "
                                     "upgrade follows; a held package among them must be unheld first (`apt-mark "
                                     "showhold` on the node)") from None
            if "reboot" in text.lower() and "before upgrading" in text.lower():
                raise StepFailed(f"do-release-upgrade on {up.name} refused: Please reboot before upgrading",
                                 fix="run again: the reboot step comes first") from None
            raise
        up.keep_command(result)
        self._note_boot(up)
        return f"do-release-upgrade rc {result.rc} in {result.duration:.0f}s"

    def verify(self, up: Upgrade) -> str:
        release = up.host.release.os_release()
        status = up.need_kube().node(up.kube_name)
        verdict = post.release(up.name, target=up.target.version, version_id=release.version_id, label=release.label,
                               audit=up.host.packages.audit(), os_image=status.os_image or None,
                               kubelet_boot_id=status.boot_id, boot_of_release=up.value("release_upgrade_boot_id"))
        if not verdict.holds:
            raise StepFailed(verdict.text, fix=verdict.fix)
        return verdict.text


def apt_repair(up: Upgrade, old: str, new: str) -> str:
    """Run the apt repair program on the node (nodegate.cluster.apt_repair): third-party sources
    disabled or left on `old` by the release upgrade back on `new` as one-line entries, keys in
    trusted.gpg.d, the legacy keyring retired. Idempotent: the end state gives an empty plan."""
    from nodegate.cluster import apt_repair as program

    out = up.host.apt.repair_sources(old, new)
    up.keep_command(out)
    return program.summary(program.parse_output(out.stdout))


def apt_problems(up: Upgrade) -> list[str]:
    """What keeps the node's apt sources from the repair's end state, read from its files."""
    from nodegate.core import aptrepair

    files = {f.path: f.text for f in up.host.apt.source_files() if f.path.endswith((".list", ".sources"))}
    problems = aptrepair.end_state_problems(files, up.target.codename)
    if up.host.exists(LEGACY_KEYRING):
        problems.append(f"{LEGACY_KEYRING} still exists (legacy keyring)")
    return problems


class Repair(Step):
    name = "repair"
    title = "repair after the release upgrade: third-party sources, keys to /etc/apt/trusted.gpg.d, rbd module"

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        old = (up.value("source_codename") or "<old codename>")
        return (on_node(up, *Apt.repair_sources_command(old, up.target.codename)),
                on_node(up, *Apt.update_command()),
                on_node(up, *Modules.load_command("rbd")),
                on_node(up, *Modules.persist_command("rbd", MODULES_LOAD_FILE)),
                on_node(up, *Apt.update_command()))

    def already(self, up: Upgrade) -> str | None:
        # the cheap reads only: `verify` (run right after) adds the `apt-get update` proof
        if not self._problems(up, update=False):
            return ("third-party sources enabled on the new codename as one-line entries, no legacy keyring, "
                    "rbd loaded and persisted")
        return None

    def run(self, up: Upgrade) -> str:
        host = up.host
        old = up.value("source_codename") or (up.source_release().codename)
        new = up.target.codename
        done = []
        repaired = apt_repair(up, old, new)
        if repaired:
            done.append(repaired)
        update = host.apt.update()
        up.keep_command(update.result)
        if not host.modules.is_loaded("rbd"):
            up.keep_command(host.modules.load("rbd"))
            done.append("rbd loaded")
        if host.modules.persist("rbd", MODULES_LOAD_FILE):
            done.append(f"rbd persisted in {MODULES_LOAD_FILE}")
        return "; ".join(done) or "nothing needed repair"

    def verify(self, up: Upgrade) -> str:
        return holds(self._verdict(up, update=True))

    def _problems(self, up: Upgrade, *, update: bool) -> list[str]:
        verdict = self._verdict(up, update=update)
        return [] if verdict.holds else [line.strip()[2:] for line in verdict.text.splitlines()[1:]]

    def _verdict(self, up: Upgrade, *, update: bool) -> "post.Verdict":
        host = up.host
        update_problems = None
        if update:
            result = host.apt.update()
            up.keep_command(result.result)
            report = result.report
            update_problems = [] if report.clean else [*report.errors, *report.warnings,
                                                       *(f"NO_PUBKEY {k}" for k in report.no_pubkey)]
        return post.repair(up.name, source_problems=apt_problems(up), rbd_loaded=host.modules.is_loaded("rbd"),
                           rbd_persisted="rbd" in host.modules.persisted(),
                           update_problems=update_problems)
