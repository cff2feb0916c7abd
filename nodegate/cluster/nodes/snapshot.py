"""Several reads of a node in one SSH round trip (a batch), and the per-node snapshot the checks share.
"""
from __future__ import annotations

import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodegate.cluster.nodes.resources import DPKG_FORMAT, DiskFree, RebootRequired, SourcesFile
from nodegate.cluster.nodes.ssh import CommandResult, NodeHost
from nodegate.core import parsing
from nodegate.core.errors import PermanentError

if TYPE_CHECKING:
    pass


def run_batch(host: NodeHost, commands: Sequence[Sequence[str]]) -> tuple[CommandResult, ...]:
    """Run several argument-list commands in one SSH round trip, each keeping its own exit code,
    stdout and stderr. A preflight reads a dozen small things from a node; one connection use
    instead of a dozen keeps it near the cost of a hand-written shell script. Nothing is raised
    for a command's exit code: the caller judges each result."""
    __tracebackhide__ = True
    import secrets

    if any(isinstance(c, str) for c in commands):
        raise TypeError("run_batch takes argument lists, not shell strings")
    argvs = [[str(a) for a in argv] for argv in commands]
    mark = f"@@nodegate-{secrets.token_hex(8)}"
    lines = ['d=$(mktemp -d 2>/dev/null) || { echo "mktemp failed" >&2; exit 97; }', "trap 'rm -rf \"$d\"' EXIT"]
    for i, argv in enumerate(argvs):
        lines.append(f'({shlex.join(argv)}) </dev/null >"$d/o{i}" 2>"$d/e{i}"; echo $? >"$d/r{i}"')
    lines.append(f'for i in {" ".join(str(i) for i in range(len(argvs)))}; do '
                 f'printf "{mark} %s %s %s %s\\n" "$i" "$(cat "$d/r$i")" "$(wc -c <"$d/o$i")" "$(wc -c <"$d/e$i")"; '
                 'cat "$d/o$i" "$d/e$i"; done')
    started = time.monotonic()
    out = host._execute(shlex.join(["sh", "-c", "\n".join(lines)]))
    duration = time.monotonic() - started
    data: bytes = out.stdout_bytes
    results: list[CommandResult] = []
    pos = 0
    header = mark.encode() + b" "
    for argv in argvs:
        start = data.find(header, pos)
        end = data.find(b"\n", start) if start >= 0 else -1
        fields = data[start + len(header):end].split() if end > 0 else []
        if len(fields) != 4:
            raise PermanentError(f"unreadable batched output from {host.name} (rc {out.rc}): "
                                 f"{(out.stderr or '').strip()[:300]}")
        rc, olen, elen = (int(f) for f in fields[1:])
        body = end + 1
        stdout = data[body:body + olen].decode("utf-8", "replace")
        stderr = data[body + olen:body + olen + elen].decode("utf-8", "replace")
        pos = body + olen + elen
        results.append(CommandResult(node=host.name, args=tuple(argv), rc=rc, stdout=stdout, stderr=stderr,
                                     duration=duration))
    return tuple(results)


@dataclass(frozen=True)
class NodeSnapshot:
    """What a preflight reads from a node, taken in one round trip (see ``Snapshot.take``)."""
    os_release: parsing.OsRelease
    packages: tuple[parsing.DpkgEntry, ...]
    audit: str                                  # `dpkg --audit` output, empty when consistent
    reboot: RebootRequired
    kernel: str                                 # `uname -r`
    installed_kernels: tuple[str, ...]          # versions of installed linux-image-* packages' kernels
    boot_id: str
    disks: Mapping[str, DiskFree]               # "/" and "/boot"
    modules: frozenset[str] | None              # loaded (None: lsmod failed)
    modules_persisted: frozenset[str]           # named in /etc/modules and /etc/modules-load.d/*.conf
    source_files: tuple[SourcesFile, ...]
    results: tuple[CommandResult, ...]          # every command with its output, as evidence
    # do-release-upgrade's inputs, judged by checks/test_release_upgrade.py: the Prompt file
    # (rc RELEASE_UPGRADES_ABSENT when it does not exist) and the apt pins (grep: rc 1 none, 2 no file)
    release_upgrades: CommandResult
    apt_pins: CommandResult

    @property
    def held(self) -> dict[str, str]:
        return {e.name: e.version for e in self.packages if e.held}

    def version_of(self, package: str) -> str | None:
        return next((e.version for e in self.packages if e.name == package and e.installed), None)


RELEASE_UPGRADES = "/etc/update-manager/release-upgrades"
RELEASE_UPGRADES_ABSENT = 3
APT_PINS = ("sh", "-c", "grep -HiE '^(Package|Pin-Priority):' /etc/apt/preferences /etc/apt/preferences.d/* 2>/dev/null")


class Snapshot:
    """The node's release, packages, audit, pending reboot, kernels, free space, modules, apt
    sources and do-release-upgrade's inputs in one SSH round trip; each part parsed as the
    single-resource readers above do."""

    SOURCES_MARK = "@@nodegate-sources-file "

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def take(self) -> NodeSnapshot:
        __tracebackhide__ = True
        sources = ("for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do [ -f \"$f\" ] || continue; "
                   f"printf '\\n{self.SOURCES_MARK}%s\\n' \"$f\"; cat \"$f\"; done")
        persisted = "cat /etc/modules /etc/modules-load.d/*.conf 2>/dev/null; exit 0"
        commands = [
            ["cat", "/etc/os-release"],
            ["dpkg-query", "-W", "-f", DPKG_FORMAT],
            ["dpkg", "--audit"],
            ["sh", "-c", "test -e /var/run/reboot-required || exit 1; cat /var/run/reboot-required.pkgs 2>/dev/null; "
                         "exit 0"],
            ["uname", "-r"],
            ["cat", "/proc/sys/kernel/random/boot_id"],
            ["df", "-P", "-B1", "--", "/", "/boot"],
            ["lsmod"],
            ["sh", "-c", persisted],
            ["sh", "-c", sources],
            ["sh", "-c", f"test -e {RELEASE_UPGRADES} || exit {RELEASE_UPGRADES_ABSENT}; cat -- {RELEASE_UPGRADES}"],
            list(APT_PINS),
        ]
        (osr, dpkg, audit, reboot, kernel, boot_id, df, lsmod, persist, src, prompt, pins) = run_batch(self.host,
                                                                                                       commands)
        entries = parsing.parse_dpkg_l(dpkg.stdout)
        disks: dict[str, DiskFree] = {}
        rows = [line.split() for line in df.stdout.splitlines()[1:] if len(line.split()) >= 6]
        for path, fields in zip(("/", "/boot"), rows):
            disks[path] = DiskFree(path=path, mount=fields[5], size_bytes=int(fields[1]), used_bytes=int(fields[2]),
                                   avail_bytes=int(fields[3]))
        modules = (frozenset(line.split()[0] for line in lsmod.stdout.splitlines()[1:] if line.strip())
                   if lsmod.rc == 0 else None)
        named = frozenset(line.split("#", 1)[0].strip() for line in persist.stdout.splitlines()
                          if line.split("#", 1)[0].strip())
        kernels = tuple(sorted({m.group(1) for e in entries if e.installed
                                for m in [re.match(r"^linux-image-(\d\S*)$", e.name)] if m}))
        # dpkg --audit exits 2 without auditing when it cannot check its lock (a non-root login):
        # then it is asked again through sudo, never taken as a clean database
        audit_text = audit.stdout.strip() if audit.rc in (0, 1) else self.host.packages.audit()
        return NodeSnapshot(
            os_release=parsing.parse_os_release(osr.stdout),
            packages=entries,
            audit=audit_text,
            reboot=(RebootRequired(required=True, packages=tuple(reboot.stdout.split())) if reboot.rc == 0
                    else RebootRequired(required=False)),
            kernel=kernel.stdout.strip(),
            installed_kernels=kernels,
            boot_id=boot_id.stdout.strip(),
            disks=disks,
            modules=modules,
            modules_persisted=named,
            source_files=self._sources(src.stdout),
            results=(osr, dpkg, audit, reboot, kernel, boot_id, df, lsmod, persist, src, prompt, pins),
            release_upgrades=prompt,
            apt_pins=pins,
        )

    def _sources(self, text: str) -> tuple[SourcesFile, ...]:
        files = []
        for chunk in text.split("\n" + self.SOURCES_MARK)[1:]:
            path, _, body = chunk.partition("\n")
            parsed = parsing.parse_sources_list(body) if path.endswith((".list", ".sources")) else ()
            files.append(SourcesFile(path=path, text=body, sources=parsed))
        return tuple(files)
