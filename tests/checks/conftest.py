"""Run the real checks catalogue (checks/) through pytester against the session's lab."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CHECKS = Path(__file__).resolve().parents[2] / "checks"


@dataclass
class CatalogueRun:
    ret: int
    stdout: str
    stderr: str
    seconds: float
    outcomes: dict[str, str]          # test id -> PASSED/FAILED/ERROR/SKIPPED

    def failed(self) -> set[str]:
        return {k for k, v in self.outcomes.items() if v in ("FAILED", "ERROR")}

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
                "-p", "no:randomly", "-p", "no:cacheprovider", *args]
        if node:
            argv += ["--node", node]
        started = time.monotonic()
        result = pytester.runpytest_subprocess(*argv, timeout=timeout)
        seconds = time.monotonic() - started
        out, err = result.stdout.str(), result.stderr.str()
        outcomes = {m.group(2): m.group(3) for m in _LINE.finditer(out)}
        return CatalogueRun(ret=int(result.ret), stdout=out, stderr=err, seconds=seconds, outcomes=outcomes)

    return run
