"""The apt repair on a node: one Python program, run with the node's python3, that reads the
node's sources, applies nodegate.core.aptrepair's plan and writes files atomically.

The program (nodegate/cluster/nodes/remote/apt_repair.py) is preceded by the two pure modules
(nodegate.core.aptsources and aptrepair) as their own source text, registered under their names,
so the node runs the very logic the unit tests cover; python3 is on every node (Ansible needs it). It prints one JSON object: the files changed, keyrings written, notes.
"""
from __future__ import annotations

import json
from pathlib import Path

from nodegate.cluster.nodes.remote import remote_program
from nodegate.core import aptrepair, aptsources


def _module_text(module) -> str:
    return Path(module.__file__).read_text()


def program() -> str:
    """The node-side program: both modules defined under their own names, then the repair."""
    return "\n".join([
        "import sys, types",
        "def _load(name, text):",
        "    mod = types.ModuleType(name)",
        "    mod.__file__ = '<nodegate ' + name + '>'",
        "    sys.modules[name] = mod",
        "    exec(compile(text, mod.__file__, 'exec'), mod.__dict__)",
        "    return mod",
        "for _pkg in ('nodegate', 'nodegate.core'):",
        "    sys.modules.setdefault(_pkg, types.ModuleType(_pkg))",
        f"aptsources = _load('nodegate.core.aptsources', {_module_text(aptsources)!r})",
        "sys.modules['nodegate.core'].aptsources = aptsources",
        f"aptrepair = _load('nodegate.core.aptrepair', {_module_text(aptrepair)!r})",
        remote_program("apt_repair"),
    ])


def parse_output(stdout: str) -> dict:
    """The program's JSON line (the last line that parses)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    raise ValueError(f"the apt repair program printed no result: {stdout[-300:]!r}")


def summary(result: dict) -> str:
    parts = []
    if result.get("notes"):
        parts.append("sources: " + "; ".join(result["notes"]))
    if result.get("removed"):
        parts.append("removed " + ", ".join(result["removed"]))
    if result.get("keyrings"):
        parts.append("keyrings " + ", ".join(result["keyrings"]))
    if result.get("legacy"):
        parts.append(f"legacy keyring moved to {result['legacy']}")
    return "; ".join(parts)
