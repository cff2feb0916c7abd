"""The time budget of a rollout: how long each step of a node's upgrade is expected to take, from
earlier runs of the same cluster, and whether a node or a batch can finish before the maintenance
window ends (and before Rook's osdMaintenanceTimeout lapses for it). Pure logic: no I/O here.

- Per step, the samples are the step's own durations in this cluster's journals: from the
  step's ``started`` record to its ``done`` in the same run (a step skipped because its effect was
  there already changed nothing and is no sample). p50 and p95 are read from them by linear
  interpolation between the closest ranks (one sample: that sample).
- A step with no sample gets ``DEFAULT_STEP_S``: nodegate's stated figures for real hardware, two
  reboots and a release upgrade, summing to nodegate.core.noout.DEFAULT_EXPECTED_NODE_UPGRADE_S.
- A node's expected duration is the sum over the steps it still has to do; a batch runs its nodes
  side by side, so it lasts as long as its longest node.
- A unit (a node, or a batch) starts only when now + its p95 <= the window's end, and when, where
  Rook manages noout, the p95 of its protected stretch (``noout`` to ``unset_noout``) stays within
  ``osdMaintenanceTimeout``. The first unit that does not fit ends the run: every later one is left
  for the next window, so nothing is half done.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# nodegate's figures for a step with no history in this cluster (seconds, real hardware: a
# dist-upgrade and a release upgrade over a mirror, reboots of a server with its firmware checks).
DEFAULT_STEP_S: Mapping[str, float] = {
    "gate": 60.0, "lock": 5.0, "drain": 180.0, "noout": 10.0, "unhold": 10.0, "dist_upgrade": 360.0,
    "reboot": 300.0, "release_upgrade": 900.0, "reboot_release": 300.0, "repair": 30.0, "kubespray": 300.0,
    "hold": 10.0, "uncordon": 5.0, "unset_noout": 10.0, "storage_healthy": 150.0, "postflight": 60.0,
    "unlock": 5.0,
}
DEFAULT_OTHER_STEP_S = 60.0       # a step nodegate has no figure for
PROTECTED_FROM, PROTECTED_TO = "noout", "unset_noout"
_FINISHED = ("done", "skipped")


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of ``samples``, linearly interpolated between closest ranks."""
    if not samples:
        raise ValueError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class StepExpectation:
    step: str
    p50: float
    p95: float
    samples: int            # 0: nodegate's default figure

    @property
    def source(self) -> str:
        return f"{self.samples} earlier run(s)" if self.samples else "nodegate's default"


def step_samples(journals: Iterable[Sequence[Any]]) -> dict[str, list[float]]:
    """Each step's durations in the journals (records with .step, .status, .at, .run_id): from the
    step's first ``started`` record of a run to its ``done`` in that run."""
    out: dict[str, list[float]] = {}
    for records in journals:
        begun: dict[tuple[str, str], float] = {}
        for rec in records:
            key = (rec.run_id, rec.step)
            if rec.status == "started":
                begun.setdefault(key, rec.at)
            elif rec.status == "done" and key in begun:
                out.setdefault(rec.step, []).append(max(0.0, rec.at - begun.pop(key)))
            elif rec.status in ("failed", "interrupted", "skipped"):
                begun.pop(key, None)
    return out


def expectations(steps: Sequence[str], samples: Mapping[str, Sequence[float]]) -> dict[str, StepExpectation]:
    """p50/p95 per step: from the samples, else nodegate's default figure (both percentiles)."""
    out = {}
    for step in steps:
        got = samples.get(step) or ()
        if got:
            out[step] = StepExpectation(step, percentile(got, 50), percentile(got, 95), len(got))
        else:
            default = DEFAULT_STEP_S.get(step, DEFAULT_OTHER_STEP_S)
            out[step] = StepExpectation(step, default, default, 0)
    return out


def remaining_steps(steps: Sequence[str], records: Sequence[Any]) -> list[str]:
    """The steps a node still has to do: those not finished in its journal's current attempt (from
    its last ``begin``); an attempt that is complete leaves none (its steps are only re-verified)."""
    last_begin = max((i for i, r in enumerate(records) if r.step == "begin"), default=None)
    if last_begin is None:
        return list(steps)
    current = records[last_begin:]
    if any(r.step == "complete" and r.status == "done" for r in current):
        return []
    latest: dict[str, str] = {}
    for rec in current:
        latest[rec.step] = rec.status
    return [s for s in steps if latest.get(s) not in _FINISHED]


@dataclass(frozen=True)
class NodeEstimate:
    node: str
    steps: tuple[str, ...]          # the steps still to do
    p50: float
    p95: float
    protected_p95: float            # the noout .. unset_noout stretch still to come

    @classmethod
    def of(cls, node: str, steps: Sequence[str], expected: Mapping[str, StepExpectation],
           order: Sequence[str]) -> "NodeEstimate":
        todo = tuple(steps)
        protected = _between(order, PROTECTED_FROM, PROTECTED_TO)
        return cls(node, todo, sum(expected[s].p50 for s in todo), sum(expected[s].p95 for s in todo),
                   sum(expected[s].p95 for s in todo if s in protected))


def _between(order: Sequence[str], first: str, last: str) -> set[str]:
    if first not in order or last not in order:
        return set()
    return set(order[order.index(first):order.index(last) + 1])


@dataclass(frozen=True)
class Decision:
    starts: bool
    reason: str


@dataclass(frozen=True)
class Unit:
    """A node alone, or a batch of nodes upgraded side by side."""
    label: str
    nodes: tuple[NodeEstimate, ...]

    @property
    def p50(self) -> float:
        return max((n.p50 for n in self.nodes), default=0.0)

    @property
    def p95(self) -> float:
        return max((n.p95 for n in self.nodes), default=0.0)

    @property
    def protected_p95(self) -> float:
        return max((n.protected_p95 for n in self.nodes), default=0.0)


def decide(unit: Unit, *, now: float, window_end: float | None,
           maintenance_timeout_s: float | None) -> Decision:
    """Whether ``unit`` may start at ``now`` (epoch seconds): its p95 must end by ``window_end``
    and its protected stretch must stay within ``maintenance_timeout_s`` (None: no such limit)."""
    names = ", ".join(n.node for n in unit.nodes)
    if window_end is not None and now + unit.p95 > window_end:
        left = window_end - now
        return Decision(False, f"{unit.label} ({names}) is expected to take up to {_mins(unit.p95)} (p95) and the "
                               f"window ends in {_mins(max(0.0, left))}")
    if maintenance_timeout_s is not None and unit.protected_p95 > maintenance_timeout_s:
        return Decision(False, f"{unit.label} ({names}) keeps its OSDs down for up to {_mins(unit.protected_p95)} "
                               f"(p95, noout to unset_noout), longer than Rook's osdMaintenanceTimeout "
                               f"{_mins(maintenance_timeout_s)}")
    ends = f"; the window ends in {_mins(window_end - now)}" if window_end is not None else ""
    return Decision(True, f"{unit.label} ({names}): expected {_mins(unit.p50)} (p50), up to {_mins(unit.p95)} "
                          f"(p95){ends}")


@dataclass
class Schedule:
    """The plan's expected timeline: which units fit, their expected ends, and what is left."""
    fits: list[tuple[Unit, float, float]] = field(default_factory=list)   # unit, expected end p50, p95
    left: list[Unit] = field(default_factory=list)
    stop_reason: str = ""


def schedule(units: Sequence[Unit], *, now: float, window_end: float | None,
             maintenance_timeout_s: float | None) -> Schedule:
    """Lay the units end to end from ``now`` by their p95 (the decision rule) and p50 (the expected end)."""
    out = Schedule()
    at50 = at95 = now
    for i, unit in enumerate(units):
        decision = decide(unit, now=at95, window_end=window_end, maintenance_timeout_s=maintenance_timeout_s)
        if not decision.starts:
            out.left = list(units[i:])
            out.stop_reason = decision.reason
            break
        at50 += unit.p50
        at95 += unit.p95
        out.fits.append((unit, at50, at95))
    return out


def _mins(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f} min"


# -- the window -----------------------------------------------------------------------------------

_WINDOW_END = re.compile(r"^(?P<h>\d{1,2}):(?P<m>\d{2})(?:\s*(?P<off>Z|[+-]\d{2}:?\d{2})|\s+(?P<zone>[A-Za-z][\w+/-]*))$")


@dataclass(frozen=True)
class WindowEnd:
    """--window-end HH:MM with a time zone: an offset (23:30+01:00, 23:30Z) or an IANA zone
    (23:30 Europe/Berlin)."""
    hour: int
    minute: int
    tz: dt.tzinfo
    text: str

    def resolve(self, now: dt.datetime) -> dt.datetime:
        """The next time the wall clock of ``tz`` shows HH:MM, from ``now`` (aware) on: a window that
        closes after midnight ends tomorrow."""
        local = now.astimezone(self.tz)
        end = local.replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
        if end <= local:
            end = (local + dt.timedelta(days=1)).replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
        return end


def parse_window_end(text: str) -> WindowEnd:
    """Parse --window-end; ValueError naming the problem and the form expected."""
    match = _WINDOW_END.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not HH:MM with a time zone (e.g. 23:30+01:00, 23:30Z or 23:30 Europe/Berlin)")
    hour, minute = int(match["h"]), int(match["m"])
    if hour > 23 or minute > 59:
        raise ValueError(f"{text!r} is not a time of day (HH 00-23, MM 00-59)")
    if match["off"]:
        off = match["off"]
        if off == "Z":
            tz: dt.tzinfo = dt.timezone.utc
        else:
            sign = -1 if off[0] == "-" else 1
            digits = off[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:])
            if hours > 14 or minutes > 59:
                raise ValueError(f"{off!r} is not a UTC offset")
            tz = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
    else:
        zone = match["zone"]
        if zone.upper() == "UTC":
            tz = dt.timezone.utc
        else:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                tz = ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"{zone!r} is not a known time zone (an IANA name such as Europe/Berlin)") from None
    return WindowEnd(hour, minute, tz, text.strip())


def parse_window_minutes(text: str) -> float:
    """Parse --window-minutes: a positive, finite number of minutes."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of minutes") from None
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"{text!r} is not a positive, finite number of minutes")
    return value
