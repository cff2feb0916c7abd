"""Files the lab's processes share, written so that no reader ever sees half of one.

A lab is several processes and threads at once: the supervisor (a thread per booting node), the
API server, `nodegate lab` commands, Ceph and etcd helpers, tests. A file one of them writes while
another reads must never be seen empty or half written, and two writers must not lose each
other's change. So:

- ``write_atomic``: the new content goes to a temporary file of its own (a unique name, in the same
  folder, so the rename stays on one filesystem), then is renamed over the old file. (No fsync:
  the lab needs every process to see a whole file, not the file to survive a power cut.) rename(2) replaces the name in one step: a reader opens either the whole old file or the
  whole new one. (A plain ``write_text`` truncates first: a reader in between gets an empty file.)
- ``locked``: an exclusive flock(2) on ``<file>.lock`` for a read-modify-write (faults.json) or a
  create-once (the seed pin), between processes and between threads of one process alike (each
  call opens its own descriptor, and flock locks belong to the open file description).
- ``read_json``: a missing file is the default; a file that exists but does not parse is an error
  that names it, never silently the default (a torn read must not turn into "no faults").

This module is the lab's one home for that; it imports nothing from the harness.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


class SharedFileError(Exception):
    """A shared lab file exists but cannot be read as what it should be."""


def write_atomic(path: Path | str, data: str | bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` in one step (temporary file in the same folder, then rename).
    ``mode`` is set on the temporary file before the rename, so a secret is never readable by others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644 if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path | str, data: Any, *, mode: int | None = None, indent: int | None = 2) -> None:
    text = json.dumps(data, indent=indent, sort_keys=False, separators=None if indent else (",", ":"))
    write_atomic(path, text + "\n", mode=mode)


def read_json(path: Path | str, default: Any = None) -> Any:
    """The parsed file; ``default`` when it does not exist. Content that does not parse raises
    SharedFileError naming the file (written by write_atomic, it can only be damaged by hand)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return default
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SharedFileError(f"{path} is not valid JSON ({exc}); it holds {text[:80]!r}") from exc


@contextlib.contextmanager
def locked(path: Path | str, *, shared: bool = False) -> Iterator[None]:
    """Hold an flock on ``<path>.lock`` (exclusive unless ``shared``) for the block."""
    lock = Path(str(path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def update_json(path: Path | str, change: Callable[[Any], Any], *, default: Any = None,
                mode: int | None = None) -> Any:
    """Read, change and write a JSON file under its lock, so concurrent updates are never lost;
    ``change`` gets the current value and returns the new one (which is also returned)."""
    with locked(path):
        new = change(read_json(path, default))
        write_json(path, new, mode=mode)
    return new
