"""A Ctrl-C swallowed by a finalizer still stops a nodegate run, at its next command on the node.

Through pytester, as an operator runs checks (`pytest --cluster … --node node4`): the check lets a
finalizer run while SIGINT arrives — the close() of an I/O object, as http.client's response did in
the lab, where Python drops the interrupt without a word and goes on — and its next `host.run` on
the lab's node4 (real ssh) raises the interrupt instead of running.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab

CHECK = '''
import io, os, signal, time
from pathlib import Path

class Stream(io.RawIOBase):
    def close(self):                        # called by the object's finalizer
        os.kill(os.getpid(), signal.SIGINT)
        until = time.monotonic() + 2
        while time.monotonic() < until:     # the handler runs here: Python drops the interrupt
            pass
        super().close()

def test_swallowed_ctrl_c(host):
    host.run(["true"])                      # the connection is up before the signal
    Stream()
    Path("went-on").touch()                 # Python went on after the finalizer
    host.run(["touch", "/tmp/nodegate-interrupt-probe"])
    Path("ran-the-command").touch()

def test_after():
    Path("next-test").touch()
'''


def test_a_ctrl_c_lost_in_a_finalizer_stops_the_run_at_its_next_command(pytester, lab, lab_ssh):
    lab_ssh("node4", "rm -f /tmp/nodegate-interrupt-probe")
    pytester.makepyfile(test_probe=CHECK)
    result = pytester.runpytest_subprocess("--cluster", str(lab.dir / "cluster.toml"), "--node", "node4",
                                           "-p", "no:randomly", "-p", "no:cacheprovider",
                                           "-o", "log_cli=true",   # the live log, as a procedure run shows it
                                           timeout=300)
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED, text[-3000:]
    assert (pytester.path / "went-on").exists(), text[-3000:]         # the premise: the finalizer swallowed it
    assert not (pytester.path / "ran-the-command").exists(), text[-3000:]
    assert not (pytester.path / "next-test").exists(), text[-3000:]
    assert "SIGINT (Ctrl-C) was lost while Python ran a finalizer" in text, text[-3000:]
    assert "KeyboardInterrupt" in text
    # the command after the interrupt never reached the node
    assert lab_ssh("node4", "test -e /tmp/nodegate-interrupt-probe", check=False).returncode == 1
