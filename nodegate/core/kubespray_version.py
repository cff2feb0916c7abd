"""Which Kubespray release a checkout is, and how that was found out.

Operators run Kubespray from a git clone at a tag, a clone some commits past a tag, a
`release-2.x` branch (often a shallow clone without tags), a GitHub tarball (no `.git`; the
folder is named `kubespray-2.21.0`), or a submodule or worktree, where `.git` is a file naming
the real git directory. `galaxy.yml` is no help on its own: v2.20.0–v2.21.0 have none and some
releases carry an older version in it (nodegate.core.kubespray_release.GALAXY_LAGS).

`detect(checkout, override)` tries, in order, and says which way answered:
1. the profile's `[kubespray] version`;
2. git (only when the checkout has its own `.git`, directory or file; never a repository above
   it): a version tag on HEAD; else on a `release-2.x` branch whose history has no tag of that
   minor, the minor alone; else `git describe` (the nearest version tag and the commits since);
3. the files: the folder name GitHub's archives give, and `galaxy.yml` only where it agrees
   with the folder name or with the checkout's layout (its Ansible range), and never a value
   that other releases carry.
Anything else is unknown (None), and the preflight says so and names the profile override.
A minor-only answer ('v2.21') stands for its first patch release wherever versions are compared.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nodegate.core import kubespray_release as releases

GIT_TIMEOUT_S = 10.0
_TAG = re.compile(r"^v?\d+\.\d+\.\d+$")
_BRANCH = re.compile(r"^release-(\d+)\.(\d+)$")
_DESCRIBE = re.compile(r"^(v?\d+\.\d+\.\d+)-(\d+)-g([0-9a-f]+)$")
_ARCHIVE_FOLDER = re.compile(r"^kubespray-v?(\d+\.\d+\.\d+)$")
_GALAXY = re.compile(r"^version:\s*['\"]?([0-9][0-9A-Za-z.+-]*)['\"]?\s*$", re.M)


@dataclass(frozen=True)
class DetectedVersion:
    version: str | None      # 'v2.28.1', 'v2.21' (the minor only) or None (unknown)
    how: str                 # how it was found, for the preflight and the report

    @property
    def minor_only(self) -> bool:
        parsed = releases.parse(self.version)
        return parsed is not None and parsed[2] is None


def normalise(version: str | None) -> str | None:
    if not version or not version.strip():
        return None
    version = version.strip()
    return version if version.startswith("v") or not version[:1].isdigit() else f"v{version}"


def detect(checkout: Path, override: str | None = None) -> DetectedVersion:
    checkout = Path(checkout)
    if override:
        return DetectedVersion(normalise(override), "the profile's [kubespray] version")
    tried: list[str] = []
    if (checkout / ".git").exists():
        found = _from_git(checkout, tried)
        if found is not None:
            return found
    else:
        tried.append("no .git (not a git checkout)")
    found = _from_files(checkout, tried)
    if found is not None:
        return found
    return DetectedVersion(None, "unknown: " + "; ".join(tried))


# --------------------------------------------------------------------------- git

def _git(checkout: Path, *args: str) -> str | None:
    """One read-only git command in the checkout; None when it fails. Never a repository above
    the checkout (GIT_CEILING_DIRECTORIES), never the caller's GIT_DIR."""
    git = shutil.which("git")
    if git is None:
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_CEILING_DIRECTORIES"] = str(checkout.resolve().parent)
    try:
        done = subprocess.run([git, "-c", "safe.directory=*", "-C", str(checkout), *args], capture_output=True,
                              text=True, timeout=GIT_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _from_git(checkout: Path, tried: list[str]) -> DetectedVersion | None:
    kind = "a .git file (submodule or worktree)" if (checkout / ".git").is_file() else "git"
    if shutil.which("git") is None:
        tried.append("git is not installed, so the clone's tags cannot be read")
        return None
    head = _git(checkout, "rev-parse", "--verify", "-q", "HEAD")
    if head is None:
        tried.append(f"{kind}: no commit at HEAD could be read")
        return None
    tags = [t for t in (_git(checkout, "tag", "--points-at", "HEAD") or "").split() if _TAG.match(t)]
    if tags:
        best = max(tags, key=lambda t: releases.parse(t))
        return DetectedVersion(normalise(best), f"{kind}: tag {best} at HEAD")
    branch = _git(checkout, "symbolic-ref", "-q", "--short", "HEAD")
    described = _git(checkout, "describe", "--tags", "--long", "--match", "v[0-9]*")
    match = _DESCRIBE.match(described or "")
    minor = _BRANCH.match(branch or "")
    if minor and not (match and releases.parse(match.group(1))[:2] == (int(minor.group(1)), int(minor.group(2)))):
        version = f"v{minor.group(1)}.{minor.group(2)}"
        return DetectedVersion(version, f"{kind}: branch {branch}, so the {version} minor only (no {version}.x "
                                        "tag in this clone's history: the patch release is not known)")
    if match:
        tag, commits = match.group(1), int(match.group(2))
        return DetectedVersion(normalise(tag), f"{kind}: git describe {described} ({commits} commit(s) after tag {tag})")
    tried.append(f"{kind}: no version tag at or before HEAD" + (f" on branch {branch}" if branch else ""))
    return None


# --------------------------------------------------------------------------- files (tarballs)

def _galaxy_version(checkout: Path) -> str | None:
    try:
        match = _GALAXY.search((checkout / "galaxy.yml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    return match.group(1) if match else None


def _layout_agrees(checkout: Path, version: str) -> bool | None:
    """Does the checkout's Ansible range match the release's? None when either is not known."""
    facts = releases.release_facts(version)
    found = releases.ansible_range(checkout)
    if facts is None or found is None:
        return None
    return found == facts.ansible_core


def _from_files(checkout: Path, tried: list[str]) -> DetectedVersion | None:
    folder = _ARCHIVE_FOLDER.match(checkout.resolve().name)
    galaxy = _galaxy_version(checkout)
    if folder:
        named = normalise(folder.group(1))
        assert named is not None
        expected = releases.galaxy_says(named) if releases.release_facts(named) else galaxy
        if galaxy is not None and galaxy != expected:
            tried.append(f"the folder name says {named} but galaxy.yml says {galaxy}, which {named} does not carry")
            return None
        if _layout_agrees(checkout, named) is False:
            tried.append(f"the folder name says {named} but the checkout's ansible_version.yml range is not {named}'s")
            return None
        also = f"; galaxy.yml says {galaxy}, as {named}'s does" if galaxy else ""
        return DetectedVersion(named, f"the folder name {checkout.resolve().name} (a release archive){also}")
    if galaxy is None:
        tried.append("no galaxy.yml (v2.20.0-v2.21.0 have none) and no release folder name")
        return None
    if galaxy in releases.GALAXY_LAGS:
        carriers = releases.GALAXY_LAGS[galaxy]
        minors = {releases.parse(c)[:2] for c in carriers}
        if len(minors) == 1:
            major, minor = minors.pop()
            version = f"v{major}.{minor}"
            return DetectedVersion(version, f"galaxy.yml says {galaxy}, which {' and '.join(carriers)} carry (it lags "
                                            f"their tag), so the {version} minor only")
        tried.append(f"galaxy.yml says {galaxy}, which several releases carry")
        return None
    version = normalise(galaxy)
    assert version is not None
    agrees = _layout_agrees(checkout, version)
    if agrees is False:
        tried.append(f"galaxy.yml says {galaxy} but the checkout's ansible_version.yml range is not {version}'s")
        return None
    if agrees is None:
        tried.append(f"galaxy.yml says {galaxy} but nothing in the checkout confirms it (no ansible_version.yml "
                     "range known for it)")
        return None
    return DetectedVersion(version, f"galaxy.yml {galaxy}, matching the checkout's ansible_version.yml range")
