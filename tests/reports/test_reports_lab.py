"""The evidence of real lab runs: an upgrade of node4 that the gate stops on Kubespray's known
downgrade issue (the lab's Kubespray v2.21.0 checkout lacks the fix, read from its task file),
then the same command again after the documented fix, to the end. Both results folders are checked (steps, attachments,
labels, categories, environment, ticket link), both reports are built and opened in Chromium,
and no file anywhere holds the lab's bearer token or a password planted in its inventory.

The lab is this test's own (4 nodes, short boot delays): the upgrade changes node4 for good.
"""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from reportkit import chromium, html_payloads, keep, labels, load_results, report_results, result_steps, visible_text

from nodegate.core.categories import classify
from nodegate.core.knowledge import cephcsi_for_rook
from nodegate.upgrade import STEP_NAMES

ROOT = Path(__file__).resolve().parent.parent.parent
PLANTED_PASSWORD = "Lab-Inv-Secret-4t9QwZ"
TICKET = "CHG-2026-77"


def upgrade(lab, reports: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NODEGATE_REPORTS": str(reports),
           "NODEGATE_TICKET_LINK_PATTERN": "https://tickets.example.test/browse/{ticket}"}
    return subprocess.run([sys.executable, "-m", "pytest", "procedures/", "-p", "no:randomly", "-p", "no:cacheprovider",
                           "--cluster", str(lab.dir / "cluster.toml"), "--node", "node4", "--target-release", "22.04",
                           "--execute", "--ticket", TICKET, *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def procedure_results(results: Path) -> dict[str, dict]:
    """step name (from the test id) -> result, for node4's procedure results."""
    out = {}
    for r in load_results(results):
        if labels(r).get("phase") == ["procedure"]:
            step = next(p["value"] for p in r.get("parameters", []) if p["name"] == "step")
            out[step.strip("'")] = r
    return out


def attachment_text(results: Path, result: dict, name_part: str) -> str:
    found = [a for s in result.get("steps", []) for a in s.get("attachments", []) if name_part in a["name"]]
    found += [a for a in result.get("attachments", []) if name_part in a["name"]]
    assert found, f"no attachment named like {name_part!r} in {result['name']}: " \
                  f"{[a['name'] for s in result.get('steps', []) for a in s.get('attachments', [])]}"
    return (results / found[0]["source"]).read_text(encoding="utf-8")


def read_properties(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines() if "=" in line)


def test_failing_lab_upgrade_and_its_resumed_run_leave_complete_evidence(make_lab, tmp_path):
    lab = make_lab.up("--boot-delay", "0.5", "--ready-delay", "0.3", nodes=4, bare=False)
    secrets_file = lab.dir / "kubespray" / "inventory" / "mycluster" / "group_vars" / "all" / "zz-registry.yml"
    secrets_file.write_text(f"---\nregistry_password: \"{PLANTED_PASSWORD}\"\n")
    reports = tmp_path / "reports"

    # -- run 1: the gate stops it on the known Kubespray issue, before any change ------------------
    first = upgrade(lab, reports)
    assert first.returncode == 1, first.stdout[-4000:]
    run1 = sorted((reports / "runs").glob("2*"))[-1]
    results = run1 / "results"
    steps = procedure_results(results)
    assert len(steps) == len(STEP_NAMES), sorted(steps)
    statuses = {name: r["status"] for name, r in steps.items()}
    assert statuses["gate"] == "failed"
    assert {status for name, status in statuses.items() if name != "gate"} == {"skipped"}, statuses

    for _name, r in steps.items():
        got = labels(r)
        assert got["node"] == ["node4"] and got["phase"] == ["procedure"] and got["category"] == ["upgrade"]
        assert [(link["type"], link["url"]) for link in r["links"]] == [
            ("issue", f"https://tickets.example.test/browse/{TICKET}")]
        if r["status"] != "skipped":
            (step,) = r["steps"]    # one Allure step per procedure step, with its times and outcome
            assert step["status"] == r["status"] and step["stop"] >= step["start"] > 0
            assert "plan" in [a["name"] for a in step["attachments"]]

    failed = steps["gate"]
    message = failed["statusDetails"]["message"]
    assert "kubespray #9114 fix missing: add `    force: true` to " in message and "nothing was changed" in message
    assert classify("failed", message) == "Kubespray known issue"

    # the gate's preflight checks ran in their own process into the same results, one per check
    preflight = [r for r in load_results(results) if labels(r).get("phase") == ["preflight"]]
    assert len(preflight) >= 10 and all(labels(r).get("node", ["node4"]) == ["node4"] for r in preflight)

    env = read_properties(results / "environment.properties")
    assert env["cluster"] == "nodegate-lab" and env["nodes"] == "node4"
    assert env["release"] == "20.04 → 22.04"
    assert env["kubespray.version"] == "v2.21.0" and env["kube_version"] == lab.kube_version
    assert env["rook.version"] == lab.rook_version
    assert env["cephcsi.version"] == cephcsi_for_rook(lab.rook_version)
    assert env["ticket"] == TICKET and env["mode"] == "execute" and env["operator"]
    assert json.loads((results / "categories.json").read_text())[1]["name"] == "Kubespray known issue"

    # -- run 2: the documented fix (force: true on the docker package task), the same command again
    from nodegate.lab.kubespray import apply_force_fix

    assert apply_force_fix(lab.dir / "kubespray")
    second = upgrade(lab, reports)
    assert second.returncode == 0, second.stdout[-4000:]
    run2 = sorted((reports / "runs").glob("2*"))[-1]
    assert run2 != run1
    results2 = run2 / "results"
    steps2 = procedure_results(results2)
    assert {r["status"] for r in steps2.values()} == {"passed"}, {n: r["status"] for n, r in steps2.items()}
    env2 = read_properties(results2 / "environment.properties")
    # node4 runs 22.04 now; the journal kept where the upgrade started
    assert env2["release"] == "20.04 → 22.04"
    assert "PLAY RECAP" in attachment_text(results2, steps2["kubespray"], "kubespray output")
    assert [p for p in load_results(results2) if labels(p).get("phase") == ["postflight"]]

    # -- the reports: the failure's class in the first, every step passed in the second -------------
    from nodegate.report.cli import build_report

    work = tmp_path / "chromium"
    work.mkdir()
    report1 = build_report(run_dir=run1, out=tmp_path / "run1.html", reports=reports)
    data1 = report_results(report1.html.read_text())
    failed_page = visible_text(chromium(f"{report1.html.as_uri()}#/{data1[failed['name']]['id']}", workdir=work))
    assert "Failed" in failed_page and "Category: Kubespray known issue" in failed_page
    shot = tmp_path / "lab-upgrade-kubespray-known-issue-at-the-gate.png"
    chromium(f"{report1.html.as_uri()}#/{data1[failed['name']]['id']}", workdir=work, screenshot=shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep(shot)
    summary1 = report1.summary.read_text()
    assert "FAILED" in summary1.splitlines()[0]
    assert "Kubespray known issue" in summary1 and "force: true" in summary1

    report2 = build_report(run_dir=run2, out=tmp_path / "run2.html", reports=reports)
    main_page = chromium(report2.html.as_uri(), workdir=work)
    assert "release 20.04 → 22.04" in visible_text(main_page)
    data2 = report_results(report2.html.read_text())
    # the gates ran the same checks twice (pre and post): both show, neither as a retry of the other
    every = [json.loads(base64.b64decode(v)) for v in
             re.findall(r'd\("data/test-results/[^"]+","([^"]*)"\)', report2.html.read_text())]
    assert len(every) == len(load_results(results2)) and not any(r["retry"] for r in every)
    kubespray_name = steps2["kubespray"]["name"]
    assert data2[kubespray_name]["status"] == "passed"
    shown = result_steps(chromium(f"{report2.html.as_uri()}#/{data2[kubespray_name]['id']}", workdir=work))
    assert any(title.startswith("node4: Kubespray") and status == "passed" for title, status in shown), shown
    assert report2.summary.read_text().splitlines()[0].endswith("PASSED")

    # -- no secret anywhere: results, attachments, journal, reports, history ----------------------
    for path in [*reports.rglob("*"), report1.html, report1.summary, report2.html, report2.summary]:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        text = html_payloads(text) if path.suffix == ".html" else text
        assert lab.token not in text, f"the lab's bearer token is in {path}"
        assert PLANTED_PASSWORD not in text, f"the planted inventory password is in {path}"
