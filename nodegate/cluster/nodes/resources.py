"""One small class per resource of a node (packages, apt, the release, boot, kernel modules, etcd),
each delegating to its NodeHost, as pytest-testinfra's modules do. Reads parse with
nodegate.core.parsing; every apt/dpkg/do-release-upgrade command, read or write, lives here, never
in a step: a step says what it wants, the resource says how::

    host.packages.held()                        # {"containerd.io": "1.6.28-1"}
    host.packages.unhold(["containerd.io"])     # apt-mark unhold -- containerd.io
    host.apt.update().report.errors             # apt-get update, read from its text
    host.apt.dist_upgrade(timeout=3600)         # apt-get -y -q <keep config> dist-upgrade
    host.release.upgrade(devel=False, timeout=3 * 3600)   # do-release-upgrade, non-interactive
    host.modules.persist("rbd", "/etc/modules-load.d/rbd.conf")

A write's ``*_command`` static method gives the command line as a plan shows it (no host needed).
"""
from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodegate.core import parsing
from nodegate.core.errors import PermanentError

if TYPE_CHECKING:
    from nodegate.cluster.nodes.ssh import CommandResult, NodeHost


@dataclass(frozen=True)
class RebootRequired:
    required: bool
    packages: tuple[str, ...] = ()        # from /var/run/reboot-required.pkgs


@dataclass(frozen=True)
class DiskFree:
    path: str
    mount: str
    size_bytes: int
    used_bytes: int
    avail_bytes: int

    @property
    def avail_mb(self) -> int:
        return self.avail_bytes // (1024 * 1024)


@dataclass(frozen=True)
class SourcesFile:
    path: str
    text: str
    sources: tuple[parsing.AptSource, ...]


@dataclass(frozen=True)
class AptUpdate:
    report: parsing.AptUpdateReport
    result: CommandResult                 # kept as evidence


DPKG_FORMAT = "${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\n"
# apt and dpkg on a node never ask (noninteractive), answer in English (C) and let needrestart
# restart services itself (a) instead of prompting.
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C", "NEEDRESTART_MODE": "a"}
# Keep every existing config file (the operator's, or Kubespray's) and take the package's
# default only where nobody changed the file: the unattended equivalent of answering "N".
DPKG_KEEP_CONFIG = ("-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold")
DIST_UPGRADE = ("apt-get", "-y", "-q", *DPKG_KEEP_CONFIG, "dist-upgrade")
APT_UPDATE = ("apt-get", "update")
# The process names (comm, at most 15 characters) of what takes dpkg's lock on a node.
PACKAGE_TOOLS = frozenset({"apt-get", "apt", "dpkg", "do-release-upgr", "unattended-upgr"})


def with_apt_env(*argv: str) -> tuple[str, ...]:
    """``argv`` as it runs, with APT_ENV set (how a plan shows a command run with ``env=APT_ENV``)."""
    return ("env", *(f"{k}={v}" for k, v in APT_ENV.items()), *argv)


class Packages:
    """dpkg's view: installed packages, holds, versions, audit; and the package writes::

        >>> host.packages.held()
        {'containerd.io': '1.6.4-1', 'docker-ce': '5:20.10.20~3-0~ubuntu-focal'}
        >>> host.packages.unhold(["containerd.io"]).command
        'apt-mark unhold -- containerd.io'
        >>> host.packages.install({"containerd.io": "1.6.4-1"}, timeout=3600)   # downgrades, past holds
        >>> host.packages.finish_interrupted(timeout=3600)                      # dpkg --configure -a
    """

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def entries(self) -> tuple[parsing.DpkgEntry, ...]:
        # dpkg-query with a format gives `dpkg -l`'s status columns without its width-truncated names.
        return parsing.parse_dpkg_l(self.host.run(["dpkg-query", "-W", "-f", DPKG_FORMAT], expect=(0, 1)).stdout)

    def held(self) -> dict[str, str]:
        """Held package → installed version."""
        return {e.name: e.version for e in self.entries() if e.held}

    def versions(self, names: Sequence[str] | None = None) -> dict[str, str]:
        """Installed package → version (only ``names`` when given; missing ones left out)."""
        wanted = set(names) if names is not None else None
        return {e.name: e.version for e in self.entries()
                if e.installed and (wanted is None or e.name in wanted)}

    def upgradable(self) -> parsing.AptUpgradable:
        """What `apt-get dist-upgrade` would do (simulated): upgrades, and held packages kept back.
        Without sudo: apt gives every list it fetched to root with mode 0644 whatever the umask
        (apt-pkg/acquire-worker.cc, PrepareFiles). A list is _apt's 0600 only while an
        `apt-get update` fetches it, so the simulation must not run beside one (plugin.reads orders them)."""
        out = self.host.run(["apt-get", "-s", "-o", "Debug::NoLocking=1", "dist-upgrade"], env=APT_ENV)
        return parsing.parse_apt_upgradable(out.stdout)

    def audit(self) -> str:
        """`dpkg --audit` output: empty when the package database is consistent. A non-root login
        reads a clean database (exit 0); when something is half installed, dpkg (1.21, the lab's)
        first checks its database lock and a non-root login gets "unable to check lock file …
        Permission denied" (exit 2) instead of the audit: then it is asked again through sudo."""
        if not self.host.needs_sudo:
            return self.host.run(["dpkg", "--audit"], expect=(0, 1)).stdout.strip()
        out = self.host.run(["dpkg", "--audit"], expect=(0, 1, 2))
        if out.rc == 2:
            out = self.host.run(["dpkg", "--audit"], expect=(0, 1), sudo=True)
        return out.stdout.strip()

    def tools_running(self) -> list[str]:
        """"pid name" of every apt/dpkg/do-release-upgrade process on the node (PACKAGE_TOOLS)."""
        out = self.host.run(["ps", "-e", "-o", "pid=,comm="])
        return [" ".join(fields) for fields in (line.split(None, 1) for line in out.stdout.splitlines())
                if len(fields) == 2 and fields[1].strip() in PACKAGE_TOOLS]

    # The holds query as a plan shows it.
    HELD_QUERY = ("dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package} ${Version}\\n")

    @staticmethod
    def hold_command(names: Sequence[str]) -> tuple[str, ...]:
        return ("apt-mark", "hold", "--", *names)

    @staticmethod
    def unhold_command(names: Sequence[str]) -> tuple[str, ...]:
        return ("apt-mark", "unhold", "--", *names)

    def hold(self, names: Sequence[str]) -> CommandResult:
        return self.host.run(list(self.hold_command(names)), sudo=True)

    def unhold(self, names: Sequence[str]) -> CommandResult:
        return self.host.run(list(self.unhold_command(names)), sudo=True)

    @staticmethod
    def install_command(pins: Sequence[str], *, quiet: bool = True) -> tuple[str, ...]:
        """apt-get install of ``name=version`` pins, downgrading and past holds, keeping config files."""
        return ("apt-get", "install", "-y", *(("-q",) if quiet else ()), "--allow-downgrades",
                "--allow-change-held-packages", *DPKG_KEEP_CONFIG, *pins)

    def install(self, versions: Mapping[str, str], *, timeout: float) -> CommandResult:
        """Install each package at the version given (package -> version)."""
        pins = [f"{n}={v}" for n, v in sorted(versions.items())]
        return self.host.run(list(self.install_command(pins)), sudo=True, env=APT_ENV, timeout=timeout)

    def finish_interrupted(self, *, timeout: float) -> CommandResult:
        """`dpkg --configure -a` (keeping config files): what dpkg says to run after "dpkg was
        interrupted"."""
        return self.host.run(["dpkg", "--force-confdef", "--force-confold", "--configure", "-a"], sudo=True,
                             env=APT_ENV, timeout=timeout)


class Apt:
    """apt's view: `apt-get update` (read from its text, since the exit code proves little), the
    sources; and the apt writes::

        >>> host.apt.update().report.errors
        ()
        >>> host.apt.dist_upgrade(timeout=3600).rc          # keeping every changed config file
        0
        >>> host.apt.repair_sources("focal", "jammy")       # third-party sources back on, keys moved
    """

    SOURCE_PATHS = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def update(self, *, timeout: float = 300) -> AptUpdate:
        # rc 100 is apt's "errors happened": reported through the parsed text, not raised.
        result = self.host.run(list(APT_UPDATE), expect=(0, 100), sudo=True, env=APT_ENV, timeout=timeout)
        return AptUpdate(report=parsing.parse_apt_update(result.output), result=result)

    @staticmethod
    def update_command() -> tuple[str, ...]:
        return APT_UPDATE

    @staticmethod
    def dist_upgrade_command() -> tuple[str, ...]:
        return with_apt_env(*DIST_UPGRADE)

    def dist_upgrade(self, *, timeout: float) -> CommandResult:
        """A non-interactive dist-upgrade within the release, keeping config files."""
        return self.host.run(list(DIST_UPGRADE), sudo=True, env=APT_ENV, timeout=timeout)

    def fix_install(self, *, timeout: float) -> CommandResult:
        """`apt-get -f install` (keeping config files): what apt says to run after a package run
        was cut off."""
        return self.host.run(["apt-get", "-y", "-q", *DPKG_KEEP_CONFIG, "-f", "install"], sudo=True, env=APT_ENV,
                             timeout=timeout)

    @staticmethod
    def repair_sources_command(old: str, new: str) -> tuple[str, ...]:
        return ("python3", "-c", "<apt repair: third-party sources disabled by the upgrade (one-line or deb822) back "
                "on the new codename as Kubespray's own line, keys to /etc/apt/trusted.gpg.d, legacy trusted.gpg "
                "retired; Ubuntu's sources untouched>", old, new)

    def repair_sources(self, old: str, new: str) -> CommandResult:
        """Run the apt repair program (nodegate.cluster.apt_repair) on the node: third-party sources
        disabled or left on ``old`` back on ``new``, keys in trusted.gpg.d, the legacy keyring
        retired. Idempotent: the end state gives an empty plan."""
        from nodegate.cluster import apt_repair

        return self.host.run(["python3", "-c", apt_repair.program(), old, new], sudo=True)

    def source_files(self) -> tuple[SourcesFile, ...]:
        """Every file under sources.list(.d), parsed when it is a .list/.sources file (other files,
        such as `*.distUpgrade` backups, are returned with no sources)."""
        listing = self.host.run(["find", *self.SOURCE_PATHS, "-maxdepth", "1", "-type", "f"], expect=(0, 1)).stdout
        files = []
        for path in sorted(p for p in listing.splitlines() if p.strip()):
            text = self.host.read_file(path)
            parsed = parsing.parse_sources_list(text) if path.endswith((".list", ".sources")) else ()
            files.append(SourcesFile(path=path, text=text, sources=parsed))
        return tuple(files)

    def sources(self) -> tuple[parsing.AptSource, ...]:
        return tuple(s for f in self.source_files() for s in f.sources)


class Release:
    """The node's release, and the release upgrade::

        >>> host.release.os_release().version_id
        '20.04'
        >>> host.release.upgrade(devel=False, timeout=3 * 3600)   # do-release-upgrade, no questions
    """

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def os_release(self) -> parsing.OsRelease:
        return parsing.parse_os_release(self.host.read_file("/etc/os-release"))

    @staticmethod
    def upgrade_command(*, devel: bool) -> tuple[str, ...]:
        """do-release-upgrade without questions; ``devel``: to a release not yet released (-d)."""
        return ("do-release-upgrade", "-f", "DistUpgradeViewNonInteractive", *(("-d",) if devel else ()))

    def upgrade(self, *, devel: bool, timeout: float) -> CommandResult:
        return self.host.run(list(self.upgrade_command(devel=devel)), sudo=True, env=APT_ENV, timeout=timeout)


class Boot:
    """Boot identity, pending reboot, kernel, free disk space; and asking for a reboot."""

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def boot_id(self) -> str:
        return self.host.read_file("/proc/sys/kernel/random/boot_id").strip()

    def reboot_required(self) -> RebootRequired:
        out = self.host.run(["sh", "-c", "test -e /var/run/reboot-required || exit 1; "
                                         "cat /var/run/reboot-required.pkgs 2>/dev/null; exit 0"], expect=(0, 1))
        if out.rc == 1:
            return RebootRequired(required=False)
        return RebootRequired(required=True, packages=tuple(p for p in out.stdout.split() if p))

    def running_kernel(self) -> str:
        return self.host.run(["uname", "-r"]).stdout.strip()

    def disk_free(self, path: str = "/") -> DiskFree:
        out = self.host.run(["df", "-P", "-B1", "--", path]).stdout.splitlines()
        # POSIX format: a header, then "Filesystem 1-blocks Used Available Capacity Mounted-on".
        fields = out[-1].split()
        if len(fields) < 6:
            raise PermanentError(f"unreadable `df -P -B1 {path}` output on {self.host.name}: {out!r}")
        return DiskFree(path=path, mount=fields[5], size_bytes=int(fields[1]), used_bytes=int(fields[2]),
                        avail_bytes=int(fields[3]))

    @staticmethod
    def reboot_command() -> tuple[str, ...]:
        return ("sh", "-c", "(sleep 1; shutdown -r now || reboot) </dev/null >/dev/null 2>&1 &")

    def request_reboot(self) -> str:
        """Ask the node to reboot about a second from now, returning the boot id before it; the
        delay lets this command's SSH session end cleanly first."""
        before = self.boot_id()
        self.host.run(list(self.reboot_command()), sudo=True)
        return before


class Modules:
    """Kernel modules: loaded now, and named in /etc/modules-load.d to load at boot::

        >>> host.modules.is_loaded("rbd")
        False
        >>> host.modules.load("rbd"); host.modules.persist("rbd", "/etc/modules-load.d/rbd.conf")
        True
    """

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def loaded(self) -> frozenset[str]:
        lines = self.host.run(["lsmod"]).stdout.splitlines()
        return frozenset(line.split()[0] for line in lines[1:] if line.strip())

    def is_loaded(self, name: str) -> bool:
        return name in self.loaded()

    @staticmethod
    def load_command(name: str) -> tuple[str, ...]:
        return ("modprobe", "--", name)

    def load(self, name: str) -> CommandResult:
        return self.host.run(list(self.load_command(name)), sudo=True)

    def persisted(self) -> frozenset[str]:
        """The modules named in /etc/modules-load.d/*.conf (loaded at every boot)."""
        text = self.host.run(["sh", "-c", "cat /etc/modules-load.d/*.conf 2>/dev/null"], expect=(0, 1)).stdout
        return frozenset(w.strip() for w in text.splitlines())

    @staticmethod
    def persist_command(name: str, path: str) -> tuple[str, ...]:
        return ("sh", "-c", f"echo {shlex.quote(name)} > {shlex.quote(path)}")

    def persist(self, name: str, path: str) -> bool:
        """Name ``name`` in ``path`` (a modules-load.d file) unless it is there already; whether it
        was written. The values reach the script as its arguments, never as shell text."""
        out = self.host.run(["sh", "-c", 'grep -qx "$1" "$2" 2>/dev/null || { mkdir -p "$(dirname "$2")" && '
                                         'echo "$1" > "$2" && echo written; }', "sh", name, path], sudo=True)
        return "written" in out.stdout


_NO_ETCD_ENV, _NO_ETCDCTL = 90, 91
ETCD_ENV = "/etc/etcd.env"


# Kubespray's /etc/etcd.env holds KEY=value lines (endpoints, and the client certificates with
# TLS); `set -a` exports them for etcdctl, as Kubespray's own etcdctl.sh does.
_ETCDCTL_SCRIPT = f"""\
[ -r {ETCD_ENV} ] || exit {_NO_ETCD_ENV}
command -v etcdctl >/dev/null 2>&1 || PATH="/usr/local/bin:$PATH"
command -v etcdctl >/dev/null 2>&1 || exit {_NO_ETCDCTL}
set -a; . {ETCD_ENV}; set +a
export ETCDCTL_API="${{ETCDCTL_API:-3}}"
exec etcdctl --dial-timeout=2s --command-timeout=5s "$@"
"""


class Etcd:
    """The etcd cluster as this etcd node's etcdctl sees it, with Kubespray's /etc/etcd.env."""

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def etcdctl(self, *args: str, timeout: float = 30) -> CommandResult:
        """etcdctl with the env file sourced (root: Kubespray's file and certificates are root's).
        Exit codes 0 and 1 come back (1 = some endpoint unhealthy); no env file or no etcdctl
        raises a PermanentError naming the fix."""
        result = self.host.run(["sh", "-c", _ETCDCTL_SCRIPT, "etcdctl", *args], sudo=True, timeout=timeout,
                               expect=(0, 1, _NO_ETCD_ENV, _NO_ETCDCTL))
        if result.rc == _NO_ETCD_ENV:
            raise PermanentError(f"{self.host.name} has no readable {ETCD_ENV}, so its etcdctl cannot reach etcd",
                                 fix=f"is {self.host.name} in the inventory's etcd group? Kubespray's etcd role "
                                     f"writes {ETCD_ENV}; run cluster.yml --tags etcd --limit=etcd")
        if result.rc == _NO_ETCDCTL:
            raise PermanentError(f"{self.host.name} has no etcdctl (looked in PATH and /usr/local/bin)",
                                 fix="Kubespray's etcd role installs it in bin_dir (/usr/local/bin); run "
                                     "cluster.yml --tags etcd --limit=etcd")
        return result

    def endpoint_health(self) -> parsing.EtcdHealth:
        """Every endpoint listed in the env file (Kubespray lists all members), healthy or not."""
        result = self.etcdctl("endpoint", "health", "-w", "json")
        return parsing.parse_etcd_endpoint_health(result.stdout, result.rc, result.stderr)

    def endpoint_status(self) -> parsing.EtcdStatus:
        """Every endpoint's member id, leader and raft indexes (`etcdctl endpoint status -w json`);
        an endpoint that does not answer is missing from it."""
        result = self.etcdctl("endpoint", "status", "-w", "json")
        return parsing.parse_etcd_endpoint_status(result.stdout, result.rc, result.stderr)

    def member_list(self) -> parsing.EtcdMembers:
        """The cluster's members, learners marked (`etcdctl member list -w json`)."""
        result = self.etcdctl("member", "list", "-w", "json")
        return parsing.parse_etcd_member_list(result.stdout, result.rc, result.stderr)
