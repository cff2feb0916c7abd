"""Whether the rehearsal lab runs in ./.lab, seen from the harness.

The harness never imports the lab (nodegate.lab): it reads what a running lab leaves in its
directory, as it reads any cluster's files. `nodegate lab up --dir DIR` writes DIR/cluster.toml
(the lab's profile) and DIR/supervisor.pid, the process that keeps the lab up, started as
`python -m nodegate.lab.supervisor --dir DIR` with DIR absolute. The lab counts as running only
while that pid file names a live process with exactly that command line for exactly that
directory: a lab taken down, or a pid file left behind whose number was reused, makes nothing
count, and no other profile is ever guessed from ./.lab.
"""
from __future__ import annotations

from pathlib import Path

LAB_DIR = ".lab"                       # the default `nodegate lab up` and `make demo` use
PROFILE_FILE = "cluster.toml"
PID_FILE = "supervisor.pid"
SUPERVISOR_MODULE = "nodegate.lab.supervisor"


def running_lab_profile(cwd: Path) -> Path | None:
    """CWD/.lab/cluster.toml when the lab in CWD/.lab is running, else None."""
    lab_dir = Path(cwd) / LAB_DIR
    profile = lab_dir / PROFILE_FILE
    if not profile.is_file():
        return None
    return profile if lab_running(lab_dir) else None


def lab_running(lab_dir: Path) -> bool:
    """True while DIR/supervisor.pid names a live `python -m nodegate.lab.supervisor --dir DIR`."""
    try:
        pid = int((Path(lab_dir) / PID_FILE).read_text().split()[0])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return False
    words = [w.decode("utf-8", "replace") for w in argv.split(b"\0") if w]   # a zombie's is empty
    return SUPERVISOR_MODULE in words and _dir_argument(words) == str(Path(lab_dir).resolve())


def _dir_argument(words: list[str]) -> str | None:
    for i, word in enumerate(words):
        if word == "--dir" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--dir="):
            return word.split("=", 1)[1]
    return None
