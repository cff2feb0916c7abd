"""Each upgrade step's postcondition as a pure function over facts read from the node and the cluster.

A step counts as done only while its postcondition is seen to hold on the node *now*; a journal
or an annotation is a hint, never proof. The steps (nodegate.upgrade) read the facts and call
these; a rerun calls them again before it skips a step an earlier run finished. A fact that
could not be read, or a record the check needs that is missing, makes the verdict "does not
hold" (then the step is redone or the run stops): nothing is ever skipped on trust.

No I/O here: the unit tests drive every verdict from plain values.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nodegate.core.incarnation import ABSENT, AGREES, LAGS
from nodegate.core.kubespray_release import same_kube_version


@dataclass(frozen=True)
class Verdict:
    holds: bool
    text: str                   # the proof when it holds, the reason when it does not
    fix: str | None = None

    @classmethod
    def ok(cls, text: str) -> "Verdict":
        return cls(True, text)

    @classmethod
    def no(cls, text: str, fix: str | None = None) -> "Verdict":
        return cls(False, text, fix)


@dataclass(frozen=True)
class BootFacts:
    """The node's current boot, read in one command (its own clock: no skew with this machine's)."""
    boot_id: str
    boot_time: float             # epoch seconds when the current boot began (now - /proc/uptime)
    now: float                   # the node's clock when read
    reboot_required: bool        # /var/run/reboot-required exists
    reboot_packages: tuple[str, ...] = ()


# -- cluster steps ----------------------------------------------------------------------------------

def drain(node: str, *, unschedulable: bool, evictable: Sequence[str]) -> Verdict:
    if not unschedulable:
        return Verdict.no(f"{node} is not cordoned")
    if evictable:
        return Verdict.no(f"{node} still runs evictable pods: {', '.join(evictable)}")
    return Verdict.ok(f"{node} is cordoned and runs no evictable pod")


def noout(node: str, *, has_osds: bool, noout_set: bool, flags: str = "") -> Verdict:
    if not has_osds:
        return Verdict.ok(f"CRUSH host {node} has no OSDs")
    if not noout_set:
        return Verdict.no(f"noout is not set for CRUSH host {node}" + (f" (crush node flags: {flags})" if flags else ""))
    return Verdict.ok(f"noout set for CRUSH host {node}")


def uncordon(node: str, *, cordoned_by_us: bool, unschedulable: bool, describe: str = "") -> Verdict:
    if cordoned_by_us and unschedulable:
        return Verdict.no(f"{node} is still cordoned")
    if not cordoned_by_us:
        return Verdict.ok(f"{node} left as found (cordoned before this upgrade)" + (f": {describe}" if describe else ""))
    return Verdict.ok(describe or f"{node} is schedulable")


def unset_noout(node: str, *, noout_set: bool) -> Verdict:
    if noout_set:
        return Verdict.no(f"noout is still set for CRUSH host {node}")
    return Verdict.ok(f"no noout flag on CRUSH host {node}")


def kubespray(node: str, *, ready: bool, describe: str, kubelet_version: str, want: str, recap: str = "") -> Verdict:
    if not ready:
        return Verdict.no(f"{node} is not Ready after Kubespray: {describe}")
    if not want:
        return Verdict.no(f"the cluster's kube_version is unknown: cannot tell whether {node}'s kubelet "
                          f"{kubelet_version or '?'} is the one Kubespray installs",
                          fix="set kube_version in the Kubespray inventory (group_vars) the profile names")
    if not same_kube_version(kubelet_version, want):
        return Verdict.no(f"{node} runs kubelet {kubelet_version or '(none reported)'}, the cluster's kube_version "
                          f"is {want}")
    return Verdict.ok(f"{node} Ready, kubelet {kubelet_version}" + (f"; recap {recap}" if recap else ""))


# -- packages ---------------------------------------------------------------------------------------

def unhold(node: str, *, recorded: Mapping[str, str] | None, held_now: Mapping[str, str]) -> Verdict:
    if recorded is None:
        return Verdict.no("the journal has no record of the packages held before the upgrade: cannot tell what "
                          "must be unheld")
    still = sorted(set(recorded) & set(held_now))
    if still:
        return Verdict.no(f"still held on {node}: {', '.join(still)}")
    return Verdict.ok("recorded and not held: " + (", ".join(sorted(recorded)) or "(none was held)"))


def dist_upgrade(node: str, *, audit: str, upgradable: Sequence[str]) -> Verdict:
    if audit:
        return Verdict.no(f"dpkg on {node} is not consistent (`dpkg --audit`): {audit.splitlines()[0]}",
                          fix="run the same command again: it finishes dpkg's work with `dpkg --configure -a`")
    if upgradable:
        return Verdict.no(f"still upgradable (or kept back) on {node} after dist-upgrade: " + ", ".join(upgradable),
                          fix="a held package is kept back: check `apt-mark showhold` on the node")
    return Verdict.ok("nothing upgradable")


def hold(node: str, *, wanted: Mapping[str, str], held: Mapping[str, str], recorded: bool = True) -> Verdict:
    if not recorded:
        return Verdict.no("the journal has no record of the packages held before the upgrade: cannot tell what "
                          "must be held")
    problems = []
    for name, version in sorted(wanted.items()):
        if name not in held:
            problems.append(f"{name} is not held")
        elif held[name] != version:
            problems.append(f"{name} is held at {held[name]}, expected {version}")
    if problems:
        return Verdict.no(f"held package drift on {node}: " + "; ".join(problems))
    return Verdict.ok("held: " + (", ".join(f"{n}={v}" for n, v in sorted(wanted.items())) or "(none was held)"))


# -- reboots ----------------------------------------------------------------------------------------

def reboot(node: str, *, before: str | None, requested_at: float | None, live: BootFacts,
           pending_matters: bool, ready: bool | None, kubelet_boot_id: str | None = None) -> Verdict:
    """A reboot holds when the current boot began after the reboot was asked for: the boot id
    differs from the one recorded before the request AND the boot began after the request (the
    node's clock both times) AND no reboot is pending (where the step is there to clear it) AND
    the node is Ready with its kubelet reporting this boot."""
    if not before:
        return Verdict.no("the journal has no boot id recorded before the reboot: cannot prove it happened")
    if requested_at is None:
        return Verdict.no("the journal has no time recorded for the reboot request: cannot prove the current boot "
                          "began after it")
    if live.boot_id == before:
        return Verdict.no(f"{node} has not rebooted (boot id still {before})")
    if not live.boot_time or live.boot_time <= requested_at:
        return Verdict.no(f"{node}'s current boot (boot id {live.boot_id}) began at {live.boot_time:.0f}, not after the "
                          f"reboot was asked for at {requested_at:.0f}")
    if pending_matters and live.reboot_required:
        return Verdict.no(f"{node} needs a reboot again ({', '.join(live.reboot_packages) or 'reboot-required'})",
                          fix="run the same command again: it reboots the node")
    if ready is False:
        return Verdict.no(f"{node} is not Ready after the reboot")
    if kubelet_boot_id is not None and kubelet_boot_id != live.boot_id:
        return Verdict.no(f"{node}'s kubelet reports boot id {kubelet_boot_id or '(none)'}, the node runs "
                          f"{live.boot_id}: it has not registered this boot yet")
    return Verdict.ok(f"{node} booted at {live.boot_time:.0f} (boot id {live.boot_id}), after the request at "
                      f"{requested_at:.0f} (boot id {before} before)" + ("; Ready" if ready else "")
                      + ("; no reboot pending" if pending_matters else ""))


# What a reboot step does when it runs.
WAIT = "wait"          # the reboot asked for earlier is under way or done: wait for SSH and Ready
REQUEST = "request"    # ask for a reboot (again)


def reboot_action(*, before: str | None, requested_at: float | None, live: BootFacts | None,
                  pending_matters: bool) -> str:
    """Whether a reboot step that runs must ask for a reboot, or wait for the one asked for earlier.
    ``live`` None: the node does not answer (down: the reboot asked for is under way)."""
    if not before:
        return REQUEST
    if live is None:
        return WAIT
    if live.boot_id == before:
        return REQUEST          # the request never reached the node (or the run stopped before it)
    if requested_at is None or not live.boot_time or live.boot_time <= requested_at:
        return REQUEST          # a boot not proven to follow the request: reboot to be sure
    if pending_matters and live.reboot_required:
        return REQUEST          # rebooted since, but something needs a reboot again
    return WAIT


# -- the release --------------------------------------------------------------------------------

def os_image_shows(os_image: str, version: str) -> bool:
    """'Ubuntu 22.04.5 LTS' shows 22.04; 'Ubuntu 22.04' too; 'Ubuntu 20.04.6 LTS' does not."""
    words = os_image.split()
    return len(words) >= 2 and words[0] == "Ubuntu" and (words[1] == version or words[1].startswith(version + "."))


def release(node: str, *, target: str, version_id: str | None, label: str, audit: str, os_image: str | None,
            kubelet_boot_id: str | None, boot_of_release: str | None) -> Verdict:
    """The release step holds when /etc/os-release shows the target, dpkg is consistent, and the
    Node's osImage shows the target. The kubelet reports the OS it read when it started: before
    the node has rebooted since the release upgrade (the kubelet still reports the boot that was
    running then, ``boot_of_release``) an osImage of the old release is what it must show."""
    if version_id != target:
        return Verdict.no(f"{node} runs {label}, not {target}")
    if audit:
        return Verdict.no(f"dpkg on {node} is not consistent after do-release-upgrade: {audit.splitlines()[0]}",
                          fix="run the same command again: it finishes dpkg's work with `dpkg --configure -a`")
    if os_image is None:
        return Verdict.no(f"the Node's osImage of {node} could not be read: the release is not proven in the cluster")
    if os_image_shows(os_image, target):
        return Verdict.ok(f"/etc/os-release: {label}; Node osImage: {os_image}; dpkg consistent")
    if boot_of_release and kubelet_boot_id == boot_of_release:
        return Verdict.ok(f"/etc/os-release: {label}; dpkg consistent; Node osImage {os_image!r} is the kubelet's "
                          f"report from before the release upgrade (same boot {kubelet_boot_id}, not rebooted since)")
    return Verdict.no(f"{node}'s /etc/os-release shows {label} but the Node's osImage is {os_image!r}"
                      + (" although the node rebooted since the release upgrade" if boot_of_release else ""),
                      fix="look at the kubelet on the node (`systemctl status kubelet`); a kubelet that reports the "
                          "new release after its restart is what the procedure waits for")


# -- the repair -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceLine:
    path: str
    raw: str
    enabled: bool
    suite: str
    disabled_on_upgrade: bool
    signed_by: str | None = None


def repair(node: str, *, sources: Sequence[SourceLine] = (), old_codename: str | None = None,
           legacy_keyring: bool = False, keyrings_present: Sequence[str] = (), rbd_loaded: bool,
           rbd_persisted: bool, update_problems: Sequence[str] | None,
           source_problems: Sequence[str] = ()) -> Verdict:
    """The repair holds when the sources and keys are as it left them: no source still disabled on
    upgrade or on the old codename, no legacy keyring, every key file an enabled source names
    there; rbd loaded and persisted; and (when it was run) `apt-get update` clean."""
    problems = list(source_problems)      # what an end-state reader of the source files found
    if sources and not old_codename:
        problems.append("the journal has no source codename recorded: cannot tell which sources are left behind")
    present = set(keyrings_present)
    for s in sources:
        if s.disabled_on_upgrade:
            problems.append(f"{s.path}: `{s.raw.strip()}` is still disabled on upgrade")
        elif s.enabled and old_codename and (s.suite == old_codename or s.suite.startswith(old_codename + "-")):
            problems.append(f"{s.path}: `{s.raw.strip()}` still points at {old_codename}")
        elif s.enabled and s.signed_by and s.signed_by not in present:
            problems.append(f"{s.path}: signed-by {s.signed_by} is missing")
    if legacy_keyring:
        problems.append("/etc/apt/trusted.gpg still exists (legacy keyring)")
    if not rbd_loaded:
        problems.append("the rbd module is not loaded")
    if not rbd_persisted:
        problems.append("rbd is not persisted in /etc/modules-load.d/")
    if update_problems:
        problems.append("`apt-get update` is not clean: " + "; ".join(list(update_problems)[:5]))
    if problems:
        return Verdict.no(f"after the release upgrade {node} still needs repair:\n" + "\n".join(f"  - {p}" for p in problems))
    return Verdict.ok("no source disabled on upgrade or on the old codename; keys in place, no legacy keyring; rbd "
                      "loaded and persisted" + ("; apt-get update clean" if update_problems is not None else ""))


# -- the gate -------------------------------------------------------------------------------------

def mid_upgrade(node: str, *, journal_cordoned_by: str | None, unschedulable: bool, live_cordoned_by: str | None,
                annotation: str, annotation_detail: str, target: str, live_release: str | None,
                release_recorded: bool, completed: bool = False) -> Verdict:
    """The gate may be skipped only when the live state proves the node is mid-upgrade by this
    journal (whose incarnation was checked already), with the Node annotation never naming
    another journal (``annotation`` is a nodegate.core.incarnation agreement kind):

    - the node is cordoned by the run this journal recorded as cordoning it (the annotation
      mirrors the journal, or is absent: every finished step is then proven on the node anyway); or
    - past the uncordon: the node runs the target release the journal recorded upgrading it to,
      and the annotation mirrors this journal (the cluster's record of the same upgrade); or the
      journal records the whole upgrade complete (which clears the annotation) and the node runs
      the target: a rerun re-verifies every step."""
    if annotation not in (AGREES, LAGS, ABSENT):
        return Verdict.no(annotation_detail)
    cordon_proof = (journal_cordoned_by and unschedulable and live_cordoned_by == journal_cordoned_by)
    if cordon_proof:
        return Verdict.ok(f"{node} is cordoned by run {journal_cordoned_by} of this journal; {annotation_detail}")
    if completed and live_release == target:
        return Verdict.ok(f"{node} runs {target} and this journal records its upgrade complete; {annotation_detail}")
    if release_recorded and live_release == target and annotation in (AGREES, LAGS):
        return Verdict.ok(f"{node} runs {target}, the release this journal upgraded it to; {annotation_detail}")
    if not journal_cordoned_by:
        why = "this journal never cordoned the node"
    elif not unschedulable:
        why = f"{node} is not cordoned (this journal cordoned it in run {journal_cordoned_by})"
    else:
        why = (f"{node} is cordoned by {live_cordoned_by or 'someone else (no nodegate.io/cordoned-by)'}, not by run "
               f"{journal_cordoned_by} of this journal")
    if release_recorded and live_release == target:
        why += f"; it runs {target}, but {annotation_detail}"
    return Verdict.no(why + ": nothing on the node proves this upgrade is under way")
