"""The Allure layer of the plugin: where results go, labels, links, attachments, environment.

Registered as its own pytest11 entry point beside nodegate.plugin. Domain code (nodes, kube,
ceph, the upgrade steps) only logs; checks and procedures hand evidence to the `evidence`
fixture, and everything that reaches a result file passes through nodegate.secrets.redact.

A nodegate run (one given `--node`) writes its results to `reports/runs/<run id>/results`
unless `--alluredir` is given; the run id sorts by time and is shared with the journal.
"""
from __future__ import annotations

import getpass
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nodegate.secrets import install_log_redaction, redact

RUN_ID = pytest.StashKey[str]()
RUN_DIR = pytest.StashKey[Path]()
ENVIRONMENT = pytest.StashKey[dict]()
PHASES = ("preflight", "postflight", "procedure")

# Failure classes a reviewer sorts by. Messages written by checks and steps carry the class
# words these patterns look for (see nodegate.knowledge and the checks' messages).
CATEGORIES = [
    {"name": "Blocked by a PodDisruptionBudget", "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*(disruption budget|PodDisruptionBudget|blocked by PDB).*"},
    {"name": "Held-package drift", "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*(held package|held-package|not held|hold drift|held at).*"},
    {"name": "Legacy apt keyring", "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*(legacy trusted\.gpg|legacy keyring).*"},
    {"name": "Kubespray known issue", "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*(Kubespray known issue|kubespray #\d+|multus|Packages were downgraded).*"},
    {"name": "Node did not come back", "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*(did not come back|out-of-band|not Ready within|hang).*"},
    {"name": "CSI crash-loop", "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*(csi-rbdplugin|csi\.sock|CrashLoopBackOff|cephcsi).*"},
    {"name": "Storage unhealthy", "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*(HEALTH_WARN|HEALTH_ERR|ceph|OSD|placement group|PG).*"},
    {"name": "Another upgrade holds the lock", "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*(lock|Lease).*held.*"},
    {"name": "Release upgrade refused", "matchedStatuses": ["failed", "broken"],
     "messageRegex": r"(?s).*(do-release-upgrade|Please install all available updates|reboot before upgrading).*"},
    {"name": "Node not ready for the change", "matchedStatuses": ["failed"],
     "messageRegex": r"(?s).*"},
    {"name": "Harness or lab error", "matchedStatuses": ["broken"], "messageRegex": r"(?s).*"},
]


def reports_root(config: pytest.Config) -> Path:
    return Path(os.environ.get("NODEGATE_REPORTS", config.rootpath / "reports"))


def is_nodegate_run(config: pytest.Config) -> bool:
    return bool(_opt(config, "node"))


def run_id(config: pytest.Config) -> str:
    return config.stash[RUN_ID]


def set_environment(config: pytest.Config, key: str, value: Any) -> None:
    """Add a line to environment.properties (cluster, releases, versions …)."""
    config.stash.setdefault(ENVIRONMENT, {})[key] = str(value)


@pytest.hookimpl(tryfirst=True)  # before allure-pytest's own pytest_configure reads the option
def pytest_configure(config: pytest.Config) -> None:
    install_log_redaction()
    from nodegate.journal import new_run_id

    config.stash[RUN_ID] = new_run_id()
    if is_nodegate_run(config) and not config.option.allure_report_dir and not config.option.collectonly:
        run_dir = reports_root(config) / "runs" / config.stash[RUN_ID]
        config.stash[RUN_DIR] = run_dir
        config.option.allure_report_dir = str(run_dir / "results")
    ticket = _opt(config, "ticket")
    if ticket and not any(kind == "issue" for kind, _ in config.option.allure_link_pattern):
        pattern = os.environ.get("NODEGATE_TICKET_LINK_PATTERN", "")
        if pattern:
            config.option.allure_link_pattern.append(["issue", pattern])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import allure

    ticket = _opt(config, "ticket")
    for item in items:
        node = _node_of(item)
        if node:
            item.add_marker(allure.label("node", node))
            item.add_marker(allure.label("host", node))
        phase = next((p for p in PHASES if item.get_closest_marker(p)), None)
        if phase:
            item.add_marker(allure.label("phase", phase))
            item.add_marker(allure.label("parentSuite", phase))
        category = _category_of(item)
        if category:
            item.add_marker(allure.label("category", category))
            item.add_marker(allure.label("suite", category))
        if ticket:
            item.add_marker(allure.link(ticket, link_type="issue", name=ticket))


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    results = config.option.allure_report_dir
    if not results or config.option.collectonly:
        return
    out = Path(results)
    out.mkdir(parents=True, exist_ok=True)
    env = {
        "nodegate.version": _version(),
        "nodegate.commit": _git_commit(),
        "operator": _operator(),
        "run": config.stash[RUN_ID],
        "python": platform.python_version(),
    }
    if _opt(config, "node"):
        env["nodes"] = _opt(config, "node")
    if _opt(config, "target_release"):
        env["target.release"] = _opt(config, "target_release")
    env.update(config.stash.get(ENVIRONMENT, {}))
    (out / "environment.properties").write_text(
        "".join(f"{k}={_prop(redact(v))}\n" for k, v in sorted(env.items())), encoding="utf-8")
    (out / "categories.json").write_text(json.dumps(CATEGORIES, indent=2), encoding="utf-8")
    (out / "executor.json").write_text(json.dumps({
        "name": "nodegate", "type": "pytest", "buildName": f"nodegate run {config.stash[RUN_ID]}",
        "buildOrder": config.stash[RUN_ID], "reportName": f"nodegate {env.get('nodes', '')}".strip(),
    }, indent=2), encoding="utf-8")


class Evidence:
    """What checks and steps hand to the report: every text is redacted before it is written."""

    def text(self, name: str, text: str) -> None:
        import allure

        allure.attach(redact(text), name=name, attachment_type=allure.attachment_type.TEXT)

    def json(self, name: str, data: Any) -> None:
        import allure

        allure.attach(redact(json.dumps(data, indent=2, sort_keys=True, default=str)), name=name,
                      attachment_type=allure.attachment_type.JSON)

    def table(self, name: str, header: list[str], rows: list[list[Any]]) -> None:
        import csv
        import io

        import allure

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        writer.writerows(rows)
        allure.attach(redact(buf.getvalue()), name=name, attachment_type=allure.attachment_type.CSV)

    def command(self, host: str, result: Any) -> None:
        """A command run on a node: its argv, exit code and output, as one attachment."""
        args = getattr(result, "args", None) or getattr(result, "command", "")
        text = (f"host: {host}\n$ {args if isinstance(args, str) else ' '.join(map(str, args))}\n"
                f"exit code: {getattr(result, 'rc', getattr(result, 'exit_status', '?'))}\n"
                f"--- stdout ---\n{getattr(result, 'stdout', '')}\n--- stderr ---\n{getattr(result, 'stderr', '')}\n")
        self.text(f"{host}: {args if isinstance(args, str) else ' '.join(map(str, args))}"[:120], text)

    def step(self, title: str):
        import allure

        return allure.step(title)


@pytest.fixture
def evidence() -> Evidence:
    return Evidence()


def _opt(config: pytest.Config, name: str):
    try:
        return config.getoption(name)
    except ValueError:
        return None


def _node_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    value = callspec.params.get("node") or callspec.params.get("node_name")
    return getattr(value, "name", value) if value is not None else None


def _category_of(item: pytest.Item) -> str | None:
    path = Path(str(item.path))
    if path.parent.name not in ("checks", "procedures"):
        return None
    stem = path.stem
    return stem[5:] if stem.startswith("test_") else stem


def _prop(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nodegate")
    except PackageNotFoundError:
        return "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _operator() -> str:
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
