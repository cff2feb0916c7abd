"""Bad input stops the catalogue before any check runs: one message naming the problem and the fix,
exit code 4 (pytest's usage error), no Python traceback. Profiles are copies of the lab's with
one thing broken."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab


def assert_usage_error(run, *phrases: str) -> None:
    text = run.text
    assert run.ret == 4, f"expected a usage error (rc 4), got rc {run.ret}\n{text[-4000:]}"
    assert "Traceback" not in text, text[-4000:]
    assert not run.outcomes, f"checks ran although the input was bad: {run.outcomes}"
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} not in:\n{text[-3000:]}"
    assert "fix:" in text


def _port_2222_for_node4(config: str) -> str:
    head, sep, rest = config.partition("Host node4\n")
    return head + sep + rest.replace("Port 22\n", "Port 2222\n", 1)


def test_unknown_node_lists_the_known_ones(catalogue):
    run = catalogue("-m", "preflight", node="node9")
    assert_usage_error(run, "unknown node 'node9'", "known nodes: node1, node2, node3, node4")


def test_missing_profile(catalogue, tmp_path):
    run = catalogue("-m", "preflight", cluster=tmp_path / "nowhere.toml")
    assert_usage_error(run, "nowhere.toml", "does not exist")


def test_no_profile_at_all(catalogue, pytester, monkeypatch):
    monkeypatch.delenv("NODEGATE_CLUSTER", raising=False)
    result = pytester.runpytest_subprocess(str(Path(__file__).resolve().parents[2] / "checks"), "--node", "node4",
                                           "-m", "preflight", "-p", "no:cacheprovider", timeout=120)
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == 4 and "Traceback" not in text
    assert "no cluster profile" in text and "--cluster PATH" in text


def test_missing_kubeconfig(catalogue, broken_profile, lab):
    path = broken_profile(toml=lambda t: t.replace(str(lab.dir / "kubeconfig"), "/nonexistent/kubeconfig"))
    run = catalogue("-m", "preflight", cluster=path)
    assert_usage_error(run, "kubeconfig", "/nonexistent/kubeconfig")


def test_unreachable_cluster(catalogue, broken_profile, lab):
    # a loopback address of this lab's net where nothing listens
    dead = f"http://127.{lab.net}.3.9:6443"
    path = broken_profile(kubeconfig=lambda k: k.replace(lab.api_url, dead))
    run = catalogue("-m", "preflight", cluster=path)
    assert_usage_error(run, "cannot be reached", dead.removeprefix("http://").split(":")[0])


def test_target_release_not_the_next(catalogue):
    run = catalogue("-m", "preflight", "--target-release", "24.04")
    assert_usage_error(run, "--target-release 24.04 is not the next release for node4", "Ubuntu 20.04 (focal)",
                       "use --target-release 22.04 first")


def test_target_release_unknown(catalogue):
    run = catalogue("-m", "preflight", "--target-release", "26.04")
    assert_usage_error(run, "--target-release '26.04' is not a release nodegate upgrades to")


def test_postflight_needs_a_target_release(catalogue):
    run = catalogue("-m", "postflight")
    assert_usage_error(run, "no --target-release was given")


def test_ssh_refused(catalogue, broken_profile):
    run = catalogue("-m", "preflight", cluster=broken_profile(ssh=_port_2222_for_node4))
    assert_usage_error(run, "node4", "refused the SSH connection")


def test_ssh_authentication_failing(catalogue, broken_profile, lab, tmp_path):
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    identity = str(lab.dir / "ssh/id_ed25519")
    path = broken_profile(ssh=lambda c: c.replace(identity, str(key)), toml=lambda t: t.replace(identity, str(key)))
    run = catalogue("-m", "preflight", cluster=path)
    assert_usage_error(run, "node4", "did not accept the key", str(key))


def test_ssh_unknown_host_key(catalogue, broken_profile, lab, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    known = str(lab.dir / "ssh/known_hosts")
    path = broken_profile(ssh=lambda c: c.replace(known, str(empty)), toml=lambda t: t.replace(known, str(empty)))
    run = catalogue("-m", "preflight", cluster=path)
    assert_usage_error(run, "has no host key for node4", "ssh-keyscan")


def test_node_missing_where_checks_need_one(catalogue):
    run = catalogue("-m", "preflight", node=None)
    assert_usage_error(run, "no --node was given", "known nodes: node1, node2, node3, node4")


@pytest.mark.parametrize("case", ["ssh refused", "target not the next", "postflight without target",
                                  "cluster unreachable"])
def test_bad_input_under_xdist_is_one_usage_error_from_the_controller(catalogue, broken_profile, lab, case):
    """With -n (the workers collect, not the controller), the same bad input must still stop the run
    before any check with one message and its fix: not an INTERNALERROR from a worker, nor a page of
    failed checks."""
    args, cluster, said = ["-m", "preflight", "--target-release", "22.04"], None, ()
    if case == "ssh refused":
        cluster, said = broken_profile(ssh=_port_2222_for_node4), ("node4", "refused the SSH connection")
    elif case == "target not the next":
        args, said = ["-m", "preflight", "--target-release", "24.04"], ("is not the next release for node4",)
    elif case == "postflight without target":
        args, said = ["-m", "postflight"], ("no --target-release was given",)
    else:
        dead = f"http://127.{lab.net}.3.9:6443"
        cluster = broken_profile(kubeconfig=lambda k: k.replace(lab.api_url, dead))
        said = ("cannot be reached", dead.removeprefix("http://").split(":")[0])
    run = catalogue(*args, "-n", "2", cluster=cluster)
    assert_usage_error(run, *said)
    assert "INTERNALERROR" not in run.text and "[gw" not in run.text, run.text[-3000:]
    # stopped before any check: no check's result anywhere in the output (xdist's lines included)
    ran = re.findall(r"\b(?:PASSED|FAILED|ERROR) +\S*test_\w+\.py::\S+|\S*test_\w+\.py::\S+ (?:PASSED|FAILED|ERROR)\b",
                     run.text)
    assert not ran, f"checks ran before the error: {ran[:5]}"


@pytest.mark.parametrize("host_vars, phrases", [
    ({"ansible_become": False}, ("host node4 (ssh ubuntu@", "has ansible_become false while logging in as ubuntu",
                                 "set ansible_become: true for node4")),
    ({"ansible_become": True, "ansible_become_user": "deploy"},
     ("host node4 (ssh ubuntu@", "has ansible_become_user 'deploy'", "remove ansible_become_user for node4")),
], ids=["become-false", "become-user-not-root"])
def test_inventory_that_cannot_become_root_is_refused_at_preflight(catalogue, fixed_profile, host_vars, phrases):
    """The lab logs in as ubuntu; an inventory whose node4 may not become root (or becomes another
    user) is refused before any check, naming the host and the inventory fix."""
    import yaml

    inventory = fixed_profile.parent / "kubespray/inventory/mycluster/hosts.yaml"
    data = yaml.safe_load(inventory.read_text())
    data["all"]["hosts"]["node4"].update(host_vars)
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    run = catalogue("-m", "preflight", "--target-release", "22.04")
    assert_usage_error(run, *phrases)
