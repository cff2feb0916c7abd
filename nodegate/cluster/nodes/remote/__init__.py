"""Programs that run on a node (``python3 -c SOURCE ARGS``, python3 is there: Ansible needs it), so
that reading, editing and writing each file is one atomic step that needs no quoting through a
shell. They are plain Python files of this package, read as package data, never imported.
"""
from __future__ import annotations

from importlib import resources


def remote_program(name: str) -> str:
    """The source of the node-side program ``name`` (a module of this package)."""
    return resources.files(__package__).joinpath(f"{name}.py").read_text(encoding="utf-8")
