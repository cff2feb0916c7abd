"""One small class per resource of a node (packages, apt, the release, boot, kernel modules, etcd),
each delegating to its NodeHost, as pytest-testinfra's modules do. Reads parse with
nodegate.core.parsing; the apt/dpkg commands live here, not in the steps.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodegate.core import parsing
from nodegate.core.errors import PermanentError

if TYPE_CHECKING:
    from nodegate.cluster.nodes.ssh import CommandResult, NodeHost
    pass


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


class Packages:
    """dpkg's view: installed packages, holds, versions, audit; apt-mark holds."""

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
        """What `apt-get dist-upgrade` would do (simulated): upgrades, and held packages kept back."""
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

    def hold(self, names: Sequence[str]) -> CommandResult:
        return self.host.run(["apt-mark", "hold", "--", *names], sudo=True)

    def unhold(self, names: Sequence[str]) -> CommandResult:
        return self.host.run(["apt-mark", "unhold", "--", *names], sudo=True)


class Apt:
    """apt's view: `apt-get update` (read from its text, since the exit code proves little), sources."""

    SOURCE_PATHS = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def update(self, *, timeout: float = 300) -> AptUpdate:
        # rc 100 is apt's "errors happened": reported through the parsed text, not raised.
        result = self.host.run(["apt-get", "update"], expect=(0, 100), sudo=True, env=APT_ENV, timeout=timeout)
        return AptUpdate(report=parsing.parse_apt_update(result.output), result=result)

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
    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def os_release(self) -> parsing.OsRelease:
        return parsing.parse_os_release(self.host.read_file("/etc/os-release"))


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

    def request_reboot(self) -> str:
        """Ask the node to reboot about a second from now, returning the boot id before it; the
        delay lets this command's SSH session end cleanly first."""
        before = self.boot_id()
        self.host.run(["sh", "-c", "(sleep 1; shutdown -r now || reboot) </dev/null >/dev/null 2>&1 &"], sudo=True)
        return before


class Modules:
    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def loaded(self) -> frozenset[str]:
        lines = self.host.run(["lsmod"]).stdout.splitlines()
        return frozenset(line.split()[0] for line in lines[1:] if line.strip())

    def is_loaded(self, name: str) -> bool:
        return name in self.loaded()

    def load(self, name: str) -> CommandResult:
        return self.host.run(["modprobe", "--", name], sudo=True)


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
