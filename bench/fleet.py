"""fleet_ratio: preflight of many lab nodes at once (`--node all`, in parallel with pytest-xdist)
divided by the preflight of one node; the cost at 1, 4 and 16 nodes; the peak memory of the
whole run (controller, workers, ssh clients) for the largest fleet; and that the report still
holds one result per node and check.

    python -m bench.fleet --lab DIR [--sizes 1,4,16] [--workers 4] [--tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

from bench.common import lab_nodes, lab_profile, preflight_argv, timed


def one_result_per_node_and_check(results: Path) -> tuple[bool, int]:
    names = Counter()
    for path in results.glob("*-result.json"):
        names[json.loads(path.read_text()).get("name")] += 1
    return (bool(names) and max(names.values()) == 1), sum(names.values())


def measure(lab: Path, *, sizes: list[int], workers: int = 4, tiny: bool = False) -> dict:
    profile = lab_profile(lab)
    nodes = lab_nodes(lab)
    sizes = [s for s in sizes if s <= len(nodes)]
    costs: dict[str, float] = {}
    cpu: dict[str, float] = {}
    lab_cpu: dict[str, float | None] = {}
    memory: dict[str, float] = {}
    results_ok: dict[str, bool] = {}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        for size in sizes:
            # the last nodes: workers first (rolling order), the control plane only in the full fleet
            spec = "all" if size == len(nodes) else ",".join(nodes[len(nodes) - size:])
            parallel = ["-n", str(min(workers, size))] if size > 1 else []
            out = Path(tmp) / f"n{size}"
            run = timed(preflight_argv(profile, spec, "--alluredir", str(out), *parallel, tiny=tiny), sample_memory=True,
                        lab=lab)
            if run.rc not in (0, 1):
                raise SystemExit(f"bench: preflight of {size} node(s) did not run (rc {run.rc}):\n{run.output[-2000:]}")
            costs[str(size)] = round(run.seconds, 2)
            cpu[str(size)] = round(run.cpu_s, 2)
            lab_cpu[str(size)] = None if run.lab_cpu_s is None else round(run.lab_cpu_s, 2)
            memory[str(size)] = round(run.peak_rss_mb, 1)
            results_ok[str(size)], counts[str(size)] = one_result_per_node_and_check(out)
        # the same largest fleet without xdist, for comparison: on a machine whose cores are busy
        # elsewhere, parallel workers cost more than they save
        spec = "all" if max(sizes) == len(nodes) else ",".join(nodes[len(nodes) - max(sizes):])
        serial = timed(preflight_argv(profile, spec, "--alluredir", str(Path(tmp) / "serial"), tiny=tiny), lab=lab)
    largest = str(max(sizes))
    return {
        "fleet_ratio": round(costs[largest] / costs[str(min(sizes))], 2),
        "fleet_nodes": int(largest),
        "fleet_cost_s": costs,
        "fleet_cost_per_node_s": {k: round(v / int(k), 2) for k, v in costs.items()},
        # where the time goes, independent of the machine's load: nodegate's CPU (pytest, its
        # workers, the ssh clients) and the lab's (its nodes' own work, the API server, Ceph),
        # which on this machine share the same CPUs
        "fleet_cpu_s": cpu,
        "fleet_lab_cpu_s": lab_cpu,
        "fleet_serial_cpu_s": round(serial.cpu_s, 2),
        "fleet_serial_lab_cpu_s": None if serial.lab_cpu_s is None else round(serial.lab_cpu_s, 2),
        "fleet_peak_memory_mb": memory,
        "fleet_memory_mb": memory[largest],
        "fleet_results": counts,
        "fleet_one_result_per_node_and_check": all(results_ok.values()),
        "fleet_workers": workers,
        "fleet_serial_s": round(serial.seconds, 2),
        "fleet_serial_ratio": round(serial.seconds / costs[str(min(sizes))], 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", type=Path, required=True)
    parser.add_argument("--sizes", default="1,4,16")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="xdist workers (default: CPUs)")
    parser.add_argument("--tiny", action="store_true", help="1 and 2 nodes, 2 workers")
    args = parser.parse_args(argv)
    sizes = [1, 2] if args.tiny else [int(s) for s in args.sizes.split(",")]
    result = measure(args.lab, sizes=sizes, workers=2 if args.tiny else args.workers, tiny=args.tiny)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
