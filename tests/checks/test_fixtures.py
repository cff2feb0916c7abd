"""The cluster fixtures through pytester: `host` is nodegate's (not pytest-testinfra's), one SSH
connection per node reused across tests, a fresh one after `nodes.reconnect`; `kube` and `ceph`
reach the lab; the phase a check runs in follows -m."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab

TESTS = '''
import pytest

def test_host_is_nodegates(host, node, nodes):
    from nodegate.cluster.nodes.ssh import NodeHost
    assert isinstance(host, NodeHost) and host.name == node.name
    assert host is nodes.host(node.name)                       # one connection per node, reused
    assert host.run(["cat", "/etc/hostname"]).stdout.strip() == node.name
    assert host.testinfra.file("/etc/os-release").exists      # the testinfra Host underneath

def test_reconnect_gives_a_fresh_host(nodes, node):
    old = nodes.host(node.name)
    new = nodes.reconnect(node.name)
    assert new is not old and new.run(["true"]).ok

def test_kube_and_ceph(kube, ceph, node):
    assert kube.node(node.name).name == node.name
    assert ceph.status().num_osds >= 1

@pytest.mark.preflight
@pytest.mark.postflight
def test_phase(phase, releases):
    print(f"PHASE={phase} TARGET={releases.target.version if releases.target else None}")
'''


def test_cluster_fixtures(pytester, lab):
    pytester.makepyfile(test_fixtures_probe=TESTS)
    result = pytester.runpytest_subprocess("--cluster", str(lab.dir / "cluster.toml"), "--node", "node4",
                                           "-p", "no:randomly", "-s", "-k", "not phase", timeout=300)
    result.assert_outcomes(passed=3)


@pytest.mark.parametrize("mark, target, phase, shown", [
    ("preflight", None, "preflight", "22.04"),
    ("postflight", "22.04", "postflight", "22.04"),
])
def test_phase_follows_the_mark_expression(pytester, lab, mark, target, phase, shown):
    pytester.makepyfile(test_fixtures_probe=TESTS)
    args = ["--cluster", str(lab.dir / "cluster.toml"), "--node", "node4", "-m", mark, "-s", "-p", "no:randomly"]
    if target:
        args += ["--target-release", target]
    result = pytester.runpytest_subprocess(*args, timeout=300)
    result.assert_outcomes(passed=1, deselected=3)
    result.stdout.fnmatch_lines([f"*PHASE={phase} TARGET={shown}*"])


def test_root_invocation_runs_the_catalogue(lab, tmp_path):
    """`pytest --cluster DIR/cluster.toml --node node4 -m preflight` at the project root, with no test
    path, runs the checks (the project's own tests are not collected)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "NODEGATE_REPORTS": str(tmp_path / "reports")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "--cluster", str(lab.dir / "cluster.toml"), "--node",
                           "node4", "-m", "preflight", "-q", "-p", "no:hypothesispytest", "--co"],
                          cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    catalogue = {p.name for p in (root / "checks").glob("test_*.py")}
    # node ids are relative to pytest's rootdir, which the --cluster value can move: compare file names
    assert collected and all(Path(line.split("::")[0]).name in catalogue for line in collected), done.stdout[-3000:]
    assert any(line.endswith("test_packages.py::test_packages_held[node4]") for line in collected)
