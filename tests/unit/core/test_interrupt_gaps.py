"""A Ctrl-C that lands between a wrapper's start and its registration does not strand it
(nodegate.core.interrupts.on_signal).

pluggy starts a hook wrapper (runs it to its `yield`) and then appends it to the teardowns it will
resume; a `with` statement calls a context manager's __enter__ (which runs its generator to the
`yield`) and then holds on to its __exit__. Python runs signal handlers at the end of every call,
so a KeyboardInterrupt can be raised just after the start and before the registration: the wrapper
is never resumed, and is closed only at interpreter exit, after pytest stopped capturing. pytest's
capture wrappers then fail in their `finally`: "Exception ignored in: <generator object
CaptureManager.pytest_runtest_call …> … AssertionError", seen once in a clean `make test` after a
SIGINT of the interrupt scenario.

A real signal hits that gap once in many hundred interrupts, so the test puts it there on purpose: a
trace function stops the pytest run at the first instruction after the start of pytest's capture
wrapper (or of its item_capture context manager) and calls the process's SIGINT handler there,
exactly as Python calls it when a signal is pending. With Python's own handler (the control case)
the symptom appears; with nodegate's, the interrupt ends the run cleanly.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

CONFTEST = textwrap.dedent(r'''
    import inspect, os, signal, sys
    from nodegate.core import interrupts

    GAP, MODE = os.environ["GAP"], os.environ["MODE"]
    fired = []

    def suspended(gen, qualname):
        return (inspect.isgenerator(gen) and inspect.getgeneratorstate(gen) == inspect.GEN_SUSPENDED
                and gen.gi_code.co_qualname == qualname)

    def in_the_gap(frame):
        if GAP == "multicall" and frame.f_code.co_name == "_multicall":
            gen = frame.f_locals.get("function_gen")
            return suspended(gen, "CaptureManager.pytest_runtest_call") and \
                not any(t is gen for t in frame.f_locals.get("teardowns") or ())
        if GAP == "context" and frame.f_code.co_qualname == "_GeneratorContextManager.__enter__":
            return suspended(getattr(frame.f_locals.get("self"), "gen", None), "CaptureManager.item_capture")
        return False

    pending = []

    def deliver(frame):
        """What Python does with a pending SIGINT at this instruction: call the handler. A handler
        that asks for the signal again (nodegate's, in a gap) leaves it pending: caught here by a
        stand-in handler, so that it is delivered at a later instruction of the traced frames (each
        one a check: stricter than Python, which checks at the end of calls and at loops)."""
        handler = signal.getsignal(signal.SIGINT)
        again = []
        signal.signal(signal.SIGINT, lambda signum, f: again.append(signum))
        try:
            handler(signal.SIGINT, frame)
        finally:
            signal.signal(signal.SIGINT, handler)
        return bool(again)

    def local(frame, event, arg):
        if event != "opcode":
            return local
        if not fired and in_the_gap(frame):
            fired.append(1)
            pending.append(1)
        if pending and not deliver(frame):
            pending.clear()
        return local

    def global_trace(frame, event, arg):
        if frame.f_code.co_name in ("_multicall", "__enter__"):
            frame.f_trace_opcodes = True
            return local
        return None

    def pytest_sessionstart(session):
        if MODE == "nodegate":
            interrupts.watch(sigterm=False)

    def pytest_runtest_setup(item):
        sys.settrace(global_trace)

    def pytest_sessionfinish(session):
        print(f"gap reached: {bool(fired)}", file=sys.stderr)
''')


def run(tmp_path, gap: str, mode: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_one.py").write_text("def test_one():\n    print('inside the test')\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"GAP": gap, "MODE": mode, "PATH": "/usr/bin:/bin"}, preexec_fn=_sigint_at_default)


def _sigint_at_default() -> None:
    """A suite started in the background by a shell without job control inherits SIGINT ignored,
    and Python then installs no KeyboardInterrupt handler: the child starts as from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("gap", ["multicall", "context"])
def test_python_alone_strands_the_capture_wrapper(tmp_path, gap):
    """The control case: the symptom, reproduced at will."""
    done = run(tmp_path, gap, "python")
    assert "gap reached: True" in done.stderr, done.stdout + done.stderr
    assert "Exception ignored in: <generator object CaptureManager." in done.stderr, done.stderr
    assert "AssertionError" in done.stderr


@pytest.mark.parametrize("gap", ["multicall", "context"])
def test_nodegate_raises_the_interrupt_once_the_wrapper_is_registered(tmp_path, gap):
    done = run(tmp_path, gap, "nodegate")
    assert "gap reached: True" in done.stderr, done.stdout + done.stderr
    assert done.returncode == 2, done.stdout + done.stderr              # pytest's "interrupted"
    assert "KeyboardInterrupt" in done.stdout, done.stdout
    assert "Exception ignored" not in done.stderr, done.stderr


def test_a_read_interrupted_just_after_it_was_registered_still_answers_its_waiters():
    """The checks' shared reads (nodegate.plugin.reads.Reads): the first asker registers a Future in the
    cache and reads; read-ahead threads asking for the same read wait on that Future. A Ctrl-C that
    landed after the registration but before the read's try left the Future for ever unfinished: a
    read-ahead thread waiting on it never ended, and the interpreter, which joins those threads at
    exit, hung after the interrupt. A trace function raises the KeyboardInterrupt at the first
    instruction with the Future registered and the lock let go, as a SIGINT handled there would."""
    import threading

    from nodegate.plugin.reads import Reads

    reads = Reads(access=None)
    key = ("cluster:pods",)

    def local(frame, event, arg):
        if event == "opcode" and key in reads._cache and not reads._lock.locked():
            sys.settrace(None)
            raise KeyboardInterrupt
        return local

    def global_trace(frame, event, arg):
        if frame.f_code is Reads._get.__code__:
            frame.f_trace_opcodes = True
            return local
        return None

    sys.settrace(global_trace)
    try:
        with pytest.raises(KeyboardInterrupt):
            reads._get(key, lambda: "pods")
    finally:
        sys.settrace(None)
    answers: list[str] = []

    def read_ahead() -> None:
        try:
            answers.append(reads._get(key, lambda: "read again"))
        except BaseException as exc:   # noqa: BLE001 - what this thread got is the point
            answers.append(type(exc).__name__)

    thread = threading.Thread(target=read_ahead, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "a read-ahead thread waits for ever on a read the interrupt abandoned"
    assert answers == ["KeyboardInterrupt"]


def _interrupt_after_the_handler_lock_is_taken(handler_func) -> None:
    """Log one line with a trace function that delivers SIGINT to ``handler_func`` where CPython 3.11
    checks for it — at the end of a call into C and at the start of a Python function — from the
    check right after logging.Handler.acquire took its lock on, until the handler raises."""
    import dis
    import logging
    import signal as signals
    import threading

    traced = {logging.Handler.acquire.__code__, logging.Handler.handle.__code__}
    state = {"fired": False, "pending": False, "python_calls": 0}
    seen: dict[int, tuple[int, int]] = {}      # frame id -> (offset of its last instruction, python_calls then)
    calls = {code: {i.offset for i in dis.get_instructions(code) if i.opname == "CALL"} for code in traced}

    def deliver(frame) -> bool:
        again: list[int] = []
        previous = signals.signal(signals.SIGINT, lambda signum, f: again.append(signum))
        try:
            handler_func(signals.SIGINT, frame)
        finally:
            signals.signal(signals.SIGINT, previous)
        return bool(again)

    def local(frame, event, arg):
        if event == "opcode":
            before = seen.get(id(frame))
            seen[id(frame)] = (frame.f_lasti, state["python_calls"])
            after_c_call = before is not None and before[0] in calls[frame.f_code] \
                and before[1] == state["python_calls"]
            if not state["fired"] and frame.f_code is logging.Handler.acquire.__code__ and after_c_call \
                    and frame.f_locals["self"].lock._is_owned():
                state["fired"] = state["pending"] = True
            if state["pending"] and after_c_call:
                state["pending"] = deliver(frame)
        return local

    def global_trace(frame, event, arg):
        state["python_calls"] += 1
        if state["pending"]:               # the check at the start of a Python function
            state["pending"] = deliver(frame)
        if frame.f_code in traced:
            frame.f_trace_opcodes = True
            return local
        return None

    assert threading.current_thread() is threading.main_thread()
    sys.settrace(global_trace)
    try:
        logging.getLogger("nodegate.test-gap").warning("a line logged as Ctrl-C arrives")
    finally:
        sys.settrace(None)


@pytest.mark.parametrize("handler", ["python", "nodegate"])
def test_a_logging_lock_taken_as_ctrl_c_arrives(handler, tmp_path):
    """logging.Handler.handle takes its handler's lock, then enters the try that releases it; an
    interrupt in between leaves the lock held by the main thread, and the next read-ahead thread that
    logs (a retry warning) blocks for ever, and with it the interpreter that joins that thread at
    exit. With Python's handler (control) that is what happens; nodegate's waits for the next check."""
    with open(tmp_path / "log", "w") as stream:
        held = _log_through_an_interrupt(stream, handler)
    if handler == "python":
        assert held, "the control case should show the lock left held"
    else:
        assert not held, "a thread that logs after the interrupt blocks for ever on the handler's lock"


def _log_through_an_interrupt(stream, handler: str) -> bool:
    """True when a thread that logs after the interrupt is still blocked 5 s later."""
    import logging
    import threading

    from nodegate.core import interrupts

    log_handler = logging.StreamHandler(stream)
    logger = logging.getLogger("nodegate.test-gap")
    logger.addHandler(log_handler)
    logger.propagate = False
    on_sigint = interrupts.on_signal if handler == "nodegate" else signal.default_int_handler
    try:
        with pytest.raises(KeyboardInterrupt):
            _interrupt_after_the_handler_lock_is_taken(on_sigint)
        worker = threading.Thread(target=lambda: logger.warning("a read-ahead thread logs"), daemon=True)
        worker.start()
        worker.join(timeout=5)
        held = worker.is_alive()
    finally:
        if log_handler.lock._is_owned():
            log_handler.lock.release()     # let the control case's blocked thread end
        logger.removeHandler(log_handler)
    return held
