"""A Ctrl-C or SIGTERM that lands inside a finalizer is not lost (nodegate.core.interrupts).

Real signals in a real Python process: a finalizer is running when the signal arrives, so the
KeyboardInterrupt cannot travel. Two kinds, both seen in the lab:
- ``del``: an object's ``__del__``; Python reports "Exception ignored in …" and goes on;
- ``io``: the ``close()`` an I/O object's finalizer calls (as ``http.client.HTTPResponse.close``
  did); Python drops the exception without a word.

Without nodegate's watch (the control case) the next wait runs to its end; with it, the very next
checkpoint — the first poll of a nodegate wait — raises the interrupt.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = r'''
import io, os, signal, sys, time
from nodegate.core import interrupts
from nodegate.core.waits import NotYet, WaitTimeout, wait_for

SIG, KIND, MODE = sys.argv[1:4]

def busy():                          # the signal's handler runs in here, inside the finalizer
    os.kill(os.getpid(), getattr(signal, SIG))
    until = time.monotonic() + 2
    while time.monotonic() < until:
        pass

class Finalizer:
    def __del__(self):
        busy()

class Stream(io.RawIOBase):
    def close(self):                 # called by the I/O finalizer, which drops what it raises
        busy()
        super().close()

if MODE == "watched":
    interrupts.watch(sigterm=True)
else:                                # Python's own SIGINT handling; SIGTERM raising as nodegate's does
    def plain(signum, frame):
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, plain)
Finalizer() if KIND == "del" else Stream()
print("went on after the finalizer", flush=True)
polls = []
try:
    wait_for(lambda: polls.append(1) or NotYet("never"), what="nothing", timeout=2, interval=0.2)
except WaitTimeout:
    print("the wait ran to its end: the interrupt was lost", flush=True)
except KeyboardInterrupt as exc:
    print(f"interrupted after {len(polls)} poll(s): {type(exc).__name__}({str(exc)!r})", flush=True)
    sys.exit(130)
'''


def run(sig: str, kind: str, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, sig, kind, mode], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("kind", ["del", "io"])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_in_a_finalizer_is_lost_without_the_watch(sig, kind):
    done = run(sig, kind, "unwatched")
    assert done.stdout.splitlines() == ["went on after the finalizer",
                                        "the wait ran to its end: the interrupt was lost"], done.stdout + done.stderr
    assert done.returncode == 0, done.stderr
    if kind == "del":
        assert "Exception ignored in: <function Finalizer.__del__" in done.stderr, done.stderr
    else:
        assert "KeyboardInterrupt" not in done.stderr, done.stderr      # not a word


@pytest.mark.parametrize("kind", ["del", "io"])
@pytest.mark.parametrize("sig, shown", [("SIGINT", "KeyboardInterrupt('')"),
                                        ("SIGTERM", "KeyboardInterrupt('SIGTERM')")])
def test_the_watch_raises_it_again_at_the_next_checkpoint(sig, shown, kind):
    done = run(sig, kind, "watched")
    lines = done.stdout.splitlines()
    assert lines[0] == "went on after the finalizer", done.stdout + done.stderr
    assert len(lines) == 2 and lines[1].startswith("interrupted after ") and lines[1].endswith(shown), done.stdout
    assert int(lines[1].split()[2]) <= 1, lines[1]   # at the first poll, not a later one
    assert done.returncode == 130, done.stderr
    what = "SIGTERM" if sig == "SIGTERM" else "SIGINT (Ctrl-C)"
    assert f"{what} was lost while Python ran a finalizer" in done.stderr, done.stderr


def test_an_interrupt_on_its_way_is_not_raised_twice():
    """While the interrupt travels (or is handled), a checkpoint — say in the journal write of the
    step's except block — must not raise a second one."""
    import signal

    from nodegate.core import interrupts

    interrupts.watch(sigterm=False)
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            try:
                interrupts.on_signal(signal.SIGINT, None)
            except KeyboardInterrupt:
                interrupts.checkpoint()          # handled here: alive, so nothing is raised
                raise
        assert str(caught.value) == "" and isinstance(caught.value, KeyboardInterrupt)
        interrupts.stopping()                    # pytest_keyboard_interrupt: the run is ending
        del caught
        interrupts.checkpoint()                  # the teardown goes on undisturbed
    finally:
        interrupts.unwatch()


def test_watch_and_unwatch_restore_what_was_there():
    import signal

    from nodegate.core import interrupts

    hook, sigint, sigterm = sys.unraisablehook, signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupts.watch(sigterm=True)
    try:
        assert sys.unraisablehook is not hook
        assert signal.getsignal(signal.SIGTERM) is interrupts.on_signal
        interrupts.watch(sigterm=True)             # twice: still one layer in front of the old ones
    finally:
        interrupts.unwatch()
    assert (sys.unraisablehook, signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == (hook, sigint, sigterm)
    interrupts.checkpoint()                        # nothing raised: nothing to raise again
