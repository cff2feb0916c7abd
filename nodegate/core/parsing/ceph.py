"""Parsers of the Ceph CLI's JSON answers (health, status, ok-to-stop, OSD flags, ls-tree).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
