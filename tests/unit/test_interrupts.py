"""A Ctrl-C or SIGTERM that lands inside a finalizer is not lost (nodegate.interrupts).

Real signals in a real Python process: a finalizer (``__del__``) is running when the signal
arrives, so Python hands the KeyboardInterrupt to sys.unraisablehook and goes on. Without the
watch that is the whole story (the control case below: the next wait runs to its end); with it,
the very next checkpoint — here the first poll of a nodegate wait — raises the interrupt.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = r'''
import os, signal, sys, time
from nodegate import interrupts
from nodegate.waits import NotYet, WaitTimeout, wait_for

def on_sigterm(signum, frame):          # as nodegate.procedure_plugin turns SIGTERM into an interrupt
    raise KeyboardInterrupt("SIGTERM")

signal.signal(signal.SIGTERM, on_sigterm)

class Finalizer:
    def __del__(self):
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        until = time.monotonic() + 2
        while time.monotonic() < until:  # the signal's handler runs here, inside __del__
            pass

if sys.argv[2] == "watched":
    interrupts.watch()
Finalizer()
print("went on after the finalizer", flush=True)
started = time.monotonic()
try:
    wait_for(lambda: NotYet("never"), what="nothing", timeout=2, interval=0.2)
except WaitTimeout:
    print("the wait ran to its end: the interrupt was lost", flush=True)
except KeyboardInterrupt as exc:
    print(f"interrupted after {time.monotonic() - started:.2f}s: {exc!r}", flush=True)
    sys.exit(130)
'''


def run(sig: str, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, sig, mode], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_swallowed_by_a_finalizer_is_lost_without_the_watch(sig):
    done = run(sig, "unwatched")
    assert "Exception ignored in: <function Finalizer.__del__" in done.stderr, done.stderr
    assert "KeyboardInterrupt" in done.stderr, done.stderr
    assert done.stdout.splitlines() == ["went on after the finalizer",
                                        "the wait ran to its end: the interrupt was lost"], done.stdout
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("sig, shown", [("SIGINT", "KeyboardInterrupt('')"),
                                        ("SIGTERM", "KeyboardInterrupt('SIGTERM')")])
def test_the_watch_raises_it_again_at_the_next_checkpoint(sig, shown):
    done = run(sig, "watched")
    lines = done.stdout.splitlines()
    assert lines[0] == "went on after the finalizer", done.stdout
    assert len(lines) == 2 and lines[1].startswith("interrupted after ") and lines[1].endswith(shown), done.stdout
    assert float(lines[1].split()[2].rstrip("s:")) < 0.2, lines[1]   # the first poll, not a later one
    assert done.returncode == 130, done.stderr
    what = "SIGTERM" if sig == "SIGTERM" else "SIGINT (Ctrl-C)"
    assert f"{what} arrived while Python was running a finalizer" in done.stderr, done.stderr


def test_watch_and_unwatch_restore_the_previous_hook():
    from nodegate import interrupts

    before = sys.unraisablehook
    interrupts.watch()
    try:
        assert sys.unraisablehook is not before
        interrupts.watch()                         # twice: still one hook in front of the old one
        assert interrupts._previous_hook is before
    finally:
        interrupts.unwatch()
    assert sys.unraisablehook is before
    interrupts.checkpoint()                        # nothing swallowed: nothing raised
