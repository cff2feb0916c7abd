"""The apt end state after a release upgrade, and the file edits that reach it (pure logic).

The end state, chosen so that Kubespray's docker role (v2.21 to v2.27) leaves it alone and apt
accepts it without a warning:

- every third-party repository the upgrade disabled (a one-line entry commented out and tagged
  `# disabled on upgrade to <codename>`, or a deb822 stanza with `Enabled: no`) or left on the
  old codename has exactly one enabled entry, a one-line entry in a `.list` file, on the new
  codename, with the options it had except `signed-by`;
- its key is in its own keyring file, `/etc/apt/trusted.gpg.d/<name>.gpg` (or `.asc` for an
  armored inline key), and nothing is left in the legacy `/etc/apt/trusted.gpg`;
- Ubuntu's own sources stay as the upgrader wrote them.

Why that shape (facts from Kubespray's `roles/container-engine/docker/tasks/main.yml`, v2.21.0 to
v2.27.1, and Ansible's `apt_key` / `apt_repository` modules): the role runs `apt_key` with the
key's id, which adds the key to the legacy keyring unless `apt-key` already lists that id (apt-key
lists trusted.gpg and trusted.gpg.d/*; Kubespray's docs name `/etc/apt/trusted.gpg.d/docker.gpg`
as the place for `docker_repo_key_keyring`); then `apt_repository` with the line
`deb [arch=<arch>] <url> <codename> stable`, which reads only sources.list and `*.list` files and
compares whole lines, options included: a line with `signed-by=` or a deb822 stanza does not
match, so it adds its own line, and apt then refuses the source for conflicting Signed-By values
or warns that it is configured twice. A key in trusted.gpg.d with the source line as Kubespray
writes it matches both tasks.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from nodegate.core import aptsources as src


@dataclass
class RepairPlan:
    files: dict[str, str | None] = field(default_factory=dict)   # path -> new text (None: delete)
    keys_from: dict[str, str] = field(default_factory=dict)      # keyring file to write -> where its key comes from
    inline_keys: dict[str, str] = field(default_factory=dict)    # keyring file to write -> armored key text
    notes: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.files or self.keys_from or self.inline_keys)


def key_file(name: str, *, armored: bool = False) -> str:
    return f"{src.TRUSTED_PARTS}/{name}.{'asc' if armored else 'gpg'}"


def stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".list", ".sources"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def _needy(all_entries, old: str, new: str) -> dict[tuple[str, str], list[src.Entry]]:
    """(URI, suite on the new codename) -> its third-party `deb` entries, for each source that the
    upgrade disabled or left on `old`, or that is enabled more than once (Kubespray's own line
    beside another one). A source enabled once on the new codename is left as it is."""
    groups: dict[tuple[str, str], list[src.Entry]] = {}
    for e in all_entries:
        if e.ubuntu_own or "deb" not in e.types:
            continue
        for uri in e.uris:
            for suite in e.suites:
                groups.setdefault((src.repo_key(uri), src.move_suite(suite, old, new)), []).append(e)
    needy = {}
    for key, items in groups.items():
        enabled = [e for e in items if e.enabled]
        if len(enabled) == 1 and not any(old in e.codenames for e in enabled) \
                and all(e.enabled for e in items):
            continue
        if len(enabled) == 1 and new in enabled[0].codenames and enabled[0].format == "one-line" \
                and not enabled[0].signed_by:
            continue      # already the end state; a disabled leftover beside it is harmless
        needy[key] = items
    return needy


def _rank(new: str, suite: str):
    def rank(e: src.Entry) -> tuple:
        # an enabled one-line entry for this very suite with no signed-by (Kubespray's own line)
        # first; then other one-line entries; then anything
        return (not (e.enabled and e.format == "one-line" and not e.signed_by and e.suites == (suite,)),
                e.format != "one-line", not e.enabled, e.path, e.index)
    return rank


def _line(e: src.Entry, uri: str, suite: str) -> str:
    options = {src.DEB822_TO_ONE_LINE.get(k, k): v for k, v in e.options.items()
               if k in src.DEB822_TO_ONE_LINE and k != "signed-by"}
    return src.one_line("deb", options, uri, suite, e.components)


def plan_repair(files: dict[str, str], old: str, new: str) -> RepairPlan:
    """Edits that bring `files` (path under /etc/apt -> text) to the end state described above."""
    plan = RepairPlan()
    all_entries = [e for path, text in sorted(files.items()) for e in src.entries(path, text)]
    needy = _needy(all_entries, old, new)
    if not needy:
        return plan
    one_line_edits: dict[str, dict[int, str | None]] = {}   # path -> line index -> new line (None: drop)
    stanza_drops: dict[str, set[int]] = {}
    additions: dict[str, list[str]] = {}
    kept: set[tuple[str, int]] = set()
    for (uri, suite), items in sorted(needy.items()):
        best = sorted(items, key=_rank(new, suite))[0]
        line = _line(best, uri, suite)
        name = stem(best.path) if best.path != src.SOURCES_LIST else _suggest_name(uri)
        if best.format == "one-line" and (best.path, best.index) not in kept:
            kept.add((best.path, best.index))
            one_line_edits.setdefault(best.path, {})[best.index] = line
            target = best.path
        else:
            target = f"{src.SOURCES_DIR}/{name}.list"
            additions.setdefault(target, []).append(line)
        for e in items:
            if e.format == "one-line" and (e.path, e.index) not in kept:
                one_line_edits.setdefault(e.path, {}).setdefault(e.index, None)
            elif e.format != "one-line":
                stanza_drops.setdefault(e.path, set()).add(e.index)
            for path in e.signed_by_paths:
                if path != src.UBUNTU_ARCHIVE_KEYRING and not path.startswith(src.TRUSTED_PARTS + "/"):
                    plan.keys_from.setdefault(key_file(name), path)
            if e.signed_by_inline:
                plan.inline_keys.setdefault(key_file(name, armored=True), e.signed_by)
        plan.notes.append(f"{uri} {suite}: `{line}` in {target}")
    # a dropped stanza's other sources keep a line each
    for e in all_entries:
        if e.format == "deb822" and e.index in stanza_drops.get(e.path, ()) and e.enabled and "deb" in e.types:
            for uri in e.uris:
                for suite in e.suites:
                    if (src.repo_key(uri), src.move_suite(suite, old, new)) not in needy:
                        additions.setdefault(f"{src.SOURCES_DIR}/{stem(e.path)}.list", []).append(
                            _line(e, src.repo_key(uri), src.move_suite(suite, old, new)))
    for path, edits in one_line_edits.items():
        lines = files[path].splitlines()
        out = [edits[i] if i in edits else text for i, text in enumerate(lines) if edits.get(i, "") is not None]
        new_text = "\n".join(out) + "\n" if out else ""
        if new_text != files[path]:
            plan.files[path] = new_text
    for path, drops in stanza_drops.items():
        doc = src.Deb822File.parse(files[path])
        for i, st in reversed(list(enumerate(doc.stanzas))):
            if i in drops:
                doc.remove(st)
        plan.files[path] = doc.render() if doc.stanzas else None
    for path, lines in additions.items():
        base = plan.files.get(path, files.get(path, "")) or ""
        existing = {" ".join(t.split()) for t in base.splitlines()}
        new_lines = list(dict.fromkeys(line for line in lines if line not in existing))
        if new_lines:
            plan.files[path] = (base if not base or base.endswith("\n") else base + "\n") + "\n".join(new_lines) + "\n"
    return plan


def _suggest_name(uri: str) -> str:
    """A file name for a repository, the way Ansible's apt_repository derives one from a line."""
    host_path = re.sub(r"^\w+://", "", uri)
    host_path = host_path.split("@", 1)[-1]
    return "_".join(re.sub("[^a-zA-Z0-9]", " ", host_path).split())


def end_state_problems(files: dict[str, str], new: str) -> list[str]:
    """What keeps `files` from the end state (the legacy keyring is judged by the caller)."""
    all_entries = [e for path, text in sorted(files.items()) for e in src.entries(path, text)]
    problems = [p.text for p in src.disabled_third_party(all_entries, new)]
    problems += src.signed_by_conflicts(all_entries)
    problems += src.duplicate_sources(all_entries)
    for e in all_entries:
        if e.enabled and not e.ubuntu_own and "deb" in e.types and new not in e.codenames:
            problems.append(f"{e.path}: {' '.join(e.uris)} points at {' '.join(e.suites)}, not {new}")
    return problems
