"""overhead_s, ready_latency_s and health_latency_s.

overhead_s: the wall time of the full one-node procedure minus the time spent inside node
commands, Ceph commands, the Kubespray run, the reboots and the waits for outside state — all
recorded by bench.trace in the procedure and in its checks subprocesses (the union of their
intervals, so nested or parallel ones count once). What is left is nodegate's own time: Python
start-up and imports, pytest, fixtures, single API requests, bookkeeping.

ready_latency_s: from the moment the lab's API server made the rebooted node Ready (its log, ms
precision) to the moment the harness's wait (Kube.wait_node_ready, the procedure's own) returned.
health_latency_s: from the moment `ceph osd unset-group noout` (the last warning) was committed to
the moment the storage gate's wait (wait_for on Ceph.status().healthy_in_full every 0.5 s, as the
procedure's storage_healthy step does) returned.

    python -m bench.procedure --lab DIR [--node node4] [--tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench.common import ROOT, TOOLING_OFF, lab_profile, pytest_argv, read_trace, timed, union_seconds

EXTERNAL = ("ssh", "ceph", "kubespray", "wait", "wait-ready")


def _log_time(line: str) -> float | None:
    found = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", line)
    if not found:
        return None
    return time.mktime(time.strptime(found.group(1), "%Y-%m-%d %H:%M:%S")) + int(found.group(2)) / 1000


def api_ready_times(lab: Path, node: str) -> list[float]:
    """When the lab's API server turned the node Ready (logging's local-time stamps, ms)."""
    log = lab / "logs" / "apiserver.log"
    out = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if f"node {node}: ready" in line:
            stamp = _log_time(line)
            if stamp is not None:
                out.append(stamp)
    return out


def apply_known_kubespray_fix(lab: Path) -> bool:
    """The lab's Kubespray v2.21.0 fails on a node whose packages were upgraded (kubespray #9114)
    until its docker task gets `force: true`, as an operator does before the upgrade: the bench
    measures the procedure, not the known issue. Returns True if the checkout was changed."""
    task = lab / "kubespray" / "roles" / "container-engine" / "docker" / "tasks" / "main.yml"
    if not task.exists():
        return False
    text = task.read_text()
    if "    force: true\n" in text or "    update_cache: true\n" not in text:
        return False
    task.write_text(text.replace("    update_cache: true\n", "    update_cache: true\n    force: true\n", 1))
    return True


def _clear_upgrade_annotation(profile_path: Path, node: str) -> None:
    """The tiny run starts an upgrade it never finishes (gate only): take its progress mirror off
    the Node again, so that the lab looks untouched to whoever uses it next."""
    from nodegate.cluster.kube.client import Kube
    from nodegate.core.journal import ANNOTATION
    from nodegate.profile.load import load_profile

    kube = Kube.connect(settings=load_profile(profile_path).kube)
    try:
        kube.set_node_annotation(node, key=ANNOTATION, value=None)
    finally:
        kube.close()


def overhead(lab: Path, *, node: str, tiny: bool) -> dict:
    profile = lab_profile(lab)
    fixed = False if tiny else apply_known_kubespray_fix(lab)
    with tempfile.TemporaryDirectory(prefix="bench-procedure-") as tmp:
        trace = Path(tmp) / "trace.jsonl"
        select = ["-k", "01-gate"] if tiny else []
        checks_dir = ROOT / "checks"
        if tiny:   # the gate runs the preflight: of one small check file only
            checks_dir = Path(tmp) / "checks"
            checks_dir.mkdir()
            shutil.copy(ROOT / "checks" / "test_node.py", checks_dir)
        env = {"BENCH_TRACE": str(trace), "PYTHONPATH": str(ROOT), "NODEGATE_CHECKS_DIR": str(checks_dir),
               # the checks subprocesses are traced too, and start without the test tooling
               "PYTEST_ADDOPTS": (os.environ.get("PYTEST_ADDOPTS", "") + " -p bench.trace "
                                  + " ".join(TOOLING_OFF)).strip(),
               # the journal and results of this run stay out of the project's reports/
               "NODEGATE_REPORTS": str(Path(tmp) / "reports")}
        run = timed(pytest_argv(str(ROOT / "procedures"), "--cluster", str(profile), "--node", node,
                                "--target-release", "22.04", "--execute", *select), env=env)
        records = read_trace(trace)
    if tiny:
        _clear_upgrade_annotation(profile, node)
    if run.rc != 0 and not records:
        raise SystemExit(f"bench: the procedure did not run (rc {run.rc}):\n{run.output[-3000:]}")
    failed = re.findall(r"FAILED \S+\[(\S+)\]", run.output)
    external = union_seconds([(r["start"], r["end"]) for r in records if r["kind"] in EXTERNAL])
    api = union_seconds([(r["start"], r["end"]) for r in records if r["kind"] == "api"])
    result = {
        "overhead_s": round(run.seconds - external, 2),
        "procedure_wall_s": round(run.seconds, 2),
        "procedure_external_s": round(external, 2),
        "procedure_api_requests_s": round(api, 2),
        "procedure_steps": "01-gate only (tiny)" if tiny else "all",
        "procedure_rc": run.rc,
        "kubespray_fix_applied": fixed,
        "procedure_failed": failed,   # a failed run's overhead covers the steps up to the failure only
    }
    # where the overhead is: per process (the procedure, each checks subprocess it ran), its
    # pytest session's wall time and what of it was spent outside nodegate
    by_process = []
    for session in (r for r in records if r["kind"] == "session"):
        mine = [(r["start"], r["end"]) for r in records if r["pid"] == session["pid"] and r["kind"] in EXTERNAL]
        by_process.append({"session": session["what"][:60], "wall_s": round(session["end"] - session["start"], 2),
                           "external_s": round(union_seconds(mine), 2)})
    result["procedure_processes"] = by_process
    # ready latency inside the real procedure: each wait for Ready against the API server's log
    samples = []
    ready_at = api_ready_times(lab, node)
    for r in records:
        if r["kind"] == "wait-ready" and r.get("node") == node:
            became = [t for t in ready_at if t <= r["end"] + 0.01]
            if became:
                samples.append(max(0.0, r["end"] - max(became[-1], r["start"])))
    if samples:
        result["procedure_ready_latency_s"] = [round(s, 3) for s in samples]
    return result


def ready_latency(lab: Path, *, node: str) -> float:
    """Reboot the node and wait as the procedure does (SSH with a new boot id, then Ready)."""
    from nodegate.cluster.kube.client import Kube
    from nodegate.cluster.nodes.ssh import Nodes, wait_for_ssh
    from nodegate.profile.load import load_profile

    profile = load_profile(lab_profile(lab))
    nodes = Nodes(settings=profile.ssh, nodes=profile.nodes)
    kube = Kube.connect(settings=profile.kube)
    try:
        before = nodes.host(node).boot.boot_id()
        nodes.host(node).boot.request_reboot()   # as the procedure's reboot steps ask for it
        wait_for_ssh(nodes, node, timeout=180, new_boot_id_than=before)
        started = time.time()
        kube.wait_node_ready(node, timeout=180, new_boot_id_than=before)
        returned = time.time()
    finally:
        nodes.close()
        kube.close()
    became = [t for t in api_ready_times(lab, node) if t <= returned + 0.01]
    if not became:
        raise SystemExit(f"bench: the API server's log shows no Ready for {node}")
    return max(0.0, returned - max(became[-1], started))


def health_latency(lab: Path, *, node: str) -> tuple[float, float]:
    """Raise a warning (noout on the node's CRUSH host), then clear it while the storage wait runs."""
    from nodegate.cluster.ceph import Ceph
    from nodegate.cluster.kube.client import Kube
    from nodegate.core.waits import Done, NotYet, wait_for
    from nodegate.profile.load import load_profile

    profile = load_profile(lab_profile(lab))
    kube = Kube.connect(settings=profile.kube)
    ceph = Ceph(settings=profile.ceph, kube=kube)
    cleared: list[float] = []
    try:
        wait_for(lambda: Done(True) if ceph.status().healthy_in_full else NotYet("ceph not healthy"),
                 what="ceph healthy before the measurement", timeout=300, interval=0.5)
        ceph.set_group_noout(node)
        wait_for(lambda: NotYet("still healthy") if ceph.status().healthy_in_full else Done(True),
                 what="the noout warning", timeout=60, interval=0.5)

        def clear() -> None:
            time.sleep(1.0)
            ceph.unset_group_noout(node)
            cleared.append(time.time())

        clearer = threading.Thread(target=clear)
        clearer.start()
        wait_for(lambda: Done(True) if ceph.status().healthy_in_full else NotYet("not yet"),
                 what="ceph HEALTH_OK", timeout=300, interval=0.5)
        returned = time.time()
        clearer.join()
        probes = []
        for _ in range(3):   # what one look at Ceph costs: the wait cannot react faster than this
            began = time.monotonic()
            ceph.status()
            probes.append(time.monotonic() - began)
        probe_s = sorted(probes)[1]
    finally:
        if node in ceph.noout_hosts():
            ceph.unset_group_noout(node)
        kube.close()
    return max(0.0, returned - cleared[0]), probe_s


def measure(lab: Path, *, node: str, tiny: bool, ready_node: str | None = None) -> dict:
    result = overhead(lab, node=node, tiny=tiny)
    result["ready_latency_s"] = round(ready_latency(lab, node=ready_node or node), 3)
    if not tiny and result.get("procedure_ready_latency_s"):
        result["ready_latency_s"] = max(result["ready_latency_s"], *result["procedure_ready_latency_s"])
    health, probe = health_latency(lab, node=ready_node or node)
    result["health_latency_s"] = round(health, 3)
    result["health_probe_s"] = round(probe, 3)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.procedure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", type=Path, required=True)
    parser.add_argument("--node", default="node4", help="the node the procedure upgrades (full mode)")
    parser.add_argument("--latency-node", default=None, help="the node rebooted for ready_latency_s")
    parser.add_argument("--tiny", action="store_true", help="the procedure's gate step only")
    args = parser.parse_args(argv)
    result = measure(args.lab, node=args.node, tiny=args.tiny, ready_node=args.latency_node)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
