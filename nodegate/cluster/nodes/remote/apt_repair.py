"""Node-side: the apt repair (see nodegate.cluster.apt_repair, which prepends the two pure modules
and runs this with ``python3 -c``). Arguments: the old and the new codename. Prints one JSON object.
"""
import glob
import json
import os
import shutil
import sys

from nodegate.core import aptrepair, aptsources

SOURCES_LIST, SOURCES_DIR = aptsources.SOURCES_LIST, aptsources.SOURCES_DIR
TRUSTED_PARTS, LEGACY_KEYRING = aptsources.TRUSTED_PARTS, aptsources.LEGACY_KEYRING



def read(path):
    with open(path) as fh:
        return fh.read()


old, new = sys.argv[1], sys.argv[2]
paths = [p for p in [SOURCES_LIST] if os.path.isfile(p)]
paths += sorted(p for p in glob.glob(SOURCES_DIR + "/*") if p.endswith((".list", ".sources")) and os.path.isfile(p))
files = {p: read(p) for p in paths}
plan = aptrepair.plan_repair(files, old, new)
done = {"files": [], "removed": [], "keyrings": [], "notes": plan.notes, "legacy": None}

def write(path, text, mode=0o644):
    tmp = path + ".nodegate-tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)

def copy(source, dest):
    shutil.copyfile(source, dest + ".nodegate-tmp")
    os.chmod(dest + ".nodegate-tmp", 0o644)
    os.replace(dest + ".nodegate-tmp", dest)


os.makedirs(TRUSTED_PARTS, mode=0o755, exist_ok=True)
for dest, source in plan.keys_from.items():
    if not os.path.exists(dest) and os.path.isfile(source):
        copy(source, dest)
        done["keyrings"].append(dest)
for dest, armored in plan.inline_keys.items():
    if not os.path.exists(dest):
        write(dest, armored.strip("\n") + "\n")
        done["keyrings"].append(dest)
for path, text in plan.files.items():
    if text is None:
        if os.path.exists(path):
            os.remove(path)
            done["removed"].append(path)
    else:
        write(path, text)
        done["files"].append(path)
# The legacy keyring: its keys go to a keyring file of their own in trusted.gpg.d (which apt
# reads for sources without signed-by and apt-key lists, so Kubespray's apt_key finds them),
# named after the third-party source that needs them; then the legacy file is retired.
if os.path.isfile(LEGACY_KEYRING):
    after = {p: read(p) for p in [SOURCES_LIST] + sorted(glob.glob(SOURCES_DIR + "/*"))
             if p.endswith((".list", ".sources")) and os.path.isfile(p)}
    users = [e for path, text in after.items() for e in aptsources.entries(path, text)
             if e.enabled and not e.ubuntu_own and not e.signed_by]
    name = aptrepair.stem(users[0].path) if users and users[0].path != SOURCES_LIST else "nodegate-legacy"
    dest = aptrepair.key_file(name)
    if not os.path.exists(dest):
        copy(LEGACY_KEYRING, dest)
    os.replace(LEGACY_KEYRING, LEGACY_KEYRING + ".nodegate-moved")
    done["legacy"] = dest
print(json.dumps(done))
