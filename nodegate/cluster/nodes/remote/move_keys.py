"""Runs on a node (python3 -c, as root): gives each apt source whose key is in the legacy
/etc/apt/trusted.gpg its own keyring under /etc/apt/keyrings (signed-by=) and retires the legacy
keyring. Usage: [REPOSITORY_URL ...]; prints what it changed.
"""
import os
import shutil
import sys


def main() -> None:
    legacy, keyrings = "/etc/apt/trusted.gpg", "/etc/apt/keyrings"
    urls = [u.rstrip("/") for u in sys.argv[1:]]
    if not os.path.isfile(legacy):
        print("no legacy keyring")
        sys.exit(0)
    os.makedirs(keyrings, mode=0o755, exist_ok=True)
    files = ["/etc/apt/sources.list"] + sorted(
        os.path.join("/etc/apt/sources.list.d", n) for n in os.listdir("/etc/apt/sources.list.d") if n.endswith(".list"))
    done = []
    for path in files:
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            text = f.read()
        stem = os.path.basename(path)[:-len(".list")]
        key = os.path.join(keyrings, stem + ".gpg")
        out, touched = [], False
        for line in text.splitlines():
            words = line.split()
            if words and words[0] in ("deb", "deb-src"):
                opts, rest = [], words[1:]
                if rest and rest[0].startswith("["):
                    while rest:
                        w = rest.pop(0)
                        opts.append(w.strip("[]"))
                        if w.endswith("]"):
                            break
                opts = [o for o in opts if o]
                uri = rest[0].rstrip("/") if rest else ""
                if any(uri == u or uri.startswith(u + "/") for u in urls) and \
                        not any(o.startswith("signed-by=") for o in opts):
                    opts.append("signed-by=" + key)
                    line = " ".join([words[0], "[" + " ".join(opts) + "]"] + rest)
                    touched = True
            out.append(line)
        if touched:
            if not os.path.exists(key):
                shutil.copyfile(legacy, key)
                os.chmod(key, 0o644)
            tmp = path + ".nodegate-tmp"
            with open(tmp, "w") as f:
                f.write("\n".join(out) + "\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            done.append(path + " -> " + key)
    # Every source that used the legacy keyring now names its own key file: retire the legacy one
    # (kept beside it for the record; apt does not read that name).
    os.replace(legacy, legacy + ".nodegate-moved")
    print("\n".join(done) or "no source used the legacy keyring")


if __name__ == "__main__":
    main()
