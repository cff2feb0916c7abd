"""apt: what `apt-get update` says (read from its text: it exits 0 even with NO_PUBKEY) and the sources."""
from __future__ import annotations

import pytest

from nodegate.plugin.fixtures import fail_check

KEYRING_FIX = ("move the repository key out of /etc/apt/trusted.gpg into a keyring file of its own, "
               "/etc/apt/trusted.gpg.d/<name>.gpg (where Kubespray's apt_key finds it and apt reads it for the "
               "source), then delete /etc/apt/trusted.gpg")


@pytest.mark.preflight
@pytest.mark.postflight
def test_apt_update_clean(node, reads, phase, notice, evidence):
    update = reads.apt_update(node.name)
    report = update.report
    evidence.command(update.result)
    conflict = [e for e in report.errors if "Conflicting values set for option Signed-By" in e]
    if conflict:
        fail_check(f"apt on {node.name} refuses its sources: two entries of one source name different Signed-By "
                   "keyrings", details=conflict[:5],
                   fix="keep one entry per source (Kubespray's apt_repository adds its own line beside a repaired "
                       "one); procedure steps 10 and 11 leave Kubespray's line with the key in "
                       "/etc/apt/trusted.gpg.d/<name>.gpg")
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
            notice(f"{text}. Known and not blocking: the procedure moves the key to /etc/apt/trusted.gpg.d "
                   "in step 10, after the release upgrade")
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
    """The release upgrade disables third-party sources: to jammy it comments them out (`# disabled
    on upgrade to jammy`), to noble it moves them to deb822 with `Enabled: no`. After the procedure
    each is enabled on the new codename, once, as a one-line entry Kubespray's docker role leaves
    alone; no two entries of one source disagree on Signed-By. Ubuntu's own sources are the
    upgrader's and are not judged here (apt-get update judges them)."""
    from nodegate.core import aptrepair

    snapshot = reads.snapshot(node.name)
    target = releases.target
    evidence.text(f"{node.name}: apt sources", "\n\n".join(f"# {f.path}\n{f.text}" for f in snapshot.source_files))
    if target is None:
        fail_check(f"no target release to judge the apt sources of {node.name} against",
                   fix="pass --target-release")
    files = {f.path: f.text for f in snapshot.source_files if f.path.endswith((".list", ".sources"))}
    if not files:
        fail_check(f"no apt source file found on {node.name} under /etc/apt/sources.list(.d)",
                   fix="look at the node's apt configuration: a node with no sources cannot be upgraded or repaired")
    problems = aptrepair.end_state_problems(files, target.codename)
    if problems:
        fail_check(f"{len(problems)} apt source problem(s) on {node.name} after the release upgrade",
                   details=problems,
                   fix=f"re-enable the third-party sources on {target.codename} as one-line entries, their keys in "
                       "/etc/apt/trusted.gpg.d/<name>.gpg (procedure step 10 does this, and again after Kubespray "
                       "in step 11), then `apt-get update`")
