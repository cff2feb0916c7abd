"""The profile's last fallback: ./.lab/cluster.toml, only while the lab in ./.lab runs
(nodegate.core.running_lab), and only after --cluster, $NODEGATE_CLUSTER and ./nodegate.toml.

"Running" is judged the way the harness sees a lab: DIR/supervisor.pid names a live process
whose command line is `python -m nodegate.lab.supervisor --dir DIR` (how `nodegate lab up`
starts it, nodegate/lab/cli.py start_supervisor). The processes here are real ones with that
command line shape that start nothing (the words are arguments of `python -c`); the real lab's
own supervisor is covered by tests/scenarios/test_first_commands.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodegate.core.errors import UsageError
from nodegate.core.running_lab import lab_running, running_lab_profile
from nodegate.profile.load import RUNNING_LAB, find_profile

SLEEPER = "import time; time.sleep(120)"


@pytest.fixture
def stand_in():
    """start(lab_dir, *words) → a live process whose cmdline is python -c … WORDS; all ended after."""
    started: list[subprocess.Popen] = []

    def start(*words: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", SLEEPER, *words])
        started.append(proc)
        # /proc/PID/cmdline reads empty for a moment while the new process is still being set up
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def _lab(cwd: Path, pid: int | None) -> Path:
    lab = cwd / ".lab"
    lab.mkdir()
    (lab / "cluster.toml").write_text("[cluster]\nname = 'nodegate-lab'\n")
    if pid is not None:
        (lab / "supervisor.pid").write_text(f"{pid}\n")
    return lab


def test_a_running_lab_is_found_last(tmp_path, stand_in):
    lab = _lab(tmp_path, None)
    proc = stand_in("-m", "nodegate.lab.supervisor", "--dir", str(lab.resolve()))
    (lab / "supervisor.pid").write_text(f"{proc.pid}\n")
    assert lab_running(lab)
    assert running_lab_profile(tmp_path) == lab / "cluster.toml"
    assert find_profile(None, cwd=tmp_path, environ={}) == (lab / "cluster.toml", RUNNING_LAB)
    # every explicit way keeps its precedence over the lab
    other = tmp_path / "other.toml"
    other.write_text("")
    assert find_profile(str(other), cwd=tmp_path, environ={}) == (other.resolve(), "--cluster")
    assert find_profile(None, cwd=tmp_path, environ={"NODEGATE_CLUSTER": str(other)}) == (other.resolve(),
                                                                                          "$NODEGATE_CLUSTER")
    (tmp_path / "nodegate.toml").write_text("")
    assert find_profile(None, cwd=tmp_path, environ={}) == (tmp_path / "nodegate.toml", "./nodegate.toml")


def test_a_stopped_lab_is_never_used(tmp_path, stand_in):
    lab = _lab(tmp_path, None)
    proc = stand_in("-m", "nodegate.lab.supervisor", "--dir", str(lab.resolve()))
    (lab / "supervisor.pid").write_text(f"{proc.pid}\n")
    proc.kill()
    proc.wait()
    assert not lab_running(lab)
    with pytest.raises(UsageError) as err:
        find_profile(None, cwd=tmp_path, environ={})
    text = str(err.value)
    assert "no cluster profile" in text and "no lab is running in ./.lab" in text
    assert "--cluster PATH" in err.value.fix and "nodegate lab up" in err.value.fix


@pytest.mark.parametrize("case", ["no pid file", "garbage pid file", "another process", "another lab's supervisor",
                                  "no profile"])
def test_nothing_else_counts_as_a_running_lab(tmp_path, stand_in, case):
    lab = _lab(tmp_path, None)
    if case == "garbage pid file":
        (lab / "supervisor.pid").write_text("not a pid\n")
    elif case == "another process":   # a reused pid: alive, but not the lab's supervisor
        (lab / "supervisor.pid").write_text(f"{os.getpid()}\n")
    elif case == "another lab's supervisor":
        proc = stand_in("-m", "nodegate.lab.supervisor", "--dir", str(tmp_path / "elsewhere"))
        (lab / "supervisor.pid").write_text(f"{proc.pid}\n")
    elif case == "no profile":
        proc = stand_in("-m", "nodegate.lab.supervisor", "--dir", str(lab.resolve()))
        (lab / "supervisor.pid").write_text(f"{proc.pid}\n")
        (lab / "cluster.toml").unlink()
        assert lab_running(lab)
    assert running_lab_profile(tmp_path) is None
    with pytest.raises(UsageError, match="no cluster profile"):
        find_profile(None, cwd=tmp_path, environ={})
