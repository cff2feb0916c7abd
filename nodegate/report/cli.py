"""`nodegate report [RUN_DIR] --out FILE.html`: one self-contained HTML file for the change ticket,
and beside it (FILE.md) a short Markdown summary fit for the ticket's body.

The HTML comes from the Allure command-line tool (npm `allure`, pinned in reports/package.json and
installed by `make`): `allure awesome --single-file`, configured through a generated allurerc.json
(report name, the failure categories, a history file per cluster under `reports/history/` so each
new report shows the trend of the earlier runs on the same cluster). The results are copied and
redacted once more before Allure reads them, and the tracking script Allure's template carries is
removed: the file must open from a ticket attachment with no network at all.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nodegate.core.categories import ERROR_CATEGORY_LABEL
from nodegate.core.errors import PermanentError, UsageError
from nodegate.core.secrets import redact

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Allure's page template loads Google Analytics; a change report for an on-premises cluster must not
_TRACKING = re.compile(r"<script[^>]*googletagmanager[^>]*>\s*</script>\s*<script>[^<]*?gtag\([^<]*</script>", re.S)


@dataclass(frozen=True)
class StepLine:
    name: str
    status: str
    duration_s: float
    depth: int


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
    steps: tuple[StepLine, ...] = ()
    links: tuple[tuple[str, str], ...] = ()      # (name, url)
    error_category: str | None = None            # the category its typed error named, if any

    @property
    def duration_s(self) -> float:
        return max(0.0, self.stop - self.start)


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    summary: Path


def find_run_dir(run_dir: Path | None, reports: Path) -> Path:
    """The run to report on: the one given, else the newest under reports/runs/."""
    if run_dir is not None:
        if not run_dir.is_dir():
            raise UsageError(f"no run folder {run_dir}",
                             fix=f"give a folder under {reports / 'runs'}, or none for the newest run")
        return run_dir
    runs = sorted(p for p in (reports / "runs").glob("*") if (p / "results").is_dir())
    if not runs:
        raise UsageError(f"no runs under {reports / 'runs'}",
                         fix="run the checks or a procedure first (pytest checks/ --cluster … --node …), "
                             "then nodegate report")
    return runs[-1]


def results_of(run_dir: Path) -> Path:
    results = run_dir / "results" if (run_dir / "results").is_dir() else run_dir
    if not any(results.glob("*-result.json")):
        raise UsageError(f"{results} holds no Allure results",
                         fix="point at a run folder written by pytest --node … (reports/runs/<run id>)")
    return results


def _steps(raw: list, depth: int = 0) -> list[StepLine]:
    out: list[StepLine] = []
    for step in raw or []:
        out.append(StepLine(name=step.get("name", "?"), status=step.get("status", "unknown"),
                            duration_s=max(0, step.get("stop", 0) - step.get("start", 0)) / 1000, depth=depth))
        out += _steps(step.get("steps", []), depth + 1)
    return out


def read_results(results: Path) -> list[ResultLine]:
    lines = []
    for path in sorted(results.glob("*-result.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {path}: {exc}", fix="the results folder is damaged; run again") from None
        labels: dict[str, str] = {}
        for label in raw.get("labels", []):
            labels.setdefault(label.get("name"), label.get("value"))
        lines.append(ResultLine(
            name=raw.get("name", "?"), status=raw.get("status", "unknown"),
            start=raw.get("start", 0) / 1000, stop=raw.get("stop", 0) / 1000,
            node=labels.get("node"), phase=labels.get("phase"), category=labels.get("category"),
            error_category=labels.get(ERROR_CATEGORY_LABEL),
            message=(raw.get("statusDetails") or {}).get("message", "") or "",
            steps=tuple(_steps(raw.get("steps", []))),
            links=tuple((link.get("name") or link.get("url", ""), link.get("url", ""))
                        for link in raw.get("links", []) if link.get("type") == "issue")))
    return sorted(lines, key=lambda r: (r.start, r.name))


def read_environment(results: Path) -> dict[str, str]:
    env = {}
    path = results / "environment.properties"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                env[key.strip()] = value.strip().replace("\\n", "\n").replace("\\\\", "\\")
    return env


def known_fix(message: str, category: str | None) -> str | None:
    """The fix for a failure: the one its message names (`fix: …`), else a known issue whose
    symptom it shows, else the general advice for its failure class."""
    found = re.search(r"(?im)^\s*fix:\s*(.+)$", message)
    if found:
        return found.group(1).strip()
    from nodegate.core.categories import CATEGORY_FIXES
    from nodegate.core.knowledge import KNOWN_ISSUES

    for issue in KNOWN_ISSUES:
        if issue.matches(message):
            return f"{issue.title}: {issue.fix} ({'; '.join(issue.references)})"
    return CATEGORY_FIXES.get(category or "")


def _said(message: str) -> list[str]:
    """The message's own lines: without its fix line (shown apart) and without pytest's assertion
    introspection (`assert …`, `+ where …`), which is for the HTML, not the ticket."""
    lines = []
    for line in message.strip().splitlines():
        bare = line.strip()
        if not bare or bare.startswith("fix:"):
            continue
        if re.match(r"(assert |\+ +where |where |\+ |- |At index |Full diff|Use -v)", bare):
            break
        lines.append(bare)
    return lines


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def summary_markdown(results: Path, *, html_name: str | None = None) -> str:
    from nodegate.core.categories import classify

    lines = read_results(results)
    env = read_environment(results)
    failed = [r for r in lines if r.status in ("failed", "broken")]
    outcome = "FAILED" if failed else ("PASSED" if lines else "NOTHING RAN")
    start = min((r.start for r in lines if r.start), default=0)
    stop = max((r.stop for r in lines), default=0)
    fmt = lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "?"  # noqa: E731
    counts = {s: sum(1 for r in lines if r.status == s) for s in ("passed", "failed", "broken", "skipped")}
    tickets = sorted({link for r in lines for link in r.links})
    out = [
        f"# nodegate {env.get('cluster', '?')} / {env.get('nodes', '?')}: {outcome}",
        "",
        f"- Run: {env.get('run', results.parent.name)} ({env.get('mode', '?')})",
    ]
    if tickets:
        out.append("- Ticket: " + ", ".join(f"[{name}]({url})" if url and url != name else name
                                            for name, url in tickets))
    out += [
        f"- Cluster: {env.get('cluster', '?')}; node(s): {env.get('nodes', '?')}",
        f"- Release: {env.get('release', '?')}",
        f"- Kubespray {env.get('kubespray.version', '?')}, kube_version {env.get('kube_version', '?')}, "
        f"Rook {env.get('rook.version', '?')}, cephcsi {env.get('cephcsi.version', '?')}",
        *([f"- Kubespray version found by: {env['kubespray.version.found']}"] if env.get("kubespray.version.found")
          else []),
        f"- Start: {fmt(start)}; end: {fmt(stop)} ({max(0, stop - start):.0f} s)",
        f"- Operator: {env.get('operator', '?')}; nodegate {env.get('nodegate.version', '?')} "
        f"({env.get('nodegate.commit', '?')})",
        f"- Outcome: {counts['passed']} passed, {counts['failed']} failed, {counts['broken']} broken, "
        f"{counts['skipped']} skipped",
        "",
        "| # | node | phase | check or step | outcome | time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    procedure = [r for r in lines if r.phase == "procedure"]
    # In an upgrade run the ticket wants the steps; the checks its gates ran are counted per phase
    # (and any that failed are listed below); a checks-only run lists every check.
    shown = procedure if procedure else lines
    for i, r in enumerate(shown, 1):
        out.append(f"| {i} | {_cell(r.node or '')} | {_cell(r.phase or '')} | {_cell(r.name)} | "
                   f"**{r.status}** | {r.duration_s:.1f} s |")
        for step in r.steps:
            if step.depth == 0 and step.name != r.name:   # sub-steps; deeper ones are in the HTML
                out.append(f"|  |  |  | ↳ {_cell(step.name)} | {step.status} | {step.duration_s:.1f} s |")
    if procedure:
        out.append("")
        phases = {r.phase or "other" for r in lines} - {"procedure"}
        for phase in sorted(phases, key=lambda p: ("preflight", "postflight").index(p) if p in ("preflight", "postflight")
                            else 2):
            of_phase = [r for r in lines if (r.phase or "other") == phase]
            tally = ", ".join(f"{sum(1 for r in of_phase if r.status == s)} {s}"
                              for s in ("passed", "failed", "broken", "skipped") if any(r.status == s for r in of_phase))
            out.append(f"- {phase} checks run by the procedure's gates: {tally}")
    if failed:
        out += ["", "## What failed", ""]
        for r in failed:
            category = classify(r.status, r.message, error_category=r.error_category)
            text = _said(r.message)
            out.append(f"- **{r.name}** ({r.node or 'cluster'}, {r.phase or 'check'}) — {category or r.status}: "
                       + (_cell(" ".join(text[:4]))[:600] if text else "no message"))
            fix = known_fix(r.message, category)
            if fix:
                out.append(f"  - Known fix: {_cell(fix)}")
    if html_name:
        out += ["", f"Evidence (commands, outputs, states before and after): attached report `{html_name}`."]
    return redact("\n".join(out) + "\n")


def allure_command(reports: Path) -> list[str]:
    for base in (reports, PROJECT_ROOT / "reports"):
        local = base / "node_modules" / ".bin" / "allure"
        if local.exists():
            return [str(local.resolve())]   # absolute: Allure runs in a temporary folder
    found = shutil.which("allure")
    if found:
        return [found]
    raise UsageError("the Allure command-line tool is not installed",
                     fix=f"run `make allure` (or `npm ci --prefix {PROJECT_ROOT / 'reports'}`)")


def _categories(results: Path) -> list:
    from nodegate.core.categories import CATEGORIES

    path = results / "categories.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else CATEGORIES
    except ValueError:
        return CATEGORIES


def build_report(*, run_dir: Path | None, out: Path | None, reports: Path | None = None,
                 cluster: str | None = None) -> ReportFiles:
    from nodegate.core.results import redact_results

    reports = reports or Path(os.environ.get("NODEGATE_REPORTS", PROJECT_ROOT / "reports"))
    run = find_run_dir(run_dir, reports)
    results = results_of(run)
    env = read_environment(results)
    out = (out or run / "report.html").resolve()
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {out} is not an .html file", fix="give a file name ending in .html")
    cluster_name = re.sub(r"[^A-Za-z0-9._-]", "_", cluster or env.get("cluster") or "default")
    history = reports / "history" / f"{cluster_name}.jsonl"
    history.parent.mkdir(parents=True, exist_ok=True)
    name = f"nodegate {env.get('cluster', '')} {env.get('nodes', '')} {env.get('run', run.name)}"
    with tempfile.TemporaryDirectory(prefix="nodegate-report-") as tmp:
        copy = Path(tmp) / "results"
        shutil.copytree(results, copy)
        redact_results(copy)
        config = Path(tmp) / "allurerc.json"
        config.write_text(json.dumps({
            "name": " ".join(name.split()), "output": str(Path(tmp) / "html"), "historyPath": str(history),
            "categories": _categories(results),
        }, indent=2), encoding="utf-8")
        cmd = allure_command(reports) + ["awesome", str(copy), "--config", str(config), "--single-file",
                                         "-o", str(Path(tmp) / "html")]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp,
                                  env={**os.environ, "ALLURE_NO_ANALYTICS": "true", "NO_COLOR": "1"})
        except subprocess.TimeoutExpired:
            raise PermanentError("allure awesome did not finish within 300 s",
                                 fix="check the results folder's size; reinstall the Allure CLI with `make allure`") from None
        index = Path(tmp) / "html" / "index.html"
        if proc.returncode != 0 or not index.exists():
            said = redact((proc.stderr or proc.stdout).strip()[-800:])
            raise PermanentError(f"allure awesome failed (exit {proc.returncode}): {said}",
                                 fix="check the results folder, or reinstall the Allure CLI with `make allure`")
        html = _TRACKING.sub("", index.read_text(encoding="utf-8"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
    summary = out.with_suffix(".md")
    summary.write_text(summary_markdown(results, html_name=out.name), encoding="utf-8")
    return ReportFiles(html=out, summary=summary)


def add_parser(sub) -> None:
    parser = sub.add_parser("report", help="turn a run's results into one HTML file and a ticket summary",
                            description="Build one self-contained HTML report (and FILE.md, a summary for "
                                        "the ticket's body) from a run under reports/runs/.")
    parser.add_argument("run_dir", nargs="?", type=Path, help="a folder under reports/runs/ (default: the newest)")
    parser.add_argument("--out", type=Path, help="the HTML file to write (default: RUN_DIR/report.html)")
    parser.add_argument("--reports", type=Path, help="the reports folder (default: $NODEGATE_REPORTS or the "
                                                     "project's reports/)")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    files = build_report(run_dir=args.run_dir, out=args.out, reports=args.reports)
    print(f"report:  {files.html}")
    print(f"summary: {files.summary}")
    return 0
