"""Run the real checks catalogue (checks/) through pytester against the session's lab."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CHECKS = Path(__file__).resolve().parents[2] / "checks"
# hypothesis is a test extra, not on an operator's machine: the catalogue runs here without its
# plugin, as it runs there (it also once raced nodegate.plugin.allure's background import of the
# Kubernetes client into a half-initialised annotated_types; reporting now pre-imports it).
_QUIET_PLUGINS = ("-p", "no:hypothesispytest")


@dataclass
class CatalogueRun:
    ret: int
    stdout: str
    stderr: str
    seconds: float
    outcomes: dict[str, str]          # test id -> PASSED/FAILED/ERROR/SKIPPED

    def failed(self) -> set[str]:
        return {k for k, v in self.outcomes.items() if v in ("FAILED", "ERROR")}

    def assert_failed_exactly(self, expected: set[str]) -> None:
        assert self.failed() == expected, (f"expected exactly {sorted(expected)} to fail, got {sorted(self.failed())}"
                                           f"\n{self.stdout[-6000:]}\n{self.stderr[-2000:]}")

    def passed(self) -> set[str]:
        return {k for k, v in self.outcomes.items() if v == "PASSED"}

    @property
    def text(self) -> str:
        return self.stdout + "\n" + self.stderr

    def section(self, test_id: str) -> str:
        """The failure section of one test in the -rA/-ra summary and the FAILURES block."""
        start = self.stdout.find(f"_ {test_id} _")
        if start < 0:
            return ""
        end = self.stdout.find("\n___", start + 1)
        nxt = self.stdout.find("\n===", start + 1)
        stops = [e for e in (end, nxt) if e > 0]
        return self.stdout[start:min(stops) if stops else len(self.stdout)]


_LINE = re.compile(r"^(?:checks/)?\S*?(test_\w+\.py)::(\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", re.M)


@pytest.fixture
def catalogue(pytester, lab, monkeypatch):
    """catalogue(*args, node="node4", cluster=None) runs `pytest checks/ --cluster … --node …` in a
    subprocess (as an operator would) and returns a CatalogueRun."""
    monkeypatch.setenv("NODEGATE_REPORTS", str(pytester.path / "reports"))
    # an operator's Python caches compiled modules; without it every run recompiles the client libraries
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)

    def run(*args: str, node: str | None = "node4", cluster: Path | None = None, timeout: float = 300) -> CatalogueRun:
        argv = [str(CHECKS), "--cluster", str(cluster or lab.dir / "cluster.toml"), "-v", "--color=no",
                "-p", "no:randomly", "-p", "no:cacheprovider", *_QUIET_PLUGINS, *args]
        if node:
            argv += ["--node", node]
        started = time.monotonic()
        result = pytester.runpytest_subprocess(*argv, timeout=timeout)
        seconds = time.monotonic() - started
        out, err = result.stdout.str(), result.stderr.str()
        outcomes = {m.group(2): m.group(3) for m in _LINE.finditer(out)}
        return CatalogueRun(ret=int(result.ret), stdout=out, stderr=err, seconds=seconds, outcomes=outcomes)

    return run


@pytest.fixture
def broken_profile(lab, tmp_path):
    """broken_profile(toml=…, ssh=…, kubeconfig=…) → a copy of the lab's cluster.toml (and, when
    asked, its ssh/config or kubeconfig) after the given text edits (functions str → str)."""
    control = Path(tempfile.mkdtemp(prefix="ngc", dir="/tmp"))   # short: a socket path has 108 bytes

    def make(*, toml=None, ssh=None, kubeconfig=None) -> Path:
        text = (lab.dir / "cluster.toml").read_text()
        if ssh is not None:
            config = (lab.dir / "ssh/config").read_text()
            # a ControlMaster of its own, so an open master of the lab's config cannot answer for it
            config = re.sub(r"ControlPath \S+", f"ControlPath {control}/%C", config)
            (tmp_path / "ssh_config").write_text(ssh(config))
            text = text.replace(str(lab.dir / "ssh/config"), str(tmp_path / "ssh_config"))
        if kubeconfig is not None:
            (tmp_path / "kubeconfig").write_text(kubeconfig((lab.dir / "kubeconfig").read_text()))
            (tmp_path / "kubeconfig").chmod(0o600)
            text = text.replace(str(lab.dir / "kubeconfig"), str(tmp_path / "kubeconfig"))
        if toml is not None:
            text = toml(text)
        path = tmp_path / "cluster.toml"
        path.write_text(text)
        return path

    yield make
    for socket in control.glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "x"], capture_output=True, timeout=10)
    shutil.rmtree(control, ignore_errors=True)
