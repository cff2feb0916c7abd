"""Parsers of dpkg, apt-mark and apt-get output and of apt sources (one-line and deb822)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from nodegate.core import aptsources
from nodegate.core.parsing.system import strip_ansi

# --------------------------------------------------------------------------- dpkg / apt-mark

_SELECTIONS = {"u": "unknown", "i": "install", "h": "hold", "r": "deinstall", "p": "purge"}
_STATES = {"n": "not-installed", "c": "config-files", "H": "half-installed", "U": "unpacked",
           "F": "half-configured", "W": "triggers-awaited", "t": "triggers-pending", "i": "installed"}
_FLAGS = {" ": "", "R": "reinst-required"}
_STATUS = re.compile(r"^([uihrp])([ncHUFWti])([ R]?)\s+(\S.*)$")


@dataclass(frozen=True)
class DpkgEntry:
    name: str                 # without ':arch'
    version: str
    arch: str
    selection: str            # 'install' | 'hold' | 'deinstall' | 'purge' | 'unknown'
    state: str                # 'installed', 'config-files', 'half-configured', …
    flags: str = ""           # '' or 'reinst-required'

    @property
    def held(self) -> bool:
        return self.selection == "hold"

    @property
    def installed(self) -> bool:
        return self.state == "installed"


def parse_dpkg_l(text: str) -> tuple[DpkgEntry, ...]:
    """`dpkg -l` (or `dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\\n'`).

    Header lines ('Desired=…', '||/ Name …', '+++-…') and anything not starting with a status
    abbreviation are ignored.
    """
    entries = []
    for line in text.splitlines():
        match = _STATUS.match(line)
        if not match:
            continue
        want, state, flag, rest = match.groups()
        fields = rest.split(None, 3)
        if len(fields) < 2:
            continue
        name = fields[0].split(":", 1)[0]
        arch = fields[2] if len(fields) > 2 else ""
        if ":" in fields[0] and not arch:
            arch = fields[0].split(":", 1)[1]
        entries.append(DpkgEntry(name=name, version=fields[1], arch=arch, selection=_SELECTIONS[want],
                                 state=_STATES[state], flags=_FLAGS.get(flag or " ", "")))
    return tuple(entries)


_PKG_NAME = re.compile(r"^[a-z0-9][a-z0-9+.\-]*(:[a-z0-9\-]+)?$")


def parse_apt_mark_showhold(text: str) -> tuple[str, ...]:
    """Names printed by `apt-mark showhold`, one a line, ':arch' dropped, in order, without repeats."""
    names: dict[str, None] = {}
    for line in text.splitlines():
        word = line.strip()
        if _PKG_NAME.match(word):
            names[word.split(":", 1)[0]] = None
    return tuple(names)


# --------------------------------------------------------------------------- apt-get update

_LEGACY = re.compile(r"^W: (\S+?): Key is stored in legacy trusted\.gpg keyring")
_NO_PUBKEY = re.compile(r"NO_PUBKEY\s+([0-9A-Fa-f]{8,40})")


@dataclass(frozen=True)
class AptUpdateReport:
    warnings: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    legacy_keyring: tuple[str, ...] = ()     # URLs whose key sits in /etc/apt/trusted.gpg
    no_pubkey: tuple[str, ...] = ()          # key ids apt could not find
    notices: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return not (self.warnings or self.errors or self.no_pubkey)


def parse_apt_update(text: str) -> AptUpdateReport:
    """stdout+stderr of `apt-get update` / `apt update`; its exit code proves little (0 with NO_PUBKEY)."""
    warnings: list[str] = []
    errors: list[str] = []
    notices: list[str] = []
    legacy: dict[str, None] = {}
    keys: dict[str, None] = {}
    last_err: list[str] | None = None
    for raw in strip_ansi(text).splitlines():
        line = raw.rstrip()
        if line.startswith("W: "):
            warnings.append(line[3:])
            match = _LEGACY.match(line)
            if match:
                legacy[match.group(1)] = None
            last_err = None
        elif line.startswith("E: "):
            errors.append(line[3:])
            last_err = None
        elif line.startswith("N: "):
            notices.append(line[3:])
            last_err = None
        elif line.startswith("Err:") or line.startswith("Err "):
            # 'Err:3 http://… focal InRelease' then an indented reason line
            errors.append(line.split(None, 1)[1] if " " in line else line)
            last_err = errors
        elif last_err is not None and line.startswith("  ") and line.strip():
            last_err[-1] = f"{last_err[-1]}: {line.strip()}"
        else:
            last_err = None
        for key in _NO_PUBKEY.findall(line):
            keys[key.upper()] = None
    return AptUpdateReport(warnings=tuple(warnings), errors=tuple(errors), legacy_keyring=tuple(legacy),
                           no_pubkey=tuple(keys), notices=tuple(notices))


# --------------------------------------------------------------------------- upgradable packages

@dataclass(frozen=True)
class UpgradablePackage:
    name: str
    new_version: str
    current_version: str | None = None
    arch: str = ""
    suite: str = ""


@dataclass(frozen=True)
class AptUpgradable:
    packages: tuple[UpgradablePackage, ...] = ()
    kept_back: tuple[str, ...] = ()
    upgraded: int | None = None
    newly_installed: int | None = None
    to_remove: int | None = None
    not_upgraded: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every package that would change or is held back, in order, without repeats."""
        return tuple(dict.fromkeys([p.name for p in self.packages] + list(self.kept_back)))

    @property
    def anything(self) -> bool:
        return bool(self.names) or bool(self.not_upgraded)


_LIST_LINE = re.compile(r"^([^\s/]+)/(\S+)\s+(\S+)\s+(\S+)(?:\s+\[upgradable from:\s*([^\]\s]+)\])?")
_INST_LINE = re.compile(r"^Inst\s+(\S+)\s+(?:\[([^\]]*)\]\s+)?\((\S+)\s*([^\[]*?)\s*(?:\[([^\]]*)\])?\)")
_SUMMARY = re.compile(r"(\d+) upgraded, (\d+) newly installed, (\d+) to remove and (\d+) not upgraded")


def parse_apt_upgradable(text: str) -> AptUpgradable:
    """`apt list --upgradable` and/or `apt-get -s dist-upgrade` (Inst lines, 'kept back', the summary)."""
    packages: dict[str, UpgradablePackage] = {}
    kept: dict[str, None] = {}
    counts: tuple[int, ...] | None = None
    in_kept = False
    for raw in strip_ansi(text).splitlines():
        line = raw.rstrip()
        if in_kept:
            if line.startswith(" ") and line.strip():
                for name in line.split():
                    kept[name.split(":", 1)[0]] = None
                continue
            in_kept = False
        if line.startswith("The following packages have been kept back"):
            in_kept = True
            continue
        match = _INST_LINE.match(line)
        if match:
            name, old, new, suite, arch = match.groups()
            packages.setdefault(name, UpgradablePackage(name=name, new_version=new, current_version=old or None,
                                                        arch=arch or "", suite=suite.strip()))
            continue
        match = _LIST_LINE.match(line)
        if match and not line.startswith("Listing"):
            name, suite, new, arch, old = match.groups()
            packages.setdefault(name, UpgradablePackage(name=name, new_version=new, current_version=old,
                                                        arch=arch, suite=suite))
            continue
        match = _SUMMARY.search(line)
        if match:
            counts = tuple(int(x) for x in match.groups())
    if counts is None:
        return AptUpgradable(packages=tuple(packages.values()), kept_back=tuple(kept))
    return AptUpgradable(packages=tuple(packages.values()), kept_back=tuple(kept), upgraded=counts[0],
                         newly_installed=counts[1], to_remove=counts[2], not_upgraded=counts[3])


# --------------------------------------------------------------------------- apt sources

@dataclass(frozen=True)
class AptSource:
    enabled: bool
    disabled_on_upgrade_to: str | None   # 'jammy' when do-release-upgrade commented it out
    types: tuple[str, ...]               # ('deb',), ('deb', 'deb-src')
    options: Mapping[str, str]           # one-line option names: 'signed-by', 'arch', …
    uri: str
    suite: str
    components: tuple[str, ...]
    raw: str = field(default="", compare=False)

    @property
    def signed_by(self) -> str | None:
        return self.options.get("signed-by")

    @property
    def codename(self) -> str:
        """'focal' for suites 'focal', 'focal-updates', 'focal/updates'."""
        return re.split(r"[-/]", self.suite, maxsplit=1)[0]


# deb822 field names (lower case) and the one-line option names AptSource.options uses
# (sources.list(5)); other deb822 fields are not options of a source.
_DEB822_KEYS = {"architectures": "arch", "languages": "lang", "targets": "target", "pdiffs": "pdiffs",
                "by-hash": "by-hash", "allow-insecure": "allow-insecure", "allow-weak": "allow-weak",
                "allow-downgrade-to-insecure": "allow-downgrade-to-insecure", "trusted": "trusted",
                "signed-by": "signed-by", "check-valid-until": "check-valid-until",
                "valid-until-min": "valid-until-min", "valid-until-max": "valid-until-max",
                "check-date": "check-date", "date-max-future": "date-max-future",
                "inrelease-path": "inrelease-path", "snapshot": "snapshot"}


def parse_sources_list(text: str) -> tuple[AptSource, ...]:
    """A sources.list / *.list file (one-line style, also the commented-out entries Ubuntu's
    release upgrader leaves) or a deb822 *.sources file (detected from its fields): one AptSource
    per URI and suite. The one reader of both formats is nodegate.core.aptsources."""
    sources = []
    for entry in aptsources.entries("", text):
        options = {_DEB822_KEYS.get(k, k): v for k, v in entry.options.items()
                   if entry.format == "one-line" or k in _DEB822_KEYS}
        sources += [AptSource(enabled=entry.enabled, disabled_on_upgrade_to=entry.disabled_on_upgrade_to,
                              types=entry.types, options=dict(options), uri=uri, suite=suite,
                              components=entry.components, raw=entry.raw)
                    for uri in entry.uris for suite in entry.suites]
    return tuple(sources)


# --------------------------------------------------------------------------- os-release


# --------------------------------------------------------------------------- Ansible output


# --------------------------------------------------------------------------- Ceph


# --------------------------------------------------------------------------- etcd


