"""The lab's signed apt repository: a Docker-like tree and an Ubuntu-archive stand-in.

Layout (under the served root, i.e. DIR/apt):

    linux/ubuntu/gpg                                   Docker's key, ASCII-armored (as download.docker.com serves it)
    linux/ubuntu/dists/<focal|jammy|noble>/{InRelease,Release,Release.gpg}
    linux/ubuntu/dists/<suite>/stable/binary-amd64/Packages(.gz)
    linux/ubuntu/dists/<suite>/pool/stable/amd64/*.deb  (Docker keeps a pool per suite)
    ubuntu/dists/<focal|focal-updates|jammy|...>/...    the archive stand-in, component main
    ubuntu/pool/main/l/lab-utils/*.deb

The packages are real .deb files built with dpkg-deb, indexed with dpkg-scanpackages and
apt-ftparchive, and signed with two generated GnuPG keys, so apt on a node verifies them
exactly as it verifies Docker's and Ubuntu's repositories. The Docker key ends up in the
node's legacy /etc/apt/trusted.gpg (that is what produces apt's deprecation warning); the
archive key goes to /etc/apt/trusted.gpg.d/ like Ubuntu's own keyring.

The build is cached under CACHE_ROOT/apt-<key> (public keys included, private keys thrown
away after signing) and a lab copies it into DIR/apt.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import gzip
import hashlib
import http.server
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from nodegate.core.errors import PermanentError, TransientError
from nodegate.lab.config import LabConfig
from nodegate.lab.image import CACHE_ROOT

log = logging.getLogger(__name__)

ARCH = "amd64"
DOCKER_SUITES = ("focal", "jammy", "noble")
# Old and new build of each package: the lab starts on the old one (what Kubespray v2.21 pins),
# the new one is the "pending update" that a careless `apt dist-upgrade` installs.
CONTAINERD_VERSIONS = ("1.6.4-1", "1.6.20-1")
DOCKER_BUILDS = ("20.10.20", "20.10.24")
RELEASES = {  # codename -> (version, point release) as Ubuntu's os-release words them
    "focal": ("20.04", "20.04.5 LTS", "Focal Fossa"),
    "jammy": ("22.04", "22.04.3 LTS", "Jammy Jellyfish"),
    "noble": ("24.04", "24.04.1 LTS", "Noble Numbat"),
}
ARCHIVE_COMPONENTS = ("main", "restricted", "universe", "multiverse")
# Ordinary packages of the archive stand-in, per pocket (None: no build there).
# lab-utils: 1.0 installed on a focal node, 1.1 its pending update; newer builds in the later
# releases, so a release upgrade upgrades it.
# lab-tools: installed at its newest focal build (2.0) with an older one (1.9) in the release
# pocket, so the `pending-updates` fault can make it pending by going back to 1.9.
LAB_UTILS = {"focal": "1.0", "focal-updates": "1.1", "jammy": "1.2", "noble": "1.3"}
LAB_TOOLS = {"focal": "1.9", "focal-updates": "2.0", "jammy": "2.1", "noble": "2.2"}
ARCHIVE_SUITES = tuple(f"{codename}{pocket}" for codename in RELEASES for pocket in ("", "-updates", "-security"))
# lab-release carries the release's identity (/usr/lib/os-release, /etc/lsb-release), as Ubuntu's
# base-files does, so the release moves exactly when the packages move: with a release upgrade,
# and with a manual dist-upgrade after an interrupted one.
LAB_RELEASE_PACKAGE = "lab-release"
DOCKER_KEY_UID = "Nodegate Lab Docker Release (CE deb) <docker@lab.invalid>"
ARCHIVE_KEY_UID = "Nodegate Lab Ubuntu Archive Automatic Signing Key <archive@lab.invalid>"
BUILD_VERSION = "v2"  # bump when anything below changes what is built


def docker_version(build: str, codename: str) -> str:
    """Docker's version string for one build on one Ubuntu release, e.g. 5:20.10.20~3-0~ubuntu-focal."""
    return f"5:{build}~3-0~ubuntu-{codename}"


def repo_key() -> str:
    """Changes whenever what is built changes: the settings above and this module's own code."""
    text = "\n".join([BUILD_VERSION, ARCH, *DOCKER_SUITES, *CONTAINERD_VERSIONS, *DOCKER_BUILDS,
                      repr(sorted(LAB_UTILS.items())), repr(sorted(LAB_TOOLS.items())), repr(RELEASES),
                      DOCKER_KEY_UID, ARCHIVE_KEY_UID, Path(__file__).read_text()])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RepoBuild:
    """A built repository: `root` is what is served; the key files are what nodes trust."""
    key: str
    root: Path
    docker_key: Path        # binary OpenPGP public key (goes into a node's legacy trusted.gpg)
    docker_key_asc: Path    # the same, armored (served as linux/ubuntu/gpg)
    archive_key: Path       # binary public key of the archive stand-in (trusted.gpg.d)

    def fingerprint(self) -> str:
        """Identifies this very build: the signing keys are generated anew by every build."""
        digest = hashlib.sha256(self.docker_key.read_bytes() + self.archive_key.read_bytes())
        return digest.hexdigest()[:12]


def repo_build(cache_root: Path = CACHE_ROOT) -> RepoBuild:
    base = cache_root / f"apt-{repo_key()}"
    keys = base / "keys"
    return RepoBuild(key=repo_key(), root=base / "repo", docker_key=keys / "docker.gpg",
                     docker_key_asc=keys / "docker.asc", archive_key=keys / "ubuntu-archive.gpg")


@contextlib.contextmanager
def cache_lock(path: Path):
    """An exclusive lock file: labs and tests started at once build a cache entry only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_repo(cache_root: Path = CACHE_ROOT) -> RepoBuild:
    """Return the cached repository, building it first when absent (a few seconds)."""
    build = repo_build(cache_root)
    base = build.root.parent
    if (base / "complete").exists():
        return build
    with cache_lock(base.with_name(base.name + ".lock")):
        if (base / "complete").exists():  # built by someone else while we waited
            return build
        for tool in ("dpkg-deb", "dpkg-scanpackages", "apt-ftparchive", "gpg", "gpgconf"):
            if shutil.which(tool) is None:
                raise PermanentError(f"{tool} is missing, so the lab apt repository cannot be built",
                                     fix="apt-get install dpkg-dev apt-utils gnupg (or run `make setup`)")
        tmp = base.with_name(base.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        started = time.monotonic()
        _Builder(tmp).build()
        (tmp / "complete").write_text(build.key + "\n")
        if base.exists():
            shutil.rmtree(base)
        tmp.rename(base)
    log.info("built the lab apt repository in %.1f s (%s)", time.monotonic() - started, base)
    return build


def install_repo(config: LabConfig, *, cache_root: Path = CACHE_ROOT) -> Path:
    """Copy the cached repository into DIR/apt (small: a copy keeps a lab independent of the cache)."""
    build = ensure_repo(cache_root)
    dest = config.dir / "apt"
    marker = dest / ".repo-key"
    stamp = f"{build.key} {build.fingerprint()}"
    if marker.exists() and marker.read_text().strip() == stamp:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(build.root, dest, symlinks=True)
    marker.write_text(stamp + "\n")
    return dest


# -- building ---------------------------------------------------------------------------------

class _Builder:
    """Builds the packages, indexes and signatures into `out` (repo/ and keys/)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.repo = out / "repo"
        self.keys = out / "keys"
        self.debs = out / "debs"  # build area, removed at the end
        self.built: dict[tuple[str, str], Path] = {}  # (name, version) -> built .deb

    def build(self) -> None:
        for path in (self.repo, self.keys, self.debs):
            path.mkdir(parents=True)
        # GnuPG's socket path must stay short, so its home lives in /tmp, and it only ever
        # holds the private keys for the few seconds of signing.
        with tempfile.TemporaryDirectory(prefix="ng-apt-gpg-") as gpg_tmp:
            docker = _Signer(Path(gpg_tmp) / "docker", DOCKER_KEY_UID)
            archive = _Signer(Path(gpg_tmp) / "archive", ARCHIVE_KEY_UID)
            try:
                docker.export(self.keys / "docker.gpg", armor=False)
                docker.export(self.keys / "docker.asc", armor=True)
                archive.export(self.keys / "ubuntu-archive.gpg", armor=False)
                self._docker_repo(docker)
                self._archive(archive)
            finally:
                docker.close()
                archive.close()
        shutil.copy(self.keys / "docker.asc", self.repo / "linux/ubuntu/gpg")
        shutil.rmtree(self.debs)

    def _docker_repo(self, signer: "_Signer") -> None:
        top = self.repo / "linux/ubuntu"
        for suite in DOCKER_SUITES:
            pool = top / "dists" / suite / "pool/stable" / ARCH
            pool.mkdir(parents=True)
            for version in CONTAINERD_VERSIONS:
                self._deb(pool, _containerd(version))
            for build in DOCKER_BUILDS:
                version = docker_version(build, suite)
                self._deb(pool, _docker_cli(version, build))
                self._deb(pool, _docker_ce(version, build))
            binary = top / "dists" / suite / "stable" / f"binary-{ARCH}"
            _scan(top, [p.relative_to(top) for p in sorted(pool.iterdir())], binary)
            _release(top / "dists" / suite, signer, origin="Docker", label="Docker CE", suite=suite,
                     codename=suite, components=("stable",), version=None, description=None)

    def _archive(self, signer: "_Signer") -> None:
        top = self.repo / "ubuntu"
        for suite in ARCHIVE_SUITES:
            codename, _, pocket = suite.partition("-")
            number, point, name = RELEASES[codename]
            debs = []
            for package, builds in (("lab-utils", LAB_UTILS), ("lab-tools", LAB_TOOLS)):
                if builds.get(suite):
                    pool = top / "pool/main/l" / package
                    debs.append(self._deb(pool, _ordinary(package, builds[suite], codename)))
            if not pocket:
                pool = top / "pool/main/l" / LAB_RELEASE_PACKAGE
                debs.append(self._deb(pool, _lab_release(codename)))
            for component in ARCHIVE_COMPONENTS:
                files = [d.relative_to(top) for d in debs] if component == "main" else []
                _scan(top, files, top / "dists" / suite / component / f"binary-{ARCH}")
            title = f"Ubuntu {name.split()[0]} {number}" if not pocket else f"Ubuntu {name.split()[0]} {pocket.capitalize()}"
            _release(top / "dists" / suite, signer, origin="Ubuntu", label="Ubuntu", suite=suite,
                     codename=codename, components=ARCHIVE_COMPONENTS, version=number, description=title)

    def _deb(self, pool: Path, spec: "_Package") -> Path:
        """Build one .deb with dpkg-deb (once per name and version) and put it in `pool` under
        Debian's file name."""
        pool.mkdir(parents=True, exist_ok=True)
        upstream = spec.version.split(":", 1)[-1]
        deb = pool / f"{spec.name}_{upstream}_{spec.arch}.deb"
        built = self.built.get((spec.name, spec.version))
        if built is not None:
            if built != deb:
                os.link(built, deb)
            return deb
        tree = self.debs / f"{spec.name}-{spec.version.replace(':', '_')}"
        (tree / "DEBIAN").mkdir(parents=True)
        for rel, text in spec.files.items():
            path = tree / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o755 if rel.startswith(("usr/bin/", "usr/sbin/")) else 0o644)
        for script, text in spec.scripts.items():
            (tree / "DEBIAN" / script).write_text(text)
            (tree / "DEBIAN" / script).chmod(0o755)
        control = {
            "Package": spec.name, "Version": spec.version, "Architecture": spec.arch,
            "Maintainer": spec.maintainer, "Installed-Size": "1", **spec.fields,
            "Section": spec.section, "Priority": spec.priority, "Homepage": spec.homepage,
            "Description": spec.description,
        }
        (tree / "DEBIAN/control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
        _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)])
        self.built[(spec.name, spec.version)] = deb
        return deb


@dataclass(frozen=True)
class _Package:
    name: str
    version: str
    description: str
    files: dict[str, str]
    fields: dict[str, str]
    arch: str = ARCH
    section: str = "admin"
    maintainer: str = "Docker <support@docker.com>"
    homepage: str = "https://www.docker.com"
    priority: str = "optional"
    scripts: dict[str, str] = field(default_factory=dict)  # DEBIAN/preinst etc.


def _version_script(text: str) -> str:
    # The packaged "binaries" only answer --version / version, which is what an operator or a
    # check asks of them; the lab runs no containers.
    return f"#!/bin/sh\n# nodegate lab stand-in: only reports its version.\necho '{text}'\n"


def _containerd(version: str) -> _Package:
    upstream = version.split("-")[0]
    return _Package(
        name="containerd.io", version=version,
        description="An open and reliable container runtime",
        files={"usr/bin/containerd": _version_script(f"containerd containerd.io {upstream} lab"),
               "usr/bin/runc": _version_script("runc version 1.1.1")},
        fields={"Provides": "containerd, runc", "Conflicts": "containerd, runc", "Replaces": "containerd, runc"},
        homepage="https://containerd.io")


def _docker_cli(version: str, build: str) -> _Package:
    return _Package(
        name="docker-ce-cli", version=version,
        description="Docker CLI: the open-source application container engine",
        files={"usr/bin/docker": _version_script(f"Docker version {build}, build lab")},
        fields={"Conflicts": "docker (<< 1.5~), docker-engine, docker.io, lxc-docker",
                "Replaces": "docker-ce (<< 5:0)"})


def _docker_ce(version: str, build: str) -> _Package:
    return _Package(
        name="docker-ce", version=version,
        description="Docker: the open-source application container engine",
        files={"usr/bin/dockerd": _version_script(f"Docker version {build}, build lab")},
        fields={"Depends": "containerd.io (>= 1.4.1), docker-ce-cli",
                "Conflicts": "docker (<< 1.5~), docker-engine, docker.io, lxc-docker"})


UBUNTU_MAINTAINER = "Ubuntu Developers <ubuntu-devel-discuss@lists.ubuntu.com>"


def _ordinary(name: str, version: str, codename: str) -> _Package:
    return _Package(
        name=name, version=version, arch="all", section="utils", maintainer=UBUNTU_MAINTAINER,
        homepage="https://example.invalid/nodegate-lab",
        description=f"ordinary Ubuntu package of the nodegate lab ({name})",
        files={f"usr/share/{name}/VERSION": f"{version} {codename}\n"},
        fields={})


def os_release_text(codename: str) -> str:
    """/usr/lib/os-release as that Ubuntu release ships it (field order included)."""
    number, point, name = RELEASES[codename]
    common = ['HOME_URL="https://www.ubuntu.com/"', 'SUPPORT_URL="https://help.ubuntu.com/"',
              'BUG_REPORT_URL="https://bugs.launchpad.net/ubuntu/"',
              'PRIVACY_POLICY_URL="https://www.ubuntu.com/legal/terms-and-policies/privacy-policy"']
    if codename == "focal":
        lines = ['NAME="Ubuntu"', f'VERSION="{point} ({name})"', "ID=ubuntu", "ID_LIKE=debian",
                 f'PRETTY_NAME="Ubuntu {point}"', f'VERSION_ID="{number}"', *common,
                 f"VERSION_CODENAME={codename}", f"UBUNTU_CODENAME={codename}"]
    else:
        lines = [f'PRETTY_NAME="Ubuntu {point}"', 'NAME="Ubuntu"', f'VERSION_ID="{number}"',
                 f'VERSION="{point} ({name})"', f"VERSION_CODENAME={codename}", "ID=ubuntu", "ID_LIKE=debian",
                 *common, f"UBUNTU_CODENAME={codename}"]
        if codename == "noble":
            lines.append("LOGO=ubuntu-logo")
    return "\n".join(lines) + "\n"


def lsb_release_text(codename: str) -> str:
    number, point, _ = RELEASES[codename]
    return (f"DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE={number}\nDISTRIB_CODENAME={codename}\n"
            f'DISTRIB_DESCRIPTION="Ubuntu {point}"\n')


def lab_release_version(codename: str) -> str:
    return RELEASES[codename][1].split()[0]


_DIVERT = "dpkg-divert --package lab-release --divert /usr/lib/os-release.debian"


def _lab_release(codename: str) -> _Package:
    # The node's userland is Debian's, whose base-files owns /usr/lib/os-release: a diversion
    # (as Debian packaging does it) lets this package own the release identity instead.
    return _Package(
        name=LAB_RELEASE_PACKAGE, version=lab_release_version(codename), arch="all", section="admin",
        maintainer=UBUNTU_MAINTAINER, homepage="https://example.invalid/nodegate-lab", priority="required",
        description="Ubuntu release identification (os-release, lsb-release) for the nodegate lab",
        files={"usr/lib/os-release": os_release_text(codename), "etc/lsb-release": lsb_release_text(codename)},
        fields={},
        scripts={
            # --no-rename (dpkg warns against renaming an Essential package's file): keep
            # Debian's copy aside by hand, then this package's file replaces it.
            "preinst": "#!/bin/sh\nset -e\n[ -e /usr/lib/os-release.debian ] || "
                       "cp -p /usr/lib/os-release /usr/lib/os-release.debian\n"
                       f"{_DIVERT} --no-rename --add /usr/lib/os-release >/dev/null\n",
            "postrm": f'#!/bin/sh\nset -e\nif [ "$1" = remove ] || [ "$1" = purge ]; then\n'
                      f"  {_DIVERT} --rename --remove /usr/lib/os-release >/dev/null\nfi\n",
        })


def _scan(top: Path, debs: list[Path], binary_dir: Path) -> None:
    """Write Packages and Packages.gz for exactly `debs` (paths relative to the repo top)."""
    binary_dir.mkdir(parents=True, exist_ok=True)
    text = ""
    if debs:
        # dpkg-scanpackages indexes a directory; a tree of links holds just this suite's files.
        with tempfile.TemporaryDirectory(prefix="ng-apt-scan-") as tmp:
            for rel in debs:
                link = Path(tmp) / rel
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(top / rel)
            text = _run(["dpkg-scanpackages", "--multiversion", str(debs[0].parts[0]), "/dev/null"],
                        cwd=tmp).stdout
    (binary_dir / "Packages").write_text(text)
    with gzip.open(binary_dir / "Packages.gz", "wt") as packed:
        packed.write(text)


def _release(dist: Path, signer: "_Signer", *, origin: str, label: str, suite: str, codename: str,
             components: tuple[str, ...], version: str | None, description: str | None) -> None:
    options = {"Origin": origin, "Label": label, "Suite": suite, "Codename": codename}
    if version:
        options["Version"] = version
    options.update({"Architectures": ARCH, "Components": " ".join(components)})
    if description:
        options["Description"] = description
    args = ["apt-ftparchive"]
    for name, value in options.items():
        args += ["-o", f"APT::FTPArchive::Release::{name}={value}"]
    # Printed to stdout, not written into the tree: apt-ftparchive would otherwise hash a
    # half-written Release.
    text = _run([*args, "release", "."], cwd=dist).stdout
    (dist / "Release").write_text(text)
    signer.sign(dist / "Release")


class _Signer:
    """One throw-away GnuPG home holding one signing key."""

    def __init__(self, home: Path, uid: str) -> None:
        self.home = home
        home.mkdir(mode=0o700, parents=True)
        self._gpg("--passphrase", "", "--quick-gen-key", uid, "rsa4096", "sign", "never")

    def _gpg(self, *args: str) -> subprocess.CompletedProcess:
        return _run(["gpg", "--homedir", str(self.home), "--batch", "--yes", "--quiet", *args])

    def export(self, dest: Path, *, armor: bool) -> None:
        self._gpg(*(["--armor"] if armor else []), "--output", str(dest), "--export")

    def sign(self, release: Path) -> None:
        self._gpg("--clearsign", "--output", str(release.with_name("InRelease")), str(release))
        self._gpg("--armor", "--detach-sign", "--output", str(release.with_name("Release.gpg")), str(release))

    def close(self) -> None:
        # gpg started an agent for this home; end it so no process outlives the build.
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"],
                       check=False, capture_output=True)


def _run(args: list[str], cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise PermanentError(f"{args[0]} failed (rc {result.returncode}) building the lab apt repository: "
                             f"{result.stderr.strip()[-800:]}",
                             fix="install the host packages dpkg-dev, apt-utils and gnupg")
    return result


# -- serving ----------------------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    # apt fetches dozens of files per update; one line each would drown the lab's log.
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("apt repo: " + format, *args)


class RepoServer(NamedTuple):
    """The running HTTP server; unpacks as (server, thread). Call stop() to end it."""
    server: http.server.ThreadingHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}" + ("" if port == 80 else f":{port}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    shutdown = stop  # the supervisor stops every service with shutdown()


def serve_repo(root: Path, address: str, port: int) -> RepoServer:
    """Serve `root` over HTTP on address:port from a daemon thread (returns once listening)."""
    if not (root / "linux/ubuntu/dists").is_dir():
        raise PermanentError(f"{root} holds no lab apt repository", fix="run install_repo(config) first")
    handler = functools.partial(_QuietHandler, directory=str(root))
    try:
        server = http.server.ThreadingHTTPServer((address, port), handler)
    except OSError as exc:
        raise TransientError(f"cannot listen on {address}:{port} for the apt repository: {exc}",
                             fix="stop whatever holds that address (another lab with the same net?)") from exc
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"apt-repo-{address}:{port}", daemon=True)
    thread.start()
    return RepoServer(server, thread)


def serve(config: LabConfig) -> RepoServer:
    """The supervisor's entry point: put the cached repository into DIR/apt and serve it on the
    lab's repository address."""
    root = install_repo(config)
    running = serve_repo(root, config.repo_address, config.repo_port)
    log.info("apt repository %s served on %s", root, running.url)
    return running


@contextlib.contextmanager
def serving(root: Path, address: str, port: int):
    """serve_repo as a context manager: stopped on exit whatever happens."""
    running = serve_repo(root, address, port)
    try:
        yield running
    finally:
        running.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m nodegate.lab.aptrepo build` prints the cached repo; `serve --dir DIR` serves a lab's."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m nodegate.lab.aptrepo")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build")
    serve = sub.add_parser("serve")
    serve.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "build":
        print(ensure_repo().root)
        return 0
    running = serve(LabConfig.load(args.dir))
    try:
        running.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
