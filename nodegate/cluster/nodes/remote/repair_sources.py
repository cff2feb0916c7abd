"""Runs on a node (python3 -c, as root) after do-release-upgrade: re-enables the third-party
sources it commented out ("# disabled on upgrade to <codename>") and moves their suite from the
old codename to the new one. Usage: OLD_CODENAME NEW_CODENAME; prints each file it changed.
Each file is rewritten atomically (temporary file, then rename).
"""
import os
import re
import sys


def main() -> None:
    old, new = sys.argv[1], sys.argv[2]
    changed = []
    d = "/etc/apt/sources.list.d"
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        path = os.path.join(d, name)
        if not name.endswith(".list") or not os.path.isfile(path):
            continue
        with open(path) as f:
            text = f.read()
        out = []
        for line in text.splitlines():
            m = re.match(r"^#\s*(deb(?:-src)?\s.*?)\s*#\s*disabled on upgrade to \S+\s*$", line)
            if m:
                words = m.group(1).split()
                i = 1
                if len(words) > 1 and words[1].startswith("["):
                    while i < len(words) and not words[i].endswith("]"):
                        i += 1
                    i += 1
                # words[i] is the URI, words[i+1] the suite: move it to the new codename
                if i + 1 < len(words):
                    words[i + 1] = re.sub("^" + re.escape(old) + r"(?=$|-)", new, words[i + 1])
                line = " ".join(words)
            out.append(line)
        new_text = "\n".join(out) + ("\n" if text.endswith("\n") else "")
        if new_text != text:
            tmp = path + ".nodegate-tmp"
            with open(tmp, "w") as f:
                f.write(new_text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            changed.append(path)
    print("\n".join(changed))


if __name__ == "__main__":
    main()
