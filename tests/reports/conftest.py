"""Fixtures of the reporting tests; the helpers and planted values are in reportkit.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reportkit import CHECKS, PROCEDURE, write_profile


@pytest.fixture
def suite(pytester, monkeypatch):
    """A pytester project: profile + checks/ + procedures/, results under ./reports (NODEGATE_REPORTS)."""
    monkeypatch.setenv("NODEGATE_REPORTS", str(pytester.path / "reports"))
    monkeypatch.delenv("NODEGATE_TICKET_LINK_PATTERN", raising=False)
    write_profile(pytester.path)
    (pytester.path / "checks").mkdir()
    (pytester.path / "checks" / "test_packages.py").write_text(CHECKS)
    (pytester.path / "procedures").mkdir()
    (pytester.path / "procedures" / "test_upgrade.py").write_text(PROCEDURE)
    return pytester


