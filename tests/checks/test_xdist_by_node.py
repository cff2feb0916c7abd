"""Under pytest-xdist (`-n 2`) the catalogue deals out whole nodes: every check of one node runs
on one worker (one SSH connection, one snapshot, one set of reads per node), not spread over all
of them (xdist's own loadgroup could not group them under pytest 9.2: nodegate.plugin.allure's
scheduler does)."""
import re
from collections import defaultdict

_RAN = re.compile(r"^\[(gw\d+)\] \[\s*\d+%\] (?:PASSED|FAILED|ERROR|SKIPPED) \S*::(\w+)(?:\[([^\]]+)\])?", re.M)


def test_each_node_runs_on_one_worker(catalogue):
    run = catalogue("-m", "preflight", "--target-release", "22.04", "-n", "2", node="node3,node4")
    assert run.ret in (0, 1), run.text[-3000:]
    workers: dict[str, set[str]] = defaultdict(set)
    checks: dict[str, int] = defaultdict(int)
    for found in _RAN.finditer(run.stdout):
        node = found.group(3) or "cluster"
        workers[node].add(found.group(1))
        checks[node] += 1
    assert {"node3", "node4"} <= set(workers), run.stdout[-3000:]
    assert all(len(ran_on) == 1 for ran_on in workers.values()), dict(workers)
    assert checks["node3"] == checks["node4"] > 10, dict(checks)
