"""The faults this server honours, read from DIR/faults.json (written by `nodegate lab fault`).

`{"<fault>": {"nodes": [...], "since": epoch, ...params}}`; the file is re-read when its
mtime changes, so setting or clearing a fault takes effect within one poll.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PDB_BLOCK = "pdb-block"
API_FLAKY = "api-flaky"
CSI_RBD_BROKEN = "csi-rbd-broken"


@dataclass(frozen=True)
class Flakiness:
    ratio: float
    mode: str          # "503", "drop", "mixed" (429/500/503 answers and drops) or "outage" (every request dropped)
    until: float


class Faults:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self.data: dict = {}

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when the set of faults changed."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            data = json.loads(self.path.read_text()) if mtime is not None else {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return False
        changed = data != self.data
        self.data = data if isinstance(data, dict) else {}
        if changed:
            log.info("faults now: %s", ", ".join(sorted(self.data)) or "none")
        return changed

    def nodes(self, fault: str) -> set[str]:
        entry = self.data.get(fault)
        return set(entry.get("nodes") or []) if isinstance(entry, dict) else set()

    def flakiness(self, now: float | None = None) -> Flakiness | None:
        entry = self.data.get(API_FLAKY)
        if not isinstance(entry, dict):
            return None
        now = time.time() if now is None else now
        since = float(entry.get("since", now))
        for_s = entry.get("for_s")
        until = since + float(for_s) if for_s is not None else float("inf")
        if not since <= now < until:
            return None
        mode = str(entry.get("mode", "mixed"))
        ratio = 1.0 if mode == "outage" else float(entry.get("ratio", 0.5))
        return Flakiness(ratio=ratio, mode=mode, until=until)

    @staticmethod
    def roll(flaky: Flakiness) -> str | None:
        """What to do with one request: None (answer it), "429", "500", "503" or "drop"."""
        if random.random() >= flaky.ratio:
            return None
        if flaky.mode == "mixed":
            # What an overloaded control plane answers: APF throttling, etcd timeouts, a
            # restarting apiserver behind its load balancer, a reset connection.
            return random.choice(("429", "500", "503", "drop"))
        return "drop" if flaky.mode in ("drop", "outage") else "503"
