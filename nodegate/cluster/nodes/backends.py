"""How a node is reached below NodeHost: the name handed to ssh (its ssh_config Host block, or
the inventory's address), and testinfra's paramiko backend made strict: host keys checked against
known_hosts, and the route to the node (a jump host, whose key is checked the same way, or a
ProxyCommand run without a shell) opened before the node's own connection."""
from __future__ import annotations

import functools
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nodegate.profile.model import NodeSpec, SSHSettings


def _ssh_target(spec: "NodeSpec", settings: "SSHSettings") -> str:
    """The name to hand to ssh: the node's name when the ssh_config resolves it (so its Host
    block applies), else its address from the inventory."""
    if settings.config is not None and Path(settings.config).is_file():
        patterns = _host_patterns(Path(settings.config))
        if spec.name in patterns:
            return spec.name
        import fnmatch

        if any(fnmatch.fnmatchcase(spec.name, p) for p in patterns if p != "*" and not p.startswith("!")):
            # a wildcard block may set HostName: ask ssh itself how it resolves the name
            shown = subprocess.run(["ssh", "-G", "-F", str(settings.config), spec.name], capture_output=True,
                                   text=True, timeout=10, stdin=subprocess.DEVNULL).stdout
            resolved = next((line.split(None, 1)[1] for line in shown.splitlines()
                             if line.lower().startswith("hostname ")), spec.name)
            if resolved.strip() != spec.name:
                return spec.name
    return spec.address or spec.name


def _host_patterns(config: Path) -> set[str]:
    """The patterns of the ssh_config's `Host` lines (read directly: importing paramiko only to
    parse them cost ~0.3 s of every run's start)."""
    patterns: set[str] = set()
    try:
        text = config.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return patterns
    for line in text.splitlines():
        words = line.strip().replace("=", " ", 1).split()
        if len(words) > 1 and words[0].lower() == "host":
            patterns.update(w.strip('"') for w in words[1:])
    return patterns


def _paramiko_backend_class() -> type:
    from testinfra.backend.paramiko import ParamikoBackend

    class VerifyingParamikoBackend(ParamikoBackend):
        """testinfra's paramiko backend accepts unknown host keys with a warning; this one checks
        them against known_hosts (RejectPolicy), or records new ones when told to trust them."""

        def __init__(self, hostspec: str, *, port: int = 22, known_hosts: Path | None = None,
                     trust_new: bool = False, route: Any = None, **kwargs: Any) -> None:
            super().__init__(hostspec, **kwargs)
            self.port = port
            self.known_hosts = known_hosts
            self.trust_new = trust_new
            self.route = route
            self.jump_client: Any = None

        def _new_client(self) -> Any:
            import paramiko

            client = paramiko.SSHClient()
            if self.known_hosts is not None:
                path = Path(self.known_hosts).expanduser()
                if not path.exists() and self.trust_new:
                    path.touch(mode=0o644)
                if path.exists():
                    # load_host_keys (not system keys) so AutoAddPolicy writes new keys back here.
                    client.load_host_keys(str(path))
            else:
                client.load_system_host_keys()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy() if self.trust_new else paramiko.RejectPolicy())
            return client

        def _sock(self, port: int) -> Any:
            """The way to the node: a channel through the jump host (its host key checked as the
            node's is), a ProxyCommand run without a shell, or None (a direct connection)."""
            if self.route is None:
                return None
            import paramiko

            kind, value = self.route
            if kind == "command":
                return paramiko.ProxyCommand(shlex.join(value))
            jump = value
            self.jump_client = self._new_client()
            try:
                self.jump_client.connect(hostname=jump.host, port=int(jump.port or 22), username=jump.user or self.host.user,
                                         key_filename=jump.identity_file or self.ssh_identity_file,
                                         look_for_keys=(jump.identity_file or self.ssh_identity_file) is None,
                                         allow_agent=True, timeout=self.timeout, banner_timeout=self.timeout,
                                         auth_timeout=self.timeout)
            except paramiko.BadHostKeyException as exc:
                from nodegate.cluster.nodes.ssh import HostKeyMismatch  # ssh.py imports this module
                raise HostKeyMismatch(f"the host key of the jump host {jump.describe()} (the bastion on the way to "
                                      f"{self.host.name}) does not match known_hosts {self.known_hosts or '~/.ssh/known_hosts'}",
                                      fix="check the bastion's key out of band; if it was reinstalled, remove the old "
                                          f"key (`ssh-keygen -R {jump.host}`) and add the new one") from exc
            except paramiko.SSHException as exc:
                if "not found in known_hosts" in str(exc):
                    from nodegate.cluster.nodes.ssh import HostKeyUnknown
                    raise HostKeyUnknown(f"known_hosts {self.known_hosts or '~/.ssh/known_hosts'} has no host key for "
                                         f"the jump host {jump.describe()}, and host keys are verified",
                                         fix="check the bastion's key out of band, then add it") from exc
                raise
            transport = self.jump_client.get_transport()
            return transport.open_channel("direct-tcpip", (self.host.name, port), ("127.0.0.1", 0),
                                          timeout=self.timeout)

        @functools.cached_property
        def client(self) -> Any:
            client = self._new_client()
            port = int(self.host.port or self.port)
            client.connect(hostname=self.host.name, port=port,
                           username=self.host.user, key_filename=self.ssh_identity_file,
                           look_for_keys=self.ssh_identity_file is None, allow_agent=True,
                           timeout=self.timeout, banner_timeout=self.timeout, auth_timeout=self.timeout,
                           sock=self._sock(port))
            return client

    return VerifyingParamikoBackend


def _VerifyingParamikoBackend(hostspec: str, **kwargs: Any) -> Any:  # noqa: N802 - a class factory
    return _paramiko_backend_class()(hostspec, **kwargs)
