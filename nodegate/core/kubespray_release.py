"""What each Kubespray release looks like from outside, keyed by its version (pure facts and logic).

Every row was read in kubernetes-sigs/kubespray at the tags named (field-facts.md, "Real clusters
against the lab"; checked with `git show <tag>:<path>` on the upstream repository):

- the facts playbook: `facts.yml` at the top of the checkout in v2.20.0–v2.21.0, then
  `playbooks/facts.yml` (v2.22.0 moved the playbooks into playbooks/); the Ansible range check
  moved the same way (`ansible_version.yml` → `playbooks/ansible_version.yml`);
- the Ansible range each release asserts (minimal ≤ ansible-core < maximal);
- the defaults role: `roles/kubespray-defaults` until v2.27.x; from v2.28.0 `roles/kubespray_defaults`
  (the old name stays as a shim that only imports the new role); its defaults are one
  `defaults/main.yaml` until v2.23.x and a `defaults/main/` folder from v2.24.0;
- `kube_version`: written with a leading `v` until v2.27.x; from v2.28.0 without it
  (`roles/validate_inventory` asserts `not kube_version.startswith('v')`), and its default is a
  template over the kubelet checksums;
- `galaxy.yml`: absent in v2.20.0–v2.21.0; in v2.22.0/v2.22.1 it says 2.21.0 and in
  v2.23.0/v2.23.1 it says 2.22.1 (it lags the tag); from v2.22.2/v2.23.2 on it says the tag.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?$")


def parse(version: str | None) -> tuple[int, int, int | None] | None:
    """'v2.28.1' → (2, 28, 1); 'v2.28' (a minor only) → (2, 28, None); anything else None."""
    match = _VERSION.match((version or "").strip())
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), None if match.group(3) is None else int(match.group(3))


@dataclass(frozen=True)
class ReleaseFacts:
    """The observable layout of the Kubespray releases from `first` up to the next row."""
    first: str                        # the first release (minor) this row describes, e.g. 'v2.28'
    facts_playbook: str               # relative to the checkout
    ansible_version_file: str
    ansible_core: tuple[str, str]     # minimal <= ansible-core < maximal
    defaults_role: str                # roles/<this>
    defaults_split: bool              # defaults/main/ folder (True) or defaults/main.yaml
    kube_version_with_v: bool         # 'v1.25.6' (True) or '1.32.5' (False)

    def kube_version_example(self) -> str:
        return "v1.25.6" if self.kube_version_with_v else "1.32.5"


RELEASES = (
    ReleaseFacts("v2.20", "facts.yml", "ansible_version.yml", ("2.11.0", "2.13.0"), "kubespray-defaults", False, True),
    ReleaseFacts("v2.22", "playbooks/facts.yml", "playbooks/ansible_version.yml", ("2.11.0", "2.13.0"),
                 "kubespray-defaults", False, True),
    ReleaseFacts("v2.23", "playbooks/facts.yml", "playbooks/ansible_version.yml", ("2.14.0", "2.15.0"),
                 "kubespray-defaults", False, True),
    ReleaseFacts("v2.24", "playbooks/facts.yml", "playbooks/ansible_version.yml", ("2.15.5", "2.17.0"),
                 "kubespray-defaults", True, True),
    ReleaseFacts("v2.25", "playbooks/facts.yml", "playbooks/ansible_version.yml", ("2.16.4", "2.17.0"),
                 "kubespray-defaults", True, True),
    ReleaseFacts("v2.28", "playbooks/facts.yml", "playbooks/ansible_version.yml", ("2.16.4", "2.17.0"),
                 "kubespray_defaults", True, False),
    ReleaseFacts("v2.29", "playbooks/facts.yml", "playbooks/ansible_version.yml", ("2.17.3", "2.18.0"),
                 "kubespray_defaults", True, False),
    ReleaseFacts("v2.31", "playbooks/facts.yml", "playbooks/ansible_version.yml", ("2.18.0", "2.19.0"),
                 "kubespray_defaults", True, False),
)
OLDEST_KNOWN = "v2.20"
NEWEST_KNOWN = "v2.31.0"

# galaxy.yml versions that other releases carry: the value -> the releases that say it.
GALAXY_LAGS: dict[str, tuple[str, ...]] = {
    "2.21.0": ("v2.22.0", "v2.22.1"),
    "2.22.1": ("v2.23.0", "v2.23.1"),
}
FIRST_WITH_GALAXY = (2, 22)


def release_facts(version: str | None) -> ReleaseFacts | None:
    """The layout of the release `version` (a full version or a minor), None outside v2.20 onwards."""
    parsed = parse(version)
    if parsed is None or parsed[:2] < parse(OLDEST_KNOWN)[:2]:
        return None
    found = None
    for row in RELEASES:
        if parse(row.first)[:2] <= parsed[:2]:
            found = row
    return found


def has_galaxy(version: str) -> bool:
    parsed = parse(version)
    return parsed is not None and parsed[:2] >= FIRST_WITH_GALAXY


def galaxy_says(version: str) -> str | None:
    """What galaxy.yml says at release `version` (None: the release has no galaxy.yml)."""
    if not has_galaxy(version):
        return None
    for value, releases in GALAXY_LAGS.items():
        if version in releases:
            return value
    return version.lstrip("v")


# --------------------------------------------------------------------------- kube_version

_KUBE = re.compile(r"^(v?)(\d+\.\d+\.\d+)$")


def kube_version_problem(kube_version: str, kubespray_version: str | None) -> str | None:
    """None when `kube_version` has the form the Kubespray release expects, else why not."""
    match = _KUBE.match(kube_version or "")
    facts = release_facts(kubespray_version)
    if not match:
        example = facts.kube_version_example() if facts else "v1.25.6 (1.32.5 from Kubespray v2.28.0)"
        return f"kube_version {kube_version!r} is not a Kubernetes version like {example}"
    if facts is None:
        return None      # an unknown release: the inventory's form is passed back as written
    if facts.kube_version_with_v and not match.group(1):
        return (f"kube_version {kube_version!r} has no leading 'v', but Kubespray {kubespray_version} writes it with "
                f"one (like {facts.kube_version_example()})")
    if not facts.kube_version_with_v and match.group(1):
        return (f"kube_version {kube_version!r} has a leading 'v', but Kubespray {kubespray_version} (v2.28.0 and "
                f"later) refuses it in roles/validate_inventory (like {facts.kube_version_example()})")
    return None


def same_kube_version(a: str | None, b: str | None) -> bool:
    """'v1.25.6' and '1.25.6' name the same Kubernetes release (the API reports the 'v' form)."""
    if not a or not b:
        return False
    return a.strip().removeprefix("v") == b.strip().removeprefix("v")


# --------------------------------------------------------------------------- the checkout's files

def defaults_role_dirs(checkout: Path) -> list[Path]:
    """The defaults role folders present, the current name first (v2.28+ keeps the old one as a shim)."""
    return [d for d in (checkout / "roles" / "kubespray_defaults", checkout / "roles" / "kubespray-defaults")
            if d.is_dir()]


def defaults_files(checkout: Path) -> list[Path]:
    """The defaults role's defaults files (main.yaml, or the defaults/main/ folder from v2.24.0)."""
    files: list[Path] = []
    for role in reversed(defaults_role_dirs(checkout)):   # the shim first, so the real role wins
        base = role / "defaults"
        files += [base / name for name in ("main.yaml", "main.yml") if (base / name).is_file()]
        if (base / "main").is_dir():
            files += sorted(p for p in (base / "main").iterdir() if p.suffix in (".yml", ".yaml") and p.is_file())
    return files


def facts_playbook(checkout: Path, kubespray_version: str | None) -> str | None:
    """The facts playbook of the checkout (relative path): where its release keeps it, else
    whichever of the two known places holds one; None when neither does."""
    facts = release_facts(kubespray_version)
    places = [facts.facts_playbook] if facts else []
    places += [p for p in ("playbooks/facts.yml", "facts.yml") if p not in places]
    return next((p for p in places if (checkout / p).is_file()), None)


_RANGE = re.compile(r"^\s*(minimal|maximal)_ansible_version:\s*['\"]?([0-9][0-9.]*)", re.M)


def ansible_range(checkout: Path) -> tuple[str, str] | None:
    """(minimal, maximal) from the checkout's ansible_version.yml (either place), None if unreadable."""
    for place in ("playbooks/ansible_version.yml", "ansible_version.yml"):
        try:
            text = (checkout / place).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        found = dict(_RANGE.findall(text))
        if "minimal" in found and "maximal" in found:
            return found["minimal"], found["maximal"]
    return None


def checksum_default_kube_version(checkout: Path) -> str | None:
    """v2.28.0+: the defaults role sets kube_version to a template naming the first version listed
    under kubelet_checksums.amd64 (vars/main/checksums.yml, newest first). That version, or None."""
    import yaml

    for role in defaults_role_dirs(checkout):
        path = role / "vars" / "main" / "checksums.yml"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        table = (data or {}).get("kubelet_checksums", {}) if isinstance(data, dict) else {}
        amd64 = table.get("amd64") if isinstance(table, dict) else None
        if isinstance(amd64, dict) and amd64:
            first = str(next(iter(amd64)))
            return first if _KUBE.match(first) else None
    return None
