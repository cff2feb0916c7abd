"""The cluster fixtures through pytester: `host` is nodegate's (not pytest-testinfra's), one SSH
connection per node reused across tests, a fresh one after `nodes.reconnect`; `kube` and `ceph`
reach the lab; the phase a check runs in follows -m."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab

TESTS = '''
import pytest

def test_host_is_nodegates(host, node, nodes):
    from nodegate.nodes import NodeHost
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
