"""What nodegate knows about versions, support matrices and known issues: pure data and small functions.

Each fact carries where it was read upstream (a file at a tag, a release note, an issue). To teach nodegate something
new, add a row to one of the tables below; the checks and procedures read only these functions.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

# --------------------------------------------------------------------------- version comparison


def semver_key(version: str) -> tuple:
    """Sort key for 'v3.12.3', '1.25.6', 'v2.25.1-rc.1', 'release-2.25' (missing parts are 0;
    a pre-release sorts before its release)."""
    text = str(version).strip().lower()
    text = re.sub(r"^(release-|v)", "", text)
    main, _, pre = text.partition("-")
    numbers = []
    for part in main.split(".")[:4]:
        digits = re.match(r"\d+", part)
        numbers.append(int(digits.group()) if digits else 0)
    while len(numbers) < 3:
        numbers.append(0)
    # (1,) sorts after any (0, pre-release) so 1.2.3 > 1.2.3-rc.1
    return (*numbers, (1,) if not pre else (0, pre))


def compare_semver(a: str, b: str) -> int:
    ka, kb = semver_key(a), semver_key(b)
    return (ka > kb) - (ka < kb)


def minor_of(version: str) -> str:
    """'v1.25.6' -> '1.25'."""
    major, minor, *_ = semver_key(version)
    return f"{major}.{minor}"


def _isdigit(char: str) -> bool:
    return "0" <= char <= "9"


def _order(char: str) -> int:
    # dpkg's lib/dpkg/version.c order(): digits 0, letters their code, '~' before everything
    # (even the end of the string), other characters after letters
    if _isdigit(char):
        return 0
    if "a" <= char <= "z" or "A" <= char <= "Z":
        return ord(char)
    if char == "~":
        return -1
    if char:
        return ord(char) + 256
    return 0


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not _isdigit(a[i])) or (j < len(b) and not _isdigit(b[j])):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and _isdigit(a[i]) and j < len(b) and _isdigit(b[j]):
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and _isdigit(a[i]):
            return 1
        if j < len(b) and _isdigit(b[j]):
            return -1
        if first_diff:
            return first_diff
    return 0


def _split_debian(version: str) -> tuple[int, str, str]:
    version = version.strip()
    epoch = 0
    if ":" in version:
        head, rest = version.split(":", 1)
        if head.isdigit():
            epoch, version = int(head), rest
    upstream, sep, revision = version.rpartition("-")
    if not sep:
        upstream, revision = version, ""
    return epoch, upstream, revision


def compare_debian_versions(a: str, b: str) -> int:
    """dpkg's ordering (epoch, upstream, revision; '~' sorts first): <0, 0 or >0 like
    `dpkg --compare-versions a lt/eq/gt b`. Checked against dpkg itself in the tests."""
    ea, ua, ra = _split_debian(a)
    eb, ub, rb = _split_debian(b)
    if ea != eb:
        return -1 if ea < eb else 1
    result = _verrevcmp(ua, ub) or _verrevcmp(ra, rb)
    return (result > 0) - (result < 0)


def same_upstream_build(installed: str, expected: str) -> bool:
    """True when two Debian versions differ only in a release-codename build suffix, e.g.
    '5:20.10.20~3-0~ubuntu-focal' and '5:20.10.20~3-0~ubuntu-jammy' (the same docker release
    rebuilt for the next Ubuntu), or are equal."""
    strip = lambda v: re.sub(r"~?(ubuntu|debian)[-.]?[a-z]+$", "", v.strip())  # noqa: E731
    return installed.strip() == expected.strip() or strip(installed) == strip(expected)


# --------------------------------------------------------------------------- Ubuntu releases

@dataclass(frozen=True)
class UbuntuRelease:
    version: str      # '22.04'
    codename: str     # 'jammy'
    name: str         # 'Jammy Jellyfish'


UBUNTU_RELEASES = (
    UbuntuRelease("20.04", "focal", "Focal Fossa"),
    UbuntuRelease("22.04", "jammy", "Jammy Jellyfish"),
    UbuntuRelease("24.04", "noble", "Noble Numbat"),
)
TARGET_RELEASES = tuple(r.version for r in UBUNTU_RELEASES[1:])   # what --target-release accepts


def ubuntu_release(version_or_codename: str) -> UbuntuRelease | None:
    key = str(version_or_codename).strip().lower()
    for release in UBUNTU_RELEASES:
        if key in (release.version, release.codename):
            return release
    return None


def codename(version: str) -> str | None:
    release = ubuntu_release(version)
    return release.codename if release else None


def next_release(version_or_codename: str) -> UbuntuRelease | None:
    """The LTS release do-release-upgrade moves to (20.04 → 22.04 → 24.04), None at the end."""
    release = ubuntu_release(version_or_codename)
    if release is None:
        return None
    index = UBUNTU_RELEASES.index(release)
    return UBUNTU_RELEASES[index + 1] if index + 1 < len(UBUNTU_RELEASES) else None


# --------------------------------------------------------------------------- Kubespray and Ubuntu

@dataclass(frozen=True)
class VersionRange:
    """[since, until): `since` None = from the oldest version known, `until` None = still so."""
    since: str | None = None
    until: str | None = None

    def contains(self, version: str) -> bool:
        key = semver_key(version)
        return ((self.since is None or key >= semver_key(self.since))
                and (self.until is None or key < semver_key(self.until)))

    def describe(self) -> str:
        if self.since and self.until:
            return f"{self.since} up to (not including) {self.until}"
        if self.since:
            return f"{self.since} and later"
        if self.until:
            return f"before {self.until}"
        return "all versions"


@dataclass(frozen=True)
class KubespraySupport:
    ubuntu: str
    versions: VersionRange
    source: str


# kubernetes-sigs/kubespray README.md at tags. 20.04's first listing
# predates every version nodegate knows, so its range has no lower bound.
KUBESPRAY_UBUNTU_SUPPORT = (
    KubespraySupport("20.04", VersionRange(None, "v2.29.0"), "dropped in v2.29.0 (kubespray #12301)"),
    KubespraySupport("22.04", VersionRange("v2.20.0", None), "first listed in v2.20.0 (2022-09-26)"),
    KubespraySupport("24.04", VersionRange("v2.25.1", None),
                     "first listed in v2.25.1 (backport #11333) and v2.26.0 (#11231)"),
)


def kubespray_supports(kubespray_version: str, ubuntu: str) -> bool | None:
    """Whether a Kubespray version lists an Ubuntu release; None if nodegate does not know the release."""
    for row in KUBESPRAY_UBUNTU_SUPPORT:
        if row.ubuntu == ubuntu:
            return row.versions.contains(kubespray_version)
    return None


def kubespray_support_note(ubuntu: str) -> str:
    for row in KUBESPRAY_UBUNTU_SUPPORT:
        if row.ubuntu == ubuntu:
            return f"Kubespray supports Ubuntu {ubuntu} in versions {row.versions.describe()} ({row.source})"
    return f"nodegate has no Kubespray support data for Ubuntu {ubuntu}"


# --------------------------------------------------------------------------- known issues

@dataclass(frozen=True)
class KnownIssue:
    key: str
    title: str
    references: tuple[str, ...]
    affected: tuple[VersionRange, ...]   # Kubespray (or other component) versions with the issue
    symptom: str                          # regex searched in the failing output
    fix: str
    component: str = "kubespray"

    def affects(self, version: str | None) -> bool:
        return version is not None and any(r.contains(version) for r in self.affected)

    def matches(self, text: str) -> bool:
        return re.search(self.symptom, text) is not None


KUBESPRAY_MULTUS = KnownIssue(
    key="kubespray-multus-limit",
    title="upgrade-cluster.yml with --limit fails in the multus role templating loop_control.label",
    references=("kubespray #9703 (fixed by PR #10347 in v2.23.0)", "kubespray #10305", "kubespray #11431 (release-2.25)",
                "kubespray #11794 (v2.26)"),
    affected=(VersionRange(None, "v2.23.0"), VersionRange("v2.25.0", "v2.27.0")),
    # ansible-core < 2.19 says "'None' has no attribute 'item'", 2.19 "object of type 'NoneType' has …"
    symptom=r"Failed to template loop_control\.label: .*has no attribute '?item'?",
    fix="run the playbook with --skip-tags=multus (nodegate adds it for affected versions), "
        "or move to a Kubespray version with PR #10347",
)

KUBESPRAY_DOCKER_DOWNGRADE = KnownIssue(
    key="kubespray-docker-downgrade",
    title="re-running Kubespray tries to downgrade docker/containerd packages and apt refuses",
    references=("kubespray #9114", "related #4819, #6994, #7276 (fixed by #7273)"),
    affected=(VersionRange(None, None),),
    symptom=r"Packages were downgraded and -y was used without --allow-downgrades",
    fix="add `force: true` (or `allow_downgrade: true`) to the docker package install task in "
        "roles/container-engine/docker/tasks/main.yml of the Kubespray checkout, then run again",
)

KUBESPRAY_HELD_CHANGED = KnownIssue(
    key="kubespray-held-packages-changed",
    title="Kubespray's package task changes a package that is still held",
    references=("kubespray #8200",),
    affected=(VersionRange(None, None),),
    symptom=r"Held packages were changed and -y was used without --allow-change-held-packages",
    fix="unhold the packages first (`apt-mark unhold containerd.io docker-ce docker-ce-cli`), run Kubespray, "
        "and hold them again afterwards (nodegate's procedure does this in steps 5 and 12)",
)

CEPHCSI_RBD_NOBLE = KnownIssue(
    key="cephcsi-rbd-ko-zst",
    title="csi-rbdplugin crash-loops on Ubuntu 24.04: the container's kmod cannot load rbd.ko.zst",
    references=("rook #14431", "rook #14507", "ceph-csi #4679"),
    affected=(VersionRange(None, "v3.12.0"),),
    symptom=r"Still connecting to unix:///csi/csi\.sock",
    fix="move to cephcsi >= v3.12.0 (Rook >= v1.15 with its default images) before any node reaches 24.04; "
        "workaround: `modprobe rbd` on every node and persist it in /etc/modules-load.d/",
    component="cephcsi",
)

KNOWN_ISSUES = (KUBESPRAY_MULTUS, KUBESPRAY_DOCKER_DOWNGRADE, KUBESPRAY_HELD_CHANGED, CEPHCSI_RBD_NOBLE)
CSI_SOCKET_SYMPTOM = "Still connecting to unix:///csi/csi.sock"


def recognise_kubespray_failure(text: str) -> KnownIssue | None:
    """The known Kubespray issue whose symptom appears in a playbook's output, or None."""
    for issue in KNOWN_ISSUES:
        if issue.component == "kubespray" and issue.matches(text):
            return issue
    return None


def known_issues_for(kubespray_version: str | None) -> tuple[KnownIssue, ...]:
    return tuple(i for i in KNOWN_ISSUES if i.component == "kubespray" and i.affects(kubespray_version))


def needs_skip_multus(kubespray_version: str | None) -> bool:
    """Add --skip-tags=multus for checkouts with the multus --limit bug (and when the version is unknown:
    skipping multus on a single-node limit run is harmless, failing in it is not)."""
    return kubespray_version is None or KUBESPRAY_MULTUS.affects(kubespray_version)


# --------------------------------------------------------------------------- Rook and cephcsi

# Rook's default cephcsi image per Rook release (rook pkg/operator/ceph/csi/spec.go at tags)
ROOK_DEFAULT_CEPHCSI = {"v1.14.8": "v3.11.0", "v1.14.12": "v3.11.0", "v1.15.0": "v3.12.0", "v1.15.9": "v3.12.3"}
CEPHCSI_MIN_FOR_NOBLE = "v3.12.0"
ROOK_MIN_FOR_NOBLE = "v1.15.0"


def cephcsi_for_rook(rook_version: str) -> str | None:
    """Rook's default cephcsi: exact when known, else that of the nearest older known patch of the
    same minor (defaults only move forward within a minor), else None."""
    if rook_version in ROOK_DEFAULT_CEPHCSI:
        return ROOK_DEFAULT_CEPHCSI[rook_version]
    same_minor = [r for r in ROOK_DEFAULT_CEPHCSI if minor_of(r) == minor_of(rook_version)
                  and semver_key(r) <= semver_key(rook_version)]
    return ROOK_DEFAULT_CEPHCSI[max(same_minor, key=semver_key)] if same_minor else None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    fix: str = ""


def cephcsi_ready_for(target_ubuntu: str, cephcsi_version: str | None) -> Verdict:
    """Before any node reaches 24.04, cephcsi must be >= v3.12 (rook #14431 #14507, ceph-csi #4679)."""
    if target_ubuntu != "24.04":
        return Verdict(True, f"no cephcsi minimum is known for Ubuntu {target_ubuntu}")
    if not cephcsi_version:
        return Verdict(False, "the cephcsi version in the cluster could not be read",
                       fix=f"check the csi-rbdplugin image; Ubuntu 24.04 needs cephcsi >= {CEPHCSI_MIN_FOR_NOBLE}")
    if semver_key(cephcsi_version) >= semver_key(CEPHCSI_MIN_FOR_NOBLE):
        return Verdict(True, f"cephcsi {cephcsi_version} >= {CEPHCSI_MIN_FOR_NOBLE}")
    return Verdict(False, f"cephcsi {cephcsi_version} crash-loops on Ubuntu 24.04 (rbd.ko.zst; "
                          f"{', '.join(CEPHCSI_RBD_NOBLE.references)}); {CEPHCSI_MIN_FOR_NOBLE} or newer is needed",
                   fix=f"upgrade Rook to {ROOK_MIN_FOR_NOBLE} or newer (default cephcsi "
                       f"{ROOK_DEFAULT_CEPHCSI['v1.15.0']}; v1.15.9 ships {ROOK_DEFAULT_CEPHCSI['v1.15.9']}) "
                       "before upgrading any node to 24.04")


# --------------------------------------------------------------------------- Kubernetes end of life

# End of maintenance per minor (endoflife.date/kubernetes; ~14 months after release)
KUBERNETES_EOL = {
    "1.22": _dt.date(2022, 10, 28), "1.23": _dt.date(2023, 2, 28), "1.24": _dt.date(2023, 7, 28),
    "1.25": _dt.date(2023, 10, 27), "1.26": _dt.date(2024, 2, 28), "1.27": _dt.date(2024, 6, 28),
    "1.28": _dt.date(2024, 10, 28), "1.29": _dt.date(2025, 2, 28), "1.30": _dt.date(2025, 6, 28),
    "1.31": _dt.date(2025, 10, 28), "1.32": _dt.date(2026, 2, 28), "1.33": _dt.date(2026, 6, 28),
}


def kube_minor_eol_date(version: str) -> _dt.date | None:
    return KUBERNETES_EOL.get(minor_of(version))


def kube_minor_eol(version: str, today: _dt.date | None = None) -> bool:
    """True when the Kubernetes minor of `version` is past its end of life on `today`.
    Minors older than the table are EOL; newer ones are taken as supported."""
    today = today or _dt.date.today()
    date = kube_minor_eol_date(version)
    if date is not None:
        return today > date
    oldest = min(KUBERNETES_EOL, key=semver_key)
    return semver_key(version) < semver_key(oldest)


# --------------------------------------------------------------------------- docker/containerd packages

@dataclass(frozen=True)
class PackagePins:
    """Kubespray's docker_version / containerd version → Ubuntu package versions ('{codename}' = release)."""
    kubespray: VersionRange
    docker: dict
    containerd: dict
    default_docker: str
    default_containerd: str


# Kubespray v2.21's roles/container-engine/docker/vars/ubuntu.yml and defaults, used only when the
# checkout in the profile has no such file.
KUBESPRAY_DOCKER_PINS = (
    PackagePins(kubespray=VersionRange("v2.21.0", "v2.22.0"),
                docker={"20.10": "5:20.10.20~3-0~ubuntu-{codename}", "19.03": "5:19.03.15~3-0~ubuntu-{codename}",
                        "18.09": "5:18.09.9~3-0~ubuntu-{codename}"},
                containerd={"1.6.4": "1.6.4-1", "1.4.12": "1.4.12-1", "1.4.9": "1.4.9-1"},
                default_docker="20.10", default_containerd="1.6.4"),
)


def docker_package_versions(kubespray_version: str | None, *, docker_version: str | None = None,
                            containerd_version: str | None = None) -> dict[str, str]:
    """Expected containerd.io / docker-ce / docker-ce-cli versions; {} when nodegate has no table."""
    pins = next((p for p in KUBESPRAY_DOCKER_PINS if kubespray_version and p.kubespray.contains(kubespray_version)),
                KUBESPRAY_DOCKER_PINS[0] if kubespray_version is None else None)
    if pins is None:
        return {}
    result = {}
    containerd = pins.containerd.get(containerd_version or pins.default_containerd)
    if containerd:
        result["containerd.io"] = containerd
    docker = pins.docker.get(docker_version or pins.default_docker)
    if docker:
        result["docker-ce"] = docker
        result["docker-ce-cli"] = docker
    return result
