"""`make test` runs every benchmark once on a tiny input (bench.run --tiny on the session's lab):
not to time anything, but to prove each bench script still works against the real lab."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
FIGURES = ("preflight_ratio", "fleet_vs_raw", "cpu_per_node_s", "fleet_memory_mb", "ready_latency_s", "health_latency_s",
           "overhead_s", "startup_s")


def test_every_bench_runs_once_on_a_tiny_input(lab, tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "bench.run", "--tiny", "--lab", str(lab.dir), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tiny"] is True
    for key in FIGURES:
        value = result["figures"][key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, (key, value)
        assert result["goals"][key]["met"] in (True, False)
    details = result["details"]
    # the baseline really did the same kinds of reads as the preflight
    assert details["preflight_reads"]["ssh"] >= 1
    assert details["preflight_pytest_s"] > 0 and details["preflight_shell_s"] > 0
    assert set(details["fleet_cost_s"]) == {"1", "2"}
    assert details["fleet_one_result_per_node_and_check"] is True
    assert details["fleet_vs_raw_reads"]["ssh"] >= 1 and details["fleet_vs_raw_script_s"][0] > 0
    assert result["goals"]["rollout_speedup"]["met"] is None     # not measured on a tiny input
    # the gate ran its checks (passing or not: the session's lab may carry what earlier tests left)
    assert details["procedure_rc"] in (0, 1), details["procedure_failed"]
    assert details["procedure_wall_s"] >= details["procedure_external_s"] > 0
    # one command over the kept connection and over a new one, both backends
    for figure in ("ssh_command_s", "ssh_new_connection_s"):
        assert set(details[figure]) == {"ssh-config", "paramiko"}, details[figure]
        assert all(v > 0 for v in details[figure].values()), details[figure]
    # the terminal table names every figure
    for key in FIGURES:
        assert key in done.stdout


def test_the_bench_lab_boots_all_sixteen_nodes_from_a_cold_seed_pin(tmp_path):
    """`make bench` starts a 16-node lab through bench.run.lab_up; on a fresh clone 9 of its nodes
    never booted (the seed pin race, tests/lab/test_shared_files.py). The same start, bare (nodes
    and apt repository: the part that boots nodes), three times in a fresh folder, so every start
    meets a cold pin with 16 nodes booting at once: all 16 up every time, no boot failure logged."""
    from labkit import net_beside, nodegate

    from bench.run import lab_down, lab_up

    for attempt in range(3):
        lab_dir = tmp_path / f"bench-lab{attempt}"
        try:
            lab_up(lab_dir, nodes=16, net=net_beside("bench-16"), bare=True)
            status = json.loads(nodegate("lab", "status", "--json", "--dir", str(lab_dir)).stdout)
            up = [n["name"] for n in status["nodes"] if n["state"] == "up"]
            assert len(up) == 16, f"start {attempt}: only {len(up)} of 16 nodes up: {up}"
            log = (lab_dir / "logs" / "supervisor.log").read_text()
            assert "failed to boot" not in log, log[-3000:]
        finally:
            lab_down(lab_dir)
        assert not (lab_dir / "supervisor.pid").exists()
