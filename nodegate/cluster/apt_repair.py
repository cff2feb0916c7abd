"""The apt repair on a node: one Python program, run with the node's python3, that reads the
node's sources, applies nodegate.core.aptrepair's plan and writes files atomically.

The program carries the two pure modules (nodegate.core.aptsources and aptrepair) as their own
source text, so the node runs the very logic the unit tests cover; python3 is on every node
(Ansible needs it). It prints one JSON object: the files changed, keyrings written, notes.
"""
from __future__ import annotations

import json
from pathlib import Path

from nodegate.core import aptrepair, aptsources

_MAIN = r'''
import glob, json, os, shutil, sys
old, new = sys.argv[1], sys.argv[2]
paths = [p for p in [SOURCES_LIST] if os.path.isfile(p)]
paths += sorted(p for p in glob.glob(SOURCES_DIR + "/*") if p.endswith((".list", ".sources")) and os.path.isfile(p))
files = {p: open(p).read() for p in paths}
plan = aptrepair.plan_repair(files, old, new)
done = {"files": [], "removed": [], "keyrings": [], "notes": plan.notes, "legacy": None}

def write(path, text, mode=0o644):
    tmp = path + ".nodegate-tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)

os.makedirs(TRUSTED_PARTS, mode=0o755, exist_ok=True)
for dest, source in plan.keys_from.items():
    if not os.path.exists(dest) and os.path.isfile(source):
        shutil.copyfile(source, dest + ".nodegate-tmp"); os.chmod(dest + ".nodegate-tmp", 0o644)
        os.replace(dest + ".nodegate-tmp", dest); done["keyrings"].append(dest)
for dest, armored in plan.inline_keys.items():
    if not os.path.exists(dest):
        write(dest, armored.strip("\n") + "\n"); done["keyrings"].append(dest)
for path, text in plan.files.items():
    if text is None:
        if os.path.exists(path):
            os.remove(path); done["removed"].append(path)
    else:
        write(path, text); done["files"].append(path)
# The legacy keyring: its keys go to a keyring file of their own in trusted.gpg.d (which apt
# reads for sources without signed-by and apt-key lists, so Kubespray's apt_key finds them),
# named after the third-party source that needs them; then the legacy file is retired.
if os.path.isfile(LEGACY_KEYRING):
    after = {p: open(p).read() for p in [SOURCES_LIST] + sorted(glob.glob(SOURCES_DIR + "/*"))
             if p.endswith((".list", ".sources")) and os.path.isfile(p)}
    users = [e for path, text in after.items() for e in aptsources.entries(path, text)
             if e.enabled and not e.ubuntu_own and not e.signed_by]
    name = aptrepair.stem(users[0].path) if users and users[0].path != SOURCES_LIST else "nodegate-legacy"
    dest = aptrepair.key_file(name)
    if not os.path.exists(dest):
        shutil.copyfile(LEGACY_KEYRING, dest + ".nodegate-tmp"); os.chmod(dest + ".nodegate-tmp", 0o644)
        os.replace(dest + ".nodegate-tmp", dest)
    os.replace(LEGACY_KEYRING, LEGACY_KEYRING + ".nodegate-moved")
    done["legacy"] = dest
print(json.dumps(done))
'''


def _module_text(module) -> str:
    return Path(module.__file__).read_text()


def program() -> str:
    """The node-side program: both modules defined under their own names, then the repair."""
    return "\n".join([
        "import sys, types",
        "def _load(name, text):",
        "    mod = types.ModuleType(name)",
        "    mod.__file__ = '<nodegate ' + name + '>'",
        "    sys.modules[name] = mod",
        "    exec(compile(text, mod.__file__, 'exec'), mod.__dict__)",
        "    return mod",
        "for _pkg in ('nodegate', 'nodegate.core'):",
        "    sys.modules.setdefault(_pkg, types.ModuleType(_pkg))",
        f"aptsources = _load('nodegate.core.aptsources', {_module_text(aptsources)!r})",
        "sys.modules['nodegate.core'].aptsources = aptsources",
        f"aptrepair = _load('nodegate.core.aptrepair', {_module_text(aptrepair)!r})",
        "SOURCES_LIST, SOURCES_DIR = aptsources.SOURCES_LIST, aptsources.SOURCES_DIR",
        "TRUSTED_PARTS, LEGACY_KEYRING = aptsources.TRUSTED_PARTS, aptsources.LEGACY_KEYRING",
        _MAIN,
    ])


def parse_output(stdout: str) -> dict:
    """The program's JSON line (the last line that parses)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    raise ValueError(f"the apt repair program printed no result: {stdout[-300:]!r}")


def summary(result: dict) -> str:
    parts = []
    if result.get("notes"):
        parts.append("sources: " + "; ".join(result["notes"]))
    if result.get("removed"):
        parts.append("removed " + ", ".join(result["removed"]))
    if result.get("keyrings"):
        parts.append("keyrings " + ", ".join(result["keyrings"]))
    if result.get("legacy"):
        parts.append(f"legacy keyring moved to {result['legacy']}")
    return "; ".join(parts)
