"""Packages: the held set and its versions, dpkg's consistency, what apt would still upgrade."""
from __future__ import annotations

import pytest

from nodegate.plugin.fixtures import fail_check


@pytest.mark.preflight
@pytest.mark.postflight
def test_packages_held(node, reads, profile, releases, evidence):
    from nodegate.core.knowledge import same_upstream_build

    snapshot = reads.snapshot(node.name)
    held = snapshot.held
    expected = tuple(profile.expect.held_packages)
    codename = snapshot.os_release.version_codename or ""
    rows = []
    problems = []
    for package in expected:
        want = profile.expect.version_for(package, codename)
        installed = snapshot.version_of(package)
        rows.append([package, installed or "not installed", "held" if package in held else "not held",
                     want or "(no expectation)"])
        if installed is None:
            problems.append(f"{package} is not installed (expected held at {want or 'the inventory version'})")
            continue
        if package not in held:
            problems.append(f"{package} {installed} is installed but not held")
        if want is None or installed == want:
            continue
        if releases.phase == "postflight" and same_upstream_build(installed, want):
            continue   # the target release's build of the same version
        source_build = (profile.expect.version_for(package, releases.source.codename)
                        if releases.phase == "postflight" and releases.source else None)
        if source_build and installed == source_build:
            continue   # still the source release's build of the same version: same upstream, allowed
        problems.append(f"{package} is held at {installed}, expected {want}")
    extra = sorted(set(held) - set(expected))
    for package in extra:
        rows.append([package, held[package], "held", "(not expected to be held)"])
        problems.append(f"{package} {held[package]} is held but not in the expected set")
    evidence.table(f"{node.name}: held packages", ["package", "installed", "hold", "expected"], rows)
    if problems:
        pins = " ".join(f"{p}={profile.expect.version_for(p, codename)}" for p in expected
                        if profile.expect.version_for(p, codename))
        fix = (f"install the expected versions and hold them: apt-get install --allow-downgrades "
               f"--allow-change-held-packages {pins} && apt-mark hold {' '.join(expected)}" if pins else
               f"hold exactly {', '.join(expected)} at the versions Kubespray installs (apt-mark hold …)")
        if extra:
            fix += f"; `apt-mark unhold {' '.join(extra)}` if nothing needs them held"
        fail_check(f"held-package drift on {node.name}: {len(problems)} difference(s) from the expected set "
                   f"({', '.join(expected)}, versions from the Kubespray inventory)", details=problems, fix=fix)


@pytest.mark.preflight
@pytest.mark.postflight
def test_dpkg_audit_clean(node, reads, evidence):
    snapshot = reads.snapshot(node.name)
    if snapshot.audit:
        evidence.text(f"{node.name}: dpkg --audit", snapshot.audit)
        lines = snapshot.audit.splitlines()
        fail_check(f"`dpkg --audit` on {node.name} reports a half-installed or unconfigured package "
                   f"({len(lines)} line(s))", details=lines[:10],
                   fix="finish the interrupted installation: `dpkg --configure -a`, then `apt-get -f install`")


@pytest.mark.preflight
@pytest.mark.postflight
def test_nothing_upgradable(node, reads, profile, phase, notice, evidence):
    """do-release-upgrade refuses while anything is upgradable, held packages with newer candidates
    included ('Please install all available updates for your release before upgrading')."""
    upgradable = reads.upgradable(node.name)
    held = set(reads.snapshot(node.name).held)
    pending = [f"{p.name} {p.current_version or '?'} -> {p.new_version}" for p in upgradable.packages]
    held_newer = [name for name in upgradable.kept_back if name in held]
    stuck = [name for name in upgradable.kept_back if name not in held]
    evidence.json(f"{node.name}: apt-get -s dist-upgrade", {
        "upgrades": pending, "kept back (held)": held_newer, "kept back (not held)": stuck,
        "not upgraded": upgradable.not_upgraded})
    if stuck:
        fail_check(f"{len(stuck)} package(s) on {node.name} are kept back although not held: "
                   f"{', '.join(stuck)}; `apt-get dist-upgrade` cannot install them, so do-release-upgrade would "
                   "refuse ('Please install all available updates for your release before upgrading')",
                   fix=f"see why with `apt-get -s install {' '.join(stuck)}` and resolve the dependency problem")
    if phase == "preflight":
        if pending:
            notice(f"{node.name}: {len(pending)} pending update(s): {'; '.join(pending)}. do-release-upgrade would "
                   "refuse now; the procedure installs them in step 6 (apt-get dist-upgrade) before the release "
                   "upgrade")
        if held_newer:
            notice(f"{node.name}: held package(s) with newer candidates: {', '.join(held_newer)}. "
                   "do-release-upgrade counts them as pending updates; the procedure unholds them (step 5) and "
                   "holds them again at the Kubespray versions after the upgrade (step 12)")
        return
    if pending:
        fail_check(f"{len(pending)} update(s) are still pending on {node.name} after the upgrade",
                   details=pending, fix="run `apt-get update && apt-get dist-upgrade` on the node (keeping existing "
                                        "config files), then check again")
