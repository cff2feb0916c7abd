"""Ctrl-C and SIGTERM are never lost on their way to the run.

Python raises KeyboardInterrupt in the main thread wherever it happens to be when SIGINT arrives
(nodegate raises one for SIGTERM too, so both end a run the same way). If that is inside a
finalizer, the interrupt can vanish:
- an object's ``__del__``, a weakref callback, a generator closed by the garbage collector: Python
  hands the exception to ``sys.unraisablehook`` ("Exception ignored in ...") and goes on;
- the ``close()`` that an I/O object's finalizer calls (an HTTP response, a file, a socket
  wrapper): Python drops the exception without a word (``iobase_finalize`` clears it).

Finalizers run most just as a step ends and its objects are freed, which is when an operator
presses Ctrl-C. The lab's interrupt scenario caught it: one Ctrl-C at the end of the lock step
was raised inside ``http.client.HTTPResponse.close``, called by the response's finalizer, and the
run drained the node and went on as if nothing had happened.

So nodegate raises its own KeyboardInterrupt and keeps a weak reference to it. While the interrupt
is on its way up (or being handled) it is alive; once it is gone without the run having stopped
(pytest's ``pytest_keyboard_interrupt`` calls ``stopping()``), it was lost, and ``checkpoint()``
raises it again. The checkpoints sit before every command on a node, every API request, every
poll of a wait and every step, so a lost interrupt takes effect within one command.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import weakref
from typing import Any

log = logging.getLogger("nodegate.interrupts")


class Interrupt(KeyboardInterrupt):
    """The KeyboardInterrupt nodegate raises for SIGINT and SIGTERM: a subclass only so that a
    weak reference can tell whether it is still on its way. It is shown as Python's own
    (``KeyboardInterrupt: SIGTERM``), the words operators know and pytest prints."""
    __module__ = "builtins"
    __qualname__ = "KeyboardInterrupt"


Interrupt.__name__ = "KeyboardInterrupt"


_raised: weakref.ref | None = None       # the interrupt raised last, until it is seen through
_raised_what = ""                         # "" for SIGINT (as Python's own), "SIGTERM"
_swallowed = False                        # a finalizer reported swallowing an interrupt
_stopping = False                         # the interrupt reached pytest: the run is ending
_previous: dict[Any, Any] = {}            # what watch() replaced: signal numbers, "unraisablehook"


def _raise_interrupt(what: str) -> Interrupt:
    # Made here, not in the handler: a local of the handler's frame would tie the exception into a
    # cycle with its own traceback, keeping a swallowed interrupt alive until the cyclic GC runs.
    global _raised, _raised_what, _swallowed
    interrupt = Interrupt(what) if what else Interrupt()
    _raised, _raised_what, _swallowed = weakref.ref(interrupt), what, False
    return interrupt


def on_signal(signum: int, frame: Any) -> None:
    raise _raise_interrupt("SIGTERM" if signum == signal.SIGTERM else "")


def _unraisable(unraisable: Any) -> None:
    global _swallowed
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
        _swallowed = True   # pytest's hook (called next) keeps the exception alive in its report queue
    previous = _previous.get("unraisablehook")
    if previous is not None:
        previous(unraisable)


def watch(*, sigterm: bool) -> None:
    """Raise nodegate's interrupt for SIGINT (unless it is ignored, as in a background job) and,
    with ``sigterm``, for SIGTERM; note what finalizers swallow. Undone by ``unwatch()``."""
    global _raised, _swallowed, _stopping
    if _previous or threading.current_thread() is not threading.main_thread():
        return   # watching already, or an embedded run outside the main thread: Python's defaults apply
    _raised, _swallowed, _stopping = None, False, False
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        _previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_signal)
    if sigterm:
        _previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_signal)
    _previous["unraisablehook"] = sys.unraisablehook
    sys.unraisablehook = _unraisable


def unwatch() -> None:
    global _raised, _swallowed
    if threading.current_thread() is not threading.main_thread():
        return
    for key, old in list(_previous.items()):
        if key == "unraisablehook":
            if sys.unraisablehook is _unraisable:
                sys.unraisablehook = old
        elif signal.getsignal(key) is on_signal:
            signal.signal(key, old)
    _previous.clear()
    _raised, _swallowed = None, False


def stopping() -> None:
    """The interrupt reached pytest: the teardown that follows (lock release, the word on where the
    node stands) must not be cut short by raising it again."""
    global _stopping, _raised
    _stopping, _raised = True, None


def checkpoint() -> None:
    """Raise again the interrupt that was lost on its way (in the main thread only: the read-ahead
    threads must not end with it)."""
    global _raised
    if _raised is None or _stopping or threading.current_thread() is not threading.main_thread():
        return
    if _raised() is not None and not _swallowed:
        return   # still on its way up, or being handled
    what = _raised_what or "SIGINT (Ctrl-C)"
    _raised = None
    log.warning("%s was lost while Python ran a finalizer (it cannot raise there); stopping now", what)
    raise _raise_interrupt(_raised_what)
