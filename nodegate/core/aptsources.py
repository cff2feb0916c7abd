"""apt sources in both of apt's formats, read and written back without losing a byte of what
was not changed: one-line `sources.list` / `*.list` files and deb822 `*.sources` files.

Pure text in, text out: the node-side repair program and the checks both use it.

What Ubuntu's release upgrader leaves behind, and so what this module must read (facts from
ubuntu-release-upgrader `DistUpgrade/DistUpgradeController.py`):

- to jammy (and older upgraders to noble): third-party one-line entries are commented out and
  tagged `# disabled on upgrade to <codename>`; each file is kept as `<file>.distUpgrade`;
- to noble (`migrateToDeb822Sources`, then `rewriteDeb822Sources`): `/etc/apt/sources.list` moves
  to `/etc/apt/sources.list.d/ubuntu.sources` (Signed-By the Ubuntu archive keyring) and leaves a
  one-line comment behind; `foo.list` becomes `foo.sources` (a `Signed-By:` inline key block when
  `trusted.gpg.d/foo.gpg` existed); a stanza for an unknown mirror gets `Enabled: no` as its first
  field.

A deb822 value may continue on lines that start with a space or a tab; a line holding only " ."
stands for an empty line inside the value (an armored key in `Signed-By`). Lines starting with
`#` are comments, anywhere in a stanza.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

SOURCES_LIST = "/etc/apt/sources.list"
SOURCES_DIR = "/etc/apt/sources.list.d"
UBUNTU_SOURCES = SOURCES_DIR + "/ubuntu.sources"
UBUNTU_ARCHIVE_KEYRING = "/usr/share/keyrings/ubuntu-archive-keyring.gpg"
LEGACY_KEYRING = "/etc/apt/trusted.gpg"
TRUSTED_PARTS = "/etc/apt/trusted.gpg.d"

DISABLED_TAG = re.compile(r"#\s*disabled on upgrade to\s+(\S+)")
_ONE_LINE = re.compile(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)((?:\s+[^\s#]+)*)\s*(#.*)?$")
_FIELD = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*)\s*:(.*)$")
# One-line option names and their deb822 field names (sources.list(5)).
ONE_LINE_TO_DEB822 = {"arch": "architectures", "lang": "languages", "target": "targets",
                      "signed-by": "signed-by", "trusted": "trusted", "pdiffs": "pdiffs", "by-hash": "by-hash"}
DEB822_TO_ONE_LINE = {v: k for k, v in ONE_LINE_TO_DEB822.items()}


@dataclass(frozen=True)
class Entry:
    """One source: a one-line entry, or a deb822 stanza (which may name several URIs and suites)."""
    path: str
    format: str                            # "one-line" | "deb822"
    index: int                             # line number (one-line) or stanza number (deb822)
    enabled: bool
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict, compare=False)   # deb822 names, lower case
    disabled_on_upgrade_to: str | None = None
    raw: str = field(default="", compare=False)

    @property
    def signed_by(self) -> str | None:
        value = self.options.get("signed-by")
        return value.strip() if value and value.strip() else None

    @property
    def signed_by_inline(self) -> bool:
        """Signed-By holds the key itself (an armored block), not a path."""
        return bool(self.signed_by and "BEGIN PGP PUBLIC KEY BLOCK" in self.signed_by)

    @property
    def signed_by_paths(self) -> tuple[str, ...]:
        if not self.signed_by or self.signed_by_inline:
            return ()
        return tuple(p for p in re.split(r"[\s,]+", self.signed_by) if p)

    @property
    def codenames(self) -> tuple[str, ...]:
        """'focal' for suites 'focal', 'focal-updates', 'focal/updates'."""
        return tuple(dict.fromkeys(re.split(r"[-/]", s, maxsplit=1)[0] for s in self.suites))

    @property
    def ubuntu_own(self) -> bool:
        """The Ubuntu archive's own entries, which do-release-upgrade rewrites itself: signed by
        Ubuntu's archive keyring, on an ubuntu.com host, or (not tagged as disabled third party)
        in the two files the upgrader keeps the archive in."""
        if UBUNTU_ARCHIVE_KEYRING in self.signed_by_paths:
            return True
        if self.uris and all(_host(u) == "ubuntu.com" or _host(u).endswith(".ubuntu.com") for u in self.uris):
            return True
        return self.path in (SOURCES_LIST, UBUNTU_SOURCES) and self.disabled_on_upgrade_to is None

    def describe(self) -> str:
        state = "" if self.enabled else " (disabled)"
        return f"{self.path}: {' '.join(self.types)} {' '.join(self.uris)} {' '.join(self.suites)}{state}"


def _host(uri: str) -> str:
    match = re.match(r"^[a-z0-9+.-]+://(?:[^@/]*@)?([^/:]*)", uri, flags=re.IGNORECASE)
    return match.group(1).lower() if match else ""


def move_suite(suite: str, old: str, new: str) -> str:
    """'focal' -> 'noble', 'focal-updates' -> 'noble-updates'; any other suite stays."""
    if suite == old or suite.startswith(old + "-") or suite.startswith(old + "/"):
        return new + suite[len(old):]
    return suite


# --------------------------------------------------------------------------- one-line files

def parse_one_line(text: str) -> tuple[dict, ...]:
    """Each line that is an entry or a commented-out entry, as
    {index, enabled, type, options (one-line names), uri, suite, components, comment, tag}."""
    found = []
    for index, raw in enumerate(text.splitlines()):
        line = raw.strip()
        enabled = True
        if line.startswith("#"):
            enabled = False
            line = line.lstrip("#").strip()
        match = _ONE_LINE.match(line)
        if not match:
            continue
        kind, opts, uri, suite, comps, comment = match.groups()
        tag = DISABLED_TAG.search(raw)
        found.append({"index": index, "enabled": enabled, "type": kind, "options": _options(opts or ""),
                      "uri": uri, "suite": suite, "components": tuple(comps.split()),
                      "comment": (comment or "").lstrip("#").strip(), "tag": tag.group(1) if tag else None,
                      "raw": raw})
    return tuple(found)


def _options(text: str) -> dict[str, str]:
    options = {}
    for item in text.split():
        key, _, value = item.partition("=")
        key = key.rstrip("+-")
        if key:
            options[key] = value
    return options


def one_line(kind: str, options: dict[str, str], uri: str, suite: str, components: tuple[str, ...]) -> str:
    """An entry the way apt and Ansible's apt_repository write one: `deb [k=v …] uri suite comp…`."""
    opts = " ".join(f"{k}={v}" for k, v in options.items())
    return " ".join([kind, *([f"[{opts}]"] if opts else []), uri, suite, *components])


# --------------------------------------------------------------------------- deb822 files

@dataclass
class _Field:
    name: str
    lines: list[str]          # the field's lines as written (first line holds "Name:")

    @property
    def value(self) -> str:
        first = self.lines[0].split(":", 1)[1].strip()
        rest = [line.strip() for line in self.lines[1:] if not line.lstrip().startswith("#")]
        rest = ["" if line == "." else line for line in rest]
        return "\n".join([first, *rest]).strip("\n") if rest else first


@dataclass
class Stanza:
    """One deb822 paragraph: its lines, comments kept where they are."""
    lines: list[str]

    def fields(self) -> list[_Field]:
        out: list[_Field] = []
        for line in self.lines:
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t"):
                if out:
                    out[-1].lines.append(line)
                continue
            match = _FIELD.match(line)
            if match:
                out.append(_Field(match.group(1), [line]))
        return out

    def get(self, name: str) -> str | None:
        for f in self.fields():
            if f.name.lower() == name.lower():
                return f.value
        return None

    def comments(self) -> list[str]:
        return [line for line in self.lines if line.startswith("#")]

    def _span(self, name: str) -> tuple[int, int] | None:
        """Line range [start, end) of a field, its continuation lines included."""
        start = None
        for i, line in enumerate(self.lines):
            if start is None:
                match = _FIELD.match(line) if not line.startswith("#") and line[:1] not in (" ", "\t") else None
                if match and match.group(1).lower() == name.lower():
                    start = i
                continue
            if line[:1] in (" ", "\t") or line.startswith("#"):
                continue
            return start, i
        return (start, len(self.lines)) if start is not None else None

    def set(self, name: str, value: str, *, first: bool = False) -> None:
        """Write `Name: value` in place of the field (or add it: first, or after the last field)."""
        new = [f"{name}: {value}"]
        span = self._span(name)
        if span:
            self.lines[span[0]:span[1]] = new
        elif first:
            at = next((i for i, line in enumerate(self.lines) if not line.startswith("#")), len(self.lines))
            self.lines[at:at] = new
        else:
            self.lines.extend(new)

    def remove(self, name: str) -> None:
        span = self._span(name)
        if span:
            del self.lines[span[0]:span[1]]

    def remove_comments(self, pattern: re.Pattern) -> None:
        self.lines = [line for line in self.lines if not (line.startswith("#") and pattern.search(line))]


@dataclass
class Deb822File:
    """A .sources file as paragraphs; text between paragraphs (blank lines, lone comments) is kept."""
    chunks: list                # str (blank lines / comment-only blocks) or Stanza, in file order
    trailing_newline: bool = True

    @classmethod
    def parse(cls, text: str) -> "Deb822File":
        chunks: list = []
        block: list[str] = []

        def flush() -> None:
            if not block:
                return
            if any(_FIELD.match(line) and not line.startswith("#") and line[:1] not in (" ", "\t") for line in block):
                chunks.append(Stanza(list(block)))
            else:
                chunks.append("\n".join(block))
            block.clear()

        for line in text.replace("\r\n", "\n").split("\n"):
            if not line.strip():
                flush()
                chunks.append("")
            else:
                block.append(line)
        flush()
        # split("\n") of text ending in "\n" yields one final "" (not a blank line of the file)
        trailing = text.endswith("\n")
        if trailing and chunks and chunks[-1] == "":
            chunks.pop()
        return cls(chunks=chunks, trailing_newline=trailing)

    @property
    def stanzas(self) -> list[Stanza]:
        return [c for c in self.chunks if isinstance(c, Stanza)]

    def render(self) -> str:
        lines: list[str] = []
        for chunk in self.chunks:
            lines.extend(chunk.lines if isinstance(chunk, Stanza) else [chunk])
        text = "\n".join(lines)
        return text + "\n" if self.trailing_newline else text

    def remove(self, stanza: Stanza) -> None:
        at = next(i for i, c in enumerate(self.chunks) if c is stanza)
        del self.chunks[at]
        # and the blank line that separated it from the next paragraph
        if at < len(self.chunks) and self.chunks[at] == "":
            del self.chunks[at]
        elif at > 0 and self.chunks[at - 1] == "":
            del self.chunks[at - 1]


def stanza(types: tuple[str, ...], uris: tuple[str, ...], suites: tuple[str, ...], components: tuple[str, ...],
           *, enabled: bool = True, signed_by: str | None = None, extra: dict[str, str] | None = None) -> Stanza:
    lines = [] if enabled else ["Enabled: no"]
    lines += [f"Types: {' '.join(types)}", f"URIs: {' '.join(uris)}", f"Suites: {' '.join(suites)}"]
    if components:
        lines.append(f"Components: {' '.join(components)}")
    for name, value in (extra or {}).items():
        lines.append(f"{name}: {value}")
    if signed_by:
        lines.append(f"Signed-By: {signed_by}")
    return Stanza(lines)


def _enabled(value: str | None) -> bool:
    return (value or "yes").strip().lower() not in ("no", "false", "0")


# --------------------------------------------------------------------------- both formats

def is_deb822(path: str, text: str) -> bool:
    if path.endswith(".sources"):
        return True
    if path.endswith(".list"):
        return False
    return re.search(r"^(Types|URIs|Suites)\s*:", text, flags=re.MULTILINE | re.IGNORECASE) is not None


def entries(path: str, text: str) -> tuple[Entry, ...]:
    """Every source in one file (a path under /etc/apt; the name decides the format)."""
    if is_deb822(path, text):
        out = []
        for index, st in enumerate(Deb822File.parse(text).stanzas):
            uris = tuple((st.get("URIs") or "").split())
            suites = tuple((st.get("Suites") or "").split())
            if not uris or not suites:
                continue
            options = {f.name.lower(): f.value for f in st.fields()
                       if f.name.lower() not in ("types", "uris", "suites", "components", "enabled")}
            tag = next((DISABLED_TAG.search(c) for c in st.comments() if DISABLED_TAG.search(c)), None)
            out.append(Entry(path=path, format="deb822", index=index, enabled=_enabled(st.get("Enabled")),
                             types=tuple((st.get("Types") or "deb").split()), uris=uris, suites=suites,
                             components=tuple((st.get("Components") or "").split()), options=options,
                             disabled_on_upgrade_to=tag.group(1) if tag else None, raw="\n".join(st.lines)))
        return tuple(out)
    return tuple(Entry(path=path, format="one-line", index=e["index"], enabled=e["enabled"], types=(e["type"],),
                       uris=(e["uri"],), suites=(e["suite"],), components=e["components"],
                       options={ONE_LINE_TO_DEB822.get(k, k): v for k, v in e["options"].items()},
                       disabled_on_upgrade_to=e["tag"], raw=e["raw"])
                 for e in parse_one_line(text))


def repo_key(uri: str) -> str:
    return uri.rstrip("/")


@dataclass(frozen=True)
class SourceProblem:
    path: str
    text: str


def disabled_third_party(all_entries: list[Entry] | tuple[Entry, ...], codename: str) -> list[SourceProblem]:
    """Third-party repositories that have a disabled entry (commented out and tagged, or
    `Enabled: no`) and no enabled entry for `codename`: what a release upgrade leaves, in either
    format. Ubuntu's own entries are the upgrader's and are not judged here."""
    enabled_repos = {repo_key(u) for e in all_entries if e.enabled and not e.ubuntu_own
                     and codename in e.codenames for u in e.uris}
    problems = []
    for e in all_entries:
        if e.enabled or e.ubuntu_own:
            continue
        if "deb" not in e.types:
            continue
        if all(repo_key(u) in enabled_repos for u in e.uris):
            continue
        why = (f"disabled on upgrade to {e.disabled_on_upgrade_to}" if e.disabled_on_upgrade_to
               else ("Enabled: no" if e.format == "deb822" else "commented out"))
        problems.append(SourceProblem(e.path, f"{e.path}: {' '.join(e.uris)} {' '.join(e.suites)} is {why}, "
                                              f"and no enabled entry serves it on {codename}"))
    return problems


def signed_by_conflicts(all_entries: list[Entry] | tuple[Entry, ...]) -> list[str]:
    """Enabled entries for one URI and suite with two different Signed-By values: apt refuses
    to read the sources at all ("E: Conflicting values set for option Signed-By regarding
    source …", seen with apt 2.6.1)."""
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for e in all_entries:
        if e.enabled and "deb" in e.types and e.signed_by:
            for uri in e.uris:
                for suite in e.suites:
                    seen.setdefault((repo_key(uri), suite), {})[e.signed_by] = e.path
    return [f"{uri} {suite}: conflicting Signed-By values ("
            + "; ".join(f"{value} in {path}" for value, path in sorted(values.items())) + ")"
            for (uri, suite), values in sorted(seen.items()) if len(values) > 1]


def duplicate_sources(all_entries: list[Entry] | tuple[Entry, ...]) -> list[str]:
    """One URI and suite enabled in more than one entry (apt 2.6.1 warns "Target Packages (…)
    is configured multiple times in A:1 and B:1"): what Kubespray's apt_repository leaves beside a
    source written another way."""
    where: dict[tuple[str, str], list[str]] = {}
    for e in all_entries:
        if e.enabled and "deb" in e.types:
            for uri in e.uris:
                for suite in e.suites:
                    where.setdefault((repo_key(uri), suite), []).append(e.path)
    return [f"{uri} {suite} is configured {len(paths)} times ({', '.join(paths)})"
            for (uri, suite), paths in sorted(where.items()) if len(paths) > 1]
