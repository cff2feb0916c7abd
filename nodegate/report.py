"""`nodegate report [RUN_DIR] --out FILE.html`: one self-contained HTML file for the change ticket,
and beside it a short Markdown summary fit for the ticket's body.

The HTML comes from the Allure command-line tool (npm `allure`, pinned in reports/package.json and
installed by `make`), `allure awesome --single-file`; a history file per cluster under
`reports/history/` lets each new report show the trend of earlier runs.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nodegate.errors import PermanentError, UsageError
from nodegate.secrets import redact

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ResultLine:
    name: str
    status: str
    start: float
    stop: float
    node: str | None
    phase: str | None
    category: str | None
    message: str


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    summary: Path


def find_run_dir(run_dir: Path | None, reports: Path) -> Path:
    """The run to report on: the one given, else the newest under reports/runs/."""
    if run_dir is not None:
        if not run_dir.exists():
            raise UsageError(f"no run folder {run_dir}", fix="give a folder under reports/runs/, or none for the newest")
        return run_dir
    runs = sorted(p for p in (reports / "runs").glob("*") if (p / "results").is_dir())
    if not runs:
        raise UsageError(f"no runs under {reports / 'runs'}",
                         fix="run the checks or a procedure first (pytest --node …), then nodegate report")
    return runs[-1]


def results_of(run_dir: Path) -> Path:
    results = run_dir / "results" if (run_dir / "results").is_dir() else run_dir
    if not any(results.glob("*-result.json")):
        raise UsageError(f"{results} holds no Allure results", fix="point at a run folder written by pytest --node …")
    return results


def read_results(results: Path) -> list[ResultLine]:
    lines = []
    for path in sorted(results.glob("*-result.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        labels = {}
        for label in raw.get("labels", []):
            labels.setdefault(label.get("name"), label.get("value"))
        lines.append(ResultLine(
            name=raw.get("name", "?"), status=raw.get("status", "unknown"),
            start=raw.get("start", 0) / 1000, stop=raw.get("stop", 0) / 1000,
            node=labels.get("node"), phase=labels.get("phase"), category=labels.get("category"),
            message=(raw.get("statusDetails") or {}).get("message", "") or ""))
    return sorted(lines, key=lambda r: (r.start, r.name))


def read_environment(results: Path) -> dict[str, str]:
    env = {}
    path = results / "environment.properties"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if "=" in line:
                key, value = line.split("=", 1)
                env[key.strip()] = value.strip()
    return env


def summary_markdown(results: Path) -> str:
    lines = read_results(results)
    env = read_environment(results)
    failed = [r for r in lines if r.status in ("failed", "broken")]
    outcome = "FAILED" if failed else ("PASSED" if lines else "NOTHING RAN")
    start = min((r.start for r in lines), default=0)
    stop = max((r.stop for r in lines), default=0)
    fmt = lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "?"  # noqa: E731
    out = [
        f"# nodegate run {env.get('run', results.parent.name)}: {outcome}",
        "",
        f"- Cluster: {env.get('cluster', '?')}",
        f"- Node(s): {env.get('nodes', '?')}",
        f"- Release: {env.get('source.release', '?')} → {env.get('target.release', '?')}",
        f"- Start: {fmt(start)}; end: {fmt(stop)}",
        f"- Operator: {env.get('operator', '?')}; nodegate {env.get('nodegate.version', '?')} ({env.get('nodegate.commit', '?')})",
        "",
        "| # | node | phase | check or step | outcome |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(lines, 1):
        out.append(f"| {i} | {r.node or ''} | {r.phase or ''} | {r.name} | {r.status} |")
    if failed:
        out += ["", "## What failed", ""]
        for r in failed:
            first = r.message.strip().splitlines()
            out.append(f"- **{r.name}** ({r.node or 'cluster'}): " + (" ".join(first[:6]) if first else "no message"))
    return redact("\n".join(out) + "\n")


def allure_command(reports: Path) -> list[str]:
    local = reports / "node_modules" / ".bin" / "allure"
    if local.exists():
        return [str(local)]
    found = shutil.which("allure")
    if found:
        return [found]
    raise UsageError("the Allure command-line tool is not installed",
                     fix=f"run `make setup` (or `npm ci --prefix {reports}`)")


def build_report(*, run_dir: Path | None, out: Path | None, reports: Path | None = None,
                 cluster: str | None = None) -> ReportFiles:
    reports = reports or Path(os.environ.get("NODEGATE_REPORTS", PROJECT_ROOT / "reports"))
    run = find_run_dir(run_dir, reports)
    results = results_of(run)
    env = read_environment(results)
    out = out or run / "report.html"
    history = reports / "history" / f"{(cluster or env.get('cluster') or 'default').replace('/', '_')}.jsonl"
    history.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nodegate-report-") as tmp:
        cmd = allure_command(reports) + [
            "awesome", str(results), "--single-file", "-o", tmp, "--history-path", str(history),
            "--name", f"nodegate {env.get('nodes', '')} {env.get('run', run.name)}".strip(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        index = Path(tmp) / "index.html"
        if proc.returncode != 0 or not index.exists():
            raise PermanentError(f"allure awesome failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}",
                                 fix="check the results folder, or reinstall the Allure CLI with `make setup`")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(index, out)
    summary = out.with_suffix(".md")
    summary.write_text(summary_markdown(results), encoding="utf-8")
    return ReportFiles(html=out, summary=summary)


def add_parser(sub) -> None:
    parser = sub.add_parser("report", help="turn a run's results into one HTML file and a ticket summary")
    parser.add_argument("run_dir", nargs="?", type=Path, help="a folder under reports/runs/ (default: the newest)")
    parser.add_argument("--out", type=Path, help="the HTML file to write (default: RUN_DIR/report.html)")
    parser.add_argument("--reports", type=Path, help="the reports folder (default: the project's reports/)")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    files = build_report(run_dir=args.run_dir, out=args.out, reports=args.reports)
    print(f"report:  {files.html}")
    print(f"summary: {files.summary}")
    return 0
