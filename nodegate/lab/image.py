"""The lab's base root filesystem: one debootstrap of Debian bookworm, cached outside the tree.

Every lab node is an overlay on this one read-only tree, so it is built once per machine
(about 75 s) and reused by every lab and every CI run on the machine.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from nodegate.lab import shared_files

log = logging.getLogger(__name__)

SUITE = "bookworm"
MIRROR = os.environ.get("NODEGATE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# python3-apt: Ansible's apt module needs it on the node; kmod/procps/iproute2: what an
# operator's commands expect; openssh-server: the node's PID 1; sudo: Ubuntu's cloud images
# log in as a non-root user (`ubuntu`) with sudo, and Kubespray inventories become root with it.
PACKAGES = (
    "openssh-server", "python3", "python3-apt", "apt-utils", "kmod", "iproute2",
    "procps", "ca-certificates", "gnupg", "less", "lsb-release", "sudo",
)
CACHE_ROOT = Path(os.environ.get("NODEGATE_CACHE", "/var/cache/nodegate"))


def image_key() -> str:
    """Changes whenever what goes into the image changes, so a stale cache is never reused."""
    text = "\n".join([SUITE, *PACKAGES, "v1"])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def base_rootfs(cache_root: Path = CACHE_ROOT) -> Path:
    return cache_root / f"base-{SUITE}-{image_key()}" / "rootfs"


def ensure_base_image(cache_root: Path = CACHE_ROOT) -> Path:
    """Return the cached base rootfs, building it first if it is absent."""
    rootfs = base_rootfs(cache_root)
    done = rootfs.parent / "complete"
    if done.exists():
        return rootfs
    # Engineers' `make setup` runs at once on one machine share this cache: one builds, the others
    # wait, and nobody removes a tree another build is writing or a lab is using.
    with shared_files.locked(rootfs.parent):
        if done.exists():
            return rootfs
        return _build(rootfs, done)


def _build(rootfs: Path, done: Path) -> Path:
    tmp = rootfs.parent / "rootfs.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    log.info("building the lab base image with debootstrap into %s (about a minute)", tmp)
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(tmp), MIRROR],
        check=True, stdout=subprocess.DEVNULL,
    )
    _trim(tmp)
    if rootfs.exists():
        shutil.rmtree(rootfs)
    tmp.rename(rootfs)
    shared_files.write_atomic(done, image_key() + "\n")
    return rootfs


def _trim(root: Path) -> None:
    # Documentation and the package cache are a third of the tree and nothing reads them.
    for sub in ("usr/share/doc", "usr/share/man", "usr/share/info", "var/cache/apt/archives"):
        path = root / sub
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                elif child.name != "lock" and child.name != "partial":
                    child.unlink()
    for lists in (root / "var/lib/apt/lists").glob("*_dists_*"):
        lists.unlink()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(ensure_base_image())
