"""The release steps: the reboots, do-release-upgrade, and the repair of what the release upgrade
leaves behind (disabled third-party sources, the legacy keyring, the rbd module).
"""
from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nodegate.cluster.nodes.resources import APT_ENV, APT_UPDATE, DIST_UPGRADE, DPKG_KEEP_CONFIG
from nodegate.cluster.nodes.ssh import wait_for_boot
from nodegate.core.aptsources import LEGACY_KEYRING
from nodegate.core.knowledge import next_release
from nodegate.core.waits import WaitTimeout
from nodegate.upgrade.engine import NodeDidNotComeBack, Planned, Step, StepFailed, Upgrade, heartbeat, on_node
from nodegate.upgrade.steps.packages import DIST_UPGRADE_TIMEOUT_S, _pending_now, _settle_dpkg, _wait_package_tools

if TYPE_CHECKING:
    pass

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
        return (on_node(up, "sh", "-c", "(sleep 1; shutdown -r now || reboot) </dev/null >/dev/null 2>&1 &"),
                Planned("local", f"wait ≤ {timeout:g}s for SSH with a new boot id, then Node {up.kube_name} Ready"))

    def run(self, up: Upgrade) -> str:
        from nodegate.cluster.nodes.ssh import SshConnectError

        key = f"{self.name}_boot_id_before"
        before = up.value(key)
        rebooted_already = False
        if before:
            try:
                rebooted_already = up.nodes.reconnect(up.name).boot.boot_id() != before
            except SshConnectError:
                rebooted_already = True   # down right now: the reboot asked for earlier is under way
            else:
                if rebooted_already and self._needed_again(up):
                    log.info("%s rebooted since boot id %s but needs a reboot again: rebooting", up.name, before)
                    rebooted_already = False
        if rebooted_already:
            log.info("%s was already asked to reboot (boot id %s before): waiting for it", up.name, before)
        else:
            _wait_package_tools(up)   # never reboot under a running apt/dpkg/do-release-upgrade
            before = up.host.boot.boot_id()
            up.note(self.name, **{key: before})
            up.host.boot.request_reboot()
        after = wait_rebooted(up, before)
        return f"rebooted: boot id {before} → {after}"

    def _needed_again(self, up: Upgrade) -> bool:
        """The first reboot is there so that do-release-upgrade may run: when the node needs one
        again (a kernel installed since), a rerun reboots again instead of refusing at the next
        step on every run."""
        # A node already on the target release (do-release-upgrade got that far before an
        # interruption) needs the reboot of step reboot_release, not this one again.
        return (self.name == "reboot" and not up.finished("release_upgrade") and up.host.boot.reboot_required().required
                and up.host.release.os_release().version_id != up.target.version)

    def verify(self, up: Upgrade) -> str:
        before = up.value(f"{self.name}_boot_id_before")
        boot_id = up.host.boot.boot_id()
        if before and boot_id == before:
            raise StepFailed(f"{up.name} has not rebooted (boot id still {boot_id})")
        if self._needed_again(up):
            packages = ", ".join(up.host.boot.reboot_required().packages) or "reboot-required"
            raise StepFailed(f"{up.name} needs a reboot again ({packages})",
                             fix="run the same command again: it reboots the node before do-release-upgrade")
        if up.kube is not None:
            status = up.kube.node(up.kube_name)
            if not status.is_ready:
                raise StepFailed(f"{up.name} is not Ready after the reboot: {status.describe()}")
        return f"{up.name} answers over SSH with boot id {boot_id} and is Ready"


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

    def command(self, up: Upgrade) -> list[str]:
        argv = ["do-release-upgrade", "-f", "DistUpgradeViewNonInteractive"]
        if up.profile.upgrade.devel_release:
            argv.append("-d")
        return argv

    def plan(self, up: Upgrade) -> Sequence[Planned]:
        return (on_node(up, *self.command(up)),)

    def already(self, up: Upgrade) -> str | None:
        # An earlier run's do-release-upgrade may still be going (it outlives a lost SSH
        # connection, as under screen): never judge, let alone reboot, while it runs.
        _wait_package_tools(up)
        release = up.host.release.os_release()
        if release.version_id == up.target.version and not up.host.packages.audit():
            return f"{up.name} runs {release.label} already"
        return None

    def run(self, up: Upgrade) -> str:
        from nodegate.cluster.nodes.ssh import CommandFailed

        repaired = _settle_dpkg(up)
        release = up.host.release.os_release()
        if release.version_id == up.target.version:
            # an earlier do-release-upgrade was cut off after the release moved: finish its
            # package work the way Ubuntu says to (dpkg --configure -a, then apt)
            for argv in (["apt-get", "-y", "-q", *DPKG_KEEP_CONFIG, "-f", "install"], list(DIST_UPGRADE)):
                up.keep_command(up.host.run(argv, sudo=True, env=APT_ENV, timeout=DIST_UPGRADE_TIMEOUT_S))
            return (f"{repaired}; " if repaired else "") + f"finished the interrupted release upgrade ({release.label})"
        if next_release(release.version_id or "") != up.target:
            raise StepFailed(f"{up.name} runs {release.label}; do-release-upgrade would not reach {up.target.version}")
        pending = up.host.boot.reboot_required()
        if pending.required:
            raise StepFailed(f"{up.name} needs a reboot first ({', '.join(pending.packages) or 'reboot-required'}); "
                             "do-release-upgrade refuses until then", fix="run again: the reboot step comes first")
        try:
            with heartbeat(f"running do-release-upgrade on {up.name}", limit=RELEASE_UPGRADE_TIMEOUT_S, every=10.0):
                result = up.host.run(self.command(up), sudo=True, env=APT_ENV, timeout=RELEASE_UPGRADE_TIMEOUT_S)
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
        return f"do-release-upgrade rc {result.rc} in {result.duration:.0f}s"

    def verify(self, up: Upgrade) -> str:
        release = up.host.release.os_release()
        if release.version_id != up.target.version:
            raise StepFailed(f"{up.name} runs {release.label}, not {up.target.version}, after do-release-upgrade")
        audit = up.host.packages.audit()
        if audit:
            raise StepFailed(f"dpkg on {up.name} is not consistent after do-release-upgrade: {audit.splitlines()[0]}",
                             fix="run the same command again: it finishes dpkg's work with `dpkg --configure -a`")
        return f"/etc/os-release: {release.label}"




def apt_repair(up: Upgrade, old: str, new: str) -> str:
    """Run the apt repair program on the node (nodegate.cluster.apt_repair): third-party sources
    disabled or left on `old` by the release upgrade back on `new` as one-line entries, keys in
    trusted.gpg.d, the legacy keyring retired. Idempotent: the end state gives an empty plan."""
    from nodegate.cluster import apt_repair as program

    out = up.host.run(["python3", "-c", program.program(), old, new], sudo=True)
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
        return (on_node(up, "python3", "-c", "<apt repair: third-party sources disabled by the upgrade (one-line or "
                        "deb822) back on the new codename as Kubespray's own line, keys to /etc/apt/trusted.gpg.d, "
                        "legacy trusted.gpg retired; Ubuntu's sources untouched>", old, up.target.codename),
                on_node(up, *APT_UPDATE),
                on_node(up, "modprobe", "--", "rbd"),
                on_node(up, "sh", "-c", f"echo rbd > {MODULES_LOAD_FILE}"),
                on_node(up, *APT_UPDATE))

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
        persisted = host.run(["sh", "-c", f"grep -qx rbd {shlex.quote(MODULES_LOAD_FILE)} 2>/dev/null || "
                                          f"{{ mkdir -p /etc/modules-load.d && echo rbd > {shlex.quote(MODULES_LOAD_FILE)}"
                                          " && echo written; }"], sudo=True)
        if "written" in persisted.stdout:
            done.append(f"rbd persisted in {MODULES_LOAD_FILE}")
        return "; ".join(done) or "nothing needed repair"

    def verify(self, up: Upgrade) -> str:
        problems = self._problems(up, update=True)
        if problems:
            raise StepFailed(f"after the release upgrade {up.name} still needs repair:\n"
                             + "\n".join(f"  - {p}" for p in problems))
        return ("apt-get update clean; third-party sources enabled on the new codename, keys in /etc/apt/trusted.gpg.d; "
                "rbd loaded and persisted")

    def _problems(self, up: Upgrade, *, update: bool) -> list[str]:
        host = up.host
        problems = apt_problems(up)
        if not host.modules.is_loaded("rbd"):
            problems.append("the rbd module is not loaded")
        persisted = host.run(["sh", "-c", "cat /etc/modules-load.d/*.conf 2>/dev/null"], expect=(0, 1)).stdout
        if "rbd" not in [w.strip() for w in persisted.splitlines()]:
            problems.append("rbd is not persisted in /etc/modules-load.d/")
        if update:
            result = host.apt.update()
            up.keep_command(result.result)
            report = result.report
            if not report.clean:
                problems.append("`apt-get update` is not clean: " + "; ".join(
                    [*report.errors, *report.warnings, *(f"NO_PUBKEY {k}" for k in report.no_pubkey)][:5]))
        return problems
