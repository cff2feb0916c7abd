"""Pure parsers for what nodes, apt, Ansible and Ceph print, each returning frozen dataclasses.

Every parser is total: any text (junk, a truncated output, an error page) gives a result,
never an exception, because a check must be able to report "could not read X" instead of
crashing with a traceback. A property test (tests/unit/test_properties.py) holds them to it.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


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


_DISABLED_TAG = re.compile(r"#\s*disabled on upgrade to\s+(\S+)")
_ONE_LINE = re.compile(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)((?:\s+[^\s#]+)*)")
_DEB822_KEYS = {"architectures": "arch", "languages": "lang", "targets": "target", "pdiffs": "pdiffs",
                "by-hash": "by-hash", "allow-insecure": "allow-insecure", "allow-weak": "allow-weak",
                "allow-downgrade-to-insecure": "allow-downgrade-to-insecure", "trusted": "trusted",
                "signed-by": "signed-by", "check-valid-until": "check-valid-until",
                "valid-until-min": "valid-until-min", "valid-until-max": "valid-until-max",
                "check-date": "check-date", "date-max-future": "date-max-future",
                "inrelease-path": "inrelease-path", "snapshot": "snapshot"}


def parse_sources_list(text: str) -> tuple[AptSource, ...]:
    """A sources.list / *.list file (one-line style, also the commented-out entries Ubuntu's
    release upgrader leaves) or a deb822 *.sources file (detected from its fields)."""
    if re.search(r"^(Types|URIs|Suites)\s*:", text, flags=re.MULTILINE | re.IGNORECASE):
        return _parse_deb822(text)
    return _parse_one_line(text)


def _parse_one_line(text: str) -> tuple[AptSource, ...]:
    sources = []
    for raw in text.splitlines():
        line = raw.strip()
        enabled = True
        if line.startswith("#"):
            enabled = False
            line = line.lstrip("#").strip()
        match = _ONE_LINE.match(line)
        if not match:
            continue
        kind, opts, uri, suite, comps = match.groups()
        tag = _DISABLED_TAG.search(raw)
        sources.append(AptSource(enabled=enabled, disabled_on_upgrade_to=tag.group(1) if tag else None,
                                 types=(kind,), options=_one_line_options(opts or ""), uri=uri, suite=suite,
                                 components=tuple(comps.split()), raw=raw))
    return tuple(sources)


def _one_line_options(text: str) -> dict[str, str]:
    options = {}
    for item in text.split():
        key, _, value = item.partition("=")
        key = key.rstrip("+-")  # 'arch+=amd64' / 'arch-=i386' modify the default; keep the value
        if key:
            options[key] = value
    return options


def _parse_deb822(text: str) -> tuple[AptSource, ...]:
    sources: list[AptSource] = []
    for stanza in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        fields: dict[str, str] = {}
        tag = _DISABLED_TAG.search(stanza)
        key = None
        for line in stanza.split("\n"):
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:   # continuation (e.g. an embedded Signed-By key block)
                fields[key] += "\n" + line.strip()
                continue
            name, sep, value = line.partition(":")
            if not sep:
                continue
            key = name.strip().lower()
            fields[key] = value.strip()
        if not fields.get("uris") or not fields.get("suites"):
            continue
        enabled = fields.get("enabled", "yes").strip().lower() not in ("no", "false", "0")
        options = {_DEB822_KEYS[k]: v for k, v in fields.items() if k in _DEB822_KEYS}
        types = tuple(fields.get("types", "deb").split()) or ("deb",)
        for uri in fields["uris"].split():
            for suite in fields["suites"].split():
                sources.append(AptSource(enabled=enabled, disabled_on_upgrade_to=tag.group(1) if tag else None,
                                         types=types, options=dict(options), uri=uri, suite=suite,
                                         components=tuple(fields.get("components", "").split()), raw=stanza))
    return tuple(sources)


# --------------------------------------------------------------------------- os-release

@dataclass(frozen=True)
class OsRelease:
    id: str | None = None
    version_id: str | None = None
    version_codename: str | None = None
    pretty_name: str | None = None

    @property
    def label(self) -> str:
        return self.pretty_name or " ".join(x for x in (self.id, self.version_id, self.version_codename) if x) \
            or "unknown release"


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        return re.sub(r"\\([\\\"$`])", r"\1", inner) if value[0] == '"' else inner
    return value


def parse_os_release(text: str) -> OsRelease:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = _unquote(value)
    return OsRelease(id=values.get("ID") or None, version_id=values.get("VERSION_ID") or None,
                     version_codename=values.get("VERSION_CODENAME") or values.get("UBUNTU_CODENAME") or None,
                     pretty_name=values.get("PRETTY_NAME") or None)


# --------------------------------------------------------------------------- Ansible output

@dataclass(frozen=True)
class RecapLine:
    ok: int = 0
    changed: int = 0
    unreachable: int = 0
    failed: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0

    @property
    def succeeded(self) -> bool:
        return self.failed == 0 and self.unreachable == 0


_RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")


def parse_ansible_recap(text: str) -> dict[str, RecapLine]:
    """Host → counters from the last PLAY RECAP block (or from any recap-shaped line if none)."""
    clean = strip_ansi(text)
    start = clean.rfind("PLAY RECAP")
    body = clean[start:] if start >= 0 else clean
    recap: dict[str, RecapLine] = {}
    known = RecapLine.__dataclass_fields__
    for line in body.splitlines():
        match = _RECAP.match(line.strip())
        if not match:
            continue
        counts = {}
        for item in match.group(2).split():
            key, _, value = item.partition("=")
            if key in known:
                counts[key] = int(value)
        if counts:
            recap[match.group(1)] = RecapLine(**counts)
    return recap


@dataclass(frozen=True)
class FailedTask:
    host: str | None      # None for an [ERROR] no host line followed (e.g. a syntax error)
    task: str | None
    message: str


_TASK_HEADER = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.*)\]\s*\**\s*$")
_PLAY_HEADER = re.compile(r"^(?:PLAY|PLAY RECAP) ")
_FATAL = re.compile(r"^(fatal|failed): \[([^\]\s]+)(?: -> [^\]]*)?\]:?(?: \(item=.*?\))?(?::? (FAILED|UNREACHABLE)!)?"
                    r"\s*=>\s*(.*)$")
_ERROR = re.compile(r"^\[ERROR\]: (.*)$")


def failed_tasks(text: str) -> tuple[FailedTask, ...]:
    """Failed tasks of an ansible-playbook run: the classic `fatal: [node4]: FAILED! => {…}` and
    `failed: [node4] (item=…) => {…}` lines, and ansible-core 2.19's `[ERROR]: Task failed: …`
    blocks (kept only when no host line follows them, so a failure is reported once). Failures
    followed by `...ignoring` are left out."""
    lines = strip_ansi(text).splitlines()
    found: list[FailedTask] = []
    task: str | None = None
    pending_error: str | None = None
    for index, raw in enumerate(lines):
        line = raw.rstrip()
        header = _TASK_HEADER.match(line)
        if header or _PLAY_HEADER.match(line):
            if pending_error is not None:
                found.append(FailedTask(host=None, task=task, message=pending_error))
                pending_error = None
            task = header.group(1) if header else None
            continue
        error = _ERROR.match(line)
        if error:
            if pending_error is not None:
                found.append(FailedTask(host=None, task=task, message=pending_error))
            pending_error = error.group(1).strip()
            continue
        fatal = _FATAL.match(line)
        if fatal:
            pending_error = None
            following = lines[index + 1].strip() if index + 1 < len(lines) else ""
            if following == "...ignoring":
                continue
            found.append(FailedTask(host=fatal.group(2), task=task, message=_result_message(fatal.group(4))))
    if pending_error is not None:
        found.append(FailedTask(host=None, task=task, message=pending_error))
    return tuple(found)


_GENERIC_MSGS = {"non-zero return code", "", "All items completed",
                 "One or more items failed"}


def _result_message(payload: str) -> str:
    """The useful words of a task result: msg, or stderr when msg is generic."""
    try:
        data = json.loads(payload)
    except ValueError:
        match = re.search(r'"msg":\s*"((?:[^"\\]|\\.)*)"', payload)
        return match.group(1) if match else payload.strip()
    if not isinstance(data, dict):
        return str(data)
    msg = str(data.get("msg", "")).strip()
    stderr = str(data.get("stderr", "") or data.get("module_stderr", "")).strip()
    if msg in _GENERIC_MSGS and stderr:
        return f"{msg}: {stderr}" if msg else stderr
    if not msg and isinstance(data.get("results"), list):
        inner = [_result_message(json.dumps(r)) for r in data["results"] if isinstance(r, dict) and r.get("failed")]
        return "; ".join(inner) or payload.strip()
    return msg or payload.strip()


# --------------------------------------------------------------------------- Ceph

def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return None


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _as_list(value: Any) -> list:
    # `x or []` is not enough: ceph JSON from another version (or junk) may hold true or 3 there
    return value if isinstance(value, list) else []


def _as_int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) < 1e18:
        return int(value)
    return default


@dataclass(frozen=True)
class HealthCheck:
    severity: str              # HEALTH_WARN / HEALTH_ERR
    summary: str
    count: int = 0
    details: tuple[str, ...] = ()
    muted: bool = False


@dataclass(frozen=True)
class CephHealth:
    status: str                          # HEALTH_OK / HEALTH_WARN / HEALTH_ERR / 'unknown'
    checks: Mapping[str, HealthCheck] = field(default_factory=dict)

    @property
    def noout_hosts(self) -> tuple[str, ...]:
        """CRUSH hosts with a noout flag, from OSD_FLAGS details ('host node-0 has flags noout')."""
        return tuple(m.group(1) for d in _details(self, "OSD_FLAGS")
                     for m in [re.match(r"host (\S+) has flags (\S+)", d)] if m and "noout" in m.group(2).split(","))

    @property
    def noout_osds(self) -> tuple[int, ...]:
        return tuple(int(m.group(1)) for d in _details(self, "OSD_FLAGS")
                     for m in [re.match(r"osd\.(\d+) has flags (\S+)", d)] if m and "noout" in m.group(2).split(","))

    def summaries(self) -> tuple[str, ...]:
        return tuple(f"{name}: {check.summary}" for name, check in self.checks.items())


def _details(health: CephHealth, name: str) -> tuple[str, ...]:
    check = health.checks.get(name)
    return check.details if check else ()


def _health_from(data: Any) -> CephHealth:
    data = _as_dict(data)
    status = data.get("status") or data.get("overall_status")
    checks: dict[str, HealthCheck] = {}
    for name, raw in _as_dict(data.get("checks")).items():
        raw = _as_dict(raw)
        summary = _as_dict(raw.get("summary"))
        details = tuple(str(_as_dict(d).get("message", "")) for d in _as_list(raw.get("detail")) if isinstance(d, dict))
        checks[str(name)] = HealthCheck(severity=str(raw.get("severity", "")), summary=str(summary.get("message", "")),
                                        count=_as_int(summary.get("count")), details=details,
                                        muted=bool(raw.get("muted", False)))
    return CephHealth(status=str(status) if isinstance(status, str) else "unknown", checks=checks)


def parse_ceph_health(json_text: str) -> CephHealth:
    """`ceph health [detail] -f json`."""
    return _health_from(_load_json(json_text))


@dataclass(frozen=True)
class CephStatus:
    health: str
    checks: Mapping[str, HealthCheck] = field(default_factory=dict)
    mgr_available: bool = False
    num_mons: int = 0
    quorum_names: tuple[str, ...] = ()
    num_osds: int = 0
    num_up: int = 0
    num_in: int = 0
    pgs_total: int = 0
    pgs_by_state: Mapping[str, int] = field(default_factory=dict)
    readable: bool = True     # False when the text was not a ceph status document

    @property
    def pgs_active_clean(self) -> int:
        return sum(n for state, n in self.pgs_by_state.items() if set(state.split("+")) == {"active", "clean"})

    def reasons(self) -> tuple[str, ...]:
        """Why the cluster is not healthy in the full sense (empty when it is)."""
        if not self.readable:
            return ("the output is not a `ceph status -f json` document",)
        reasons = []
        if self.health != "HEALTH_OK":
            detail = "; ".join(f"{n}: {c.summary}" for n, c in self.checks.items())
            reasons.append(f"health is {self.health}" + (f" ({detail})" if detail else ""))
        if not self.mgr_available:
            reasons.append("no ceph-mgr is available")
        if self.num_osds == 0:
            reasons.append("the cluster has no OSDs")
        if self.num_up < self.num_osds:
            reasons.append(f"{self.num_osds - self.num_up} of {self.num_osds} OSDs are down")
        if self.num_in < self.num_osds:
            reasons.append(f"{self.num_osds - self.num_in} of {self.num_osds} OSDs are out")
        if self.pgs_active_clean < self.pgs_total:
            others = ", ".join(f"{n} {s}" for s, n in self.pgs_by_state.items() if set(s.split("+")) != {"active", "clean"})
            reasons.append(f"{self.pgs_total - self.pgs_active_clean} of {self.pgs_total} PGs are not active+clean"
                           + (f" ({others})" if others else ""))
        return tuple(reasons)

    @property
    def healthy_in_full(self) -> bool:
        """HEALTH_OK alone is not enough (a fresh mon says it with no mgr and no OSD)."""
        return not self.reasons()


def parse_ceph_status(json_text: str) -> CephStatus:
    """`ceph status -f json` (Pacific's flat osdmap and the older nested `osdmap.osdmap`)."""
    data = _load_json(json_text)
    if not isinstance(data, dict) or not isinstance(data.get("health"), dict):
        return CephStatus(health="unknown", readable=False)
    health = _health_from(data["health"])
    osdmap = _as_dict(data.get("osdmap"))
    if isinstance(osdmap.get("osdmap"), dict):
        osdmap = osdmap["osdmap"]
    pgmap = _as_dict(data.get("pgmap"))
    by_state: dict[str, int] = {}
    for item in _as_list(pgmap.get("pgs_by_state")):
        item = _as_dict(item)
        if isinstance(item.get("state_name"), str):
            by_state[item["state_name"]] = by_state.get(item["state_name"], 0) + _as_int(item.get("count"))
    quorum = data.get("quorum_names") if isinstance(data.get("quorum_names"), list) else []
    return CephStatus(health=health.status, checks=health.checks,
                      mgr_available=_as_dict(data.get("mgrmap")).get("available") is True,
                      num_mons=_as_int(_as_dict(data.get("monmap")).get("num_mons")),
                      quorum_names=tuple(str(q) for q in quorum),
                      num_osds=_as_int(osdmap.get("num_osds")), num_up=_as_int(osdmap.get("num_up_osds")),
                      num_in=_as_int(osdmap.get("num_in_osds")), pgs_total=_as_int(pgmap.get("num_pgs")),
                      pgs_by_state=by_state)


@dataclass(frozen=True)
class OkToStop:
    ok: bool
    osds: tuple[int, ...] = ()
    num_ok_pgs: int = 0
    num_not_ok_pgs: int = 0
    bad_become_inactive: tuple[str, ...] = ()
    ok_become_degraded: tuple[str, ...] = ()
    message: str = ""

    @property
    def reason(self) -> str:
        if self.ok:
            return ""
        if self.message:
            return self.message
        if self.bad_become_inactive:
            return f"{len(self.bad_become_inactive)} PGs would become inactive ({', '.join(self.bad_become_inactive[:5])}…)"
        return "ceph says the OSDs are not ok to stop"


def parse_ok_to_stop(json_text: str, rc: int, stderr: str = "") -> OkToStop:
    """`ceph osd ok-to-stop IDS -f json`: rc 0 = yes, rc 16 (EBUSY) = no with the JSON still on stdout.

    Both must agree for a yes: a non-zero rc is never read as ok, whatever stdout says."""
    data = _as_dict(_load_json(json_text))
    message = next((line.strip() for line in stderr.splitlines() if line.startswith("Error")), "")
    if not data:
        return OkToStop(ok=False, message=message or f"no JSON answer from ok-to-stop (rc {rc})")
    osds = tuple(o for o in _as_list(data.get("osds")) if isinstance(o, int) and not isinstance(o, bool))
    pgs = lambda key: tuple(str(p) for p in _as_list(data.get(key)) if isinstance(p, (str, int)))  # noqa: E731
    return OkToStop(ok=rc == 0 and data.get("ok_to_stop") is True, osds=osds,
                    num_ok_pgs=_as_int(data.get("num_ok_pgs")), num_not_ok_pgs=_as_int(data.get("num_not_ok_pgs")),
                    bad_become_inactive=pgs("bad_become_inactive"), ok_become_degraded=pgs("ok_become_degraded"),
                    message=message if rc != 0 else "")


@dataclass(frozen=True)
class OsdFlags:
    global_flags: frozenset[str] = frozenset()
    crush_node_flags: Mapping[str, frozenset[str]] = field(default_factory=dict)   # CRUSH host -> flags
    osd_flags: Mapping[int, frozenset[str]] = field(default_factory=dict)          # osd id -> its own flags

    def noout_for_host(self, host: str) -> bool:
        return "noout" in self.global_flags or "noout" in self.crush_node_flags.get(host, frozenset())


_OSD_STATE_NOT_FLAGS = {"exists", "up", "down", "new", "destroyed", "autoout"}


def parse_osd_dump_flags(json_text: str) -> OsdFlags:
    """`ceph osd dump -f json`: global flags, `crush_node_flags` (set-group noout <host>), per-OSD noout."""
    data = _as_dict(_load_json(json_text))
    flags = data.get("flags_set")
    if not isinstance(flags, list):
        flags = str(data.get("flags", "")).split(",") if isinstance(data.get("flags"), str) else []
    nodes = {str(k): frozenset(str(f) for f in v) for k, v in _as_dict(data.get("crush_node_flags")).items()
             if isinstance(v, list)}
    osds: dict[int, frozenset[str]] = {}
    for osd in _as_list(data.get("osds")):
        osd = _as_dict(osd)
        if isinstance(osd.get("osd"), int) and isinstance(osd.get("state"), list):
            own = frozenset(str(s) for s in osd["state"]) - _OSD_STATE_NOT_FLAGS
            if own:
                osds[osd["osd"]] = own
    return OsdFlags(global_flags=frozenset(str(f) for f in flags if f), crush_node_flags=nodes, osd_flags=osds)


def parse_ls_tree(json_text: str) -> tuple[int, ...]:
    """`ceph osd ls-tree <host> -f json`: the OSD ids under a CRUSH host ([] if none or unreadable)."""
    data = _load_json(json_text)
    if not isinstance(data, list):
        return ()
    return tuple(x for x in data if isinstance(x, int) and not isinstance(x, bool))


# --------------------------------------------------------------------------- etcd

@dataclass(frozen=True)
class EtcdEndpoint:
    endpoint: str              # client URL, e.g. https://10.0.0.1:2379
    healthy: bool
    error: str = ""            # etcdctl's reason when not healthy ("context deadline exceeded")

    @property
    def host(self) -> str:
        """The URL's host part (no scheme, no port): what an inventory's address is compared with."""
        rest = self.endpoint.split("://", 1)[-1].split("/", 1)[0]
        if rest.startswith("["):                       # [v6]:2379
            return rest[1:].split("]", 1)[0]
        return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


@dataclass(frozen=True)
class EtcdHealth:
    """`etcdctl endpoint health -w json` over every member's endpoint."""
    endpoints: tuple[EtcdEndpoint, ...] = ()
    message: str = ""          # why nothing (or not everything) could be read

    @property
    def read(self) -> bool:
        return bool(self.endpoints)

    @property
    def unhealthy(self) -> tuple[EtcdEndpoint, ...]:
        return tuple(e for e in self.endpoints if not e.healthy)

    @property
    def majority(self) -> int:
        """Members needed for quorum: more than half of all members."""
        return len(self.endpoints) // 2 + 1

    def healthy_without(self, host: str) -> int:
        """Healthy members left once the member on ``host`` is gone. When no endpoint is on
        ``host`` (etcd may listen on another address than the one SSH uses), a healthy one is
        assumed to go: the cautious reading."""
        healthy = [e for e in self.endpoints if e.healthy]
        if any(e.host == host for e in self.endpoints):
            return sum(1 for e in healthy if e.host != host)
        return max(len(healthy) - 1, 0)

    def survives_losing(self, host: str) -> bool:
        return self.read and self.healthy_without(host) >= self.majority


def parse_etcd_endpoint_health(json_text: str, rc: int = 0, stderr: str = "") -> EtcdHealth:
    """etcdctl 3.4 prints a JSON list (one object per endpoint: endpoint, health, took, error)
    and exits 1 when any endpoint is unhealthy, the list still on stdout; its reason
    ("Error: unhealthy cluster", or why it could not start) is on stderr."""
    error = next((line.strip() for line in reversed(stderr.splitlines()) if line.startswith("Error")), "")
    endpoints = []
    for item in _as_list(_load_json(json_text)):
        item = _as_dict(item)
        url = item.get("endpoint")
        if not isinstance(url, str) or not url:
            continue
        # Health is only ever true when etcdctl says exactly true.
        healthy = item.get("health") is True
        reason = item.get("error")
        endpoints.append(EtcdEndpoint(endpoint=url, healthy=healthy,
                                      error=reason if isinstance(reason, str) and not healthy else ""))
    if not endpoints:
        return EtcdHealth(message=error or f"no JSON answer from etcdctl endpoint health (rc {rc})")
    return EtcdHealth(endpoints=tuple(sorted(endpoints, key=lambda e: e.endpoint)),
                      message=error if rc != 0 else "")
