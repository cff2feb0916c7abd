"""apt: what `apt-get update` says (read from its text: it exits 0 even with NO_PUBKEY) and the sources."""
from __future__ import annotations

import pytest

from nodegate.plugin.fixtures import fail_check

KEYRING_FIX = ("move the repository key out of /etc/apt/trusted.gpg into /etc/apt/keyrings/<name>.gpg and add "
               "`signed-by=/etc/apt/keyrings/<name>.gpg` to its source line")


@pytest.mark.preflight
@pytest.mark.postflight
def test_apt_update_clean(node, reads, phase, notice, evidence):
    update = reads.apt_update(node.name)
    report = update.report
    evidence.command(update.result)
    if report.errors or report.no_pubkey:
        details = list(report.errors[:10]) + [f"NO_PUBKEY {key}" for key in report.no_pubkey]
        fail_check(f"`apt-get update` on {node.name} reports {len(report.errors)} error(s) and "
                   f"{len(report.no_pubkey)} missing key(s) (exit code {update.result.rc}: apt exits 0 even then)",
                   details=details,
                   fix="repair the failing sources (reachable URL, right codename, key present with signed-by=) "
                       "until `apt-get update` prints no Err:/E: line")
    other = [w for w in report.warnings if "legacy trusted.gpg keyring" not in w]
    if report.legacy_keyring:
        text = (f"apt warns on {node.name}: key stored in the legacy trusted.gpg keyring for "
                f"{', '.join(report.legacy_keyring)}")
        if phase == "preflight":
            notice(f"{text}. Known and not blocking: the procedure moves the key to /etc/apt/keyrings with "
                   "signed-by= in step 10, after the release upgrade")
        else:
            fail_check(text + " (still there after the upgrade)", fix=KEYRING_FIX)
    if other:
        if phase == "preflight":
            notice(f"apt warns on {node.name}: " + " | ".join(other[:5]))
        else:
            fail_check(f"`apt-get update` on {node.name} prints {len(other)} warning(s) after the upgrade",
                       details=other[:10], fix="correct the apt sources the warnings name")


@pytest.mark.postflight
def test_sources_after_upgrade(node, reads, releases, evidence):
    """do-release-upgrade comments out third-party sources (`# disabled on upgrade to jammy`); after
    the procedure they must be enabled again, for the new codename, with signed-by=."""
    snapshot = reads.snapshot(node.name)
    target = releases.target
    evidence.text(f"{node.name}: apt sources", "\n\n".join(f"# {f.path}\n{f.text}" for f in snapshot.source_files))
    if not any(f.sources for f in snapshot.source_files):
        fail_check(f"found no apt source on {node.name} (looked in /etc/apt/sources.list and "
                   "/etc/apt/sources.list.d/*.list, *.sources): nothing to verify after the release upgrade",
                   fix="check /etc/apt on the node: a release upgrade leaves at least the Ubuntu archive's sources")
    problems = []
    for file in snapshot.source_files:
        for source in file.sources:
            if source.disabled_on_upgrade_to:
                problems.append(f"{file.path}: `{source.raw.strip()}` is still disabled on upgrade to "
                                f"{source.disabled_on_upgrade_to}")
                continue
            if not source.enabled or "/sources.list.d/" not in file.path:
                continue   # the Ubuntu archive's own entries are do-release-upgrade's to rewrite
            if target is not None and source.codename != target.codename:
                problems.append(f"{file.path}: {source.uri} points at {source.suite}, not {target.codename}")
            if not source.signed_by:
                problems.append(f"{file.path}: {source.uri} has no signed-by= (its key is in the legacy keyring)")
    if problems:
        fail_check(f"{len(problems)} apt source problem(s) on {node.name} after the release upgrade",
                   details=problems,
                   fix=f"re-enable the third-party sources for {target.codename if target else 'the new codename'} "
                       "with signed-by=/etc/apt/keyrings/<name>.gpg (procedure step 10), then `apt-get update`")
