"""startup_s: `pytest --collect-only` of the whole catalogue (checks and procedures), with a
profile and a node, as an operator starts every run. Median of a few runs.

    python -m bench.startup --lab DIR [--reps 5] [--tiny]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import ROOT, lab_profile, median, pytest_argv, timed


def measure(lab: Path, *, reps: int = 5) -> dict:
    profile = lab_profile(lab)
    argv = pytest_argv(str(ROOT / "checks"), str(ROOT / "procedures"), "--collect-only", "--cluster", str(profile),
                       "--node", "node1", "--target-release", "22.04", "--execute")
    runs = []
    for _ in range(reps):
        run = timed(argv)
        if run.rc != 0:
            raise SystemExit(f"bench: collection failed (rc {run.rc}):\n{run.output[-2000:]}")
        runs.append(run.seconds)
    return {"startup_s": round(median(runs), 2), "startup_runs_s": [round(x, 2) for x in runs]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", type=Path, required=True)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.lab, reps=1 if args.tiny else args.reps)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
