"""`make soak`: run the long test streams again and again and say how often each test fails.

    python tests/soak.py --count 5 tests/procedures tests/scenarios
    make soak SOAK_COUNT=20 SOAK_TESTS=tests/scenarios/test_interrupts.py

Each round is one pytest run (no -x: every test gets its chance) on the same lab, started by the
first round and taken down after the last (unless it was running before). What it prints: per test,
its runs, failures and failure rate; then each failure with its round, the run's log and the
failure's text.

Stack dumps, so that a hang shows where it is, not just that it happened:
- every pytest a round starts, directly or through the runs its tests start (the interrupt
  scenario's operator runs sit in sessions of their own), has Python's faulthandler armed
  (PYTHONFAULTHANDLER=1) and, through the stackdump plugin (tests/scenarios/stackdump.py), a
  SIGUSR1 handler that writes every thread's stack and lets it go on;
- pytest's faulthandler_timeout (--hang-dump) dumps the stacks of a test that runs longer than that
  without stopping it;
- the watchdog: a round still running after --round-timeout gets SIGUSR1 in every pytest process of
  its tree (their stacks while all of them are still alive), then SIGABRT (faulthandler's dump,
  and the end), innermost first; the round counts as a hang and the report names each process
  dumped and where its output went (the round's log, or the run logs under round-N-tmp).

Not part of `make test`: a soak of the whole procedure and scenario streams takes about 8 minutes a
round on 2 cores.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = ("tests/procedures", "tests/scenarios")
STACKDUMP_DIR = PROJECT / "tests" / "scenarios"      # the stackdump plugin (-p stackdump)


@dataclass
class Failure:
    round: int
    test: str
    kind: str          # failure | error | hang
    text: str
    log: Path


@dataclass
class Tally:
    runs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failures: list[Failure] = field(default_factory=list)
    rounds: list[tuple[int, int, float]] = field(default_factory=list)   # (round, rc, seconds)


def lab_dir(net: int) -> Path:
    # the session lab of tests/conftest.py for this address octet
    return Path(os.environ.get("NODEGATE_TEST_LAB_DIR", f"/tmp/nodegate-test-lab-net{net}"))


def lab_running(net: int) -> bool:
    sys.path.insert(0, str(PROJECT))
    from nodegate.lab.supervisor import supervisor_pid

    path = lab_dir(net)
    return (path / "lab.json").exists() and supervisor_pid(path) is not None


def one_round(number: int, args, out: Path, tally: Tally) -> None:
    junit = out / f"round-{number}.xml"
    log = out / f"round-{number}.log"
    # each round's own basetemp: the logs of the runs a test started (the interrupt scenario's) stay
    # beside the round's log instead of being rotated away by the next pytest sessions
    argv = [sys.executable, "-m", "pytest", *args.tests, "-p", "no:randomly", "-q", "-rfE", "--color=no",
            f"--junitxml={junit}", f"--basetemp={out / f'round-{number}-tmp'}",
            "-o", f"faulthandler_timeout={args.hang_dump}", *args.pytest_args]
    # PYTEST_PLUGINS and PYTHONPATH reach every pytest below this one (the runs its tests start, and
    # the check runs those start), so each of them writes its stacks on SIGUSR1
    env = dict(os.environ, NODEGATE_TEST_NET=str(args.net), NODEGATE_KEEP_LAB="1", PYTHONFAULTHANDLER="1",
               PYTEST_PLUGINS="stackdump", PYTHONPATH=os.pathsep.join(filter(None, [str(STACKDUMP_DIR), os.environ.get("PYTHONPATH")])))
    started = time.monotonic()
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(argv) + "\n")
        fh.flush()
        proc = subprocess.Popen(argv, cwd=PROJECT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.round_timeout)
        except subprocess.TimeoutExpired:
            dumped = dump_stacks(proc)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            tally.failures.append(Failure(
                number, "(the whole round)", "hang",
                f"did not end within {args.round_timeout:.0f} s; the stacks of every pytest process of the round "
                f"(the round's own in its log, its tests' runs in their run logs under round-{number}-tmp):\n"
                + "\n".join(dumped), log))
    seconds = time.monotonic() - started
    tally.rounds.append((number, rc, seconds))
    read_junit(number, junit, log, tally)
    said = sum(1 for f in tally.failures if f.round == number)
    print(f"soak: round {number}/{args.count}: exit {rc}, {seconds:.0f} s, {said} failure(s); log {log}", flush=True)


def descendants(root: int) -> list[int]:
    """Every process below ``root``, children before their parents' parents (innermost last)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # the command name (field 2) may hold spaces and parentheses: split after its last ')'
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, ()):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def catches(pid: int, sig: signal.Signals) -> bool:
    """Whether the process has a handler for ``sig`` (SigCgt in /proc/PID/status): SIGUSR1 would
    kill one that has none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


def dump_stacks(proc: subprocess.Popen) -> list[str]:
    """The watchdog's dump of a hung round: SIGUSR1 (stackdump plugin: the stacks, and it goes on) to
    every pytest of the round's tree that catches it, while all are alive; then SIGABRT (faulthandler:
    the stacks, and the end), innermost first. Returns one line per process dumped."""
    pytests = [pid for pid in reversed(descendants(proc.pid)) if " -m pytest " in cmdline(pid) + " "] + [proc.pid]
    said = [f"pid {pid}: {cmdline(pid)[:200]}" for pid in pytests]
    for pid in pytests:
        if catches(pid, signal.SIGUSR1):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
    time.sleep(2.0)   # a dump is a few writes; let each finish before the next signal
    for pid in pytests:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGABRT)
    return said


def read_junit(number: int, junit: Path, log: Path, tally: Tally) -> None:
    if not junit.exists():
        tally.failures.append(Failure(number, "(the whole round)", "error", "no junit report: pytest did not finish", log))
        return
    for case in ET.parse(junit).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        tally.runs[test] += 1
        for kind in ("failure", "error"):
            for found in case.findall(kind):
                text = (found.get("message") or "") + "\n" + (found.text or "")
                tally.failures.append(Failure(number, test, kind, text.strip(), log))


def report(tally: Tally, count: int) -> str:
    lines = [f"soak: {count} round(s) of the same selection", ""]
    failed: dict[str, int] = defaultdict(int)
    for f in tally.failures:
        failed[f.test] += 1
    width = max([len(t) for t in tally.runs] + [len("test")])
    lines.append(f"{'test':<{width}}  runs  failures  rate")
    for test in sorted(tally.runs, key=lambda t: (-failed.get(t, 0), t)):
        runs, bad = tally.runs[test], failed.get(test, 0)
        lines.append(f"{test:<{width}}  {runs:>4}  {bad:>8}  {bad / runs:>5.0%}")
    for test in sorted(set(failed) - set(tally.runs)):
        lines.append(f"{test:<{width}}  {'-':>4}  {failed[test]:>8}")
    total_runs = sum(tally.runs.values())
    lines.append(f"{'all':<{width}}  {total_runs:>4}  {len(tally.failures):>8}")
    lines.append("")
    lines.append("rounds: " + ", ".join(f"{n}: exit {rc} in {s:.0f} s" for n, rc, s in tally.rounds))
    for f in tally.failures:
        lines += ["", f"-- round {f.round}: {f.test} ({f.kind}); log {f.log}",
                  *("   " + line for line in f.text.splitlines()[-40:])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/soak.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("tests", nargs="*", default=list(DEFAULT_TESTS), help="paths or test ids")
    parser.add_argument("--count", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--net", type=int, default=int(os.environ.get("NODEGATE_TEST_NET", "0")),
                        help="address octet of the lab (default $NODEGATE_TEST_NET, else 0)")
    parser.add_argument("--out", type=Path, default=PROJECT / ".make" / "soak", help="logs and reports")
    parser.add_argument("--round-timeout", type=float, default=3600, help="seconds before a round counts as hung")
    parser.add_argument("--hang-dump", type=float, default=1200,
                        help="pytest faulthandler_timeout: dump the stacks of a test running this long")
    parser.add_argument("--pytest-args", default="", help="more pytest arguments, as one string")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be at least 1, not {args.count}")
    args.pytest_args = args.pytest_args.split()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("round-*"):
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    ran_before = lab_running(args.net)
    tally = Tally()
    try:
        for number in range(1, args.count + 1):
            one_round(number, args, args.out, tally)
    finally:
        if not ran_before and (lab_dir(args.net) / "lab.json").exists():
            subprocess.run([sys.executable, "-m", "nodegate", "lab", "down", "--dir", str(lab_dir(args.net))],
                           cwd=PROJECT, check=False)
    text = report(tally, args.count)
    (args.out / "report.txt").write_text(text + "\n")
    print(text)
    print(f"\nsoak report: {args.out / 'report.txt'}")
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
