"""What do-release-upgrade itself refuses on a real machine, seen before the window: its Prompt
setting, and packages the procedure cannot move (holds it does not lift, apt pins).

The other refusals have their own checks: a pending reboot (test_kernel.test_no_reboot_pending),
free space in / and /boot (test_kernel.test_disk_space), pending updates
(test_packages.test_nothing_upgradable). Facts: ubuntu-release-upgrader (do-release-upgrade reads
Prompt from /etc/update-manager/release-upgrades and with `never` offers no release; it refuses
while anything is upgradable, held packages with a newer candidate included).
"""
from __future__ import annotations

import re

import pytest

from nodegate.plugin.fixtures import fail_check

PROMPT_FILE = "/etc/update-manager/release-upgrades"   # nodegate.cluster.nodes.snapshot reads it


def _read(result, expect, what: str) -> str:
    """A read of the node's snapshot with its exit code judged as `host.run(…, expect=…)` judges it."""
    if result.rc not in expect:
        fail_check(f"cannot read {what}: {result.describe()}",
                   fix="check the node's file permissions and that its shell and tools answer over SSH")
    return result.stdout


def _prompt(text: str) -> str | None:
    value = None
    for line in text.splitlines():
        match = re.match(r"^\s*Prompt\s*=\s*(\S+)", line, flags=re.IGNORECASE)
        if match:
            value = match.group(1).lower()
    return value


@pytest.mark.preflight
def test_release_upgrade_prompt(node, reads, evidence, notice):
    from nodegate.cluster.nodes.snapshot import RELEASE_UPGRADES_ABSENT

    text = _read(reads.snapshot(node.name).release_upgrades, (0, RELEASE_UPGRADES_ABSENT), PROMPT_FILE)
    evidence.text(f"{node.name}: {PROMPT_FILE}", text or "(absent)")
    prompt = _prompt(text)
    if prompt == "never":
        fail_check(f"do-release-upgrade on {node.name} will offer no release: Prompt=never in {PROMPT_FILE}",
                   fix=f"set Prompt=lts in {PROMPT_FILE} on the node (sed -i 's/^Prompt=.*/Prompt=lts/' {PROMPT_FILE})")
    if prompt == "normal":
        notice(f"Prompt=normal in {PROMPT_FILE} on {node.name}: do-release-upgrade may offer a release that is not "
               "the next LTS; nodegate moves LTS to LTS, Prompt=lts says so")
    if prompt is None:
        notice(f"{node.name} has no Prompt= line in {PROMPT_FILE}: the upgrader's default applies")


@pytest.mark.preflight
def test_no_package_blocks_release_upgrade(node, reads, profile, evidence):
    """A hold the procedure does not lift (it unholds only the expected set, steps 5 and 12) or an
    apt pin keeps a package back; do-release-upgrade then refuses with "Please install all
    available updates" or cannot calculate the upgrade."""
    snapshot = reads.snapshot(node.name)
    expected = set(profile.expect.held_packages)
    problems = [f"{name} {version} is held and the procedure does not unhold it (not in the expected set: "
                f"{profile.expect.held_source})" for name, version in sorted(snapshot.held.items())
                if name not in expected]
    pins = _read(snapshot.apt_pins, (0, 1, 2), f"the apt pins of {node.name}")
    evidence.text(f"{node.name}: apt pins", pins or "(none)")
    current: dict[str, str] = {}
    for line in pins.splitlines():
        path, _, field = line.partition(":")
        key, _, value = field.partition(":")
        if key.strip().lower() == "package":
            current[path] = value.strip()
        elif key.strip().lower() == "pin-priority" and path in current:
            try:
                priority = int(value.strip())
            except ValueError:
                continue
            if priority >= 1000 or priority < 0:
                problems.append(f"{path}: Pin-Priority {priority} for {current[path]} keeps it from moving with the "
                                "release upgrade")
    if problems:
        fail_check(f"{len(problems)} package(s) on {node.name} would block do-release-upgrade",
                   details=problems,
                   fix="lift the hold (`apt-mark unhold <package>`) or remove the pin, or add the package to "
                       "[expect] held_packages so the procedure unholds and holds it again")
