"""A batch of nodes upgraded side by side, one step at a time across the batch.

How a batch runs (nodegate.plugin.batches drives it, one test item per step of the batch):
- every node of the batch has its own Upgrade (its own journal, its own resume decision); they
  share ONE ClusterLock whose Lease names all of them, taken by the first node's ``lock`` step
  and released by the first ``unlock`` (or by the run's teardown after a failure);
- a step runs on every node still going in the batch at once, one thread per node, and the
  next step starts only when every node has ended this one: so the storage gate and the
  postflight run after the whole batch has come back, and a Ctrl-C/SIGTERM (which Python delivers
  to the main thread) never cuts a node's step in half: each node ends the step it is in and the
  batch stops there, at a step boundary the journal records (a second Ctrl-C stops at once; the
  journal then shows the step ``started`` and a rerun re-verifies it);
- a node whose step fails stops where it is (its journal and the failure say where); the other
  nodes finish the batch, and no further batch starts.
The lock and unlock steps run node after node in the calling thread: they touch one shared Lease.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodegate.core.errors import NodegateError
from nodegate.upgrade.preload import import_harness_modules

if TYPE_CHECKING:
    from nodegate.upgrade.engine import EvidenceItem, StepOutcome, Upgrade

log = logging.getLogger("nodegate.rollout")

# Steps that touch the one Lease the batch shares: run node after node, never side by side.
ONE_AT_A_TIME = ("lock", "unlock")
BATCH_STEP = "batch"        # the journal record naming the batch a node is upgraded in


@dataclass
class NodeResult:
    """How one node's step ended in a batch."""
    node: str
    plan: str = ""
    outcome: "StepOutcome | None" = None
    error: BaseException | None = None
    seconds: float = 0.0
    evidence: "list[EvidenceItem]" = field(default_factory=list)


def _one(up: "Upgrade", step: str) -> NodeResult:
    result = NodeResult(up.name)
    started = time.monotonic()
    try:
        result.plan = "\n".join(str(c) for c in up.step(step).plan(up)) or "(no command)"
    except NodegateError as exc:
        result.plan = f"(could not read what this step would do: {exc})"
    try:
        result.outcome = up.perform(step)
    except BaseException as exc:  # noqa: BLE001 - handed back to the caller, who reports it per node
        result.error = exc
    finally:
        result.seconds = time.monotonic() - started
        result.evidence = up.take_evidence()
    return result


def run_step(ups: Sequence["Upgrade"], step: str) -> list[NodeResult]:
    """Run ``step`` on every upgrade of ``ups``: side by side (a thread each), or node after node
    for the steps on the shared lock and for a batch of one (then a Ctrl-C lands inside the step,
    exactly as in a one-at-a-time run)."""
    if len(ups) == 1 or step in ONE_AT_A_TIME:
        out = []
        for up in ups:
            result = _one(up, step)
            if isinstance(result.error, KeyboardInterrupt):
                raise result.error
            out.append(result)
        return out
    results: dict[str, NodeResult] = {}

    def work(up: "Upgrade") -> None:
        results[up.name] = _one(up, step)

    import_harness_modules()    # before the batch's threads: see nodegate.upgrade.preload
    threads = [threading.Thread(target=work, args=(up,), name=f"nodegate-{up.name}", daemon=True) for up in ups]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    except KeyboardInterrupt:
        going = [t.name.removeprefix("nodegate-") for t in threads if t.is_alive()]
        if going:
            log.warning("interrupted: %s end(s) step %s first, then the batch stops there (Ctrl-C again stops at "
                        "once; the journal then shows the step started and a rerun re-verifies it)", ", ".join(going),
                        step)
        for thread in threads:
            thread.join()
        raise
    return [results[up.name] for up in ups]


def record_batch(up: "Upgrade", *, index: int, total: int, nodes: Sequence[str], why: str) -> None:
    """Name the batch in the node's journal (and so on the Node's annotation, which mirrors it)."""
    up.journal.record(BATCH_STEP, "done", detail=f"batch {index} of {total}: {', '.join(nodes)} ({why})",
                      batch=index, batch_nodes=list(nodes), batch_why=why)
    up._annotate()


def cluster_journals(journal_dir: Path) -> list[list[Any]]:
    """Every journal of the cluster (archived ones too: they are earlier runs), read-only."""
    from nodegate.core.journal import Journal

    out = []
    for path in sorted(Path(journal_dir).glob("*.jsonl")):
        journal = Journal.__new__(Journal)
        journal.path = path
        try:
            out.append(journal.records())
        except OSError:
            continue
    return out
