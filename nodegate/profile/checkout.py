"""Facts read from the Kubespray checkout: its version (git tag), the defaults role and group_vars,
and the package versions it pins.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from nodegate.core.errors import UsageError
from nodegate.profile.inventory import CLUSTER_GROUPS, Inventory, _plain, _safe_vars
from nodegate.profile.model import PACKAGE_PATTERN, KubesprayCheckout


def _read_yaml_vars(path: Path) -> dict[str, str]:
    """Safe vars of one group_vars/defaults file; an unreadable file is a UsageError naming it."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        raise UsageError(f"{path} cannot be read", fix="make it readable by this user") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path} is not valid YAML{where}: {exc.problem or exc.context}",
                         fix="correct the YAML at that line") from None
    except (yaml.YAMLError, RecursionError):
        raise UsageError(f"{path} is not valid YAML", fix="correct the YAML") from None
    return _safe_vars(data) if isinstance(data, dict) else {}


def _group_var_files(inventory_dir: Path, group: str) -> list[Path]:
    base = inventory_dir / "group_vars"
    files = [base / f"{group}{ext}" for ext in (".yml", ".yaml", "")]
    files = [f for f in files if f.is_file()]
    folder = base / group
    if folder.is_dir():
        files += sorted(p for p in folder.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file())
    return files


def _role_default_files(checkout: Path) -> list[Path]:
    roles = checkout / "roles"
    candidates = [roles / "kubespray-defaults" / "defaults" / "main.yaml",
                  roles / "kubespray-defaults" / "defaults" / "main.yml",
                  roles / "container-engine" / "containerd-common" / "defaults" / "main.yml",
                  roles / "container-engine" / "docker" / "defaults" / "main.yml"]
    folder = roles / "kubespray-defaults" / "defaults" / "main"   # newer Kubespray splits it
    if folder.is_dir():
        candidates += sorted(folder.glob("*.yml")) + sorted(folder.glob("*.yaml"))
    return [c for c in candidates if c.is_file()]


def _cluster_vars(kubespray: KubesprayCheckout, inventory: Inventory) -> dict[str, str]:
    """Vars as Kubespray would see them for the cluster: role defaults < group_vars/all <
    group_vars/k8s_cluster < inventory vars. Templates referring to other vars are resolved
    one plain level ('{{ docker_version }}')."""
    merged: dict[str, str] = {}
    for path in _role_default_files(kubespray.path):
        merged.update(_read_yaml_vars(path))
    for group in ("all",) + CLUSTER_GROUPS:
        for path in _group_var_files(kubespray.inventory_dir, group):
            merged.update(_read_yaml_vars(path))
    for group in ("all",) + CLUSTER_GROUPS:
        merged.update(inventory.group_vars.get(group, {}))
    for _ in range(3):
        for key, value in merged.items():
            match = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", value.strip())
            if match and match.group(1) in merged:
                merged[key] = merged[match.group(1)]
    return merged


_RELEASE_TEMPLATE = re.compile(r"\{\{\s*ansible_distribution_release\s*\|\s*lower\s*\}\}")


def _package_versions(kubespray: KubesprayCheckout, gvars: Mapping[str, str]) -> dict[str, str]:
    """Expected docker/containerd package versions: the checkout's Ubuntu vars file mapped through
    the configured versions; knowledge.py's table when the checkout has no such file."""
    from nodegate.core import knowledge

    docker = _plain(gvars.get("docker_version"))
    cli = _plain(gvars.get("docker_cli_version")) or docker
    containerd = _plain(gvars.get("docker_containerd_version")) or _plain(gvars.get("containerd_version"))
    vars_file = kubespray.path / "roles" / "container-engine" / "docker" / "vars" / "ubuntu.yml"
    if not vars_file.is_file():
        return knowledge.docker_package_versions(kubespray.version, docker_version=docker,
                                                 containerd_version=containerd)
    import yaml

    try:
        data = yaml.safe_load(vars_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise UsageError(f"{vars_file} cannot be read as YAML", fix="restore the file from your Kubespray checkout") from None
    data = data if isinstance(data, dict) else {}
    containerd_package = _plain(gvars.get("containerd_package")) or "containerd.io"
    result: dict[str, str] = {}
    for table, version in (("containerd_versioned_pkg", containerd), ("docker_cli_versioned_pkg", cli),
                           ("docker_versioned_pkg", docker)):
        mapping = data.get(table)
        if not isinstance(mapping, dict) or version is None:
            continue
        spec = mapping.get(version)
        if spec is None:
            spec = next((v for k, v in mapping.items() if str(k) == version), None)
        if not isinstance(spec, str):
            continue
        spec = re.sub(r"\{\{\s*containerd_package\s*\}\}", containerd_package, spec)
        spec = _RELEASE_TEMPLATE.sub("{codename}", spec)
        name, sep, pinned = spec.partition("=")
        if sep and "{{" not in spec and PACKAGE_PATTERN.match(name.strip()):
            result[name.strip()] = pinned.strip()
    return result


def kubespray_version(checkout: Path) -> str | None:
    """The checkout's version: galaxy.yml `version:`, else a git tag pointing at HEAD, else None."""
    galaxy = checkout / "galaxy.yml"
    if galaxy.is_file():
        try:
            for line in galaxy.read_text(encoding="utf-8").splitlines():
                match = re.match(r"^version:\s*['\"]?([0-9][0-9A-Za-z.+-]*)['\"]?\s*$", line)
                if match:
                    return _normalise_tag(match.group(1))
        except (OSError, UnicodeDecodeError):
            pass
    return _git_tag(checkout)


def _git_tag(checkout: Path) -> str | None:
    """The newest version tag on HEAD, read from .git without running git (no subprocess at load)."""
    git = checkout / ".git"
    if not git.is_dir():
        return None
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = git / ref
            if ref_file.is_file():
                head = ref_file.read_text().strip()
            else:
                head = _packed_refs(git).get(ref, "")
        tags = {}
        for name, sha in _packed_refs(git).items():
            if name.startswith("refs/tags/"):
                tags[name[10:]] = sha
        tag_dir = git / "refs" / "tags"
        if tag_dir.is_dir():
            for file in tag_dir.rglob("*"):
                if file.is_file():
                    sha = file.read_text().strip()
                    tags[str(file.relative_to(tag_dir))] = _peel(git, sha)
    except (OSError, UnicodeDecodeError):
        return None
    matching = [t for t, sha in tags.items() if sha == head and re.match(r"^v?\d+\.\d+", t)]
    if not matching:
        return None
    from nodegate.core.knowledge import semver_key

    return _normalise_tag(max(matching, key=semver_key))


def _packed_refs(git: Path) -> dict[str, str]:
    packed = git / "packed-refs"
    refs: dict[str, str] = {}
    if not packed.is_file():
        return refs
    last = None
    for line in packed.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("^") and last:
            refs[last] = line[1:].strip()   # the commit an annotated tag points at
            continue
        sha, _, name = line.partition(" ")
        refs[name.strip()] = sha
        last = name.strip()
    return refs


def _peel(git: Path, sha: str) -> str:
    """An annotated tag's object names the tagged commit; a lightweight tag is the commit itself."""
    import zlib

    obj = git / "objects" / sha[:2] / sha[2:]
    if not obj.is_file():
        return sha
    try:
        data = zlib.decompress(obj.read_bytes())
    except zlib.error:
        return sha
    if data.startswith(b"tag "):
        body = data.split(b"\x00", 1)[1] if b"\x00" in data else b""
        match = re.match(rb"object ([0-9a-f]{40})", body)
        if match:
            return match.group(1).decode()
    return sha


def _normalise_tag(version: str | None) -> str | None:
    if not version:
        return None
    version = version.strip()
    return version if version.startswith("v") or not version[:1].isdigit() else f"v{version}"
