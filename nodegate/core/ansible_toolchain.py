"""What a Kubespray checkout asks of the Ansible that runs it, and whether a toolchain meets it.

Pure logic over text (no process is run here; nodegate.cluster.toolchain runs and reads the tools).
The facts, read in kubernetes-sigs/kubespray at its tags:

- every release carries a playbook `ansible_version.yml` (at the top until v2.21.x, in playbooks/
  from v2.22.0; upgrade-cluster.yml imports it first) whose play variables `minimal_ansible_version`
  and `maximal_ansible_version` bound `ansible_version.string`, i.e. the ansible-core version:
  minimal <= core < maximal (v2.21.0: 2.11.0 and 2.13.0; v2.23: 2.14.0 and 2.15.0; v2.24: 2.15.5 and
  2.17.0; v2.25 to v2.28: 2.16.4 and 2.17.0; v2.29: 2.17.3 and 2.18.0; v2.31: 2.18.0 and 2.19.0). An
  Ansible outside the range stops the playbook at its first play, which in nodegate's procedure is
  step 11, after both reboots;
- `requirements.txt` pins the Python packages of Kubespray's virtualenv with `==` (v2.21.0: a
  symbolic link to requirements-2.12.txt, ansible==5.7.1 and ansible-core==2.12.5; later releases
  the `ansible` bundle, whose collections the roles use, plus jmespath, netaddr, cryptography).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

# Where a release keeps the file (the newer place first: a checkout has one of them).
ANSIBLE_VERSION_FILES = ("playbooks/ansible_version.yml", "ansible_version.yml")
REQUIREMENTS_FILE = "requirements.txt"
_RANGE_KEYS = ("minimal_ansible_version", "maximal_ansible_version")


class ToolchainFileError(ValueError):
    """A checkout file that should say what Ansible it needs cannot be read for that."""


@dataclass(frozen=True)
class AnsibleRange:
    """minimal <= ansible-core < maximal, as a checkout's ansible_version.yml states it."""
    minimal: str
    maximal: str
    source: str                      # the file, relative to the checkout

    def admits(self, version: str) -> bool:
        """Whether ansible-core VERSION is inside the range (ValueError for an unreadable version)."""
        found = parse_version(version)
        return parse_version(self.minimal) <= found < parse_version(self.maximal)

    @property
    def text(self) -> str:
        return f"{self.minimal} <= ansible-core < {self.maximal}"

    def pip_spec(self) -> str:
        """The same range as a pip requirement, for the fix."""
        return f"ansible-core>={self.minimal},<{self.maximal}"


def parse_version(text: str) -> Version:
    try:
        return Version(str(text).strip())
    except InvalidVersion:
        raise ValueError(f"{text!r} is not a version") from None


def parse_ansible_version_file(text: str, source: str) -> AnsibleRange:
    """The range from an ansible_version.yml's text: the play (or any mapping in it) whose `vars`
    hold minimal_ansible_version and maximal_ansible_version."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ToolchainFileError(f"{source} is not valid YAML ({str(exc).splitlines()[0]})") from None
    for values in _mappings(data):
        found = values.get("vars") if isinstance(values.get("vars"), dict) else None
        if found and all(key in found for key in _RANGE_KEYS):
            low, high = (str(found[key]).strip() for key in _RANGE_KEYS)
            for value in (low, high):
                if "{{" in value:
                    raise ToolchainFileError(f"{source}: the Ansible range is a template ({value}), not a version")
                parse_version(value)
            if parse_version(low) >= parse_version(high):
                raise ToolchainFileError(f"{source}: minimal_ansible_version {low} is not below "
                                         f"maximal_ansible_version {high}")
            return AnsibleRange(minimal=low, maximal=high, source=source)
    raise ToolchainFileError(f"{source} names no minimal_ansible_version and maximal_ansible_version in a play's vars")


def _mappings(data: object) -> Iterable[dict]:
    if isinstance(data, dict):
        yield data
        for value in data.values():
            yield from _mappings(value)
    elif isinstance(data, list):
        for item in data:
            yield from _mappings(item)


def ansible_range(checkout: Path) -> AnsibleRange:
    """The range of the checkout at CHECKOUT (ToolchainFileError naming the files looked at)."""
    for relative in ANSIBLE_VERSION_FILES:
        path = Path(checkout) / relative
        if path.is_file():
            return parse_ansible_version_file(path.read_text(errors="replace"), relative)
    raise ToolchainFileError(f"the checkout {checkout} has no {' or '.join(ANSIBLE_VERSION_FILES)}")


@dataclass(frozen=True)
class Pin:
    """One line of requirements.txt."""
    requirement: Requirement
    line: str

    @property
    def key(self) -> str:
        return canonicalize_name(self.requirement.name)


def parse_requirements(text: str, source: str = REQUIREMENTS_FILE,
                       include: Mapping[str, str] | None = None) -> tuple[Pin, ...]:
    """The requirements of a pip requirements file's text; `-r FILE` lines are read from INCLUDE
    (name -> text). Options (`--hash`, `-c`, index settings) and markers that do not apply here
    are left out; a line pip would refuse is a ToolchainFileError."""
    pins: list[Pin] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        nested = re.match(r"^(?:-r|--requirement)[\s=]+(\S+)$", line)
        if nested:
            name = nested.group(1)
            if include is None or name not in include:
                raise ToolchainFileError(f"{source} line {number} includes {name}, which cannot be read")
            pins += parse_requirements(include[name], name, include)
            continue
        if line.startswith("-"):
            continue
        try:
            requirement = Requirement(line.split(" --", 1)[0].strip())
        except InvalidRequirement as exc:
            raise ToolchainFileError(f"{source} line {number} ({line!r}) is not a requirement: {exc}") from None
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        pins.append(Pin(requirement=requirement, line=line))
    return tuple(pins)


def requirement_problems(pins: Iterable[Pin], installed: Mapping[str, str]) -> list[str]:
    """What the environment lacks, one sentence per requirement: INSTALLED maps each distribution
    name (any spelling) to its version."""
    have = {canonicalize_name(name): version for name, version in installed.items()}
    problems = []
    for pin in pins:
        version = have.get(pin.key)
        if version is None:
            problems.append(f"{pin.requirement.name} is not installed (requirements.txt: {pin.line})")
            continue
        if pin.requirement.specifier and not pin.requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{pin.requirement.name} {version} is installed; requirements.txt says {pin.line}")
    return problems


def core_version_from_output(output: str) -> str | None:
    """ansible-core's version from `ansible-playbook --version` ('ansible-playbook [core 2.12.5]')."""
    match = re.search(r"\[core ([^\]\s]+)\]", output) or re.search(r"^ansible-playbook ([0-9][^\s]*)", output, re.M)
    return match.group(1) if match else None


def python_from_output(output: str) -> str | None:
    """The interpreter `ansible-playbook --version` names (ansible-core >= 2.14 prints its path
    after the Python version), or None."""
    match = re.search(r"^\s*python version = .*\((/[^()]+)\)\s*$", output, re.M)
    return match.group(1) if match else None


def python_from_shebang(first_line: str) -> str | None:
    """The interpreter of a console script (`#!/path/to/venv/bin/python3`), or None for `env`."""
    if not first_line.startswith("#!"):
        return None
    words = first_line[2:].strip().split()
    if not words or words[0].endswith("/env"):
        return None
    return words[0]


def tags_of(list_tags_output: str) -> frozenset[str]:
    """Every tag `ansible-playbook --list-tags` lists (its play and TASK TAGS lines)."""
    tags: set[str] = set()
    for match in re.finditer(r"TAGS: \[([^\]]*)\]", list_tags_output):
        tags |= {t.strip() for t in match.group(1).split(",") if t.strip()}
    return frozenset(tags)


def skipped_tags(argv: Iterable[str]) -> tuple[str, ...]:
    """The tags a command line skips (`--skip-tags=a,b` or `--skip-tags a`)."""
    out: list[str] = []
    words = list(argv)
    for i, word in enumerate(words):
        value = None
        if word.startswith("--skip-tags="):
            value = word.split("=", 1)[1]
        elif word == "--skip-tags" and i + 1 < len(words):
            value = words[i + 1]
        if value:
            out += [t.strip() for t in value.split(",") if t.strip()]
    return tuple(dict.fromkeys(out))
