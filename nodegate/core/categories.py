"""Report categories: what a reviewer sorts failures by, and what to do about each.

A failure raised as a typed error (``NodegateError.category``: NodeDidNotComeBack, LockHeld,
DrainError, DrainBlocked) is filed under its class's category; any other failure (a check's
assertion) by its message, with the same regexes Allure applies from categories.json.
"""
from __future__ import annotations

import re
from typing import Any

# The label a result carries when its failure was a typed error with a category.
ERROR_CATEGORY_LABEL = "failure_category"

# Failure classes a reviewer sorts by, first match wins (Allure 3 and the ticket summary both take
# the first). The regexes are written in the common subset of Java, JavaScript and Python syntax
# ([\s\S] instead of (?s), no inline flags) because Allure 2 reads them with java.util.regex and
# Allure 3 with JavaScript's RegExp; messages written by checks and steps carry these words.
# A failed or broken result whose message matches: category name -> regex.
_MESSAGE_RULES: dict[str, str] = {
    "Blocked by a PodDisruptionBudget":
        r"[\s\S]*(disruption budget|PodDisruptionBudget|blocked by PDB|\bPDB\b)[\s\S]*",
    "Kubespray known issue":
        r"[\s\S]*(Kubespray known issue|[Kk]ubespray #\d+|loop_control\.label|"
        r"Packages were downgraded|Held packages were changed)[\s\S]*",
    "Held-package drift":
        r"[\s\S]*([Hh]eld[ -]package|not held|no longer held|hold drift|apt-mark hold|held at)[\s\S]*",
    "Legacy apt keyring":
        r"[\s\S]*(legacy trusted\.gpg|[Ll]egacy (apt )?keyring|/etc/apt/trusted\.gpg)[\s\S]*",
    "CSI crash-loop":
        r"[\s\S]*(csi-rbdplugin|csi\.sock|CrashLoopBackOff|cephcsi)[\s\S]*",
    "Node did not come back":
        r"[\s\S]*(did not come back|not Ready within|out-of-band|did not boot|hangs? on reboot|"
        r"never came back|still down)[\s\S]*",
    "Storage unhealthy":
        r"[\s\S]*(HEALTH_WARN|HEALTH_ERR|[Cc]eph|\bOSDs?\b|placement group|\bPGs?\b|noout)[\s\S]*",
    "Another upgrade holds the lock":
        r"[\s\S]*([Ll]ock|Lease)[\s\S]*(held|holds|taken)[\s\S]*",
    "Release upgrade refused":
        r"[\s\S]*(do-release-upgrade|Please install all available updates|reboot before upgrading)[\s\S]*",
    "Unsupported versions":
        r"[\s\S]*(not supported|unsupported|end of life|\bEOL\b)[\s\S]*",
}
CATEGORIES: list[dict[str, Any]] = [
    *({"name": name, "matchedStatuses": ["failed", "broken"], "messageRegex": regex}
      for name, regex in _MESSAGE_RULES.items()),
    {"name": "Node not ready for the change", "matchedStatuses": ["failed"], "messageRegex": r"[\s\S]*"},
    {"name": "Harness or lab error", "matchedStatuses": ["broken"], "messageRegex": r"[\s\S]*"},
]

# What to do about each class, for the ticket summary when the failure message names no fix itself.
CATEGORY_FIXES = {
    "Blocked by a PodDisruptionBudget": "scale the workload or relax its PodDisruptionBudget, then run again "
                                        "(the node stays cordoned until the drain finishes)",
    "Kubespray known issue": "see the known issue named in the message (nodegate.core.knowledge) and its fix",
    "Held-package drift": "hold the container packages again (`apt-mark hold containerd.io docker-ce docker-ce-cli`) "
                          "at the versions Kubespray expects",
    "Legacy apt keyring": "move the repository key into a keyring file of its own in /etc/apt/trusted.gpg.d/ "
                          "(procedure steps 10 and 11 do this) and delete /etc/apt/trusted.gpg",
    "CSI crash-loop": "upgrade Rook/cephcsi to a version that supports the target release before continuing",
    "Node did not come back": "reach the node out-of-band (BMC console), boot it, then resume the procedure",
    "Storage unhealthy": "wait for `ceph status` to be HEALTH_OK with all OSDs up and in before the next node",
    "Another upgrade holds the lock": "wait for the other upgrade to finish, or take over a stale lock with "
                                      "--take-over-stale-lock",
    "Release upgrade refused": "install the pending updates and reboot as the message says, then run again",
    "Unsupported versions": "upgrade the component named in the message before the node's release",
}


def classify(status: str, message: str, *, error_category: str | None = None) -> str | None:
    """The failure class of a result: the category its error type names (``NodegateError.category``,
    recorded as the result's ``failure_category`` label), else by the same rules as categories.json
    (first match wins)."""
    if error_category and status in ("failed", "broken"):
        return error_category
    for category in CATEGORIES:
        if status in category["matchedStatuses"] and re.search(category["messageRegex"], message or ""):
            return category["name"]
    return None
