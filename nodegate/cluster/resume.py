"""Before a run resumes an upgrade from its journal: does the journal describe the live node, and
does the cluster's record of the upgrade (the Node annotation ``nodegate.io/upgrade``) agree?

The judgement is pure (nodegate.core.incarnation); this module reads the live facts and puts
them together. The procedure (nodegate.upgrade, ``Upgrade.begin``) acts on the answer: resume,
archive a stale journal and start from the gate, or refuse with a named fix.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodegate.core.incarnation import (
    ABSENT,
    FOREIGN,
    INCARNATION_KEY,
    Agreement,
    Incarnation,
    annotation_agreement,
    annotation_names_open_upgrade,
    boot_history,
    stale_reasons,
)
from nodegate.core.journal import ANNOTATION, StepRecord

if TYPE_CHECKING:
    from nodegate.cluster.kube.client import Kube
    from nodegate.cluster.nodes.ssh import Nodes

log = logging.getLogger("nodegate.resume")

RESTART_OPTION = "--restart-journal"
RESUME = "resume"        # the journal describes the node and the cluster agrees (or says nothing)
STALE = "stale"          # the journal describes another incarnation: put it aside, start from the gate
REFUSE = "refuse"        # the cluster's record names another journal: nothing is decided on trust


@dataclass(frozen=True)
class Judgement:
    verdict: str
    text: str
    live: Incarnation
    agreement: Agreement
    fix: str | None = None


def read_annotation(kube: "Kube", node: str) -> dict[str, Any] | None:
    raw = kube.node(node).annotations.get(ANNOTATION)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return {"run": None, "step": None, "status": None, "target": None, "unreadable": raw[:200]}
    return value if isinstance(value, dict) else {"unreadable": raw[:200]}


def recorded_incarnation(records: Sequence[StepRecord]) -> Incarnation | None:
    """The incarnation the attempt's ``begin`` record bound it to (None: an older journal)."""
    for rec in records:
        if rec.step == "begin":
            return Incarnation.from_data(rec.data.get(INCARNATION_KEY))
    return None


def judge(*, records: Sequence[StepRecord], live: Incarnation, annotation: dict[str, Any] | None, node: str,
          target: str, journal_path: str) -> Judgement:
    """Whether the attempt in ``records`` (from its ``begin`` on) may be resumed on the live node."""
    recorded = recorded_incarnation(records)
    history = boot_history(recorded, (r.data for r in records))
    reasons = stale_reasons(recorded, live, history)
    agreement = annotation_agreement(annotation, target=target,
                                     records=[(r.run_id, r.step, r.status, r.at) for r in records])
    if reasons:
        return Judgement(STALE, f"the journal {journal_path} does not describe the live {node}: "
                         + "; ".join(reasons), live, agreement)
    if agreement.kind == FOREIGN:
        return Judgement(REFUSE, f"the journal {journal_path} and the cluster disagree about {node}: "
                         f"{agreement.detail}; another journal (another machine's run) drives this upgrade",
                         live, agreement,
                         fix=f"run the same command from the machine whose journal holds run "
                             f"{(annotation or {}).get('run')} (or copy that journal to {journal_path}); or, to "
                             f"start again from the gate here, add {RESTART_OPTION} (this journal is kept, renamed)")
    text = agreement.detail if agreement.kind != ABSENT else (
        f"{agreement.detail}: nothing recorded is taken on trust, every finished step is proven on the node")
    return Judgement(RESUME, f"the journal describes the live {node} (machine-id, Node uid, cluster uid and boot "
                     f"match); {text}", live, agreement)


def foreign_open_upgrade(annotation: dict[str, Any] | None, *, node: str, target: str,
                         journal_path: str) -> str | None:
    """With no journal here: the annotation of an upgrade under way that another journal drives,
    in words for the refusal (None: nothing is under way)."""
    if not annotation_names_open_upgrade(annotation):
        return None
    return (f"{node} carries the annotation of an upgrade under way (run {annotation.get('run')}, target "
            f"{annotation.get('target')}, step {annotation.get('step')} {annotation.get('status')}) and this "
            f"machine has no journal of it at {journal_path}")


def wait_for_node(nodes: "Nodes", node: str, *, timeout: float, read):
    """``read(host)`` once the node answers over SSH (it may be rebooting at the moment a rerun
    starts: the reboot an interrupted run asked for), bounded by the node's reboot limit."""
    from nodegate.cluster.nodes.ssh import CommandFailed, SshConnectError
    from nodegate.core.errors import TransientError
    from nodegate.core.waits import Done, NotYet, wait_for

    def probe():
        try:
            return Done(read(nodes.reconnect(node)))
        except SshConnectError as exc:
            if not isinstance(exc, TransientError):
                raise   # a host key or login refused does not change by waiting: say so now
            return NotYet(str(exc).splitlines()[0])
        except CommandFailed as exc:
            if exc.result.rc == 255:
                return NotYet("ssh exited 255 (the node is going down or coming up)")
            raise

    return wait_for(probe, what=f"{node} answering over SSH (to check its journal against it)", timeout=timeout,
                    interval=0.5, progress_every=5.0,
                    fix=f"reach {node} (it does not answer over SSH); then run the same command again")
