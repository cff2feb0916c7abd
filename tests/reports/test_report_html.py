"""`nodegate report`: the single-file HTML opened in headless Chromium (Debian's package, started
here), the Markdown ticket summary beside it, history per cluster, and clear errors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from reportkit import (
    TICKET,
    chromium,
    keep,
    only_run,
    report_results,
    result_steps,
    run_suite,
    tree_leaves,
    visible_text,
)


def nodegate_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nodegate", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def test_single_file_report_shows_checks_steps_statuses_and_the_failure_category(suite, tmp_path):
    run_suite(suite, "--node", "node3,node4", "--target-release", "22.04", "--execute",
              "--ticket", TICKET).assert_outcomes(passed=5, failed=1)
    run = only_run(suite.path / "reports")
    out = tmp_path / "ticket" / "CHG-1234.html"
    cli = nodegate_cli("report", str(run), "--out", str(out), env={"NODEGATE_REPORTS": str(suite.path / "reports")})
    assert cli.returncode == 0, cli.stderr
    assert f"report:  {out}" in cli.stdout and f"summary: {out.with_suffix('.md')}" in cli.stdout
    html = out.read_text(encoding="utf-8")

    # one self-contained file: nothing is fetched from anywhere, and Allure's tracking script is gone
    assert "googletagmanager" not in html and "gtag(" not in html
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="https?://', html)
    data = report_results(html)
    assert {name: r["status"] for name, r in data.items()} == {
        "test_release_is_supported[node3]": "passed", "test_container_packages_held[node3]": "passed",
        "test_upgrade_node[node3]": "passed", "test_release_is_supported[node4]": "passed",
        "test_container_packages_held[node4]": "failed", "test_upgrade_node[node4]": "passed"}

    work = tmp_path / "chromium"
    work.mkdir()
    main = chromium(out.as_uri(), workdir=work)
    text = visible_text(main)
    for shown in ("cluster test-cluster", "nodes node3, node4", "release ? → 22.04", "kubespray.version v2.21.0",
                  "kube_version v1.25.6", "rook.version v1.14.8", "Total 6", "Failed 1", "Passed 5"):
        assert shown in text, f"{shown!r} not on the report's first page"
    # the tree opens where the failure is
    assert tree_leaves(main)["test_container_packages_held[node4]"] == "failed"

    failed_id = data["test_container_packages_held[node4]"]["id"]
    failed = visible_text(chromium(f"{out.as_uri()}#/{failed_id}", workdir=work))
    assert "Failed" in failed
    assert "Category: Held-package drift" in failed
    assert "docker-ce is not held on node4: held-package drift" in failed
    assert "CHG-1234" in failed

    upgrade_id = data["test_upgrade_node[node4]"]["id"]
    upgrade_dom = chromium(f"{out.as_uri()}#/{upgrade_id}", workdir=work)
    steps = result_steps(upgrade_dom)
    body = [s for s in steps if s[0] in ("cordon", "drain", "apt-get dist-upgrade")]
    assert body == [("cordon", "passed"), ("drain", "passed"), ("apt-get dist-upgrade", "passed")], steps
    upgrade = visible_text(upgrade_dom)
    assert "Passed" in upgrade and "phase procedure" in upgrade and "node node4" in upgrade

    check_id = data["test_release_is_supported[node3]"]["id"]
    check_steps = result_steps(chromium(f"{out.as_uri()}#/{check_id}", workdir=work))
    assert ("read /etc/os-release on node3", "passed") in check_steps

    shot = tmp_path / "failed-check.png"
    chromium(f"{out.as_uri()}#/{failed_id}", workdir=work, screenshot=shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    keep(shot)

    summary = out.with_suffix(".md").read_text(encoding="utf-8")
    assert summary.startswith("# nodegate test-cluster / node3, node4: FAILED")
    assert f"- Ticket: [{TICKET}](https://tickets.example.test/browse/{TICKET})" in summary
    assert "- Release: ? → 22.04" in summary
    assert "Kubespray v2.21.0, kube_version v1.25.6, Rook v1.14.8, cephcsi v3.11.0" in summary
    assert "- Kubespray version found by: git: tag v2.21.0 at HEAD" in summary   # the clone's tag
    # an upgrade run: the ticket gets the steps, and the checks counted per phase
    assert "| 2 | node4 | procedure | test_upgrade_node[node4] | **passed** |" in summary
    assert "- preflight checks run by the procedure's gates: 3 passed, 1 failed" in summary
    assert re.search(r"\|  \|  \|  \| ↳ apt-get dist-upgrade \| passed \|", summary)
    assert ("- **test_container_packages_held[node4]** (node4, preflight) — Held-package drift: "
            "AssertionError: docker-ce is not held on node4") in summary
    assert "  - Known fix: apt-mark hold containerd.io docker-ce docker-ce-cli" in summary
    assert "assert 'node4'" not in summary   # pytest's introspection is for the HTML, not the ticket


def test_each_report_shows_the_trend_of_earlier_runs_on_the_same_cluster(suite, tmp_path):
    reports = suite.path / "reports"
    htmls = []
    for attempt in range(2):
        run_suite(suite, "--node", "node4", "checks").assert_outcomes(passed=1, failed=1)
        run = sorted((reports / "runs").iterdir())[-1]
        from nodegate.report.cli import build_report

        htmls.append(build_report(run_dir=run, out=tmp_path / f"r{attempt}.html", reports=reports).html)
    history = (reports / "history" / "test-cluster.jsonl").read_text().splitlines()
    assert len(history) == 2
    first, second = (report_results(p.read_text()) for p in htmls)
    assert first["test_container_packages_held[node4]"]["history"] == []
    earlier = second["test_container_packages_held[node4]"]["history"]
    assert [h["status"] for h in earlier] == ["failed"]
    # the newest run is what `nodegate report` takes without a RUN_DIR
    cli = nodegate_cli("report", "--out", str(tmp_path / "newest.html"), env={"NODEGATE_REPORTS": str(reports)})
    assert cli.returncode == 0, cli.stderr
    assert sorted((reports / "runs").iterdir())[-1].name in (tmp_path / "newest.md").read_text()


def test_report_errors_name_the_problem_and_the_fix(tmp_path):
    empty = tmp_path / "reports"
    (empty / "runs").mkdir(parents=True)
    cli = nodegate_cli("report", env={"NODEGATE_REPORTS": str(empty)})
    assert cli.returncode == 2
    assert f"no runs under {empty / 'runs'}" in cli.stderr and "fix: run the checks" in cli.stderr
    assert "Traceback" not in cli.stderr

    cli = nodegate_cli("report", str(tmp_path / "nope"), env={"NODEGATE_REPORTS": str(empty)})
    assert cli.returncode == 2 and "no run folder" in cli.stderr

    bare = empty / "runs" / "20260101T000000Z-abcd" / "results"
    bare.mkdir(parents=True)
    cli = nodegate_cli("report", str(bare.parent), env={"NODEGATE_REPORTS": str(empty)})
    assert cli.returncode == 2 and "holds no Allure results" in cli.stderr

    (bare / "x-result.json").write_text(json.dumps({"name": "t", "status": "passed", "start": 1, "stop": 2}))
    cli = nodegate_cli("report", str(bare.parent), "--out", str(tmp_path / "r.txt"),
                       env={"NODEGATE_REPORTS": str(empty)})
    assert cli.returncode == 2 and "is not an .html file" in cli.stderr
