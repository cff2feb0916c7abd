"""Which attempt of a node's upgrade this run is: a journal is resumed only when it describes the
live node and the cluster's record agrees (nodegate.cluster.resume); a stale one is put aside
(renamed, never deleted) and the run starts from the gate; --restart-journal sets it aside unjudged.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nodegate.cluster.resume import REFUSE, RESTART_OPTION, STALE
from nodegate.core.incarnation import INCARNATION_KEY
from nodegate.core.journal import StepRecord
from nodegate.upgrade.engine import StepFailed

if TYPE_CHECKING:
    from nodegate.cluster.resume import Judgement
    from nodegate.core.incarnation import Incarnation
    from nodegate.upgrade.engine import Upgrade

log = logging.getLogger("nodegate.upgrade")


def begin_attempt(up: "Upgrade", *, record: bool = True) -> str:
    """Decide whether this run resumes an upgrade in progress or starts one; returns what it decided.
    A journal is resumed only when it describes the live node and the cluster's record agrees
    (nodegate.cluster.resume); a stale one is put aside (renamed) and the run starts from the
    gate. With ``record=False`` (plan mode) nothing is written or renamed."""
    records = up.journal.records()
    last_begin = max((i for i, r in enumerate(records) if r.step == "begin"), default=None)
    current = records[last_begin:] if last_begin is not None else []
    complete = any(r.step == "complete" and r.status == "done" for r in current)
    resumable = bool(current) and (not complete or up.live_release() == up.target.version)
    said = ""
    if up.options.restart_journal:      # nothing is judged: a new journal starts from the gate
        if records:
            said = set_aside(up, f"{RESTART_OPTION} was given", record=record, stale=False) + "; "
        resumable = False
    elif current or not records:
        # a finished attempt is judged too: a stale journal is put aside even when it is not resumed
        judged = judge_attempt(up, current or None)
        if judged is not None and judged.verdict == REFUSE:
            raise StepFailed(judged.text, fix=judged.fix)
        if judged is not None and judged.verdict == STALE:
            log.warning("%s", judged.text)
            said = set_aside(up, judged.text, record=record, stale=True) + "; "
            resumable = False
        elif judged is not None and resumable:
            up.agreement = judged.agreement
            up.start_attempt_at(last_begin or 0)
            if complete:
                return (f"{up.name} was upgraded to {up.target.version} by run {current[-1].run_id}: "
                        f"every step is re-verified ({judged.text})")
            where = last_step(current)
            return (f"resuming the upgrade of {up.name} to {up.target.version} begun in run "
                    f"{current[0].run_id} (last recorded: {where}); {judged.text}")
    up.start_attempt_at(len(up.journal.records()) if record else len(records))
    if not record:
        return said + f"would start the upgrade of {up.name} to {up.target.version} from the gate"
    live = live_incarnation(up)
    up.journal.record("begin", "started", detail=f"upgrade of {up.name} to {up.target.version}",
                      target=up.target.version, ticket=up.options.ticket, **{INCARNATION_KEY: live.as_data()})
    up.start_attempt_at(len(up.journal.records()) - 1)
    return said + f"starting the upgrade of {up.name} to {up.target.version} (run {up.options.run_id})"


def live_incarnation(up: "Upgrade") -> "Incarnation":
    from nodegate.cluster.node_identity import incarnation
    from nodegate.cluster.resume import wait_for_node

    kube = up.need_kube()
    live = wait_for_node(up.nodes, up.name, timeout=up.profile.upgrade.reboot_timeout_s(up.node),
                         read=lambda host: incarnation(host, kube, up.kube_name))
    missing = live.missing()
    if missing:
        raise StepFailed(f"could not read what identifies {up.name}: {', '.join(missing)} (a journal is bound "
                         "to the node it describes)", fix="make the node and the API answer, then run again")
    return live


def judge_attempt(up: "Upgrade", current: "Sequence[StepRecord] | None") -> "Judgement | None":
    """The journal's attempt judged against the live node and the Node annotation; with no
    journal (``current`` None), a refusal when the annotation shows another journal's upgrade."""
    from nodegate.cluster.resume import Judgement, foreign_open_upgrade, judge, read_annotation

    if up.kube is None:    # plan mode without the API: nothing to compare with
        return None
    annotation = read_annotation(up.kube, up.kube_name)
    if current is None:
        foreign = foreign_open_upgrade(annotation, node=up.name, target=up.target.version,
                                       journal_path=str(up.journal.path))
        if foreign is None:
            return None
        from nodegate.core.incarnation import FOREIGN, Agreement

        return Judgement(REFUSE, foreign, live=None, agreement=Agreement(FOREIGN, foreign),  # type: ignore[arg-type]
                         fix=f"run the same command from the machine that holds that journal (or copy it to "
                             f"{up.journal.path}); or, to start again from the gate here, add {RESTART_OPTION}")
    return judge(records=current, live=live_incarnation(up), annotation=annotation, node=up.name,
                 target=up.target.version, journal_path=str(up.journal.path))


def set_aside(up: "Upgrade", reason: str, *, record: bool, stale: bool) -> str:
    what = "the journal is stale" if stale else "the journal is set aside"
    if not record:
        return f"{what} ({reason}): the run would keep it aside, renamed, and start from the gate"
    kept = up.journal.archive(reason)
    log.warning("%s: %s; kept as %s; starting from the gate", up.name, what, kept)
    return f"{what} ({reason}); kept as {kept} (renamed, not deleted); starting from the gate"


def last_step(records: Sequence[StepRecord]) -> str:
    last = next((r for r in reversed(records) if r.step != "begin"), None)
    return f"step {last.step} {last.status}" if last else "nothing after the start"
