"""Parsers of small system outputs: /etc/os-release, and terminal colour codes stripped from text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass(frozen=True)
class OsRelease:
    id: str | None = None
    version_id: str | None = None
    version_codename: str | None = None
    pretty_name: str | None = None

    @property
    def label(self) -> str:
        return self.pretty_name or " ".join(x for x in (self.id, self.version_id, self.version_codename) if x) \
            or "unknown release"


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        return re.sub(r"\\([\\\"$`])", r"\1", inner) if value[0] == '"' else inner
    return value


def parse_os_release(text: str) -> OsRelease:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = _unquote(value)
    return OsRelease(id=values.get("ID") or None, version_id=values.get("VERSION_ID") or None,
                     version_codename=values.get("VERSION_CODENAME") or values.get("UBUNTU_CODENAME") or None,
                     pretty_name=values.get("PRETTY_NAME") or None)
