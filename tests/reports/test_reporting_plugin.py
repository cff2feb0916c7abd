"""The Allure layer through pytester: where results go, labels, ticket links, categories,
environment, executor, evidence attachments, xdist, and that planted secrets never reach a file."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from reportkit import (
    BEARER_TOKEN,
    INVENTORY_PASSWORD,
    TICKET,
    html_payloads,
    labels,
    load_results,
    only_run,
    run_suite,
    write_profile,
)

from nodegate.core.categories import CATEGORIES, classify

NODE_ARGS = ("--node", "node3,node4", "--target-release", "22.04")


def read_properties(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines() if "=" in line)


def test_run_writes_labelled_results_environment_and_categories_per_run(suite):
    result = run_suite(suite, *NODE_ARGS, "--execute", "--ticket", TICKET)
    # node4 fails the held-package check; everything else passes
    result.assert_outcomes(passed=5, failed=1)
    run = only_run(suite.path / "reports")
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", run.name), run.name
    results = run / "results"
    found = {(r["name"], labels(r)["node"][0]): r for r in load_results(results)}
    assert set(found) == {(name, node) for node in ("node3", "node4") for name in
                          ("test_release_is_supported[node3]" if node == "node3" else "test_release_is_supported[node4]",
                           f"test_container_packages_held[{node}]", f"test_upgrade_node[{node}]")}

    for (name, node), r in found.items():
        got = labels(r)
        assert got["node"] == [node]
        assert got["host"][0] == node        # ours comes first: Allure shows the node, not this machine
        assert got["subSuite"] == [node]
        phase = "procedure" if name.startswith("test_upgrade_node") else "preflight"
        assert got["phase"] == [phase] and got["parentSuite"] == [phase]
        assert got["category"] == ["upgrade" if phase == "procedure" else "packages"]
        assert [(p["name"], p["value"]) for p in r["parameters"]] == [("node", node)]   # not the NodeSpec repr
        assert [(link["type"], link["name"], link["url"]) for link in r["links"]] == [
            ("issue", TICKET, f"https://tickets.example.test/browse/{TICKET}")]

    failed = found[("test_container_packages_held[node4]", "node4")]
    assert failed["status"] == "failed"
    assert "held-package drift" in failed["statusDetails"]["message"]
    assert classify("failed", failed["statusDetails"]["message"]) == "Held-package drift"

    # the procedure's steps in order, each with its outcome and times, and the evidence inside them
    procedure = found[("test_upgrade_node[node4]", "node4")]
    steps = procedure["steps"]
    assert [s["name"] for s in steps] == ["cordon", "drain", "apt-get dist-upgrade"]
    assert all(s["status"] == "passed" and s["stop"] >= s["start"] > 0 for s in steps)
    command = steps[2]["attachments"][0]
    text = (results / command["source"]).read_text()
    assert "$ apt-get dist-upgrade -y" in text and "exit code: 0" in text and "on: node4" in text
    status_json = json.loads((results / steps[0]["attachments"][0]["source"]).read_text())
    assert status_json == {"name": "node4", "unschedulable": False}
    table = found[("test_container_packages_held[node3]", "node3")]["attachments"][0]
    assert table["type"] == "text/csv" and (results / table["source"]).read_text().splitlines()[0] == \
        "package,version,held"

    env = read_properties(results / "environment.properties")
    assert env["cluster"] == "test-cluster"
    assert env["nodes"] == "node3, node4"
    assert env["target.release"] == "22.04"
    assert env["release"] == "? → 22.04"          # the lab-less profile has no API to read the source from
    assert env["kubespray.version"] == "v2.21.0"
    assert env["kube_version"] == "v1.25.6"
    assert env["rook.version"] == "v1.14.8" and env["cephcsi.version"] == "v3.11.0"
    assert env["nodegate.version"] == "0.1.0"
    assert re.fullmatch(r"[0-9a-f]{7,}(-dirty)?", env["nodegate.commit"])
    assert env["operator"] and env["ticket"] == TICKET and env["mode"] == "execute"
    assert env["run"] == run.name

    assert json.loads((results / "categories.json").read_text()) == CATEGORIES
    executor = json.loads((results / "executor.json").read_text())
    assert executor["name"] == "nodegate" and run.name in executor["buildName"]


def test_alluredir_is_honoured_and_plain_runs_write_nothing(suite, tmp_path):
    target = tmp_path / "elsewhere"
    run_suite(suite, "--node", "node3", "--alluredir", str(target), "checks").assert_outcomes(passed=2)
    assert not (suite.path / "reports").exists()
    assert len(list(target.glob("*-result.json"))) == 2
    assert read_properties(target / "environment.properties")["mode"] == "read-only"
    # without --node this is no nodegate run: no results folder appears
    (suite.path / "test_plain.py").write_text("def test_plain():\n    assert True\n")
    suite.runpytest_subprocess("-p", "no:nodegate_procedures", "-p", "no:nodegate_fixtures",
                               "test_plain.py").assert_outcomes(passed=1)
    assert not (suite.path / "reports").exists()


def test_ticket_pattern_from_environment_when_the_profile_has_none(suite, monkeypatch):
    write_profile(suite.path, ticket_pattern=None)
    monkeypatch.setenv("NODEGATE_TICKET_LINK_PATTERN", "https://itsm.example.test/change/{}")
    run_suite(suite, "--node", "node3", "--ticket", "CHG-77", "checks").assert_outcomes(passed=2)
    for r in load_results(only_run(suite.path / "reports") / "results"):
        assert [link["url"] for link in r["links"]] == ["https://itsm.example.test/change/CHG-77"]


def test_a_ticket_pattern_without_placeholder_is_a_usage_error(suite):
    write_profile(suite.path, ticket_pattern="https://tickets.example.test/browse/")
    result = run_suite(suite, "--node", "node3", "--ticket", TICKET, "checks")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ticket_link_pattern*must contain the ticket placeholder*",
                                 "*fix: write it like https://tickets.example.com/browse/{ticket}*"])
    assert "Traceback" not in result.stderr.str()


def test_xdist_workers_share_one_run_and_one_environment(suite):
    result = run_suite(suite, *NODE_ARGS, "--execute", "-n", "2")
    result.assert_outcomes(passed=5, failed=1)
    results = only_run(suite.path / "reports") / "results"
    found = load_results(results)
    assert len(found) == 6 and {labels(r)["node"][0] for r in found} == {"node3", "node4"}
    # set_environment ran in a worker; the controller merged it and removed the worker files
    assert read_properties(results / "environment.properties")["rook.version"] == "v1.14.8"
    assert not list(results.glob("nodegate-env-*.json"))


LEAKY = f'''
import logging
import allure
import pytest

log = logging.getLogger("leaky")


@pytest.mark.preflight
def test_leaks_everywhere(node, evidence, profile):
    kubeconfig = profile.kube.kubeconfig.read_text()
    inventory = profile.kubespray.inventory.read_text()
    print("kubeconfig as read:", kubeconfig)              # captured stdout -> an attachment
    log.warning("inventory: %s", inventory)               # captured log -> an attachment
    evidence.text("kubeconfig", kubeconfig)
    evidence.json("inventory", {{"text": inventory}})
    allure.attach("Authorization: Bearer {BEARER_TOKEN}", name="raw header")  # bypasses evidence
    with evidence.step("login with {INVENTORY_PASSWORD}"):
        pass
    assert False, "could not log in with password {INVENTORY_PASSWORD} and token {BEARER_TOKEN}"
'''


def test_planted_secrets_reach_no_results_file_and_no_report(suite, tmp_path):
    (suite.path / "checks" / "test_leaky.py").write_text(LEAKY)
    result = run_suite(suite, "--node", "node4", "checks/test_leaky.py")
    result.assert_outcomes(failed=1)
    run = only_run(suite.path / "reports")
    results = run / "results"
    files = [p for p in results.iterdir() if p.is_file()]
    assert len(files) >= 5   # result, attachments (stdout, log, kubeconfig, inventory, header), env …
    texts = {p.name: p.read_text(encoding="utf-8", errors="replace") for p in files}
    # the leaks really happened and were masked, not lost
    assert any("kubeconfig as read:" in t for t in texts.values())
    assert any("Authorization: Bearer ***" in t for t in texts.values())
    for name, text in texts.items():
        assert BEARER_TOKEN not in text, f"token in {name}"
        assert INVENTORY_PASSWORD not in text, f"password in {name}"

    from nodegate.report.cli import build_report

    files = build_report(run_dir=run, out=tmp_path / "report.html", reports=suite.path / "reports")
    everything = [files.html, files.summary, *(suite.path / "reports" / "history").iterdir()]
    for path in everything:
        text = path.read_text(encoding="utf-8")
        text = html_payloads(text) if path.suffix == ".html" else text
        assert BEARER_TOKEN not in text and INVENTORY_PASSWORD not in text, f"secret in {path}"
    assert "could not log in with password ***" in html_payloads(files.html.read_text())
    # the terminal (pytest's own failure report, captured output) is masked as well: it ends up in
    # the operator's scrollback and CI logs
    terminal = result.stdout.str() + result.stderr.str()
    assert "could not log in with password ***" in terminal
    assert BEARER_TOKEN not in terminal and INVENTORY_PASSWORD not in terminal


def test_category_regexes_mean_the_same_in_javascript():
    """Allure 3 matches them with JavaScript's RegExp (search), Allure 2 with java.util.regex, the
    summary with Python's re: each must compile in JavaScript and classify the same samples."""
    node = shutil.which("node")
    assert node, "node is installed by `make setup` (it runs the Allure CLI)"
    samples = [
        ("failed", "Cannot evict pod demo/web-0: The disruption budget web needs 2 healthy pods", "Blocked by a PodDisruptionBudget"),
        ("failed", "E: Packages were downgraded and -y was used without --allow-downgrades", "Kubespray known issue"),
        ("failed", "docker-ce is not held on node4", "Held-package drift"),
        ("failed", "W: Key is stored in legacy trusted.gpg keyring", "Legacy apt keyring"),
        ("failed", "csi-rbdplugin-abc is in CrashLoopBackOff", "CSI crash-loop"),
        ("broken", "node4 did not come back within 600 s", "Node did not come back"),
        ("failed", "ceph health is HEALTH_WARN: 1 osds down", "Storage unhealthy"),
        ("failed", "the upgrade lock is held by alice since 10:00", "Another upgrade holds the lock"),
        ("failed", "Kubespray v2.21.0 does not list Ubuntu 24.04: not supported", "Unsupported versions"),
        ("failed", "something else entirely", "Node not ready for the change"),
        ("broken", "KeyError: 'x'", "Harness or lab error"),
        ("passed", "", None),
    ]
    script = ("const cats = JSON.parse(process.argv[1]); const samples = JSON.parse(process.argv[2]);"
              "console.log(JSON.stringify(samples.map(([s, m]) => { for (const c of cats) {"
              " if (c.matchedStatuses.includes(s) && new RegExp(c.messageRegex).test(m)) return c.name; }"
              " return null; })));")
    out = subprocess.run([node, "-e", script, json.dumps(CATEGORIES), json.dumps([[s, m] for s, m, _ in samples])],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    expected = [want for _, _, want in samples]
    assert json.loads(out) == expected
    assert [classify(s, m) for s, m, _ in samples] == expected


def test_inventory_secrets_are_found_in_yaml_ini_and_vault_tags_but_settings_are_not(tmp_path):
    from nodegate.core.secrets import inventory_secrets

    inv = tmp_path / "inventory"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.ini").write_text("[all]\nnode1 ansible_host=10.0.0.1 ansible_password='ini-Secret-1'\n"
                                   "[all:vars]\nansible_become_pass=\"ini-Secret-2\"\nkube_token_auth=false\n")
    (inv / "group_vars" / "all" / "creds.yml").write_text(
        "registry:\n  auth:\n    password: yaml-Secret-3\nvault_db_password: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n"
        "  6162636465\nkube_token_auth: false\nkube_encrypt_secret_data: \"true\"\nplain: not-a-secret\n")
    found = inventory_secrets(inv)
    assert {"ini-Secret-1", "ini-Secret-2", "yaml-Secret-3"} <= set(found)
    assert any(v.startswith("$ANSIBLE_VAULT") for v in found)
    assert not {"false", "true", "not-a-secret", "10.0.0.1"} & set(found)


def test_a_check_of_both_phases_is_labelled_with_the_phase_that_ran(suite, tmp_path):
    (suite.path / "checks" / "test_both.py").write_text(
        "import pytest\n\n\n@pytest.mark.preflight\n@pytest.mark.postflight\ndef test_node_ready(node):\n"
        "    assert node.name\n")
    out = tmp_path / "results"   # one folder, as the procedure's gates share the run's
    for phase in ("preflight", "postflight"):
        run_suite(suite, "--node", "node3", "--target-release", "22.04", "-m", phase, "--alluredir", str(out),
                  "checks/test_both.py").assert_outcomes(passed=1)
    found = {labels(r)["phase"][0]: r for r in load_results(out)}
    assert set(found) == {"preflight", "postflight"}
    # own ids for the postflight result, or Allure files it as a retry of the preflight one
    assert found["preflight"]["historyId"] != found["postflight"]["historyId"]
    assert found["preflight"]["testCaseId"] != found["postflight"]["testCaseId"]

    from nodegate.report.cli import build_report

    html = build_report(run_dir=out, out=tmp_path / "r.html", reports=tmp_path / "reports").html.read_text()
    shown = [json.loads(base64.b64decode(v)) for _, v in re.findall(r'd\("(data/test-results/[^"]+)","([^"]*)"\)', html)]
    assert sorted(r["status"] for r in shown) == ["passed", "passed"] and not any(r["retry"] for r in shown)
