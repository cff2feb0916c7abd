"""Shared pieces of the benchmarks: the lab, timed pytest runs, peak memory of a process tree."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@dataclass(frozen=True)
class Timed:
    seconds: float
    rc: int
    output: str
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0          # CPU time of the command and the children it waited for (ssh clients …)
    lab_cpu_s: float | None = None   # CPU time the lab's own processes (nodes, API server, Ceph) spent meanwhile


def lab_cpu_s(lab_dir: Path) -> float | None:
    """CPU seconds used so far by the lab's processes: the supervisor and everything under it
    (the nodes' sshd and what they run, the API server, Ceph, etcd), reaped children included.
    On this machine the lab's nodes share the CPUs with nodegate: what they spend is the nodes'
    own work (apt-get update …), which on a real cluster runs on each node's own CPU."""
    try:
        root = int((lab_dir / "supervisor.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    # utime stime cutime cstime
    return _sum_over_tree(root, lambda pid, stat: sum(int(x) for x in stat[11:15]) / hz)


def _sum_over_tree(root_pid: int, value_of) -> float:
    """Sum value_of(pid, its /proc/PID/stat fields after the command name) over a process and all
    its descendants; a process that ends while it is read counts for nothing."""
    children: dict[int, list[int]] = {}
    values: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().rsplit(b")", 1)[1].split()
            values[pid] = value_of(pid, stat)
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(int(stat[1]), []).append(pid)
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        total += values.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def lab_profile(lab_dir: Path) -> Path:
    profile = lab_dir / "cluster.toml"
    if not profile.exists():
        raise SystemExit(f"bench: no lab at {lab_dir} (no cluster.toml); start one with "
                         f"`nodegate lab up --dir {lab_dir}` or let `python -m bench.run` start it")
    return profile


def lab_nodes(lab_dir: Path) -> list[str]:
    data = json.loads((lab_dir / "lab.json").read_text())
    nodes = data.get("nodes") or []
    names = [n["name"] if isinstance(n, dict) else str(n) for n in nodes]
    return names or [f"node{i}" for i in range(1, int(data.get("size", 4)) + 1)]


def _tree_rss_kb(root_pid: int) -> int:
    """Resident memory of a process and all its descendants (summed), from /proc."""
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024

    def rss_kb(pid: int, _stat: list[bytes]) -> int:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * page_kb

    return int(_sum_over_tree(root_pid, rss_kb))


def timed(argv: list[str], *, env: dict | None = None, cwd: Path = ROOT, sample_memory: bool = False,
          timeout: float = 1800, lab: Path | None = None) -> Timed:
    """Run a command, return its wall time and CPU time (and the peak summed RSS of its process
    tree; with ``lab``, the CPU time the lab spent meanwhile)."""
    lab_before = lab_cpu_s(lab) if lab is not None else None
    cpu_before = os.times()
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_kb(proc.pid))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True) if sample_memory else None
    if sampler:
        sampler.start()
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    seconds = time.monotonic() - started
    cpu_after = os.times()
    lab_after = lab_cpu_s(lab) if lab is not None else None
    done.set()
    if sampler:
        sampler.join()
    cpu = (cpu_after.children_user - cpu_before.children_user) + (cpu_after.children_system - cpu_before.children_system)
    return Timed(seconds=seconds, rc=proc.returncode, output=output, peak_rss_mb=peak[0] / 1024, cpu_s=cpu,
                 lab_cpu_s=None if lab_before is None or lab_after is None else lab_after - lab_before)


# Plugins of the project's own test tooling (Hypothesis, pytest-randomly) are not part of what an
# operator runs; Hypothesis alone costs about a second of start-up when its plugin loads.
TOOLING_OFF = ("-p", "no:randomly", "-p", "no:hypothesispytest", "-p", "no:cacheprovider")


def pytest_argv(*args: str) -> list[str]:
    return [PY, "-m", "pytest", *TOOLING_OFF, "-q", *args]


def checks_paths(tiny: bool) -> list[str]:
    """The catalogue, or for --tiny one small file of it (proves the bench runs, measures little)."""
    return [str(ROOT / "checks" / "test_node.py")] if tiny else [str(ROOT / "checks")]


def preflight_argv(profile: Path, node: str, *extra: str, tiny: bool = False) -> list[str]:
    return pytest_argv(*checks_paths(tiny), "-m", "preflight", "--cluster", str(profile), "--node", node,
                       "--target-release", "22.04", *extra)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def read_trace(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("figure", "value", "goal", "")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, rows)])
