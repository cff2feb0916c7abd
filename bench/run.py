"""All benchmarks on the lab, one after the other; writes bench/results.json (the
figures, their goals, whether each is met) and prints a table.

    python -m bench.run                 # starts a 16-node lab in .lab-bench (net 40, or
                                        # $NODEGATE_BENCH_NET), takes it down after
    python -m bench.run --dir /tmp/lab --net 25   # the same, in another folder on another address octet
    python -m bench.run --lab DIR       # uses a running lab (its last node is upgraded!)
    python -m bench.run --tiny --lab DIR --out FILE   # each bench once on a tiny input (make test)

Figures are ratios within one run where the issue asks for ratios, so that a busy machine
slows both sides alike. Order: startup, preflight, fleet, then the procedure (it upgrades a node).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench import fleet, preflight, procedure, rollout, ssh, startup
from bench.common import ROOT, lab_nodes, table

GOALS = {  # figure: (limit, unit); AT_LEAST: the figure must reach the limit, the others stay within it
    "preflight_ratio": (1.5, "×"),
    "fleet_vs_raw": (1.3, "×"),
    "cpu_per_node_s": (0.2, "s"),
    "rollout_speedup": (1.7, "×"),
    "fleet_memory_mb": (500, "MB"),
    "ready_latency_s": (1.0, "s"),
    "health_latency_s": (1.0, "s"),
    "overhead_s": (10.0, "s"),
    "startup_s": (1.5, "s"),
}


AT_LEAST = ("rollout_speedup",)

DEFAULT_NET = 40
LAB_UP_TIMEOUT_S = 900


class LabNotUp(Exception):
    """The bench's lab did not come up; the message is `nodegate lab up`'s own (it names the node
    that failed and its log)."""


def lab_up(lab: Path, *, nodes: int, net: int, bare: bool = False, extra: tuple[str, ...] = ()) -> None:
    """`nodegate lab up` for the bench (its output streams through). A lab that does not come up
    is taken down again, whatever `lab up` left running, and LabNotUp says why."""
    argv = [sys.executable, "-m", "nodegate", "lab", "up", "--dir", str(lab), "--nodes", str(nodes),
            "--net", str(net)] + (["--bare"] if bare else []) + list(extra)
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        rc = proc.wait(timeout=LAB_UP_TIMEOUT_S)
    except BaseException:
        proc.kill()
        proc.wait()
        lab_down(lab)
        raise
    if rc != 0:
        lab_down(lab)
        said = [ln.rstrip() for ln in lines if ln.startswith(("nodegate: error:", "  fix:"))] or \
            [ln.rstrip() for ln in lines[-5:]]
        raise LabNotUp(f"the {nodes}-node lab in {lab} did not come up (`nodegate lab up` exit {rc}); "
                       f"it was taken down again:\n" + "\n".join(said))


def lab_down(lab: Path) -> None:
    if (lab / "lab.json").exists():
        subprocess.run([sys.executable, "-m", "nodegate", "lab", "down", "--dir", str(lab)], cwd=ROOT, timeout=300)


def run_all(lab: Path, *, tiny: bool) -> dict:
    nodes = lab_nodes(lab)
    upgraded, rebooted = nodes[-1], nodes[-2] if len(nodes) > 1 else nodes[-1]
    figures: dict = {}
    sections = [
        ("startup", lambda: startup.measure(lab, reps=1 if tiny else 5)),
        ("ssh", lambda: ssh.measure(lab, node=rebooted, reps=2 if tiny else 10)),
        ("preflight", lambda: preflight.measure(lab, node=upgraded, reps=1 if tiny else 3, tiny=tiny)),
        ("fleet", lambda: fleet.measure(lab, sizes=[1, 2] if tiny else [1, 4, 16],
                                        workers=2 if tiny else max(2, os.cpu_count() or 2), tiny=tiny)),
        ("fleet_vs_raw", lambda: rollout.measure_fleet(lab, reps=1 if tiny else 2, tiny=tiny)),
        ("procedure", lambda: procedure.measure(lab, node=upgraded, tiny=tiny, ready_node=rebooted)),
    ]
    for name, measure in sections:
        started = time.monotonic()
        print(f"bench: {name} …", flush=True)
        figures.update(measure())
        print(f"bench: {name} done in {time.monotonic() - started:.0f}s", flush=True)
    return figures


def measure_rollout_lab(lab: Path, *, net: int) -> dict:
    """rollout_speedup on its own lab: 10 nodes (8 workers) in 4 racks, brought up and taken down here."""
    started = time.monotonic()
    print("bench: rollout …", flush=True)
    try:
        lab_up(lab, nodes=rollout.ROLLOUT_NODES, net=net, extra=("--racks", str(rollout.ROLLOUT_RACKS)))
    except LabNotUp as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return {}
    try:
        return rollout.measure_rollout(lab)
    finally:
        lab_down(lab)
        print(f"bench: rollout done in {time.monotonic() - started:.0f}s", flush=True)


def verdicts(figures: dict) -> dict:
    out = {}
    for key, (limit, _) in GOALS.items():
        value = figures.get(key)
        out[key] = None if value is None else (value < limit if key == "fleet_memory_mb" else
                                               value >= limit if key in AT_LEAST else value <= limit)
    return out


def rows(figures: dict, met: dict) -> list[tuple[str, str, str, str]]:
    out = []
    for key, (limit, unit) in GOALS.items():
        value = figures.get(key)
        shown = "-" if value is None else f"{value:g}{'' if unit == '×' else ' ' + unit}"
        goal = f"{'<' if key == 'fleet_memory_mb' else '≥' if key in AT_LEAST else '≤'} {limit:g}{'' if unit == '×' else ' ' + unit}"
        out.append((key, shown, goal, {True: "met", False: "MISSED", None: "not measured"}[met[key]]))
    out.append(("preflight pytest / shell", f"{figures.get('preflight_pytest_s', '-')} s / "
                f"{figures.get('preflight_shell_s', '-')} s", "", ""))
    costs = figures.get("fleet_cost_s", {})
    out.append(("fleet cost by nodes", ", ".join(f"{k}: {v} s" for k, v in costs.items())
                + f" (xdist -n {figures.get('fleet_workers', '?')})", "", ""))
    out.append(("fleet largest, no xdist", f"{figures.get('fleet_serial_s', '-')} s "
                f"(ratio {figures.get('fleet_serial_ratio', '-')})", "", ""))
    cpu, lab_cpu = figures.get("fleet_cpu_s", {}), figures.get("fleet_lab_cpu_s", {})
    out.append(("fleet CPU nodegate / lab", ", ".join(f"{k}: {cpu[k]} / {lab_cpu.get(k, '-')} s" for k in cpu)
                + f"; no xdist: {figures.get('fleet_serial_cpu_s', '-')} / {figures.get('fleet_serial_lab_cpu_s', '-')} s",
                "", ""))
    out.append(("fleet_vs_raw nodegate / script", f"{figures.get('fleet_vs_raw_nodegate_s', '-')} s / "
                f"{figures.get('fleet_vs_raw_script_s', '-')} s ({figures.get('fleet_vs_raw_nodes', '?')} nodes, "
                f"fleet_ratio {figures.get('fleet_ratio', '-')})", "", ""))
    out.append(("rollout one at a time / auto", f"{figures.get('rollout_one_at_a_time_s', '-')} s / "
                f"{figures.get('rollout_parallel_s', '-')} s, batches {figures.get('rollout_batches', '-')}", "", ""))
    reused, new = figures.get("ssh_command_s", {}), figures.get("ssh_new_connection_s", {})
    out.append(("one command over SSH kept / new", ", ".join(f"{k}: {reused[k]} / {new.get(k, '-')} s" for k in reused),
                "", ""))
    out.append(("one ceph status (toolbox)", f"{figures.get('health_probe_s', '-')} s", "", ""))
    out.append(("procedure wall / external", f"{figures.get('procedure_wall_s', '-')} s / "
                f"{figures.get('procedure_external_s', '-')} s", "", ""))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", type=Path, help="a running lab to use (default: start one)")
    parser.add_argument("--nodes", type=int, default=16, help="size of the lab started here")
    parser.add_argument("--net", type=int, default=int(os.environ.get("NODEGATE_BENCH_NET", DEFAULT_NET)),
                        help=f"address octet of the lab started here (default $NODEGATE_BENCH_NET, else {DEFAULT_NET})")
    parser.add_argument("--dir", type=Path, default=ROOT / ".lab-bench", help="folder of the lab started here")
    parser.add_argument("--keep-lab", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="each bench once on a tiny input (no rollout_speedup)")
    parser.add_argument("--no-rollout", action="store_true", help="leave rollout_speedup out (it upgrades 16 nodes)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args(argv)
    lab = args.lab or args.dir
    started_here = args.lab is None
    if started_here:
        try:
            lab_up(lab, nodes=4 if args.tiny else args.nodes, net=args.net)
        except LabNotUp as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
    began = time.time()
    try:
        figures = run_all(lab, tiny=args.tiny)
    finally:
        if started_here and not args.keep_lab:
            lab_down(lab)
    if not args.tiny and not args.no_rollout:
        figures.update(measure_rollout_lab(args.dir.parent / (args.dir.name + "-racks"), net=args.net + 1))
    met = verdicts(figures)
    result = {
        "figures": {k: figures.get(k) for k in GOALS},
        "goals": {k: {"limit": limit, "unit": unit, "met": met[k]} for k, (limit, unit) in GOALS.items()},
        "details": {k: v for k, v in figures.items() if k not in GOALS},
        "tiny": args.tiny,
        "lab": {"dir": str(lab), "nodes": len(lab_nodes(lab)) if (lab / "lab.json").exists() else None},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average": [round(x, 1) for x in os.getloadavg()]},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
        "duration_s": round(time.time() - began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print()
    print(table(rows(figures, met)))
    for line in rollout.budget_lines(figures):
        print(line)
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
