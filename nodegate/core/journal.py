"""The journal: what an upgrade of one node has done so far, so that a rerun resumes.

One append-only JSON-lines file per (cluster, node, target release) under
`reports/runs/journal/`, shared by every run of that upgrade: a rerun after a failure or an
interruption reads it to know which steps finished and what they recorded (the held package
versions of step 5 are needed again in step 12). Each line is flushed and fsynced before the
step it announces starts, so a crash leaves at worst a `started` line without its end — which
the rerun treats as "re-verify this step", never as "done".

The same summary is mirrored on the Node as an annotation (by the procedure, through
nodegate.cluster.kube.client) so another machine can see that a node is mid-upgrade.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("started", "done", "skipped", "failed", "interrupted", "archived")
ANNOTATION = "nodegate.io/upgrade"


def new_run_id(now: float | None = None) -> str:
    """A run id that sorts by time and is unique enough for one operator's laptop."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class StepRecord:
    step: str
    status: str
    at: float
    run_id: str
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class Journal:
    """Append-only progress record of one node's upgrade to one target release."""

    def __init__(self, *, root: Path, cluster: str, node: str, target: str, run_id: str) -> None:
        self.node = node
        self.target = target
        self.run_id = run_id
        self.path = Path(root) / "journal" / _safe(cluster) / f"{_safe(node)}-{_safe(target)}.jsonl"

    def record(self, step: str, status: str, *, detail: str = "", **data: Any) -> StepRecord:
        if status not in STATUSES:
            raise ValueError(f"journal status {status!r} is not one of {STATUSES}")
        rec = StepRecord(step=step, status=status, at=time.time(), run_id=self.run_id, detail=detail, data=data)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"step": rec.step, "status": rec.status, "at": rec.at, "run_id": rec.run_id,
                           "detail": rec.detail, "data": rec.data}, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return rec

    def siblings(self) -> list["Journal"]:
        """The journals of every node of the same cluster (earlier runs included), read-only."""
        out = []
        for path in sorted(self.path.parent.glob("*.jsonl")):
            other = Journal.__new__(Journal)
            other.node, other.target, other.run_id, other.path = path.stem, "", self.run_id, path
            out.append(other)
        return out

    def records(self) -> list[StepRecord]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                raw = json.loads(line)
                out.append(StepRecord(step=str(raw["step"]), status=str(raw["status"]), at=float(raw["at"]),
                                      run_id=str(raw["run_id"]), detail=str(raw.get("detail", "")),
                                      data=dict(raw.get("data") or {})))
            except (ValueError, KeyError, TypeError):
                # A line cut short by a crash mid-write: ignore it, the step is re-verified anyway.
                continue
        return out

    def status_of(self, step: str) -> str | None:
        """The latest status recorded for `step`, or None if it never started."""
        latest = None
        for rec in self.records():
            if rec.step == step:
                latest = rec.status
        return latest

    def finished(self, step: str) -> bool:
        return self.status_of(step) in ("done", "skipped")

    def value(self, key: str, default: Any = None) -> Any:
        """The latest value recorded under `key` by any step of any run."""
        return latest_value(self.records(), key, default)

    def last(self) -> StepRecord | None:
        recs = self.records()
        return recs[-1] if recs else None

    def completed(self) -> bool:
        """True when a run finished the whole upgrade (the final step is done)."""
        last = self.last()
        return last is not None and last.step == "complete" and last.status == "done"

    def archive(self, reason: str) -> Path | None:
        """Put this journal aside (renamed beside itself, never deleted), its last line saying why;
        the next record starts a new journal at the same path. Returns where it went (None: no journal)."""
        if not self.path.exists():
            return None
        self.record("journal", "archived", detail=reason[:2000])
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = self.path.with_name(f"{self.path.stem}.archived-{stamp}-{_safe(self.run_id)}.jsonl")
        os.replace(self.path, kept)
        return kept

    def summary(self) -> dict[str, Any]:
        """Small JSON-able state for the Node annotation (no secrets, no command output)."""
        records = self.records()
        last = records[-1] if records else None
        summary = {
            "run": self.run_id, "target": self.target,
            "step": last.step if last else None, "status": last.status if last else None,
            "at": int(last.at) if last else None,
        }
        batch = latest_value(records, "batch_nodes")
        if batch:     # upgraded side by side with other nodes (--parallel): which batch
            summary["batch"] = f"{latest_value(records, 'batch')}: {','.join(batch)}"
        return summary


def _safe(text: str) -> str:
    # Names come from the profile; keep them to one path component whatever they contain.
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return safe if safe.strip(".") else "_" * max(1, len(safe))   # never '', '.' or '..'


def latest_value(records: Iterable[StepRecord], key: str, default: Any = None) -> Any:
    """The value the last of ``records`` that has ``key`` in its data recorded under it."""
    found = default
    for rec in records:
        if key in rec.data:
            found = rec.data[key]
    return found
