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
    from nodegate.core.kubespray_release import defaults_files

    roles = checkout / "roles"
    candidates = defaults_files(checkout)   # roles/kubespray-defaults or (v2.28+) roles/kubespray_defaults
    candidates += [roles / "container-engine" / "containerd-common" / "defaults" / "main.yml",
                   roles / "container-engine" / "docker" / "defaults" / "main.yml"]
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
    """The checkout's version (nodegate.core.kubespray_version.detect says how it was found)."""
    from nodegate.core.kubespray_version import detect

    return detect(checkout).version
