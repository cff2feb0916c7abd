"""Ctrl-C and SIGTERM are never lost on their way to the run.

Python raises KeyboardInterrupt in the main thread wherever it is when SIGINT arrives (and
nodegate's SIGTERM handler raises one too, so both end a run the same way). If the main thread is
then running a finalizer — an object's ``__del__`` (a finished subprocess, a closed connection), a
weakref callback, a generator the garbage collector closes — Python cannot raise the exception
there: it hands it to ``sys.unraisablehook`` ("Exception ignored in ...") and carries on as if no
signal had come. Finalizers run most just as a step ends and its objects are freed, which is when
an operator presses Ctrl-C; in the lab's interrupt scenario about one Ctrl-C in 150 was lost that
way, and the run went on through five more steps.

``watch()`` puts a hook in front of the unraisable hook that notes such a swallowed interrupt, and
``checkpoint()`` raises it again where it can travel: before every command on a node, every API
request, every poll of a wait and every step. The delay is one command at most.
"""
from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Callable

log = logging.getLogger("nodegate.interrupts")

_swallowed: str | None = None           # the lost interrupt: "SIGINT (Ctrl-C)" or "SIGTERM"
_previous_hook: Callable[[Any], object] | None = None
_stopping = False                        # an interrupt reached pytest: the run is ending anyway


def _hook(unraisable: Any) -> None:
    global _swallowed
    if (not _stopping and isinstance(unraisable.exc_value, KeyboardInterrupt)
            and threading.current_thread() is threading.main_thread()):
        _swallowed = str(unraisable.exc_value) or "SIGINT (Ctrl-C)"
    if _previous_hook is not None:
        _previous_hook(unraisable)   # pytest's own hook still reports it (as a warning)


def watch() -> None:
    """Start noting interrupts that a finalizer swallows (until ``unwatch()``)."""
    global _previous_hook, _swallowed, _stopping
    if sys.unraisablehook is _hook:
        return
    _previous_hook, _swallowed, _stopping = sys.unraisablehook, None, False
    sys.unraisablehook = _hook


def unwatch() -> None:
    global _previous_hook, _swallowed
    if sys.unraisablehook is _hook and _previous_hook is not None:
        sys.unraisablehook = _previous_hook
    _previous_hook, _swallowed = None, None


def stopping() -> None:
    """The interrupt reached pytest: the teardown that follows (lock release, the word on where the
    node stands) must not be cut short by an interrupt that was lost before it."""
    global _stopping, _swallowed
    _stopping, _swallowed = True, None


def checkpoint() -> None:
    """Raise the KeyboardInterrupt that a finalizer swallowed, if there is one (in the main thread
    only: the read-ahead threads must not end with it)."""
    global _swallowed
    if _swallowed is None or threading.current_thread() is not threading.main_thread():
        return
    what, _swallowed = _swallowed, None
    log.warning("%s arrived while Python was running a finalizer, which cannot pass it on; stopping now", what)
    raise KeyboardInterrupt(what if what == "SIGTERM" else "")
