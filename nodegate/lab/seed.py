"""The seeded starting state of every lab node: the seed's worker, as an overlay layer.

A seed layer is an overlay *upper* directory made once over the base image and then used as a
read-only lower layer under every node (node.py: lowerdir=<seed layer>:<base image>). It holds
what real apt and dpkg did to the base on the seed's worker:

- Ubuntu 20.04.5 LTS (focal) identity: the archive stand-in's lab-release package owns
  /usr/lib/os-release (diverted from Debian's base-files) and /etc/lsb-release;
- containerd.io 1.6.4-1, docker-ce and docker-ce-cli 5:20.10.20~3-0~ubuntu-focal installed with
  apt from the lab's Docker-like repository and held; its key in the legacy /etc/apt/trusted.gpg,
  its source in /etc/apt/sources.list.d/docker.list;
- the archive stand-in in /etc/apt/sources.list (focal, focal-updates, focal-security);
  lab-utils 1.0 installed with 1.1 pending in focal-updates; lab-tools at its newest build;
- the apt lists of that last `apt-get update`, so `apt list --upgradable` answers at once;
- the node-side stand-ins from nodegate/lab/nodefiles/ (init, shutdown/reboot, modprobe/lsmod,
  do-release-upgrade) and Kubespray's modules-load.d file for br_netfilter.

The build runs apt in a chroot inside a private network namespace, where the repository is
served on 127.0.2.1:80: the address of a lab with net 0, so the layer fits such a lab as it is
and touches no address outside the namespace. A lab on another net gets its addresses fixed in
each node at creation (prepare_root: two source files and the list file names).

The layer is cached under CACHE_ROOT/seed-<key>; the key covers the base image, the repository
build (its signing keys are new with every build), the node files and this module.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nodegate.core.errors import PermanentError
from nodegate.lab import aptrepo
from nodegate.lab.config import LabConfig
from nodegate.lab.image import CACHE_ROOT, base_rootfs, image_key

log = logging.getLogger(__name__)

NODEFILES = Path(__file__).parent / "nodefiles"
BUILD_NET = 0                    # the layer is built for a net-0 lab; prepare_root moves it
BUILD_ADDRESS = f"127.{BUILD_NET}.2.1"
SEED_VERSION = "v1"
CODENAME = "focal"
CONTAINERD = "1.6.4-1"
DOCKER = aptrepo.docker_version("20.10.20", CODENAME)
HELD = ("containerd.io", "docker-ce", "docker-ce-cli")
INSTALL = (f"containerd.io={CONTAINERD}", f"docker-ce={DOCKER}", f"docker-ce-cli={DOCKER}",
           "lab-utils=1.0", "lab-tools=2.0", f"{aptrepo.LAB_RELEASE_PACKAGE}={aptrepo.lab_release_version(CODENAME)}")
# kmod's programs replaced by the stand-in (diverted, so a kmod upgrade cannot bring them back).
KMOD_DIVERSIONS = ("/sbin/modprobe", "/sbin/rmmod", "/sbin/lsmod", "/bin/lsmod")
POWER_COMMANDS = ("reboot", "poweroff", "halt")  # links to the shutdown stand-in, as systemd's are
SOURCES_LIST = """\
# See http://help.ubuntu.com/community/UpgradeNotes for how to upgrade to
# newer versions of the distribution.
deb {url}/ubuntu focal main restricted universe multiverse
deb {url}/ubuntu focal-updates main restricted universe multiverse
deb {url}/ubuntu focal-security main restricted universe multiverse
"""
DOCKER_LIST = "deb [arch=amd64] {url}/linux/ubuntu focal stable\n"
# Kubespray's etcd role copies the etcdctl binary to its bin_dir (/usr/local/bin), not a package;
# the lab's comes from the host's etcd-client, the build of the lab's own members (3.4).
HOST_ETCDCTL = Path("/usr/bin/etcdctl")
NODE_ETCDCTL = "usr/local/bin/etcdctl"
ETCD_ENV = "etc/etcd.env"
# Files Kubespray leaves on a worker that the harness looks at.
KUBESPRAY_FILES = {"etc/modules-load.d/kubespray-br_netfilter.conf": "br_netfilter\n"}


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def seed_key(repo: aptrepo.RepoBuild, cache_root: Path = CACHE_ROOT) -> str:
    # The base's dpkg database too: the layer carries its own copy of it, which must match the
    # base it lies on (a base rebuilt later may hold other package versions).
    status = base_rootfs(cache_root) / "var/lib/dpkg/status"
    base_state = hashlib.sha256(status.read_bytes()).hexdigest() if status.exists() else "no-base"
    text = "\n".join([SEED_VERSION, image_key(), base_state, repo.key, repo.fingerprint(),
                      _tree_digest(NODEFILES), Path(__file__).read_text(), *INSTALL, _etcdctl_digest()])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _etcdctl_digest() -> str:
    return hashlib.sha256(HOST_ETCDCTL.read_bytes()).hexdigest() if HOST_ETCDCTL.is_file() else "no-etcdctl"


def ensure_seed(cache_root: Path = CACHE_ROOT) -> Path:
    """The cached seed layer, built first when absent (5-10 s, once per machine and inputs)."""
    base = base_rootfs(cache_root)
    if not (base.parent / "complete").exists():
        raise PermanentError(f"the lab base image is missing ({base})",
                             fix="build it with `python -m nodegate.lab.image` (or `make setup`)")
    repo = aptrepo.ensure_repo(cache_root)
    key = seed_key(repo, cache_root)
    top = cache_root / f"seed-{key}"
    layer = top / "layer"
    if (top / "complete").exists():
        return layer
    with aptrepo.cache_lock(top.with_name(top.name + ".lock")):
        if (top / "complete").exists():
            return layer
        tmp = top.with_name(top.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "layer").mkdir(parents=True)
        (tmp / "work").mkdir()
        (tmp / "root").mkdir()
        started = time.monotonic()
        log.info("building the seeded node layer in %s (once per machine)", tmp)
        # A private mount and network namespace: the chroot's mounts and the repository's
        # address exist only for this build.
        result = subprocess.run(
            ["unshare", "--mount", "--net", "--fork", "--propagation", "private",
             sys.executable, "-m", "nodegate.lab.seed", "build-inside", "--tmp", str(tmp),
             "--base", str(base), "--repo", str(repo.root), "--keys", str(repo.docker_key.parent)],
            capture_output=True, text=True, timeout=600)
        (tmp / "build.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise PermanentError(f"building the seeded node layer failed (rc {result.returncode}):\n"
                                 f"{(result.stdout + result.stderr).strip()[-1500:]}",
                                 fix=f"see {tmp / 'build.log'}")
        shutil.rmtree(tmp / "work", ignore_errors=True)
        (tmp / "complete").write_text(key + "\n")
        if top.exists():
            shutil.rmtree(top)
        tmp.rename(top)
    log.info("seeded node layer built in %.1f s (%s)", time.monotonic() - started, top)
    return layer


def is_cached(cache_root: Path = CACHE_ROOT) -> bool:
    """True when ensure_seed() has nothing to build."""
    repo = aptrepo.repo_build(cache_root)
    if not (repo.root.parent / "complete").exists():
        return False
    return (cache_root / f"seed-{seed_key(repo, cache_root)}" / "complete").exists()


SEED_PIN = "seed-layer"   # DIR/seed-layer: the seed layer this lab's nodes start from


def seed_layer(config: LabConfig) -> Path:
    """node.py's hook: the read-only layer every node of this lab starts from. It is the layer
    cached when the lab came up, kept for the lab's life: once the lab's code changes, the cache
    holds a newer repository build and seed, but this lab still serves the repository it copied at
    start (DIR/apt). A node reset onto the newer seed would carry apt lists of another build, and
    apt would fetch packages whose size and hashes do not match them."""
    pin = config.dir / SEED_PIN
    if pin.is_file():
        layer = Path(pin.read_text().strip())
        if (layer.parent / "complete").exists():
            return layer
        raise PermanentError(f"the seed layer this lab started from ({layer}) is no longer cached",
                             fix="restart the lab: `nodegate lab down`, then `nodegate lab up`")
    layer = ensure_seed()
    pin.write_text(f"{layer}\n")
    return layer


# -- per node -------------------------------------------------------------------------------
def prepare_root(config: LabConfig, root: Path) -> None:
    """node.py's hook, run on a node's fresh root: point apt at this lab's repository address
    (the layer was built for net 0) without touching anything that did not change; on an etcd
    node, write Kubespray's /etc/etcd.env for this lab's members."""
    _write_etcd_env(config, root)
    old_host = BUILD_ADDRESS
    new_url = config.repo_url
    new_host = new_url.split("://", 1)[1]
    if new_host == old_host:
        return
    for rel in ("etc/apt/sources.list", "etc/apt/sources.list.d/docker.list"):
        path = root / rel
        if path.is_file():
            text = path.read_text()
            fixed = text.replace(f"http://{old_host}/", f"{new_url}/")
            if fixed != text:
                path.write_text(fixed)
    lists = root / "var/lib/apt/lists"
    prefix = old_host + "_"
    for path in lists.glob(prefix + "*"):
        path.rename(lists / (new_host + "_" + path.name[len(prefix):]))


def _write_etcd_env(config: LabConfig, root: Path) -> None:
    # node.py's prepare() names the node in etc/hostname before this hook runs.
    hostname = root / "etc/hostname"
    name = hostname.read_text().strip() if hostname.is_file() else root.parent.name
    members = config.etcd_nodes
    path = root / ETCD_ENV
    if name not in {m.name for m in members}:
        return
    # Kubespray's file (etcd.env.j2) also sets the member's ETCD_* settings and, with TLS,
    # ETCDCTL_CACERT/CERT/KEY; the lab's members speak plain HTTP, so only the CLI part is here.
    from nodegate.lab.etcd import LabEtcd  # here: etcd's module needs nothing from the seed

    endpoints = ",".join(LabEtcd.client_url(m) for m in members)
    path.write_text(f"# Written by the nodegate lab (Kubespray's /etc/etcd.env, CLI settings)\n"
                    f"ETCDCTL_API=3\nETCDCTL_ENDPOINTS={endpoints}\n")
    path.chmod(0o640)


# -- the build (runs inside `unshare --mount --net`) ----------------------------------------------
def _sh(args: list[str], *, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    print(f"$ {' '.join(args)}\n{result.stdout}{result.stderr}", flush=True)
    if check and result.returncode != 0:
        raise SystemExit(f"failed (rc {result.returncode}): {' '.join(args)}")
    return result


def _chroot(root: Path, script: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    return _sh(["chroot", str(root), "/bin/sh", "-ec", script], env=env)


def build_inside(tmp: Path, base: Path, repo: Path, keys: Path) -> None:
    _sh(["ip", "link", "set", "lo", "up"])
    root = tmp / "root"
    _sh(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={base},upperdir={tmp / 'layer'},workdir={tmp / 'work'}", str(root)])
    # Kernel filesystems for apt and dpkg, mounted over (not into) the layer.
    _sh(["mount", "-t", "proc", "proc", str(root / "proc")])
    for sub in ("dev", "run", "tmp"):
        _sh(["mount", "-t", "tmpfs", "-o", "mode=0755" if sub != "tmp" else "mode=1777", "tmpfs", str(root / sub)])
    for dev in ("null", "zero", "full", "random", "urandom"):
        (root / "dev" / dev).touch()
        _sh(["mount", "--bind", f"/dev/{dev}", str(root / "dev" / dev)])
    (root / "dev/pts").mkdir()
    _sh(["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts", str(root / "dev/pts")])
    (root / "dev/ptmx").symlink_to("pts/ptmx")
    with aptrepo.serving(repo, BUILD_ADDRESS, 80) as server:
        url = server.url
        _lay_files(root, keys, url)
        _chroot(root, "apt-get update 2>&1")
        _chroot(root, "apt-get install -y --no-install-recommends " + " ".join(INSTALL))
        _chroot(root, "apt-mark hold " + " ".join(HELD))
        diversions = "\n".join(f"dpkg-divert --local --rename --divert {path}.distrib --add {path}"
                               for path in KMOD_DIVERSIONS)
        _chroot(root, diversions)
        _install_nodefiles(root)
        if HOST_ETCDCTL.is_file():
            (root / NODE_ETCDCTL).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HOST_ETCDCTL, root / NODE_ETCDCTL)
            (root / NODE_ETCDCTL).chmod(0o755)
        _chroot(root, "apt-get clean; rm -f /var/cache/apt/pkgcache.bin /var/cache/apt/srcpkgcache.bin")
        # What the node looks like now, in the build log.
        _chroot(root, "cat /etc/os-release /etc/lsb-release; dpkg -l | grep -E '^hi|lab-'; "
                      "apt list --upgradable 2>/dev/null; ls /var/lib/apt/lists")
    for sub in ("dev/pts", "dev/null", "dev/zero", "dev/full", "dev/random", "dev/urandom", "dev", "run", "tmp", "proc", ""):
        _sh(["umount", str(root / sub) if sub else str(root)])


def _lay_files(root: Path, keys: Path, url: str) -> None:
    apt = root / "etc/apt"
    # Ubuntu's keyring where Ubuntu keeps it; Debian's keys are not on an Ubuntu node.
    for old in (apt / "trusted.gpg.d").glob("debian-archive-*"):
        old.unlink()
    shutil.copyfile(keys / "ubuntu-archive.gpg", apt / "trusted.gpg.d/ubuntu-keyring-2018-archive.gpg")
    (root / "usr/share/keyrings").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(keys / "ubuntu-archive.gpg", root / "usr/share/keyrings/ubuntu-archive-keyring.gpg")
    # The Docker key the old way (`curl … | apt-key add -`): the legacy keyring apt warns about.
    shutil.copyfile(keys / "docker.gpg", apt / "trusted.gpg")
    for path in (apt / "trusted.gpg", apt / "trusted.gpg.d/ubuntu-keyring-2018-archive.gpg"):
        path.chmod(0o644)
    (apt / "sources.list").write_text(SOURCES_LIST.format(url=url))
    for old in (apt / "sources.list.d").glob("*"):
        old.unlink()
    (apt / "sources.list.d/docker.list").write_text(DOCKER_LIST.format(url=url))
    for rel, text in KUBESPRAY_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _install_nodefiles(root: Path) -> None:
    for src in sorted(NODEFILES.rglob("*")):
        if src.is_dir() or "__pycache__" in src.parts:
            continue
        dest = root / src.relative_to(NODEFILES)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        shutil.copyfile(src, dest)
        # Programs are executable whatever mode the checkout gave them.
        program = src.parent.name in ("bin", "sbin")
        dest.chmod(0o755 if program else 0o644)
    # kmod's names and systemd's power commands point at the stand-ins.
    links = {"usr/sbin/rmmod": "modprobe", "usr/sbin/lsmod": "modprobe", "usr/bin/lsmod": "../sbin/modprobe"}
    links.update({f"usr/sbin/{name}": "shutdown" for name in POWER_COMMANDS})
    for rel, target in links.items():
        path = root / rel
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodegate.lab.seed")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or find) the cached seed layer and print its path")
    inside = sub.add_parser("build-inside", help=argparse.SUPPRESS)
    for name in ("tmp", "base", "repo", "keys"):
        inside.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "build":
        print(ensure_seed())
        return 0
    build_inside(args.tmp, args.base, args.repo, args.keys)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
