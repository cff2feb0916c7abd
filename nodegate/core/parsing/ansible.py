"""Parsers of ansible-playbook output: the PLAY RECAP and the tasks that failed.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from nodegate.core.parsing.system import strip_ansi


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
